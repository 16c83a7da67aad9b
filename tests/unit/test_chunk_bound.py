"""A reading task's chunk (its pixel memory) stays within shuffle_rows, whatever the size of a tile group."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from eoforge.data.dataset import epoch_window_sets, iter_chip_blocks, plan_windows
from eoforge.plan.io import read_plan, write_plan

from tests.support.demo_plan import demo_plan


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The demo plan (24 chips; 4 per internal COG tile) and the same rows repeated 4 times (16 per tile)."""
    tmp = tmp_path_factory.mktemp("chunks")
    demo_plan(tmp, chip_px=64)
    frame, _ = read_plan(tmp / "plan.parquet")
    rows = frame.to_dict("records")
    repeated = [{**r, "chip_id": f"{r['chip_id']}#{k}"} for k in range(4) for r in rows]
    write_plan(repeated, tmp / "plan_x4.parquet")
    return {1: tmp / "plan.parquet", 4: tmp / "plan_x4.parquet"}


@pytest.mark.parametrize("times", [1, 4])
def test_chunks_stay_within_shuffle_rows_and_large_tile_groups_are_cut(plans: dict[int, Path], times: int) -> None:
    plan = plans[times]
    windows = epoch_window_sets(plan_windows(str(plan), "all", 1024), 0, 0, (0, 1), 0, 4)
    blocks = list(
        iter_chip_blocks(str(plan), windows, split="all", window_rows=1024, shuffle_rows=3, min_valid_fraction=0.0)
    )
    ids = [c for b in blocks for c in b["chip_id"]]
    frame, _ = read_plan(plan)
    assert sorted(ids) == sorted(frame["chip_id"])  # every chip once
    # one block per chunk: never more than shuffle_rows, although a tile group holds 4 x times chips ...
    assert max(len(b["chip_id"]) for b in blocks) <= 3
    tiles = Counter(k for b in blocks for k in b["tile_key"])
    assert set(tiles.values()) == {4 * times}
    # ... so every group was cut across chunks
    spread = Counter(k for b in blocks for k in set(b["tile_key"]))
    assert all(spread[k] >= -(-n // 3) for k, n in tiles.items()), (spread, tiles)
    assert all(b["ok"].all() for b in blocks)  # every chip read
