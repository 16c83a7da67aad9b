"""Does a backbone's pretraining data contain the places a fine-tuning run reports on?

Self-supervised pretraining must not see the test places: a backbone that has seen them (even
without labels) can score better there than on new land. A registered pretraining model's card
names its plan and split (``plan``, ``plan_split``); :func:`pretraining_overlap` intersects
those chips' footprints with the footprints of the fine-tuning plan's ``test`` chips. The
fine-tuning run warns and records the result (``eoforge.pretrain_test_overlap_chips`` and
``data/pretrain_overlap.json``); ``bench/label_efficiency.py`` refuses such a pair.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import shapely

from eoforge.plan.io import iter_plan_batches

#: A footprint shared by less than this share of a test chip's area is a touching edge, not overlap.
MIN_SHARED_AREA = 1e-3


@dataclass(frozen=True)
class Overlap:
    """Test chips of a plan that pretraining chips cover.

    Attributes:
        chips: how many test chips overlap a pretraining chip.
        test_chips: test chips in the plan.
        places: up to 20 overlapping test places, as "lon,lat" of the chip centre (degrees, 4 decimals).
        chip_ids: up to 20 overlapping test chip ids.
    """

    chips: int
    test_chips: int
    places: list[str] = field(default_factory=list)
    chip_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for MLflow and JSON."""
        return asdict(self)


def _footprints(plan: str, split: str) -> tuple[np.ndarray, list[str]]:
    """(shapely polygons, chip ids) of a plan's chips in ``split`` (``all``: every chip)."""
    geoms: list[np.ndarray] = []
    ids: list[str] = []
    for batch in iter_plan_batches(plan, columns=["chip_id", "geometry", "split"]):
        cols = batch.to_pydict()
        keep = [i for i, s in enumerate(cols["split"]) if split == "all" or s == split]
        geoms.append(shapely.from_wkb([cols["geometry"][i] for i in keep]))
        ids += [str(cols["chip_id"][i]) for i in keep]
    return (np.concatenate(geoms) if geoms else np.array([], dtype=object)), ids


def pretraining_overlap(pretrain_plan: str, pretrain_split: str, plan: str, split: str = "test") -> Overlap:
    """Which of ``plan``'s ``split`` chips share ground with ``pretrain_plan``'s ``pretrain_split`` chips."""
    pre, _ = _footprints(pretrain_plan, pretrain_split)
    test, test_ids = _footprints(plan, split)
    if not len(pre) or not len(test):
        return Overlap(0, len(test))
    tree = shapely.STRtree(pre)
    test_idx, pre_idx = tree.query(test, predicate="intersects")
    shared = shapely.area(shapely.intersection(test[test_idx], pre[pre_idx]))
    hit = np.unique(test_idx[shared > MIN_SHARED_AREA * shapely.area(test[test_idx])])
    centres = shapely.centroid(test[hit[:20]])
    return Overlap(
        chips=len(hit),
        test_chips=len(test),
        places=[f"{c.x:.4f},{c.y:.4f}" for c in centres],
        chip_ids=[test_ids[i] for i in hit[:20]],
    )
