"""Ray Data pipeline: chip plan -> chip pixels, streamed tile-aware to training workers.

The stream is the work of three modules:

- :mod:`eoforge.data.epochs` cuts the plan into windows and fixes each epoch's order and read
  tasks before any pixel is read (a run resumed mid-epoch drops whole window sets on the driver);
- :mod:`eoforge.data.reader_task` reads a task's window sets into chip blocks
  (:func:`eoforge.data.reader_task.read_chip_task`, CPU only, in Ray's pooled worker processes)
  and lists the blocks' columns;
- this module wires them into Ray Data (:func:`build_chip_dataset`, its :class:`StreamOptions`,
  :func:`task_pool`) and splits the readable chips of a batch from the others (:func:`split_ok`).

A chip whose asset is missing or corrupt, or whose valid fraction is below the threshold,
comes out with ``ok = False`` and the reason in ``error`` instead of failing the job; the
training loop drops and counts these rows (:func:`split_ok`), and the count reaches MLflow.

The names callers import from here that live in those modules (and in
:mod:`eoforge.data.diversity`) are re-exported (``__all__``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from eoforge.config.jobs import PlanSource

from eoforge.data.diversity import DiversityMeter, batch_diversity
from eoforge.data.epochs import (
    MIN_WINDOWS_PER_SHARD,
    READ_TASK_CHUNKS,
    Window,
    epoch_tasks,
    epoch_window_sets,
    epoch_windows,
    plan_windows,
    shardable_windows,
)
from eoforge.data.normalize import NORMALIZATIONS
from eoforge.data.reader_task import (
    OPTIONAL_COLUMNS,
    SET_ORDERS_KEPT,
    TileChipReader,
    empty_chip_block,
    iter_chip_blocks,
    process_cache,
    read_chip_task,
)

__all__ = [
    "MIN_WINDOWS_PER_SHARD",
    "OPTIONAL_COLUMNS",
    "READ_TASK_CHUNKS",
    "SET_ORDERS_KEPT",
    "DiversityMeter",
    "StreamOptions",
    "TileChipReader",
    "Window",
    "batch_diversity",
    "build_chip_dataset",
    "empty_chip_block",
    "epoch_tasks",
    "epoch_window_sets",
    "epoch_windows",
    "iter_chip_blocks",
    "plan_windows",
    "process_cache",
    "read_chip_task",
    "shardable_windows",
    "split_ok",
    "task_pool",
    "whole_plan_stream",
]


@dataclass(frozen=True)
class StreamOptions:
    """How a chip stream reads (:func:`build_chip_dataset`); every field has the stream's default.

    Attributes:
        min_valid_fraction: chips below this valid-pixel share are skipped and counted.
        read_tasks: most reading tasks at once (CPU only: ``num_gpus=0``).
        read_cpus: logical CPUs reserved per reading task.
        shuffle_rows: most rows per shuffle chunk (whole tile groups, a larger one cut): the shuffle
            buffer; a 32-chip batch mixes about ``shuffle_rows / chips per tile`` tiles.
        shuffle_seed: seed of the epochs' row orders (:mod:`eoforge.data.epochs`).
        epoch: which epoch's order to stream.
        skip_rows: rows of this epoch (and shard) already trained: left out before reading.
        shard: (rank, world): this consumer's share of the windows.
        window_rows: plan rows per window.
        mix_windows: windows (random places of the plan) read and shuffled together by one read task.
        tile_aware: False reads every chip on its own (benchmark baseline).
        max_open: open datasets per reading process (LRU, kept across epochs).
        keep_open: True keeps the reading processes' files open from one stream (epoch) to the
            next, and with them GDAL's decoded blocks (``GDAL_CACHEMAX``): a plan whose tiles fit
            in that cache is decoded once, not once per epoch. False opens them afresh for this
            stream, so every tile is read and decoded once per pass, as with a plan larger than
            the cache (``bench/stream.py`` measures both).
        block_mb: largest output block, MiB (Ray Data slices a chunk into blocks of about this size;
            by default it merges a task's chunks into blocks of up to 128 MiB, i.e. a whole window
            set, which the consumer and the readers then hold).
        object_store_mb: object-store budget of this stream, MiB (Ray Data backpressure: blocks
            produced but not yet consumed, out-of-order blocks kept for ``preserve_order``
            included); None keeps Ray Data's default (half the node's object store, per stream).
        read_cpu_set: CPUs the reading processes run on while they read: a Linux CPU list
            (``"2-15"``) or CPU ids; each reading task pins its whole process there and puts it
            back when it ends (:mod:`eoforge.data.affinity`). None reads wherever Ray runs the task.
    """

    min_valid_fraction: float = 0.5
    read_tasks: int = 2
    read_cpus: float = 0.5
    shuffle_rows: int = 512
    shuffle_seed: int = 0
    epoch: int = 0
    skip_rows: int = 0
    shard: tuple[int, int] = (0, 1)
    window_rows: int = 1024
    mix_windows: int = 4
    tile_aware: bool = True
    max_open: int = 64
    keep_open: bool = True
    block_mb: float = 16.0
    object_store_mb: float | None = 512.0
    read_cpu_set: str | Sequence[int] | None = None


def build_chip_dataset(plan_path: str, split: str = "train", normalize: str = "ssl4eo", **options: Any) -> Any:
    """A lazy Ray Dataset of chips for one split of a plan (``split='all'`` keeps every row).

    Args:
        plan_path: GeoParquet chip plan: local path, ``s3://``, ``gs://`` or any URI pyarrow or
            fsspec opens (:func:`eoforge.storage.filesystem_of`); the reading tasks open it.
        split: ``train`` / ``val`` / ``test`` / ``all``.
        normalize: the normalisation the consumer applies with
            :func:`eoforge.data.normalize.normalize_batch` (checked here; pixels stay in storage units).
        options: fields of :class:`StreamOptions` (an unknown name is a TypeError).

    Memory does not grow with the plan's length: each read task covers
    :data:`~eoforge.data.epochs.READ_TASK_CHUNKS` chunks of a window set (not the whole set), so the
    ordered output holds at most the tasks running ahead of the consumed one; blocks are at most
    ``block_mb``; a read task holds one chunk (``shuffle_rows``).

    Raises:
        ChipReadError: no chips in the split (or none left after ``skip_rows``).
        ValueError: unknown ``normalize``, or a non-positive ``block_mb`` / ``object_store_mb``.
        ConfigError: ``read_cpu_set`` is not a CPU list (a CPU the node lacks fails the first read task).
    """
    from eoforge.data.affinity import parse_cpu_set

    opts = StreamOptions(**options)
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize: unknown mode {normalize!r}; choose one of {NORMALIZATIONS}")
    if opts.block_mb <= 0 or (opts.object_store_mb is not None and opts.object_store_mb <= 0):
        raise ValueError(f"block_mb ({opts.block_mb}) and object_store_mb ({opts.object_store_mb}) must be > 0")
    pinning = {} if opts.read_cpu_set is None else {"cpu_set": parse_cpu_set(opts.read_cpu_set)}
    items, window_rows = epoch_tasks(
        str(plan_path),
        split,
        opts.window_rows,
        opts.shard,
        opts.shuffle_seed,
        opts.epoch,
        opts.skip_rows,
        opts.mix_windows,
        opts.shuffle_rows,
    )
    reader = {
        "plan_path": str(plan_path),
        "split": split,
        "min_valid_fraction": opts.min_valid_fraction,
        "seed": opts.shuffle_seed,
        "epoch": opts.epoch,
        "window_rows": window_rows,
        "shuffle_rows": opts.shuffle_rows,
        "tile_aware": opts.tile_aware,
        "max_open": opts.max_open,
        **({} if opts.keep_open else {"stream": uuid.uuid4().hex}),
        **pinning,
    }
    pool = (opts.read_tasks, opts.read_cpus, opts.block_mb, opts.object_store_mb)
    return task_pool(items, read_chip_task, reader, *pool)


def task_pool(
    items: list[dict[str, Any]],
    fn: Any,
    fn_kwargs: dict[str, Any],
    read_tasks: int,
    read_cpus: float,
    block_mb: float,
    object_store_mb: float | None,
) -> Any:
    """The stream's Ray Data pipeline: one ``fn(item, **fn_kwargs)`` call per read task, in order, CPU only.

    ``bench/stream.py`` runs it with a UDF that reads nothing, to measure the hop on its own.
    """
    import ray.data

    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # the epoch's order is fixed before reading: keep it (resume skips rows by position)
    ds.context.execution_options.preserve_order = True
    _bound_memory(ds.context, block_mb, object_store_mb)
    return ds.map_batches(
        fn,
        fn_kwargs=fn_kwargs,
        batch_size=1,
        batch_format="numpy",
        num_cpus=read_cpus,
        num_gpus=0,
        compute=ray.data.TaskPoolStrategy(size=read_tasks),
    )


def whole_plan_stream(data: Any) -> Any:
    """Every chip of a job's plan (epoch 0's order, every split, readable or not).

    What the chip cache decodes once (:func:`eoforge.data.chip_cache.ensure_chip_cache`).

    Args:
        data: a job's data section (``plan``, ``normalize``, ``min_valid_fraction``, ``read_tasks``,
            ``read_cpus``, ``read_cpu_set``).
    """
    return build_chip_dataset(
        data.plan,
        split="all",
        normalize=data.normalize,
        min_valid_fraction=data.min_valid_fraction,
        read_tasks=data.read_tasks,
        read_cpus=data.read_cpus,
        read_cpu_set=data.read_cpu_set,
    )


def _bound_memory(ctx: Any, block_mb: float, object_store_mb: float | None) -> None:
    """Cap a stream's block size and object-store budget in its own (sealed) DataContext."""
    ctx.target_max_block_size = int(block_mb * 2**20)
    if object_store_mb is not None:
        limits = ctx.execution_options.resource_limits
        ctx.execution_options.resource_limits = limits.copy(object_store_memory=int(object_store_mb * 2**20))


def split_ok(batch: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Keep the readable chips of a batch; returns (good rows, {chip_id: error} of the others)."""
    ok = np.asarray(batch["ok"], bool)
    ids = np.asarray(batch["chip_id"])[~ok]
    errors = {str(c): str(e) for c, e in zip(ids, np.asarray(batch["error"])[~ok], strict=True)}
    good = {k: np.asarray(v)[ok] for k, v in batch.items()}
    return good, errors


def build_plan_stream(source: PlanSource, **options: Any) -> Any:
    """:func:`build_chip_dataset` for a job's ``data:`` section: what a pretraining worker streams.

    The section (:class:`~eoforge.config.jobs.PlanSource`) gives the plan, split, normalisation and
    read settings (``min_valid_fraction``, ``read_tasks``, ``read_cpus``, ``read_cpu_set``,
    ``shuffle_rows``, ``mix_windows``); ``options`` are the per-epoch fields of :class:`StreamOptions`
    (``shuffle_seed``, ``epoch``, ``skip_rows``, ``shard``).
    """
    return build_chip_dataset(
        source.plan,
        source.split,
        source.normalize,
        min_valid_fraction=source.min_valid_fraction,
        read_tasks=source.read_tasks,
        read_cpus=source.read_cpus,
        shuffle_rows=source.shuffle_rows,
        mix_windows=source.mix_windows,
        read_cpu_set=source.read_cpu_set,
        **options,
    )
