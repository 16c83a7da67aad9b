"""Sentinel-1 values in the units a plan row declares, taken to dB (``s1_units``).

- ``dB``: as stored;
- ``linear`` (RTC gamma0, calibrated sigma0): ``10 log10``;
- ``amplitude`` (GRD DN): sigma0 with the calibration annotation when the plan links it
  (``s1_calibration``), traced to every chip pixel through the GRD's GCPs
  (:func:`grd_calibration_on_grid`), else the documented approximation
  :data:`GRD_APPROX_DB_OFFSET`.

Values <= 0 have no dB value and come out as NaN (masked by the reader).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

import numpy as np
import rasterio
from pyproj import Transformer

from eoforge.catalog.assets import gdal_path, sign_href
from eoforge.data.grid import ChipGrid, gcp_window
from eoforge.errors import ChipReadError

#: GRD DN -> sigma0 without a calibration annotation. Sentinel-1 IW/EW GRD calibration LUTs give a
#: constant betaNought of 237 (``beta0 = DN^2 / 237^2``); sigma0 = beta0 * sin(incidence), taken at
#: 37 degrees (IW mid-swath). ``sigma0_dB ~= 20 log10(DN) + GRD_APPROX_DB_OFFSET``; error about
#: +-1 dB across the swath (30-46 degrees), thermal noise not removed. Prefer RTC products.
GRD_BETA_NOUGHT = 237.0
GRD_APPROX_INCIDENCE_DEG = 37.0
GRD_APPROX_DB_OFFSET = float(-20 * np.log10(GRD_BETA_NOUGHT) + 10 * np.log10(np.sin(np.radians(37.0))))


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
    path = gdal_path(sign_href(href, sign))
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
        with rasterio.open(gdal_path(sign_href(measurement_href, sign))) as src:
            found = gcp_window(src, grid) if src.crs is None else None
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
