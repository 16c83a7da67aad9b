"""Build the chip plan: one row per chip of every S1/S2 pair, computed once.

Chips are squares of ``size_px`` pixels at ``resolution_m`` laid on the S2 item's own UTM
grid (its 10 m band grid), stepping by ``stride_px``. A chip is kept when it lies fully
inside the S2 raster and inside the S1 footprint. The split of a chip depends only on
its place (CRS + grid origin) and the seed, so the same place is in the same split on
every date (no leakage between train and test through repeated acquisitions).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pystac
import rasterio
from pyproj import Transformer
from rasterio.transform import Affine
from shapely.geometry import Polygon, box, shape
from shapely.ops import transform as shp_transform

from eoforge.catalog.bands import S1_BAND_NAMES, S2_BAND_NAMES, S2_SCL_ASSET
from eoforge.catalog.pairing import Pair, pair_items
from eoforge.catalog.providers import asset_href
from eoforge.catalog.search import SearchQuery, open_backend, search_sensor_items
from eoforge.config import DataConfig, SplitConfig
from eoforge.errors import CatalogError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: CRS, affine transform (GDAL order a,b,c,d,e,f) and shape (rows, cols)."""

    crs: str
    transform: Affine
    shape: tuple[int, int]


def _item_crs(item: pystac.Item, asset: pystac.Asset | None) -> str | None:
    for props in (asset.extra_fields if asset else {}, item.properties):
        if props.get("proj:code"):
            return str(props["proj:code"])
        if props.get("proj:epsg"):
            return f"EPSG:{int(props['proj:epsg'])}"
    return None


def s2_grid(item: pystac.Item, provider: str, resolution_m: float) -> Grid:
    """The S2 item's grid at ``resolution_m`` (from proj metadata of its 10 m B02 asset, else the file)."""
    href = asset_href(item, "B02", provider)
    asset = next((a for a in item.assets.values() if (a.get_absolute_href() or a.href) == href), None)
    crs = _item_crs(item, asset)
    fields = asset.extra_fields if asset else {}
    tr = fields.get("proj:transform") or item.properties.get("proj:transform")
    shp = fields.get("proj:shape") or item.properties.get("proj:shape")
    if crs is None or tr is None or shp is None:
        try:
            with rasterio.open(href) as src:
                crs, affine, shp = src.crs.to_string(), src.transform, (src.height, src.width)
        except rasterio.errors.RasterioIOError as exc:
            raise CatalogError(f"item {item.id}: no proj metadata and {href} unreadable: {exc}") from None
    else:
        affine = Affine(*tr[:6])
    if abs(affine.b) > 0 or abs(affine.d) > 0:
        raise CatalogError(f"item {item.id}: rotated S2 grid is not supported ({affine})")
    scale = resolution_m / abs(affine.a)
    rows, cols = int(shp[0] / scale), int(shp[1] / scale)
    grid_tr = Affine(resolution_m, 0, affine.c, 0, -resolution_m, affine.f)
    return Grid(crs=crs, transform=grid_tr, shape=(rows, cols))


def split_of(crs: str, x0: float, y0: float, seed: int, splits: SplitConfig) -> str:
    """Deterministic split of a place: hash(crs, chip origin, seed) -> train / val / test."""
    digest = hashlib.sha256(f"{crs}:{x0:.3f}:{y0:.3f}:{seed}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < splits.train:
        return "train"
    return "val" if u < splits.train + splits.val else "test"


#: Item properties that hold a whole-scene list of class names (e.g. BigEarthNet's CORINE labels).
ITEM_LABEL_KEYS = ("bigearthnet:labels", "eoforge:labels")


def item_label_list(item: pystac.Item) -> list[str]:
    """The class names an item carries for the whole item (multi-label datasets), else []."""
    for key in ITEM_LABEL_KEYS:
        value = item.properties.get(key)
        if isinstance(value, list):
            return [str(v) for v in value]
    return []


def _to_lonlat(crs: str) -> Transformer:
    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True)


def chip_rows_for_pair(
    pair: Pair, cfg: DataConfig, label_items: list[pystac.Item] | None = None
) -> list[dict[str, object]]:
    """Plan rows (plain dicts) for one S1/S2 pair."""
    provider = cfg.catalog.provider
    grid = s2_grid(pair.s2, provider, cfg.chips.resolution_m)
    size = cfg.chips.size_px
    stride = cfg.chips.stride_px or size
    to_ll = _to_lonlat(grid.crs)
    s1_foot = shape(pair.s1.geometry)
    s2_assets = {b: asset_href(pair.s2, b, provider) for b in S2_BAND_NAMES}
    s1_assets = {b: asset_href(pair.s1, b, provider) for b in S1_BAND_NAMES}
    scl = asset_href(pair.s2, S2_SCL_ASSET, provider, required=False)
    res = cfg.chips.resolution_m
    item_labels = item_label_list(pair.s2)
    rows: list[dict[str, object]] = []
    for r in range(0, grid.shape[0] - size + 1, stride):
        for c in range(0, grid.shape[1] - size + 1, stride):
            x0, y0 = grid.transform * (c, r)
            chip_utm = box(x0, y0 - size * res, x0 + size * res, y0)
            chip_ll: Polygon = shp_transform(to_ll.transform, chip_utm)
            if chip_ll.difference(s1_foot).area > 1e-3 * chip_ll.area:  # not inside S1 (1e-3: edge round-off)
                continue
            label_href = None
            for lab in label_items or []:
                if shape(lab.geometry).contains(chip_ll):
                    label_href = asset_href(lab, "labels", provider, required=False)
                    break
            rows.append(
                {
                    "chip_id": f"{pair.s2.id}:{r}:{c}",
                    "geometry": chip_ll,
                    "crs": grid.crs,
                    "transform": [res, 0.0, x0, 0.0, -res, y0],
                    "size_px": size,
                    "resolution_m": res,
                    "s2_item": pair.s2.id,
                    "s1_item": pair.s1.id,
                    "s2_datetime": pair.s2.datetime.isoformat() if pair.s2.datetime else None,
                    "s1_datetime": pair.s1.datetime.isoformat() if pair.s1.datetime else None,
                    "dt_days": round(pair.dt_days, 6),
                    "cloud_cover": pair.s2.properties.get("eo:cloud_cover"),
                    "s2_assets": json.dumps(s2_assets, sort_keys=True),
                    "s1_assets": json.dumps(s1_assets, sort_keys=True),
                    "scl_href": scl,
                    "label_href": label_href,
                    "item_labels": json.dumps(item_labels),
                    "split": split_of(grid.crs, x0, y0, cfg.seed, cfg.splits),
                }
            )
    return rows


def plan_rows(cfg: DataConfig) -> list[dict[str, object]]:
    """Search, pair and grid: every chip row of a data config, sorted by chip id."""
    s2, s1 = search_sensor_items(cfg.catalog)
    pairs = pair_items(s2, s1, cfg.pairing)
    labels: list[pystac.Item] = []
    if cfg.catalog.label_collection:
        labels = open_backend(cfg.catalog).search(
            SearchQuery(cfg.catalog.label_collection, cfg.catalog.bbox, None, None, None)
        )
    log.info("planning %d pairs (%d S2 items, %d S1 items)", len(pairs), len(s2), len(s1))
    rows: list[dict[str, object]] = []
    for i, pair in enumerate(pairs, 1):
        rows.extend(chip_rows_for_pair(pair, cfg, labels))
        log.info("[%d/%d] %s + %s: %d chips so far", i, len(pairs), pair.s2.id, pair.s1.id, len(rows))
    if not rows:
        raise CatalogError(
            f"catalog {cfg.catalog.url}: no chips planned ({len(s2)} S2 items, {len(s1)} S1 items, "
            f"{len(pairs)} pairs within {cfg.pairing.max_days} days); widen the search or the pairing window"
        )
    return sorted(rows, key=lambda row: str(row["chip_id"]))


def ensure_parent(path: str | Path) -> Path:
    """Create the parent directory of ``path`` and return it as a Path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p
