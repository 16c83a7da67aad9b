"""Labelled chips, decoded once: a Parquet cache of a plan's pixels that every fine-tuning trial reads.

Fine-tuning runs many short jobs (methods x label fractions x lrs x seeds) over the same
small labelled set, for many epochs each. Reading COG windows for every epoch of every trial
would spend the sweep on GDAL. So the plan's chips go through the same Ray Data reader as
pretraining (:func:`eoforge.data.dataset.build_chip_dataset`) once, and are written as
Parquet (Ray Data ``write_parquet``; tensor columns) under
``<cache_dir>/<plan hash>-<normalize>-mv<min_valid_fraction>-<version>/``, published whole
(:mod:`eoforge.data.published`): each builder writes into a ``build-<uuid>/`` of its own and a
``_MANIFEST.json`` of files, sizes and sha256, written last, commits it. Readers read only the
files the manifest lists, after checking them; a cache that fails the check is rebuilt by
:func:`ensure_chip_cache` and refused by the readers (:class:`~eoforge.errors.CacheIntegrityError`
naming the file). Trials then stream rows from it with ``ray.data.read_parquet`` filtered to their
split and label subset.

Columns: ``chip_id`` str, ``split`` str, ``ok`` bool, ``error`` str, ``s1`` float16 [2, H, W] dB,
``s2`` uint16 [12, H, W] reflectance x 10000, ``valid`` bool [2, H, W] (per sensor: S2, S1), ``label`` uint8 [H, W] (255
where none), ``item_labels`` str (JSON). Pixels stay in storage units (half the bytes of float32);
the fine-tuning loop normalises them on its device (:func:`eoforge.data.normalize.normalize_batch`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from eoforge.config.jobs import PlanInput
from eoforge.data.published import MANIFEST, Published, ensure_published, open_published
from eoforge.errors import CacheIntegrityError, ChipReadError
from eoforge.progress import say

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["chip_id", "split", "ok", "error", "label", "item_labels"]
TRAIN_COLUMNS = ["chip_id", "s1", "s2", "valid", "label", "item_labels"]
#: Bumped when the cached columns or layout change (v2: storage units + valid mask; v3: valid per
#: sensor; v4: builds under build-<uuid>/ committed by a manifest).
CACHE_VERSION = "v4"


def cache_key(plan_hash: str, data: PlanInput) -> str:
    """Folder name of a plan's cache: what changes the pixels (plan, normalisation, valid threshold)."""
    return f"{plan_hash[:16]}-{data.normalize}-mv{data.min_valid_fraction:g}-{CACHE_VERSION}"


def is_complete(cache: str) -> bool:
    """Whether ``cache`` holds a published cache whose files match its manifest (see :func:`open_cache`)."""
    try:
        return open_published(cache, "chip cache") is not None
    except CacheIntegrityError:
        return False


def open_cache(cache: str) -> Published:
    """The published chip cache ``cache``, its files checked against its manifest.

    Sizes are checked on every call, sha256 on the first call per process (:func:`open_published`).

    Raises:
        CacheIntegrityError: a listed file is missing, truncated or altered (the message names it).
        ChipReadError: ``cache`` was never published (no manifest).
    """
    published = open_published(cache, "chip cache")
    if published is None:
        raise ChipReadError(f"chip cache {cache}: not published (no {MANIFEST}); ensure_chip_cache builds it")
    return published


#: Rows per cache file at most (~32 MB at 64 px).
CACHE_FILE_ROWS = 256


def ensure_chip_cache(data: PlanInput, plan_hash: str, cache_dir: str, rows_per_file: int = CACHE_FILE_ROWS) -> str:
    """Decode every chip of the plan once into a Parquet cache; returns its URI (local path or s3://...).

    Runs a Ray Data job (needs ``ray.init`` done) into a build folder of its own, then publishes it
    with its manifest (:func:`eoforge.data.published.ensure_published`): a published cache whose
    files verify is reused, one that does not is rebuilt, and a concurrent builder's files are
    never deleted. Chips that cannot be read are kept as ``ok = False`` rows with their reason, so
    the count of skipped chips is known later. Files hold at most ``rows_per_file`` rows.
    """
    cache = f"{cache_dir.rstrip('/')}/{cache_key(plan_hash, data)}"

    def build(into: str) -> None:
        from eoforge.data.dataset import whole_plan_stream

        say(f"decoding the plan's chips once into {cache}")
        ds = whole_plan_stream(data).drop_columns(["valid_fraction", "tile_key"])
        ds.write_parquet(
            into, filesystem=None if "://" in into else pafs.LocalFileSystem(), max_rows_per_file=rows_per_file
        )

    ensure_published(cache, "chip cache", build, {"plan_hash": plan_hash, "normalize": data.normalize})
    return cache


@dataclass(frozen=True)
class ChipIndex:
    """What the driver needs to pick subsets: one entry per cached chip (no S1/S2 pixels).

    Attributes:
        chip_id: [N] str; split: [N] str; ok: [N] bool; error: [N] str;
        label: [N, H, W] uint8 (255 where none); item_labels: [N] str (JSON lists).
    """

    chip_id: np.ndarray
    split: np.ndarray
    ok: np.ndarray
    error: np.ndarray
    label: np.ndarray
    item_labels: np.ndarray

    def skipped(self) -> dict[str, str]:
        """{chip_id: reason} of the chips that could not be read."""
        return {str(c): str(e) for c, e in zip(self.chip_id[~self.ok], self.error[~self.ok], strict=True)}


def read_index(cache: str) -> ChipIndex:
    """Read the cache's small columns (labels included, pixels not)."""
    published = open_cache(cache)
    if not published.files:
        raise ChipReadError(f"chip cache {cache}: no rows")
    table = pq.ParquetDataset(published.paths(), filesystem=published.fs).read(columns=INDEX_COLUMNS)
    if table.num_rows == 0:
        raise ChipReadError(f"chip cache {cache}: no rows")
    label_col = table.column("label").combine_chunks()
    labels = _tensor_column(label_col, np.uint8)
    return ChipIndex(
        chip_id=np.asarray(table.column("chip_id").to_pylist(), dtype=object),
        split=np.asarray(table.column("split").to_pylist(), dtype=object),
        ok=np.asarray(table.column("ok").to_pylist(), dtype=bool),
        error=np.asarray(table.column("error").to_pylist(), dtype=object),
        label=labels,
        item_labels=np.asarray(table.column("item_labels").to_pylist(), dtype=object),
    )


def _tensor_column(col: Any, dtype: type) -> np.ndarray:
    """A Ray tensor-extension (or list) column as one numpy array [N, ...]."""
    if hasattr(col.type, "to_pandas_dtype") and hasattr(col, "to_numpy_ndarray"):
        return np.asarray(col.to_numpy_ndarray(), dtype=dtype)
    return np.stack([np.asarray(v, dtype=dtype) for v in col.to_pylist()])


def labelled_dataset(cache: str, split: str, chip_ids: list[str] | None = None) -> Any:
    """A Ray Dataset of readable cached chips of ``split`` (optionally only ``chip_ids``).

    The filter is a Ray Data expression, pushed down into the Parquet scan.
    """
    import ray.data
    from ray.data.expressions import col

    expr = (col("split") == split) & (col("ok") == True)  # noqa: E712 (an expression, not a comparison)
    if chip_ids is not None:
        expr = expr & col("chip_id").is_in(list(chip_ids))
    files = open_cache(cache).uris()  # only the files the manifest lists
    fs = None if "://" in cache else pafs.LocalFileSystem()
    return ray.data.read_parquet(files, filesystem=fs, columns=[*TRAIN_COLUMNS, "split", "ok"]).filter(expr=expr)


def iter_cached_chips(cache: str, chip_ids: list[str], batch_rows: int = 256) -> Iterator[dict[str, np.ndarray]]:
    """Batches of the cached chips ``chip_ids`` (readable ones), read straight from the Parquet files.

    For work that reads a labelled set once or holds it in memory (probes, small subsets):
    no Ray Data pipeline, one pass over the files with the id filter pushed into the scan.
    Yields dicts of numpy arrays with :data:`TRAIN_COLUMNS` (``s1`` float16 [B, 2, H, W],
    ``s2`` uint16 [B, 12, H, W], ``valid`` bool [B, 2, H, W], ``label`` uint8 [B, H, W]), in file order.
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import ray.data  # noqa: F401  (registers Ray's tensor extension type for the pixel columns)

    published = open_cache(cache)
    if not published.files:
        return
    dataset = pads.dataset(published.paths(), filesystem=published.fs, format="parquet")
    wanted = pc.field("chip_id").isin(list(chip_ids)) & (pc.field("ok") == True)  # noqa: E712
    dtypes = {"s1": np.float16, "s2": np.uint16, "valid": bool, "label": np.uint8}
    for batch in dataset.to_batches(columns=TRAIN_COLUMNS, filter=wanted, batch_size=batch_rows):
        if batch.num_rows == 0:
            continue
        out: dict[str, np.ndarray] = {}
        for name in TRAIN_COLUMNS:
            column = batch.column(name)
            out[name] = (
                _tensor_column(column, dtypes[name]) if name in dtypes else np.asarray(column.to_pylist(), dtype=object)
            )
        yield out


def load_cached_chips(cache: str, chip_ids: list[str]) -> dict[str, np.ndarray]:
    """The cached chips ``chip_ids`` in memory, in the order of ``chip_ids`` (see :func:`iter_cached_chips`).

    Raises:
        ChipReadError: a requested chip is not in the cache (or not readable).
    """
    parts = list(iter_cached_chips(cache, chip_ids))
    if not parts:
        if chip_ids:
            raise ChipReadError(f"chip cache {cache}: none of {len(chip_ids)} requested chips")
        return {}
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    where = {str(c): i for i, c in enumerate(merged["chip_id"])}
    missing = [c for c in chip_ids if c not in where]
    if missing:
        raise ChipReadError(f"chip cache {cache}: {len(missing)} requested chips missing, e.g. {missing[:3]}")
    order = np.array([where[c] for c in chip_ids], dtype=np.intp)
    return {k: v[order] for k, v in merged.items()}
