"""Epoch order of the chip stream: the plan cut into windows, and each epoch's read tasks.

The driver never holds the plan. It streams the plan's ``split`` column once (one small column,
batch by batch) to cut the plan into *windows* of ``window_rows`` consecutive rows and count the
split's rows in each (:func:`plan_windows`; cached per process). An epoch is a seeded
permutation of the windows, taken in sets of ``mix_windows`` (:func:`epoch_window_sets`); a worker
of a multi-worker run takes every ``world``-th window. Each set is read by read tasks of
:data:`READ_TASK_CHUNKS` shuffle chunks each (:func:`_read_tasks`, :func:`epoch_tasks`), which
:mod:`eoforge.data.reader_task` reads and :mod:`eoforge.data.dataset` runs in Ray Data.

The row order of an epoch is a function of (plan, split, seed, epoch, shard) only, and is fixed
before any pixel is read, so a run resumed mid-epoch passes ``skip_rows`` = rows already
trained: whole window sets are dropped on the driver and their files are never opened.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import cachetools
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from eoforge.errors import ChipReadError

#: Windows per shard below which a plan is cut into smaller windows (every worker gets rows).
MIN_WINDOWS_PER_SHARD = 4

#: Shuffle chunks per read task (a window set is read by several tasks; see :func:`_read_tasks`).
READ_TASK_CHUNKS = 2

#: The plans' windows a process keeps (:func:`plan_windows`): (path, plan hash, split, window_rows) -> windows.
_WINDOWS: cachetools.LRUCache = cachetools.LRUCache(maxsize=8)


@dataclass(frozen=True)
class Window:
    """A slice of the plan file: batch ``index`` of ``window_rows`` rows of row group ``row_group``.

    ``rows`` is how many of them are in the split; ``skip`` how many of those (in the epoch's
    order) a resumed run leaves out.
    """

    row_group: int
    index: int
    rows: int
    skip: int = 0


def _open_plan(plan_path: str) -> pq.ParquetFile:
    from eoforge.plan.columns import WHAT
    from eoforge.plan.columns import not_found as _not_found
    from eoforge.storage import filesystem_of, storage_error

    fs, inner = filesystem_of(str(plan_path), WHAT)
    try:
        return pq.ParquetFile(fs.open_input_file(inner), pre_buffer=False, buffer_size=1 << 20)
    except FileNotFoundError:
        raise _not_found(str(plan_path)) from None
    except OSError as exc:
        raise storage_error(str(plan_path), exc, WHAT, "read") from None


def plan_windows(plan_path: str, split: str, window_rows: int) -> tuple[Window, ...]:
    """The plan's windows holding rows of ``split`` (``all``: every row), in file order.

    Streams only the ``split`` column; memory is one batch plus one entry per window. Kept per
    process by the plan's content hash (``eoforge:plan_hash``, read from the footer on each call),
    so a plan rewritten at the same path gets its own windows; a plan without one is not kept.

    The first call for a plan also checks the signing hooks its rows name (:func:`eoforge.plan.io.check_plan_signing`),
    before any reading process opens it.

    Raises:
        CatalogError: the file is missing or not a plan, or a row names an unregistered signing hook.
        ServiceError: its store refused the read or is unreachable.
    """
    from eoforge.plan.io import check_plan_signing, metadata_hash

    f = _open_plan(plan_path)
    key = (plan_path, metadata_hash(f.metadata.metadata), split, window_rows)
    hit = _WINDOWS.get(key) if key[1] else None
    if hit is None:
        check_plan_signing(plan_path)
        out = []
        for g in range(f.metadata.num_row_groups):
            for j, batch in enumerate(f.iter_batches(batch_size=window_rows, row_groups=[g], columns=["split"])):
                n = batch.num_rows if split == "all" else int(pc.sum(pc.equal(batch.column(0), split)).as_py() or 0)
                if n:
                    out.append(Window(g, j, n))
        hit = tuple(out)
        if key[1]:
            _WINDOWS[key] = hit
    return hit


def shardable_windows(plan_path: str, split: str, window_rows: int, world: int) -> tuple[tuple[Window, ...], int]:
    """The plan's windows, cut smaller when there are too few for ``world`` shards; and the window size used.

    Whole windows are sharded, so a small plan (one row group, one window) would leave all but one
    worker without rows: below :data:`MIN_WINDOWS_PER_SHARD` windows per shard the window size
    shrinks to ``ceil(rows / (MIN_WINDOWS_PER_SHARD * world))``.
    """
    windows = plan_windows(plan_path, split, window_rows)
    if windows and len(windows) < MIN_WINDOWS_PER_SHARD * world:
        rows = sum(w.rows for w in windows)
        smaller = max(1, min(window_rows, math.ceil(rows / (MIN_WINDOWS_PER_SHARD * world))))
        if smaller < window_rows:
            return plan_windows(plan_path, split, smaller), smaller
    return windows, window_rows


def epoch_windows(
    windows: tuple[Window, ...], seed: int, epoch: int, shard: tuple[int, int], skip_rows: int
) -> list[Window]:
    """This shard's windows for ``epoch``, in order, with the first ``skip_rows`` rows left out.

    Windows wholly inside the skipped rows are dropped here (never read); the window the skip
    ends in carries the rest as its ``skip``.
    """
    rank, world = shard
    order = np.random.default_rng([seed, epoch]).permutation(len(windows))
    mine = [windows[i] for i in order[rank::world]]
    out = []
    for w in mine:
        if skip_rows >= w.rows:
            skip_rows -= w.rows
            continue
        out.append(Window(w.row_group, w.index, w.rows, skip_rows))
        skip_rows = 0
    return out


def epoch_window_sets(
    windows: tuple[Window, ...], seed: int, epoch: int, shard: tuple[int, int], skip_rows: int, mix: int
) -> list[tuple[Window, ...]]:
    """This shard's windows for ``epoch`` in sets of ``mix``, read and shuffled together.

    The first ``skip_rows`` rows (of the sets' shuffled order) are left out: sets wholly inside
    the skipped rows are dropped here (never read); the set the skip ends in carries the rest as
    its first window's ``skip``.
    """
    rank, world = shard
    order = np.random.default_rng([seed, epoch]).permutation(len(windows))
    mine = [windows[i] for i in order[rank::world]]
    out = []
    for k in range(0, len(mine), max(1, mix)):
        group = mine[k : k + max(1, mix)]
        rows = sum(w.rows for w in group)
        if skip_rows >= rows:
            skip_rows -= rows
            continue
        first = group[0]
        out.append((Window(first.row_group, first.index, first.rows, skip_rows), *group[1:]))
        skip_rows = 0
    return out


def epoch_tasks(
    plan_path: str,
    split: str,
    window_rows: int,
    shard: tuple[int, int],
    seed: int,
    epoch: int,
    skip_rows: int,
    mix_windows: int,
    shuffle_rows: int,
) -> tuple[list[dict[str, Any]], int]:
    """The read tasks of one epoch's stream (:func:`eoforge.data.dataset.build_chip_dataset`), and the window size used.

    Raises:
        ChipReadError: no chips in the split (or none left after ``skip_rows``).
    """
    windows, window_rows = shardable_windows(plan_path, split, window_rows, shard[1])
    if not windows:
        raise ChipReadError(f"chip plan {plan_path}: no chips in split {split!r}")
    mine = epoch_window_sets(windows, seed, epoch, shard, skip_rows, mix_windows)
    if not mine:
        raise ChipReadError(f"chip plan {plan_path}: no chips of split {split!r} left after skipping {skip_rows}")
    return _read_tasks(mine, READ_TASK_CHUNKS * shuffle_rows), window_rows


def _read_tasks(sets: list[tuple[Window, ...]], rows: int) -> list[dict[str, Any]]:
    """One read task per ``rows`` rows of a window set's order (``rows``: whole chunks), in order.

    Ordered output keeps every block of a task that runs ahead of the one being consumed, so a task's
    output bounds that buffer: a whole set (``mix_windows * window_rows`` rows) made it ~0.5 GB a task.
    Each task reads the set's plan rows and order again, skips to its first row and stops after ``take``.
    """
    items = []
    for ws in sets:
        total, start = sum(w.rows for w in ws), ws[0].skip
        while start < total:
            end = min(total, (start // rows + 1) * rows)
            spec = [[ws[0].row_group, ws[0].index, ws[0].rows, start]]
            spec += [[w.row_group, w.index, w.rows, w.skip] for w in ws[1:]]
            items.append({"windows": json.dumps(spec), "take": end - start})
            start = end
    return items
