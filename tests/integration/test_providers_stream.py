"""Provider-shaped items plan and stream through Ray Data on the real local Ray head, with units right."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from eoforge.bands import S2_BAND_NAMES
from eoforge.config import DataConfig, parse_config
from eoforge.data.calibration import GRD_APPROX_DB_OFFSET
from eoforge.plan.io import build_plan, plan_stats, read_plan

from tests.support.provider_items import (
    S2_TRUTH,
    SIGN_LOG_ENV,
    Scene,
    es_s2_item,
    pc_grd_item,
    pc_s2_item,
    write_catalog,
)

REPO = Path(__file__).resolve().parents[2]
SCENE = Scene(-47.9, -15.8)  # south and west of the equator: where the old GRD read gave all-NaN chips


def test_pc_and_earth_search_items_stream_with_signing_and_correct_units(stack, tmp_path: Path) -> None:
    import ray
    from eoforge.data.dataset import build_chip_dataset

    t21, t23 = datetime(2021, 7, 1, 13, tzinfo=UTC), datetime(2023, 7, 1, 13, tzinfo=UTC)
    items = [
        pc_s2_item(tmp_path / "d", SCENE, t21, "03.00", tile="23LKC"),
        es_s2_item(tmp_path / "d", SCENE, t23, "05.09", boa_offset_applied=False, tile="23LKC"),
        pc_grd_item(tmp_path / "d", SCENE, t21.replace(hour=20)),
        pc_grd_item(tmp_path / "d", SCENE, t23.replace(hour=20)),
        pc_grd_item(tmp_path / "d", SCENE, t23.replace(hour=14), pols=("HH", "HV"), mode="EW"),
    ]
    # the Earth Search item's keys (blue, nir08, ...) resolve through a declared profile on top of PC
    cfg = parse_config(
        {
            "kind": "data",
            "catalog": {
                "backend": "static",
                "url": str(write_catalog(tmp_path, items)),
                "provider": "planetary_computer",
                "signing": "test_recording",
                "profile": {
                    "s2_assets": {
                        "B02": ["B02", "blue"],
                        "B03": ["B03", "green"],
                        "B04": ["B04", "red"],
                        "B05": "rededge1",
                        "B06": "rededge2",
                        "B07": "rededge3",
                        "B08": "nir",
                        "B8A": "nir08",
                        "B01": "coastal",
                        "B09": "nir09",
                        "B11": "swir16",
                        "B12": "swir22",
                        "SCL": ["SCL", "scl"],
                    }
                },
            },
            "pairing": {"max_days": 1},
            "chips": {"size_px": 64},
        },
        "test",
        DataConfig,
    )
    _, n = build_plan(cfg, tmp_path / "plan.parquet")
    assert n == 18
    stats = plan_stats(tmp_path / "plan.parquet")
    assert stats["skipped_by_reason"] == {"polarisation": 1} and stats["stages"]["pairs"] == 2

    log = tmp_path / "sign.log"
    log.touch()
    # this checkout's eoforge, and the test hooks' distribution (registered as an entry point, conftest.py)
    env = {
        "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO), os.environ["PYTHONPATH"]]),
        SIGN_LOG_ENV: str(log),
    }
    ray.init(address=stack.ray_address, ignore_reinit_error=True, runtime_env={"env_vars": env})
    try:
        rows = build_chip_dataset(str(tmp_path / "plan.parquet"), split="all", normalize="none").take_all()
    finally:
        ray.shutdown()
    assert len(rows) == n and all(r["ok"] for r in rows), [r["error"] for r in rows if not r["ok"]]
    truth = np.array([S2_TRUTH[b] for b in S2_BAND_NAMES], np.float32)[:, None, None]
    expected_db = 20 * np.log10(75) + GRD_APPROX_DB_OFFSET
    for r in rows:
        assert np.allclose(r["s2"][:, 5:-5, 5:-5], truth), r["chip_id"]  # 2021 and 2023 in the same units
        assert abs(float(np.median(r["s1"][0])) - expected_db) < 0.01, r["chip_id"]  # GRD via GCPs, in dB
    signed = log.read_text().splitlines()
    # every href signed inside the workers just before its file is opened; a reading process keeps
    # its open datasets (bounded LRU), so an href shared by chips is signed once per process
    frame, _ = read_plan(tmp_path / "plan.parquet")
    hrefs = {h for _, r in frame.iterrows() for c in ("s2_assets", "s1_assets") for h in json.loads(r[c]).values()}
    hrefs |= {h for h in frame["scl_href"] if isinstance(h, str) and h}
    assert len(hrefs) <= len(signed) <= n * 15
    assert b"SECRET-SAS-TOKEN" not in (tmp_path / "plan.parquet").read_bytes()
