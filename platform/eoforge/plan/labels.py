"""Label items of a plan indexed once (``LabelIndex``, an STRtree) to link each chip to its label."""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from urllib.parse import urlparse

import numpy as np
import pystac
import shapely
from pyproj import Transformer
from shapely import STRtree
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from eoforge.catalog.providers import ProviderProfile, asset_href


def _link_stem(href: str) -> str:
    """The file name without extension of an href (``.../ID/ID.json`` -> ``ID``)."""
    return PurePosixPath(urlparse(href).path).stem


class LabelIndex:
    """The label items of a plan, their footprints indexed once (STRtree, lon/lat).

    :meth:`find` looks up a chip's label in O(log n) instead of testing every label item.
    Containment is the exact lon/lat test ``footprint.contains(chip)`` as before the index.
    """

    #: Centroid distances closer than this (metres) are a tie (patches on a regular overlapping grid).
    TIE_M = 0.01

    def __init__(self, items: list[pystac.Item], profile: ProviderProfile) -> None:
        self.items = [it for it in items if it.geometry is not None]
        self.footprints = [shape(it.geometry) for it in self.items]
        self.hrefs = [asset_href(it, "labels", profile, required=False) for it in self.items]
        self.sources: list[set[str]] = []
        for it in self.items:
            names: set[str] = set()
            for link in it.links:
                if link.rel == "source":
                    if link.title:
                        names.add(str(link.title))
                    target = link.target
                    names.add(target.id if isinstance(target, pystac.Item) else _link_stem(str(target)))
            self.sources.append(names)
        self.tree = STRtree(self.footprints)
        self._centroids: dict[tuple[str, int], tuple[float, float]] = {}
        self._to_crs: dict[str, Transformer] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _centroid_in(self, crs: str, i: int) -> tuple[float, float]:
        key = (crs, i)
        if key not in self._centroids:
            if crs not in self._to_crs:
                self._to_crs[crs] = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
            c = self.footprints[i].centroid
            self._centroids[key] = self._to_crs[crs].transform(c.x, c.y)
        return self._centroids[key]

    #: Share of a chip's area that may lie outside a label footprint: a 4-corner lon/lat footprint
    #: cuts up to ~10 cm inside the true UTM edge, which would drop every edge chip (as for S1).
    EDGE_TOLERANCE = 1e-3

    def _covers(self, i: int, chip_ll: BaseGeometry) -> bool:
        foot = self.footprints[i]
        return foot.contains(chip_ll) or chip_ll.difference(foot).area <= self.EDGE_TOLERANCE * chip_ll.area

    def find(self, chip_ll: BaseGeometry, crs: str, centre: tuple[float, float], s2_id: str) -> str | None:
        """The ``labels`` href of the label item for a chip, or None when no footprint contains it.

        Args:
            chip_ll: the chip's footprint, lon/lat.
            crs: the chip's CRS.
            centre: the chip's centre (x, y) in ``crs``.
            s2_id: the id of the chip's S2 item.

        Among the label items whose footprint contains the chip, the first of: the one with a
        ``source`` link (STAC label extension) to the chip's S2 item (its own patch); else the
        one whose footprint centroid is nearest the chip centre (the patch the chip was cut from
        when patches overlap); else, on a tie (within 1 cm), the smallest item id.
        """
        hits = [int(i) for i in self.tree.query(chip_ll) if self._covers(int(i), chip_ll)]
        return self._resolve(hits, crs, centre, s2_id)

    def _resolve(self, hits: list[int], crs: str, centre: tuple[float, float], s2_id: str) -> str | None:
        if len(hits) > 1:
            own = [i for i in hits if s2_id in self.sources[i]]
            hits = own or hits
        if len(hits) > 1:
            dist = {}
            for i in hits:
                cx, cy = self._centroid_in(crs, i)
                dist[i] = math.hypot(cx - centre[0], cy - centre[1])
            best = min(dist.values())
            hits = [i for i in hits if dist[i] <= best + self.TIE_M]
        if not hits:
            return None
        return self.hrefs[min(hits, key=lambda i: self.items[i].id)]

    def find_many(self, chips_ll: np.ndarray, crs: str, centres: np.ndarray, s2_id: str) -> list[str | None]:
        """:meth:`find` for many chips of one S2 item at once (one bulk STRtree query).

        Args:
            chips_ll: shapely polygons ``[N]``, lon/lat.
            crs: the chips' CRS.
            centres: chip centres ``[N, 2]`` (x, y) in ``crs``.
            s2_id: the id of the chips' S2 item.
        """
        out: list[str | None] = [None] * len(chips_ll)
        if not self.items or len(chips_ll) == 0:
            return out
        qi, ti = self.tree.query(chips_ll)
        if len(qi) == 0:
            return out
        foots = np.asarray(self.tree.geometries)[ti]
        chips = chips_ll[qi]
        ok = shapely.contains(foots, chips)
        edge = ~ok
        if edge.any():
            outside = shapely.area(shapely.difference(chips[edge], foots[edge]))
            ok[edge] = outside <= self.EDGE_TOLERANCE * shapely.area(chips[edge])
        qi, ti = qi[ok], ti[ok]
        order = np.argsort(qi, kind="stable")
        qi, ti = qi[order], ti[order]
        starts = np.flatnonzero(np.r_[True, qi[1:] != qi[:-1]]) if len(qi) else np.zeros(0, dtype=np.int64)
        for k, a in enumerate(starts):
            b = starts[k + 1] if k + 1 < len(starts) else len(qi)
            q = int(qi[a])
            centre = (float(centres[q, 0]), float(centres[q, 1]))
            out[q] = self._resolve([int(i) for i in ti[a:b]], crs, centre, s2_id)
        return out
