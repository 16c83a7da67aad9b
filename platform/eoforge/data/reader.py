"""Read one chip's S1 and S2 windows from their COGs onto the chip's 10 m grid.

The chip grid (CRS, transform, size) comes from the plan row. :func:`read_chip` (and
:func:`read_chip_raw`) run the tile-aware reader of :mod:`eoforge.data.tiles` on one row, so a
chip read alone equals the same chip streamed by Ray Data. For each band
(:mod:`eoforge.data.resample`):

- same CRS, same pixel size and an integer pixel offset (S2 10 m bands): a plain windowed
  read, so the values are the stored pixels, bit for bit;
- a file with a CRS on another grid (S2 20/60 m bands, S1 RTC or dB products): sampled at the
  chip pixel centres with index/weight maps computed once per (source grid, chip grid)
  (bilinear for measurements, nearest for classes: SCL and labels);
- a file with no CRS but ground control points (Sentinel-1 GRD in radar geometry): the chip
  pixel centres are taken to the GRD's (line, pixel) with the GCPs nearest to the chip (a local
  polynomial). The item's ``proj:transform`` is never used for GRD (providers publish
  bbox-derived values that are wrong);
- a file with neither a CRS nor GCPs: :class:`~eoforge.errors.ChipReadError`, never a silent read.

:func:`read_band` is GDAL's own warp of one band (:class:`rasterio.vrt.WarpedVRT`, or
:func:`rasterio.warp.reproject` with GCPs): the reference the resampler is tested against.

Units (recorded per chip in the plan by :mod:`eoforge.catalog.radiometry`):

- S2: ``value = DN * gain + offset`` per band (``s2_radiometry``), which removes the baseline
  04.00 offset exactly once; DN 0 is nodata, masked before the map;
- S1 (``s1_units``): ``dB`` as stored; ``linear`` (RTC gamma0, calibrated sigma0) -> ``10 log10``;
  ``amplitude`` (GRD DN) -> sigma0 with the calibration annotation when the plan links it
  (``s1_calibration``), else the documented approximation :data:`GRD_APPROX_DB_OFFSET`. Values
  <= 0 are masked (they have no dB value).

Hrefs may be local paths, ``file://`` URLs, ``http(s)://`` or ``s3://`` (GDAL's /vsi handlers).
They are signed just before they are opened (``access`` column: ``planetary_computer``,
``none`` or ``module:function``); a signed URL lives only inside the reading process.
"""

from __future__ import annotations

import functools
import importlib
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.control import GroundControlPoint
from rasterio.enums import Resampling
from rasterio.transform import Affine, GCPTransformer
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject
from rasterio.windows import Window

from eoforge.data.normalize import S1_DB_MEAN, S1_DB_STD, S2_L2A_MEAN, S2_L2A_STD, normalize
from eoforge.errors import ChipReadError

if TYPE_CHECKING:
    from eoforge.data.tiles import RawChip

#: GDAL settings for reading COGs (platform-notes §6): no directory listing on open, retries and
#: merged ranges for HTTP, a per-handle VSI cache, the whole COG header in the first request, and
#: an explicit block cache (MB) that holds the decoded tiles of a tile group for all its chips.
GDAL_ENV: dict[str, str | int] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(8 << 20),
    "GDAL_CACHEMAX": 256 << 20,  # bytes (an int: rasterio passes it to GDALSetCacheMax64)
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


#: GRD DN -> sigma0 without a calibration annotation. Sentinel-1 IW/EW GRD calibration LUTs give a
#: constant betaNought of 237 (``beta0 = DN^2 / 237^2``); sigma0 = beta0 * sin(incidence), taken at
#: 37 degrees (IW mid-swath). ``sigma0_dB ~= 20 log10(DN) + GRD_APPROX_DB_OFFSET``; error about
#: +-1 dB across the swath (30-46 degrees), thermal noise not removed. Prefer RTC products.
GRD_BETA_NOUGHT = 237.0
GRD_APPROX_INCIDENCE_DEG = 37.0
GRD_APPROX_DB_OFFSET = float(-20 * np.log10(GRD_BETA_NOUGHT) + 10 * np.log10(np.sin(np.radians(37.0))))

#: GCPs used for the local polynomial around one chip's source window.
_LOCAL_GCPS = 16


# ----------------------------------------------------------------------------------------- signing


@functools.lru_cache(maxsize=16)
def resolve_signer(name: str | None) -> Callable[[str], str]:
    """The href signing hook a plan names: ``none``, ``planetary_computer`` or ``module:function``.

    Raises:
        ChipReadError: the hook cannot be imported.
    """
    if not name or name == "none":
        return lambda href: href
    if name == "planetary_computer":
        try:
            import planetary_computer
        except ImportError as exc:
            raise ChipReadError(f"signing 'planetary_computer': package not installed ({exc})") from None
        return planetary_computer.sign
    module, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ChipReadError(f"signing hook {name!r}: cannot import ({exc})") from None
    if not callable(fn):
        raise ChipReadError(f"signing hook {name!r}: not callable")
    return fn


def _sign(href: str, sign: Callable[[str], str] | None) -> str:
    if sign is None:
        return href
    try:
        return str(sign(href))
    except Exception as exc:  # a signing service error must skip the chip, not kill the worker
        raise ChipReadError(f"{href}: signing failed: {type(exc).__name__}: {exc}") from None


# ----------------------------------------------------------------------------------------- reading


def _gcp_window(
    src: rasterio.DatasetReader, grid: ChipGrid
) -> tuple[Window, list[GroundControlPoint], object, GCPTransformer] | None:
    """Source window (+ margin) under the chip, the GCPs nearest to it, their CRS and a transformer.

    Returns None when the chip does not touch the image.
    """
    gcps, gcp_crs = src.gcps
    if not gcps or gcp_crs is None:
        raise ChipReadError("no CRS and no GCPs: the file cannot be georeferenced (refusing a silent read)")
    if len(gcps) < 3:
        raise ChipReadError(f"only {len(gcps)} GCPs: at least 3 are needed to georeference")
    t = np.linspace(0, grid.size, 9)
    cols = np.concatenate([t, np.full_like(t, grid.size), t[::-1], np.zeros_like(t), [grid.size / 2]])
    rows = np.concatenate([np.zeros_like(t), t, np.full_like(t, grid.size), t[::-1], [grid.size / 2]])
    xs, ys = grid.transform * (cols, rows)
    lon, lat = Transformer.from_crs(grid.crs, gcp_crs, always_xy=True).transform(xs, ys)
    full = GCPTransformer(gcps)
    r, c = full.rowcol(np.asarray(lon), np.asarray(lat), op=lambda v: v)
    r, c = np.asarray(r, float), np.asarray(c, float)
    # nearest GCPs to the chip centre (pixel space) -> a local fit, accurate within a GCP cell
    centre = np.array([r[-1], c[-1]])
    pts = np.array([[g.row, g.col] for g in gcps])
    near = [gcps[i] for i in np.argsort(np.hypot(*(pts - centre).T))[: min(len(gcps), _LOCAL_GCPS)]]
    local = GCPTransformer(near)
    r, c = local.rowcol(np.asarray(lon), np.asarray(lat), op=lambda v: v)
    r, c = np.asarray(r, float), np.asarray(c, float)
    pad = 8 + 0.1 * max(np.ptp(r), np.ptp(c))
    r0, r1 = max(0, math.floor(r.min() - pad)), min(src.height, math.ceil(r.max() + pad))
    c0, c1 = max(0, math.floor(c.min() - pad)), min(src.width, math.ceil(c.max() + pad))
    if r0 >= r1 or c0 >= c1:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0), near, gcp_crs, local


def _read_by_gcps(src: rasterio.DatasetReader, grid: ChipGrid, resampling: Resampling, fill: float) -> np.ndarray:
    """Warp the chip's source window of a GCP-georeferenced file onto the chip grid."""
    found = _gcp_window(src, grid)
    out = np.full((grid.size, grid.size), fill, np.float32)
    if found is None:
        return out
    win, near, gcp_crs, _ = found
    data = src.read(1, window=win).astype(np.float32)
    shifted = [GroundControlPoint(row=g.row - win.row_off, col=g.col - win.col_off, x=g.x, y=g.y, z=g.z) for g in near]
    reproject(
        source=data,
        destination=out,
        gcps=shifted,
        src_crs=gcp_crs,
        src_nodata=src.nodata,
        dst_transform=grid.transform,
        dst_crs=grid.crs,
        dst_nodata=fill,
        resampling=resampling,
    )
    return out


def read_band(
    href: str,
    grid: ChipGrid,
    resampling: Resampling,
    fill: float,
    sign: Callable[[str], str] | None = None,
) -> np.ndarray:
    """Read band 1 of ``href`` on ``grid``: float32 [H, W]; outside / nodata pixels get ``fill``.

    Args:
        href: the unsigned href from the plan.
        grid: the chip grid.
        resampling: resampling when the file is not on the chip grid.
        fill: value of pixels outside the file or nodata.
        sign: signing hook applied to ``href`` just before opening it (None: as is).

    Raises:
        ChipReadError: the file is missing, corrupt, unreadable, or cannot be georeferenced.
    """
    path = gdal_path(_sign(href, sign))
    try:
        with rasterio.open(path) as src:
            nodata = src.nodata
            if src.crs is None:
                data = _read_by_gcps(src, grid, resampling, fill)
            else:
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
    except ChipReadError as exc:
        raise ChipReadError(f"{href}: {exc}") from None
    except (rasterio.errors.RasterioError, OSError, ValueError) as exc:
        raise ChipReadError(f"{href}: {type(exc).__name__}: {exc}") from None
    out = data.astype(np.float32)
    if nodata is not None:
        out[(data == nodata) | ~np.isfinite(out)] = fill
    return out


# ----------------------------------------------------------------------------------------- units


def _calibration_lut(xml_text: str, kind: str = "sigmaNought") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lines [L], pixels [P], values [L, P]) of a Sentinel-1 calibration annotation."""
    root = ET.fromstring(xml_text)
    vectors = root.findall(".//calibrationVector")
    if not vectors:
        raise ChipReadError("calibration annotation has no calibrationVector")
    lines = np.array([float(v.findtext("line")) for v in vectors])
    pixels = np.array([float(x) for x in (vectors[0].findtext("pixel") or "").split()])
    values = []
    for v in vectors:
        px = np.array([float(x) for x in (v.findtext("pixel") or "").split()])
        val = np.array([float(x) for x in (v.findtext(kind) or "").split()])
        values.append(np.interp(pixels, px, val))
    return lines, pixels, np.vstack(values)


def _bilinear(lines: np.ndarray, pixels: np.ndarray, values: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    i = np.clip(np.searchsorted(lines, r) - 1, 0, len(lines) - 2)
    j = np.clip(np.searchsorted(pixels, c) - 1, 0, len(pixels) - 2)
    tr = np.clip((r - lines[i]) / (lines[i + 1] - lines[i]), 0, 1)
    tc = np.clip((c - pixels[j]) / (pixels[j + 1] - pixels[j]), 0, 1)
    top = values[i, j] * (1 - tc) + values[i, j + 1] * tc
    bottom = values[i + 1, j] * (1 - tc) + values[i + 1, j + 1] * tc
    return top * (1 - tr) + bottom * tr


def _read_text(href: str, sign: Callable[[str], str] | None) -> str:
    path = gdal_path(_sign(href, sign))
    try:
        if "://" in path:
            import requests

            resp = requests.get(path, timeout=30)
            resp.raise_for_status()
            return resp.text
        with open(path, encoding="utf-8") as f:
            return f.read()
    except Exception as exc:
        raise ChipReadError(f"{href}: calibration annotation unreadable: {type(exc).__name__}: {exc}") from None


def grd_calibration_on_grid(
    measurement_href: str, calibration_href: str, grid: ChipGrid, sign: Callable[[str], str] | None = None
) -> np.ndarray:
    """The sigmaNought calibration constant A [H, W] at every chip pixel (sigma0 = DN^2 / A^2).

    The chip pixels are traced back to the GRD's (line, pixel) through its GCPs and the LUT of the
    calibration annotation is interpolated there.
    """
    lines, pixels, values = _calibration_lut(_read_text(calibration_href, sign))
    try:
        with rasterio.open(gdal_path(_sign(measurement_href, sign))) as src:
            found = _gcp_window(src, grid) if src.crs is None else None
    except rasterio.errors.RasterioError as exc:
        raise ChipReadError(f"{measurement_href}: {exc}") from None
    if found is None:
        raise ChipReadError(f"{measurement_href}: calibration LUTs need a GCP-georeferenced GRD inside the chip")
    _, _, gcp_crs, local = found
    cols, rows = np.meshgrid(np.arange(grid.size) + 0.5, np.arange(grid.size) + 0.5)
    xs, ys = grid.transform * (cols.ravel(), rows.ravel())
    lon, lat = Transformer.from_crs(grid.crs, gcp_crs, always_xy=True).transform(xs, ys)
    r, c = local.rowcol(np.asarray(lon), np.asarray(lat), op=lambda v: v)
    return _bilinear(lines, pixels, values, np.asarray(r, float), np.asarray(c, float)).reshape(grid.size, grid.size)


def s1_to_db(x: np.ndarray, units: str, calibration: np.ndarray | None = None) -> np.ndarray:
    """S1 values in ``units`` -> dB; NaN where there is no value (nodata, values <= 0).

    Args:
        x: float32 [H, W] as read (NaN = nodata).
        units: ``dB``, ``linear`` (power) or ``amplitude`` (GRD DN).
        calibration: sigmaNought LUT on the chip grid (amplitude only); None: the approximation.
    """
    if units == "dB":
        return x
    with np.errstate(divide="ignore", invalid="ignore"):
        if units == "linear":
            out = 10.0 * np.log10(np.where(x > 0, x, np.nan))
        elif units == "amplitude":
            if calibration is not None:
                out = 10.0 * np.log10(np.where(x > 0, x * x, np.nan) / (calibration * calibration))
            else:
                out = 20.0 * np.log10(np.where(x > 0, x, np.nan)) + GRD_APPROX_DB_OFFSET
        else:
            raise ChipReadError(f"unknown S1 units {units!r}; expected dB, linear or amplitude")
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------------- chips


def read_chip_raw(row: dict[str, object]) -> RawChip:
    """Read the chip of one plan row in storage units (uint16 S2, float16 S1 dB, valid mask).

    The same code path as the tile-aware reader (:func:`eoforge.data.tiles.read_rows` with one
    row), so both give the same pixels. Every file is opened (and its href signed) for this call.

    Raises:
        ChipReadError: an asset is missing from the row, its file cannot be read or georeferenced.
    """
    from eoforge.data.tiles import DatasetCache, read_rows

    cache = DatasetCache()
    try:
        (result,) = read_rows([row], cache)
    finally:
        cache.close()
    if isinstance(result, ChipReadError):
        raise result
    return result


def read_chip(row: dict[str, object], mode: str = "ssl4eo") -> Chip:
    """Read the chip of one plan row, normalised (float32).

    Args:
        row: a plan row with ``crs``, ``transform`` (6 numbers), ``size_px``, ``s2_assets``,
            ``s1_assets`` (JSON band -> href), ``scl_href`` and ``label_href`` (may be None); and,
            from plans with provider profiles, ``s2_radiometry`` (JSON band -> [gain, offset]),
            ``s1_units``, ``s1_calibration`` (JSON band -> href) and ``access`` (JSON per sensor:
            ``signing`` hook name and GDAL ``env``). Rows without them read as dB S1, DN-as-is S2.
        mode: normalisation, see :mod:`eoforge.data.normalize`.

    Returns:
        the pixels of :func:`read_chip_raw` (S2 rounded to integer reflectance x 10000, S1 dB
        in float16 precision) normalised to float32.

    Raises:
        ChipReadError: an asset is missing from the row, its file cannot be read or georeferenced.
    """
    raw = read_chip_raw(row)
    return Chip(
        s1=normalize(raw.s1.astype(np.float32), S1_DB_MEAN, S1_DB_STD, raw.valid, mode),
        s2=normalize(raw.s2.astype(np.float32), S2_L2A_MEAN, S2_L2A_STD, raw.valid, mode),
        valid_fraction=raw.valid_fraction,
        label=raw.label,
    )
