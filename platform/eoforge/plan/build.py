"""Build the chip plan: one row per chip of every S1/S2 pair, computed once.

Stages, each counted (``PlanStats``, stored in the plan's metadata and logged):

1. search S2 (with the cloud filter) and S1 items;
2. resolve every item through the provider profile: S2 band assets, grid and radiometry; S1
   ``sar:polarizations`` (VV and VH needed), assets, product and units. An item that cannot
   serve is skipped with its reason, never fatal;
3. pair S1 with S2 (footprint overlap, acquisition window);
4. lay the chip grid: squares of ``size_px`` pixels at ``resolution_m`` on the S2 item's own
   UTM grid (its 10 m band grid), stepping by ``stride_px``, clipped to ``catalog.bbox`` /
   ``catalog.aoi`` (chips that intersect the area), kept when inside the S1 footprint.

Labels (``catalog.label_collection``): the label items' footprints are indexed once per plan
(:class:`LabelIndex`, an STRtree), and each chip is linked to a label item whose footprint
contains it (see :meth:`LabelIndex.find` for which one when several do).

When no chip is left, the error names the stage and filter that removed them. The split of a
chip depends only on its place (CRS + grid origin) and the seed, so the same place is in the
same split on every date (no leakage between train and test through repeated acquisitions);
or, with ``splits.by_property``, on a property of its S2 item (chips whose value is not mapped
are left out and counted in ``PlanStats.skipped_chips``). Hrefs are stored as published
(unsigned); the reader signs them at read time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pystac
import rasterio
from pyproj import Transformer
from rasterio.transform import Affine
from shapely import STRtree
from shapely.geometry import Polygon, box, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import transform as shp_transform
from shapely.prepared import prep

from eoforge.catalog.bands import S1_BAND_NAMES, S2_BAND_NAMES, S2_SCL_ASSET
from eoforge.catalog.pairing import Pair, pair_items
from eoforge.catalog.providers import ProviderProfile, asset_href, find_asset, href_of, resolve_profile
from eoforge.catalog.radiometry import item_polarizations, s1_product, s1_units, s2_dn_map
from eoforge.catalog.search import SearchQuery, open_backend, search_bbox, search_sensor_items
from eoforge.config import DataConfig, SplitConfig
from eoforge.errors import CatalogError, ChipReadError

# --- seasons hook (issue 9, multi-season sampling): see eoforge.plan.seasons ---
from eoforge.plan.seasons import null_season_columns, seasonal_rows, select_seasonal

# --- end seasons hook ---

log = logging.getLogger(__name__)


@dataclass
class PlanStats:
    """What each planning stage kept, and which items were skipped and why."""

    stages: dict[str, int] = field(default_factory=dict)
    pairing: dict[str, Any] = field(default_factory=dict)
    skipped_items: list[dict[str, str]] = field(default_factory=list)
    #: Chips left out of the plan after the S1 test, per reason (e.g. no split for their item's property).
    skipped_chips: dict[str, int] = field(default_factory=dict)

    def skip_chips(self, reason: str, n: int) -> None:
        """Record ``n`` chips left out for ``reason``."""
        if n:
            self.skipped_chips[reason] = self.skipped_chips.get(reason, 0) + n

    def skip(self, item: pystac.Item, reason: str) -> None:
        """Record a skipped item."""
        self.skipped_items.append({"item": item.id, "collection": item.collection_id or "", "reason": reason})
        log.warning("skipping item %s (%s): %s", item.id, item.collection_id, reason)

    def skipped_by_reason(self) -> dict[str, int]:
        """Counts of skipped items per reason kind (text before the first colon)."""
        return dict(Counter(s["reason"].split(":")[0] for s in self.skipped_items))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (plan metadata, MLflow)."""
        return {
            "stages": self.stages,
            "pairing": self.pairing,
            "skipped_items": self.skipped_items,
            "skipped_by_reason": self.skipped_by_reason(),
            "skipped_chips": dict(sorted(self.skipped_chips.items())),
        }

    def summary(self) -> str:
        """One line of stage counts."""
        return ", ".join(f"{k}={v}" for k, v in self.stages.items())


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


def s2_grid(item: pystac.Item, provider: str | ProviderProfile, resolution_m: float) -> Grid:
    """The S2 item's grid at ``resolution_m`` (from proj metadata of its 10 m B02 asset, else the file)."""
    profile = provider if isinstance(provider, ProviderProfile) else resolve_profile(provider)
    href = asset_href(item, "B02", profile)
    found = find_asset(item, "B02", profile)
    asset = found[1] if found else None
    crs = _item_crs(item, asset)
    fields = asset.extra_fields if asset else {}
    tr = fields.get("proj:transform") or item.properties.get("proj:transform")
    shp = fields.get("proj:shape") or item.properties.get("proj:shape")
    if crs is None or tr is None or shp is None:
        try:
            with rasterio.open(href) as src:
                crs, affine, shp = src.crs.to_string(), src.transform, (src.height, src.width)
        except (rasterio.errors.RasterioIOError, AttributeError) as exc:
            raise CatalogError(f"item {item.id}: no proj metadata and {href} unreadable: {exc}") from None
    else:
        affine = Affine(*tr[:6])
    if abs(affine.b) > 0 or abs(affine.d) > 0:
        raise CatalogError(f"item {item.id}: rotated S2 grid is not supported ({affine})")
    scale = resolution_m / abs(affine.a)
    rows, cols = int(shp[0] / scale), int(shp[1] / scale)
    grid_tr = Affine(resolution_m, 0, affine.c, 0, -resolution_m, affine.f)
    return Grid(crs=crs, transform=grid_tr, shape=(rows, cols))


def _place_u(crs: str, x0: float, y0: float, seed: int) -> float:
    """A number in [0, 1) that depends only on the place (CRS, chip origin) and the seed."""
    digest = hashlib.sha256(f"{crs}:{x0:.3f}:{y0:.3f}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(crs: str, x0: float, y0: float, seed: int, splits: SplitConfig) -> str:
    """Deterministic split of a place: hash(crs, chip origin, seed) -> train / val / test."""
    u = _place_u(crs, x0, y0, seed)
    if u < splits.train:
        return "train"
    return "val" if u < splits.train + splits.val else "test"


def item_split(item: pystac.Item, splits: SplitConfig) -> tuple[str | None, str | None]:
    """(split, None) an item's property gives with ``splits.by_property``, or (None, why not).

    The split is before the val carve-out (:func:`chip_split`). Without ``by_property``: (None, None).
    """
    by = splits.by_property
    if by is None:
        return None, None
    if by.name not in item.properties:
        return None, f"split: S2 item has no property {by.name!r} (splits.by_property.name)"
    value = str(item.properties[by.name])
    if value in by.map:
        return by.map[value], None
    if by.unmapped is not None:
        return by.unmapped, None
    return None, f"split: {by.name}={value!r} is not in splits.by_property.map"


def chip_split(item_split_name: str | None, crs: str, x0: float, y0: float, seed: int, splits: SplitConfig) -> str:
    """The split of a chip: by place, or the item's split with val carved out of train by place."""
    by = splits.by_property
    if by is None or item_split_name is None:
        return split_of(crs, x0, y0, seed, splits)
    if item_split_name == "train" and by.val_fraction > 0 and _place_u(crs, x0, y0, seed) < by.val_fraction:
        return "val"
    return item_split_name


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


@dataclass(frozen=True)
class S2Source:
    """What the plan needs of one S2 item: band hrefs, SCL, radiometry and its grid."""

    assets: dict[str, str]
    scl: str | None
    radiometry: dict[str, list[float]]
    grid: Grid


@dataclass(frozen=True)
class S1Source:
    """What the plan needs of one S1 item: band hrefs, product, units, calibration annotations."""

    assets: dict[str, str]
    product: str
    units: str
    calibration: dict[str, str]


def prepare_s2(item: pystac.Item, profile: ProviderProfile, resolution_m: float) -> S2Source:
    """Resolve an S2 item through the profile.

    Raises:
        CatalogError: a band is missing or the grid cannot be known (the item is skipped).
    """
    assets: dict[str, str] = {}
    radiometry: dict[str, list[float]] = {}
    missing = []
    for band in S2_BAND_NAMES:
        found = find_asset(item, band, profile)
        if found is None:
            missing.append(band)
            continue
        assets[band] = href_of(found[1])
        gain, offset, _ = s2_dn_map(item, found[1])
        radiometry[band] = [gain, offset]
    if missing:
        raise CatalogError(
            f"missing band: no asset for {missing} (profile {profile.name!r} tried e.g. "
            f"{profile.keys_for(missing[0])}); assets are {sorted(item.assets)}"
        )
    scl = find_asset(item, S2_SCL_ASSET, profile)
    try:
        grid = s2_grid(item, profile, resolution_m)
    except CatalogError as exc:
        raise CatalogError(f"grid: {exc}") from None
    return S2Source(assets, href_of(scl[1]) if scl else None, radiometry, grid)


def prepare_s1(item: pystac.Item, profile: ProviderProfile, units_override: str | None = None) -> S1Source:
    """Resolve an S1 item through the profile.

    Raises:
        CatalogError: the item lacks VV or VH (``sar:polarizations`` or assets): it is skipped.
    """
    pols = item_polarizations(item)
    if pols is not None and not {"VV", "VH"} <= set(pols):
        raise CatalogError(f"polarisation: sar:polarizations {pols} lacks {sorted({'VV', 'VH'} - set(pols))}")
    assets: dict[str, str] = {}
    units: set[str] = set()
    calibration: dict[str, str] = {}
    for band in S1_BAND_NAMES:
        found = find_asset(item, band, profile)
        if found is None:
            raise CatalogError(
                f"polarisation: no asset for {band!r} (tried {profile.keys_for(band)}); has {sorted(item.assets)}"
            )
        assets[band] = href_of(found[1])
        units.add(s1_units(item, found[1], profile, units_override))
        for key in profile.s1_calibration_keys.get(band, ()):
            if key in item.assets:
                calibration[band] = href_of(item.assets[key])
                break
    if len(units) != 1:
        raise CatalogError(f"units: VV and VH assets disagree on units {sorted(units)}")
    unit = units.pop()
    return S1Source(assets, s1_product(item, profile), unit, calibration if unit == "amplitude" else {})


def area_of_interest(cfg: DataConfig) -> BaseGeometry | None:
    """``catalog.aoi`` intersected with ``catalog.bbox`` (lon/lat), or whichever is set, or None."""
    area: BaseGeometry | None = shape(cfg.catalog.aoi) if cfg.catalog.aoi else None
    if cfg.catalog.bbox is not None:
        bb = box(*cfg.catalog.bbox)
        area = bb if area is None else area.intersection(bb)
    return area


def _densified_to(crs: str, geom: BaseGeometry) -> BaseGeometry:
    """A lon/lat geometry in ``crs``, its edges densified (0.01 degree) so they stay true."""
    to = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return shp_transform(to.transform, geom.segmentize(0.01))


def _link_stem(href: str) -> str:
    """The file name without extension of an href (``.../ID/ID.json`` -> ``ID``)."""
    return PurePosixPath(urlparse(href).path).stem


class LabelIndex:
    """The label items of a plan, their footprints indexed once (STRtree, lon/lat).

    :meth:`find` looks up a chip's label in O(log n) instead of testing every label item.
    Containment is the exact lon/lat test ``footprint.contains(chip)`` as before the index.
    """

    #: Centroid distances closer than this (metres) are a tie (patches on a regular overlapping grid).
    TIE_M = 0.01

    def __init__(self, items: list[pystac.Item], profile: ProviderProfile) -> None:
        self.items = [it for it in items if it.geometry is not None]
        self.footprints = [shape(it.geometry) for it in self.items]
        self.hrefs = [asset_href(it, "labels", profile, required=False) for it in self.items]
        self.sources: list[set[str]] = []
        for it in self.items:
            names: set[str] = set()
            for link in it.links:
                if link.rel == "source":
                    if link.title:
                        names.add(str(link.title))
                    target = link.target
                    names.add(target.id if isinstance(target, pystac.Item) else _link_stem(str(target)))
            self.sources.append(names)
        self.tree = STRtree(self.footprints)
        self._centroids: dict[tuple[str, int], tuple[float, float]] = {}
        self._to_crs: dict[str, Transformer] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _centroid_in(self, crs: str, i: int) -> tuple[float, float]:
        key = (crs, i)
        if key not in self._centroids:
            if crs not in self._to_crs:
                self._to_crs[crs] = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
            c = self.footprints[i].centroid
            self._centroids[key] = self._to_crs[crs].transform(c.x, c.y)
        return self._centroids[key]

    #: Share of a chip's area that may lie outside a label footprint: a 4-corner lon/lat footprint
    #: cuts up to ~10 cm inside the true UTM edge, which would drop every edge chip (as for S1).
    EDGE_TOLERANCE = 1e-3

    def _covers(self, i: int, chip_ll: BaseGeometry) -> bool:
        foot = self.footprints[i]
        return foot.contains(chip_ll) or chip_ll.difference(foot).area <= self.EDGE_TOLERANCE * chip_ll.area

    def find(self, chip_ll: BaseGeometry, crs: str, centre: tuple[float, float], s2_id: str) -> str | None:
        """The ``labels`` href of the label item for a chip, or None when no footprint contains it.

        Args:
            chip_ll: the chip's footprint, lon/lat.
            crs: the chip's CRS.
            centre: the chip's centre (x, y) in ``crs``.
            s2_id: the id of the chip's S2 item.

        Among the label items whose footprint contains the chip, the first of: the one with a
        ``source`` link (STAC label extension) to the chip's S2 item (its own patch); else the
        one whose footprint centroid is nearest the chip centre (the patch the chip was cut from
        when patches overlap); else, on a tie (within 1 cm), the smallest item id.
        """
        hits = [int(i) for i in self.tree.query(chip_ll) if self._covers(int(i), chip_ll)]
        if len(hits) > 1:
            own = [i for i in hits if s2_id in self.sources[i]]
            hits = own or hits
        if len(hits) > 1:
            dist = {}
            for i in hits:
                cx, cy = self._centroid_in(crs, i)
                dist[i] = math.hypot(cx - centre[0], cy - centre[1])
            best = min(dist.values())
            hits = [i for i in hits if dist[i] <= best + self.TIE_M]
        if not hits:
            return None
        return self.hrefs[min(hits, key=lambda i: self.items[i].id)]


def chip_rows_for_pair(
    pair: Pair,
    cfg: DataConfig,
    label_items: LabelIndex | list[pystac.Item] | None = None,
    profile: ProviderProfile | None = None,
    sources: tuple[S2Source, S1Source] | None = None,
    stats: PlanStats | None = None,
) -> list[dict[str, object]]:
    """Plan rows (plain dicts) for one S1/S2 pair.

    ``label_items``: a :class:`LabelIndex` built once per plan (a list is indexed here, per call).
    With ``cfg.splits.by_property``, chips of an S2 item whose property maps to no split are left
    out and counted in ``stats.skipped_chips``.
    """
    profile = profile or resolve_profile(cfg.catalog.provider, _declared(cfg))
    labels = LabelIndex(label_items, profile) if isinstance(label_items, list) else label_items
    item_split_name, no_split = item_split(pair.s2, cfg.splits)
    res = cfg.chips.resolution_m
    s2_src, s1_src = sources or (prepare_s2(pair.s2, profile, res), prepare_s1(pair.s1, profile, cfg.catalog.s1_units))
    grid = s2_src.grid
    size = cfg.chips.size_px
    stride = cfg.chips.stride_px or size
    to_ll = _to_lonlat(grid.crs)
    s1_foot = shape(pair.s1.geometry)
    s1_utm = _densified_to(grid.crs, s1_foot)
    margin = 5 * res
    surely_in, maybe_in = prep(s1_utm.buffer(-margin)), prep(s1_utm.buffer(margin))
    item_labels = item_label_list(pair.s2)
    access = json.dumps(
        {
            "s2": {"signing": _signing(cfg, profile), "env": profile.env_for(pair.s2.collection_id)},
            "s1": {"signing": _signing(cfg, profile), "env": profile.env_for(pair.s1.collection_id)},
        },
        sort_keys=True,
    )
    # the grid's chip origins, clipped to the area of interest
    n_rows = max(0, (grid.shape[0] - size) // stride + 1)
    n_cols = max(0, (grid.shape[1] - size) // stride + 1)
    r_lo, r_hi, c_lo, c_hi = 0, n_rows, 0, n_cols
    area = area_of_interest(cfg)
    area_utm = None
    if area is not None:
        area_utm = _densified_to(grid.crs, area)
        x_min, y_min, x_max, y_max = area_utm.bounds
        x0, y0, step = grid.transform.c, grid.transform.f, stride * res
        c_lo = max(0, math.floor((x_min - x0 - size * res) / step))
        c_hi = min(n_cols, math.ceil((x_max - x0) / step) + 1)
        r_lo = max(0, math.floor((y0 - y_max - size * res) / step))
        r_hi = min(n_rows, math.ceil((y0 - y_min) / step) + 1)
        area_utm = prep(area_utm)
    in_area = in_s1 = 0
    rows: list[dict[str, object]] = []
    for ri in range(r_lo, r_hi):
        for ci in range(c_lo, c_hi):
            r, c = ri * stride, ci * stride
            x0, y0 = grid.transform * (c, r)
            chip_utm = box(x0, y0 - size * res, x0 + size * res, y0)
            if area_utm is not None and not area_utm.intersects(chip_utm):
                continue
            in_area += 1
            if not maybe_in.intersects(chip_utm):
                continue
            chip_ll: Polygon = shp_transform(to_ll.transform, chip_utm)
            if not surely_in.contains(chip_utm) and chip_ll.difference(s1_foot).area > 1e-3 * chip_ll.area:
                continue  # not inside S1 (1e-3: edge round-off)
            in_s1 += 1
            if no_split is not None:
                continue
            label_href = None
            if labels:
                centre = (x0 + size * res / 2, y0 - size * res / 2)
                label_href = labels.find(chip_ll, grid.crs, centre, pair.s2.id)
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
                    "s2_assets": json.dumps(s2_src.assets, sort_keys=True),
                    "s1_assets": json.dumps(s1_src.assets, sort_keys=True),
                    "scl_href": s2_src.scl,
                    "label_href": label_href,
                    "item_labels": json.dumps(item_labels),
                    "split": chip_split(item_split_name, grid.crs, x0, y0, cfg.seed, cfg.splits),
                    "provider": profile.name,
                    "s2_radiometry": json.dumps(s2_src.radiometry, sort_keys=True),
                    "s1_product": s1_src.product,
                    "s1_units": s1_src.units,
                    "s1_calibration": json.dumps(s1_src.calibration, sort_keys=True),
                    "access": access,
                }
            )
    if stats is not None:
        for key, n in (("chips_on_grid", n_rows * n_cols), ("chips_in_aoi", in_area), ("chips_in_s1", in_s1)):
            stats.stages[key] = stats.stages.get(key, 0) + n
        if cfg.splits.by_property is not None:
            stats.stages["chips_in_split"] = stats.stages.get("chips_in_split", 0) + len(rows)
            if no_split is not None:
                stats.skip_chips(no_split, in_s1)
    # --- seasons hook (issue 9): clear fraction (one SCL read per pair), season, place_id ---
    if cfg.seasons is None:
        return null_season_columns(rows)
    try:
        from eoforge.data.reader import GDAL_ENV, resolve_signer

        env = {**GDAL_ENV, **profile.env_for(pair.s2.collection_id)}
        sign = resolve_signer(_signing(cfg, profile))
        return seasonal_rows(rows, pair.s2, s2_src.scl, grid, cfg.seasons, stats, sign, env)
    except (CatalogError, ChipReadError) as exc:
        if stats is not None:
            stats.skip(pair.s2, f"scl: {exc}")
            stats.skip_chips("clear: SCL unreadable", len(rows))
        return []
    # --- end seasons hook ---


def _declared(cfg: DataConfig) -> dict[str, Any] | None:
    return cfg.catalog.profile.model_dump(exclude_none=True) if cfg.catalog.profile else None


def _signing(cfg: DataConfig, profile: ProviderProfile) -> str:
    return cfg.catalog.signing or profile.signing


def _why_no_items(cfg: DataConfig, backend: Any, collection: str, cloud: bool) -> str:
    """Name the search filter that removed every item of ``collection`` (a few 1-item searches)."""
    c = cfg.catalog
    bbox = search_bbox(c)
    probes: list[tuple[str, SearchQuery]] = []
    if cloud and c.max_cloud_cover < 100:
        probes.append(
            (f"cloud cover (max_cloud_cover={c.max_cloud_cover:g})", SearchQuery(collection, bbox, c.datetime, None, 1))
        )
    if c.datetime:
        probes.append((f"datetime {c.datetime!r}", SearchQuery(collection, bbox, None, None, 1)))
    if bbox:
        probes.append((f"bbox/aoi {list(bbox)}", SearchQuery(collection, None, None, None, 1)))
    for name, query in probes:
        try:
            if backend.search(query):
                return f"the {name} filter removed them"
        except CatalogError:
            break
    return f"collection {collection!r} has no items"


def plan_rows_with_stats(cfg: DataConfig) -> tuple[list[dict[str, object]], PlanStats]:
    """Search, resolve, pair and grid: every chip row of a data config (sorted by chip id) and the stats.

    Raises:
        CatalogError: no chip is left; the message names the stage and the filter.
    """
    stats = PlanStats()
    profile = resolve_profile(cfg.catalog.provider, _declared(cfg))
    backend = open_backend(cfg.catalog)
    s2_all, s1_all = search_sensor_items(cfg.catalog, backend)
    stats.stages.update(s2_found=len(s2_all), s1_found=len(s1_all))
    where = f"catalog {cfg.catalog.url}"

    def fail(msg: str) -> CatalogError:
        stats_line = stats.summary()
        skipped = stats.skipped_by_reason()
        return CatalogError(
            f"{where}: no chips planned: {msg} [{stats_line}" + (f"; skipped items {skipped}]" if skipped else "]")
        )

    if not s2_all:
        raise fail(
            f"no S2 items in {cfg.catalog.s2_collection!r}: "
            + _why_no_items(cfg, backend, cfg.catalog.s2_collection, True)
        )
    if not s1_all:
        raise fail(
            f"no S1 items in {cfg.catalog.s1_collection!r}: "
            + _why_no_items(cfg, backend, cfg.catalog.s1_collection, False)
        )
    res = cfg.chips.resolution_m
    s2_src: dict[str, S2Source] = {}
    s1_src: dict[str, S1Source] = {}
    s2_ok, s1_ok = [], []
    for item in s2_all:
        try:
            s2_src[item.id] = prepare_s2(item, profile, res)
            s2_ok.append(item)
        except CatalogError as exc:
            stats.skip(item, str(exc))
    for item in s1_all:
        try:
            s1_src[item.id] = prepare_s1(item, profile, cfg.catalog.s1_units)
            s1_ok.append(item)
        except CatalogError as exc:
            stats.skip(item, str(exc))
    stats.stages.update(s2_usable=len(s2_ok), s1_usable=len(s1_ok))
    if not s2_ok:
        raise fail(f"all {len(s2_all)} S2 items were skipped (first: {stats.skipped_items[0]['reason']})")
    if not s1_ok:
        first = next(
            (s for s in stats.skipped_items if s["collection"] == (s1_all[0].collection_id or "")),
            stats.skipped_items[-1],
        )
        raise fail(f"all {len(s1_all)} S1 items were skipped (first: {first['reason']})")
    pairs = pair_items(s2_ok, s1_ok, cfg.pairing, stats.pairing)
    stats.stages["pairs"] = len(pairs)
    # --- seasons hook (issue 9): one S2 scene per season per location, among the paired ones ---
    if cfg.seasons is not None and pairs:
        paired_s2 = list({p.s2.id: p.s2 for p in pairs}.values())
        kept = {it.id for it in select_seasonal(paired_s2, cfg.seasons, stats)}
        pairs = [p for p in pairs if p.s2.id in kept]
        stats.stages["pairs_seasonal"] = len(pairs)
        if not pairs:
            sc = cfg.seasons
            raise fail(
                f"seasons: none of the {len(paired_s2)} paired S2 items is in a season"
                + (f" of {sc.year}" if sc.year else "")
                + f" with eo:cloud_cover under seasons.max_cloud_cover={sc.max_cloud_cover:g}"
                + (f" (per season: {sc.season_max_cloud_cover})" if sc.season_max_cloud_cover else "")
            )
    # --- end seasons hook ---
    if not pairs:
        pg = stats.pairing
        if not pg.get("s2_with_intersecting_s1"):
            raise fail("overlap: no S1 footprint intersects any S2 footprint (check the bbox and the collections)")
        if not pg.get("s2_with_s1_in_window"):
            raise fail(
                f"pairing window: footprints intersect, but the closest S1 acquisition is "
                f"{pg.get('closest_dt_days')} days from its S2 (pairing.max_days={cfg.pairing.max_days:g})"
            )
        raise fail(
            f"overlap: within the pairing window the largest S1/S2 overlap is {pg.get('best_overlap_in_window')} "
            f"of the S2 footprint (pairing.min_overlap={cfg.pairing.min_overlap:g})"
        )
    labels: LabelIndex | None = None
    if cfg.catalog.label_collection:
        label_items = backend.search(
            SearchQuery(cfg.catalog.label_collection, search_bbox(cfg.catalog), None, None, None)
        )
        labels = LabelIndex(label_items, profile)
        stats.stages["label_items"] = len(labels)
    log.info("planning %d pairs (%s)", len(pairs), stats.summary())
    rows: list[dict[str, object]] = []
    for i, pair in enumerate(pairs, 1):
        sources = (s2_src[pair.s2.id], s1_src[pair.s1.id])
        rows.extend(chip_rows_for_pair(pair, cfg, labels, profile, sources, stats))
        log.info("[%d/%d] %s + %s: %d chips so far", i, len(pairs), pair.s2.id, pair.s1.id, len(rows))
    log.info("plan stages: %s; skipped items by reason: %s", stats.summary(), stats.skipped_by_reason())
    if stats.skipped_chips:
        log.warning("chips left out of the plan: %s", dict(sorted(stats.skipped_chips.items())))
    if not rows:
        if not stats.stages.get("chips_in_aoi"):
            raise fail(f"bbox/aoi: no chip of the {len(pairs)} pairs' grids intersects the area of interest")
        if not stats.stages.get("chips_in_s1"):
            raise fail(
                f"overlap: none of the {stats.stages['chips_in_aoi']} chips in the area lies inside its S1 footprint"
            )
        # --- seasons hook (issue 9) ---
        clear_skips = {k: v for k, v in sorted(stats.skipped_chips.items()) if k.startswith("clear:")}
        if clear_skips:
            raise fail(f"clear: every chip left was dropped by the SCL clear-fraction test {clear_skips}")
        # --- end seasons hook ---
        by = cfg.splits.by_property
        raise fail(
            f"split: none of the {stats.stages['chips_in_s1']} chips has a split: their S2 items' "
            f"{by.name if by else 'split'} values are not in splits.by_property.map {sorted(by.map) if by else []} "
            f"(skipped chips: {dict(sorted(stats.skipped_chips.items()))})"
        )
    return sorted(rows, key=lambda row: str(row["chip_id"])), stats


def plan_rows(cfg: DataConfig) -> list[dict[str, object]]:
    """Search, pair and grid: every chip row of a data config, sorted by chip id."""
    return plan_rows_with_stats(cfg)[0]


def ensure_parent(path: str | Path) -> Path:
    """Create the parent directory of ``path`` and return it as a Path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p
