"""Read one chip's S1 and S2 windows from their COGs onto the chip's 10 m grid.

The chip grid (CRS, transform, size) comes from the plan row. For each band:

- same CRS, same pixel size and an integer pixel offset (S2 10 m bands): a plain windowed
  read, so the values are the stored pixels, bit for bit;
- anything else (S2 20/60 m bands, S1 on its own CRS/grid): GDAL warps onto the chip grid
  through a :class:`rasterio.vrt.WarpedVRT` (bilinear for measurements, nearest for
  classes: SCL and labels).

Hrefs may be local paths, ``file://`` URLs, ``http(s)://`` or ``s3://`` (GDAL's /vsi handlers).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from eoforge.catalog.bands import S1_BAND_NAMES, S2_BAND_NAMES, S2_SCL_INVALID
from eoforge.data.normalize import S1_DB_MEAN, S1_DB_STD, S2_L2A_MEAN, S2_L2A_STD, normalize
from eoforge.errors import ChipReadError

#: GDAL settings for reading COGs (no directory listing on open, retries for HTTP).
GDAL_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "TRUE",
}


@dataclass(frozen=True)
class ChipGrid:
    """Target grid of a chip: CRS string, affine transform, size in pixels (square)."""

    crs: str
    transform: Affine
    size: int


@dataclass
class Chip:
    """One chip in model units.

    Attributes:
        s1: float32 [2, H, W], VV and VH (normalised, or dB with ``normalize='none'``).
        s2: float32 [12, H, W], bands in S2_BAND_NAMES order (normalised, or reflectance x 10000).
        valid_fraction: share of pixels valid in both sensors (not nodata, not cloud), [0, 1].
        label: uint8 [H, W] class ids (255 = ignore), or None when the plan has no label.
    """

    s1: np.ndarray
    s2: np.ndarray
    valid_fraction: float
    label: np.ndarray | None = None


def gdal_path(href: str) -> str:
    """Turn an href into something rasterio opens (``file://`` URLs become paths)."""
    if href.startswith("file://"):
        return unquote(urlparse(href).path)
    return href


def _aligned_window(src: rasterio.DatasetReader, grid: ChipGrid) -> Window | None:
    """A window of ``src`` equal to the chip grid, or None if a resampling is needed."""
    if src.crs is None or src.crs.to_string() != rasterio.crs.CRS.from_user_input(grid.crs).to_string():
        return None
    st, gt = src.transform, grid.transform
    if not (math.isclose(st.a, gt.a) and math.isclose(st.e, gt.e) and st.b == 0 and st.d == 0):
        return None
    col, row = ~st * (gt.c, gt.f)
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return Window(round(col), round(row), grid.size, grid.size)


def read_band(href: str, grid: ChipGrid, resampling: Resampling, fill: float) -> np.ndarray:
    """Read band 1 of ``href`` on ``grid``: float32 [H, W]; outside / nodata pixels get ``fill``.

    Raises:
        ChipReadError: the file is missing, corrupt or unreadable.
    """
    try:
        with rasterio.open(gdal_path(href)) as src:
            nodata = src.nodata
            window = _aligned_window(src, grid)
            if window is not None:
                data = src.read(1, window=window, boundless=True, fill_value=nodata if nodata is not None else fill)
            else:
                with WarpedVRT(
                    src,
                    crs=grid.crs,
                    transform=grid.transform,
                    width=grid.size,
                    height=grid.size,
                    resampling=resampling,
                    src_nodata=nodata,
                    nodata=nodata if nodata is not None else fill,
                ) as vrt:
                    data = vrt.read(1)
    except (rasterio.errors.RasterioError, OSError, ValueError) as exc:
        raise ChipReadError(f"{href}: {type(exc).__name__}: {exc}") from None
    out = data.astype(np.float32)
    if nodata is not None:
        out[(data == nodata) | ~np.isfinite(out)] = fill
    return out


def _href(value: object) -> str | None:
    """A plan cell holding an optional href (None / NaN / "" mean absent)."""
    return value if isinstance(value, str) and value else None


def read_chip(row: dict[str, object], mode: str = "ssl4eo") -> Chip:
    """Read the chip of one plan row.

    Args:
        row: a plan row with ``crs``, ``transform`` (6 numbers), ``size_px``, ``s2_assets``,
            ``s1_assets`` (JSON band -> href), ``scl_href`` and ``label_href`` (may be None).
        mode: normalisation, see :mod:`eoforge.data.normalize`.

    Raises:
        ChipReadError: an asset is missing from the row, or its file cannot be read.
    """
    grid = ChipGrid(str(row["crs"]), Affine(*list(row["transform"])[:6]), int(row["size_px"]))
    s2_assets = json.loads(str(row["s2_assets"]))
    s1_assets = json.loads(str(row["s1_assets"]))
    missing = [b for b in S2_BAND_NAMES if not s2_assets.get(b)] + [b for b in S1_BAND_NAMES if not s1_assets.get(b)]
    if missing:
        raise ChipReadError(f"chip {row.get('chip_id')}: no asset for bands {missing}")
    with rasterio.Env(**GDAL_ENV):
        s2 = np.stack([read_band(s2_assets[b], grid, Resampling.bilinear, 0.0) for b in S2_BAND_NAMES])
        s1 = np.stack([read_band(s1_assets[b], grid, Resampling.bilinear, np.nan) for b in S1_BAND_NAMES])
        valid = np.all(s2 > 0, axis=0) & np.all(np.isfinite(s1), axis=0)
        scl_href, label_href = _href(row.get("scl_href")), _href(row.get("label_href"))
        if scl_href:
            scl = read_band(scl_href, grid, Resampling.nearest, 0.0)
            valid &= ~np.isin(scl.astype(np.uint8), S2_SCL_INVALID)
        label = None
        if label_href:
            label = read_band(label_href, grid, Resampling.nearest, 255.0).astype(np.uint8)
    s1 = np.nan_to_num(s1, nan=0.0)
    return Chip(
        s1=normalize(s1, S1_DB_MEAN, S1_DB_STD, valid, mode),
        s2=normalize(s2, S2_L2A_MEAN, S2_L2A_STD, valid, mode),
        valid_fraction=float(valid.mean()),
        label=label,
    )
