"""Sample maps: which source pixels make each pixel of a chip grid, computed once per grid pair.

A :class:`SampleMap` says, for every pixel of a chip grid, which source pixels it is made of:

- ``aligned``: same CRS, same pixel size, integer offset (S2 10 m bands on a 10 m chip grid):
  the chip is a plain slice of the source, the stored values bit for bit;
- ``bilinear`` (measurements) / ``nearest`` (classes: SCL, labels): the chip pixel centre is
  taken to the source (PROJ for another CRS, the source's affine, or the GCPs nearest the chip
  for Sentinel-1 GRD in radar geometry) and sampled there, GDAL's convention: pixel ``i`` spans
  ``[i, i + 1)``, bilinear weights between the four pixel centres around the point; neighbours
  outside the image or equal to nodata get no weight and the rest are renormalised; a pixel with
  no weight left gets the fill value (:func:`eoforge.data.resample.apply_map`).

Maps depend only on (source grid, chip grid, kind), so they are cached (:func:`sample_map`, an LRU
bounded by bytes): the 20/60 m bands of every date over one place, and every chip of the same grid,
reuse them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cachetools
import numpy as np
from pyproj import CRS, Transformer
from rasterio.control import GroundControlPoint
from rasterio.transform import Affine, GCPTransformer

from eoforge.data.grid_keys import ChipGridKey, SourceGrid, lattice
from eoforge.errors import ChipReadError

__all__ = [
    "LOCAL_GCPS",
    "PROJ_NODE_STEP",
    "SAMPLE_MAP_CACHE_BYTES",
    "SampleMap",
    "clear_sample_maps",
    "pixel_centres",
    "reproject_centres",
    "sample_map",
    "source_coords",
    "union_bbox",
]

#: GCPs used for the local polynomial around one chip (GRD in radar geometry).
LOCAL_GCPS = 16


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
