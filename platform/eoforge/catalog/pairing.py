"""Pair Sentinel-1 with Sentinel-2 acquisitions: same place, close in time.

A pair is (S2 item, S1 item) whose footprints (item geometries, lon/lat) intersect over at
least ``min_overlap`` of the S2 footprint's area and whose acquisition times differ by at
most ``max_days``. With ``one_s1_per_s2`` only the S1 item closest in time is kept (ties:
larger overlap, then the smaller id), which is what a contrastive pair wants.
"""

from __future__ import annotations

from dataclasses import dataclass

import pystac
from shapely.geometry import shape
from shapely.strtree import STRtree

from eoforge.config import PairingConfig


@dataclass(frozen=True)
class Pair:
    """One co-located S1/S2 acquisition pair.

    Attributes:
        s2: the Sentinel-2 item.
        s1: the Sentinel-1 item.
        dt_days: t(S1) - t(S2), days (signed).
        overlap: intersection area / S2 footprint area, in [0, 1] (computed in lon/lat).
    """

    s2: pystac.Item
    s1: pystac.Item
    dt_days: float
    overlap: float

    @property
    def key(self) -> tuple[str, str]:
        """(S2 id, S1 id): a stable identity for comparisons across backends."""
        return (self.s2.id, self.s1.id)


def pair_items(
    s2_items: list[pystac.Item],
    s1_items: list[pystac.Item],
    cfg: PairingConfig,
    stats: dict[str, object] | None = None,
) -> list[Pair]:
    """Find S1<->S2 pairs; returns them sorted by (S2 id, S1 id).

    Args:
        s2_items: Sentinel-2 items.
        s1_items: Sentinel-1 items.
        cfg: pairing window and overlap.
        stats: when given, filled with what removed candidates: ``s2_with_intersecting_s1``,
            ``s2_with_s1_in_window``, ``s2_with_s1_in_window_and_overlap``, ``closest_dt_days``
            (smallest |dt| of any intersecting pair) and ``best_overlap_in_window``.
    """
    n_intersecting = n_window = n_overlap = 0
    closest_dt: float | None = None
    best_overlap: float | None = None
    s1_geoms = [shape(it.geometry) for it in s1_items]
    tree = STRtree(s1_geoms)
    pairs: list[Pair] = []
    for s2 in s2_items:
        if s2.geometry is None or s2.datetime is None:
            continue
        foot = shape(s2.geometry)
        candidates = []
        hits = [int(i) for i in tree.query(foot, predicate="intersects")] if s1_geoms else []
        in_window = False
        for idx in hits:
            s1 = s1_items[idx]
            if s1.datetime is None:
                continue
            dt_days = (s1.datetime - s2.datetime).total_seconds() / 86400.0
            closest_dt = abs(dt_days) if closest_dt is None else min(closest_dt, abs(dt_days))
            if abs(dt_days) > cfg.max_days:
                continue
            in_window = True
            overlap = foot.intersection(s1_geoms[idx]).area / max(foot.area, 1e-12)
            best_overlap = overlap if best_overlap is None else max(best_overlap, overlap)
            if overlap < cfg.min_overlap:
                continue
            candidates.append(Pair(s2, s1, dt_days, overlap))
        n_intersecting += bool(hits)
        n_window += in_window
        n_overlap += bool(candidates)
        if cfg.one_s1_per_s2 and candidates:
            candidates = [min(candidates, key=lambda p: (abs(p.dt_days), -p.overlap, p.s1.id))]
        pairs.extend(candidates)
    if stats is not None:
        stats.update(
            s2_with_intersecting_s1=n_intersecting,
            s2_with_s1_in_window=n_window,
            s2_with_s1_in_window_and_overlap=n_overlap,
            closest_dt_days=None if closest_dt is None else round(closest_dt, 3),
            best_overlap_in_window=None if best_overlap is None else round(best_overlap, 4),
        )
    return sorted(pairs, key=lambda p: p.key)
