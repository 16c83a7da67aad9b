"""Output geometry: windows and output tiles on each S2 item's own 10 m grid, and blending weights.

Every window of a predict plan is a chip of the item's regular grid (``chip_id`` =
``<s2 item>:<row>:<col>``, rows and cols multiples of the stride). Output tiles are
``tile_px`` squares of that same grid, counted from the item's origin, so a tile's pixels are
the item's pixels. A window has one *home* tile (the tile holding the top-left pixel of its
centre block) and is a *guest* of every other tile its output touches:

- segmentation (per-pixel output): the tiles its footprint meets; overlapping windows are
  averaged with :func:`blend_weights`;
- per-window output (classification, embeddings): the tiles its centre block meets. The centre
  blocks (``stride`` px, centred in the window) of the grid tile the plane, so every output pixel
  takes the value of exactly one window: the one whose centre it is.

Windows lie on the regular grid (rows and cols multiples of the stride from the item's origin)
except, where that grid stops short of the item's bottom or right edge, a last row and column of
windows flush with that edge (``size`` px from it), which overlap their neighbours more than
the stride does: blended like any overlap (segmentation), or splitting the overlap half-way
between the two centres (per-window outputs, :meth:`ItemGrid.block`). So the map reaches every
pixel of the item that has valid input.

Embeddings are one vector per window, written on the coarse grid of centre blocks
(``stride * 10 m`` pixels, :meth:`ItemGrid.coarse_transform`); a window's coarse pixel is
``(row // stride, col // stride)`` and it lands in its home tile only. Windows flush with an
edge are off that coarse grid: their vectors go to the GeoParquet only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def window_origin(chip_id: str) -> tuple[str, int, int]:
    """``<s2 item>:<row>:<col>`` -> (item id, row, col) on the item's grid."""
    item, row, col = str(chip_id).rsplit(":", 2)
    return item, int(row), int(col)


@dataclass(frozen=True)
class ItemGrid:
    """An S2 item's output grid: the item's 10 m grid, cut to the extent its windows cover.

    Attributes:
        item: S2 item id.
        crs: the item's CRS (e.g. ``EPSG:32632``).
        x0, y0: the item grid's origin (top-left corner of pixel (0, 0)), metres.
        res: pixel size, metres.
        rows, cols: extent covered by windows, pixels from the origin.
        size, stride: window side and step, pixels.
        first_row, first_col: the first window's row and col (the extent starts there).
    """

    item: str
    crs: str
    x0: float
    y0: float
    res: float
    rows: int
    cols: int
    size: int
    stride: int
    first_row: int = 0
    first_col: int = 0

    @property
    def margin(self) -> int:
        """Offset of a window's centre block from its origin, pixels."""
        return (self.size - self.stride) // 2

    def tiles(self, tile_px: int) -> list[tuple[int, int]]:
        """Every output tile (ti, tj) of the extent, row-major."""
        return [(i, j) for i in range(math.ceil(self.rows / tile_px)) for j in range(math.ceil(self.cols / tile_px))]

    def tile_window(self, ti: int, tj: int, tile_px: int) -> tuple[int, int, int, int]:
        """(row0, col0, rows, cols) of a tile on the item grid, cut at the extent."""
        r0, c0 = ti * tile_px, tj * tile_px
        return r0, c0, min(tile_px, self.rows - r0), min(tile_px, self.cols - c0)

    def transform(self, row0: int, col0: int) -> tuple[float, ...]:
        """GDAL-order affine (a, b, c, d, e, f) of a raster whose pixel (0, 0) is item pixel (row0, col0)."""
        return (self.res, 0.0, self.x0 + col0 * self.res, 0.0, -self.res, self.y0 - row0 * self.res)

    def coarse_window(self, ti: int, tj: int, tile_px: int) -> tuple[int, int, int, int]:
        """(k_row0, k_col0, rows, cols) of a tile's embedding raster on the coarse grid (windows homed there)."""
        r0, c0, h, w = self.tile_window(ti, tj, tile_px)
        m, s = self.margin, self.stride
        k_r0, k_c0 = math.ceil((r0 - m) / s), math.ceil((c0 - m) / s)
        k_r1, k_c1 = math.ceil((r0 + h - m) / s), math.ceil((c0 + w - m) / s)
        last_r, last_c = (self.rows - self.size) // s, (self.cols - self.size) // s
        k_r0, k_c0 = max(k_r0, 0), max(k_c0, 0)
        return k_r0, k_c0, max(0, min(k_r1, last_r + 1) - k_r0), max(0, min(k_c1, last_c + 1) - k_c0)

    def coarse_transform(self, k_row0: int, k_col0: int) -> tuple[float, ...]:
        """GDAL-order affine of an embedding raster whose pixel (0, 0) is coarse pixel (k_row0, k_col0)."""
        s, m = self.stride * self.res, self.margin * self.res
        return (s, 0.0, self.x0 + m + k_col0 * s, 0.0, -s, self.y0 - m - k_row0 * s)

    def home(self, row: int, col: int, tile_px: int) -> tuple[int, int]:
        """The tile holding the top-left pixel of the window's centre block."""
        return (row + self.margin) // tile_px, (col + self.margin) // tile_px

    def block(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(row0, col0, row1, col1), end exclusive: the pixels a per-window output fills.

        The centre block; a window on the extent's edge also fills its margin on that side, so
        the map reaches the extent's border. A window flush with the item's bottom or right edge
        (off the regular grid, :func:`eoforge.plan.sampling.axis_starts`) and its regular
        neighbour split their overlap half-way between their centres, so the blocks still tile
        the extent: every pixel takes exactly one window's output.
        """
        r0, r1 = self._axis_block(row, self.first_row, self.rows)
        c0, c1 = self._axis_block(col, self.first_col, self.cols)
        return r0, c0, r1, c1

    def _axis_block(self, start: int, first: int, extent: int) -> tuple[int, int]:
        """[lo, hi) of :meth:`block` along one axis, for a window starting at ``start``."""
        s, m, size = self.stride, self.margin, self.size
        flush = extent - size  # start of the extent's last window on this axis
        if start % s:  # the window flush with the edge: from half-way to its regular neighbour
            return (start if start == first else _half_way(start - start % s, start, size)), extent
        lo = start if start == first else start + m
        if start + size >= extent:
            return lo, extent
        if flush % s and start < flush < start + s:  # the next window is the one flush with the edge
            return lo, _half_way(start, flush, size)
        return lo, start + m + s

    def touched(self, row: int, col: int, tile_px: int, per_pixel: bool) -> list[tuple[int, int]]:
        """Tiles a window's output meets: its footprint (``per_pixel``) or its :meth:`block`."""
        lo_r, lo_c, hi_r, hi_c = (row, col, row + self.size, col + self.size) if per_pixel else self.block(row, col)
        hi_r, hi_c = min(hi_r, self.rows) - 1, min(hi_c, self.cols) - 1
        return [
            (i, j)
            for i in range(lo_r // tile_px, hi_r // tile_px + 1)
            for j in range(lo_c // tile_px, hi_c // tile_px + 1)
        ]


def _half_way(a: int, b: int, size: int) -> int:
    """The pixel where the output of a window starting at ``b`` takes over from one at ``a < b``.

    Half-way between their centres (``a + size / 2`` and ``b + size / 2``), rounded down; for
    neighbours ``stride`` apart this is the end of ``a``'s centre block.
    """
    return (a + b + size) // 2


def on_regular_grid(row: int, col: int, stride: int) -> bool:
    """True for a window of the regular grid, False for one flush with the item's bottom or right edge."""
    return row % stride == 0 and col % stride == 0


def item_grid(item: str, crs: str, transform: list[float], windows: np.ndarray, size: int, stride: int) -> ItemGrid:
    """The output grid of one item from one window's affine and every window's (row, col) ``[N, 2]``."""
    a, _, c, _, e, f = (float(v) for v in transform[:6])
    row, col = int(windows[0, 0]), int(windows[0, 1])
    x0, y0 = c - col * a, f - row * e  # e < 0: north-up
    rows, cols = int(windows[:, 0].max()) + size, int(windows[:, 1].max()) + size
    first_row, first_col = int(windows[:, 0].min()), int(windows[:, 1].min())
    return ItemGrid(item, crs, x0, y0, a, rows, cols, size, stride, first_row, first_col)


def blend_weights(size: int, kind: str) -> np.ndarray:
    """Per-pixel weight of a window's output when overlapping windows are averaged, float32 [size, size].

    ``hann``: the outer product of a Hann window (sin², zero-free: sampled at pixel centres);
    ``cosine``: a flat top with cosine tapers over the outer quarter on each side; ``none``: ones.
    Every weight is > 0, so pixels seen by one window only keep its value.
    """
    t = (np.arange(size, dtype=np.float64) + 0.5) / size  # pixel centres in (0, 1)
    if kind == "hann":
        w1 = np.sin(np.pi * t) ** 2
    elif kind == "cosine":
        ramp = 0.25
        edge = np.minimum(t, 1 - t) / ramp
        w1 = np.where(edge >= 1, 1.0, 0.5 - 0.5 * np.cos(np.pi * np.clip(edge, 0, 1)))
    elif kind == "none":
        w1 = np.ones(size)
    else:
        raise ValueError(f"blend {kind!r}: expected hann, cosine or none")
    w1 = np.maximum(w1, 1e-3)
    return np.outer(w1, w1).astype(np.float32)


def block_weights(grid: ItemGrid, row: int, col: int) -> np.ndarray:
    """Per-window outputs: 1 on the window's :meth:`ItemGrid.block`, 0 elsewhere; float32 [size, size]."""
    r0, c0, r1, c1 = grid.block(row, col)
    w = np.zeros((grid.size, grid.size), np.float32)
    w[r0 - row : r1 - row, c0 - col : c1 - col] = 1.0
    return w
