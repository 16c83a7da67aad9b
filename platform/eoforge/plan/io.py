"""Chip plans on disk: GeoParquet with a content hash as identity.

The hash is SHA-256 over the plan's rows (every column, geometry as WKT rounded to
1e-9 degrees, rows sorted by ``chip_id``), so it does not depend on parquet encoding or
row order. It is stored in the file's metadata (``eoforge:plan_hash``), recomputed when
the plan is read (a mismatch means the file was edited) and logged to every MLflow run
that streams the plan.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import geopandas as gpd
import pyarrow.parquet as pq
import shapely

from eoforge.config import DataConfig
from eoforge.errors import CatalogError
from eoforge.plan.build import PlanStats, ensure_parent, plan_rows_with_stats

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


def write_plan(
    rows: list[dict[str, object]],
    out: str | Path,
    data_cfg: DataConfig | None = None,
    stats: PlanStats | None = None,
) -> str:
    """Write rows as GeoParquet (geometry in EPSG:4326); returns the plan hash."""
    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326")
    digest = plan_hash(frame)
    path = ensure_parent(out)
    tmp = path.with_suffix(path.suffix + ".tmp")
    frame.to_parquet(tmp, index=False)
    table = pq.read_table(tmp)
    meta = dict(table.schema.metadata or {})
    meta[HASH_KEY] = digest.encode()
    if data_cfg is not None:
        meta[CONFIG_KEY] = data_cfg.model_dump_json().encode()
    if stats is not None:
        meta[STATS_KEY] = json.dumps(stats.to_dict(), sort_keys=True).encode()
    pq.write_table(table.replace_schema_metadata(meta), tmp)
    tmp.replace(path)  # atomic: a crash never leaves a half-written plan under the real name
    return digest


def build_plan(cfg: DataConfig, out: str | Path) -> tuple[str, int]:
    """Search, pair, grid and write the plan; returns (hash, number of chips)."""
    rows, stats = plan_rows_with_stats(cfg)
    digest = write_plan(rows, out, cfg, stats)
    log.info("plan %s: %d chips, hash %s; stages %s", out, len(rows), digest[:12], stats.summary())
    return digest, len(rows)


def read_plan(path: str | Path, verify: bool = True) -> tuple[gpd.GeoDataFrame, str]:
    """Read a plan and its hash.

    Raises:
        CatalogError: the file is missing, not a plan, or its content no longer matches its hash.
    """
    p = Path(path)
    if not p.is_file():
        raise CatalogError(f"chip plan {p}: not found (build it with `eoforge plan`)")
    try:
        frame = gpd.read_parquet(p)
        meta = pq.read_schema(p).metadata or {}
    except Exception as exc:
        raise CatalogError(f"chip plan {p}: not a readable GeoParquet file: {exc}") from None
    stored = meta.get(HASH_KEY, b"").decode()
    if not stored:
        raise CatalogError(f"chip plan {p}: no {HASH_KEY.decode()} metadata; not written by eoforge")
    if verify:
        actual = plan_hash(frame)
        if actual != stored:
            raise CatalogError(f"chip plan {p}: content hash {actual[:12]} != stored {stored[:12]}; edited?")
    return frame, stored


def stored_hash(path: str | Path) -> str:
    """The hash stored in a plan's metadata, without reading the rows."""
    meta = pq.read_schema(path).metadata or {}
    return meta.get(HASH_KEY, b"").decode()


def plan_stats(path: str | Path) -> dict[str, object]:
    """Per-stage counts and skipped items stored in a plan's metadata ({} for older plans)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(STATS_KEY)
    return json.loads(raw.decode()) if raw else {}
