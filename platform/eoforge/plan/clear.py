"""Per-chip clear fraction from the Sentinel-2 scene classification layer (SCL), one read per item.

:func:`clear_fractions` reads the SCL of one S2 item once (the window under all the chips asked
for, at its native 20 m), builds a summed-area table of its clear pixels and gets the clear share
of every chip from four look-ups in it. A pixel is clear when its class is not in
:data:`~eoforge.bands.S2_SCL_INVALID` (no data, saturated, cloud shadow, cloud medium /
high probability, thin cirrus) and not the file's nodata value.

The share is area-weighted: the summed-area table of a piecewise-constant image is interpolated
bilinearly at fractional pixel positions, which is exactly the integral of the image over the
chip's footprint. When the chip's pixels nest in SCL pixels (10 m or 20 m chips on the S2 tile
grid, the usual case) it equals the share of the chip's pixels whose nearest SCL pixel is clear.
Parts of a chip outside the SCL raster count as not clear.

Cost: one windowed read per item, one pass over its clear mask to build only the rows of the
summed-area table at the chips' edges, then O(1) per chip; no per-chip raster read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.windows import Window

from eoforge.bands import S2_SCL_INVALID
from eoforge.errors import CatalogError

if TYPE_CHECKING:  # the grid is only read (crs, transform)
    from eoforge.plan.sampling import Grid

#: A fractional pixel position this close to a whole number is that number (float round-off).
_SNAP = 1e-6


def _snap(v: np.ndarray) -> np.ndarray:
    r = np.rint(v)
    return np.where(np.abs(v - r) < _SNAP, r, v)


def _integral_at(table: np.ndarray, rows: np.ndarray, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a summed-area table at (row, col) positions in [0, h] x [0, w].

    ``table[k, j]`` = sum of the image over rows < ``rows[k]`` and cols < j (shape (len(rows), w + 1));
    ``rows`` (sorted) holds floor(v) and floor(v) + 1 of every position asked for.
    """
    h, w = int(rows[-1]), table.shape[1] - 1
    v = np.clip(v, 0.0, float(h))
    u = np.clip(u, 0.0, float(w))
    i = np.minimum(np.floor(v).astype(np.int64), h - 1)
    j = np.minimum(np.floor(u).astype(np.int64), w - 1)
    t, s = v - i, u - j
    k = np.searchsorted(rows, i)
    t00, t01 = table[k, j].astype(np.float64), table[k, j + 1].astype(np.float64)
    t10, t11 = table[k + 1, j].astype(np.float64), table[k + 1, j + 1].astype(np.float64)
    return (1 - t) * ((1 - s) * t00 + s * t01) + t * ((1 - s) * t10 + s * t11)


def clear_table(clear: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of the summed-area table of a boolean mask [h, w].

    Args:
        clear: bool [h, w].
        rows: sorted unique row indices in [0, h], including 0 and h.

    Returns:
        int [len(rows), w + 1]: ``[k, j]`` = clear pixels in rows < ``rows[k]``, cols < j. Only these rows
        are built (one pass over the mask), not the whole (h + 1) x (w + 1) table.
    """
    h, w = clear.shape
    dtype = np.int32 if h * w < 2**31 else np.int64
    table = np.zeros((len(rows), w + 1), dtype)
    if len(rows) > 1:
        # clear pixels per column in each band of rows rows[k] .. rows[k + 1] - 1 (a loop over the bands
        # of contiguous rows is ~20x faster than np.add.reduceat along axis 0)
        mask = clear.view(np.uint8)
        bands = np.stack([mask[a:b].sum(axis=0, dtype=dtype) for a, b in pairwise(rows.tolist())])
        np.cumsum(bands, axis=0, out=table[1:, 1:])
        np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
    return table


#: True for the SCL classes that count as clear (uint8 lookup table).
_CLEAR_LUT = np.ones(256, bool)
_CLEAR_LUT[list(S2_SCL_INVALID)] = False


def clear_fractions(
    scl_href: str,
    grid: Grid,
    origins_rc: np.ndarray,
    size_px: int,
    sign: Callable[[str], str] | None = None,
    env: Mapping[str, str] | None = None,
) -> np.ndarray:
    """Share of each chip's area that the SCL calls clear.

    Args:
        scl_href: href of the S2 item's SCL asset (as published; ``sign`` signs it for the read).
        grid: the chip grid of the S2 item (its CRS, transform at the chip resolution, shape).
        origins_rc: int array [N, 2], (row, col) pixel offsets of the chips' upper-left corners on ``grid``.
        size_px: chip side in ``grid`` pixels.
        sign: href signing hook (``planetary_computer.sign`` and the like), or None.
        env: extra GDAL options for the read (the provider's, no secrets).

    Returns:
        float32 array [N] in [0, 1].

    Raises:
        CatalogError: the SCL cannot be read, is not georeferenced, is rotated or is in another CRS
            than ``grid`` (the message names the href); the planner skips the item.
    """
    origins = np.asarray(origins_rc)
    if origins.ndim != 2 or origins.shape[1] != 2 or not np.issubdtype(origins.dtype, np.integer):
        raise ValueError(f"origins_rc must be an int array [N, 2] of (row, col), got {origins.dtype} {origins.shape}")
    if size_px <= 0:
        raise ValueError(f"size_px must be > 0, got {size_px}")
    n = origins.shape[0]
    if n == 0:
        return np.zeros(0, np.float32)
    try:
        href = str(sign(scl_href)) if sign is not None else scl_href
    except Exception as exc:  # a signing service error skips the item, it does not end the plan
        raise CatalogError(f"SCL {scl_href}: signing failed: {type(exc).__name__}: {exc}") from None
    gt = grid.transform
    try:
        with rasterio.Env(**dict(env or {})), rasterio.open(href) as src:
            st = src.transform
            if src.crs is None or st.is_identity:
                raise CatalogError(f"SCL {scl_href}: not georeferenced (no CRS / transform)")
            if st.b != 0 or st.d != 0:
                raise CatalogError(f"SCL {scl_href}: rotated grid is not supported ({st})")
            if src.crs != CRS.from_user_input(grid.crs):
                raise CatalogError(f"SCL {scl_href}: CRS {src.crs} differs from the S2 grid's {grid.crs}")
            # chip edges on the chip grid -> map coordinates -> fractional SCL pixel positions
            r = origins[:, 0].astype(np.float64)
            c = origins[:, 1].astype(np.float64)
            xa, xb = gt.c + gt.a * c, gt.c + gt.a * (c + size_px)
            ya, yb = gt.f + gt.e * r, gt.f + gt.e * (r + size_px)
            ua, ub = _snap((xa - st.c) / st.a), _snap((xb - st.c) / st.a)
            va, vb = _snap((ya - st.f) / st.e), _snap((yb - st.f) / st.e)
            u0, u1 = np.minimum(ua, ub), np.maximum(ua, ub)
            v0, v1 = np.minimum(va, vb), np.maximum(va, vb)
            area = (u1 - u0) * (v1 - v0)
            # one read: the window under every chip, clipped to the raster
            row_lo = int(np.clip(np.floor(v0.min()), 0, src.height))
            row_hi = int(np.clip(np.ceil(v1.max()), 0, src.height))
            col_lo = int(np.clip(np.floor(u0.min()), 0, src.width))
            col_hi = int(np.clip(np.ceil(u1.max()), 0, src.width))
            if row_hi <= row_lo or col_hi <= col_lo:
                return np.zeros(n, np.float32)
            scl = src.read(1, window=Window(col_lo, row_lo, col_hi - col_lo, row_hi - row_lo))
            nodata = src.nodata
    except rasterio.errors.RasterioError as exc:
        raise CatalogError(f"SCL {scl_href}: unreadable: {exc}") from None
    clear = _CLEAR_LUT[scl] if scl.dtype == np.uint8 else ~np.isin(scl, S2_SCL_INVALID)
    if nodata is not None and not np.isnan(nodata):
        clear &= scl != nodata
    h = clear.shape[0]
    v0, v1, u0, u1 = v0 - row_lo, v1 - row_lo, u0 - col_lo, u1 - col_lo
    edges = np.clip(np.floor(np.concatenate([v0, v1])).astype(np.int64), 0, h - 1)
    rows = np.unique(np.concatenate([[0, h], edges, edges + 1]))
    table = clear_table(clear, rows)
    total = _integral_at(table, rows, v1, u1) - _integral_at(table, rows, v0, u1)
    total += _integral_at(table, rows, v0, u0) - _integral_at(table, rows, v1, u0)
    frac = np.divide(total, area, out=np.zeros(n, np.float64), where=area > 0)
    return np.clip(frac, 0.0, 1.0).astype(np.float32)
