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
   footprint.

The chips of a pair are computed as arrays (origins ``[N, 2]`` int64, shapely 2 vectorised
tests, pyproj on arrays) and come out as one Arrow table per S2 item (:func:`iter_plan_tables`),
rows sorted by (``chip_id``, ``s1_item``), S2 items in the order of their chip ids, so the whole
plan streams to disk in chip-id order (:func:`build_plan`, through :mod:`eoforge.plan.writer`) with
memory bounded by one S2 item's chips. Columns that
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

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from eoforge.catalog.pairing import Pair
from eoforge.catalog.providers import resolve_profile
from eoforge.config import DataConfig
from eoforge.plan.area import area_of_interest
from eoforge.plan.chips import make_planner, pair_table
from eoforge.plan.labels import LabelIndex
from eoforge.plan.prepare import no_chips_error, prepare_pairs
from eoforge.plan.sampling import Grid
from eoforge.plan.schema import PLAN_SCHEMA, SORT_KEYS, sort_indices, table_rows
from eoforge.plan.sources import (
    ITEM_LABEL_KEYS,
    S1Source,
    S2Source,
    declared_profile,
    item_label_list,
    prepare_s1,
    prepare_s2,
    s2_grid,
)
from eoforge.plan.splits import _place_u, chip_split, item_split, split_of
from eoforge.plan.stats import PlanStats
from eoforge.plan.writer import _meta, _write_tables

# What this module offered before it was split (stats, sources, splits, labels, schema, chips,
# prepare): importers of ``eoforge.plan.build`` keep working.
__all__ = [
    "ITEM_LABEL_KEYS",
    "PLAN_SCHEMA",
    "SORT_KEYS",
    "Grid",
    "LabelIndex",
    "PlanStats",
    "S1Source",
    "S2Source",
    "_place_u",
    "area_of_interest",
    "build_plan",
    "chip_split",
    "ensure_parent",
    "item_label_list",
    "item_split",
    "iter_plan_tables",
    "pair_groups",
    "plan_rows",
    "plan_rows_with_stats",
    "plan_table_with_stats",
    "prepare_s1",
    "prepare_s2",
    "s2_grid",
    "sort_indices",
    "split_of",
    "table_rows",
]

log = logging.getLogger(__name__)


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
    timings: dict[str, float] | None = None,
    pairs_out: list[Pair] | None = None,
) -> Iterator[pa.Table]:
    """Search, resolve, pair and place chips; yield the plan as Arrow tables in chip-id order.

    One table per S2 item (or group of items, see :func:`pair_groups`), rows sorted by
    (``chip_id``, ``s1_item``); memory holds one item's chips at a time. ``stats`` is filled as
    the stages run (complete once the iterator is exhausted). ``timings``, when given, receives
    ``search_s`` (search, resolve and pair, seconds) and ``chips_s`` (placing chips and building
    tables, seconds, excluding the consumer's time). ``pairs_out``, when given, receives the pairs
    (their STAC items) before the first table: what a product derived from the plan links back to.

    Raises:
        CatalogError: no chip is left; the message names the stage and the filter (raised before
            the first table for search, resolve and pairing, after the last for the chip stages).
        ConfigError: the sampling strategy has nothing to sample (e.g. random without an AOI).
    """
    stats = stats if stats is not None else PlanStats()
    timings = timings if timings is not None else {}
    t0 = time.perf_counter()
    planner = make_planner(cfg, resolve_profile(cfg.catalog.provider, declared_profile(cfg)), None)
    prepared = prepare_pairs(cfg, stats)
    planner.profile, planner.labels = prepared.profile, prepared.labels
    if planner.sampler.kind != "grid":
        stats.stages["chips_drawn"] = planner.sampler.n_drawn
    pairs = prepared.pairs
    if pairs_out is not None:
        pairs_out.extend(pairs)
    timings["search_s"] = time.perf_counter() - t0
    timings["chips_s"] = 0.0
    log.info("planning %d pairs (%s)", len(pairs), stats.summary())
    total = done = 0
    for group in pair_groups(pairs):
        t1 = time.perf_counter()
        tables = []
        for pair in group:
            sources = (prepared.s2_src[pair.s2.id], prepared.s1_src[pair.s1.id])
            tables.append(pair_table(pair, planner, sources, stats))
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
        raise no_chips_error(cfg, stats, _why_no_chips(cfg, stats, len(pairs)))


def _why_no_chips(cfg: DataConfig, stats: PlanStats, n_pairs: int) -> str:
    """Which stage removed the last chip, in words, for the no-chips error."""
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
    clear_skips = {k: v for k, v in sorted(stats.skipped_chips.items()) if k.startswith("clear:")}
    if cfg.seasons is not None and not st.get("chips_clear") and clear_skips:
        return f"clear: every chip left was dropped by the SCL clear-fraction test {clear_skips}"
    by = cfg.splits.by_property
    return (
        f"split: none of the {st['chips_in_s1']} chips has a split: their S2 items' "
        f"{by.name if by else 'split'} values are not in splits.by_property.map {sorted(by.map) if by else []} "
        f"(skipped chips: {dict(sorted(stats.skipped_chips.items()))})"
    )


def build_plan(
    cfg: DataConfig,
    out: str | Path,
    timings: dict[str, float] | None = None,
    pairs_out: list[Pair] | None = None,
) -> tuple[str, int]:
    """Search, pair, place chips and stream the plan to ``out`` (local path or URI); returns (hash, chips).

    Memory is bounded by one S2 item's chips and one row group, whatever the size of the plan.
    ``timings``, when given, receives ``search_s``, ``chips_s`` (see
    :func:`iter_plan_tables`) and ``write_s`` (hash, encode, write, upload).
    ``pairs_out``: see :func:`iter_plan_tables`.

    Raises:
        CatalogError: no chip is left (nothing is written).
        ConfigError, ServiceError: see :func:`eoforge.plan.writer.write_plan`.
    """
    stats = PlanStats()
    timings = timings if timings is not None else {}
    tables = iter_plan_tables(cfg, stats, timings=timings, pairs_out=pairs_out)
    digest, n = _write_tables(tables, out, lambda: _meta(cfg, stats), timings)
    log.info("plan %s: %d chips, hash %s; stages %s", out, n, digest[:12], stats.summary())
    return digest, n


def plan_table_with_stats(cfg: DataConfig) -> tuple[pa.Table, PlanStats]:
    """The whole plan in memory as one Arrow table (sorted by chip id) and the stats (small plans, tests)."""
    stats = PlanStats()
    tables = list(iter_plan_tables(cfg, stats))
    return pa.concat_tables(tables).cast(PLAN_SCHEMA), stats


def plan_rows_with_stats(cfg: DataConfig) -> tuple[list[dict[str, object]], PlanStats]:
    """Search, resolve, pair and place chips: every chip row of a data config (sorted by chip id) and the stats.

    Rows are plain dicts (geometry a shapely polygon); for a large plan stream the tables
    instead (:func:`iter_plan_tables`, :func:`build_plan`).

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
