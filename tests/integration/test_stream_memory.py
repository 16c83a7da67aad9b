"""Bounded stream memory: build_chip_dataset caps its blocks and its object-store budget (real local Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
from eoforge.data.dataset import build_chip_dataset
from eoforge.plan.io import read_plan

from tests.support.demo_plan import demo_plan

MIB = 2**20


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("stream-memory")
    return demo_plan(tmp, chip_px=64)


def test_blocks_are_cut_to_block_mb_and_every_chip_comes_once(plan: Path, local_ray: None) -> None:
    """The plan (32 chips, ~11 MB: one reading task) comes out in blocks of at most 1.5 x block_mb, not in one."""
    import ray
    from ray.data.block import BlockAccessor

    block_mb = 1.0
    ds = build_chip_dataset(
        str(plan), split="all", normalize="none", read_tasks=1, read_cpus=1.0, block_mb=block_mb, object_store_mb=64
    )
    sizes, ids = [], []
    for bundle in ds.iter_internal_ref_bundles():
        for entry in bundle.blocks:
            sizes.append(entry.metadata.size_bytes)
            ids.extend(BlockAccessor.for_block(ray.get(entry.ref)).to_pandas()["chip_id"])
    frame, _ = read_plan(plan)
    assert sorted(ids) == sorted(frame["chip_id"])  # every chip once
    # Ray Data slices a buffer once it is 1.5x the target; without the cap (128 MiB) the task's output was one block
    assert max(sizes) <= 1.5 * block_mb * MIB, sizes
    assert len(sizes) >= sum(sizes) / (1.5 * block_mb * MIB) > 4, sizes


def test_budget_and_block_size_reach_the_streams_own_context(plan: Path, local_ray: None) -> None:
    """The caps are in the dataset's sealed DataContext; the process's current one is left alone."""
    import ray.data

    current = ray.data.DataContext.get_current()
    before = (current.target_max_block_size, current.execution_options.resource_limits.object_store_memory)
    ds = build_chip_dataset(str(plan), split="all", normalize="none", block_mb=8, object_store_mb=300)
    assert ds.context.target_max_block_size == 8 * MIB
    assert ds.context.execution_options.resource_limits.object_store_memory == 300 * MIB
    assert ds.context.execution_options.preserve_order
    assert (current.target_max_block_size, current.execution_options.resource_limits.object_store_memory) == before
    unbounded = build_chip_dataset(str(plan), split="all", normalize="none", object_store_mb=None)
    assert unbounded.context.execution_options.resource_limits.object_store_memory == before[1]


@pytest.mark.parametrize("kw", [{"block_mb": 0}, {"object_store_mb": -1}])
def test_non_positive_caps_are_refused(plan: Path, kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        build_chip_dataset(str(plan), split="all", normalize="none", **kw)


@pytest.mark.parametrize("skip_rows", [0, 5])
def test_sets_read_by_several_tasks_stream_the_order_of_one_read_per_set(
    plan: Path, local_ray: None, skip_rows: int
) -> None:
    """Tasks of 2 chunks each (the ordered-output buffer is one task) give the rows of whole sets, in order."""
    import ray
    from eoforge.data.dataset import epoch_window_sets, iter_chip_blocks, shardable_windows
    from eoforge.data.epochs import _read_tasks
    from ray.data.block import BlockAccessor

    kw = {"shuffle_seed": 3, "epoch": 1, "window_rows": 16, "mix_windows": 2}
    windows, rows = shardable_windows(str(plan), "all", 16, 1)
    sets = epoch_window_sets(windows, 3, 1, (0, 1), skip_rows, 2)
    assert len(_read_tasks(sets, 2 * 3)) > 2 * len(sets)  # several tasks per set
    ds = build_chip_dataset(
        str(plan),
        split="all",
        normalize="none",
        read_tasks=2,
        read_cpus=0.5,
        shuffle_rows=3,
        skip_rows=skip_rows,
        **kw,
    )
    streamed = []
    for bundle in ds.iter_internal_ref_bundles():
        for entry in bundle.blocks:
            streamed.extend(BlockAccessor.for_block(ray.get(entry.ref)).to_pandas()["chip_id"])
    one_read = [
        c
        for b in iter_chip_blocks(str(plan), sets, split="all", window_rows=rows, shuffle_rows=3, seed=3, epoch=1)
        for c in b["chip_id"]
    ]
    frame, _ = read_plan(plan)
    assert streamed == one_read and len(streamed) == len(frame) - skip_rows
