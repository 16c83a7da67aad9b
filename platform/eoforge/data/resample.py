"""Resampling of a source raster onto a chip grid with index/weight maps computed once per grid pair.

A :class:`SampleMap` says, for every pixel of a chip grid, which source pixels it is made of:

- ``aligned``: same CRS, same pixel size, integer offset (S2 10 m bands on a 10 m chip grid):
  the chip is a plain slice of the source, the stored values bit for bit;
- ``bilinear`` (measurements) / ``nearest`` (classes: SCL, labels): the chip pixel centre is
  taken to the source (PROJ for another CRS, the source's affine, or the GCPs nearest the chip
  for Sentinel-1 GRD in radar geometry) and sampled there, GDAL's convention: pixel ``i`` spans
  ``[i, i + 1)``, bilinear weights between the four pixel centres around the point; neighbours
  outside the image or equal to nodata get no weight and the rest are renormalised; a pixel with
  no weight left gets the fill value.

Maps depend only on (source grid, chip grid, kind), so they are cached (:func:`sample_map`, LRU):
the 20/60 m bands of every date over one place, and every chip of the same grid, reuse them.
:func:`apply_map` cuts one chip out of any source window that covers the map's ``bbox``, so a
chip read alone and a chip cut from a tile read for many chips give the same pixels exactly.
Compared with :class:`rasterio.vrt.WarpedVRT` (GDAL's approximate transformer, error threshold
0.125 px) the values agree within a few DN on smooth fields (``tests/unit/test_tile_reader.py``).
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from dataclasses import dataclass

import cachetools
import numpy as np
from pyproj import CRS, Transformer
from rasterio.control import GroundControlPoint
from rasterio.transform import Affine, GCPTransformer

from eoforge.data import kernels
from eoforge.errors import ChipReadError

#: GCPs used for the local polynomial around one chip (GRD in radar geometry).
LOCAL_GCPS = 16


@dataclass(frozen=True)
class SourceGrid:
    """Georeferencing of a source file: CRS + affine, or GCPs (then ``crs`` is the GCPs' CRS).

    ``gcps`` is a tuple of (row, col, x, y) or None; ``width``/``height`` in pixels.
    """

    crs: str | None
    transform: tuple[float, ...]
    width: int
    height: int
    gcps: tuple[tuple[float, float, float, float], ...] | None = None


@dataclass(frozen=True)
class ChipGridKey:
    """A pixel grid as a hashable key: CRS string, 6 affine numbers, ``size`` rows (and ``width`` columns).

    A chip grid is square (``width`` 0 means ``size``); a mosaic of chips (:func:`mosaics`) is not.
    """

    crs: str
    transform: tuple[float, ...]
    size: int
    width: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) in pixels."""
        return self.size, self.width or self.size


#: Decimals kept of a lattice phase (metres or degrees): chips whose origins agree to this share a lattice.
PHASE_DECIMALS = 6
#: Lattice cells (pixels) per mosaic side: chips whose origins fall in one cell are read as one mosaic.
MOSAIC_CELL = 512
#: A mosaic is used only when its chips cover at least this share of it (else chip by chip).
MOSAIC_MIN_FILL = 0.25


def _phase(v: float, step: float) -> float:
    p = round(v % step, PHASE_DECIMALS)
    return 0.0 if math.isclose(p, step, abs_tol=10**-PHASE_DECIMALS) or p == 0 else p


def lattice(grid: ChipGridKey) -> tuple[tuple[str, float, float, float, float], int, int] | None:
    """The pixel lattice of an unrotated grid and the grid's origin on it, or None (rotated).

    Returns ``((crs, a, e, phase_x, phase_y), col0, row0)``: pixel ``(r, c)`` of the grid has its
    centre at ``x = phase_x + a * (col0 + c + 0.5)``, ``y = phase_y + e * (row0 + r + 0.5)``.
    Computing centres from integer lattice indices makes a chip's pixel centres bit-identical
    whether it is sampled alone or as part of a mosaic, so both give the same pixels exactly.
    """
    a, b, c, d, e, f = grid.transform[:6]
    if b != 0 or d != 0 or a == 0 or e == 0:
        return None
    px, py = _phase(c, a), _phase(f, e)
    return (grid.crs, a, e, px, py), round((c - px) / a), round((f - py) / e)


def _mosaic(
    key: tuple[str, float, float, float, float], size: int, members: list[tuple[int, int, int]]
) -> tuple[ChipGridKey, list[tuple[int, int, int]]] | None:
    """The bounding grid of ``members`` (grid index, row0, col0 on the lattice ``key``).

    None when it would be larger than a cell plus a chip, or its chips cover less than
    :data:`MOSAIC_MIN_FILL` of it.
    """
    r_lo, c_lo = min(m[1] for m in members), min(m[2] for m in members)
    h, w = max(m[1] for m in members) - r_lo + size, max(m[2] for m in members) - c_lo + size
    if len(members) > 1 and (max(h, w) > MOSAIC_CELL + size or len(members) * size * size < MOSAIC_MIN_FILL * h * w):
        return None
    crs, a, e, px, py = key
    grid = ChipGridKey(crs, (a, 0.0, px + a * c_lo, 0.0, e, py + e * r_lo), h, w)
    return grid, [(k, r - r_lo, c - c_lo) for k, r, c in members]


def mosaics(grids: list[ChipGridKey] | tuple[ChipGridKey, ...]) -> list[tuple[ChipGridKey, list[tuple[int, int, int]]]]:
    """Chip grids gathered into mosaic grids that are sampled once and cut into chips.

    Chips on one pixel lattice make one mosaic (their bounding grid) when it is at most
    :data:`MOSAIC_CELL` + a chip on a side and they cover at least :data:`MOSAIC_MIN_FILL` of it (a
    tile group of chips); chips spread wider are split by :data:`MOSAIC_CELL` cells of the lattice,
    under the same rule; any other chip is its own mosaic.

    Returns:
        ``[(mosaic grid, [(index into grids, row offset, col offset)])]`` (cached: every band of a
        tile group asks for the same grids).
    """
    return _mosaics(tuple(grids))


@functools.lru_cache(maxsize=32)
def _mosaics(grids: tuple[ChipGridKey, ...]) -> list[tuple[ChipGridKey, list[tuple[int, int, int]]]]:
    lattices: dict[tuple, list[tuple[int, int, int]]] = {}
    out: list[tuple[ChipGridKey, list[tuple[int, int, int]]]] = []
    for k, g in enumerate(grids):
        lat = lattice(g)
        if lat is None or g.width not in (0, g.size):
            out.append((g, [(k, 0, 0)]))
            continue
        key, col0, row0 = lat
        lattices.setdefault((key, g.size), []).append((k, row0, col0))
    for (key, size), members in lattices.items():
        if _mosaic(key, size, members) is None:  # spread out: one mosaic per cell
            cells: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
            for m in members:
                cells.setdefault((m[1] // MOSAIC_CELL, m[2] // MOSAIC_CELL), []).append(m)
            parts = list(cells.values())
        else:
            parts = [members]
        for part in parts:
            mosaic = _mosaic(key, size, part)
            if mosaic is None:
                out.extend((grids[k], [(k, 0, 0)]) for k, _, _ in part)
            else:
                out.append(mosaic)
    return out


@dataclass(frozen=True)
class SampleMap:
    """Which source pixels make each chip pixel (see module docstring).

    Attributes:
        kind: ``aligned``, ``bilinear`` or ``nearest``.
        shape: the grid's (H, W) in pixels.
        rows, cols: int32 [H, W], or [H, 1] and [1, W] when the map is separable (same CRS, no
            rotation: a row of the grid reads one source row): the top-left neighbour (bilinear),
            the pixel (nearest) or, for ``aligned``, [1] arrays with the chip's offset in the source.
        wr, wc: float32 weights towards row + 1 / col + 1, shaped like ``rows`` / ``cols`` (bilinear only).
        bbox: (row0, row1, col0, col1) half-open source pixel range needed, clipped to the image
            (row0 >= row1 when the chip does not touch the image).
        inside: every source pixel the map reads lies in the image (no clipping needed).
    """

    kind: str
    shape: tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray
    wr: np.ndarray | None
    wc: np.ndarray | None
    bbox: tuple[int, int, int, int]
    inside: bool = True

    @property
    def separable(self) -> bool:
        """Rows depend on the grid row only, columns on the grid column only."""
        return self.rows.ndim == 2 and self.rows.shape[1] == 1 and self.cols.shape[0] == 1


def _same_crs(a: str, b: str) -> bool:
    return a == b or CRS.from_user_input(a) == CRS.from_user_input(b)


def _aligned(src: SourceGrid, grid: ChipGridKey) -> tuple[int, int] | None:
    if src.crs is None or src.gcps is not None or not _same_crs(src.crs, grid.crs):
        return None
    st, gt = Affine(*src.transform), Affine(*grid.transform)
    if not (math.isclose(st.a, gt.a) and math.isclose(st.e, gt.e) and st.b == 0 and st.d == 0):
        return None
    col, row = ~st * (gt.c, gt.f)
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(row), round(col)


def _gcp_local(src: SourceGrid, grid: ChipGridKey) -> tuple[GCPTransformer, str]:
    """A GCP transformer fitted on the GCPs nearest the chip centre, and the GCPs' CRS."""
    if not src.gcps or src.crs is None:
        raise ChipReadError("no CRS and no GCPs: the file cannot be georeferenced (refusing a silent read)")
    if len(src.gcps) < 3:
        raise ChipReadError(f"only {len(src.gcps)} GCPs: at least 3 are needed to georeference")
    gcps = [GroundControlPoint(row=r, col=c, x=x, y=y) for r, c, x, y in src.gcps]
    cx, cy = Affine(*grid.transform) * (grid.shape[1] / 2, grid.shape[0] / 2)
    lon, lat = _transformer(grid.crs, src.crs).transform(cx, cy)
    r, c = GCPTransformer(gcps).rowcol(np.asarray([lon]), np.asarray([lat]), op=lambda v: v)
    centre = np.array([float(np.asarray(r).ravel()[0]), float(np.asarray(c).ravel()[0])])
    pts = np.array([[g.row, g.col] for g in gcps])
    near = [gcps[i] for i in np.argsort(np.hypot(*(pts - centre).T), kind="stable")[: min(len(gcps), LOCAL_GCPS)]]
    return GCPTransformer(near), src.crs


@functools.lru_cache(maxsize=64)
def _transformer(src_crs: str, dst_crs: str) -> Transformer:
    return Transformer.from_crs(src_crs, dst_crs, always_xy=True)


def pixel_centres(grid: ChipGridKey) -> tuple[np.ndarray, np.ndarray]:
    """x, y of every pixel centre of ``grid``: float64 [H, W] each (see :func:`lattice`)."""
    h, w = grid.shape
    lat = lattice(grid)
    if lat is None:
        cc, rr = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        xs, ys = Affine(*grid.transform) * (cc, rr)
        return np.asarray(xs, float), np.asarray(ys, float)
    (_, a, e, px, py), col0, row0 = lat
    xs = px + a * (col0 + np.arange(w) + 0.5)
    ys = py + e * (row0 + np.arange(h) + 0.5)
    return np.broadcast_to(xs, (h, w)), np.broadcast_to(ys[:, None], (h, w))


#: Lattice pixels between the nodes where PROJ is evaluated exactly (see :func:`reproject_centres`).
PROJ_NODE_STEP = 16


def reproject_centres(grid: ChipGridKey, dst_crs: str) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of ``grid`` in ``dst_crs``: float64 [H, W] each, PROJ on a sparse node lattice.

    PROJ runs on the pixel centres of every :data:`PROJ_NODE_STEP`-th lattice index (the nodes are
    anchored to the lattice, not to the grid, so a chip alone and in a mosaic see the same nodes)
    and the centres in between are interpolated bilinearly: GDAL's approximate transformer does
    the same. Over 16 px of 10 m the interpolation error is far below 0.01 px
    (``tests/unit/test_tile_reader.py``); a chip costs about 1/256 of the PROJ calls.
    """
    (_, a, e, px, py), col0, row0 = lattice(grid)  # type: ignore[misc]
    h, w = grid.shape
    step = PROJ_NODE_STEP
    ci, ri = col0 + np.arange(w), row0 + np.arange(h)  # global lattice indices
    nc0, nr0 = col0 // step, row0 // step
    ncols, nrows = (col0 + w - 1) // step - nc0 + 2, (row0 + h - 1) // step - nr0 + 2
    node_x = px + a * ((nc0 + np.arange(ncols)) * step + 0.5)
    node_y = py + e * ((nr0 + np.arange(nrows)) * step + 0.5)
    gx, gy = np.meshgrid(node_x, node_y)
    nx, ny = _transformer(grid.crs, dst_crs).transform(gx, gy)
    nx, ny = np.asarray(nx, float), np.asarray(ny, float)
    jc, jr = ci // step - nc0, ri // step - nr0  # node left of / above each pixel
    tc, tr = ((ci % step) / step)[None, :], ((ri % step) / step)[:, None]
    jc, jr = jc[None, :], jr[:, None]

    def interp(v: np.ndarray) -> np.ndarray:
        across = v[:, jc[0]] * (1 - tc) + v[:, jc[0] + 1] * tc  # [node rows, W]
        return across[jr[:, 0]] * (1 - tr) + across[jr[:, 0] + 1] * tr

    return interp(nx), interp(ny)


def source_coords(src: SourceGrid, grid: ChipGridKey) -> tuple[np.ndarray, np.ndarray]:
    """Continuous source (row, col) of every grid pixel centre: float64 [H, W] each."""
    h, w = grid.shape
    xs, ys = pixel_centres(grid)
    if src.gcps is not None:
        local, gcp_crs = _gcp_local(src, grid)
        lon, lat = _transformer(grid.crs, gcp_crs).transform(xs.ravel(), ys.ravel())
        r, c = local.rowcol(np.asarray(lon), np.asarray(lat), op=lambda v: v)
        return np.asarray(r, float).reshape(h, w), np.asarray(c, float).reshape(h, w)
    if src.crs is None:
        raise ChipReadError("no CRS and no GCPs: the file cannot be georeferenced (refusing a silent read)")
    if not _same_crs(src.crs, grid.crs):
        if lattice(grid):
            xs, ys = reproject_centres(grid, src.crs)
        else:
            xs, ys = _transformer(grid.crs, src.crs).transform(xs, ys)
    st = ~Affine(*src.transform)
    if st.b == 0 and st.d == 0 and xs.strides[0] == 0 and ys.strides[1] == 0:
        # unrotated source, grid rows/columns of constant y/x (same CRS): one row and one column
        c1, r1 = st.a * xs[0] + st.c, st.e * ys[:, 0] + st.f
        return np.broadcast_to(r1[:, None], (h, w)), np.broadcast_to(c1[None, :], (h, w))
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    c = st.a * xs + st.b * ys + st.c
    r = st.d * xs + st.e * ys + st.f
    return np.asarray(r, float).reshape(h, w), np.asarray(c, float).reshape(h, w)


def _clip_bbox(r0: int, r1: int, c0: int, c1: int, src: SourceGrid) -> tuple[int, int, int, int]:
    return max(0, r0), min(src.height, r1), max(0, c0), min(src.width, c1)


#: Bytes of sample maps kept per process. A 576 px mosaic's map is ~5 MB when not separable (S1 on
#: lon/lat) and a few KB when separable or aligned; a scene's tile groups need ~20 maps, so the old
#: count-bounded LRU of 16 evicted every map before its next use (next epoch, other dates).
SAMPLE_MAP_CACHE_BYTES = 64 << 20


def _map_bytes(m: SampleMap) -> int:
    return sum(a.nbytes for a in (m.rows, m.cols, m.wr, m.wc) if a is not None)


#: (source grid, chip grid, kind) -> map, least recently used first out past the byte bound.
_MAPS: cachetools.LRUCache = cachetools.LRUCache(maxsize=SAMPLE_MAP_CACHE_BYTES, getsizeof=_map_bytes)


def sample_map(src: SourceGrid, grid: ChipGridKey, kind: str) -> SampleMap:
    """The map of ``grid`` on ``src`` for ``kind`` (``bilinear`` or ``nearest``); cached per triple.

    An aligned source gives an ``aligned`` map whatever ``kind`` says (no resampling needed). Maps
    are kept in an LRU of at most :data:`SAMPLE_MAP_CACHE_BYTES` (:func:`clear_sample_maps` empties it).

    Raises:
        ChipReadError: the source cannot be georeferenced.
    """
    key = (src, grid, kind)
    m = _MAPS.get(key)
    if m is None:
        m = _sample_map(src, grid, kind)
        try:
            _MAPS[key] = m
        except ValueError:  # larger than the whole cache: used once, not kept
            pass
    return m


def clear_sample_maps() -> None:
    """Forget every cached sample map (as in a fresh reading process)."""
    _MAPS.clear()


def _sample_map(src: SourceGrid, grid: ChipGridKey, kind: str) -> SampleMap:
    h, w = grid.shape
    off = _aligned(src, grid)
    if off is not None:
        r, c = off
        one = np.array([0])
        return SampleMap("aligned", (h, w), one + r, one + c, None, None, _clip_bbox(r, r + h, c, c + w, src))
    row, col = source_coords(src, grid)
    if (row.strides[1] == 0 and col.strides[0] == 0) or ((row == row[:, :1]).all() and (col == col[:1, :]).all()):
        row, col = row[:, :1], col[:1, :]  # separable: keep one column / one row
    if kind == "nearest":
        ri, ci = np.floor(row).astype(np.int32), np.floor(col).astype(np.int32)
        full = (int(ri.min()), int(ri.max()) + 1, int(ci.min()), int(ci.max()) + 1)
        bbox = _clip_bbox(*full, src)
        return SampleMap("nearest", (h, w), ri, ci, None, None, bbox, bbox == full)
    if kind != "bilinear":
        raise ValueError(f"sample_map: unknown kind {kind!r}; expected bilinear or nearest")
    fy, fx = row - 0.5, col - 0.5
    r0, c0 = np.floor(fy), np.floor(fx)
    ri, ci = r0.astype(np.int32), c0.astype(np.int32)
    full = (int(ri.min()), int(ri.max()) + 2, int(ci.min()), int(ci.max()) + 2)
    bbox = _clip_bbox(*full, src)
    wr, wc = (fy - r0).astype(np.float32), (fx - c0).astype(np.float32)
    return SampleMap("bilinear", (h, w), ri, ci, wr, wc, bbox, bbox == full)


def union_bbox(maps: list[SampleMap]) -> tuple[int, int, int, int]:
    """The smallest source window covering every map's bbox (empty maps ignored)."""
    boxes = [m.bbox for m in maps if m.bbox[0] < m.bbox[1] and m.bbox[2] < m.bbox[3]]
    if not boxes:
        return 0, 0, 0, 0
    return min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes)


def _valid(v: np.ndarray, nodata: float | None) -> np.ndarray:
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
            vals[~_valid(block, nodata)] = fill
            out[r0 - r : r1 - r, c0 - c : c1 - c] = vals
        return out

    if m.kind not in ("nearest", "bilinear"):
        raise ValueError(f"apply_map: unknown kind {m.kind!r}")
    h, w = data.shape
    if not (h and w):
        return np.full(shape, fill, np.float32)
    # one pass, no mask, when every source pixel is valid (the usual case); the mask only when not
    all_ok = kernels.all_valid(data, nodata is not None, 0.0 if nodata is None else float(nodata))
    ok = np.ones(data.shape, bool) if all_ok else _valid(data, nodata)
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
