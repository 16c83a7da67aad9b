"""Chip plans on disk: GeoParquet with a content hash as identity.

The hash is SHA-256 over the plan's rows (every column, geometry as WKT rounded to
1e-9 degrees, rows sorted by ``chip_id``), so it does not depend on parquet encoding or
row order. It is stored in the file's metadata (``eoforge:plan_hash``), recomputed when
the plan is read (a mismatch means the file was edited) and logged to every MLflow run
that streams the plan.

A plan lives on local disk or in object storage: every function here takes a path, a
``file://`` URL, ``s3://bucket/key.parquet``, ``gs://...`` or any URI pyarrow or fsspec opens
(:func:`eoforge.train.storage.filesystem_of`; S3 endpoint and region from the environment).
The bytes, and so the hash, are the same wherever the plan is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import geopandas as gpd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import shapely

from eoforge.config import DataConfig
from eoforge.errors import CatalogError
from eoforge.plan.build import PlanStats, plan_rows_with_stats
from eoforge.train.storage import check_bucket, file_exists, filesystem_of, storage_error

log = logging.getLogger(__name__)

HASH_KEY = b"eoforge:plan_hash"
CONFIG_KEY = b"eoforge:data_config"
#: Per-stage counts and skipped items of the planning run (not part of the hash).
STATS_KEY = b"eoforge:plan_stats"

#: Columns a Ray Data read of the plan needs (geometry is for people and GIS tools).
STREAM_COLUMNS = [
    "chip_id",
    "crs",
    "transform",
    "size_px",
    "s2_item",
    "s1_item",
    "s2_assets",
    "s1_assets",
    "scl_href",
    "label_href",
    "item_labels",
    "split",
    "s2_radiometry",
    "s1_product",
    "s1_units",
    "s1_calibration",
    "access",
]


def plan_hash(frame: gpd.GeoDataFrame) -> str:
    """Content hash of a plan (see module docstring)."""
    h = hashlib.sha256()
    cols = sorted(c for c in frame.columns if c != "geometry")
    ordered = frame.sort_values("chip_id")
    wkt = shapely.to_wkt(ordered.geometry.values, rounding_precision=9)
    for (_, row), geom in zip(ordered[cols].iterrows(), wkt, strict=True):
        record = {
            c: (list(row[c]) if hasattr(row[c], "__len__") and not isinstance(row[c], str) else row[c]) for c in cols
        }
        h.update(json.dumps(record, sort_keys=True, default=str).encode())
        h.update(geom.encode())
    return h.hexdigest()


WHAT = "chip plan"


def _plan_table(frame: gpd.GeoDataFrame, meta_extra: dict[bytes, bytes]) -> pa.Table:
    """The plan as the Arrow table that is written: GeoParquet columns and metadata, plus ours."""
    buf = pa.BufferOutputStream()
    frame.to_parquet(buf, index=False)
    table = pq.read_table(pa.BufferReader(buf.getvalue()))
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **meta_extra})


def write_plan(
    rows: list[dict[str, object]],
    out: str | Path,
    data_cfg: DataConfig | None = None,
    stats: PlanStats | None = None,
) -> str:
    """Write rows as GeoParquet (geometry in EPSG:4326) to a local path or a URI; returns the plan hash.

    Never leaves a half-written plan under the real name: locally (and on other filesystems
    with directories) the file is written beside it and renamed; on object storage one object
    is uploaded, which becomes visible only once complete. Buckets are never created.

    Raises:
        ConfigError: ``out`` is not a location eoforge can open (see ``filesystem_of``).
        ServiceError: the bucket does not exist, the store refused the write, or is unreachable.
    """
    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326")
    digest = plan_hash(frame)
    meta = {HASH_KEY: digest.encode()}
    if data_cfg is not None:
        meta[CONFIG_KEY] = data_cfg.model_dump_json().encode()
    if stats is not None:
        meta[STATS_KEY] = json.dumps(stats.to_dict(), sort_keys=True).encode()
    table = _plan_table(frame, meta)
    uri = str(out)
    fs, path = filesystem_of(uri, WHAT)
    try:
        if fs.type_name in ("s3", "gcs"):
            check_bucket(uri, fs, path, WHAT)
            pq.write_table(table, path, filesystem=fs)
        else:
            parent = path.rsplit("/", 1)[0] if "/" in path else ""
            if parent:
                fs.create_dir(parent, recursive=True)
            tmp = path + ".tmp"
            pq.write_table(table, tmp, filesystem=fs)
            fs.move(tmp, path)  # a rename: a crash never leaves a half-written plan under the real name
    except OSError as exc:
        raise storage_error(uri, exc, WHAT, "write") from None
    return digest


def build_plan(cfg: DataConfig, out: str | Path) -> tuple[str, int]:
    """Search, pair, grid and write the plan (local path or URI); returns (hash, number of chips)."""
    rows, stats = plan_rows_with_stats(cfg)
    digest = write_plan(rows, out, cfg, stats)
    log.info("plan %s: %d chips, hash %s; stages %s", out, len(rows), digest[:12], stats.summary())
    return digest, len(rows)


def plan_exists(path: str | Path) -> bool:
    """Whether the plan file exists (local path or URI).

    Raises:
        ConfigError: ``path`` is a directory or not a location eoforge can open.
        ServiceError: its bucket does not exist, access was refused, or the store is unreachable.
    """
    return file_exists(path, WHAT)


def _not_found(uri: str) -> CatalogError:
    return CatalogError(f"chip plan {uri}: not found (build it with `eoforge plan`)")


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


def read_plan(path: str | Path, verify: bool = True) -> tuple[gpd.GeoDataFrame, str]:
    """Read a plan (local path or URI) and its hash.

    Raises:
        CatalogError: the file is missing, not a plan, or its content no longer matches its hash.
        ServiceError: its bucket does not exist, access was refused, or the store is unreachable.
    """
    uri, fs, inner = _open(path)
    try:
        meta = pq.read_schema(inner, filesystem=fs).metadata or {}
        frame = gpd.read_parquet(inner, filesystem=fs)
    except FileNotFoundError:
        raise _not_found(uri) from None
    except OSError as exc:
        raise storage_error(uri, exc, WHAT, "read") from None
    except Exception as exc:
        raise CatalogError(f"chip plan {uri}: not a readable GeoParquet file: {exc}") from None
    stored = meta.get(HASH_KEY, b"").decode()
    if not stored:
        raise CatalogError(f"chip plan {uri}: no {HASH_KEY.decode()} metadata; not written by eoforge")
    if verify:
        actual = plan_hash(frame)
        if actual != stored:
            raise CatalogError(f"chip plan {uri}: content hash {actual[:12]} != stored {stored[:12]}; edited?")
    return frame, stored


def stored_hash(path: str | Path) -> str:
    """The hash stored in a plan's metadata, without reading the rows ("" if none)."""
    return _schema_metadata(path).get(HASH_KEY, b"").decode()


def plan_stats(path: str | Path) -> dict[str, object]:
    """Per-stage counts and skipped items stored in a plan's metadata ({} for older plans)."""
    raw = _schema_metadata(path).get(STATS_KEY)
    return json.loads(raw.decode()) if raw else {}


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
