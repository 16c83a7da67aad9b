"""Epochs from the chip cache: a plan decoded once, every epoch read back in the live stream's order.

Streaming a plan decodes its COG tiles and resamples every chip again in every epoch. For a plan
that fits on disk (about 125 KB per 64 px chip) and many epochs, ``data.materialize: true`` has
the driver decode it once into the chip cache (:func:`eoforge.data.chip_cache.ensure_chip_cache`
under ``<run.storage_path>/materialized/``: files of at most 256 rows, published whole with a
manifest) and every epoch reads the files the manifest lists back. No reading tasks run per
epoch and nothing is decoded from COGs or resampled again; a pixel column reads back as one
buffer that numpy views.

The order of an epoch follows the live stream's rules (:mod:`eoforge.data.epochs`), with the
cache's files as its windows: a seeded permutation of the files (seed, epoch), every ``world``-th
for worker ``rank``, taken in sets of ``mix`` files whose rows of the split are permuted together
(:func:`eoforge.data.epochs.epoch_window_sets`); batches are consecutive slices of that order. The
cache's rows are already in the live stream's epoch-0 order (tile groups of several places mixed
in chunks), so a set mixes several chunks. A cache with too few files for its shards has its
files cut into parts (:func:`cache_windows`), as the live stream cuts a small plan's windows. A
resumed run passes ``skip_rows``: whole sets are dropped before any file is read, and the rest of
the skip is cut from the first set read.

Batches (numpy, as :func:`eoforge.data.dataset.build_chip_dataset` streams them): ``chip_id``,
``split``, ``ok``, ``error``, ``item_labels``, ``tile_key`` str [B]; ``s2`` uint16 [B, 12, H, W];
``s1`` float16 [B, 2, H, W]; ``valid`` bool [B, 2, H, W] (per sensor); ``label`` uint8 [B, H, W].
"""

from __future__ import annotations

import functools
import math
import queue
import threading
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from eoforge.data.chip_cache import COLUMNS, WHAT, cache_parquet_files, decode_columns, pixel_meta
from eoforge.data.epochs import Window, epoch_window_sets
from eoforge.storage import filesystem_of


def cache_files(cache: str, split: str) -> tuple[tuple[str, ...], tuple[Window, ...]]:
    """The cache's Parquet files (sorted, as its manifest lists them) and one window per file holding rows of ``split``.

    A window's ``row_group`` is the file's index; ``rows`` its rows of the split (``all``: every
    row), read from the ``split`` column only (once per process and build). The files are
    checked against the manifest on every call (sizes; sha256 on the first call in a process).

    Raises:
        ChipReadError: the cache is not published, has no Parquet file or files of another layout.
        CacheIntegrityError: a file the manifest lists is missing, truncated or altered.
    """
    _, paths, _ = cache_parquet_files(cache)
    return paths, _split_windows(cache, paths, split)


@functools.lru_cache(maxsize=8)
def _split_windows(cache: str, paths: tuple[str, ...], split: str) -> tuple[Window, ...]:
    fs, _ = filesystem_of(cache, WHAT)
    windows = []
    for k, path in enumerate(paths):
        col = pq.read_table(path, columns=["split"], filesystem=fs).column("split")
        n = len(col) if split == "all" else int(pc.sum(pc.equal(col, split)).as_py() or 0)
        if n:
            windows.append(Window(k, 0, n))
    return tuple(windows)


def cache_windows(cache: str, split: str, world: int) -> tuple[tuple[str, ...], tuple[Window, ...], int]:
    """The cache's files and windows for ``world`` shards, and the rows per window part (0: whole files).

    With fewer than :data:`eoforge.data.epochs.MIN_WINDOWS_PER_SHARD` files per shard (a small
    cache) the files are cut into parts of ``part`` rows of the split (window ``index`` = part),
    so that every worker gets rows, as the live stream cuts a small plan's windows.
    """
    from eoforge.data.epochs import MIN_WINDOWS_PER_SHARD

    paths, windows = cache_files(cache, split)
    if len(windows) >= MIN_WINDOWS_PER_SHARD * world:
        return paths, windows, 0
    part = max(1, math.ceil(sum(w.rows for w in windows) / (MIN_WINDOWS_PER_SHARD * world)))
    parts = [
        Window(w.row_group, j, min(part, w.rows - j * part)) for w in windows for j in range(math.ceil(w.rows / part))
    ]
    return paths, tuple(parts), part


def _read_set(
    cache: str,
    paths: tuple[str, ...],
    ws: tuple[Window, ...],
    split: str,
    seed: int,
    epoch: int,
    part: int,
) -> dict[str, np.ndarray]:
    """The rows of the split in a set of files (or file parts of ``part`` rows), permuted together.

    The first ``ws[0].skip`` rows of that order are left out.
    """
    fs, _ = filesystem_of(cache, WHAT)
    files: dict[int, pa.Table] = {}  # each file of the set read once (a small cache's parts share files)
    for w in ws:
        if w.row_group not in files:
            table = pq.read_table(paths[w.row_group], columns=COLUMNS, filesystem=fs)
            files[w.row_group] = table.filter(pc.equal(table.column("split"), split)) if split != "all" else table
    table = pa.concat_tables(
        [files[w.row_group].slice(w.index * part, w.rows) if part else files[w.row_group] for w in ws]
    )
    order = np.random.default_rng([seed, epoch, ws[0].row_group, ws[0].index]).permutation(table.num_rows)
    order = order[ws[0].skip :]
    table = table.take(pa.array(order))
    return decode_columns(table, COLUMNS, pixel_meta(table.schema, cache))


def iter_materialized_batches(
    cache: str,
    split: str,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shard: tuple[int, int] = (0, 1),
    skip_rows: int = 0,
    mix: int = 4,
    prefetch: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """This worker's batches of ``epoch`` from a materialised plan (see module docstring).

    Args:
        cache: the cache folder (local or URI) of :func:`eoforge.data.chip_cache.ensure_chip_cache`.
        split: ``train`` / ``val`` / ``test`` / ``all``.
        batch_size: rows per batch (the last one of the epoch fewer).
        seed: seed of the epochs' orders (``train.seed``).
        epoch: which epoch's order.
        shard: (rank, world): this worker's share of the files.
        skip_rows: rows of this epoch (and shard) already trained: left out before reading.
        mix: files read and permuted together.
        prefetch: file sets read ahead by a background thread while batches are consumed.
    """
    paths, windows, part = cache_windows(cache, split, shard[1])
    sets = epoch_window_sets(windows, seed, epoch, shard, skip_rows, mix)
    if not sets:
        return
    ahead: queue.Queue[dict | BaseException | None] = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def produce() -> None:
        try:
            for ws in sets:
                if stop.is_set():
                    return
                ahead.put(_read_set(cache, paths, ws, split, seed, epoch, part))
        except BaseException as exc:  # handed to the consumer, raised there
            ahead.put(exc)
            return
        ahead.put(None)

    thread = threading.Thread(target=produce, name="eoforge-materialized-prefetch", daemon=True)
    thread.start()
    rest: dict[str, np.ndarray] | None = None
    try:
        while True:
            got = ahead.get()
            if got is None:
                break
            if isinstance(got, BaseException):
                raise got
            block = got if rest is None else {k: np.concatenate([rest[k], got[k]]) for k in COLUMNS}
            n = len(block["ok"])
            full = n - n % batch_size
            for i in range(0, full, batch_size):
                yield {k: v[i : i + batch_size] for k, v in block.items()}
            rest = {k: v[full:] for k, v in block.items()} if full < n else None
        if rest is not None:
            yield rest
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                ahead.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)
