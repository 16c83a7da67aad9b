"""Multi-season sampling: one Sentinel-2 scene per season per location, and clear chips only.

As SSL4EO-S12 samples a location at four seasons with a cloud filter (and SeCo builds seasonal
views of one place), :func:`select_seasonal` keeps, per location and season, the single S2 item
with the lowest ``eo:cloud_cover`` under the season's threshold (ties: earlier date, then the
smaller id). It is deterministic: the same items give the same choice in any order.

- **Location**: the MGRS tile (``s2:mgrs_tile``, ``grid:code``, or ``mgrs:utm_zone`` +
  ``mgrs:latitude_band`` + ``mgrs:grid_square``), else the S2 grid (CRS + upper-left corner from
  ``proj:*``), else the footprint centroid rounded to 0.01 degree (:func:`location_key`).
- **Season**: from the item's datetime (UTC) and :class:`~eoforge.config.data.SeasonsConfig`:
  meteorological DJF/MAM/JJA/SON, hemispheric winter/spring/summer/autumn (summer is JJA north
  of the equator and DJF south of it, by the footprint's centroid), or custom month lists. A
  season's year is the year of its last month, so ``2021-DJF`` is December 2020 to February 2021.
- **Counts** (``PlanStats.stages``): ``s2_season_out`` (no season, other year, no datetime),
  ``s2_season_cloudy`` (at or over the threshold, or no ``eo:cloud_cover`` under a threshold),
  ``s2_season_not_best`` (a clearer scene won), ``s2_seasonal`` (kept), ``season_slots`` and
  ``season_slots_missing`` (location x season slots without an acceptable scene; not fatal), and
  ``season_missing_<name>`` per season.

Per chip, :func:`seasonal_rows` adds ``clear_fraction`` (SCL, :mod:`eoforge.plan.clear`),
``season`` (``"2021-JJA"``) and ``place_id`` (CRS + chip origin, the same at every season, so
seasonal positives of one place can be formed), and leaves out chips under
``min_clear_fraction`` (counted in ``PlanStats.skipped_chips``).
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import numpy as np
import pystac
from shapely.geometry import shape

from eoforge.config.data import SeasonsConfig
from eoforge.errors import CatalogError
from eoforge.plan.clear import clear_fractions

if TYPE_CHECKING:  # annotations only
    from eoforge.plan.sampling import Grid
    from eoforge.plan.stats import PlanStats

log = logging.getLogger(__name__)

#: Columns :func:`seasonal_rows` adds to every plan row (None when seasons are off).
SEASON_COLUMNS = ("clear_fraction", "season", "place_id")
#: Drop reasons of :func:`select_seasonal`, as counted in ``PlanStats.stages``.
DROP_REASONS = ("s2_season_out", "s2_season_cloudy", "s2_season_not_best")
#: Tolerance of the min_clear_fraction test (clear fractions are float32).
CLEAR_TOL = 1e-6


# ----------------------------------------------------------------------------------------- keys


def _mgrs(tile: object) -> str:
    return "MGRS-" + str(tile).strip().upper().removeprefix("MGRS-")


def _item_crs(item: pystac.Item, fields: Mapping[str, object]) -> str | None:
    for props in (fields, item.properties):
        if props.get("proj:code"):
            return str(props["proj:code"])
        if props.get("proj:epsg"):
            return f"EPSG:{int(props['proj:epsg'])}"  # type: ignore[call-overload]
    return None


def _grid_key(item: pystac.Item) -> str | None:
    """CRS + upper-left corner of the item's finest ``proj:transform`` (the tile grid), or None."""
    candidates: list[tuple[float, str, str, float, float]] = []
    sources: list[tuple[str, Mapping[str, object]]] = [("", item.properties)]
    sources += [(key, asset.extra_fields) for key, asset in sorted(item.assets.items())]
    for key, fields in sources:
        tr = fields.get("proj:transform")
        crs = _item_crs(item, fields)
        if isinstance(tr, list) and len(tr) >= 6 and crs:
            candidates.append((abs(float(tr[0])), key, crs, float(tr[2]), float(tr[5])))
    if not candidates:
        return None
    _, _, crs, x, y = min(candidates)
    return f"{crs}:{_num(x)}:{_num(y)}"


def location_key(item: pystac.Item) -> str:
    """The location an S2 item shows: ``MGRS-32TMR``, else ``EPSG:32632:399960:5000040``, else ``lonlat:9.31:45.02``.

    Raises:
        CatalogError: the item has none of MGRS properties, ``proj:*`` grid and geometry.
    """
    p = item.properties
    for key in ("s2:mgrs_tile", "mgrs:tile"):
        if p.get(key):
            return _mgrs(p[key])
    if p.get("grid:code"):
        code = str(p["grid:code"])
        return _mgrs(code) if code.upper().startswith("MGRS-") else code
    zone, band, square = p.get("mgrs:utm_zone"), p.get("mgrs:latitude_band"), p.get("mgrs:grid_square")
    if zone is not None and band and square:
        return _mgrs(f"{int(zone):02d}{band}{square}")
    grid = _grid_key(item)
    if grid is not None:
        return grid
    if item.geometry is None:
        raise CatalogError(f"item {item.id}: no MGRS tile, proj grid or geometry to tell its location")
    c = shape(item.geometry).centroid
    return f"lonlat:{c.x:.2f}:{c.y:.2f}"


def _num(v: float) -> str:
    """A coordinate as text: whole metres without decimals, else 3 decimals."""
    v = float(v)
    return str(round(v)) if abs(v - round(v)) < 1e-6 else f"{v:.3f}"


def place_id(crs: str, x0: float, y0: float) -> str:
    """The id of a chip's place: CRS + upper-left corner (map units), e.g. ``EPSG:32632:500640:5000000``.

    Chips of different dates or seasons at the same place share it (and, by place, their split).
    """
    return f"{crs}:{_num(x0)}:{_num(y0)}"


# ----------------------------------------------------------------------------------------- seasons


def hemisphere(item: pystac.Item) -> Literal["north", "south"]:
    """``south`` when the item's footprint centroid (else bbox centre) lies south of the equator."""
    if item.geometry is not None:
        lat = shape(item.geometry).centroid.y
    elif item.bbox:
        lat = (item.bbox[1] + item.bbox[3]) / 2
    else:
        return "north"
    return "south" if lat < 0 else "north"


def _month_table(cfg: SeasonsConfig, hemi: Literal["north", "south"]) -> dict[int, tuple[str, int]]:
    """Month -> (season name, years to add): months after a season's last month count for the next year."""
    table: dict[int, tuple[str, int]] = {}
    for name, months in cfg.season_months(hemi).items():
        for m in months:
            table[m] = (name, 1 if m > months[-1] else 0)
    return table


def season_of(when: datetime, cfg: SeasonsConfig, hemi: Literal["north", "south"] = "north") -> tuple[int, str] | None:
    """(season year, season name) of a time, or None when its month is in no season."""
    found = _month_table(cfg, hemi).get(when.month)
    if found is None:
        return None
    return when.year + found[1], found[0]


def item_datetime(item: pystac.Item) -> datetime | None:
    """The item's datetime, else its ``start_datetime``."""
    if item.datetime is not None:
        return item.datetime
    start = item.properties.get("start_datetime")
    return pystac.utils.str_to_datetime(str(start)) if start else None


def item_season(item: pystac.Item, cfg: SeasonsConfig) -> tuple[int, str] | None:
    """(season year, season name) of an S2 item, or None (no datetime, or a month in no season)."""
    when = item_datetime(item)
    if when is None:
        return None
    return season_of(when, cfg, hemisphere(item) if cfg.scheme == "hemispheric" else "north")


def season_label(item: pystac.Item, cfg: SeasonsConfig) -> str | None:
    """``"<season year>-<season name>"`` of an S2 item, e.g. ``"2021-JJA"``, or None."""
    found = item_season(item, cfg)
    return None if found is None else f"{found[0]}-{found[1]}"


# ----------------------------------------------------------------------------------------- selection


@dataclass
class SeasonalSelection:
    """What :func:`select_seasonal_report` kept and why the rest went.

    Attributes:
        items: the kept S2 items, sorted by (location, season year, season order).
        chosen: (location, season name, season year or None) -> kept item id.
        missing: (location, season name, season year or None) slots without an acceptable scene.
        dropped: reason (one of :data:`DROP_REASONS`) -> number of items.
    """

    items: list[pystac.Item] = field(default_factory=list)
    chosen: dict[tuple[str, str, int | None], str] = field(default_factory=dict)
    missing: list[tuple[str, str, int | None]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)


def select_seasonal_report(items: list[pystac.Item], cfg: SeasonsConfig) -> SeasonalSelection:
    """Per (location, season[, year]) the least cloudy S2 item under the threshold; see the module docstring.

    Raises:
        CatalogError: an item has no way to tell its location (no MGRS, proj grid or geometry).
    """
    out = SeasonalSelection()
    order = {name: i for i, name in enumerate(cfg.season_names())}
    candidates: dict[tuple[str, str, int | None], list[tuple[float, datetime, str, pystac.Item]]] = defaultdict(list)
    years_of: dict[str, set[int]] = defaultdict(set)
    for item in items:
        when = item_datetime(item)
        found = item_season(item, cfg)
        if when is None or found is None or (cfg.year is not None and found[0] != cfg.year):
            out.dropped["s2_season_out"] += 1
            continue
        year, name = found
        loc = location_key(item)
        years_of[loc].add(year)
        slot = (loc, name, year if cfg.per_year else None)
        threshold = cfg.cloud_threshold(name)
        cloud = item.properties.get("eo:cloud_cover")
        if cloud is None:
            if threshold < 100:
                out.dropped["s2_season_cloudy"] += 1
                continue
            rank = math.inf
        else:
            rank = float(cloud)
            if threshold < 100 and rank >= threshold:
                out.dropped["s2_season_cloudy"] += 1
                continue
        candidates[slot].append((rank, when, item.id, item))
    for slot, cands in candidates.items():
        if cands:
            best = min(cands, key=lambda c: c[:3])
            out.chosen[slot] = best[2]
            out.items.append(best[3])
            out.dropped["s2_season_not_best"] += len(cands) - 1
    for loc, years in years_of.items():
        for year in sorted(years) if cfg.per_year else [None]:
            for name in cfg.season_names():
                if (loc, name, year) not in out.chosen:
                    out.missing.append((loc, name, year))

    def sort_key(it: pystac.Item) -> tuple[str, int, int, str]:
        year, name = item_season(it, cfg) or (0, "")
        return (location_key(it), year, order.get(name, len(order)), it.id)

    out.items.sort(key=sort_key)
    out.missing.sort(key=lambda s: (s[0], s[2] or 0, order[s[1]]))
    return out


def select_seasonal(items: list[pystac.Item], cfg: SeasonsConfig, stats: PlanStats | None = None) -> list[pystac.Item]:
    """One S2 item per season per location: the least cloudy under the threshold (see module docstring).

    Args:
        items: usable S2 items (any order; the result does not depend on it).
        cfg: the seasons, year and cloud thresholds.
        stats: when given, its ``stages`` get the counts named in the module docstring.

    Returns:
        The kept items, sorted by (location, season year, season).
    """
    sel = select_seasonal_report(items, cfg)
    if stats is not None:
        for reason in DROP_REASONS:
            stats.stages[reason] = stats.stages.get(reason, 0) + sel.dropped[reason]
        stats.stages["s2_seasonal"] = stats.stages.get("s2_seasonal", 0) + len(sel.items)
        n_slots = len(sel.chosen) + len(sel.missing)
        stats.stages["season_slots"] = stats.stages.get("season_slots", 0) + n_slots
        stats.stages["season_slots_missing"] = stats.stages.get("season_slots_missing", 0) + len(sel.missing)
        per_season = Counter(name for _, name, _ in sel.missing)
        for name in cfg.season_names():
            if per_season[name]:
                key = f"season_missing_{name}"
                stats.stages[key] = stats.stages.get(key, 0) + per_season[name]
    if sel.missing:
        shown = ", ".join(f"{loc} {name}" + (f" {y}" if y else "") for loc, name, y in sel.missing[:10])
        more = f" and {len(sel.missing) - 10} more" if len(sel.missing) > 10 else ""
        log.warning(
            "seasons: %d of %d location x season slots have no scene under the cloud threshold: %s%s",
            len(sel.missing),
            len(sel.chosen) + len(sel.missing),
            shown,
            more,
        )
    return sel.items


# ----------------------------------------------------------------------------------------- chip rows


def seasonal_rows(
    rows: list[dict[str, object]],
    item: pystac.Item,
    scl_href: str | None,
    grid: Grid,
    cfg: SeasonsConfig,
    stats: PlanStats | None = None,
    sign: Callable[[str], str] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[dict[str, object]]:
    """Clear fraction, season and place id for the chip rows of one S2 item; chips under min_clear_fraction go.

    Args:
        rows: plan rows of one S2 item (``transform`` = [res, 0, x0, 0, -res, y0] on ``grid``).
        item: the S2 item.
        scl_href: its SCL href (None: no SCL asset).
        grid: the item's chip grid.
        cfg: the seasons config.
        stats: chips left out are counted in ``skipped_chips``; ``chips_clear`` counts the rows kept.
        sign: href signing hook for the SCL read.
        env: extra GDAL options for the SCL read.

    Returns:
        The rows kept, each with ``clear_fraction`` (float, or None without SCL and min_clear_fraction 0),
        ``season`` and ``place_id``.

    Raises:
        CatalogError: the SCL is unreadable (the caller skips the item).
    """
    if not rows:
        return rows
    label = season_label(item, cfg)
    fractions: np.ndarray | None = None
    if scl_href is None:
        if cfg.min_clear_fraction > 0:
            if stats is not None:
                stats.skip_chips("clear: S2 item has no SCL asset (seasons.min_clear_fraction > 0)", len(rows))
            return []
    else:
        gt = grid.transform
        x0 = np.array([float(row["transform"][2]) for row in rows])  # type: ignore[index]
        y0 = np.array([float(row["transform"][5]) for row in rows])  # type: ignore[index]
        origins = np.stack([np.rint((y0 - gt.f) / gt.e), np.rint((x0 - gt.c) / gt.a)], axis=1).astype(np.int64)
        fractions = clear_fractions(scl_href, grid, origins, int(rows[0]["size_px"]), sign, env)  # type: ignore[call-overload]
    kept: list[dict[str, object]] = []
    for i, row in enumerate(rows):
        frac = None if fractions is None else float(fractions[i])
        if frac is not None and frac < cfg.min_clear_fraction - CLEAR_TOL:
            continue
        tr = row["transform"]
        row["clear_fraction"] = None if frac is None else round(frac, 6)
        row["season"] = label
        row["place_id"] = place_id(str(row["crs"]), float(tr[2]), float(tr[5]))  # type: ignore[index]
        kept.append(row)
    if stats is not None:
        stats.skip_chips(
            f"clear: clear fraction below seasons.min_clear_fraction={cfg.min_clear_fraction:g}", len(rows) - len(kept)
        )
        stats.stages["chips_clear"] = stats.stages.get("chips_clear", 0) + len(kept)
    return kept
