"""Values no sensor measures in their declared units: skipped and counted with the cause, or the job stops.

Provider-shaped items (real GeoTIFFs, tests/support/provider_items.py) are planned through the wrong
provider profile by eoforge's planner and read by the real reader (rasterio, the stream's code path).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from eoforge.config import DataConfig, PretrainConfig, parse_config
from eoforge.config.finetune import FinetuneConfig
from eoforge.data import plausibility
from eoforge.data.chip import read_chip_raw
from eoforge.data.dataset import epoch_window_sets, iter_chip_blocks, plan_windows
from eoforge.data.plan_check import check_plan_items
from eoforge.data.plausibility import ItemNames, s1_reason, s2_reason
from eoforge.errors import ChipReadError, ImplausibleDataError, ImplausibleItemError
from eoforge.finetune.run import prepare_chips
from eoforge.plan.io import build_plan, read_plan
from eoforge.train.pretrain import run_pretrain

from tests.support.demo_plan import demo_plan
from tests.support.provider_items import Scene, es_s2_item, pc_grd_item, pc_s2_item, rtc_item, write_catalog

WHEN = datetime(2023, 6, 15, 10, 15, 59, tzinfo=UTC)
NORTH = Scene(10.0, 45.0)
NAMES = ItemNames("S1_X", "S2_X", "eoforge")


@pytest.fixture(autouse=True)
def fresh_verdicts() -> None:
    """Every test reads as a fresh reading process (verdicts are kept per process)."""
    plausibility.clear_verdicts()


def _plan(tmp: Path, items: list, provider: str, s1_collection: str, name: str) -> Path:
    cfg = parse_config(
        {
            "kind": "data",
            "catalog": {
                "backend": "static",
                "url": str(write_catalog(tmp / name, items)),
                "provider": provider,
                "s1_collection": s1_collection,
            },
            "pairing": {"max_days": 3},
            "chips": {"size_px": 64},
        },
        "test",
        DataConfig,
    )
    build_plan(cfg, tmp / f"{name}.parquet")
    return tmp / f"{name}.parquet"


def _grd_plan(tmp: Path, provider: str, name: str) -> Path:
    """A Planetary Computer S2 + GRD scene pair (GRD: uint16 amplitude DN 75) planned under ``provider``."""
    items = [pc_s2_item(tmp / "d", NORTH, WHEN, "05.09"), pc_grd_item(tmp / "d", NORTH, WHEN.replace(hour=17))]
    return _plan(tmp, items, provider, "sentinel-1-grd", name)


def _stream(plan: Path) -> list[dict[str, np.ndarray]]:
    windows = epoch_window_sets(plan_windows(str(plan), "all", 16), 0, 0, (0, 1), 0, 1)
    return list(iter_chip_blocks(str(plan), windows, split="all", window_rows=16, min_valid_fraction=0.0))


def _errors(blocks: list[dict[str, np.ndarray]]) -> tuple[int, list[str]]:
    """(chips ok, errors of the others)."""
    errors = [str(e) for b in blocks for e, ok in zip(b["error"], b["ok"], strict=True) if not ok]
    return sum(int(b["ok"].sum()) for b in blocks), errors


def _rewrite(src: Path, dst: Path, **columns: object) -> Path:
    """``src`` with some columns set to one value, written without its content hash (no cache sees it as ``src``)."""
    table = pq.read_table(src)
    for name, value in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, pa.array([value] * table.num_rows))
    pq.write_table(table.replace_schema_metadata(None), dst)
    return dst


def test_grd_dn_read_through_the_default_profile_is_skipped_with_the_profile_and_cause(tmp_path: Path) -> None:
    plan = _grd_plan(tmp_path, "eoforge", "default")
    rows = read_plan(plan)[0]
    assert set(rows["s1_units"]) == {"dB"} and len(rows) > 1
    ok, errors = _errors(_stream(plan))
    assert ok == 0 and len(errors) == len(rows)  # every chip skipped, each with its reason (counted by split_ok)
    for e in errors:
        assert "provider profile 'eoforge'" in e and "s1_units 'dB'" in e, e
        assert "VV median +75.0 'dB'" in e and "GRD amplitude DN" in e and "'planetary_computer'" in e, e
    with pytest.raises(ImplausibleDataError, match=r"every scene pair checked \(1 of 1.*profile 'eoforge'.*GRD"):
        check_plan_items(plan)


def test_rtc_read_as_grd_amplitude_through_earth_search_is_skipped_with_the_profile_and_cause(tmp_path: Path) -> None:
    items = [
        es_s2_item(tmp_path / "d", NORTH, WHEN, "05.09", boa_offset_applied=True),
        rtc_item(tmp_path / "d", NORTH, WHEN),
    ]
    plan = _plan(tmp_path, items, "earth_search", "sentinel-1-rtc", "es")
    rows = read_plan(plan)[0].drop(columns="geometry").to_dict("records")
    assert {r["s1_units"] for r in rows} == {"amplitude"}
    with pytest.raises(ImplausibleItemError) as info:  # a ChipReadError: skipped and counted
        read_chip_raw(rows[0])
    assert isinstance(info.value, ChipReadError)
    message = str(info.value)
    # linear gamma0 0.0631 taken as GRD DN: 20 log10(0.0631) - 49.7 = -73.7 "dB" (the issue saw -84..-63)
    assert "provider profile 'earth_search'" in message and "VV median -73.7 'dB'" in message, message
    assert "0% of valid pixels inside -50..+30 dB" in message and "RTC" in message and "'aws_rtc'" in message
    ok, errors = _errors(_stream(plan))
    assert ok == 0 and len(errors) == len(rows) and all("profile 'earth_search'" in e for e in errors)
    with pytest.raises(ImplausibleDataError, match=r"profile 'earth_search'.*linear power"):
        check_plan_items(plan)


def test_a_plan_with_some_implausible_items_trains_on_the_others(tmp_path: Path) -> None:
    """The same GRD item planned through the right and the wrong profile: one plan, half its chips skipped."""
    good = _grd_plan(tmp_path, "planetary_computer", "good")
    bad = _grd_plan(tmp_path / "b", "eoforge", "bad")
    table = pa.concat_tables([pq.read_table(good), pq.read_table(bad).cast(pq.read_table(good).schema)])
    mixed = tmp_path / "mixed.parquet"
    pq.write_table(table.replace_schema_metadata(None), mixed)
    check_plan_items(mixed)  # a plausible pair: no stop
    ok, errors = _errors(_stream(mixed))
    assert ok == pq.read_table(good).num_rows and len(errors) == pq.read_table(bad).num_rows
    assert all("provider profile 'eoforge'" in e for e in errors)


def test_s2_with_its_scale_applied_twice_is_skipped_with_the_cause(tmp_path: Path) -> None:
    good = _grd_plan(tmp_path, "planetary_computer", "good")
    twice = json.dumps({b: [0.0001, 0.0] for b in json.loads(pq.read_table(good)["s2_radiometry"][0].as_py())})
    plan = _rewrite(good, tmp_path / "twice.parquet", s2_radiometry=twice)
    ok, errors = _errors(_stream(plan))
    assert ok == 0 and errors
    for e in errors:
        assert "S2 item" in e and "provider profile 'planetary_computer'" in e and "median reflectance x 10000 0" in e
        assert "scale applied twice" in e, e


def test_the_demo_plan_loses_no_chip_to_the_check(tmp_path: Path) -> None:
    plan = demo_plan(tmp_path, chip_px=64)
    ok, errors = _errors(_stream(plan))
    assert ok == len(read_plan(plan)[0]) and errors == []
    checked = dict(plausibility._VERDICTS)
    assert checked and set(checked.values()) == {""}  # every item of the demo got a verdict: plausible
    check_plan_items(plan)


def test_pretraining_on_a_plan_whose_items_all_fail_stops_with_the_cause(tmp_path: Path) -> None:
    plan = _grd_plan(tmp_path, "eoforge", "default")
    cfg = parse_config(
        {
            "kind": "pretrain",
            "data": {"plan": str(plan), "split": "all"},
            "model": {"backbone": "resnet18"},
            "objective": {"kind": "dual_simclr"},
            "train": {"epochs": 1, "batch_size": 4},
            "scaling": {"num_workers": 1, "use_gpu": False},
            "run": {"name": "t", "storage_path": str(tmp_path / "ray")},
            "mlflow": {"tracking_uri": (tmp_path / "mlruns").as_uri(), "experiment": "t", "reuse": False},
        },
        "test",
        PretrainConfig,
    )
    with pytest.raises(ImplausibleDataError, match=r"profile 'eoforge'.*GRD amplitude DN"):
        run_pretrain(cfg)
    assert not (tmp_path / "ray").exists()  # stopped before any training


def test_finetuning_on_a_plan_whose_items_all_fail_stops_with_the_cause_before_ray_starts(tmp_path: Path) -> None:
    import ray

    plan = _grd_plan(tmp_path, "eoforge", "default")
    cfg = parse_config(
        {
            "kind": "finetune",
            "data": {"plan": str(plan)},
            "task": {"kind": "classification", "classes": "dfc8"},
            "backbone": {"source": "scratch", "name": "resnet18"},
            "train": {"steps": 1},
            "run": {"name": "t", "storage_path": str(tmp_path / "ray")},
            "mlflow": {"tracking_uri": (tmp_path / "mlruns").as_uri(), "experiment": "t"},
        },
        "test",
        FinetuneConfig,
    )
    with pytest.raises(ImplausibleDataError, match=r"profile 'eoforge'.*GRD amplitude DN"):
        prepare_chips(cfg)
    assert not ray.is_initialized() and not (tmp_path / "ray").exists()


# ------------------------------------------------------------------------------ the rules on their own


def _db(vv: np.ndarray, vh: np.ndarray) -> np.ndarray:
    return np.stack([vv, vh])[None].astype(np.float32)  # [1, 2, H, W]


def test_real_backscatter_with_corner_reflectors_and_noise_floor_pixels_is_plausible() -> None:
    rng = np.random.default_rng(0)
    vv, vh = rng.normal(-12, 5, (64, 64)), rng.normal(-20, 5, (64, 64))
    vv[:2, :2], vh[-2:, -2:] = 28.0, -48.0  # a corner reflector, pixels at the noise floor
    vv[5, :10] = np.nan  # nodata
    assert s1_reason(_db(vv, vh), "dB", NAMES) is None


@pytest.mark.parametrize(
    ("units", "values", "cause"),
    [
        ("dB", 0.05, "linear power (RTC gamma0 / sigma0, 0..1) read as dB"),
        ("linear", 10 * np.log10(200.0), "GRD amplitude DN read as linear power"),
        ("dB", 180.0, "GRD amplitude DN (tens to thousands) read as dB"),
    ],
    ids=["linear-as-dB", "dn-as-linear", "dn-as-dB"],
)
def test_each_confusion_of_units_names_its_cause(units: str, values: float, cause: str) -> None:
    rng = np.random.default_rng(1)
    db = _db(*(values * rng.uniform(0.5, 1.5, (2, 64, 64))))
    reason = s1_reason(db, units, NAMES)
    assert reason is not None and cause in reason and "provider profile 'eoforge'" in reason, reason


def test_db_read_as_linear_is_named_from_the_raw_values() -> None:
    db = _db(np.full((64, 64), np.nan), np.full((64, 64), np.nan))  # log10 of negative values: nothing left
    reason = s1_reason(db, "linear", NAMES, raw_negative=1.0)
    assert reason is not None and "already in dB" in reason


def test_too_few_valid_pixels_give_no_verdict_yet() -> None:
    db = _db(np.full((8, 8), 200.0), np.full((8, 8), 200.0))  # 64 pixels: below MIN_PIXELS
    assert s1_reason(db, "dB", NAMES) == ""
    assert s2_reason(np.zeros((1, 12, 4, 4), np.uint16), np.ones((1, 4, 4), bool), {}, NAMES) == ""


def test_s2_reflectance_rules() -> None:
    valid = np.ones((1, 32, 32), bool)
    snow = np.full((1, 12, 32, 32), 12000, np.uint16)  # fresh snow, reflectance 1.2: plausible
    assert s2_reason(snow, valid, {}, NAMES) is None
    saturated = np.full((1, 12, 32, 32), 65535, np.uint16)  # a gain of 10^4 on values already x 10^4
    reason = s2_reason(saturated, valid, {"B02": [10000.0, 0.0]}, NAMES)
    assert reason is not None and "at or below 16000" in reason and "(10000.0, 0.0)" in reason
