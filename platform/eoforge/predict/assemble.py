"""One output tile assembled from its windows' outputs, then turned into product arrays.

Per-pixel outputs (segmentation probabilities) are averaged over the windows that cover a pixel
with :func:`eoforge.predict.grid.blend_weights`; per-window outputs (classification, multilabel)
fill the window's centre block (:func:`eoforge.predict.grid.block_weights`). A pixel no valid
window covers, or where no sensor is valid, is nodata. Embeddings of the windows homed in the
tile fill its coarse raster, one pixel per window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eoforge.predict.grid import ItemGrid, block_weights, on_regular_grid

#: Nodata of the uint8 class map and probabilities, and of the int8 embeddings.
CLASS_NODATA, PROB_NODATA, EMB_NODATA = 255, 255, -128
#: Probabilities are stored as percent (scale 0.01).
PROB_SCALE = 0.01


@dataclass
class TileProducts:
    """What one tile writes (None: product not asked for).

    Attributes:
        classes: uint8 [h, w], class id, :data:`CLASS_NODATA` where nodata.
        probabilities: uint8 [K, h, w], percent, :data:`PROB_NODATA` where nodata.
        embeddings: int8 [D, hc, wc], :data:`EMB_NODATA` where no window; value = q * scale + offset.
        emb_scale, emb_offset: float64 [D] per band.
        vectors: (chip ids, float32 [N, D] embeddings, (row, col) int [N, 2]) of the windows homed here.
    """

    classes: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    emb_scale: np.ndarray | None = None
    emb_offset: np.ndarray | None = None
    vectors: tuple[list[str], np.ndarray, np.ndarray] | None = None


class TileAccumulator:
    """Sums of weighted window outputs over one output tile (see module docstring).

    Args:
        grid: the item's output grid.
        tile: (ti, tj).
        tile_px: tile side, pixels.
        expected: windows (home and guest) the tile waits for.
        weights: float32 [size, size], a window's weight per pixel when outputs are blended (segmentation);
            None: per-window outputs, each filling its block (:func:`eoforge.predict.grid.block_weights`).
        embeddings: collect the embeddings of windows homed here.
        classes: K, the task model's outputs per window (0: no task model).
    """

    def __init__(
        self,
        grid: ItemGrid,
        tile: tuple[int, int],
        tile_px: int,
        expected: int,
        weights: np.ndarray | None,
        embeddings: bool,
        classes: int = 0,
    ) -> None:
        self.grid, self.tile, self.tile_px = grid, tile, tile_px
        self.row0, self.col0, self.h, self.w = grid.tile_window(*tile, tile_px)
        self.expected, self.seen, self.valid_windows = expected, 0, 0
        self.weights = weights
        self.sum = np.zeros((classes, self.h, self.w), np.float32)  # float32 [K, h, w]
        self.wsum = np.zeros((self.h, self.w), np.float32)
        self.want_emb = embeddings
        self.emb_ids: list[str] = []
        self.emb_rows: list[np.ndarray] = []
        self.emb_pos: list[tuple[int, int]] = []

    @property
    def done(self) -> bool:
        """Every expected window has arrived."""
        return self.seen >= self.expected

    def add(
        self,
        chip_id: str,
        row: int,
        col: int,
        home: bool,
        ok: bool,
        probs: np.ndarray | None,
        valid_any: np.ndarray,
        embedding: np.ndarray | None,
    ) -> None:
        """Add one window: ``probs`` [K] or [K, S, S], ``valid_any`` bool [S, S], ``embedding`` [D]."""
        self.seen += 1
        if not ok:
            return
        self.valid_windows += 1
        if self.want_emb and home and embedding is not None:
            self.emb_ids.append(chip_id)
            self.emb_rows.append(np.asarray(embedding, np.float32))
            self.emb_pos.append((row, col))
        if probs is None or not len(self.sum):
            return
        size = self.grid.size
        r0, c0 = row - self.row0, col - self.col0  # window origin in tile pixels (may be < 0)
        ra, ca = max(r0, 0), max(c0, 0)
        rb, cb = min(r0 + size, self.h), min(c0 + size, self.w)
        if ra >= rb or ca >= cb:
            return
        win = (slice(ra - r0, rb - r0), slice(ca - c0, cb - c0))
        weights = self.weights if self.weights is not None else block_weights(self.grid, row, col)
        w = weights[win] * valid_any[win]
        p = probs.astype(np.float32)
        part = p[:, win[0], win[1]] if p.ndim == 3 else p[:, None, None]
        self.sum[:, ra:rb, ca:cb] += part * w
        self.wsum[ra:rb, ca:cb] += w

    def products(self, want: list[str]) -> TileProducts:
        """The tile's product arrays (see :class:`TileProducts`)."""
        out = TileProducts()
        if len(self.sum) and {"classes", "probabilities"} & set(want):
            covered = self.wsum > 0
            mean = self.sum / np.where(covered, self.wsum, 1.0)
            if "classes" in want:
                out.classes = np.where(covered, mean.argmax(axis=0), CLASS_NODATA).astype(np.uint8)
            if "probabilities" in want:
                pct = np.clip(np.rint(mean / PROB_SCALE), 0, 100).astype(np.uint8)
                out.probabilities = np.where(covered[None], pct, PROB_NODATA).astype(np.uint8)
        if "embeddings" in want:
            self._embeddings(out)
        return out

    def _embeddings(self, out: TileProducts) -> None:
        k_r0, k_c0, hc, wc = self.grid.coarse_window(*self.tile, self.tile_px)
        d = self.emb_rows[0].shape[0] if self.emb_rows else 1
        vec = np.stack(self.emb_rows) if self.emb_rows else np.zeros((0, d), np.float32)
        lo = vec.min(axis=0) if len(vec) else np.zeros(d)
        hi = vec.max(axis=0) if len(vec) else np.ones(d)
        offset = (hi.astype(np.float64) + lo) / 2
        scale = np.maximum((hi.astype(np.float64) - lo) / 254.0, 1e-12)
        q = np.full((d, max(hc, 0), max(wc, 0)), EMB_NODATA, np.int8)
        s = self.grid.stride
        for v, (row, col) in zip(vec, self.emb_pos, strict=True):
            if not on_regular_grid(row, col, s):
                continue  # flush with the item's edge: off the coarse grid (its vector is in the GeoParquet)
            i, j = row // s - k_r0, col // s - k_c0
            if 0 <= i < hc and 0 <= j < wc:
                q[:, i, j] = np.clip(np.rint((v - offset) / scale), -127, 127).astype(np.int8)
        out.embeddings, out.emb_scale, out.emb_offset = q, scale, offset
        out.vectors = (self.emb_ids, vec, np.array(self.emb_pos, dtype=np.int64).reshape(-1, 2))
