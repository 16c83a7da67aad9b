"""Batch diversity of the chip stream: how many source tiles a batch mixes.

A batch from one tile gives contrastive training near-duplicate negatives; the stream's shuffle
(:mod:`eoforge.data.reader_task`) mixes many tiles of several places and scenes per batch, and the
training loop logs these measures per epoch.
"""

from __future__ import annotations

import numpy as np


def batch_diversity(tile_keys: np.ndarray | list[str]) -> dict[str, float]:
    """Diversity of one batch: distinct source tiles and the share of same-tile pairs.

    A same-tile share near 1 means the batch's contrastive negatives are near-duplicates;
    a random draw from T equally sized tiles gives about 1/T.
    """
    keys = np.asarray(tile_keys, dtype=object)
    n = len(keys)
    _, counts = np.unique(keys.astype(str), return_counts=True) if n else (None, np.zeros(0))
    pairs = n * (n - 1) / 2
    same = float((counts * (counts - 1) / 2).sum())
    return {"distinct_tiles": float(len(counts)), "same_tile_pair_share": same / pairs if pairs else 0.0}


class DiversityMeter:
    """Running mean of :func:`batch_diversity` over the batches of an epoch."""

    def __init__(self) -> None:
        self.n = 0
        self.sums = {"distinct_tiles": 0.0, "same_tile_pair_share": 0.0}

    def add(self, tile_keys: np.ndarray | list[str]) -> None:
        """Count one batch."""
        for k, v in batch_diversity(tile_keys).items():
            self.sums[k] += v
        self.n += 1

    def means(self) -> dict[str, float]:
        """``data/batch_distinct_tiles`` and ``data/same_tile_pair_share`` (epoch means)."""
        n = max(self.n, 1)
        return {
            "data/batch_distinct_tiles": self.sums["distinct_tiles"] / n,
            "data/same_tile_pair_share": self.sums["same_tile_pair_share"] / n,
        }
