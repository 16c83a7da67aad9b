"""Chip placement for one S1/S2 pair, vectorised: origins, area and S1 tests, clear test, splits, labels."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from shapely.geometry import shape

from eoforge.catalog.pairing import Pair
from eoforge.catalog.providers import ProviderProfile
from eoforge.config import DataConfig
from eoforge.errors import CatalogError, ChipReadError, ConfigError
from eoforge.plan.area import AreaCache, area_of_interest, densified_to, to_lonlat
from eoforge.plan.labels import LabelIndex
from eoforge.plan.sampling import Sampler, chips_on_grid
from eoforge.plan.schema import PLAN_SCHEMA
from eoforge.plan.seasons import CLEAR_TOL, place_id, season_label
from eoforge.plan.sources import (
    S1Source,
    S2Source,
    item_label_list,
    signing_of,
)
from eoforge.plan.splits import chip_split, item_split
from eoforge.plan.stats import PlanStats


def _const(value: Any, n: int, type_: pa.DataType) -> pa.Array:
    """``n`` copies of one value: dictionary-encoded for strings (no copy of the text per row)."""
    if pa.types.is_string(type_):
        indices = pa.nulls(n, pa.int32()) if value is None else pa.array(np.zeros(n, dtype=np.int32))
        return pa.DictionaryArray.from_arrays(indices, pa.array([value if value is not None else ""], pa.string()))
    if value is None:
        return pa.nulls(n, type_)
    return pa.array(np.full(n, value), type_)


@dataclass
class Planner:
    """What every pair of a plan shares: config, profile, labels, sampler, area of interest."""

    cfg: DataConfig
    profile: ProviderProfile
    labels: LabelIndex | None
    sampler: Sampler
    area: AreaCache


def make_planner(
    cfg: DataConfig,
    profile: ProviderProfile,
    labels: LabelIndex | None,
) -> Planner:
    """The shared part of a plan's pairs: sampler and area of interest from ``cfg``.

    Raises:
        ConfigError: the sampling strategy cannot sample (e.g. random without an AOI).
    """
    area = area_of_interest(cfg)
    try:
        sampler = Sampler(cfg.chips, cfg.seed, area)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Planner(cfg, profile, labels, sampler, AreaCache(area))


def _add(stats: PlanStats | None, key: str, n: int) -> None:
    if stats is not None:
        stats.stages[key] = stats.stages.get(key, 0) + int(n)


def pair_table(pair: Pair, planner: Planner, sources: tuple[S2Source, S1Source], stats: PlanStats | None) -> pa.Table:
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
    s1_utm = densified_to(grid.crs, s1_foot)
    margin = 5 * res
    surely_in, maybe_in = s1_utm.buffer(-margin), s1_utm.buffer(margin)
    shapely.prepare(surely_in)
    shapely.prepare(maybe_in)
    area = planner.area.in_crs(grid.crs)
    origins = planner.sampler.origins(grid, area[1] if area else None)
    if planner.sampler.kind == "grid":
        n_rows, n_cols = chips_on_grid(grid, size, planner.sampler.stride_px, planner.sampler.cover_edges)
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
    to_ll = to_lonlat(grid.crs)
    chips_ll = shapely.transform(boxes[idx], lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
    edge = ~shapely.contains(surely_in, boxes[idx])
    if edge.any():  # not surely inside S1: the exact lon/lat test (1e-3: edge round-off)
        outside = shapely.area(shapely.difference(chips_ll[edge], s1_foot))
        inside = np.ones(len(idx), dtype=bool)
        inside[edge] = ~(outside > 1e-3 * shapely.area(chips_ll[edge]))
        idx, chips_ll = idx[inside], chips_ll[inside]
    in_s1 = len(idx)
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
            "s2": {"signing": signing_of(cfg, profile), "env": profile.env_for(pair.s2.collection_id)},
            "s1": {"signing": signing_of(cfg, profile), "env": profile.env_for(pair.s1.collection_id)},
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
    planner: Planner,
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
    from eoforge.catalog.assets import GDAL_ENV, resolve_signer
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
        sign = resolve_signer(signing_of(cfg, profile))
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
