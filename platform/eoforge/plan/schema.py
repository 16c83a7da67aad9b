"""The plan's Arrow schema (one row per chip), its sort order and the rows as plain dicts."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import shapely

#: The plan's columns, in order (one row per chip). String columns that are the same for every
#: chip of a pair are dictionary-encoded while planning and written as plain strings.
PLAN_SCHEMA = pa.schema(
    [
        ("chip_id", pa.string()),
        ("geometry", pa.binary()),  # WKB (little-endian), lon/lat: the chip's footprint
        ("crs", pa.string()),
        ("transform", pa.list_(pa.float64())),  # GDAL order a,b,c,d,e,f of the chip's grid
        ("size_px", pa.int64()),
        ("resolution_m", pa.float64()),
        ("s2_item", pa.string()),
        ("s1_item", pa.string()),
        ("s2_datetime", pa.string()),
        ("s1_datetime", pa.string()),
        ("dt_days", pa.float64()),
        ("cloud_cover", pa.float64()),
        ("s2_assets", pa.string()),
        ("s1_assets", pa.string()),
        ("scl_href", pa.string()),
        ("label_href", pa.string()),
        ("item_labels", pa.string()),
        ("split", pa.string()),
        ("provider", pa.string()),
        ("s2_radiometry", pa.string()),
        ("s1_product", pa.string()),
        ("s1_units", pa.string()),
        ("s1_calibration", pa.string()),
        ("access", pa.string()),
        # multi-season plans (``seasons``); null otherwise
        ("clear_fraction", pa.float64()),
        ("season", pa.string()),
        ("place_id", pa.string()),
    ]
)
#: Sort key of a plan's rows (the content hash is over rows in this order).
SORT_KEYS = [("chip_id", "ascending"), ("s1_item", "ascending")]


def sort_indices(table: pa.Table) -> pa.Array:
    """Indices that sort plan rows by (``chip_id``, ``s1_item``), stable (dictionary columns decoded for the key)."""
    keys = {}
    for name, _ in SORT_KEYS:
        col = table.column(name).combine_chunks()
        keys[name] = col.dictionary_decode() if pa.types.is_dictionary(col.type) else col
    return pc.sort_indices(pa.table(keys), SORT_KEYS)


def table_rows(table: pa.Table) -> list[dict[str, object]]:
    """Plan rows as plain dicts (geometry as a shapely polygon, lon/lat), e.g. for tests and edits."""
    rows = table.cast(PLAN_SCHEMA).to_pylist() if table.schema != PLAN_SCHEMA else table.to_pylist()
    for row in rows:
        row["geometry"] = shapely.from_wkb(row["geometry"])
    return rows
