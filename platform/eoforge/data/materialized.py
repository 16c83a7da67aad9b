"""Epochs from a materialised plan: chips decoded once into sharded Parquet files, then re-read.

Streaming a plan decodes its COG tiles and resamples every chip again in every epoch. For a plan
that fits on disk (about 125 KB per 64 px chip) and many epochs, ``data.materialize: true`` decodes
it once through the same reader (:func:`ensure_materialized`: Ray Data ``write_parquet`` under
``<run.storage_path>/materialized/``, files of at most 256 rows, each pixel column one fixed-size
blob per chip, published whole with a manifest of files, sizes and sha256 written last:
:mod:`eoforge.data.published`) and every epoch reads the files the manifest lists back. No
reading tasks run per epoch and nothing is decoded from COGs or resampled again; a pixel column
reads back as one buffer that numpy views.

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
import json
import math
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from eoforge.data.epochs import Window, epoch_window_sets
from eoforge.data.published import MANIFEST, ensure_published, open_published
from eoforge.errors import ChipReadError
from eoforge.progress import say
from eoforge.storage import filesystem_of

#: Columns of a batch; pixel columns are fixed-size binary columns (one blob per chip) in the files.
COLUMNS = ["chip_id", "split", "ok", "error", "item_labels", "tile_key", "s2", "s1", "valid", "label"]
PIXELS = {"s2": np.uint16, "s1": np.float16, "valid": bool, "label": np.uint8}
#: Schema metadata key of the pixel columns' dtypes and shapes.
PIXELS_META = b"eoforge.pixels"
#: Bumped when the files' layout changes.
VERSION = "m3"  # m2: per-sensor valid masks; m3: builds under build-<uuid>/ committed by a manifest
#: Rows per file at most (~32 MB at 64 px): the files are the shards and shuffle units of an epoch.
FILE_ROWS = 256


def materialized_key(plan_hash: str, data: Any) -> str:
    """Folder name of a plan's materialised chips: what changes the pixels (plan, normalisation, valid threshold)."""
    return f"{plan_hash[:16]}-{data.normalize}-mv{data.min_valid_fraction:g}-{VERSION}"


def _encode(batch: dict[str, np.ndarray]) -> pa.Table:
    """A stream block as an Arrow table whose pixel columns hold one fixed-size blob per chip.

    Parquet stores a tensor-extension column as lists and decodes every element with its
    repetition levels on read; a fixed-size binary column reads back as one buffer, which numpy
    views as [N, ...] without a copy.
    """
    cols: dict[str, pa.Array] = {}
    meta = {}
    for name in COLUMNS:
        values = np.asarray(batch[name])
        if name in PIXELS:
            arr = np.ascontiguousarray(values.astype(PIXELS[name], copy=False))
            width = int(arr[0].nbytes) if len(arr) else 0
            cols[name] = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(width), len(arr), [None, pa.py_buffer(arr.tobytes())]
            )
            meta[name] = [np.dtype(PIXELS[name]).str, list(arr.shape[1:])]
        else:
            cols[name] = pa.array(values.tolist(), pa.bool_() if name == "ok" else pa.string())
    return pa.table(cols, metadata={PIXELS_META: json.dumps(meta).encode()})


def ensure_materialized(data: Any, plan_hash: str, root: str, rows_per_file: int = FILE_ROWS) -> str:
    """Decode every chip of the plan once into Parquet files under ``root``; returns the folder (URI).

    Runs the plan's chip stream (:func:`eoforge.data.dataset.build_chip_dataset`, epoch 0, every
    split) through Ray Data ``write_parquet`` (files of at most ``rows_per_file`` rows) into a
    build folder of its own, then publishes it with its manifest
    (:func:`eoforge.data.published.ensure_published`): a published folder whose files verify is
    reused, one that does not is rebuilt, and a concurrent builder's files are never deleted.
    Chips that could not be read are kept as ``ok = False`` rows with their reason (the training
    loop counts them).

    Args:
        data: the job's data section (plan, normalize, min_valid_fraction, read_tasks, read_cpus).
        plan_hash: the plan's content hash (part of the folder name).
        root: where materialised plans live (``<run.storage_path>/materialized``).
        rows_per_file: rows per file at most.
    """
    folder = f"{root.rstrip('/')}/{materialized_key(plan_hash, data)}"

    def build(into: str) -> None:
        from eoforge.data.dataset import whole_plan_stream

        say(f"materialising the plan's chips once into {folder}")
        fs, _ = filesystem_of(into, "materialised plan")
        ds = whole_plan_stream(data).map_batches(_encode, batch_format="numpy", num_cpus=0.25)
        ds.write_parquet(into, filesystem=None if "://" in into else fs, max_rows_per_file=rows_per_file)

    ensure_published(folder, "materialised plan", build, {"plan_hash": plan_hash, "normalize": data.normalize})
    return folder


def cache_files(cache: str, split: str) -> tuple[tuple[str, ...], tuple[Window, ...]]:
    """The cache's Parquet files (sorted, as its manifest lists them) and one window per file holding rows of ``split``.

    A window's ``row_group`` is the file's index; ``rows`` its rows of the split (``all``: every
    row), read from the ``split`` column only (once per process and build). The files are
    checked against the manifest on every call (sizes; sha256 on the first call in a process).

    Raises:
        ChipReadError: the cache is not published or has no Parquet file.
        CacheIntegrityError: a file the manifest lists is missing, truncated or altered.
    """
    published = open_published(cache, "materialised plan")
    if published is None:
        raise ChipReadError(f"materialised chips {cache}: not published (no {MANIFEST}); ensure_materialized builds it")
    paths = tuple(sorted(p for p in published.paths() if p.endswith(".parquet")))
    if not paths:
        raise ChipReadError(f"materialised chips {cache}: no Parquet files")
    return paths, _split_windows(cache, paths, split)


@functools.lru_cache(maxsize=8)
def _split_windows(cache: str, paths: tuple[str, ...], split: str) -> tuple[Window, ...]:
    fs, _ = filesystem_of(cache, "materialised plan")
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


def _column(col: pa.ChunkedArray, name: str, meta: dict[str, Any]) -> np.ndarray:
    if name in PIXELS:  # one fixed-size blob per chip: a view of the column's buffer
        arr = col.combine_chunks()
        dtype, shape = meta[name]
        width = arr.type.byte_width
        data = arr.buffers()[1]
        flat = np.frombuffer(data, np.uint8, count=len(arr) * width, offset=arr.offset * width)
        return flat.view(np.dtype(dtype)).reshape(len(arr), *shape)
    return np.asarray(col.to_pylist(), dtype=bool if name == "ok" else object)


def _read_set(
    cache: str, paths: tuple[str, ...], ws: tuple[Window, ...], split: str, seed: int, epoch: int, part: int
) -> dict:
    """The rows of the split in a set of files (or file parts of ``part`` rows), permuted together.

    The first ``ws[0].skip`` rows of that order are left out.
    """
    fs, _ = filesystem_of(cache, "materialised plan")
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
    meta = json.loads((table.schema.metadata or {}).get(PIXELS_META, b"{}"))
    if set(meta) != set(PIXELS):
        raise ChipReadError(f"materialised chips {cache}: files without {PIXELS_META.decode()} (not eoforge's)")
    return {name: _column(table.column(name), name, meta) for name in COLUMNS}


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
        cache: the folder (local or URI) of :func:`ensure_materialized`.
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
