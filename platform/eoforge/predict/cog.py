"""Writing products: COGs with rio-cogeo, files published under a temporary name, then renamed.

A file is first written to a local staging folder, then published: renamed into place on a
local output (same folder, so the rename is atomic), or uploaded as one object (visible only
once complete) on ``s3://`` / ``gs://``. So a reader never sees half a file, and an interrupted
run leaves only files that are whole. :func:`file_info` gives the size and the multihash
SHA-256 that the STAC items carry (``file:size``, ``file:checksum``); a resumed run compares them.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

#: Multihash prefix of SHA-256 (code 0x12, length 0x20), as the STAC file extension writes checksums.
SHA256_MULTIHASH = "1220"


def sha256_multihash(data: bytes) -> str:
    """``file:checksum`` of some bytes: multihash SHA-256, hex."""
    return SHA256_MULTIHASH + hashlib.sha256(data).hexdigest()


def file_info(path: str | Path) -> tuple[int, str]:
    """(size in bytes, multihash SHA-256) of a local file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return os.path.getsize(path), SHA256_MULTIHASH + h.hexdigest()


def _blocksize(h: int, w: int) -> int:
    """Internal tile side: 512 for large rasters, smaller (>= 16, a power of two) for small ones."""
    side = min(h, w)
    return max(16, min(512, 2 ** math.floor(math.log2(max(side // 2, 16)))))


def write_cog(
    array: np.ndarray,
    path: str | Path,
    crs: str,
    transform: tuple[float, ...],
    nodata: float,
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
    descriptions: list[str] | None = None,
    scales_offsets: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Write ``array`` [bands, h, w] as a Cloud-Optimised GeoTIFF at local ``path`` (deflate, tiled, overviews).

    Args:
        array: uint8 / int8 / ... [bands, h, w].
        path: local destination (written whole; see :func:`publish` for the rename).
        crs: the grid's CRS (e.g. ``EPSG:32632``).
        transform: the grid's GDAL-order affine (a, b, c, d, e, f).
        nodata: the nodata value.
        colormap: a palette for single-band uint8 maps (value -> RGBA).
        descriptions: one name per band.
        scales_offsets: per-band (scale, offset) for quantised values (value = q * scale + offset).
    """
    import rasterio
    from affine import Affine
    from rasterio.io import MemoryFile
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    bands, h, w = array.shape
    profile = {
        "driver": "GTiff",
        "dtype": array.dtype.name,
        "count": bands,
        "height": h,
        "width": w,
        "crs": crs,
        "transform": Affine(*transform[:6]),
        "nodata": nodata,
        **({"photometric": "palette"} if colormap else {}),
    }
    block = _blocksize(h, w)
    dst = cog_profiles.get("deflate")
    dst.update(blockxsize=block, blockysize=block)
    # overviews down to about one block; none for a raster that fits in one block (nothing to decimate)
    levels = max(0, math.ceil(math.log2(min(h, w) / block))) if min(h, w) > block else 0
    with MemoryFile() as mem:
        with mem.open(**profile) as src:
            if colormap:  # before the pixels: GDAL fixes the photometric tag once writing starts
                src.write_colormap(1, colormap)
            src.write(array)
            for i, name in enumerate(descriptions or []):
                src.set_band_description(i + 1, name)
            if scales_offsets is not None:
                src.scales = tuple(float(s) for s in scales_offsets[0])
                src.offsets = tuple(float(o) for o in scales_offsets[1])
        with mem.open() as src, rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            cog_translate(
                src,
                str(path),
                dst,
                nodata=nodata,
                overview_level=levels,
                overview_resampling="nearest",
                in_memory=True,
                quiet=True,
                colormap=colormap,
                use_cog_driver=False,
            )


def staging_dir(root: str | Path) -> Path:
    """A fresh local folder for files not yet published (removed by the caller)."""
    path = Path(root) / f".staging-{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def publish(local: Path, dest: str) -> None:
    """Move a whole local file to ``dest`` (a local path or an object-store URI), never half-visible."""
    from eoforge.storage import filesystem_of, is_remote, storage_error

    if not is_remote(dest):
        target = Path(dest.removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        shutil.copyfile(local, tmp)
        os.replace(tmp, target)
        return
    fs, path = filesystem_of(dest, "output")
    try:
        with fs.open_output_stream(path) as out, open(local, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
    except OSError as exc:
        raise storage_error(dest, exc, "output", "write") from None


def read_bytes(uri: str) -> bytes | None:
    """A published file's bytes, or None when it does not exist."""
    from eoforge.storage import filesystem_of, is_remote

    if not is_remote(uri):
        p = Path(uri.removeprefix("file://"))
        return p.read_bytes() if p.is_file() else None
    fs, path = filesystem_of(uri, "output")
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except (FileNotFoundError, OSError):
        return None


def validate_cog(path: str | Path) -> tuple[bool, list[str], list[str]]:
    """``rio cogeo validate``: (is valid, errors, warnings)."""
    from rio_cogeo.cogeo import cog_validate

    return cog_validate(str(path), quiet=True)


def colormap_of(n: int, colours: list[str] | None = None) -> dict[int, tuple[int, int, int, int]]:
    """A palette for class ids 0..n-1 (hex colours, else matplotlib's tab20), nodata (255) transparent."""
    from matplotlib import colormaps, colors

    palette: dict[int, Any] = {}
    for i in range(n):
        rgb = colors.to_rgb(colours[i]) if colours and i < len(colours) else colormaps["tab20"](i % 20)[:3]
        palette[i] = (*(round(255 * c) for c in rgb), 255)
    palette[255] = (0, 0, 0, 0)
    return palette
