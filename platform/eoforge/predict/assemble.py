"""One output tile assembled from its windows' outputs, then turned into product arrays.

Per-pixel outputs (segmentation probabilities) are averaged over the windows that cover a pixel
with :func:`eoforge.predict.grid.blend_weights`; per-window outputs (classification, multilabel)
fill the window's centre block (:func:`eoforge.predict.grid.block_weights`). A pixel no valid
window covers, or where no sensor is valid, is nodata. Embeddings of the windows homed in the
tile fill its coarse raster, one pixel per window; per-pixel embeddings (``embeddings.mode:
pixel``: each window's backbone feature map, upsampled bilinearly to the window) are blended over
the windows like segmentation probabilities, with their own blending weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eoforge.errors import ConfigError
from eoforge.predict.grid import ItemGrid, block_weights, on_regular_grid

#: Nodata of the uint8 class map and probabilities, and of the int8 embeddings.
CLASS_NODATA, PROB_NODATA, EMB_NODATA = 255, 255, -128
#: Probabilities are stored as percent (scale 0.01).
PROB_SCALE = 0.01
#: Per-pixel embeddings of one tile are summed in float32 on the driver: D x tile_px² x 4 bytes at most this.
MAX_PIXEL_EMBEDDING_BYTES = 2 * 2**30


@dataclass
class TileProducts:
    """What one tile writes (None: product not asked for).

    Attributes:
        classes: uint8 [h, w], class id, :data:`CLASS_NODATA` where nodata.
        probabilities: uint8 [K, h, w], percent, :data:`PROB_NODATA` where nodata.
        embeddings: int8 [D, hc, wc] (one pixel per window) or [D, h, w] (``embeddings.mode: pixel``),
            :data:`EMB_NODATA` where no window; value = q * scale + offset.
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
        emb_weights: float32 [size, size], blending weights of per-pixel embeddings
            (``embeddings.mode: pixel``); None: one vector per window.
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
        emb_weights: np.ndarray | None = None,
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
        self.emb_weights = emb_weights if embeddings else None
        self.emb_sum: np.ndarray | None = None  # float32 [D, h, w], made when the first feature map arrives
        self.emb_wsum = np.zeros((self.h, self.w), np.float32)

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
        embedding_map: np.ndarray | None = None,
    ) -> None:
        """Add one window's outputs.

        ``probs`` [K] or [K, S, S], ``valid_any`` bool [S, S], ``embedding`` [D], ``embedding_map``
        [D, S, S] (per-pixel features, blended with ``emb_weights``).
        """
        self.seen += 1
        if not ok:
            return
        self.valid_windows += 1
        if self.want_emb and home and embedding is not None:
            self.emb_ids.append(chip_id)
            self.emb_rows.append(np.asarray(embedding, np.float32))
            self.emb_pos.append((row, col))
        cut = self._overlap(row, col)
        if cut is None:
            return
        ra, rb, ca, cb, win = cut
        if self.emb_weights is not None and embedding_map is not None:
            self._add_map(embedding_map, self.emb_weights[win] * valid_any[win], cut)
        if probs is None or not len(self.sum):
            return
        weights = self.weights if self.weights is not None else block_weights(self.grid, row, col)
        w = weights[win] * valid_any[win]
        p = probs.astype(np.float32)
        part = p[:, win[0], win[1]] if p.ndim == 3 else p[:, None, None]
        self.sum[:, ra:rb, ca:cb] += part * w
        self.wsum[ra:rb, ca:cb] += w

    def _overlap(self, row: int, col: int) -> tuple[int, int, int, int, tuple[slice, slice]] | None:
        """(ra, rb, ca, cb, window slices): where a window meets the tile, in tile and in window pixels."""
        size = self.grid.size
        r0, c0 = row - self.row0, col - self.col0  # window origin in tile pixels (may be < 0)
        ra, ca = max(r0, 0), max(c0, 0)
        rb, cb = min(r0 + size, self.h), min(c0 + size, self.w)
        if ra >= rb or ca >= cb:
            return None
        return ra, rb, ca, cb, (slice(ra - r0, rb - r0), slice(ca - c0, cb - c0))

    def _add_map(self, fmap: np.ndarray, w: np.ndarray, cut: tuple[int, int, int, int, tuple[slice, slice]]) -> None:
        """Blend one window's per-pixel features [D, S, S] into the tile (see :data:`MAX_PIXEL_EMBEDDING_BYTES`)."""
        ra, rb, ca, cb, win = cut
        if self.emb_sum is None:
            need = fmap.shape[0] * self.h * self.w * 4
            if need > MAX_PIXEL_EMBEDDING_BYTES:
                side = int((MAX_PIXEL_EMBEDDING_BYTES / (4 * fmap.shape[0])) ** 0.5)
                raise ConfigError(
                    f"embeddings.mode pixel: a {self.h} x {self.w} px tile of {fmap.shape[0]} float32 features "
                    f"needs {need / 2**30:.1f} GiB on the driver (at most {MAX_PIXEL_EMBEDDING_BYTES / 2**30:g}); "
                    f"set tile_px to {side} or less"
                )
            self.emb_sum = np.zeros((fmap.shape[0], self.h, self.w), np.float32)
        self.emb_sum[:, ra:rb, ca:cb] += fmap[:, win[0], win[1]].astype(np.float32) * w
        self.emb_wsum[ra:rb, ca:cb] += w

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
            if self.emb_weights is not None:
                self._pixel_embeddings(out)
            else:
                self._embeddings(out)
        return out

    def _vectors(self) -> np.ndarray:
        """The per-window vectors of the windows homed here, float32 [N, D]."""
        d = self.emb_rows[0].shape[0] if self.emb_rows else 1
        return np.stack(self.emb_rows) if self.emb_rows else np.zeros((0, d), np.float32)

    def _pixel_embeddings(self, out: TileProducts) -> None:
        """Per-pixel embeddings: the blended feature maps, int8 [D, h, w] (nodata where no valid window)."""
        vec = self._vectors()
        d = self.emb_sum.shape[0] if self.emb_sum is not None else vec.shape[1]
        covered = self.emb_wsum > 0
        q = np.full((d, self.h, self.w), EMB_NODATA, np.int8)
        scale, offset = np.ones(d), np.zeros(d)
        if self.emb_sum is not None and covered.any():
            mean = self.emb_sum[:, covered] / self.emb_wsum[covered]  # float32 [D, n covered]
            scale, offset = _quantisation(mean.min(axis=1), mean.max(axis=1))
            q[:, covered] = np.clip(np.rint((mean - offset[:, None]) / scale[:, None]), -127, 127).astype(np.int8)
        out.embeddings, out.emb_scale, out.emb_offset = q, scale, offset
        out.vectors = (self.emb_ids, vec, np.array(self.emb_pos, dtype=np.int64).reshape(-1, 2))

    def _embeddings(self, out: TileProducts) -> None:
        k_r0, k_c0, hc, wc = self.grid.coarse_window(*self.tile, self.tile_px)
        vec = self._vectors()
        d = vec.shape[1]
        lo = vec.min(axis=0) if len(vec) else np.zeros(d)
        hi = vec.max(axis=0) if len(vec) else np.ones(d)
        scale, offset = _quantisation(lo, hi)
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


def _quantisation(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band (scale, offset), float64 [D], mapping [lo, hi] onto int8 [-127, 127]: value = q * scale + offset."""
    offset = (hi.astype(np.float64) + lo) / 2
    scale = np.maximum((hi.astype(np.float64) - lo) / 254.0, 1e-12)
    return scale, offset
