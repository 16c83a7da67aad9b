"""A chip plan's identity: its content hash, and the row order the hash is taken in.

The hash (``eoforge:plan_hash``, version 2) is SHA-256 over the rows in (``chip_id``,
``s1_item``) order, computed column-wise and streamed (:class:`PlanHasher`): for each column,
three SHA-256 streams over every row in order: validity (one byte per row), lengths (int64 per
row: text/binary length, list length, 0 for fixed-width values) and values (UTF-8 / WKB bytes,
int64, float64, or the float64 items of a list; nulls contribute no bytes); the digest is SHA-256
of ("eoforge-plan-hash-v2", the row count, then per column in name order: its name, kind and the
three stream digests). So it does not depend on Parquet encoding, compression, row groups, batch
sizes, dictionary encoding or integer/string widths; it depends on the geometry's WKB bytes as
written. The writer (:mod:`eoforge.plan.writer`) stores it in the file's metadata; the reader
(:mod:`eoforge.plan.io`) recomputes it when the plan is read (row group by row group; a mismatch
means the file was edited; a file whose rows are not in order is sorted in memory first), and it
is logged to every MLflow run that streams the plan. Plans written before version 2 hashed WKT
rows: rebuild them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from eoforge.plan.schema import PLAN_SCHEMA, sort_indices

#: Rows per record batch when a plan is streamed back (hash verification); also the slice of a
#: column the hasher holds at a time.
READ_BATCH_ROWS = 16_384
HASH_VERSION = b"eoforge-plan-hash-v2"


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
