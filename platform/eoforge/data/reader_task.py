"""The chip stream's reading process: a read task's window sets -> chip blocks.

Each read task (:func:`eoforge.data.epochs.epoch_tasks`) covers
:data:`eoforge.data.epochs.READ_TASK_CHUNKS` chunks of a window set and is read by
:func:`read_chip_task`: a :class:`TileChipReader` in one of Ray's pooled worker processes, whose
open datasets (:func:`process_cache`) and sample maps stay warm across tasks and epochs. A task:

1. reads the set's plan rows (columns and split filter pushed into the Parquet read);
2. groups them by source tile (:func:`eoforge.data.tiles.tile_key`), shuffles the groups of all
   the set's windows together (seed, epoch, set), packs consecutive groups into chunks of exactly
   ``shuffle_rows`` rows (a group cut at a chunk's end) and permutes each chunk's rows: the chunk is
   the shuffle buffer, so a batch mixes many tiles of several places and scenes (a batch from one
   tile gives contrastive training near-duplicate negatives;
   :func:`eoforge.data.diversity.batch_diversity` measures it);
3. drops the first ``skip`` rows of that order (resume, or the set's earlier tasks), then reads each
   group's assets once per chunk and cuts its chips (:func:`eoforge.data.tiles.read_rows`), one
   yield per chunk (Ray Data cuts it into blocks of about ``block_mb``), until its ``take`` rows.

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
comes out with ``ok = False`` and the reason in ``error`` instead of failing the job (the
training loop drops and counts these rows: :func:`eoforge.data.dataset.split_ok`).
"""

from __future__ import annotations

import atexit
import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import cachetools
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES
from eoforge.data.epochs import Window, _open_plan
from eoforge.errors import ChipReadError
from eoforge.plan.columns import STREAM_COLUMNS

if TYPE_CHECKING:
    from eoforge.data.files import DatasetCache

log = logging.getLogger(__name__)

#: Optional plan columns passed through to the reader when the plan has them.
OPTIONAL_COLUMNS = ["clear_fraction", "season", "place_id"]

#: Window sets whose rows and order a reading process keeps (:meth:`TileChipReader.set_order`).
SET_ORDERS_KEPT = 2
#: Those sets: (plan hash, split, seed, epoch, window_rows, shuffle_rows, tile_aware, windows) -> (rows, chunks).
_SET_ORDERS: cachetools.LRUCache = cachetools.LRUCache(maxsize=SET_ORDERS_KEPT)


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
        window_rows: rows per plan window (as given to :func:`eoforge.data.epochs.plan_windows`).
        shuffle_rows: rows per shuffle chunk (the last one fewer; tile groups, cut at a chunk's end): bounds the
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
        shuffle_rows: int = 256,
        tile_aware: bool = True,
        max_open: int = 64,
        cache: DatasetCache | None = None,
    ) -> None:
        from eoforge.data.files import DatasetCache

        self.plan_path, self.split = plan_path, split
        self.min_valid_fraction = min_valid_fraction
        self.seed, self.epoch = seed, epoch
        self.window_rows, self.shuffle_rows = window_rows, shuffle_rows
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
            while idx:  # chunks of exactly shuffle_rows rows (the last fewer): a group is cut at a chunk's end
                if len(chunks[-1]) >= self.shuffle_rows:
                    chunks.append([])
                room = self.shuffle_rows - len(chunks[-1])
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
        key = (digest, self.split, self.seed, self.epoch, self.window_rows, self.shuffle_rows, self.tile_aware, spec)
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
    """This process's :class:`eoforge.data.files.DatasetCache` of ``max_open`` datasets (made once).

    Args:
        max_open: the LRU's size.
        stream: None keeps the files open across streams (epochs). A stream id closes every file
            the process opened for another stream first, so the stream reads its tiles from the
            files, not from GDAL's block cache of the previous epoch (``keep_open=False``).
    """
    from eoforge.data.files import DatasetCache

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
    sample maps (:func:`eoforge.data.sample_maps.sample_map`) stay warm from one epoch to the next.

    Args:
        batch: one read task (``windows``, ``take``; see :meth:`TileChipReader.__call__`).
        reader_kwargs: :class:`TileChipReader` arguments (``max_open`` sizes the process's cache;
            ``stream``, when given, is the stream's id for :func:`process_cache`; ``cpu_set``, when
            given, the CPUs the whole process reads on: :func:`eoforge.data.affinity.reading_on`).
    """
    from eoforge.data.affinity import reading_on

    max_open = int(reader_kwargs.pop("max_open", 64))
    stream = reader_kwargs.pop("stream", None)
    cpu_set = reader_kwargs.pop("cpu_set", None)
    with reading_on(cpu_set):
        reader = TileChipReader(**reader_kwargs, cache=process_cache(max_open, stream))
        yield from reader(batch)


def iter_chip_blocks(
    plan_path: str, windows: list[Window] | list[tuple[Window, ...]], **reader_kwargs: Any
) -> Iterator[dict[str, np.ndarray]]:
    """The blocks :func:`eoforge.data.dataset.build_chip_dataset` streams, read in this process.

    For benchmarks and tests. ``windows``: single windows (:func:`eoforge.data.epochs.epoch_windows`)
    or sets of them (:func:`eoforge.data.epochs.epoch_window_sets`).
    """
    reader = TileChipReader(plan_path, **reader_kwargs)
    for w in windows:
        yield from reader.read_windows(w if isinstance(w, tuple) else (w,))
