"""Sampling strategies (``chips.sampling``): each places chips where it should, deterministically.

Plans are built from a static catalog of synthetic items with full ``proj:`` metadata whose
hrefs point at objects that do not exist (``tests/support/plan_items.py``): planning reads no
pixel. Chip centres are taken back from the plan's ``transform`` column, in the item's UTM CRS.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
from eoforge.config import DataConfig, parse_config
from eoforge.config.data import ChipGridConfig
from eoforge.errors import ConfigError
from eoforge.plan.build import plan_table_with_stats
from eoforge.plan.io import build_plan, plan_stats, read_plan
from eoforge.plan.sampling import Grid, Sampler, aoi_area_km2, chip_origins, grid_origins
from pyproj import Transformer
from rasterio.transform import Affine
from shapely.geometry import box, mapping

from tests.support.plan_items import START, s1_item, s2_item, write_static_catalog

EPSG = 32632
X0, Y0 = 300000.0, 5400000.0
TILE_PX = 2000  # 20 km
TO_LL = Transformer.from_crs(f"EPSG:{EPSG}", "EPSG:4326", always_xy=True)
TO_UTM = Transformer.from_crs("EPSG:4326", f"EPSG:{EPSG}", always_xy=True)
CENTRE_LL = TO_LL.transform(X0 + TILE_PX * 5.0, Y0 - TILE_PX * 5.0)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two dates of one 20 km S2 tile (each with an S1 item covering it)."""
    items = []
    for d in range(2):
        when = START + timedelta(days=10 * d)
        s2 = s2_item(f"S2A_T000_{when:%Y%m%d}", EPSG, X0, Y0, TILE_PX, when)
        w, s, e, n = s2["bbox"]
        items += [s2, s1_item(f"S1A_T000_{when:%Y%m%d}", [w - 0.05, s - 0.05, e + 0.05, n + 0.05], when)]
    return write_static_catalog(tmp_path_factory.mktemp("synthetic"), items)


def _cfg(catalog: Path, chips: dict, seed: int = 0, **catalog_extra: object) -> DataConfig:
    raw = {
        "kind": "data",
        "catalog": {"backend": "static", "url": str(catalog), **catalog_extra},
        "chips": chips,
        "seed": seed,
    }
    return parse_config(raw, "test", DataConfig)


def _centres(table) -> tuple[np.ndarray, np.ndarray]:
    """Chip centres (x, y), UTM metres, from the plan's transform and size columns."""
    tr = np.array(table.column("transform").to_pylist())
    half = table.column("size_px").to_numpy() * tr[:, 0] / 2
    return tr[:, 2] + half, tr[:, 5] - half


def _origins(table) -> set[tuple[str, int, int]]:
    out = set()
    for cid in table.column("chip_id").to_pylist():
        item, r, c = cid.rsplit(":", 2)
        out.add((item, int(r), int(c)))
    return out


# --------------------------------------------------------------------------- grid
def test_grid_is_todays_regular_grid(catalog: Path) -> None:
    grid = Grid(f"EPSG:{EPSG}", Affine(10, 0, X0, 0, -10, Y0), (TILE_PX, TILE_PX))
    o = grid_origins(grid, 64, 48)
    n = (TILE_PX - 64) // 48 + 1
    assert o.shape == (n * n, 2) and o.dtype == np.int64
    assert {tuple(x) for x in o.tolist()} == {(r * 48, c * 48) for r in range(n) for c in range(n)}

    table, stats = plan_table_with_stats(_cfg(catalog, {"size_px": 64, "stride_px": 48}))
    assert table.num_rows == 2 * n * n
    assert {(r, c) for _, r, c in _origins(table)} == {(r * 48, c * 48) for r in range(n) for c in range(n)}
    assert stats.stages["chips_on_grid"] == stats.stages["chips_in_s1"] == 2 * n * n
    assert stats.skipped_items == []  # proj metadata: no pixel file opened (the hrefs do not exist)
    ids = table.column("chip_id").to_pylist()
    assert ids == sorted(ids)


def test_grid_window_follows_the_area_of_interest(catalog: Path) -> None:
    """With catalog.aoi only chips intersecting it are kept, as before (the window is a superset)."""
    x, y = X0 + 5000.0, Y0 - 7000.0
    area_utm = box(x, y - 3000.0, x + 4000.0, y)
    aoi = shapely.transform(area_utm, lambda xy: np.column_stack(TO_LL.transform(xy[:, 0], xy[:, 1])))
    table, _ = plan_table_with_stats(_cfg(catalog, {"size_px": 32}, aoi=mapping(aoi)))
    cx, cy = _centres(table)
    chips = shapely.box(cx - 160, cy - 160, cx + 160, cy + 160)
    assert shapely.intersects(chips, area_utm.buffer(50)).all()
    # 320 m chips from the tile corner: columns 15..28 cover x 5000..9000 m, rows 21..31 cover y 7000..10000 m
    assert table.num_rows == 2 * 14 * 11


# --------------------------------------------------------------------------- gaussian
def test_gaussian_chips_lie_around_their_points_with_sigma(catalog: Path, tmp_path: Path) -> None:
    lon, lat = CENTRE_LL
    other = TO_LL.transform(X0 + 4000.0, Y0 - 4000.0)
    chips = {
        "size_px": 16,
        "sampling": {
            "strategy": "gaussian",
            "points": [[lon, lat], {"lon": other[0], "lat": other[1], "sigma_km": 0.5, "n": 300, "id": "corner"}],
            "sigma_km": 2.0,
            "chips_per_point": 2000,
        },
    }
    cfg = _cfg(catalog, chips)
    digest, n = build_plan(cfg, tmp_path / "g.parquet")
    frame, _ = read_plan(tmp_path / "g.parquet")
    table = pq.read_table(tmp_path / "g.parquet")
    assert plan_stats(tmp_path / "g.parquet")["stages"]["chips_drawn"] == 2300
    # every draw is a place: the same chips on both dates
    by_item: dict[str, set[tuple[int, int]]] = {}
    for item, r, c in _origins(table):
        by_item.setdefault(item, set()).add((r, c))
    a, b = by_item.values()
    assert a == b
    assert 2280 <= len(a) <= 2300  # a few draws may snap onto the same chip
    cx, cy = _centres(table)
    px, py = TO_UTM.transform(lon, lat)
    qx, qy = X0 + 4000.0, Y0 - 4000.0
    near_p = np.hypot(cx - px, cy - py) < np.hypot(cx - qx, cy - qy) + 1500  # the wide point's chips
    near_q = np.hypot(cx - qx, cy - qy) < 2500
    dx, dy = cx[near_p & ~near_q] - px, cy[near_p & ~near_q] - py
    # spread ≈ sigma per axis (2 km), centred on the point (UTM scale error ~1e-4)
    assert abs(dx.std() / 2000 - 1) < 0.08 and abs(dy.std() / 2000 - 1) < 0.08, (dx.std(), dy.std())
    assert abs(dx.mean()) < 200 and abs(dy.mean()) < 200
    ex, ey = cx[near_q] - qx, cy[near_q] - qy
    assert 2 * 280 <= len(ex) <= 2 * 300 + 2 * 20  # the small point's 300 draws (+ a few of the wide one)
    assert np.median(np.hypot(ex, ey)) < 0.5 * 1.1774 * 1000 * 1.25  # Rayleigh median 1.1774 sigma
    # snapped to the 10 m grid of the item, whole chips inside the tile
    tr = np.array(table.column("transform").to_pylist())
    assert np.all((tr[:, 2] - X0) % 10 == 0) and np.all((Y0 - tr[:, 5]) % 10 == 0)
    assert tr[:, 2].min() >= X0 and tr[:, 2].max() + 160 <= X0 + TILE_PX * 10
    # geometry column = the chip footprint in lon/lat
    centres_ll = shapely.centroid(frame.geometry.values)
    back = np.column_stack(TO_UTM.transform(shapely.get_x(centres_ll), shapely.get_y(centres_ll)))
    assert np.allclose(back, np.column_stack([cx, cy]), atol=0.5)
    # deterministic, and seeded
    assert build_plan(cfg, tmp_path / "again.parquet") == (digest, n)
    assert build_plan(cfg.model_copy(update={"seed": 1}), tmp_path / "s1.parquet")[0] != digest


def test_gaussian_draws_do_not_depend_on_other_points_or_their_order() -> None:
    grid = Grid(f"EPSG:{EPSG}", Affine(10, 0, X0, 0, -10, Y0), (TILE_PX, TILE_PX))
    lon, lat = CENTRE_LL
    one = {"strategy": "gaussian", "points": [[lon, lat]], "sigma_km": 1.0, "chips_per_point": 50}
    two = {**one, "points": [[lon + 0.2, lat], [lon, lat]]}
    a = chip_origins(ChipGridConfig(size_px=16, sampling=one), grid, seed=3)
    b = chip_origins(ChipGridConfig(size_px=16, sampling=two), grid, seed=3)
    assert len(a) == 50 and {tuple(x) for x in a.tolist()} <= {tuple(x) for x in b.tolist()}
    assert np.array_equal(a, chip_origins(ChipGridConfig(size_px=16, sampling=one), grid, seed=3))
    assert not np.array_equal(a, chip_origins(ChipGridConfig(size_px=16, sampling=one), grid, seed=4))


# --------------------------------------------------------------------------- random
def _ll(geom: shapely.Geometry) -> shapely.Geometry:
    return shapely.transform(geom, lambda xy: np.column_stack(TO_LL.transform(xy[:, 0], xy[:, 1])))


def test_random_chips_fill_their_aois_uniformly(catalog: Path) -> None:
    rect = box(X0 + 2000, Y0 - 9000, X0 + 8000, Y0 - 3000)  # 36 km²
    tri = shapely.Polygon([(X0 + 11000, Y0 - 2000), (X0 + 18000, Y0 - 2000), (X0 + 11000, Y0 - 12000)])
    aois = [mapping(_ll(rect)), mapping(_ll(tri))]
    chips = {"size_px": 8, "sampling": {"strategy": "random", "aois": aois, "chips_per_aoi": 800}}
    table, stats = plan_table_with_stats(_cfg(catalog, chips))
    assert stats.stages["chips_drawn"] == 1600
    one_date = table.filter(np.array([cid.startswith("S2A_T000_20240401:") for cid in table["chip_id"].to_pylist()]))
    cx, cy = _centres(one_date)
    in_rect = shapely.contains_xy(rect.buffer(8), cx, cy)  # snapping moves a centre by <= 7.1 m
    in_tri = shapely.contains_xy(tri.buffer(8), cx, cy)
    assert (in_rect | in_tri).all()
    assert 795 <= in_rect.sum() <= 800 and 795 <= in_tri.sum() <= 800
    # uniform: each quarter of the rectangle gets ~200 (binomial sd 12)
    qx, qy = cx[in_rect] < X0 + 5000, cy[in_rect] < Y0 - 6000
    quarters = [int(((qx == a) & (qy == b)).sum()) for a in (0, 1) for b in (0, 1)]
    assert all(150 <= q <= 250 for q in quarters), quarters
    # the triangle scaled by 1/2 at its right-angle corner holds 1/4 of its area (binomial sd 0.015)
    near = (cx[in_tri] - (X0 + 11000)) / 7000 + ((Y0 - 2000) - cy[in_tri]) / 10000 < 0.5
    assert 0.20 < near.mean() < 0.30


def test_random_per_km2_and_default_aoi(catalog: Path) -> None:
    rect_ll = _ll(box(X0 + 2000, Y0 - 9000, X0 + 8000, Y0 - 3000))
    area = aoi_area_km2(rect_ll)
    assert abs(area - 36) < 0.1  # UTM scale ~0.9996-1.0004 here
    chips = {"size_px": 8, "sampling": {"strategy": "random", "chips_per_km2": 10}}
    table, stats = plan_table_with_stats(_cfg(catalog, chips, aoi=mapping(rect_ll)))
    assert stats.stages["chips_drawn"] == round(10 * area)
    cx, cy = _centres(table)
    assert shapely.contains_xy(box(X0 + 2000, Y0 - 9000, X0 + 8000, Y0 - 3000).buffer(8), cx, cy).all()
    assert 2 * 355 <= table.num_rows <= 2 * round(10 * area)

    with pytest.raises(ConfigError, match=r"chips.sampling.aois: no AOI to sample"):
        plan_table_with_stats(_cfg(catalog, chips))


def test_random_is_deterministic() -> None:
    grid = Grid(f"EPSG:{EPSG}", Affine(10, 0, X0, 0, -10, Y0), (TILE_PX, TILE_PX))
    aoi = mapping(_ll(box(X0 + 2000, Y0 - 9000, X0 + 8000, Y0 - 3000)))
    chips = ChipGridConfig(size_px=8, sampling={"strategy": "random", "aois": [aoi], "chips_per_aoi": 99})
    a = Sampler(chips, 7).origins(grid)
    assert len(a) == 99 and np.array_equal(a, Sampler(chips, 7).origins(grid))
    assert not np.array_equal(a, Sampler(chips, 8).origins(grid))


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("chips", "message"),
    [
        ({"stride_px": 8, "sampling": {"strategy": "gaussian", "points": [[7, 45]]}}, "stride_px applies to grid"),
        ({"sampling": {"strategy": "gaussian", "points": []}}, "points"),
        ({"sampling": {"strategy": "gaussian", "points": [[7, 95]]}}, "lat"),
        ({"sampling": {"strategy": "gaussian", "points": [[7, 45, 3]]}}, "a point is [lon, lat]"),
        ({"sampling": {"strategy": "random", "chips_per_aoi": 5, "chips_per_km2": 1}}, "exactly one of"),
        (
            {
                "sampling": {
                    "strategy": "random",
                    "aois": [{"type": "Point", "coordinates": [7, 45]}],
                    "chips_per_aoi": 5,
                }
            },
            "aois[0] must be a valid polygon",
        ),
        ({"sampling": {"strategy": "spiral"}}, "does not match any of the expected tags"),
    ],
)
def test_bad_sampling_config_names_the_field(chips: dict, message: str) -> None:
    raw = {"kind": "data", "catalog": {"backend": "static", "url": "x"}, "chips": chips}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "data.yaml", DataConfig)
    assert message in str(err.value) and "chips" in str(err.value), str(err.value)


def test_sampling_config_round_trips_through_yaml_form() -> None:
    raw = {
        "kind": "data",
        "catalog": {"backend": "static", "url": "x"},
        "chips": {"sampling": {"strategy": "gaussian", "points": [[7.0, 45.0], {"lon": 8, "lat": 46, "n": 3}]}},
    }
    cfg = parse_config(raw, "t", DataConfig)
    again = parse_config(json.loads(cfg.model_dump_json()), "t", DataConfig)
    assert again == cfg and cfg.chips.sampling.points[1].n == 3
