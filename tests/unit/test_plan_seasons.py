"""Multi-season sampling: one S2 scene per season per location, SCL clear fractions, place ids (no Ray).

Two small S2 tiles (128 x 128 px at 10 m; SCL 64 x 64 at 20 m) — one north of the equator with an
MGRS tile property, one south of it known only by its proj grid — each with 12 monthly S2 scenes
of the meteorological year 2021 (December 2020 .. November 2021) at chosen cloud covers, and an S1
scene a day after each. Band assets share one GeoTIFF per tile (the planner reads only the SCL);
each S2 scene has its own SCL with known cloud / shadow / no-data blocks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pystac
import pytest
from eoforge.bands import S2_BAND_NAMES, S2_SCL_INVALID
from eoforge.config import DataConfig, load_config, parse_config
from eoforge.config.data import SeasonsConfig
from eoforge.errors import CatalogError, ConfigError
from eoforge.plan.build import Grid, PlanStats, split_of
from eoforge.plan.clear import clear_fractions
from eoforge.plan.io import build_plan, plan_stats, read_plan
from eoforge.plan.seasons import (
    location_key,
    place_id,
    season_label,
    seasonal_rows,
    select_seasonal,
    select_seasonal_report,
)
from pyproj import Transformer
from rasterio.transform import Affine

from tests.support.provider_items import write_catalog, write_tif

REPO = Path(__file__).resolve().parents[2]
PX = 128  # tile side, 10 m pixels
CHIP = 32  # chip side, 10 m pixels: 4 x 4 chips per tile
#: The 12 acquisition months of the meteorological year 2021, Dec 2020 first.
MONTHS = [(2020, 12)] + [(2021, m) for m in range(1, 12)]


@dataclass(frozen=True)
class Tile:
    """One S2 tile: UTM CRS, upper-left corner, and whether it publishes its MGRS tile id."""

    name: str
    lon: float
    lat: float
    epsg: int
    mgrs: str | None

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def origin(self) -> tuple[float, float]:
        x, y = Transformer.from_crs("EPSG:4326", self.crs, always_xy=True).transform(self.lon, self.lat)
        return float(np.floor(x / 60) * 60), float(np.ceil(y / 60) * 60)

    def transform(self, res: int) -> Affine:
        x0, y0 = self.origin
        return Affine(res, 0, x0, 0, -res, y0)

    def footprint(self, margin_m: float = 0.0) -> dict:
        x0, y0 = self.origin
        ext = PX * 10
        to_ll = Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)
        xa, xb, ya, yb = x0 - margin_m, x0 + ext + margin_m, y0 - ext - margin_m, y0 + margin_m
        ring = [(xa, yb), (xb, yb), (xb, ya), (xa, ya), (xa, yb)]
        return {"type": "Polygon", "coordinates": [[list(to_ll.transform(x, y)) for x, y in ring]]}


NORTH = Tile("north", 9.3, 45.0, 32632, "32TNR")
SOUTH = Tile("south", 151.0, -33.8, 32756, None)

#: eo:cloud_cover per month (order of MONTHS: Dec, Jan, ..., Nov).
CLOUD = {
    # DJF: Jan and Feb tie at 10 (the earlier, Jan, wins); MAM: Apr; JJA: all >= 30 (missing
    # under 30, Aug under a JJA threshold of 40); SON: Sep.
    "north": [50, 10, 10, 25, 5, 40, 80, 60, 35, 15, 15, 29.9],
    # DJF: all cloudy (missing); MAM: May; JJA: Jun; SON: Oct.
    "south": [70, 90, 45, 28, 12, 3, 20, 20, 50, 22, 4, 33],
}


def _bbox(geometry: dict) -> list[float]:
    coords = np.array(geometry["coordinates"][0])
    return [float(coords[:, 0].min()), float(coords[:, 1].min()), float(coords[:, 0].max()), float(coords[:, 1].max())]


def scl_blocks() -> np.ndarray:
    """The SCL (64 x 64 at 20 m) of every scene: vegetation (4) with known invalid blocks.

    - cloud (9) over SCL rows/cols 0..31: the 4 upper-left chips (rows, cols 0..63 at 10 m) are 0 % clear;
    - cloud shadow (3) over SCL rows 32..39, cols 32..47: chip (row 64, col 64) is 50 % clear;
    - no data (0) over SCL rows 48..63, cols 60..63: chip (row 96, col 96) is 75 % clear.
    """
    scl = np.full((PX // 2, PX // 2), 4, np.uint8)
    scl[0:32, 0:32] = 9
    scl[32:40, 32:48] = 3
    scl[48:64, 60:64] = 0
    return scl


#: Clear fraction of the chip at (row, col) (10 m pixel offsets) under :func:`scl_blocks`.
EXPECTED_CLEAR = {(r, c): 1.0 for r in range(0, PX, CHIP) for c in range(0, PX, CHIP)}
EXPECTED_CLEAR.update({(0, 0): 0.0, (0, 32): 0.0, (32, 0): 0.0, (32, 32): 0.0, (64, 64): 0.5, (96, 96): 0.75})


def s2_item(root: Path | None, tile: Tile, when: datetime, cloud: float | None, suffix: str = "") -> pystac.Item:
    """An S2 L2A item of the tile (eoforge asset keys); with ``root``, its SCL and the shared bands on disk."""
    item_id = f"S2_{tile.name}_{when:%Y%m%d}{suffix}"
    geom = tile.footprint()
    props: dict[str, object] = {"proj:code": tile.crs, "platform": "sentinel-2a"}
    if cloud is not None:
        props["eo:cloud_cover"] = cloud
    if tile.mgrs:
        props["s2:mgrs_tile"] = tile.mgrs
    item = pystac.Item(item_id, geom, _bbox(geom), when, props, collection="sentinel-2-l2a")
    bands = root / tile.name / "bands.tif" if root else Path("/nonexistent/bands.tif")
    if root is not None and not bands.exists():
        write_tif(bands, np.full((PX, PX), 1000, np.uint16), tile.crs, tile.transform(10), nodata=0)
    grid10 = {"proj:shape": [PX, PX], "proj:transform": list(tile.transform(10))[:6]}
    for band in S2_BAND_NAMES:
        item.add_asset(band, pystac.Asset(f"file://{bands}", roles=["data"], extra_fields=dict(grid10)))
    scl = root / tile.name / f"{item_id}_SCL.tif" if root else Path(f"/nonexistent/{item_id}_SCL.tif")
    if root is not None:
        write_tif(scl, scl_blocks(), tile.crs, tile.transform(20), nodata=0)
    grid20 = {"proj:shape": [PX // 2, PX // 2], "proj:transform": list(tile.transform(20))[:6]}
    item.add_asset("SCL", pystac.Asset(f"file://{scl}", roles=["data"], extra_fields=grid20))
    return item


def s1_item(root: Path, tile: Tile, when: datetime) -> pystac.Item:
    """An S1 item (dB, eoforge asset keys) covering the tile with a 1 km margin."""
    item_id = f"S1_{tile.name}_{when:%Y%m%d}"
    geom = tile.footprint(margin_m=1000)
    props = {"sar:polarizations": ["VV", "VH"], "sar:product_type": "GRD"}
    item = pystac.Item(item_id, geom, _bbox(geom), when, props, collection="sentinel-1-grd")
    path = root / tile.name / "s1.tif"
    if not path.exists():
        write_tif(path, np.full((PX, PX), -12.0, np.float32), tile.crs, tile.transform(10), nodata=-9999.0)
    for band in ("vv", "vh"):
        item.add_asset(band, pystac.Asset(f"file://{path}", roles=["data"]))
    return item


def year_items(root: Path | None, tiles: tuple[Tile, ...] = (NORTH, SOUTH)) -> list[pystac.Item]:
    """12 monthly S2 items per tile (10th of each month, 10:30 UTC) at the CLOUD covers."""
    items = []
    for tile in tiles:
        for (y, m), cloud in zip(MONTHS, CLOUD[tile.name], strict=True):
            items.append(s2_item(root, tile, datetime(y, m, 10, 10, 30, tzinfo=UTC), cloud))
    return items


def chosen(items: list[pystac.Item]) -> dict[tuple[str, str], str]:
    """(tile name, season label) -> item id."""
    cfg = SeasonsConfig(max_cloud_cover=30)
    return {(it.id.split("_")[1], str(season_label(it, cfg))): it.id for it in items}


# ----------------------------------------------------------------------------------------- selection


def test_one_least_cloudy_scene_per_season_per_location() -> None:
    items = year_items(None)
    stats = PlanStats()
    kept = select_seasonal(items, SeasonsConfig(max_cloud_cover=30), stats)
    assert chosen(kept) == {
        ("north", "2021-DJF"): "S2_north_20210110",  # tie with Feb at 10 %: the earlier date
        ("north", "2021-MAM"): "S2_north_20210410",
        ("north", "2021-SON"): "S2_north_20210910",  # tie with Oct at 15 %
        ("south", "2021-MAM"): "S2_south_20210510",
        ("south", "2021-JJA"): "S2_south_20210610",
        ("south", "2021-SON"): "S2_south_20211010",
    }
    # every location x season slot is counted, the cloudy ones as missing, the rest as dropped
    st = stats.stages
    assert st["s2_seasonal"] == 6
    assert (st["season_slots"], st["season_slots_missing"]) == (8, 2)
    assert st["season_missing_JJA"] == 1 and st["season_missing_DJF"] == 1
    assert "season_missing_MAM" not in st
    assert st["s2_season_cloudy"] == 5 + 5  # at or over 30: north 50, 40, 80, 60, 35; south 70, 90, 45, 50, 33
    assert st["s2_season_not_best"] == 4 + 4
    assert st["s2_season_out"] == 0
    assert st["s2_seasonal"] + st["s2_season_cloudy"] + st["s2_season_not_best"] == 24


def test_selection_is_deterministic_and_order_free() -> None:
    items = year_items(None)
    # a same-time, same-cloud twin of the September scene: the smaller id wins
    twin = s2_item(None, NORTH, datetime(2021, 9, 10, 10, 30, tzinfo=UTC), 15, suffix="_a")
    cfg = SeasonsConfig(max_cloud_cover=30)
    first = [it.id for it in select_seasonal([*items, twin], cfg)]
    for seed in range(3):
        shuffled = [*items, twin]
        random.Random(seed).shuffle(shuffled)
        assert [it.id for it in select_seasonal(shuffled, cfg)] == first
    assert "S2_north_20210910" in first and "S2_north_20210910_a" not in first


def test_season_threshold_and_year_filter() -> None:
    items = year_items(None)
    # a JJA threshold of 40 admits August (35) in the north and nothing new in the south (all JJA < 30)
    sel = select_seasonal_report(items, SeasonsConfig(max_cloud_cover=30, season_max_cloud_cover={"JJA": 40}))
    assert sel.chosen[("MGRS-32TNR", "JJA", None)] == "S2_north_20210810"
    assert [(loc, name) for loc, name, _ in sel.missing] == [(location_key(items[12]), "DJF")]
    # year 2022 has none of these scenes: all dropped as out of season, every slot missing
    stats = PlanStats()
    assert select_seasonal(items, SeasonsConfig(max_cloud_cover=30, year=2022), stats) == []
    assert stats.stages["s2_season_out"] == 24 and stats.stages["season_slots_missing"] == 0
    # year 2021 keeps all (December 2020 is in 2021-DJF)
    assert len(select_seasonal(items, SeasonsConfig(max_cloud_cover=30, year=2021))) == 6


def test_no_cloud_cover_property() -> None:
    when = datetime(2021, 7, 1, tzinfo=UTC)
    bare = s2_item(None, NORTH, when, None)
    stats = PlanStats()
    assert select_seasonal([bare], SeasonsConfig(max_cloud_cover=50), stats) == []
    assert stats.stages["s2_season_cloudy"] == 1
    # with no filter (100) it is kept, but ranked after any scene that reports a cover
    cloudy = s2_item(None, NORTH, when + timedelta(days=5), 99)
    kept = select_seasonal([bare, cloudy], SeasonsConfig(max_cloud_cover=100))
    assert [it.id for it in kept] == [cloudy.id]
    assert [it.id for it in select_seasonal([bare], SeasonsConfig(max_cloud_cover=100))] == [bare.id]


def test_location_keys() -> None:
    jan = datetime(2021, 1, 1, tzinfo=UTC)
    north, south = s2_item(None, NORTH, jan, 1), s2_item(None, SOUTH, jan, 1)
    assert location_key(north) == "MGRS-32TNR"
    x0, y0 = SOUTH.origin
    assert location_key(south) == f"EPSG:32756:{int(x0)}:{int(y0)}"  # the 10 m grid's corner
    for props, key in (
        ({"grid:code": "MGRS-32TNR"}, "MGRS-32TNR"),
        ({"mgrs:utm_zone": 32, "mgrs:latitude_band": "T", "mgrs:grid_square": "NR"}, "MGRS-32TNR"),
    ):
        item = pystac.Item("x", south.geometry, south.bbox, south.datetime, props)
        assert location_key(item) == key
    bare = pystac.Item("y", south.geometry, south.bbox, south.datetime, {})
    assert location_key(bare).startswith("lonlat:151.0")
    with pytest.raises(CatalogError, match="item z: no MGRS tile"):
        location_key(pystac.Item("z", None, None, south.datetime, {}))


def test_hemispheric_and_custom_seasons() -> None:
    jan = datetime(2021, 1, 15, tzinfo=UTC)
    north, south = s2_item(None, NORTH, jan, 1), s2_item(None, SOUTH, jan, 1)
    hemi = SeasonsConfig(scheme="hemispheric")
    assert (season_label(north, hemi), season_label(south, hemi)) == ("2021-winter", "2021-summer")
    jul = s2_item(None, SOUTH, datetime(2021, 7, 15, tzinfo=UTC), 1)
    assert season_label(jul, hemi) == "2021-winter"
    met = SeasonsConfig()
    assert season_label(s2_item(None, NORTH, datetime(2020, 12, 31, tzinfo=UTC), 1), met) == "2021-DJF"
    wet = SeasonsConfig(scheme="custom", months={"wet": [11, 12, 1, 2, 3], "dry": [5, 6, 7, 8, 9]})
    assert season_label(s2_item(None, NORTH, datetime(2020, 11, 2, tzinfo=UTC), 1), wet) == "2021-wet"
    assert season_label(s2_item(None, NORTH, datetime(2021, 4, 2, tzinfo=UTC), 1), wet) is None  # April: no season
    stats = PlanStats()
    kept = select_seasonal(year_items(None, (NORTH,)), wet.model_copy(update={"max_cloud_cover": 30}), stats)
    # wet: Dec 50, Jan 10, Feb 10, Mar 25, Nov 29.9 (of wet 2022) -> Jan; dry: May 40 .. Aug 35, Sep 15 -> Sep
    assert sorted(it.id for it in kept) == ["S2_north_20210110", "S2_north_20210910"]
    assert stats.stages["s2_season_out"] == 2  # April and October


def test_per_year_keeps_one_scene_per_season_and_year() -> None:
    items = year_items(None, (NORTH,))
    later = [s2_item(None, NORTH, datetime(2022, m, 10, tzinfo=UTC), 5) for m in (1, 4)]
    cfg = SeasonsConfig(max_cloud_cover=30, per_year=True)
    sel = select_seasonal_report(items + later, cfg)
    assert sel.chosen[("MGRS-32TNR", "DJF", 2022)] == "S2_north_20220110"
    assert sel.chosen[("MGRS-32TNR", "DJF", 2021)] == "S2_north_20210110"
    assert ("MGRS-32TNR", "JJA", 2022) in sel.missing and ("MGRS-32TNR", "JJA", 2021) in sel.missing
    assert len(sel.items) == 5
    # without per_year, the clearest of both years wins each season
    assert len(select_seasonal(items + later, SeasonsConfig(max_cloud_cover=30))) == 3


def test_seasons_config_errors() -> None:
    for raw, message in (
        ({"scheme": "custom"}, "scheme 'custom' needs months"),
        ({"months": {"a": [1]}}, "months apply to scheme 'custom' only"),
        ({"scheme": "custom", "months": {"a": [1, 2], "b": [2]}}, "month 2 is in both seasons 'a' and 'b'"),
        ({"scheme": "custom", "months": {"a": [13]}}, "seasons.months.a.0: Input should be less than or equal to 12"),
        ({"season_max_cloud_cover": {"summer": 10}}, "unknown season(s) ['summer']"),
        ({"min_clear_fraction": 1.5}, "seasons.min_clear_fraction: Input should be less than or equal to 1"),
        ({"max_cloud": 3}, "seasons.max_cloud: unknown key"),
    ):
        raw_cfg = {"kind": "data", "catalog": {"backend": "static", "url": "x"}, "seasons": raw}
        with pytest.raises(ConfigError) as err:
            parse_config(raw_cfg, "d.yaml", DataConfig)
        assert message in str(err.value), str(err.value)


@pytest.mark.parametrize("path", sorted((REPO / "configs/data").glob("*.yaml")), ids=lambda p: p.name)
def test_data_configs_load(path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EOFORGE_HOME", str(tmp_path))
    cfg = load_config(path, DataConfig)
    if path.name == "multi-season.yaml":
        assert cfg.seasons is not None and cfg.seasons.min_clear_fraction > 0


# ----------------------------------------------------------------------------------------- clear fractions


def _naive_clear(scl: np.ndarray, scl_tr: Affine, grid: Grid, origins: np.ndarray, size: int, sub: int) -> np.ndarray:
    """Per chip: the share of its ``sub`` x ``sub`` sub-pixels (per chip pixel) whose SCL pixel is clear."""
    out = []
    valid = ~np.isin(scl, S2_SCL_INVALID)
    inv = ~scl_tr
    for r, c in origins:
        n = size * sub
        frac = (np.arange(n) + 0.5) / sub
        x, y = grid.transform * (c + frac[None, :], r + frac[:, None])
        col, row = inv * (x, y)
        col, row = np.floor(col).astype(int), np.floor(row).astype(int)
        inside = (row >= 0) & (row < scl.shape[0]) & (col >= 0) & (col < scl.shape[1])
        ok = np.zeros((n, n), bool)
        ok[inside] = valid[row[inside], col[inside]]
        out.append(ok.mean())
    return np.array(out)


def test_clear_fractions_equal_a_per_chip_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scl = rng.choice(np.arange(12, dtype=np.uint8), size=(50, 70))
    scl[10:30, 20:50] = 9  # a cloud block
    scl_tr = Affine(20, 0, 300000, 0, -20, 5000040)
    href = write_tif(tmp_path / "scl.tif", scl, "EPSG:32632", scl_tr, nodata=0)
    # 10 m chips at any offset (odd, partly outside the SCL), then 30 m chips (pixels straddle SCL pixels)
    grid10 = Grid("EPSG:32632", Affine(10, 0, 300000, 0, -10, 5000040), (100, 140))
    origins = np.concatenate([rng.integers(-10, 100, (300, 2)), [[0, 0], [40, 60], [96, 136]]]).astype(np.int64)
    got = clear_fractions(str(href), grid10, origins, 13)
    assert got.dtype == np.float32 and got.shape == (303,)
    np.testing.assert_array_equal(got, _naive_clear(scl, scl_tr, grid10, origins, 13, 1).astype(np.float32))
    grid30 = Grid("EPSG:32632", Affine(30, 0, 300000, 0, -30, 5000040), (33, 46))
    origins30 = rng.integers(-3, 33, (100, 2)).astype(np.int64)
    got30 = clear_fractions(f"file://{href}", grid30, origins30, 5)
    np.testing.assert_allclose(got30, _naive_clear(scl, scl_tr, grid30, origins30, 5, 3), atol=1e-6)
    # a chip wholly on the cloud block, one wholly outside, an empty batch
    assert clear_fractions(str(href), grid10, np.array([[20, 40], [500, 500]]), 20).tolist() == [0.0, 0.0]
    assert clear_fractions(str(href), grid10, np.zeros((0, 2), np.int64), 20).shape == (0,)


def test_clear_fractions_errors_name_the_href(tmp_path: Path) -> None:
    grid = Grid("EPSG:32632", Affine(10, 0, 0, 0, -10, 0), (10, 10))
    one = np.array([[0, 0]])
    with pytest.raises(CatalogError, match=r"SCL .*missing\.tif: unreadable"):
        clear_fractions(str(tmp_path / "missing.tif"), grid, one, 4)
    other = write_tif(tmp_path / "utm33.tif", np.full((5, 5), 4, np.uint8), "EPSG:32633", Affine(20, 0, 0, 0, -20, 0))
    with pytest.raises(CatalogError, match=r"utm33\.tif: CRS EPSG:32633 differs"):
        clear_fractions(str(other), grid, one, 4)
    with pytest.raises(ValueError, match=r"int array \[N, 2\]"):
        clear_fractions(str(other), grid, np.zeros((2, 3), np.int64), 4)


def test_clear_fractions_sign_the_href(tmp_path: Path) -> None:
    href = write_tif(tmp_path / "scl.tif", scl_blocks(), NORTH.crs, NORTH.transform(20), nodata=0)
    seen: list[str] = []

    def sign(h: str) -> str:
        seen.append(h)
        return h.removeprefix("unsigned:")

    grid = Grid(NORTH.crs, NORTH.transform(10), (PX, PX))
    origins = np.array(list(EXPECTED_CLEAR), np.int64)
    got = clear_fractions(f"unsigned:{href}", grid, origins, CHIP, sign=sign)
    assert seen == [f"unsigned:{href}"]  # one read for the whole batch
    assert got.tolist() == list(EXPECTED_CLEAR.values())


# ----------------------------------------------------------------------------------------- end to end


def _catalog(root: Path, drop_scl: str | None = None) -> Path:
    s2 = year_items(root)
    s1 = [s1_item(root, NORTH if it.id.startswith("S2_north") else SOUTH, it.datetime + timedelta(days=1)) for it in s2]
    if drop_scl:
        Path(next(it for it in s2 if it.id == drop_scl).assets["SCL"].href.removeprefix("file://")).unlink()
    return write_catalog(root, s2 + s1)


def _cfg(catalog: Path, **seasons: object) -> DataConfig:
    raw = {
        "kind": "data",
        "catalog": {"backend": "static", "url": str(catalog), "max_cloud_cover": 100},
        "pairing": {"max_days": 2},
        "chips": {"size_px": CHIP},
        "seasons": {"max_cloud_cover": 30, **seasons},
    }
    return parse_config(raw, "test", DataConfig)


def test_plan_holds_one_clear_scene_per_season_per_location(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    build_plan(_cfg(catalog, min_clear_fraction=0.6), tmp_path / "plan.parquet")
    plan, _ = read_plan(tmp_path / "plan.parquet")
    # exactly the 6 chosen scenes, one per (location, season)
    per_item = plan.groupby("s2_item")["season"].first().to_dict()
    assert per_item == {
        "S2_north_20210110": "2021-DJF",
        "S2_north_20210410": "2021-MAM",
        "S2_north_20210910": "2021-SON",
        "S2_south_20210510": "2021-MAM",
        "S2_south_20210610": "2021-JJA",
        "S2_south_20211010": "2021-SON",
    }
    # per scene: 16 chips, 4 under cloud (0 %) and 1 half shaded (50 %) dropped under 0.6, 11 kept
    assert plan.groupby("s2_item").size().tolist() == [11] * 6
    for row in plan.itertuples():
        x0, y0 = row.transform[2], row.transform[5]
        tile = NORTH if row.s2_item.startswith("S2_north") else SOUTH
        key = (round((tile.origin[1] - y0) / 10), round((x0 - tile.origin[0]) / 10))
        assert row.clear_fraction == EXPECTED_CLEAR[key], (row.chip_id, row.clear_fraction)
        assert row.clear_fraction >= 0.6
        assert row.place_id == place_id(row.crs, x0, y0)
    assert sorted(set(plan.clear_fraction)) == [0.75, 1.0]
    # a place has the same id and split in every season
    by_place = plan.groupby("place_id")
    assert set(by_place.size()) == {3}  # 3 seasons per location
    assert (by_place["split"].nunique() == 1).all()
    assert (by_place["s2_item"].nunique() == 3).all()
    for pid, split in by_place["split"].first().items():
        crs, x, y = pid.rsplit(":", 2)
        assert split == split_of(crs, float(x), float(y), 0, _cfg(catalog).splits)
    stats = plan_stats(tmp_path / "plan.parquet")
    st = stats["stages"]
    assert (st["s2_seasonal"], st["season_slots"], st["season_slots_missing"], st["pairs_seasonal"]) == (6, 8, 2, 6)
    assert st["chips_clear"] == 66
    assert stats["skipped_chips"] == {"clear: clear fraction below seasons.min_clear_fraction=0.6": 30}


def test_plan_without_seasons_has_null_season_columns(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    raw_cfg = _cfg(catalog).model_copy(update={"seasons": None})
    build_plan(raw_cfg, tmp_path / "plan.parquet")
    plan, _ = read_plan(tmp_path / "plan.parquet")
    assert len(plan) == 24 * 16
    assert plan[["clear_fraction", "season", "place_id"]].isna().all().all()


def test_unreadable_scl_skips_the_item_and_all_cloudy_fails_naming_the_filter(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path / "a", drop_scl="S2_north_20210410")
    build_plan(_cfg(catalog), tmp_path / "a.parquet")
    plan, _ = read_plan(tmp_path / "a.parquet")
    assert "S2_north_20210410" not in set(plan.s2_item) and plan.s2_item.nunique() == 5
    assert len(plan) == 5 * 16  # min_clear_fraction 0: every chip kept, fractions recorded
    stats = plan_stats(tmp_path / "a.parquet")
    assert stats["skipped_by_reason"] == {"scl": 1}
    assert "S2_north_20210410_SCL.tif: unreadable" in stats["skipped_items"][0]["reason"]
    assert stats["skipped_chips"] == {"clear: SCL unreadable": 16}
    # an area inside the cloudy upper-left chip of the north tile: every chip there is dropped
    x, y = NORTH.origin
    lon, lat = Transformer.from_crs(NORTH.crs, "EPSG:4326", always_xy=True).transform(x + 100, y - 100)
    cloudy = _cfg(catalog, min_clear_fraction=0.1)
    cloudy.catalog.bbox = (lon - 4e-4, lat - 4e-4, lon + 4e-4, lat + 4e-4)
    with pytest.raises(CatalogError, match=r"no chips planned: clear: every chip left was dropped"):
        build_plan(cloudy, tmp_path / "b.parquet")
    with pytest.raises(CatalogError, match=r"seasons: none of the 24 paired S2 items is in a season of 2030"):
        build_plan(_cfg(catalog, year=2030), tmp_path / "c.parquet")


def test_item_without_scl() -> None:
    item = s2_item(None, NORTH, datetime(2021, 7, 10, tzinfo=UTC), 5)
    grid = Grid(NORTH.crs, NORTH.transform(10), (PX, PX))
    x0, y0 = NORTH.origin

    def rows() -> list[dict[str, object]]:
        return [
            {"crs": NORTH.crs, "size_px": CHIP, "transform": [10.0, 0.0, x0 + 320 * k, 0.0, -10.0, y0]}
            for k in range(3)
        ]

    stats = PlanStats()
    assert seasonal_rows(rows(), item, None, grid, SeasonsConfig(min_clear_fraction=0.5), stats) == []
    assert stats.skipped_chips == {"clear: S2 item has no SCL asset (seasons.min_clear_fraction > 0)": 3}
    kept = seasonal_rows(rows(), item, None, grid, SeasonsConfig(), stats)
    assert [(r["clear_fraction"], r["season"]) for r in kept] == [(None, "2021-JJA")] * 3
    assert kept[1]["place_id"] == f"{NORTH.crs}:{int(x0) + 320}:{int(y0)}"
