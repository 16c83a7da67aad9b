"""The unlabelled pool beside the demo catalog, the regional shift, and the pretraining/test overlap check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from eoforge.config import DataConfig, parse_config
from eoforge.demo.catalog import roi_split, write_demo_catalog
from eoforge.demo.pool import write_pool_catalog
from eoforge.demo.world import World
from eoforge.finetune.overlap import pretraining_overlap
from eoforge.plan.io import build_plan, iter_plan_batches


def _plan(catalog: Path, out: Path, splits: dict) -> Path:
    raw = {"kind": "data", "catalog": {"backend": "static", "url": str(catalog)}, "chips": {"size_px": 32}}
    build_plan(parse_config({**raw, "splits": splits}, "test", DataConfig), out)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pool")
    cat = write_demo_catalog(tmp / "cat", scenes=4, seed=3, dates_per_scene=1, size_px=128)
    pool = write_pool_catalog(tmp / "cat" / "pool", 3, seed=3, dates_per_scene=4, size_px=128, labelled_scenes=4)
    by_roi = {
        "by_property": {"name": "eoforge:roi_split", "map": {"train": "train", "test": "test"}, "val_fraction": 0.25}
    }
    return {
        "labelled": _plan(cat.catalog_json, tmp / "labelled.parquet", by_roi),
        "pool": _plan(pool.catalog_json, tmp / "pool.parquet", {"train": 1.0, "val": 0.0, "test": 0.0}),
        "pool_catalog": pool.catalog_json,
    }


def _rows(plan: Path) -> list[dict]:
    return [
        r
        for b in iter_plan_batches(plan, columns=["chip_id", "geometry", "split", "s2_datetime", "label_href"])
        for r in b.to_pylist()
    ]


def test_pool_is_unlabelled_elsewhere_and_over_several_seasons(world: dict[str, Path]) -> None:
    pool, labelled = _rows(world["pool"]), _rows(world["labelled"])
    assert pool and all(r["label_href"] is None and r["split"] == "train" for r in pool)
    months = {int(r["s2_datetime"][5:7]) for r in pool}
    assert len({(m % 12) // 3 for m in months}) >= 3  # at least three seasons
    pool_area = shapely.union_all(shapely.from_wkb([r["geometry"] for r in pool]))
    labelled_area = shapely.union_all(shapely.from_wkb([r["geometry"] for r in labelled]))
    assert not pool_area.intersects(labelled_area)  # no labelled place, test or train, is in the pool
    collections = json.loads(world["pool_catalog"].read_text())["links"]
    assert not [link for link in collections if "label" in str(link.get("href", ""))]


def test_labelled_splits_follow_regions_as_in_dfc2020() -> None:
    assert [roi_split(k, 8) for k in range(8)] == ["train", "train", "train", "test"] * 2
    assert [roi_split(k, 2) for k in range(2)] == ["train", "test"]


def test_regions_shift_priors_phenology_and_illumination() -> None:
    w = World.from_seed(0)
    far = [w.conditions_at(520_000.0 + dx, 4_990_000.0) for dx in (0.0, 60_000.0, 120_000.0)]
    assert len({round(c.phenology_shift_days, 3) for c in far}) == 3
    assert all(0.8 < c.illumination < 1.2 and abs(c.s1_offset_db) < 3 for c in far)
    near = [w.conditions_at(520_000.0 + dx, 4_990_000.0) for dx in (0.0, 100.0)]
    assert abs(near[0].phenology_shift_days - near[1].phenology_shift_days) < 0.5  # smooth over a scene
    xs, ys = np.meshgrid(np.arange(0, 2000, 20.0), np.arange(0, 2000, 20.0))
    a = np.bincount(w.classes_at(xs + 520_000, ys + 4_990_000).ravel(), minlength=8)
    b = np.bincount(w.classes_at(xs + 640_000, ys + 4_900_000).ravel(), minlength=8)
    assert np.abs(a / a.sum() - b / b.sum()).sum() > 0.1  # other class mix in another region


def test_overlap_check_finds_test_chips_in_a_pretraining_plan_and_none_in_the_pool(world: dict[str, Path]) -> None:
    clean = pretraining_overlap(str(world["pool"]), "train", str(world["labelled"]))
    assert clean.chips == 0 and clean.test_chips > 0
    leaky = pretraining_overlap(str(world["labelled"]), "all", str(world["labelled"]))
    assert leaky.chips == leaky.test_chips > 0 and leaky.places and leaky.chip_ids
    only_train = pretraining_overlap(str(world["labelled"]), "train", str(world["labelled"]))
    assert only_train.chips == 0  # train ROIs are other regions than the test ROIs
