"""Ray Data pipeline: chip plan -> chip pixels, streamed tile-aware to training workers.

The driver never holds the plan. It streams the plan's ``split`` column once (one small column,
batch by batch) to cut the plan into *windows* of ``window_rows`` consecutive rows and count the
split's rows in each (:func:`plan_windows`; cached per process). An epoch is a seeded
permutation of the windows, taken in sets of ``mix_windows`` (:func:`epoch_window_sets`); a worker
of a multi-worker run takes every ``world``-th window. Each set is read by CPU-only read tasks
(:func:`read_chip_task`: a :class:`TileChipReader` in one of Ray's pooled worker processes, whose
open datasets and sample maps stay warm across tasks and epochs), each of :data:`READ_TASK_CHUNKS`
chunks (:func:`_read_tasks`); a task:

1. reads the set's plan rows (columns and split filter pushed into the Parquet read);
2. groups them by source tile (:func:`eoforge.data.tiles.tile_key`), shuffles the groups of all
   the set's windows together (seed, epoch, set), packs consecutive groups into chunks of exactly
   ``chunk_rows`` rows (a group cut at a chunk's end) and permutes each chunk's rows: the chunk is
   the shuffle buffer, so a batch mixes many tiles of several places and scenes (a batch from one
   tile gives contrastive training near-duplicate negatives; :func:`batch_diversity` measures it);
3. drops the first ``skip`` rows of that order (resume, or the set's earlier tasks), then reads each
   group's assets once per chunk and cuts its chips (:func:`eoforge.data.tiles.read_rows`), one
   yield per chunk (Ray Data cuts it into blocks of about ``block_mb``), until its ``take`` rows.

The row order of an epoch is a function of (plan, split, seed, epoch, shard) only, and is fixed
before any pixel is read, so a run resumed mid-epoch passes ``skip_rows`` = rows already
trained: whole window sets are dropped on the driver and their files are never opened.

Columns out (one row per chip):

- ``s2``: uint16 [B, 12, H, W] reflectance x 10000, ``s1``: float16 [B, 2, H, W] dB,
  ``valid``: bool [B, 2, H, W] per sensor (channel 0 S2, 1 S1; 0 in that sensor's pixels where
  False, so a cloud masks S2 and leaves S1): storage units, half the bytes of float32; the
  training worker normalises them (:func:`eoforge.data.normalize.normalize_batch`);
- ``valid_fraction``: float32 [B] (the smaller sensor's valid share), ``label``: uint8 [B, H, W]
  (255 where the plan has none),
- ``chip_id``, ``split``, ``item_labels`` (JSON list), ``tile_key`` (source tile): str [B],
- ``ok``: bool [B], ``error``: str [B].

A chip whose asset is missing or corrupt, or whose valid fraction is below the threshold,
comes out with ``ok = False`` and the reason in ``error`` instead of failing the job; the
training loop drops and counts these rows (:func:`split_ok`), and the count reaches MLflow.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cachetools
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES
from eoforge.data.normalize import NORMALIZATIONS
from eoforge.errors import ChipReadError
from eoforge.plan.columns import STREAM_COLUMNS

if TYPE_CHECKING:
    from eoforge.data.tiles import DatasetCache

log = logging.getLogger(__name__)

#: Windows per shard below which a plan is cut into smaller windows (every worker gets rows).
MIN_WINDOWS_PER_SHARD = 4

#: Shuffle chunks per read task (a window set is read by several tasks; see :func:`_read_tasks`).
READ_TASK_CHUNKS = 2

#: Optional plan columns passed through to the reader when the plan has them.
OPTIONAL_COLUMNS = ["clear_fraction", "season", "place_id"]

#: The plans' windows a process keeps (:func:`plan_windows`): (path, plan hash, split, window_rows) -> windows.
_WINDOWS: cachetools.LRUCache = cachetools.LRUCache(maxsize=8)
#: Window sets whose rows and order a reading process keeps (:meth:`TileChipReader.set_order`).
SET_ORDERS_KEPT = 2
#: Those sets: (plan hash, split, seed, epoch, window_rows, chunk_rows, tile_aware, windows) -> (rows, chunks).
_SET_ORDERS: cachetools.LRUCache = cachetools.LRUCache(maxsize=SET_ORDERS_KEPT)


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

    Raises:
        CatalogError: the file is missing or not a plan.
        ServiceError: its store refused the read or is unreachable.
    """
    from eoforge.plan.io import metadata_hash

    f = _open_plan(plan_path)
    key = (plan_path, metadata_hash(f.metadata.metadata), split, window_rows)
    hit = _WINDOWS.get(key) if key[1] else None
    if hit is None:
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


def batch_diversity(tile_keys: np.ndarray | list[str]) -> dict[str, float]:
    """Diversity of one batch: distinct source tiles and the share of same-tile pairs.

    A same-tile share near 1 means the batch's contrastive negatives are near-duplicates;
    a random draw from T equally sized tiles gives about 1/T.
    """
    keys = np.asarray(tile_keys, dtype=object)
    n = len(keys)
    _, counts = np.unique(keys.astype(str), return_counts=True) if n else (None, np.zeros(0))
    pairs = n * (n - 1) / 2
    same = float((counts * (counts - 1) / 2).sum())
    return {"distinct_tiles": float(len(counts)), "same_tile_pair_share": same / pairs if pairs else 0.0}


class DiversityMeter:
    """Running mean of :func:`batch_diversity` over the batches of an epoch."""

    def __init__(self) -> None:
        self.n = 0
        self.sums = {"distinct_tiles": 0.0, "same_tile_pair_share": 0.0}

    def add(self, tile_keys: np.ndarray | list[str]) -> None:
        """Count one batch."""
        for k, v in batch_diversity(tile_keys).items():
            self.sums[k] += v
        self.n += 1

    def means(self) -> dict[str, float]:
        """``data/batch_distinct_tiles`` and ``data/same_tile_pair_share`` (epoch means)."""
        n = max(self.n, 1)
        return {
            "data/batch_distinct_tiles": self.sums["distinct_tiles"] / n,
            "data/same_tile_pair_share": self.sums["same_tile_pair_share"] / n,
        }


def empty_chip_block(n: int, size: int) -> dict[str, Any]:
    """A block of ``n`` chips of ``size`` px as the reader allocates it: empty pixels, ``ok`` False.

    Columns and dtypes as in the module docstring.
    """
    return {
        "chip_id": np.full(n, "", dtype=object),
        "split": np.full(n, "", dtype=object),
        "item_labels": np.full(n, "[]", dtype=object),
        "tile_key": np.full(n, "", dtype=object),
        "s1": np.zeros((n, len(S1_BAND_NAMES), size, size), np.float16),
        "s2": np.zeros((n, len(S2_BAND_NAMES), size, size), np.uint16),
        "valid": np.zeros((n, 2, size, size), bool),
        "label": np.full((n, size, size), 255, np.uint8),
        "valid_fraction": np.zeros(n, np.float32),
        "ok": np.zeros(n, bool),
        "error": np.full(n, "", dtype=object),
    }


def _clear(block: dict[str, np.ndarray], pos: int) -> None:
    """Row ``pos`` of a chip block back to its empty pixels (a chip that failed after it was written)."""
    block["s1"][pos], block["s2"][pos], block["valid"][pos] = 0, 0, False


class TileChipReader:
    """Reader of plan windows -> chip blocks, one per read task (see module docstring).

    Args:
        plan_path, split: the plan and the split to read (``all``: every row).
        min_valid_fraction: chips below this valid-pixel share come out with ``ok = False``.
        seed, epoch: the epoch's order (groups and chunk permutations).
        window_rows: rows per plan window (as given to :func:`plan_windows`).
        chunk_rows: rows per shuffle chunk (the last one fewer; tile groups, cut at a chunk's end): bounds the
            reader's memory, and read tasks of whole chunks (``take``) start at a known row of the order.
        tile_aware: False reads every chip on its own (the old per-chip path, for benchmarks).
        max_open: open datasets kept by the reader's LRU (when it makes its own ``cache``).
        cache: the open datasets to read through (default: a new LRU of ``max_open``); the stream's
            read tasks pass their process's (:func:`process_cache`), kept across tasks and epochs.
    """

    def __init__(
        self,
        plan_path: str,
        split: str,
        min_valid_fraction: float = 0.5,
        seed: int = 0,
        epoch: int = 0,
        window_rows: int = 1024,
        chunk_rows: int = 256,
        tile_aware: bool = True,
        max_open: int = 64,
        cache: DatasetCache | None = None,
    ) -> None:
        from eoforge.data.tiles import DatasetCache

        self.plan_path, self.split = plan_path, split
        self.min_valid_fraction = min_valid_fraction
        self.seed, self.epoch = seed, epoch
        self.window_rows, self.chunk_rows = window_rows, chunk_rows
        self.tile_aware = tile_aware
        self.cache = cache if cache is not None else DatasetCache(max_open=max_open)
        self._file: pq.ParquetFile | None = None

    def window_rows_of(self, w: Window) -> list[dict[str, Any]]:
        """The plan rows of a window that are in the split (metadata only)."""
        if self._file is None:
            self._file = _open_plan(self.plan_path)
        names = set(self._file.schema_arrow.names)
        cols = [c for c in [*STREAM_COLUMNS, *OPTIONAL_COLUMNS] if c in names]
        batches = self._file.iter_batches(batch_size=self.window_rows, row_groups=[w.row_group], columns=cols)
        for j, batch in enumerate(batches):
            if j == w.index:
                table = pa.Table.from_batches([batch])
                if self.split != "all":
                    table = table.filter(pc.equal(table.column("split"), self.split))
                return table.to_pylist()
        raise ChipReadError(f"chip plan {self.plan_path}: window {w} not found (plan changed while reading?)")

    def order(self, w: Window | tuple[Window, ...], rows: list[dict[str, Any]]) -> list[list[tuple[str, int]]]:
        """The chunks of a window (or a set of windows): each a list of (tile key, row index), in the epoch's order.

        Tile groups of every window of the set are permuted together, so one chunk (the shuffle
        buffer) mixes tiles of several windows, i.e. of several places and scenes of the plan.
        """
        from eoforge.data.tiles import group_rows

        first = w[0] if isinstance(w, tuple) else w
        if self.tile_aware:
            groups = list(group_rows(rows, self.cache))
        else:
            groups = [(f"row{i}", [i]) for i in range(len(rows))]
        rng = np.random.default_rng([self.seed, self.epoch, first.row_group, first.index])
        chunks: list[list[tuple[str, int]]] = [[]]
        for g in rng.permutation(len(groups)):
            key, idx = groups[int(g)]
            while idx:  # chunks of exactly chunk_rows rows (the last fewer): a group is cut at a chunk's end
                if len(chunks[-1]) >= self.chunk_rows:
                    chunks.append([])
                room = self.chunk_rows - len(chunks[-1])
                chunks[-1].extend((key, i) for i in idx[:room])
                idx = idx[room:]
        return [[chunk[int(i)] for i in rng.permutation(len(chunk))] for chunk in chunks if chunk]

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Read the window sets of ``batch`` (``windows``: JSON lists of Window fields); one block per chunk.

        An optional ``take`` column stops a set after that many rows (from its first window's ``skip``):
        the chunks after them are never read.
        """
        takes = batch.get("take")
        for k, spec in enumerate(batch["windows"]):
            left = None if takes is None else int(takes[k])
            for out in self.read_windows(tuple(Window(*map(int, f)) for f in json.loads(str(spec)))):
                if left is not None and len(out["ok"]) >= left:
                    yield {c: v[:left] for c, v in out.items()}
                    break
                if left is not None:
                    left -= len(out["ok"])
                yield out

    def read_window(self, w: Window) -> Iterator[dict[str, np.ndarray]]:
        """The chip blocks of one window (its first ``w.skip`` rows left out, unread)."""
        yield from self.read_windows((w,))

    def set_order(self, ws: tuple[Window, ...]) -> tuple[list[dict[str, Any]], list[list[tuple[str, int]]]]:
        """A window set's plan rows and its chunks (:meth:`order`), made once per process for a plan with a hash.

        Each of a set's read tasks needs the whole set's rows and order to find its own rows (a set of
        4 x 1024 rows: ~75 ms of Parquet reads, row dicts and tile keys a task). A pooled reading process
        keeps the last :data:`SET_ORDERS_KEPT`, keyed by the plan's content hash (``eoforge:plan_hash``),
        so a rewritten plan is never read from a stale entry; a plan without one is not cached.
        """
        from eoforge.plan.io import metadata_hash

        if self._file is None:
            self._file = _open_plan(self.plan_path)
        digest = metadata_hash(self._file.metadata.metadata)
        spec = tuple((w.row_group, w.index, w.rows) for w in ws)
        key = (digest, self.split, self.seed, self.epoch, self.window_rows, self.chunk_rows, self.tile_aware, spec)
        hit = _SET_ORDERS.get(key) if digest else None
        if hit is None:
            rows = [row for w in ws for row in self.window_rows_of(w)]
            hit = (rows, self.order(ws, rows))
            if digest:
                _SET_ORDERS[key] = hit
        return hit

    def read_windows(self, ws: tuple[Window, ...]) -> Iterator[dict[str, np.ndarray]]:
        """The chip blocks of a set of windows, shuffled together (the first ``ws[0].skip`` rows left out, unread)."""
        from eoforge.data.tiles import read_rows

        rows, chunks = self.set_order(ws)
        skip = ws[0].skip
        for chunk in chunks:
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            chunk, skip = chunk[skip:], 0
            yield self._read_chunk(chunk, rows, read_rows)

    def _read_chunk(self, chunk: list[tuple[str, int]], rows: list[dict[str, Any]], read_rows: Any) -> dict[str, Any]:
        size = int(rows[chunk[0][1]]["size_px"])
        out = empty_chip_block(len(chunk), size)
        by_group: dict[str, list[int]] = {}
        for pos, (key, _) in enumerate(chunk):
            by_group.setdefault(key, []).append(pos)
        for key, positions in by_group.items():
            group = [rows[chunk[p][1]] for p in positions]
            # chips are assembled straight into the block's rows; a row that fails is cleared again
            for pos, row, res in zip(positions, group, read_rows(group, self.cache, (out, positions)), strict=True):
                out["chip_id"][pos] = str(row["chip_id"])
                out["split"][pos] = str(row.get("split") or "")
                out["item_labels"][pos] = str(row.get("item_labels") or "[]")
                out["tile_key"][pos] = key
                if isinstance(res, ChipReadError):
                    out["error"][pos] = f"chip {row['chip_id']}: {res}"
                    log.warning("skipping %s", out["error"][pos])
                    _clear(out, pos)
                    continue
                vf = res.valid_fraction
                out["valid_fraction"][pos] = vf
                if vf < self.min_valid_fraction:
                    out["error"][pos] = (
                        f"chip {row['chip_id']}: valid fraction {vf:.2f} < {self.min_valid_fraction} "
                        "(S2 clouds / nodata, or S1 nodata)"
                    )
                    _clear(out, pos)
                    continue
                out["ok"][pos] = True  # its s2, s1 and valid are already in the block (read_rows(into=...))
                if res.label is not None:
                    out["label"][pos] = res.label
        return out


#: Open datasets of this process, per LRU size: a read task's reader reads through them, so a
#: pooled worker keeps its files (and GDAL's decoded blocks) open across tasks and epochs.
_PROCESS_CACHES: dict[int, DatasetCache] = {}
#: The stream the process's caches were opened for, when a stream asks for files of its own.
_PROCESS_STREAM: list[str | None] = [None]


def process_cache(max_open: int, stream: str | None = None) -> DatasetCache:
    """This process's :class:`eoforge.data.tiles.DatasetCache` of ``max_open`` datasets (made once).

    Args:
        max_open: the LRU's size.
        stream: None keeps the files open across streams (epochs). A stream id closes every file
            the process opened for another stream first, so the stream reads its tiles from the
            files, not from GDAL's block cache of the previous epoch (``keep_open=False``).
    """
    from eoforge.data.tiles import DatasetCache

    if stream is not None and stream != _PROCESS_STREAM[0]:
        for cache in _PROCESS_CACHES.values():
            cache.close()
        _PROCESS_STREAM[0] = stream
    if max_open not in _PROCESS_CACHES:
        if not _PROCESS_CACHES:  # closed before the interpreter tears rasterio down
            atexit.register(_close_process_caches)
        _PROCESS_CACHES[max_open] = DatasetCache(max_open=max_open)
    return _PROCESS_CACHES[max_open]


def _close_process_caches() -> None:
    for cache in _PROCESS_CACHES.values():
        cache.close()
    _PROCESS_CACHES.clear()


def read_chip_task(batch: dict[str, np.ndarray], **reader_kwargs: Any) -> Iterator[dict[str, np.ndarray]]:
    """The stream's Ray Data UDF: one read task's window sets -> chip blocks (see module docstring).

    A plain function, so Ray runs it in its pooled worker processes, which stay alive between
    streams: an epoch starts without starting reading actors (about 1.5-2 s of process start and
    imports per epoch on one core), and the process's open datasets (:func:`process_cache`) and
    sample maps (:func:`eoforge.data.resample.sample_map`) stay warm from one epoch to the next.

    Args:
        batch: one read task (``windows``, ``take``; see :meth:`TileChipReader.__call__`).
        reader_kwargs: :class:`TileChipReader` arguments (``max_open`` sizes the process's cache;
            ``stream``, when given, is the stream's id for :func:`process_cache`).
    """
    max_open = int(reader_kwargs.pop("max_open", 64))
    stream = reader_kwargs.pop("stream", None)
    reader = TileChipReader(**reader_kwargs, cache=process_cache(max_open, stream))
    yield from reader(batch)


def iter_chip_blocks(
    plan_path: str, windows: list[Window] | list[tuple[Window, ...]], **reader_kwargs: Any
) -> Iterator[dict[str, np.ndarray]]:
    """The blocks :func:`build_chip_dataset` streams, read in this process (benchmarks, tests).

    ``windows``: single windows (:func:`epoch_windows`) or sets of them (:func:`epoch_window_sets`).
    """
    reader = TileChipReader(plan_path, **reader_kwargs)
    for w in windows:
        yield from reader.read_windows(w if isinstance(w, tuple) else (w,))


@dataclass(frozen=True)
class StreamOptions:
    """How a chip stream reads (:func:`build_chip_dataset`); every field has the stream's default.

    Attributes:
        min_valid_fraction: chips below this valid-pixel share are skipped and counted.
        read_tasks: most reading tasks at once (CPU only: ``num_gpus=0``).
        read_cpus: logical CPUs reserved per reading task.
        rows_per_task: most rows per shuffle chunk (whole tile groups, a larger one cut): the shuffle
            buffer; a 32-chip batch mixes about ``rows_per_task / chips per tile`` tiles.
        shuffle_seed: seed of the epochs' row orders (see module docstring).
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
    """

    min_valid_fraction: float = 0.5
    read_tasks: int = 2
    read_cpus: float = 0.5
    rows_per_task: int = 512
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


def build_chip_dataset(plan_path: str, split: str = "train", normalize: str = "ssl4eo", **options: Any) -> Any:
    """A lazy Ray Dataset of chips for one split of a plan (``split='all'`` keeps every row).

    Args:
        plan_path: GeoParquet chip plan: local path, ``s3://``, ``gs://`` or any URI pyarrow or
            fsspec opens (:func:`eoforge.storage.filesystem_of`); the reading tasks open it.
        split: ``train`` / ``val`` / ``test`` / ``all``.
        normalize: the normalisation the consumer applies with
            :func:`eoforge.data.normalize.normalize_batch` (checked here; pixels stay in storage units).
        options: fields of :class:`StreamOptions` (an unknown name is a TypeError).

    Memory does not grow with the plan's length: each read task covers :data:`READ_TASK_CHUNKS` chunks
    of a window set (not the whole set), so the ordered output holds at most the tasks running ahead
    of the consumed one; blocks are at most ``block_mb``; a read task holds one chunk (``rows_per_task``).

    Raises:
        ChipReadError: no chips in the split (or none left after ``skip_rows``).
        ValueError: unknown ``normalize``, or a non-positive ``block_mb`` / ``object_store_mb``.
    """
    opts = StreamOptions(**options)
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize: unknown mode {normalize!r}; choose one of {NORMALIZATIONS}")
    if opts.block_mb <= 0 or (opts.object_store_mb is not None and opts.object_store_mb <= 0):
        raise ValueError(f"block_mb ({opts.block_mb}) and object_store_mb ({opts.object_store_mb}) must be > 0")
    items, window_rows = epoch_tasks(
        str(plan_path),
        split,
        opts.window_rows,
        opts.shard,
        opts.shuffle_seed,
        opts.epoch,
        opts.skip_rows,
        opts.mix_windows,
        opts.rows_per_task,
    )
    reader = {
        "plan_path": str(plan_path),
        "split": split,
        "min_valid_fraction": opts.min_valid_fraction,
        "seed": opts.shuffle_seed,
        "epoch": opts.epoch,
        "window_rows": window_rows,
        "chunk_rows": opts.rows_per_task,
        "tile_aware": opts.tile_aware,
        "max_open": opts.max_open,
        **({} if opts.keep_open else {"stream": uuid.uuid4().hex}),
    }
    pool = (opts.read_tasks, opts.read_cpus, opts.block_mb, opts.object_store_mb)
    return task_pool(items, read_chip_task, reader, *pool)


def epoch_tasks(
    plan_path: str,
    split: str,
    window_rows: int,
    shard: tuple[int, int],
    seed: int,
    epoch: int,
    skip_rows: int,
    mix_windows: int,
    rows_per_task: int,
) -> tuple[list[dict[str, Any]], int]:
    """The read tasks of one epoch's stream (:func:`build_chip_dataset`), and the window size used.

    Raises:
        ChipReadError: no chips in the split (or none left after ``skip_rows``).
    """
    windows, window_rows = shardable_windows(plan_path, split, window_rows, shard[1])
    if not windows:
        raise ChipReadError(f"chip plan {plan_path}: no chips in split {split!r}")
    mine = epoch_window_sets(windows, seed, epoch, shard, skip_rows, mix_windows)
    if not mine:
        raise ChipReadError(f"chip plan {plan_path}: no chips of split {split!r} left after skipping {skip_rows}")
    return _read_tasks(mine, READ_TASK_CHUNKS * rows_per_task), window_rows


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

    What the decoded-once caches write (:func:`eoforge.finetune.chips.ensure_chip_cache`,
    :func:`eoforge.data.materialized.ensure_materialized`).

    Args:
        data: a job's data section (``plan``, ``normalize``, ``min_valid_fraction``, ``read_tasks``,
            ``read_cpus``).
    """
    return build_chip_dataset(
        data.plan,
        split="all",
        normalize=data.normalize,
        min_valid_fraction=data.min_valid_fraction,
        read_tasks=data.read_tasks,
        read_cpus=data.read_cpus,
    )


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
