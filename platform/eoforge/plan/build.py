"""Build the chip plan: one row per chip of every S1/S2 pair, computed once.

Stages, each counted (``PlanStats``, stored in the plan's metadata and logged):

1. search S2 (with the cloud filter) and S1 items;
2. resolve every item through the provider profile: S2 band assets, grid and radiometry; S1
   ``sar:polarizations`` (VV and VH needed), assets, product and units. An item that cannot
   serve is skipped with its reason, never fatal;
3. pair S1 with S2 (footprint overlap, acquisition window);
4. place chips: squares of ``size_px`` pixels at ``resolution_m`` on the S2 item's own UTM grid
   (its 10 m band grid), where ``chips.sampling`` puts them (:mod:`eoforge.plan.sampling`: a
   regular grid stepping ``stride_px``, Gaussian draws around points, or uniform draws over
   AOIs), kept when they intersect ``catalog.bbox`` / ``catalog.aoi`` and lie inside the S1
   footprint; then any origin filters (:class:`OriginFilter`) drop chips by a boolean mask.

The chips of a pair are computed as arrays (origins ``[N, 2]`` int64, shapely 2 vectorised
tests, pyproj on arrays) and come out as one Arrow table per S2 item (:func:`iter_plan_tables`),
rows sorted by (``chip_id``, ``s1_item``), S2 items in the order of their chip ids, so the whole
plan streams to disk in chip-id order with memory bounded by one S2 item's chips. Columns that
are the same for every chip of a pair (assets, radiometry, access, ...) are built once per pair
(dictionary-encoded Arrow arrays). Planning never opens a pixel file when the S2 items carry
``proj:`` metadata (``proj:code``/``proj:epsg``, ``proj:transform``, ``proj:shape``).

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
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pystac
import rasterio
import shapely
from pyproj import Transformer
from rasterio.transform import Affine
from shapely import STRtree
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import transform as shp_transform

from eoforge.catalog.bands import S1_BAND_NAMES, S2_BAND_NAMES, S2_SCL_ASSET
from eoforge.catalog.pairing import Pair, pair_items
from eoforge.catalog.providers import ProviderProfile, asset_href, find_asset, href_of, resolve_profile
from eoforge.catalog.radiometry import item_polarizations, s1_product, s1_units, s2_dn_map
from eoforge.catalog.search import SearchQuery, open_backend, search_bbox, search_sensor_items
from eoforge.config import DataConfig, SplitConfig
from eoforge.config.data import CatalogConfig
from eoforge.errors import CatalogError, ChipReadError, ConfigError
from eoforge.plan.sampling import Grid, Sampler, chips_on_grid, sampling_bbox
from eoforge.plan.seasons import CLEAR_TOL, place_id, season_label, select_seasonal

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
        return self._resolve(hits, crs, centre, s2_id)

    def _resolve(self, hits: list[int], crs: str, centre: tuple[float, float], s2_id: str) -> str | None:
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

    def find_many(self, chips_ll: np.ndarray, crs: str, centres: np.ndarray, s2_id: str) -> list[str | None]:
        """:meth:`find` for many chips of one S2 item at once (one bulk STRtree query).

        Args:
            chips_ll: shapely polygons ``[N]``, lon/lat.
            crs: the chips' CRS.
            centres: chip centres ``[N, 2]`` (x, y) in ``crs``.
            s2_id: the id of the chips' S2 item.
        """
        out: list[str | None] = [None] * len(chips_ll)
        if not self.items or len(chips_ll) == 0:
            return out
        qi, ti = self.tree.query(chips_ll)
        if len(qi) == 0:
            return out
        foots = np.asarray(self.tree.geometries)[ti]
        chips = chips_ll[qi]
        ok = shapely.contains(foots, chips)
        edge = ~ok
        if edge.any():
            outside = shapely.area(shapely.difference(chips[edge], foots[edge]))
            ok[edge] = outside <= self.EDGE_TOLERANCE * shapely.area(chips[edge])
        qi, ti = qi[ok], ti[ok]
        order = np.argsort(qi, kind="stable")
        qi, ti = qi[order], ti[order]
        starts = np.flatnonzero(np.r_[True, qi[1:] != qi[:-1]]) if len(qi) else np.zeros(0, dtype=np.int64)
        for k, a in enumerate(starts):
            b = starts[k + 1] if k + 1 < len(starts) else len(qi)
            q = int(qi[a])
            centre = (float(centres[q, 0]), float(centres[q, 1]))
            out[q] = self._resolve([int(i) for i in ti[a:b]], crs, centre, s2_id)
        return out


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


class OriginFilter(Protocol):
    """Drops chips of a pair by a boolean mask before rows are built (e.g. a clear-fraction filter).

    Called with the pair, its resolved S2 item and the origins that passed the area and S1 tests,
    int64 ``[N, 2]`` (row, col) on ``source.grid``; returns a bool mask ``[N]`` (True: keep).
    The planner counts the chips kept in ``PlanStats.stages[filter.stage]``.
    """

    stage: str

    def __call__(self, pair: Pair, source: S2Source, origins: np.ndarray) -> np.ndarray:
        """Bool mask ``[N]`` over ``origins`` (True: keep the chip)."""
        ...


def _const(value: Any, n: int, type_: pa.DataType) -> pa.Array:
    """``n`` copies of one value: dictionary-encoded for strings (no copy of the text per row)."""
    if pa.types.is_string(type_):
        indices = pa.nulls(n, pa.int32()) if value is None else pa.array(np.zeros(n, dtype=np.int32))
        return pa.DictionaryArray.from_arrays(indices, pa.array([value if value is not None else ""], pa.string()))
    if value is None:
        return pa.nulls(n, type_)
    return pa.array(np.full(n, value), type_)


class _AreaCache:
    """The area of interest (lon/lat) and, per CRS, densified, prepared and with its bounds."""

    def __init__(self, area: BaseGeometry | None) -> None:
        self.area = area
        self._in: dict[str, tuple[BaseGeometry, tuple[float, float, float, float]]] = {}

    def in_crs(self, crs: str) -> tuple[BaseGeometry, tuple[float, float, float, float]] | None:
        if self.area is None:
            return None
        if crs not in self._in:
            geom = _densified_to(crs, self.area)
            shapely.prepare(geom)
            self._in[crs] = (geom, geom.bounds)
        return self._in[crs]


@dataclass
class _Planner:
    """What every pair of a plan shares: config, profile, labels, sampler, area of interest, filters."""

    cfg: DataConfig
    profile: ProviderProfile
    labels: LabelIndex | None
    sampler: Sampler
    area: _AreaCache
    filters: Sequence[OriginFilter] = ()


def _planner(
    cfg: DataConfig,
    profile: ProviderProfile,
    labels: LabelIndex | None,
    filters: Sequence[OriginFilter] = (),
) -> _Planner:
    area = area_of_interest(cfg)
    try:
        sampler = Sampler(cfg.chips, cfg.seed, area)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return _Planner(cfg, profile, labels, sampler, _AreaCache(area), filters)


def _add(stats: PlanStats | None, key: str, n: int) -> None:
    if stats is not None:
        stats.stages[key] = stats.stages.get(key, 0) + int(n)


def _pair_table(pair: Pair, planner: _Planner, sources: tuple[S2Source, S1Source], stats: PlanStats | None) -> pa.Table:
    """The chips of one pair as an Arrow table (:data:`PLAN_SCHEMA`, string constants dictionary-encoded).

    Rows are sorted by ``chip_id``. Stage counts go to ``stats``.
    """
    cfg, profile = planner.cfg, planner.profile
    item_split_name, no_split = item_split(pair.s2, cfg.splits)
    res = cfg.chips.resolution_m
    s2_src, s1_src = sources
    grid = s2_src.grid
    size = cfg.chips.size_px
    side = size * res
    s1_foot = shape(pair.s1.geometry)
    s1_utm = _densified_to(grid.crs, s1_foot)
    margin = 5 * res
    surely_in, maybe_in = s1_utm.buffer(-margin), s1_utm.buffer(margin)
    shapely.prepare(surely_in)
    shapely.prepare(maybe_in)
    area = planner.area.in_crs(grid.crs)
    origins = planner.sampler.origins(grid, area[1] if area else None)
    if planner.sampler.kind == "grid":
        n_rows, n_cols = chips_on_grid(grid, size, planner.sampler.stride_px)
        on_grid = n_rows * n_cols
    else:
        on_grid = len(origins)
    # chip boxes on the item's grid: x0 = col * res + c, y0 = row * -res + f (as Affine * (col, row))
    x0 = origins[:, 1] * grid.transform.a + grid.transform.c
    y0 = origins[:, 0] * grid.transform.e + grid.transform.f
    boxes = shapely.box(x0, y0 - side, x0 + side, y0)
    keep = shapely.intersects(area[0], boxes) if area else np.ones(len(origins), dtype=bool)
    in_area = int(keep.sum())
    keep &= shapely.intersects(maybe_in, boxes)
    idx = np.flatnonzero(keep)
    to_ll = _to_lonlat(grid.crs)
    chips_ll = shapely.transform(boxes[idx], lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
    edge = ~shapely.contains(surely_in, boxes[idx])
    if edge.any():  # not surely inside S1: the exact lon/lat test (1e-3: edge round-off)
        outside = shapely.area(shapely.difference(chips_ll[edge], s1_foot))
        inside = np.ones(len(idx), dtype=bool)
        inside[edge] = ~(outside > 1e-3 * shapely.area(chips_ll[edge]))
        idx, chips_ll = idx[inside], chips_ll[inside]
    in_s1 = len(idx)
    for f in planner.filters:
        mask = np.asarray(f(pair, s2_src, origins[idx]), dtype=bool)
        if mask.shape != (len(idx),):
            raise ValueError(f"origin filter {f.stage!r} returned a mask of shape {mask.shape}, expected ({len(idx)},)")
        idx, chips_ll = idx[mask], chips_ll[mask]
        _add(stats, f.stage, len(idx))
    clear = None
    if cfg.seasons is not None:
        idx, chips_ll, clear = _clear_chips(pair, planner, s2_src, origins, idx, chips_ll, stats)
    if no_split is not None:
        idx, chips_ll = idx[:0], chips_ll[:0]
        clear = None if clear is None else clear[:0]
    n = len(idx)
    if stats is not None:
        _add(stats, "chips_on_grid", on_grid)
        _add(stats, "chips_in_aoi", in_area)
        _add(stats, "chips_in_s1", in_s1)
        if cfg.splits.by_property is not None:
            _add(stats, "chips_in_split", n)
            if no_split is not None:
                stats.skip_chips(no_split, in_s1)
    rows, cols = origins[idx, 0].tolist(), origins[idx, 1].tolist()
    xs, ys = x0[idx], y0[idx]
    s2_id = pair.s2.id
    chip_ids = [f"{s2_id}:{r}:{c}" for r, c in zip(rows, cols, strict=True)]
    seed, splits = cfg.seed, cfg.splits
    split = [
        chip_split(item_split_name, grid.crs, x, y, seed, splits) for x, y in zip(xs.tolist(), ys.tolist(), strict=True)
    ]
    label_href: pa.Array
    if planner.labels:
        centres = np.column_stack([xs + side / 2, ys - side / 2])
        label_href = pa.array(planner.labels.find_many(chips_ll, grid.crs, centres, s2_id), pa.string())
    else:
        label_href = pa.nulls(n, pa.string())
    transform = np.zeros((n, 6))
    transform[:, 0], transform[:, 2], transform[:, 4], transform[:, 5] = res, xs, -res, ys
    access = json.dumps(
        {
            "s2": {"signing": _signing(cfg, profile), "env": profile.env_for(pair.s2.collection_id)},
            "s1": {"signing": _signing(cfg, profile), "env": profile.env_for(pair.s1.collection_id)},
        },
        sort_keys=True,
    )
    cloud = pair.s2.properties.get("eo:cloud_cover")
    const = {
        "crs": grid.crs,
        "size_px": size,
        "resolution_m": res,
        "s2_item": s2_id,
        "s1_item": pair.s1.id,
        "s2_datetime": pair.s2.datetime.isoformat() if pair.s2.datetime else None,
        "s1_datetime": pair.s1.datetime.isoformat() if pair.s1.datetime else None,
        "dt_days": round(pair.dt_days, 6),
        "cloud_cover": None if cloud is None else float(cloud),
        "s2_assets": json.dumps(s2_src.assets, sort_keys=True),
        "s1_assets": json.dumps(s1_src.assets, sort_keys=True),
        "scl_href": s2_src.scl,
        "item_labels": json.dumps(item_label_list(pair.s2)),
        "provider": profile.name,
        "s2_radiometry": json.dumps(s2_src.radiometry, sort_keys=True),
        "s1_product": s1_src.product,
        "s1_units": s1_src.units,
        "s1_calibration": json.dumps(s1_src.calibration, sort_keys=True),
        "access": access,
        "season": season_label(pair.s2, cfg.seasons) if cfg.seasons is not None else None,
    }
    per_chip = {
        "chip_id": pa.array(chip_ids, pa.string()),
        "geometry": pa.array(shapely.to_wkb(chips_ll, byte_order=1), pa.binary()),
        "transform": pa.ListArray.from_arrays(
            pa.array(np.arange(0, 6 * n + 1, 6, dtype=np.int32)), pa.array(transform.ravel())
        ),
        "label_href": label_href,
        "clear_fraction": pa.array(np.round(clear, 6), pa.float64())
        if clear is not None
        else pa.nulls(n, pa.float64()),
        "place_id": (
            pa.array([place_id(grid.crs, x, y) for x, y in zip(xs.tolist(), ys.tolist(), strict=True)], pa.string())
            if cfg.seasons is not None
            else pa.nulls(n, pa.string())
        ),
        "split": pa.DictionaryArray.from_arrays(
            pa.array(np.array([_SPLIT_CODE[s] for s in split], dtype=np.int32)), pa.array(list(_SPLIT_CODE))
        ),
    }
    arrays = [per_chip[f.name] if f.name in per_chip else _const(const[f.name], n, f.type) for f in PLAN_SCHEMA]
    table = pa.Table.from_arrays(arrays, names=PLAN_SCHEMA.names)
    return table.take(pc.sort_indices(table["chip_id"]))


_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


def _clear_chips(
    pair: Pair,
    planner: _Planner,
    s2_src: S2Source,
    origins: np.ndarray,
    idx: np.ndarray,
    chips_ll: np.ndarray,
    stats: PlanStats | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Multi-season plans: each chip's clear fraction from the SCL, read once per item.

    Chips under ``seasons.min_clear_fraction`` go. Returns (idx, chips_ll, clear fractions float [n],
    or None when the item has no SCL and no minimum is asked).

    An unreadable SCL skips the item (counted with its reason); the plan goes on.
    """
    from eoforge.data.reader import GDAL_ENV, resolve_signer
    from eoforge.plan.clear import clear_fractions

    cfg, profile = planner.cfg, planner.profile
    sc = cfg.seasons
    assert sc is not None
    if not len(idx):
        return idx, chips_ll, np.zeros(0)
    if s2_src.scl is None:
        if sc.min_clear_fraction > 0:
            if stats is not None:
                stats.skip_chips("clear: S2 item has no SCL asset (seasons.min_clear_fraction > 0)", len(idx))
            return idx[:0], chips_ll[:0], np.zeros(0)
        return idx, chips_ll, None
    try:
        env = {**GDAL_ENV, **profile.env_for(pair.s2.collection_id)}
        sign = resolve_signer(_signing(cfg, profile))
        fractions = clear_fractions(s2_src.scl, s2_src.grid, origins[idx], cfg.chips.size_px, sign, env)
    except (CatalogError, ChipReadError) as exc:
        if stats is not None:
            stats.skip(pair.s2, f"scl: {exc}")
            stats.skip_chips("clear: SCL unreadable", len(idx))
        return idx[:0], chips_ll[:0], np.zeros(0)
    keep = fractions >= sc.min_clear_fraction - CLEAR_TOL
    if stats is not None:
        stats.skip_chips(
            f"clear: clear fraction below seasons.min_clear_fraction={sc.min_clear_fraction:g}", int((~keep).sum())
        )
        _add(stats, "chips_clear", int(keep.sum()))
    return idx[keep], chips_ll[keep], np.asarray(fractions, dtype=np.float64)[keep]


def sort_indices(table: pa.Table) -> pa.Array:
    """Indices that sort plan rows by (``chip_id``, ``s1_item``), stable (dictionary columns decoded for the key)."""
    keys = {}
    for name, _ in SORT_KEYS:
        col = table.column(name).combine_chunks()
        keys[name] = col.dictionary_decode() if pa.types.is_dictionary(col.type) else col
    return pc.sort_indices(pa.table(keys), SORT_KEYS)


def chip_table_for_pair(
    pair: Pair,
    cfg: DataConfig,
    label_items: LabelIndex | list[pystac.Item] | None = None,
    profile: ProviderProfile | None = None,
    sources: tuple[S2Source, S1Source] | None = None,
    stats: PlanStats | None = None,
    filters: Sequence[OriginFilter] = (),
) -> pa.Table:
    """The plan rows of one S1/S2 pair as an Arrow table (:data:`PLAN_SCHEMA`), sorted by chip id.

    ``label_items``: a :class:`LabelIndex` built once per plan (a list is indexed here, per call).
    With ``cfg.splits.by_property``, chips of an S2 item whose property maps to no split are left
    out and counted in ``stats.skipped_chips``.
    """
    profile = profile or resolve_profile(cfg.catalog.provider, _declared(cfg))
    labels = LabelIndex(label_items, profile) if isinstance(label_items, list) else label_items
    sources = sources or (
        prepare_s2(pair.s2, profile, cfg.chips.resolution_m),
        prepare_s1(pair.s1, profile, cfg.catalog.s1_units),
    )
    return _pair_table(pair, _planner(cfg, profile, labels, filters), sources, stats)


def table_rows(table: pa.Table) -> list[dict[str, object]]:
    """Plan rows as plain dicts (geometry as a shapely polygon, lon/lat), e.g. for tests and edits."""
    rows = table.cast(PLAN_SCHEMA).to_pylist() if table.schema != PLAN_SCHEMA else table.to_pylist()
    for row in rows:
        row["geometry"] = shapely.from_wkb(row["geometry"])
    return rows


def chip_rows_for_pair(
    pair: Pair,
    cfg: DataConfig,
    label_items: LabelIndex | list[pystac.Item] | None = None,
    profile: ProviderProfile | None = None,
    sources: tuple[S2Source, S1Source] | None = None,
    stats: PlanStats | None = None,
) -> list[dict[str, object]]:
    """Plan rows (plain dicts) for one S1/S2 pair (see :func:`chip_table_for_pair`)."""
    return table_rows(chip_table_for_pair(pair, cfg, label_items, profile, sources, stats))


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


def _search_catalog(cfg: DataConfig) -> CatalogConfig:
    """The catalog section the searches use: with no bbox/aoi, a bbox around what the sampling draws from."""
    c = cfg.catalog
    if c.bbox is None and c.aoi is None:
        bbox = sampling_bbox(cfg.chips)
        if bbox is not None:
            return c.model_copy(update={"bbox": bbox})
    return c


@dataclass
class _Prepared:
    """The outcome of search, resolve and pair: what the chip stage needs."""

    pairs: list[Pair]
    s2_src: dict[str, S2Source]
    s1_src: dict[str, S1Source]
    labels: LabelIndex | None
    profile: ProviderProfile


def _no_chips_error(cfg: DataConfig, stats: PlanStats, msg: str) -> CatalogError:
    stats_line = stats.summary()
    skipped = stats.skipped_by_reason()
    return CatalogError(
        f"catalog {cfg.catalog.url}: no chips planned: {msg} [{stats_line}"
        + (f"; skipped items {skipped}]" if skipped else "]")
    )


def _prepare(cfg: DataConfig, stats: PlanStats) -> _Prepared:
    """Search, resolve every item through the profile, pair; fail naming the stage that left nothing."""
    profile = resolve_profile(cfg.catalog.provider, _declared(cfg))
    catalog = _search_catalog(cfg)
    backend = open_backend(catalog)
    search_report: dict[str, int] = {}
    s2_all, s1_all = search_sensor_items(catalog, backend, report=search_report)
    stats.stages.update(s2_found=len(s2_all), s1_found=len(s1_all))
    stats.stages.update(search_report)  # duplicates dropped, HTTP requests / retries (not part of the hash)
    search_cfg = cfg.model_copy(update={"catalog": catalog})

    def fail(msg: str) -> CatalogError:
        return _no_chips_error(cfg, stats, msg)

    if not s2_all:
        raise fail(
            f"no S2 items in {cfg.catalog.s2_collection!r}: "
            + _why_no_items(search_cfg, backend, cfg.catalog.s2_collection, True)
        )
    if not s1_all:
        raise fail(
            f"no S1 items in {cfg.catalog.s1_collection!r}: "
            + _why_no_items(search_cfg, backend, cfg.catalog.s1_collection, False)
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
    if cfg.seasons is not None and pairs:
        # one S2 scene per season per location, among the paired ones (a clear scene without an S1
        # partner in the window would lose its season)
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
        label_items = backend.search(SearchQuery(cfg.catalog.label_collection, search_bbox(catalog), None, None, None))
        labels = LabelIndex(label_items, profile)
        stats.stages["label_items"] = len(labels)
    return _Prepared(pairs, s2_src, s1_src, labels, profile)


def pair_groups(pairs: list[Pair]) -> list[list[Pair]]:
    """Pairs grouped so that writing the groups in order writes chip ids in sorted order.

    A chip id is ``<S2 id>:<row>:<col>``, so the chips of one S2 item share the prefix
    ``<S2 id>:`` and S2 items in the order of that prefix give chip ids in order. Items whose
    prefix starts with another's (ids containing ``:``) share a group and are sorted together.
    Within a group pairs keep their (S2 id, S1 id) order.
    """
    by_s2: dict[str, list[Pair]] = {}
    for p in pairs:
        by_s2.setdefault(p.s2.id, []).append(p)
    groups: list[list[Pair]] = []
    start: str | None = None
    for s2_id in sorted(by_s2, key=lambda i: i + ":"):
        key = s2_id + ":"
        if start is not None and key.startswith(start):
            groups[-1].extend(by_s2[s2_id])
        else:
            start = key
            groups.append(list(by_s2[s2_id]))
    return groups


def iter_plan_tables(
    cfg: DataConfig,
    stats: PlanStats | None = None,
    filters: Sequence[OriginFilter] = (),
    timings: dict[str, float] | None = None,
) -> Iterator[pa.Table]:
    """Search, resolve, pair and place chips; yield the plan as Arrow tables in chip-id order.

    One table per S2 item (or group of items, see :func:`pair_groups`), rows sorted by
    (``chip_id``, ``s1_item``); memory holds one item's chips at a time. ``stats`` is filled as
    the stages run (complete once the iterator is exhausted). ``timings``, when given, receives
    ``search_s`` (search, resolve and pair, seconds) and ``chips_s`` (placing chips and building
    tables, seconds, excluding the consumer's time).

    Raises:
        CatalogError: no chip is left; the message names the stage and the filter (raised before
            the first table for search, resolve and pairing, after the last for the chip stages).
        ConfigError: the sampling strategy has nothing to sample (e.g. random without an AOI).
    """
    stats = stats if stats is not None else PlanStats()
    timings = timings if timings is not None else {}
    t0 = time.perf_counter()
    planner = _planner(cfg, resolve_profile(cfg.catalog.provider, _declared(cfg)), None, filters)
    prepared = _prepare(cfg, stats)
    planner.profile, planner.labels = prepared.profile, prepared.labels
    if planner.sampler.kind != "grid":
        stats.stages["chips_drawn"] = planner.sampler.n_drawn
    pairs = prepared.pairs
    timings["search_s"] = time.perf_counter() - t0
    timings["chips_s"] = 0.0
    log.info("planning %d pairs (%s)", len(pairs), stats.summary())
    total = done = 0
    for group in pair_groups(pairs):
        t1 = time.perf_counter()
        tables = []
        for pair in group:
            sources = (prepared.s2_src[pair.s2.id], prepared.s1_src[pair.s1.id])
            tables.append(_pair_table(pair, planner, sources, stats))
            done += 1
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        if len(tables) > 1:
            table = table.take(sort_indices(table))
        total += table.num_rows
        timings["chips_s"] += time.perf_counter() - t1
        log.info("[%d/%d] %s: %d chips so far", done, len(pairs), group[0].s2.id, total)
        if table.num_rows:
            yield table
    log.info("plan stages: %s; skipped items by reason: %s", stats.summary(), stats.skipped_by_reason())
    if stats.skipped_chips:
        log.warning("chips left out of the plan: %s", dict(sorted(stats.skipped_chips.items())))
    if not total:
        raise _no_chips_error(cfg, stats, _why_no_chips(cfg, stats, len(pairs), filters))


def _why_no_chips(cfg: DataConfig, stats: PlanStats, n_pairs: int, filters: Sequence[OriginFilter]) -> str:
    st = stats.stages
    if not st.get("chips_on_grid"):
        s = cfg.chips.sampling
        if s.strategy == "grid":
            return f"grid: no chip of chips.size_px={cfg.chips.size_px} fits in the {n_pairs} pairs' S2 grids"
        return (
            f"sampling: none of the {st.get('chips_drawn', 0)} chip centres drawn by chips.sampling "
            f"({s.strategy}) lies on the {n_pairs} pairs' S2 grids"
        )
    if not st.get("chips_in_aoi"):
        return f"bbox/aoi: no chip of the {n_pairs} pairs' grids intersects the area of interest"
    if not st.get("chips_in_s1"):
        return f"overlap: none of the {st['chips_in_aoi']} chips in the area lies inside its S1 footprint"
    previous = st["chips_in_s1"]
    for f in filters:
        if not st.get(f.stage):
            return f"{f.stage}: none of the {previous} chips inside the S1 footprint passed the filter"
        previous = st[f.stage]
    clear_skips = {k: v for k, v in sorted(stats.skipped_chips.items()) if k.startswith("clear:")}
    if cfg.seasons is not None and not st.get("chips_clear") and clear_skips:
        return f"clear: every chip left was dropped by the SCL clear-fraction test {clear_skips}"
    by = cfg.splits.by_property
    return (
        f"split: none of the {st['chips_in_s1']} chips has a split: their S2 items' "
        f"{by.name if by else 'split'} values are not in splits.by_property.map {sorted(by.map) if by else []} "
        f"(skipped chips: {dict(sorted(stats.skipped_chips.items()))})"
    )


def plan_table_with_stats(cfg: DataConfig, filters: Sequence[OriginFilter] = ()) -> tuple[pa.Table, PlanStats]:
    """The whole plan in memory as one Arrow table (sorted by chip id) and the stats (small plans, tests)."""
    stats = PlanStats()
    tables = list(iter_plan_tables(cfg, stats, filters))
    return pa.concat_tables(tables).cast(PLAN_SCHEMA), stats


def plan_rows_with_stats(cfg: DataConfig) -> tuple[list[dict[str, object]], PlanStats]:
    """Search, resolve, pair and place chips: every chip row of a data config (sorted by chip id) and the stats.

    Rows are plain dicts (geometry a shapely polygon); for a large plan stream the tables
    instead (:func:`iter_plan_tables`, :func:`eoforge.plan.io.build_plan`).

    Raises:
        CatalogError: no chip is left; the message names the stage and the filter.
    """
    table, stats = plan_table_with_stats(cfg)
    return table_rows(table), stats


def plan_rows(cfg: DataConfig) -> list[dict[str, object]]:
    """Search, pair and place chips: every chip row of a data config, sorted by chip id."""
    return plan_rows_with_stats(cfg)[0]


def ensure_parent(path: str | Path) -> Path:
    """Create the parent directory of ``path`` and return it as a Path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p
