"""Labelled chips, decoded once: a Parquet cache of a plan's pixels that every fine-tuning trial reads.

Fine-tuning runs many short jobs (methods x label fractions x lrs x seeds) over the same
small labelled set, for many epochs each. Reading COG windows for every epoch of every trial
would spend the sweep on GDAL. So the plan's chips go through the same Ray Data reader as
pretraining (:func:`eoforge.data.dataset.build_chip_dataset`) once, and are written as
Parquet (Ray Data ``write_parquet``; tensor columns) under
``<cache_dir>/<plan hash>-<normalize>-mv<min_valid_fraction>/``. A ``_SUCCESS`` file written
last marks a complete cache; a half-written one is rebuilt. Trials then stream rows from it
with ``ray.data.read_parquet`` filtered to their split and label subset.

Columns: ``chip_id`` str, ``split`` str, ``ok`` bool, ``error`` str, ``s1`` float16 [2, H, W] dB,
``s2`` uint16 [12, H, W] reflectance x 10000, ``valid`` bool [2, H, W] (per sensor: S2, S1), ``label`` uint8 [H, W] (255
where none), ``item_labels`` str (JSON). Pixels stay in storage units (half the bytes of float32);
the fine-tuning loop normalises them on its device (:func:`eoforge.data.normalize.normalize_batch`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from eoforge.config.jobs import PlanInput
from eoforge.errors import ChipReadError
from eoforge.progress import say
from eoforge.storage import filesystem_of

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
INDEX_COLUMNS = ["chip_id", "split", "ok", "error", "label", "item_labels"]
TRAIN_COLUMNS = ["chip_id", "s1", "s2", "valid", "label", "item_labels"]
#: Bumped when the cached columns change (v2: storage units + valid mask; v3: valid per sensor).
CACHE_VERSION = "v3"


def cache_key(plan_hash: str, data: PlanInput) -> str:
    """Folder name of a plan's cache: what changes the pixels (plan, normalisation, valid threshold)."""
    return f"{plan_hash[:16]}-{data.normalize}-mv{data.min_valid_fraction:g}-{CACHE_VERSION}"


def is_complete(cache: str) -> bool:
    """Whether ``cache`` holds a finished cache (its ``_SUCCESS`` marker exists)."""
    fs, path = filesystem_of(cache, "chip cache")
    return fs.get_file_info(f"{path}/{SUCCESS}").type == pafs.FileType.File


#: Rows per cache file at most (~32 MB at 64 px).
CACHE_FILE_ROWS = 256


def ensure_chip_cache(data: PlanInput, plan_hash: str, cache_dir: str, rows_per_file: int = CACHE_FILE_ROWS) -> str:
    """Decode every chip of the plan once into a Parquet cache; returns its URI (local path or s3://...).

    Runs a Ray Data job (needs ``ray.init`` done). Chips that cannot be read are kept as
    ``ok = False`` rows with their reason, so the count of skipped chips is known later. Files
    hold at most ``rows_per_file`` rows.
    """
    from eoforge.data.dataset import whole_plan_stream

    cache = f"{cache_dir.rstrip('/')}/{cache_key(plan_hash, data)}"
    if is_complete(cache):
        log.info("chip cache %s is complete: reusing it", cache)
        return cache
    fs, path = filesystem_of(cache, "chip cache")
    fs.delete_dir_contents(path, missing_dir_ok=True)
    fs.create_dir(path, recursive=True)
    say(f"decoding the plan's chips once into {cache}")
    ds = whole_plan_stream(data)
    ds = ds.drop_columns(["valid_fraction", "tile_key"])
    ds.write_parquet(
        cache, filesystem=None if "://" in cache else pafs.LocalFileSystem(), max_rows_per_file=rows_per_file
    )
    with fs.open_output_stream(f"{path}/{SUCCESS}") as out:
        out.write(json.dumps({"plan_hash": plan_hash, "normalize": data.normalize}).encode())
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
    fs, path = filesystem_of(cache, "chip cache")
    dataset = pq.ParquetDataset(path, filesystem=fs)
    table = dataset.read(columns=INDEX_COLUMNS)
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
    fs = None if "://" in cache else pafs.LocalFileSystem()
    return ray.data.read_parquet(cache, filesystem=fs, columns=[*TRAIN_COLUMNS, "split", "ok"]).filter(expr=expr)


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

    fs, path = filesystem_of(cache, "chip cache")
    dataset = pads.dataset(path, filesystem=fs, format="parquet", exclude_invalid_files=True)
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
