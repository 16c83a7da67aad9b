"""Planning stages 1-3: search the catalog, resolve every item through the profile, pair S1 with S2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eoforge.catalog.pairing import Pair, pair_items
from eoforge.catalog.providers import ProviderProfile, resolve_profile
from eoforge.catalog.search import SearchQuery, open_backend, search_bbox, search_sensor_items
from eoforge.config import DataConfig
from eoforge.config.data import CatalogConfig
from eoforge.errors import CatalogError
from eoforge.plan.labels import LabelIndex
from eoforge.plan.sampling import sampling_bbox
from eoforge.plan.seasons import select_seasonal
from eoforge.plan.sources import S1Source, S2Source, declared_profile, prepare_s1, prepare_s2
from eoforge.plan.stats import PlanStats


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
class PreparedPairs:
    """The outcome of search, resolve and pair: what the chip stage needs."""

    pairs: list[Pair]
    s2_src: dict[str, S2Source]
    s1_src: dict[str, S1Source]
    labels: LabelIndex | None
    profile: ProviderProfile


def no_chips_error(cfg: DataConfig, stats: PlanStats, msg: str) -> CatalogError:
    """The error of a plan with no chip: ``msg`` (the stage and filter) with the stage counts and skipped items."""
    stats_line = stats.summary()
    skipped = stats.skipped_by_reason()
    return CatalogError(
        f"catalog {cfg.catalog.url}: no chips planned: {msg} [{stats_line}"
        + (f"; skipped items {skipped}]" if skipped else "]")
    )


def prepare_pairs(cfg: DataConfig, stats: PlanStats) -> PreparedPairs:
    """Search, resolve every item through the profile, pair; fail naming the stage that left nothing."""
    profile = resolve_profile(cfg.catalog.provider, declared_profile(cfg))
    catalog = _search_catalog(cfg)
    backend = open_backend(catalog)
    search_report: dict[str, int] = {}
    s2_all, s1_all = search_sensor_items(catalog, backend, report=search_report)
    stats.stages.update(s2_found=len(s2_all), s1_found=len(s1_all))
    stats.stages.update(search_report)  # duplicates dropped, HTTP requests / retries (not part of the hash)
    search_cfg = cfg.model_copy(update={"catalog": catalog})

    def fail(msg: str) -> CatalogError:
        return no_chips_error(cfg, stats, msg)

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
    return PreparedPairs(pairs, s2_src, s1_src, labels, profile)
