"""Labelled chips for fine-tuning, read from the chip cache: the index to pick subsets, chips by id, a Ray stream.

Fine-tuning runs many short jobs (methods x label fractions x lrs x seeds) over the same small
labelled set, for many epochs each. Reading COG windows for every epoch of every trial would
spend the sweep on GDAL, so the plan's chips are decoded once into the chip cache
(:mod:`eoforge.data.chip_cache`: key, build, publish, open and verify live there, shared with
pretraining's materialised epochs) and fine-tuning reads them from it:

- :func:`read_index`: the small columns (labels included, no S1/S2 pixels), for the driver to
  pick label subsets;
- :func:`iter_cached_chips` / :func:`load_cached_chips`: chips by id straight from the files
  (probes, subsets held in worker memory);
- :func:`labelled_dataset`: a Ray Dataset of a split's chips, filtered in the Parquet scan
  (sets larger than worker memory).

Pixels stay in storage units (``s1`` float16 [2, H, W] dB, ``s2`` uint16 [12, H, W], ``valid``
bool [2, H, W], ``label`` uint8 [H, W]); the fine-tuning loop normalises them on its device
(:func:`eoforge.data.normalize.normalize_batch`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from eoforge.data.chip_cache import PIXELS, WHAT, cache_parquet_files, decode_columns
from eoforge.errors import ChipReadError

INDEX_COLUMNS = ["chip_id", "split", "ok", "error", "label", "item_labels"]
TRAIN_COLUMNS = ["chip_id", "s1", "s2", "valid", "label", "item_labels"]


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


def _writable(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pixel views of Arrow buffers (read-only) copied, so that torch may take them as they are."""
    return {k: np.array(v) if k in PIXELS else v for k, v in cols.items()}


def read_index(cache: str) -> ChipIndex:
    """Read the cache's small columns (labels included, pixels not).

    Raises:
        ChipReadError: the cache is not published or holds no rows.
        CacheIntegrityError: a file the manifest lists is missing, truncated or altered.
    """
    published, paths, meta = cache_parquet_files(cache)
    table = pq.ParquetDataset(list(paths), filesystem=published.fs).read(columns=INDEX_COLUMNS)
    if table.num_rows == 0:
        raise ChipReadError(f"{WHAT} {cache}: no rows")
    cols = decode_columns(table, INDEX_COLUMNS, meta)
    return ChipIndex(**_writable(cols))


def iter_cached_chips(cache: str, chip_ids: list[str], batch_rows: int = 256) -> Iterator[dict[str, np.ndarray]]:
    """Batches of the cached chips ``chip_ids`` (readable ones), read straight from the Parquet files.

    For work that reads a labelled set once or holds it in memory (probes, small subsets):
    no Ray Data pipeline, one pass over the files with the id filter pushed into the scan.
    Yields dicts of numpy arrays with :data:`TRAIN_COLUMNS` (``s1`` float16 [B, 2, H, W],
    ``s2`` uint16 [B, 12, H, W], ``valid`` bool [B, 2, H, W], ``label`` uint8 [B, H, W]), in file order.
    """
    published, paths, meta = cache_parquet_files(cache)
    dataset = pads.dataset(list(paths), filesystem=published.fs, format="parquet")
    wanted = pc.field("chip_id").isin(list(chip_ids)) & (pc.field("ok") == True)  # noqa: E712
    for batch in dataset.to_batches(columns=TRAIN_COLUMNS, filter=wanted, batch_size=batch_rows):
        if batch.num_rows:
            yield _writable(decode_columns(batch, TRAIN_COLUMNS, meta))


def load_cached_chips(cache: str, chip_ids: list[str]) -> dict[str, np.ndarray]:
    """The cached chips ``chip_ids`` in memory, in the order of ``chip_ids`` (see :func:`iter_cached_chips`).

    Raises:
        ChipReadError: a requested chip is not in the cache (or not readable).
    """
    parts = list(iter_cached_chips(cache, chip_ids))
    if not parts:
        if chip_ids:
            raise ChipReadError(f"{WHAT} {cache}: none of {len(chip_ids)} requested chips")
        return {}
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    where = {str(c): i for i, c in enumerate(merged["chip_id"])}
    missing = [c for c in chip_ids if c not in where]
    if missing:
        raise ChipReadError(f"{WHAT} {cache}: {len(missing)} requested chips missing, e.g. {missing[:3]}")
    order = np.array([where[c] for c in chip_ids], dtype=np.intp)
    return {k: v[order] for k, v in merged.items()}


def _decoded(block: pa.Table, columns: list[str], meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """A Ray Data block of the cache's files with its pixel blobs decoded (a ``map_batches`` function)."""
    return _writable(decode_columns(block, columns, meta))


def labelled_dataset(cache: str, split: str, chip_ids: list[str] | None = None) -> Any:
    """A Ray Dataset of readable cached chips of ``split`` (optionally only ``chip_ids``).

    The filter is a Ray Data expression, pushed down into the Parquet scan; the pixel blobs are
    decoded in the blocks that pass it. Columns: :data:`TRAIN_COLUMNS`, ``split`` and ``ok``.
    """
    import ray.data
    from ray.data.expressions import col

    expr = (col("split") == split) & (col("ok") == True)  # noqa: E712 (an expression, not a comparison)
    if chip_ids is not None:
        expr = expr & col("chip_id").is_in(list(chip_ids))
    published, _, meta = cache_parquet_files(cache)
    files = sorted(u for u in published.uris() if u.endswith(".parquet"))  # only the files the manifest lists
    fs = None if "://" in cache else pafs.LocalFileSystem()
    columns = [*TRAIN_COLUMNS, "split", "ok"]
    ds = ray.data.read_parquet(files, filesystem=fs, columns=columns).filter(expr=expr)
    return ds.map_batches(_decoded, batch_format="pyarrow", fn_kwargs={"columns": columns, "meta": meta})
