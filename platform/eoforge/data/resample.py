"""Resampling of a source raster onto a chip grid with index/weight maps computed once per grid pair.

Three steps, one module each:

- :mod:`eoforge.data.grid_keys`: the source's georeferencing (:class:`SourceGrid`), the chip grid
  (:class:`ChipGridKey`), its pixel lattice, and chips on one lattice gathered into mosaics
  (:func:`mosaics`);
- :mod:`eoforge.data.sample_maps`: for every pixel of a chip grid, which source pixels it is made
  of (:class:`SampleMap`: ``aligned``, ``bilinear`` or ``nearest``), computed once per (source
  grid, chip grid, kind) and kept in an LRU bounded by bytes (:func:`sample_map`);
- here: applying a map. :func:`apply_map` cuts one chip out of any source window that covers the
  map's ``bbox``, GDAL's convention (pixel ``i`` spans ``[i, i + 1)``, bilinear weights between the
  four pixel centres around the point); neighbours outside the image or equal to nodata get no
  weight and the rest are renormalised; a pixel with no weight left gets the fill value.

A chip read alone and a chip cut from a tile read for many chips give the same pixels exactly.
Compared with :class:`rasterio.vrt.WarpedVRT` (GDAL's approximate transformer, error threshold
0.125 px) the values agree within a few DN on smooth fields (``tests/unit/test_tile_reader.py``).

The grid keys and the sample maps are re-exported here (:data:`__all__`), so
``from eoforge.data.resample import ChipGridKey, sample_map, apply_map`` keeps working. The map
cache itself (``_MAPS``) lives in :mod:`eoforge.data.sample_maps`: patch it there.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from eoforge.data import kernels
from eoforge.data.grid_keys import ChipGridKey, SourceGrid, lattice, mosaics
from eoforge.data.sample_maps import (
    SampleMap,
    clear_sample_maps,
    pixel_centres,
    reproject_centres,
    sample_map,
    source_coords,
    union_bbox,
)

# SourceGrid, ChipGridKey, lattice and mosaics moved to eoforge.data.grid_keys, the sample maps and
# their cache to eoforge.data.sample_maps: importers of ``eoforge.data.resample`` keep working.
__all__ = [
    "TAPS_CACHE",
    "ChipGridKey",
    "SampleMap",
    "SourceGrid",
    "apply_map",
    "clear_sample_maps",
    "lattice",
    "mosaics",
    "pixel_centres",
    "reproject_centres",
    "sample_map",
    "source_coords",
    "union_bbox",
    "valid_mask",
]


def valid_mask(v: np.ndarray, nodata: float | None) -> np.ndarray:
    """Bool mask of ``v``'s shape: finite and, when ``nodata`` is set, not equal to it (as stored)."""
    ok = np.isfinite(v)
    if nodata is not None:
        ok &= v != nodata
    return ok


def apply_map(m: SampleMap, data: np.ndarray, origin: tuple[int, int], nodata: float | None, fill: float) -> np.ndarray:
    """Cut one chip out of a source window.

    Args:
        m: the chip's sample map.
        data: [h, w] source pixels of the window starting at ``origin``; it must cover
            ``m.bbox`` (any dtype; compared with ``nodata`` as stored).
        origin: (row, col) of ``data[0, 0]`` in the source.
        nodata: the source's nodata value (None: none).
        fill: value of chip pixels outside the image, on nodata, or with no valid neighbour.

    Returns:
        float32 [H, W] (the map's shape).
    """
    shape, (R0, C0) = m.shape, origin
    h, w = data.shape
    if m.kind == "aligned":
        out = np.full(shape, fill, np.float32)
        r, c = int(m.rows[0]), int(m.cols[0])
        r0, r1, c0, c1 = m.bbox
        if r0 < r1 and c0 < c1:
            block = data[r0 - R0 : r1 - R0, c0 - C0 : c1 - C0]
            vals = block.astype(np.float32)
            vals[~valid_mask(block, nodata)] = fill
            out[r0 - r : r1 - r, c0 - c : c1 - c] = vals
        return out

    if m.kind not in ("nearest", "bilinear"):
        raise ValueError(f"apply_map: unknown kind {m.kind!r}")
    h, w = data.shape
    if not (h and w):
        return np.full(shape, fill, np.float32)
    # one pass, no mask, when every source pixel is valid (the usual case); the mask only when not
    all_ok = kernels.all_valid(data, nodata is not None, 0.0 if nodata is None else float(nodata))
    ok = np.ones(data.shape, bool) if all_ok else valid_mask(data, nodata)
    if m.kind == "bilinear" and m.separable:
        r_lo, c_lo = m.rows[:, 0].astype(np.intp) - R0, m.cols[0].astype(np.intp) - C0
        return _separable_bilinear(m, data, r_lo, c_lo, ok, all_ok, fill)
    checked = not (m.inside and all_ok)  # some neighbours may be outside or invalid
    flat = data.ravel()
    if m.kind == "bilinear" and not checked:
        # every neighbour inside and valid: the four flat indices and weights of this map and
        # window are computed once (S1 VV and VH share them)
        k00, weights = _taps(m, origin, w)
        return kernels.taps_bilinear(flat, k00, w, *weights)
    rows, cols = m.rows.astype(np.intp) - R0, m.cols.astype(np.intp) - C0
    ok_flat = ok.ravel()
    steps = ((0, 0),) if m.kind == "nearest" else ((0, 0), (0, 1), (1, 0), (1, 1))
    idx, oks = [], []
    for dr, dc in steps:
        r, c = rows + dr, cols + dc
        if checked:
            inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            r, c = np.clip(r, 0, h - 1), np.clip(c, 0, w - 1)
            k = r * w + c
            oks.append(np.broadcast_to(inside & ok_flat[k], shape))
        else:
            k = r * w + c
        idx.append(k)
    if m.kind == "nearest":
        out = flat[np.broadcast_to(idx[0], shape)].astype(np.float32)
        return np.where(oks[0], out, np.float32(fill)) if checked else out
    assert m.wr is not None and m.wc is not None
    wr, wc = m.wr, m.wc
    # each pixel's value depends only on its own four neighbours and weights (never on the rest
    # of the window), so a chip sampled alone and as part of a mosaic gives the same float32 values
    weights = ((1 - wr) * (1 - wc), (1 - wr) * wc, wr * (1 - wc), wr * wc)
    out = weights[0] * flat[idx[0]].astype(np.float32)
    for k, wk in zip(idx[1:], weights[1:], strict=True):
        out += wk * flat[k].astype(np.float32)
    every = oks[0] & oks[1] & oks[2] & oks[3]
    if every.all():
        return out
    # pixels with a neighbour outside the image or invalid: renormalise over the valid ones
    bad = ~every
    wrb, wcb = np.broadcast_to(wr, shape)[bad], np.broadcast_to(wc, shape)[bad]
    acc = np.zeros(wrb.shape, np.float32)
    wsum = np.zeros(wrb.shape, np.float32)
    for k, okk, wk in zip(idx, oks, ((1 - wrb) * (1 - wcb), (1 - wrb) * wcb, wrb * (1 - wcb), wrb * wcb), strict=True):
        wk = np.where(okk[bad], wk, np.float32(0))
        acc += wk * np.where(okk[bad], flat[np.broadcast_to(k, shape)[bad]], 0).astype(np.float32)
        wsum += wk
    good = wsum > 1e-5
    out[bad] = np.where(good, acc / np.where(good, wsum, 1), np.float32(fill))
    return out


#: (map id, window origin, window width) -> flat index of the top-left neighbours and the 4 weights.
_TAPS: OrderedDict[tuple[int, int, int, int], tuple[SampleMap, np.ndarray, tuple[np.ndarray, ...]]] = OrderedDict()


def _taps(m: SampleMap, origin: tuple[int, int], width: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Flat index (int [H, W]) of each pixel's top-left neighbour in a window, and its 4 bilinear weights.

    Kept for the last few (map, window) pairs: the bands of one file set share them.
    """
    key = (id(m), origin[0], origin[1], width)
    hit = _TAPS.get(key)
    if hit is not None and hit[0] is m:
        _TAPS.move_to_end(key)
        return hit[1], hit[2]
    assert m.wr is not None and m.wc is not None
    shape = m.shape
    k00 = np.broadcast_to((m.rows.astype(np.intp) - origin[0]) * width + (m.cols.astype(np.intp) - origin[1]), shape)
    wr, wc = m.wr, m.wc
    weights = tuple(
        np.broadcast_to(x, shape).astype(np.float32)
        for x in ((1 - wr) * (1 - wc), (1 - wr) * wc, wr * (1 - wc), wr * wc)
    )
    _TAPS[key] = (m, np.ascontiguousarray(k00), weights)
    while len(_TAPS) > TAPS_CACHE:
        _TAPS.popitem(last=False)
    return _TAPS[key][1], weights


#: (map, window) pairs whose taps are kept (~5 MB each for a 512 px mosaic).
TAPS_CACHE = 4


def _axis_taps(
    lo: np.ndarray, w1: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two taps of a separable bilinear axis: clipped indices, weights, and which taps are inside.

    ``lo``: int [K] index of the lower neighbour in a window of ``n`` pixels; ``w1``: float32 [K]
    weight of the upper one. Returns (lo, hi) clipped to [0, n), their weights (1 - w1, w1), and
    bool [K] per tap: inside the window.
    """
    hi = lo + 1
    in_lo, in_hi = (lo >= 0) & (lo < n), (hi >= 0) & (hi < n)
    return np.clip(lo, 0, n - 1), np.clip(hi, 0, n - 1), 1 - w1, w1, in_lo, in_hi


def _separable_bilinear(
    m: SampleMap, data: np.ndarray, r_lo: np.ndarray, c_lo: np.ndarray, ok: np.ndarray, all_ok: bool, fill: float
) -> np.ndarray:
    """Bilinear resampling of a separable map: a column pass per source row, then a row pass.

    Renormalisation over the valid neighbours (GDAL's convention) stays separable: the four
    weights are products of a row and a column weight, so the weighted sums of ``value * valid``
    and of ``valid`` are two separable passes. Pixels whose four neighbours are all inside and
    valid get ``across[top] * (1 - wr) + across[bottom] * wr`` exactly (no division), so a chip
    cut from a mosaic and read alone have the same float32 values.

    Args:
        m: the separable bilinear map (weights ``wr`` [H, 1], ``wc`` [1, W]).
        data: [h, w] source window (any dtype).
        r_lo: int [H] upper neighbour row of each grid row, in window pixels (may lie outside).
        c_lo: int [W] left neighbour column of each grid column, in window pixels (may lie outside).
        ok: bool [h, w] valid source pixels.
        all_ok: ``ok.all()``.
        fill: value of pixels with no valid neighbour.

    Returns:
        float32 [H, W].
    """
    assert m.wr is not None and m.wc is not None
    h, w = data.shape
    top, bottom, wt, wb, in_t, in_b = _axis_taps(r_lo, m.wr[:, 0], h)
    left, right, wl, wr_, in_l, in_r = _axis_taps(c_lo, m.wc[0], w)
    lo = int(min(top.min(), bottom.min()))
    hi = int(max(top.max(), bottom.max())) + 1
    band = data[lo:hi]
    top, bottom = top - lo, bottom - lo

    def passes(v: np.ndarray, wl: np.ndarray, wr_: np.ndarray, wt: np.ndarray, wb: np.ndarray) -> np.ndarray:
        v = v.astype(np.float32, copy=False)
        across = v[:, left] * wl + v[:, right] * wr_
        return across[top] * wt[:, None] + across[bottom] * wb[:, None]

    rows_in, cols_in = in_t & in_b, in_l & in_r
    z, one = np.float32(0), np.float32(1)
    if all_ok:
        # renormalising over the taps inside the image is separable too: an axis with one tap
        # outside gives the other tap all its weight (rows/columns with both taps inside are unchanged)
        wt, wb = np.where(rows_in, wt, np.where(in_t, one, z)), np.where(rows_in, wb, np.where(in_b, one, z))
        wl, wr_ = np.where(cols_in, wl, np.where(in_l, one, z)), np.where(cols_in, wr_, np.where(in_r, one, z))
        c = np.ascontiguousarray
        out = kernels.separable_bilinear(c(band), c(top), c(bottom), c(wt), c(wb), c(left), c(right), c(wl), c(wr_))
        # no neighbour inside the image: a whole row or column (the [H, W] mask only when there is one)
        rows_none, cols_none = ~(in_t | in_b), ~(in_l | in_r)
        if not (rows_none.any() or cols_none.any()):
            return out
        return np.where(rows_none[:, None] | cols_none[None, :], np.float32(fill), out)
    out = passes(band, wl, wr_, wt, wb)
    # some source pixels invalid (nodata): pixels with an invalid or outside neighbour are
    # renormalised over the valid ones (weighted sums of value * valid and of valid, separably)
    wl0, wr0 = np.where(in_l, wl, z), np.where(in_r, wr_, z)
    wt0, wb0 = np.where(in_t, wt, z), np.where(in_b, wb, z)
    valid = ok[lo:hi].astype(np.float32)
    ones_c, ones_r = np.ones_like(wl), np.ones_like(wt)
    bad = ~(rows_in[:, None] & cols_in[None, :])
    bad |= passes(1 - valid, ones_c, ones_c, ones_r, ones_r) > 0  # an invalid neighbour
    num = passes(np.where(ok[lo:hi], band, 0), wl0, wr0, wt0, wb0)
    den = passes(valid, wl0, wr0, wt0, wb0)
    good = den > 1e-5
    fixed = np.where(good, num / np.where(good, den, 1), np.float32(fill))
    return np.where(bad, fixed, out)
