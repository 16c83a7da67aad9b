"""Chip plans on disk: GeoParquet with a content hash as identity.

A plan is written as it is planned: one Arrow table per S2 item from
:func:`eoforge.plan.build.iter_plan_tables`, buffered into row groups of about
:data:`ROW_GROUP_ROWS` rows and streamed through ``pyarrow.parquet.ParquetWriter``, so memory
is bounded by one S2 item's chips and one row group, whatever the number of chips. The file is
GeoParquet 1.0 (``geometry`` as WKB, lon/lat, with the ``geo`` metadata geopandas and GDAL read),
its rows sorted by (``chip_id``, ``s1_item``).

The hash (``eoforge:plan_hash``, version 2) is SHA-256 over the rows in that order, computed
column-wise and streamed (:class:`PlanHasher`): for each column, three SHA-256 streams over
every row in order: validity (one byte per row), lengths (int64 per row: text/binary length,
list length, 0 for fixed-width values) and values (UTF-8 / WKB bytes, int64, float64, or the
float64 items of a list; nulls contribute no bytes); the digest is SHA-256 of ("eoforge-plan-
hash-v2", the row count, then per column in name order: its name, kind and the three stream
digests). So it does not depend on Parquet encoding, compression, row groups, batch sizes,
dictionary encoding or integer/string widths; it depends on the geometry's WKB bytes as
written. It is stored in the file's metadata, recomputed when the plan is read (row group by
row group; a mismatch means the file was edited; a file whose rows are not in order is sorted
in memory first) and logged to every MLflow run that streams the plan. Plans written before
version 2 hashed WKT rows: rebuild them.

A plan lives on local disk or in object storage: every function here takes a path, a
``file://`` URL, ``s3://bucket/key.parquet``, ``gs://...`` or any URI pyarrow or fsspec opens
(:func:`eoforge.storage.filesystem_of`; S3 endpoint and region from the environment).
Locally the file is written beside its name and renamed; on object storage it is written to a
local temporary file and uploaded once. The bytes, and so the hash, are the same wherever the
plan is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import shapely
from pyproj import CRS

from eoforge.catalog.pairing import Pair
from eoforge.config import DataConfig
from eoforge.errors import CatalogError
from eoforge.plan.build import PLAN_SCHEMA, OriginFilter, PlanStats, iter_plan_tables, sort_indices
from eoforge.plan.columns import STREAM_COLUMNS, WHAT, not_found
from eoforge.storage import check_bucket, file_exists, filesystem_of, storage_error

log = logging.getLogger(__name__)

HASH_KEY = b"eoforge:plan_hash"
CONFIG_KEY = b"eoforge:data_config"
#: Per-stage counts and skipped items of the planning run (not part of the hash).
STATS_KEY = b"eoforge:plan_stats"
GEO_KEY = b"geo"
#: Rows per Parquet row group (the writer buffers S2 items up to this many rows).
ROW_GROUP_ROWS = 65_536
#: Rows per record batch when a plan is streamed back (hash verification).
READ_BATCH_ROWS = 16_384
HASH_VERSION = b"eoforge-plan-hash-v2"


# --------------------------------------------------------------------------- hash
def _kind(type_: pa.DataType) -> str:
    """The hash kind of an Arrow type (widths and dictionary encoding do not matter)."""
    if pa.types.is_dictionary(type_):
        return _kind(type_.value_type)
    if pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_):
        return "utf8"
    if pa.types.is_binary(type_) or pa.types.is_large_binary(type_) or pa.types.is_binary_view(type_):
        return "binary"
    if pa.types.is_boolean(type_) or pa.types.is_integer(type_):
        return "int64"
    if pa.types.is_floating(type_):
        return "float64"
    if pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_fixed_size_list(type_):
        if _kind(type_.value_type) == "float64":
            return "list<float64>"
    if pa.types.is_null(type_):
        return "null"
    raise TypeError(f"plan column type {type_} has no hash encoding")


def _var_width(arr: pa.Array, large: pa.DataType) -> tuple[np.ndarray, memoryview]:
    """(lengths int64 [N], value bytes) of a text/binary array, nulls as empty values."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    arr = pc.fill_null(arr.cast(large), pa.scalar(b"" if large == pa.large_binary() else "", large))
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64, count=len(arr) + 1, offset=arr.offset * 8)
    data = memoryview(data_buf)[offsets[0] : offsets[-1]] if data_buf is not None else memoryview(b"")
    return np.diff(offsets), data


class PlanHasher:
    """The streamed content hash of a plan (see the module docstring): feed tables in row order.

    Memory is one slice of one column at a time; the digest does not depend on how the rows
    were cut into tables.
    """

    def __init__(self) -> None:
        self.rows = 0
        self._cols: dict[str, tuple[str, list[Any]]] = {}

    def update(self, table: pa.Table | pa.RecordBatch) -> None:
        """Add the next rows (same columns every time)."""
        if not self._cols:
            if self.rows:
                raise ValueError("plan hash: columns appeared after rows were hashed")
            self._cols = {
                f.name: (_kind(f.type), [hashlib.sha256(), hashlib.sha256(), hashlib.sha256()]) for f in table.schema
            }
        if set(table.schema.names) != set(self._cols):
            raise ValueError(f"plan hash: columns {sorted(table.schema.names)} != {sorted(self._cols)}")
        for name, (kind, (h_valid, h_len, h_val)) in self._cols.items():
            col = table.column(name)
            chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
            for chunk in chunks:
                for start in range(0, len(chunk), READ_BATCH_ROWS):
                    arr = chunk.slice(start, READ_BATCH_ROWS)
                    valid = pc.is_valid(arr).to_numpy(zero_copy_only=False).astype(np.uint8)
                    h_valid.update(valid.tobytes())
                    if kind in ("utf8", "binary"):
                        lengths, data = _var_width(arr, pa.large_string() if kind == "utf8" else pa.large_binary())
                        h_len.update(lengths.astype("<i8").tobytes())
                        h_val.update(data)
                    elif kind in ("int64", "float64"):
                        wide = pa.int64() if kind == "int64" else pa.float64()
                        values = pc.fill_null(arr.cast(wide), 0).to_numpy(zero_copy_only=False)
                        h_len.update(np.zeros(len(arr), "<i8").tobytes())
                        h_val.update(values.astype("<i8" if kind == "int64" else "<f8").tobytes())
                    elif kind == "list<float64>":
                        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
                        h_len.update(lengths.astype("<i8").tobytes())
                        values = pc.list_flatten(arr).cast(pa.float64())
                        h_val.update(values.to_numpy(zero_copy_only=False).astype("<f8").tobytes())
                    # "null": validity only
        self.rows += table.num_rows

    def hexdigest(self) -> str:
        """The plan hash of every row fed so far."""
        h = hashlib.sha256(HASH_VERSION)
        h.update(self.rows.to_bytes(8, "little"))
        for name in sorted(self._cols):
            kind, streams = self._cols[name]
            h.update(json.dumps([name, kind]).encode())
            for s in streams:
                h.update(s.digest())
        return h.hexdigest()


class _Order:
    """Checks that tables come in (chip_id, s1_item) order, across table boundaries."""

    def __init__(self) -> None:
        self.last: tuple[str, str] | None = None

    def ok(self, table: pa.Table) -> bool:
        if table.num_rows == 0:
            return True
        chip = table.column("chip_id").combine_chunks()
        s1 = table.column("s1_item").combine_chunks()
        if pa.types.is_dictionary(s1.type):
            s1 = s1.dictionary_decode()
        first = (chip[0].as_py(), s1[0].as_py())
        if self.last is not None and first < self.last:
            return False
        if table.num_rows > 1:
            a, b = chip.slice(0, len(chip) - 1), chip.slice(1)
            sa, sb = s1.slice(0, len(s1) - 1), s1.slice(1)
            ordered = pc.or_(pc.less(a, b), pc.and_(pc.equal(a, b), pc.less_equal(sa, sb)))
            if not pc.all(ordered).as_py():
                return False
        self.last = (chip[-1].as_py(), s1[-1].as_py())
        return True


def sort_plan(table: pa.Table) -> pa.Table:
    """A plan table in the hash's row order: by (``chip_id``, ``s1_item``), stable."""
    return table.take(sort_indices(table))


def hash_tables(tables: Iterable[pa.Table]) -> str:
    """Plan hash of tables given in row order (see the module docstring)."""
    hasher = PlanHasher()
    for t in tables:
        hasher.update(t)
    return hasher.hexdigest()


def plan_hash(frame: gpd.GeoDataFrame | pa.Table) -> str:
    """Content hash of a plan held in memory (a GeoDataFrame as read, or an Arrow table), in any row order."""
    return hash_tables([sort_plan(_as_table(frame))])


def _as_table(frame: gpd.GeoDataFrame | pa.Table | list[dict[str, object]]) -> pa.Table:
    """A plan as an Arrow table of :data:`PLAN_SCHEMA` (geometry as WKB)."""
    if isinstance(frame, pa.Table):
        return frame
    rows = frame.to_dict("records") if isinstance(frame, gpd.GeoDataFrame) else frame
    columns: dict[str, list[Any]] = {name: [] for name in PLAN_SCHEMA.names}
    extra = sorted({k for r in rows for k in r} - set(columns))
    if extra:
        raise ValueError(f"plan rows have columns the plan schema lacks: {extra}")
    for r in rows:
        for name in PLAN_SCHEMA.names:
            columns[name].append(r.get(name))
    geoms = np.array(columns.pop("geometry"), dtype=object)
    wkb = shapely.to_wkb(geoms, byte_order=1)
    arrays = []
    for f in PLAN_SCHEMA:
        if f.name == "geometry":
            arrays.append(pa.array(wkb, pa.binary()))
            continue
        values = columns[f.name]
        if f.name == "transform":
            values = [None if v is None else [float(x) for x in v] for v in values]
        elif pa.types.is_floating(f.type):
            values = [None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v) for v in values]
        elif pa.types.is_string(f.type):  # rows from pandas carry NaN for a missing text
            values = [None if isinstance(v, float) and np.isnan(v) else v for v in values]
        arrays.append(pa.array(values, f.type))
    return pa.Table.from_arrays(arrays, schema=PLAN_SCHEMA)


# --------------------------------------------------------------------------- write
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
            for table in tables:
                try:
                    writer.write(table)
                except OSError as exc:
                    raise storage_error(uri, exc, WHAT, "write") from None
            try:
                digest = writer.close(meta())
            except OSError as exc:
                raise storage_error(uri, exc, WHAT, "write") from None
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
    polygon), an Arrow table of :data:`~eoforge.plan.build.PLAN_SCHEMA` or a GeoDataFrame as
    :func:`read_plan` gives it; in any order (they are sorted by chip id). A large plan is
    streamed instead: :func:`build_plan`.

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


def build_plan(
    cfg: DataConfig,
    out: str | Path,
    timings: dict[str, float] | None = None,
    filters: Sequence[OriginFilter] = (),
    pairs_out: list[Pair] | None = None,
) -> tuple[str, int]:
    """Search, pair, place chips and stream the plan to ``out`` (local path or URI); returns (hash, chips).

    Memory is bounded by one S2 item's chips and one row group, whatever the size of the plan.
    ``timings``, when given, receives ``search_s``, ``chips_s`` (see
    :func:`~eoforge.plan.build.iter_plan_tables`) and ``write_s`` (hash, encode, write, upload).
    ``filters`` and ``pairs_out``: see :func:`~eoforge.plan.build.iter_plan_tables`.

    Raises:
        CatalogError: no chip is left (nothing is written).
        ConfigError, ServiceError: see :func:`write_plan`.
    """
    stats = PlanStats()
    timings = timings if timings is not None else {}
    tables = iter_plan_tables(cfg, stats, filters, timings=timings, pairs_out=pairs_out)
    digest, n = _write_tables(tables, out, lambda: _meta(cfg, stats), timings)
    log.info("plan %s: %d chips, hash %s; stages %s", out, n, digest[:12], stats.summary())
    return digest, n


# --------------------------------------------------------------------------- read
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
