"""The chip cache: a plan's chips decoded once into Parquet files, published whole, read back by many.

Streaming a plan decodes its COG tiles and resamples every chip again on every read. Two users
read the same chips many times: pretraining with ``data.materialize: true`` (every epoch,
:mod:`eoforge.data.materialized`) and fine-tuning (every trial of a sweep, every epoch,
:mod:`eoforge.finetune.labelled`). Both go through this one module, which owns the cache:

- **key** (:func:`cache_key`): ``<plan hash[:16]>-<normalize>-mv<min_valid_fraction>-<version>``,
  what changes the pixels; a folder of that name under the caller's root
  (``<run.storage_path>/materialized`` for pretraining, ``cache_dir`` or
  ``<run.storage_path>/chip-cache`` for fine-tuning).
- **build** (:func:`ensure_chip_cache`): the plan's chip stream (epoch 0's order, every split,
  readable or not: :func:`eoforge.data.dataset.whole_plan_stream`) through Ray Data
  ``write_parquet``, files of at most :data:`FILE_ROWS` rows. Chips that could not be read are
  kept as ``ok = False`` rows with their reason.
- **publish, open, verify** (:mod:`eoforge.data.published`): each builder writes into a
  ``build-<uuid>/`` of its own and commits it with a manifest of files, sizes and sha256,
  written last. Readers read only the files the manifest lists, checked on open
  (:func:`open_cache`); a cache that fails the check is rebuilt by :func:`ensure_chip_cache` and
  refused by readers (:class:`~eoforge.errors.CacheIntegrityError` naming the file).
- **encoding** (:func:`encode_block`, :func:`decode_columns`): ``chip_id``, ``split``, ``error``,
  ``item_labels`` (JSON), ``tile_key`` str; ``ok`` bool; the pixel columns in storage units, one
  fixed-size binary blob per chip, their dtypes and shapes in the schema metadata
  (:data:`PIXELS_META`): ``s2`` uint16 [12, H, W] (reflectance x 10000), ``s1`` float16 [2, H, W]
  (dB), ``valid`` bool [2, H, W] (per sensor: S2, S1), ``label`` uint8 [H, W] (255 where none).
  A blob column reads back as one buffer that numpy views as [N, ...] without a copy (Parquet
  decodes a list or tensor column element by element).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from eoforge.data.published import MANIFEST, Published, ensure_published, open_published
from eoforge.errors import CacheIntegrityError, ChipReadError
from eoforge.progress import say
from eoforge.storage import filesystem_of

#: Columns of a cached chip (every one of them is a column of a stream block).
COLUMNS = ["chip_id", "split", "ok", "error", "item_labels", "tile_key", "s2", "s1", "valid", "label"]
#: The pixel columns and their dtypes (storage units).
PIXELS = {"s2": np.uint16, "s1": np.float16, "valid": bool, "label": np.uint8}
#: Schema metadata key of the pixel columns' dtypes and shapes.
PIXELS_META = b"eoforge.pixels"
#: Bumped when the files' layout changes. c1: one cache for pretraining and fine-tuning (it
#: replaces the materialised plans' m3 and the fine-tuning cache's v4: pixel blobs, manifest).
CACHE_VERSION = "c1"
#: Rows per file at most (~32 MB at 64 px): the files are the shards and shuffle units of an epoch.
FILE_ROWS = 256
#: What the cache is called in messages and errors.
WHAT = "chip cache"


def cache_key(plan_hash: str, data: Any) -> str:
    """Folder name of a plan's cache: what changes the pixels (plan, normalisation, valid threshold), version."""
    return f"{plan_hash[:16]}-{data.normalize}-mv{data.min_valid_fraction:g}-{CACHE_VERSION}"


def encode_block(batch: dict[str, np.ndarray]) -> pa.Table:
    """A stream block (numpy, :data:`COLUMNS`) as an Arrow table whose pixel columns hold one blob per chip."""
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


def pixel_meta(schema: pa.Schema, cache: str) -> dict[str, Any]:
    """{pixel column: [dtype str, shape]} from a cache file's schema.

    Raises:
        ChipReadError: the file has no pixel metadata (not written by this module).
    """
    meta = json.loads((schema.metadata or {}).get(PIXELS_META, b"{}"))
    if set(meta) != set(PIXELS):
        raise ChipReadError(f"{WHAT} {cache}: files without {PIXELS_META.decode()} (not eoforge's, or an old layout)")
    return meta


def decode_column(col: pa.Array | pa.ChunkedArray, name: str, meta: dict[str, Any]) -> np.ndarray:
    """One column as numpy: a pixel column as a read-only view [N, ...] of its buffer; ``ok`` bool; others object."""
    if name in PIXELS:
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        dtype, shape = meta[name]
        if len(arr) == 0:
            return np.zeros((0, *shape), np.dtype(dtype))
        width = arr.type.byte_width
        flat = np.frombuffer(arr.buffers()[1], np.uint8, count=len(arr) * width, offset=arr.offset * width)
        return flat.view(np.dtype(dtype)).reshape(len(arr), *shape)
    return np.asarray(col.to_pylist(), dtype=bool if name == "ok" else object)


def decode_columns(table: pa.Table | pa.RecordBatch, columns: list[str], meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """``columns`` of a table read from the cache, as numpy arrays (see :func:`decode_column`)."""
    return {name: decode_column(table.column(name), name, meta) for name in columns}


def ensure_chip_cache(data: Any, plan_hash: str, root: str, rows_per_file: int = FILE_ROWS) -> str:
    """Decode every chip of the plan once into the cache under ``root``; returns the cache folder (URI).

    Runs a Ray Data job (needs ``ray.init`` done) into a build folder of its own, then publishes
    it with its manifest (:func:`eoforge.data.published.ensure_published`): a published cache
    whose files verify is reused, one that does not is rebuilt, and a concurrent builder's files
    are never deleted.

    Args:
        data: the job's data section (``plan``, ``normalize``, ``min_valid_fraction``, ``read_tasks``,
            ``read_cpus``).
        plan_hash: the plan's content hash (part of the folder name).
        root: where caches live.
        rows_per_file: rows per file at most.
    """
    cache = f"{root.rstrip('/')}/{cache_key(plan_hash, data)}"

    def build(into: str) -> None:
        from eoforge.data.dataset import whole_plan_stream

        say(f"decoding the plan's chips once into {cache}")
        fs, _ = filesystem_of(into, WHAT)
        ds = whole_plan_stream(data).map_batches(encode_block, batch_format="numpy", num_cpus=0.25)
        ds.write_parquet(into, filesystem=None if "://" in into else fs, max_rows_per_file=rows_per_file)

    ensure_published(cache, WHAT, build, {"plan_hash": plan_hash, "normalize": data.normalize})
    return cache


def open_cache(cache: str) -> Published:
    """The published cache ``cache``, its files checked against its manifest.

    Sizes are checked on every call, sha256 on the first call per process
    (:func:`eoforge.data.published.open_published`).

    Raises:
        CacheIntegrityError: a listed file is missing, truncated or altered (the message names it).
        ChipReadError: ``cache`` was never published (no manifest).
    """
    published = open_published(cache, WHAT)
    if published is None:
        raise ChipReadError(f"{WHAT} {cache}: not published (no {MANIFEST}); ensure_chip_cache builds it")
    return published


def is_complete(cache: str) -> bool:
    """Whether ``cache`` holds a published cache whose files match its manifest (see :func:`open_cache`)."""
    try:
        return open_published(cache, WHAT) is not None
    except CacheIntegrityError:
        return False


def cache_parquet_files(cache: str) -> tuple[Published, tuple[str, ...], dict[str, Any]]:
    """The opened cache, its Parquet files (paths in its filesystem, sorted) and their pixel metadata.

    Raises:
        ChipReadError: not published, no Parquet file, or files not written by this module.
        CacheIntegrityError: see :func:`open_cache`.
    """
    published = open_cache(cache)
    paths = tuple(sorted(p for p in published.paths() if p.endswith(".parquet")))
    if not paths:
        raise ChipReadError(f"{WHAT} {cache}: no Parquet files")
    return published, paths, _file_meta(cache, published.build, paths[0])


@functools.lru_cache(maxsize=16)
def _file_meta(cache: str, build: str, path: str) -> dict[str, Any]:
    fs, _ = filesystem_of(cache, WHAT)
    return pixel_meta(pq.read_schema(path, filesystem=fs), cache)
