"""Chip plans from disk: existence, streamed batches, the verified hash, whole plans, footer facts.

A plan lives on local disk or in object storage: every function here takes a path, a ``file://``
URL, ``s3://bucket/key.parquet``, ``gs://...`` or any URI pyarrow or fsspec opens
(:func:`eoforge.storage.filesystem_of`; S3 endpoint and region from the environment). Reading a
plan checks its content hash (:mod:`eoforge.plan.hashing`) against the one the writer
(:mod:`eoforge.plan.writer`) stored in its metadata; :func:`ensure_plan` builds a missing plan
first (:func:`eoforge.plan.build.build_plan`).

This module is also the one import for plan files: the hash, the writer and the build entry point
are re-exported here (:data:`__all__`), so ``from eoforge.plan.io import build_plan, write_plan,
read_plan`` keeps working.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from eoforge.config import DataConfig
from eoforge.errors import CatalogError
from eoforge.plan.build import build_plan
from eoforge.plan.columns import STREAM_COLUMNS, WHAT, not_found
from eoforge.plan.hashing import HASH_VERSION, READ_BATCH_ROWS, PlanHasher, _Order, hash_tables, plan_hash, sort_plan
from eoforge.plan.schema import PLAN_SCHEMA
from eoforge.plan.writer import (
    CONFIG_KEY,
    DICT_COLUMNS,
    GEO_KEY,
    HASH_KEY,
    ROW_GROUP_ROWS,
    STATS_KEY,
    WRITE_SCHEMA,
    write_plan,
)
from eoforge.storage import file_exists, filesystem_of, storage_error

# What this module offered before the hash and the writer moved to their own modules and
# build_plan to eoforge.plan.build: importers of ``eoforge.plan.io`` keep working.
__all__ = [
    "CONFIG_KEY",
    "DICT_COLUMNS",
    "GEO_KEY",
    "HASH_KEY",
    "HASH_VERSION",
    "READ_BATCH_ROWS",
    "ROW_GROUP_ROWS",
    "STATS_KEY",
    "STREAM_COLUMNS",
    "WRITE_SCHEMA",
    "PlanHasher",
    "build_plan",
    "check_plan_signing",
    "content_hash",
    "ensure_plan",
    "hash_tables",
    "iter_plan_batches",
    "metadata_hash",
    "plan_exists",
    "plan_hash",
    "plan_split_counts",
    "plan_stats",
    "read_plan",
    "read_stream_table",
    "sort_plan",
    "stored_hash",
    "verify_plan",
    "write_plan",
]

log = logging.getLogger(__name__)


def plan_exists(path: str | Path) -> bool:
    """Whether the plan file exists (local path or URI).

    Raises:
        ConfigError: ``path`` is a directory or not a location eoforge can open.
        ServiceError: its bucket does not exist, access was refused, or the store is unreachable.
    """
    return file_exists(path, WHAT)


def _not_found(uri: str) -> CatalogError:
    return not_found(uri)


def _open(path: str | Path) -> tuple[str, pafs.FileSystem, str]:
    """(uri, filesystem, path inside it) of an existing plan file.

    Raises:
        CatalogError: no file there.
        ConfigError, ServiceError: see :func:`plan_exists`.
    """
    uri = str(path)
    if not plan_exists(uri):
        raise _not_found(uri)
    fs, inner = filesystem_of(uri, WHAT)
    return uri, fs, inner


def _schema_metadata(path: str | Path) -> dict[bytes, bytes]:
    uri, fs, inner = _open(path)
    try:
        return pq.read_schema(inner, filesystem=fs).metadata or {}
    except FileNotFoundError:
        raise _not_found(uri) from None
    except OSError as exc:
        raise storage_error(uri, exc, WHAT, "read") from None
    except pa.ArrowException as exc:
        raise CatalogError(f"chip plan {uri}: not a readable GeoParquet file: {exc}") from None


def iter_plan_batches(path: str | Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream a plan's rows (file order) as record batches of :data:`READ_BATCH_ROWS` rows.

    String columns that repeat per pair come back dictionary-encoded (little memory).

    Raises:
        CatalogError: the file is missing or not a plan.
        ServiceError: its bucket does not exist, access was refused, or the store is unreachable.
    """
    uri, fs, inner = _open(path)
    try:
        with fs.open_input_file(inner) as f:
            pf = pq.ParquetFile(f, read_dictionary=[c for c in DICT_COLUMNS if c in (columns or PLAN_SCHEMA.names)])
            yield from pf.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns)
    except FileNotFoundError:
        raise _not_found(uri) from None
    except OSError as exc:
        raise storage_error(uri, exc, WHAT, "read") from None
    except pa.ArrowException as exc:
        raise CatalogError(f"chip plan {uri}: not a readable GeoParquet file: {exc}") from None


def content_hash(path: str | Path) -> str:
    """Recompute a plan file's content hash, streaming it by record batch (bounded memory).

    A file whose rows are not in (chip_id, s1_item) order (edited by another tool) is read
    whole and sorted first.
    """
    hasher, order = PlanHasher(), _Order()
    for batch in iter_plan_batches(path):
        table = pa.Table.from_batches([batch])
        if not order.ok(table):
            _, fs, inner = _open(path)
            return plan_hash(pq.read_table(inner, filesystem=fs))
        hasher.update(table)
    return hasher.hexdigest()


def verify_plan(path: str | Path) -> str:
    """The stored hash of a plan after checking it against the rows (streamed).

    Raises:
        CatalogError: missing, not a plan, or its content no longer matches its hash.
    """
    uri = str(path)
    stored = stored_hash(uri)
    if not stored:
        raise CatalogError(f"chip plan {uri}: no {HASH_KEY.decode()} metadata; not written by eoforge")
    try:
        actual = content_hash(uri)
    except (TypeError, ValueError) as exc:
        raise CatalogError(f"chip plan {uri}: not a chip plan of this eoforge version ({exc}); rebuild it") from None
    if actual != stored:
        raise CatalogError(
            f"chip plan {uri}: content hash {actual[:12]} != stored {stored[:12]}; edited, or written by an "
            "older eoforge (rebuild it)?"
        )
    return stored


def read_plan(path: str | Path, verify: bool = True) -> tuple[gpd.GeoDataFrame, str]:
    """Read a whole plan (local path or URI) as a GeoDataFrame, and its hash.

    With ``verify`` the rows are hashed first, streamed (:func:`verify_plan`).

    Raises:
        CatalogError: the file is missing, not a plan, or its content no longer matches its hash.
        ServiceError: its bucket does not exist, access was refused, or the store is unreachable.
    """
    uri, fs, inner = _open(path)
    stored = verify_plan(uri) if verify else ""
    try:
        meta = pq.read_schema(inner, filesystem=fs).metadata or {}
        frame = gpd.read_parquet(inner, filesystem=fs)
    except FileNotFoundError:
        raise _not_found(uri) from None
    except OSError as exc:
        raise storage_error(uri, exc, WHAT, "read") from None
    except Exception as exc:
        raise CatalogError(f"chip plan {uri}: not a readable GeoParquet file: {exc}") from None
    stored = stored or metadata_hash(meta)
    if not stored:
        raise CatalogError(f"chip plan {uri}: no {HASH_KEY.decode()} metadata; not written by eoforge")
    return frame, stored


def stored_hash(path: str | Path) -> str:
    """The hash stored in a plan's metadata, without reading the rows ("" if none)."""
    return metadata_hash(_schema_metadata(path))


def metadata_hash(meta: dict[bytes, bytes] | None) -> str:
    """The plan hash in a Parquet file's key-value metadata ("" if none)."""
    return (meta or {}).get(HASH_KEY, b"").decode()


def plan_stats(path: str | Path) -> dict[str, object]:
    """Per-stage counts and skipped items stored in a plan's metadata ({} for older plans)."""
    raw = _schema_metadata(path).get(STATS_KEY)
    return json.loads(raw.decode()) if raw else {}


def check_plan_signing(path: str | Path) -> set[str]:
    """The signing hook names a plan's ``access`` cells give, each checked against the registry.

    Run on the driver before any reading process starts: a plan naming an unregistered hook
    (``os:system``, or a ``module:function`` of older plans) is refused and nothing is imported
    (:mod:`eoforge.signing`). Streams the dictionary-encoded ``access`` column only.

    Raises:
        CatalogError: a row names an unregistered hook (the message lists the registered names), or an
            ``access`` cell is not JSON.
    """
    from eoforge.signing import UnknownSigner, check_signer_name

    uri = str(path)
    cells: set[str] = set()
    for batch in iter_plan_batches(uri, ["access"]):
        col = batch.column(0)
        cells.update(col.dictionary.to_pylist() if pa.types.is_dictionary(col.type) else pc.unique(col).to_pylist())
    names: set[str] = set()
    for cell in cells - {None, ""}:
        try:
            access = json.loads(cell)
        except ValueError:
            raise CatalogError(f"chip plan {uri}: an access cell is not JSON: {cell[:80]!r}") from None
        names |= {str(a.get("signing") or "none") for a in access.values() if isinstance(a, dict)}
    for name in sorted(names):
        try:
            check_signer_name(name)
        except UnknownSigner as exc:
            raise CatalogError(f"chip plan {uri}: {exc}") from None
    return names


def plan_split_counts(path: str | Path) -> dict[str, int]:
    """Chips per split of a plan, reading only its ``split`` column (streamed)."""
    counts: dict[str, int] = {}
    for batch in iter_plan_batches(path, ["split"]):
        for row in pc.value_counts(batch.column(0)).to_pylist():
            counts[str(row["values"])] = counts.get(str(row["values"]), 0) + int(row["counts"])
    return counts


def ensure_plan(plan: str, config: str | None) -> tuple[str, dict[str, int]]:
    """(content hash, chips per split) of a job's plan; built first from the data ``config`` when missing.

    Only the plan's footer and its ``split`` column are read: a driver never holds the plan.

    Raises:
        ConfigError: the plan is missing and no data config is given.
        CatalogError: the file is not an eoforge plan (no content hash in its metadata).
    """
    from eoforge.config import load_config
    from eoforge.errors import ConfigError

    if not plan_exists(plan):
        if config is None:
            raise ConfigError(f"data.plan: {plan} does not exist and data.config is not set")
        log.info("plan %s missing: building it from %s", plan, config)
        build_plan(load_config(config, DataConfig), plan)
    digest = stored_hash(plan)
    if not digest:
        raise CatalogError(f"chip plan {plan}: no eoforge:plan_hash metadata; not written by eoforge")
    return digest, plan_split_counts(plan)


def read_stream_table(path: str | Path, split: str = "all") -> pa.Table:
    """The plan's :data:`STREAM_COLUMNS` for one split (``all``: every row), as Ray Data is fed.

    Raises:
        CatalogError: the file is missing or not a plan.
        ServiceError: its bucket does not exist, access was refused, or the store is unreachable.
    """
    uri, fs, inner = _open(path)
    filters = None if split == "all" else [("split", "=", split)]
    try:
        return pq.read_table(inner, columns=STREAM_COLUMNS, filters=filters, filesystem=fs)
    except FileNotFoundError:
        raise _not_found(uri) from None
    except OSError as exc:
        raise storage_error(uri, exc, WHAT, "read") from None
    except pa.ArrowException as exc:
        raise CatalogError(f"chip plan {uri}: not a readable chip plan: {exc}") from None
