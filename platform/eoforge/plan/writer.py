"""Chip plans to disk: streamed, row-grouped GeoParquet that carries its content hash.

A plan is written as it is planned: one Arrow table per S2 item from
:func:`eoforge.plan.build.iter_plan_tables` (see :func:`eoforge.plan.build.build_plan`), buffered
into row groups of about :data:`ROW_GROUP_ROWS` rows and streamed through
``pyarrow.parquet.ParquetWriter``, so memory is bounded by one S2 item's chips and one row group,
whatever the number of chips. The file is GeoParquet 1.0 (``geometry`` as WKB, lon/lat, with the
``geo`` metadata geopandas and GDAL read), its rows sorted by (``chip_id``, ``s1_item``). The
content hash (:mod:`eoforge.plan.hashing`) is computed as the rows go by and stored in the file's
metadata under :data:`HASH_KEY`.

A plan is written to local disk or to object storage: a path, a ``file://`` URL,
``s3://bucket/key.parquet``, ``gs://...`` or any URI pyarrow or fsspec opens
(:func:`eoforge.storage.filesystem_of`; S3 endpoint and region from the environment). Locally the
file is written beside its name and renamed; on object storage it is written to a local temporary
file and uploaded once. The bytes, and so the hash, are the same wherever the plan is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import shapely
from pyproj import CRS

from eoforge.config import DataConfig
from eoforge.plan.columns import WHAT
from eoforge.plan.hashing import PlanHasher, _as_table, _Order, sort_plan
from eoforge.plan.schema import PLAN_SCHEMA
from eoforge.plan.stats import PlanStats
from eoforge.storage import check_bucket, filesystem_of, storage_error

HASH_KEY = b"eoforge:plan_hash"
CONFIG_KEY = b"eoforge:data_config"
#: Per-stage counts and skipped items of the planning run (not part of the hash).
STATS_KEY = b"eoforge:plan_stats"
GEO_KEY = b"geo"
#: Rows per Parquet row group (the writer buffers S2 items up to this many rows).
ROW_GROUP_ROWS = 65_536

#: Columns written dictionary-encoded as they come from the planner (the same for every chip of a
#: pair); readers see plain strings (the Arrow schema is not stored in the file).
DICT_COLUMNS = frozenset(
    f.name for f in PLAN_SCHEMA if pa.types.is_string(f.type) and f.name not in ("chip_id", "label_href")
)
WRITE_SCHEMA = pa.schema(
    [pa.field(f.name, pa.dictionary(pa.int32(), pa.string())) if f.name in DICT_COLUMNS else f for f in PLAN_SCHEMA]
)


def _geo_metadata(bbox: list[float] | None) -> bytes:
    """GeoParquet 1.0 ``geo`` metadata of the plan's geometry column (WKB polygons, EPSG:4326)."""
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Polygon"],
        "crs": CRS.from_epsg(4326).to_json_dict(),
    }
    if bbox is not None:
        column["bbox"] = bbox
    return json.dumps(
        {
            "version": "1.0.0",
            "primary_column": "geometry",
            "columns": {"geometry": column},
            "creator": {"library": "eoforge"},
        }
    ).encode()


class _StreamWriter:
    """Row-grouped, hashed, order-checked GeoParquet writer of plan tables into one open sink."""

    def __init__(self, sink: Any) -> None:
        self.writer = pq.ParquetWriter(sink, WRITE_SCHEMA, compression="zstd", store_schema=False)
        self.hasher = PlanHasher()
        self.order = _Order()
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.rows = 0
        self.bbox: list[float] | None = None
        self.busy_s = 0.0  # seconds spent ordering, hashing, encoding and writing

    def write(self, table: pa.Table) -> None:
        t0 = time.perf_counter()
        self._write(table)
        self.busy_s += time.perf_counter() - t0

    def _write(self, table: pa.Table) -> None:
        table = table.select(PLAN_SCHEMA.names)
        if table.schema != WRITE_SCHEMA:
            table = table.cast(WRITE_SCHEMA)
        if not self.order.ok(table):
            raise ValueError("plan tables are not in (chip_id, s1_item) order")
        self.hasher.update(table)
        b = shapely.total_bounds(shapely.from_wkb(table.column("geometry").combine_chunks().to_numpy(False)))
        if np.isfinite(b).all():
            lo = b if self.bbox is None else np.minimum(self.bbox, b)
            hi = b if self.bbox is None else np.maximum(self.bbox, b)
            self.bbox = [float(lo[0]), float(lo[1]), float(hi[2]), float(hi[3])]
        self.buffer.append(table)
        self.buffered += table.num_rows
        self.rows += table.num_rows
        if self.buffered >= ROW_GROUP_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            table = pa.concat_tables(self.buffer)
            self.writer.write_table(table, row_group_size=max(table.num_rows, 1))
            self.buffer, self.buffered = [], 0

    def abort(self) -> None:
        """Close the Parquet writer of a failed write (its sink is dropped), so nothing is left to close later."""
        with contextlib.suppress(Exception):
            self.writer.close()

    def close(self, meta: dict[bytes, bytes]) -> str:
        t0 = time.perf_counter()
        self.flush()
        digest = self.hasher.hexdigest()
        self.writer.add_key_value_metadata({GEO_KEY: _geo_metadata(self.bbox), HASH_KEY: digest.encode(), **meta})
        self.writer.close()
        self.busy_s += time.perf_counter() - t0
        return digest


def _write_tables(
    tables: Iterable[pa.Table], out: str | Path, meta: Any, timings: dict[str, float] | None = None
) -> tuple[str, int]:
    """Stream plan tables (in row order) to ``out``; returns (hash, rows). ``meta()`` gives extra metadata at the end.

    Errors of the iterator (planning) propagate as they are; storage errors name the URI.
    """
    uri = str(out)
    fs, path = filesystem_of(uri, WHAT)
    remote = fs.type_name in ("s3", "gcs")
    try:
        if remote:
            check_bucket(uri, fs, path, WHAT)  # before any planning: fail fast, never create buckets
            fd, tmp = tempfile.mkstemp(prefix="eoforge-plan-", suffix=".parquet")
            os.close(fd)
            sink_fs: pafs.FileSystem = pafs.LocalFileSystem()
        else:
            parent = path.rsplit("/", 1)[0] if "/" in path else ""
            if parent:
                fs.create_dir(parent, recursive=True)
            tmp, sink_fs = path + ".tmp", fs
    except OSError as exc:
        raise storage_error(uri, exc, WHAT, "write") from None
    done = False
    try:
        try:
            sink = sink_fs.open_output_stream(tmp)
        except OSError as exc:
            raise storage_error(uri, exc, WHAT, "write") from None
        with sink:
            writer = _StreamWriter(sink)
            try:
                for table in tables:
                    try:
                        writer.write(table)
                    except OSError as exc:
                        raise storage_error(uri, exc, WHAT, "write") from None
                try:
                    digest = writer.close(meta())
                except OSError as exc:
                    raise storage_error(uri, exc, WHAT, "write") from None
            except BaseException:
                writer.abort()  # else pyarrow closes it at exit, after its sink, with a traceback
                raise
        t_upload = time.perf_counter()
        try:
            if remote:  # one upload of the finished file: the object appears complete or not at all
                pafs.copy_files(tmp, path, source_filesystem=sink_fs, destination_filesystem=fs)
            else:
                fs.move(tmp, path)  # a rename: a crash never leaves a half-written plan under the real name
        except OSError as exc:
            raise storage_error(uri, exc, WHAT, "write") from None
        done = True
        if timings is not None:
            timings["write_s"] = writer.busy_s + (time.perf_counter() - t_upload)
        return digest, writer.rows
    finally:
        if remote or not done:
            try:
                sink_fs.delete_file(tmp)
            except OSError:
                pass


def _meta(data_cfg: DataConfig | None, stats: PlanStats | None) -> dict[bytes, bytes]:
    meta: dict[bytes, bytes] = {}
    if data_cfg is not None:
        meta[CONFIG_KEY] = data_cfg.model_dump_json().encode()
    if stats is not None:
        meta[STATS_KEY] = json.dumps(stats.to_dict(), sort_keys=True).encode()
    return meta


def write_plan(
    rows: list[dict[str, object]] | pa.Table | gpd.GeoDataFrame,
    out: str | Path,
    data_cfg: DataConfig | None = None,
    stats: PlanStats | None = None,
) -> str:
    """Write plan rows held in memory as GeoParquet (geometry in EPSG:4326) to a path or URI; returns the hash.

    ``rows``: plain dicts as :func:`eoforge.plan.build.plan_rows` gives them (geometry a shapely
    polygon), an Arrow table of :data:`~eoforge.plan.schema.PLAN_SCHEMA` or a GeoDataFrame as
    :func:`eoforge.plan.io.read_plan` gives it; in any order (they are sorted by chip id). A large
    plan is streamed instead: :func:`eoforge.plan.build.build_plan`.

    Never leaves a half-written plan under the real name: locally (and on other filesystems
    with directories) the file is written beside it and renamed; on object storage one object
    is uploaded, which becomes visible only once complete. Buckets are never created.

    Raises:
        ConfigError: ``out`` is not a location eoforge can open (see ``filesystem_of``).
        ServiceError: the bucket does not exist, the store refused the write, or is unreachable.
    """
    fs, path = filesystem_of(str(out), WHAT)
    if fs.type_name in ("s3", "gcs"):
        check_bucket(str(out), fs, path, WHAT)  # before converting anything
    table = sort_plan(_as_table(rows))
    slices = (table.slice(i, ROW_GROUP_ROWS) for i in range(0, max(table.num_rows, 1), ROW_GROUP_ROWS))
    return _write_tables(slices, out, lambda: _meta(data_cfg, stats))[0]
