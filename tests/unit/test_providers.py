"""Provider profiles on provider-shaped items over local GeoTIFFs: GRD via GCPs, units, offsets, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from eoforge.bands import S2_BAND_NAMES
from eoforge.catalog.providers import resolve_profile
from eoforge.catalog.radiometry import s2_dn_map
from eoforge.config import DataConfig, parse_config
from eoforge.data.calibration import GRD_APPROX_DB_OFFSET, s1_to_db
from eoforge.data.chip import read_chip
from eoforge.data.grid import ChipGrid
from eoforge.errors import CatalogError, ChipReadError
from eoforge.plan.io import build_plan, plan_stats, read_plan
from rasterio.enums import Resampling
from rasterio.transform import Affine

from tests.support.gdal_reference import read_band
from tests.support.provider_items import (
    S2_TRUTH,
    SIGN_LOG_ENV,
    RadarGeometry,
    Scene,
    cdse_s2_item,
    es_s2_item,
    pc_grd_item,
    pc_s2_item,
    rtc_item,
    utm_of,
    write_catalog,
    write_grd,
    write_tif,
)

T2021 = datetime(2021, 6, 15, 10, 15, 59, tzinfo=UTC)
T2023 = datetime(2023, 6, 15, 10, 15, 59, tzinfo=UTC)
NORTH = Scene(10.0, 45.0)
SOUTH = Scene(-60.0, -10.0)
TRUTH = np.array([S2_TRUTH[b] for b in S2_BAND_NAMES], np.float32)


def cfg(catalog: Path, provider: str, **catalog_extra: object) -> DataConfig:
    chips = catalog_extra.pop("chips", {"size_px": 64})
    pairing = catalog_extra.pop("pairing", {"max_days": 3})
    return parse_config(
        {
            "kind": "data",
            "catalog": {"backend": "static", "url": str(catalog), "provider": provider, **catalog_extra},
            "pairing": pairing,
            "chips": chips,
        },
        "test",
        DataConfig,
    )


def rows_of(path: Path) -> list[dict]:
    frame, _ = read_plan(path)
    return frame.drop(columns="geometry").to_dict("records")


# ------------------------------------------------------------------------------ S1 GRD via GCPs


@pytest.mark.parametrize("scene", [NORTH, SOUTH], ids=["north-east", "south-west"])
def test_gcp_grd_lands_a_known_feature_on_its_pixel(tmp_path: Path, scene: Scene) -> None:
    geom = RadarGeometry(scene.lon, scene.lat)
    feature = (140, 110)  # 3x3 bright block, rows 140-142, cols 110-112
    path = write_grd(tmp_path / "iw-vv.tiff", geom, 300, 260, feature)
    flon, flat = (float(v) for v in geom.lonlat(feature[1] + 1.5, feature[0] + 1.5))
    crs, to = utm_of(flon, flat)
    fx, fy = to.transform(flon, flat)
    x0, y0 = np.floor(fx / 10) * 10 - 400, np.floor(fy / 10) * 10 + 200
    grid = ChipGrid(crs, Affine(10, 0, x0, 0, -10, y0), 64)
    out = read_band(str(path), grid, Resampling.bilinear, np.nan)
    assert np.isfinite(out).all()  # the chip lies inside the swath: no NaN anywhere
    i, j = np.unravel_index(np.argmax(out), out.shape)
    exp_r, exp_c = (y0 - fy) / 10, (fx - x0) / 10
    assert abs(i + 0.5 - exp_r) <= 1.0 and abs(j + 0.5 - exp_c) <= 1.0, ((i, j), (exp_r, exp_c))
    assert np.median(out) == pytest.approx(75, abs=0.5)  # land, not the image corner


def test_file_without_crs_or_gcps_is_a_clear_error(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "bare.tif", np.full((50, 50), 80, np.uint16), None, None)
    grid = ChipGrid("EPSG:32632", Affine(10, 0, 500000, 0, -10, 5000000), 16)
    with pytest.raises(ChipReadError, match="no CRS and no GCPs"):
        read_band(str(path), grid, Resampling.bilinear, np.nan)


# ------------------------------------------------------------------------------ units


def test_s1_units_to_db() -> None:
    lin = np.array([[0.1, 0.0, -1.0, np.nan]], np.float32)
    db = s1_to_db(lin, "linear")
    assert db[0, 0] == pytest.approx(-10.0) and np.isnan(db[0, 1:]).all()  # <= 0 masked, never -inf
    dn = np.array([[100.0, 0.0]], np.float32)
    assert s1_to_db(dn, "amplitude")[0, 0] == pytest.approx(40.0 + GRD_APPROX_DB_OFFSET)
    assert np.isnan(s1_to_db(dn, "amplitude")[0, 1])
    lut = np.full((1, 2), 250.0, np.float32)
    assert s1_to_db(dn, "amplitude", lut)[0, 0] == pytest.approx(20 * np.log10(100 / 250), abs=1e-4)
    assert s1_to_db(np.array([[-12.0]], np.float32), "dB")[0, 0] == -12.0
    assert -50.0 < GRD_APPROX_DB_OFFSET < -49.0  # beta0 237, sigma0 at 37 degrees


def test_baseline_offset_rules_from_both_providers_metadata(tmp_path: Path) -> None:
    def band_map(item):
        key = next(k for k in item.assets if k in ("B04", "red", "B04_10m"))
        return s2_dn_map(item, item.assets[key])[:2]

    assert band_map(pc_s2_item(tmp_path / "a", NORTH, T2021, "03.00")) == (1.0, 0.0)
    assert band_map(pc_s2_item(tmp_path / "b", NORTH, T2023, "05.09")) == (1.0, -1000.0)
    assert band_map(cdse_s2_item(tmp_path / "c", NORTH, T2021, "03.00")) == (1.0, 0.0)
    assert band_map(cdse_s2_item(tmp_path / "d", NORTH, T2023, "05.09")) == (1.0, -1000.0)
    # Earth Search: the flag wins over the raster:bands offset it still advertises (never removed twice)
    assert band_map(es_s2_item(tmp_path / "e", NORTH, T2023, "05.09", boa_offset_applied=True)) == (1.0, 0.0)
    assert band_map(es_s2_item(tmp_path / "f", NORTH, T2023, "04.00", boa_offset_applied=False)) == (1.0, -1000.0)
    assert band_map(es_s2_item(tmp_path / "g", NORTH, T2021, "03.01", boa_offset_applied=False)) == (1.0, 0.0)


def test_profiles_map_provider_keys_and_config_declares_new_ones() -> None:
    assert resolve_profile("cdse").keys_for("B8A")[0] == "B8A_20m"
    assert resolve_profile("cdse").keys_for("SCL")[0] == "SCL_20m"
    assert resolve_profile("earth_search").keys_for("B8A")[0] == "nir08"
    assert resolve_profile("aws_rtc").keys_for("vv")[0] == "gamma0_vv"
    declared = {"s2_assets": {"B02": "band2"}, "s1_assets": {"vv": "VV_gamma"}, "s1_units": "linear", "name": "mine"}
    prof = resolve_profile("custom", declared)
    assert prof.name == "mine" and prof.keys_for("B02")[0] == "band2" and prof.units_for("any") == "linear"
    with pytest.raises(Exception, match="secrets never go in a config"):
        parse_config(
            {
                "kind": "data",
                "catalog": {"backend": "static", "url": "/x", "profile": {"gdal_env": {"AWS_SECRET_ACCESS_KEY": "x"}}},
            },
            "t",
            DataConfig,
        )


# ------------------------------------------------------------------------------ plans per provider


def read_all(path: Path) -> list:
    return [(row, read_chip(row, "none")) for row in rows_of(path)]


def test_planetary_computer_s2_grd_plan_skips_hh_item_and_reads_correct_units(tmp_path: Path) -> None:
    items = [
        pc_s2_item(tmp_path / "d", NORTH, T2023, "05.09"),
        pc_grd_item(tmp_path / "d", NORTH, T2023.replace(hour=17), feature=(200, 200)),
        # an EW HH/HV item closer in time: skipped (polarisation), never fatal
        pc_grd_item(tmp_path / "d", NORTH, T2023.replace(hour=11), pols=("HH", "HV"), mode="EW"),
    ]
    catalog = write_catalog(tmp_path, items)
    _, n = build_plan(cfg(catalog, "planetary_computer"), tmp_path / "plan.parquet")
    assert n == 9
    stats = plan_stats(tmp_path / "plan.parquet")
    assert stats["stages"]["s1_found"] == 2 and stats["stages"]["s1_usable"] == 1
    assert stats["skipped_by_reason"] == {"polarisation": 1}
    assert "HH" in stats["skipped_items"][0]["reason"]
    rows = rows_of(tmp_path / "plan.parquet")
    assert {r["s1_product"] for r in rows} == {"GRD"} and {r["s1_units"] for r in rows} == {"amplitude"}
    assert all(r["s1_item"] == items[1].id for r in rows)
    for row, chip in read_all(tmp_path / "plan.parquet"):
        assert np.allclose(chip.s2[:, 5:-5, 5:-5], TRUTH[:, None, None]), row["chip_id"]  # offset removed once
        db = chip.s1[0][chip.s1[0] != 0]
        assert np.median(db) == pytest.approx(20 * np.log10(75) + GRD_APPROX_DB_OFFSET, abs=0.01)
        assert chip.valid_fraction == 1.0


def test_grd_calibration_annotation_is_used_when_linked(tmp_path: Path) -> None:
    items = [
        pc_s2_item(tmp_path / "d", NORTH, T2023, "05.09"),
        pc_grd_item(tmp_path / "d", NORTH, T2023, feature=None, dn_value=100, calibration=250.0),
    ]
    build_plan(cfg(write_catalog(tmp_path, items), "planetary_computer"), tmp_path / "p.parquet")
    row, chip = read_all(tmp_path / "p.parquet")[0]
    assert json.loads(row["s1_calibration"])["vv"].endswith("calibration-iw-vv.xml")
    assert np.allclose(chip.s1, 20 * np.log10(100 / 250), atol=2**-7)  # S1 travels as float16 dB


@pytest.mark.parametrize("aws", [False, True], ids=["pc-rtc", "aws-rtc"])
def test_rtc_linear_gamma0_is_converted_to_db_and_zero_masked(tmp_path: Path, aws: bool) -> None:
    items = [pc_s2_item(tmp_path / "d", NORTH, T2021, "03.00"), rtc_item(tmp_path / "d", NORTH, T2021, aws=aws)]
    coll = "sentinel1-rtc-aws" if aws else "sentinel-1-rtc"
    profile = {"extends": "aws_rtc", "s2_assets": {}} if aws else None
    extra = {"s1_collection": coll, **({"profile": profile} if profile else {})}
    build_plan(cfg(write_catalog(tmp_path, items), "planetary_computer", **extra), tmp_path / "p.parquet")
    got = read_all(tmp_path / "p.parquet")
    assert {r["s1_units"] for r, _ in got} == {"linear"} and {r["s1_product"] for r, _ in got} == {"RTC"}
    first_col = [c for r, c in got if r["chip_id"].endswith(":0")]
    for row, chip in got:
        inner = chip.s1[:, :, 10:]  # away from the zero columns (bilinear blends them at 20 m -> 10 m)
        assert np.allclose(inner[0], 10 * np.log10(0.0631), atol=2**-7), row["chip_id"]
        assert np.allclose(inner[1], -20.0, atol=2**-6)  # float16 dB
        assert np.isfinite(chip.s1).all()
    assert all(c.valid_fraction < 1.0 for c in first_col)  # the zero columns are masked, not -inf


def test_earth_search_and_cdse_plans_read_same_units_before_and_after_2022(tmp_path: Path) -> None:
    for provider, make in (
        ("earth_search", lambda d, t, b: es_s2_item(d, NORTH, t, b, boa_offset_applied=float(b) >= 4)),
        ("earth_search", lambda d, t, b: es_s2_item(d, NORTH, t, b, boa_offset_applied=False)),
        ("cdse", lambda d, t, b: cdse_s2_item(d, NORTH, t, b)),
    ):
        root = tmp_path / f"{provider}-{len(list(tmp_path.iterdir()))}"
        items = [
            make(root / "d", T2021, "03.01"),
            make(root / "d", T2023, "05.09"),
            pc_grd_item(root / "d", NORTH, T2021, collection="sentinel-1-grd"),
            pc_grd_item(root / "d", NORTH, T2023, collection="sentinel-1-grd"),
        ]
        _, n = build_plan(cfg(write_catalog(root, items), provider), root / "p.parquet")
        assert n == 18
        for row, chip in read_all(root / "p.parquet"):
            assert np.allclose(chip.s2[:, 5:-5, 5:-5], TRUTH[:, None, None]), (provider, row["chip_id"])
    es_rows = rows_of(tmp_path / next(p.name for p in tmp_path.iterdir() if p.name.startswith("earth")) / "p.parquet")
    access = json.loads(es_rows[0]["access"])
    assert access["s1"]["env"]["AWS_REQUEST_PAYER"] == "requester"  # GRD bucket is requester-pays
    assert access["s2"]["env"]["AWS_NO_SIGN_REQUEST"] == "YES"


# ------------------------------------------------------------------------------ bbox, signing, errors


def test_bbox_clips_the_chip_grid(tmp_path: Path) -> None:
    items = [pc_s2_item(tmp_path / "d", NORTH, T2023, "05.09"), pc_grd_item(tmp_path / "d", NORTH, T2023)]
    catalog = write_catalog(tmp_path, items)
    _, full = build_plan(cfg(catalog, "planetary_computer", chips={"size_px": 32}), tmp_path / "full.parquet")
    assert full == 36
    # a bbox of ~300 m around the tile centre: only the chips it touches
    d = 0.0015
    bbox = [NORTH.lon - d, NORTH.lat - d, NORTH.lon + d, NORTH.lat + d]
    _, n = build_plan(cfg(catalog, "planetary_computer", bbox=bbox, chips={"size_px": 32}), tmp_path / "b.parquet")
    assert 1 <= n <= 9
    frame, _ = read_plan(tmp_path / "b.parquet")
    from shapely.geometry import box

    assert all(g.intersects(box(*bbox)) for g in frame.geometry)
    stats = plan_stats(tmp_path / "b.parquet")["stages"]
    assert stats["chips_on_grid"] == 36 and stats["chips_in_aoi"] == n


def test_signing_hook_runs_on_each_read_and_signed_urls_never_reach_the_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [pc_s2_item(tmp_path / "d", NORTH, T2023, "05.09"), pc_grd_item(tmp_path / "d", NORTH, T2023)]
    signing = "test_recording"
    build_plan(cfg(write_catalog(tmp_path, items), "planetary_computer", signing=signing), tmp_path / "p.parquet")
    log = tmp_path / "sign.log"
    monkeypatch.setenv(SIGN_LOG_ENV, str(log))
    rows = rows_of(tmp_path / "p.parquet")
    read_chip(rows[0], "none")
    read_chip(rows[1], "none")
    calls = log.read_text().splitlines()
    assert len(calls) == 2 * (12 + 1 + 2)  # 12 S2 bands + SCL + VV + VH, per read
    assert "SECRET-SAS-TOKEN" not in (tmp_path / "p.parquet").read_bytes().decode("latin-1")
    table = pq.read_table(tmp_path / "p.parquet")
    assert not any("sig=" in str(v) for col in table.columns for v in col.to_pylist())
    assert json.loads(rows[0]["access"])["s1"]["signing"] == signing


def test_empty_plans_name_the_filter(tmp_path: Path) -> None:
    s2 = pc_s2_item(tmp_path / "d", NORTH, T2023, "05.09")
    far = pc_grd_item(tmp_path / "d", NORTH, T2023.replace(day=25))
    catalog = write_catalog(tmp_path / "a", [s2, far])
    with pytest.raises(CatalogError, match=r"pairing window.*10\.0 days.*max_days=3"):
        build_plan(cfg(catalog, "planetary_computer"), tmp_path / "x.parquet")
    hh = pc_grd_item(tmp_path / "d2", NORTH, T2023, pols=("HH", "HV"), mode="EW")
    with pytest.raises(CatalogError, match=r"all 1 S1 items were skipped.*polarisation"):
        build_plan(cfg(write_catalog(tmp_path / "b", [s2, hh]), "planetary_computer"), tmp_path / "x.parquet")
    elsewhere = pc_grd_item(tmp_path / "d3", SOUTH, T2023)
    with pytest.raises(CatalogError, match="overlap: no S1 footprint intersects"):
        build_plan(cfg(write_catalog(tmp_path / "c", [s2, elsewhere]), "planetary_computer"), tmp_path / "x.parquet")
    catalog = write_catalog(tmp_path / "e", [s2, pc_grd_item(tmp_path / "d4", NORTH, T2023)])
    with pytest.raises(CatalogError, match="cloud cover"):
        build_plan(cfg(catalog, "planetary_computer", max_cloud_cover=1), tmp_path / "x.parquet")
    far_bbox = [NORTH.lon + 1, NORTH.lat + 1, NORTH.lon + 1.1, NORTH.lat + 1.1]
    with pytest.raises(CatalogError, match="bbox"):
        build_plan(cfg(catalog, "planetary_computer", bbox=far_bbox), tmp_path / "x.parquet")
    cdse = write_catalog(tmp_path / "f", [cdse_s2_item(tmp_path / "d5", NORTH, T2023, "05.09"), hh, far])
    with pytest.raises(CatalogError, match=r"all 1 S2 items were skipped.*missing band"):
        build_plan(cfg(cdse, "earth_search"), tmp_path / "x.parquet")  # CDSE keys under the Earth Search profile


@pytest.mark.parametrize(
    "name", ["planetary-computer", "planetary-computer-rtc", "earth-search", "cdse", "custom-provider"]
)
def test_provider_configs_load_and_carry_no_secrets(name: str) -> None:
    from eoforge.config import load_config

    path = Path(__file__).resolve().parents[2] / "configs" / "data" / f"{name}.yaml"
    c = load_config(path, DataConfig)
    assert c.catalog.backend == "stac_api" and c.catalog.signing is not None
    dumped = c.model_dump_json().upper()
    assert 'SECRET_ACCESS_KEY"' not in dumped and 'SUBSCRIPTION_KEY"' not in dumped
    resolve_profile(c.catalog.provider, c.catalog.profile.model_dump(exclude_none=True) if c.catalog.profile else None)
