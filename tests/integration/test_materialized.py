"""Materialised epochs: a plan's chips decoded once into the chip cache, epochs read back from it (real local Ray)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from eoforge.config.jobs import PlanSource
from eoforge.data import materialized
from eoforge.data.chip_cache import ensure_chip_cache
from eoforge.data.dataset import build_chip_dataset, epoch_window_sets
from eoforge.data.materialized import cache_files, cache_windows, iter_materialized_batches
from eoforge.plan.io import read_plan

from tests.support.demo_plan import demo_plan


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    import ray

    tmp = tmp_path_factory.mktemp("materialized")
    demo_plan(tmp, chip_px=32)
    _, plan_hash = read_plan(tmp / "plan.parquet")
    data = PlanSource.model_validate(
        {"plan": str(tmp / "plan.parquet"), "split": "all", "min_valid_fraction": 0.0, "read_tasks": 1}
    )
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        # small files: many of them, so that sets, shards and skips are exercised
        path = ensure_chip_cache(data, plan_hash, str(tmp / "materialized"), rows_per_file=16)
        yield path, tmp / "plan.parquet"
    finally:
        ray.shutdown()


def _ids(batches: Iterator[dict[str, np.ndarray]]) -> list[str]:
    return [str(c) for b in batches for c in b["chip_id"]]


def test_every_row_once_per_epoch_in_full_batches_and_a_new_order_each_epoch(cache: tuple[str, Path]) -> None:
    path, plan = cache
    paths, windows = cache_files(path, "all")
    rows = sum(w.rows for w in windows)
    assert len(paths) >= 4 and rows == len(read_plan(plan)[0])
    seen = []
    for rank in range(2):
        batches = list(iter_materialized_batches(path, "all", 8, seed=3, epoch=0, shard=(rank, 2), mix=2))
        assert all(len(b["ok"]) == 8 for b in batches[:-1]) and batches, rank
        b = batches[0]
        assert b["s2"].dtype == np.uint16 and b["s2"].shape[1:] == (12, 32, 32)
        assert b["s1"].dtype == np.float16 and b["valid"].dtype == bool and b["ok"].dtype == bool
        assert set(b) >= {"chip_id", "split", "ok", "error", "tile_key", "label", "item_labels"}
        seen += _ids(iter(batches))
    assert sorted(seen) == sorted({*seen}) and len(seen) == rows  # each row once, over both shards
    e0 = _ids(iter_materialized_batches(path, "all", 8, seed=3, epoch=0))
    assert e0 == _ids(iter_materialized_batches(path, "all", 8, seed=3, epoch=0))  # deterministic
    assert e0 != _ids(iter_materialized_batches(path, "all", 8, seed=3, epoch=1))  # reshuffled per epoch


def test_materialised_pixels_are_the_streamed_pixels(cache: tuple[str, Path]) -> None:
    path, plan = cache
    stream = {}
    for b in build_chip_dataset(str(plan), split="all", min_valid_fraction=0.0, read_tasks=1).iter_batches(
        batch_size=64, batch_format="numpy"
    ):
        for i, c in enumerate(b["chip_id"]):
            stream[str(c)] = (b["s2"][i], b["s1"][i], b["valid"][i])
    for b in iter_materialized_batches(path, "all", 16):
        for i, c in enumerate(b["chip_id"]):
            s2, s1, valid = stream[str(c)]
            assert np.array_equal(b["s2"][i], s2) and np.array_equal(b["valid"][i], valid), c
            assert np.array_equal(b["s1"][i], s1, equal_nan=True), c


@pytest.mark.parametrize("mix", [1, 3])
def test_resume_skips_rows_and_never_reads_the_files_of_skipped_sets(
    cache: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, mix: int
) -> None:
    path, _ = cache
    full = _ids(iter_materialized_batches(path, "all", 8, seed=1, epoch=2, mix=mix))
    paths, windows = cache_files(path, "all")
    read: list[str] = []
    real = materialized.pq.read_table

    def counting(source: str, *args: object, **kwargs: object) -> object:
        read.append(str(source))
        return real(source, *args, **kwargs)

    monkeypatch.setattr(materialized.pq, "read_table", counting)
    first = epoch_window_sets(windows, 1, 2, (0, 1), 0, mix)[0]  # the epoch's first set of files
    skip = sum(w.rows for w in first) + 5
    resumed = _ids(iter_materialized_batches(path, "all", 8, seed=1, epoch=2, skip_rows=skip, mix=mix))
    assert resumed == full[skip:]
    assert read and not {paths[w.row_group] for w in first} & set(read)  # never opened


def test_a_small_cache_is_cut_so_that_every_shard_gets_rows(cache: tuple[str, Path]) -> None:
    path, _ = cache
    paths, _ = cache_files(path, "all")
    world = len(paths)  # fewer than 4 files per shard: files are cut into parts
    _, parts, part = cache_windows(path, "all", world)
    assert part > 0 and len(parts) >= 4 * world
    seen = []
    for rank in range(world):
        mine = _ids(iter_materialized_batches(path, "all", 4, seed=0, epoch=0, shard=(rank, world), mix=2))
        assert mine, f"shard {rank} of {world} got no rows"
        seen += mine
    assert sorted(seen) == sorted(_ids(iter_materialized_batches(path, "all", 4)))  # each row once


def test_two_concurrent_builders_of_one_plan_both_succeed_and_a_corrupt_file_is_rebuilt(
    cache: tuple[str, Path], tmp_path: Path
) -> None:
    """Two threads build the same materialised plan at once on the real Ray; then a file is altered."""
    from concurrent.futures import ThreadPoolExecutor

    from eoforge.data.published import open_published
    from eoforge.errors import CacheIntegrityError

    _, plan = cache
    _, plan_hash = read_plan(plan)
    data = PlanSource.model_validate({"plan": str(plan), "split": "all", "min_valid_fraction": 0.0, "read_tasks": 1})
    root = str(tmp_path / "materialized")
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda _: ensure_chip_cache(data, plan_hash, root, rows_per_file=16), range(2)))
    assert got[0] == got[1]
    published = open_published(got[0], checksums=True)
    assert published is not None and published.files
    rows = sum(w.rows for w in cache_files(got[0], "all")[1])
    assert rows == len(read_plan(plan)[0])
    victim = Path(published.paths()[0])
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")  # same size, other bytes
    with pytest.raises(CacheIntegrityError, match=f"{victim.name} does not match its sha256"):
        open_published(got[0], checksums=True)
    ensure_chip_cache(data, plan_hash, root, rows_per_file=16)  # not trusted: built again
    rebuilt = open_published(got[0], checksums=True)
    assert rebuilt is not None and rebuilt.build != published.build
    assert sum(w.rows for w in cache_files(got[0], "all")[1]) == rows


def test_the_chip_cache_is_published_and_read_through_its_manifest(cache: tuple[str, Path], tmp_path: Path) -> None:
    """Fine-tuning's chip cache: built once, read back (index, in-memory subset, Ray Data) from the listed files."""
    from eoforge.data.chip_cache import is_complete
    from eoforge.data.published import MANIFEST
    from eoforge.errors import CacheIntegrityError
    from eoforge.finetune.labelled import labelled_dataset, load_cached_chips, read_index

    _, plan = cache
    frame, plan_hash = read_plan(plan)
    data = PlanSource.model_validate({"plan": str(plan), "split": "all", "min_valid_fraction": 0.0, "read_tasks": 1})
    chips = ensure_chip_cache(data, plan_hash, str(tmp_path / "chip-cache"), rows_per_file=16)
    assert (Path(chips) / MANIFEST).is_file() and is_complete(chips)
    (Path(chips) / "stray.parquet").write_bytes(b"not parquet: never listed, never read")
    index = read_index(chips)
    assert len(index.chip_id) == len(frame)
    some = [str(c) for c in index.chip_id[index.ok][:5]]
    assert list(load_cached_chips(chips, some)["chip_id"]) == some
    split = str(index.split[index.ok][0])
    assert labelled_dataset(chips, split).count() == int(((index.split == split) & index.ok).sum())
    batch = next(iter(labelled_dataset(chips, split).iter_batches(batch_size=4, batch_format="numpy")))
    ref = load_cached_chips(chips, [str(c) for c in batch["chip_id"]])
    assert batch["s2"].dtype == np.uint16 and batch["s2"].shape[1:] == (12, 32, 32)
    for k in ("s2", "valid", "label"):
        assert np.array_equal(batch[k], ref[k]), k  # the Ray stream decodes the blobs as the direct reader does
    # one cache: fine-tuning's readers read the pretraining epochs' cache (same key, same files)
    materialised, _ = cache
    assert Path(materialised).name == Path(chips).name
    assert sorted(map(str, read_index(materialised).chip_id)) == sorted(map(str, index.chip_id))
    victim = sorted(Path(chips).glob("build-*/*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    with pytest.raises(CacheIntegrityError, match=f"{victim.name} has 100 bytes"):
        read_index(chips)
    assert not is_complete(chips)
    assert ensure_chip_cache(data, plan_hash, str(tmp_path / "chip-cache"), rows_per_file=16) == chips  # rebuilt
    assert len(read_index(chips).chip_id) == len(frame)
