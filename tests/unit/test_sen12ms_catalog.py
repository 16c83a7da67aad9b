"""SEN12MS / DFC2020 catalogs: multi-band GeoTIFFs in the published layouts -> STAC -> chip plan -> exact pixels.

Tiny files (64 x 64 px, UTM, deterministic values) are written in each layout; the catalog is built,
a chip plan is made with ``build_plan`` and chips are read with ``read_chip`` (no Ray), and the S2,
S1 and label values are compared with the source files' bands.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from eoforge.bands import S2_BAND_NAMES
from eoforge.catalog.assets import gdal_path
from eoforge.catalog.search import SearchQuery, StaticCatalogBackend
from eoforge.config import DataConfig, parse_config
from eoforge.config.finetune import TaskConfig
from eoforge.data.chip import read_chip
from eoforge.demo.sen12ms import (
    DFC10_TO_DFC8,
    IGBP_TO_DFC8,
    IGBP_TO_DFC10,
    SEASON_DATES,
    write_sen12ms_catalog,
)
from eoforge.errors import CatalogError
from eoforge.finetune.tasks import Task
from eoforge.plan.io import build_plan, read_plan
from rasterio.transform import Affine
from rasterio.windows import Window

PX = 64


def _values(seed: int, bands: int, dtype: str, lo: float, hi: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.uniform(lo, hi, size=(bands, PX, PX))
    return x.astype(dtype) if dtype == "float32" else np.round(x).astype(dtype)


def _tif(path: Path, data: np.ndarray, crs: str, x0: float, y0: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": PX,
        "height": PX,
        "count": data.shape[0],
        "dtype": str(data.dtype),
        "crs": crs,
        "transform": Affine(10.0, 0.0, x0, 0.0, -10.0, y0),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _patch(root: Path, roi: str, scene: str, folder: str, n: int, label: str, crs: str, x0: float, y0: float) -> None:
    """One patch: S2 13 bands uint16, S1 2 bands float32 dB, label (lc: 4 bands; dfc: 1 band)."""
    seed = zlib.crc32(f"{roi}:{scene}:{n}".encode())
    s2 = _values(seed, 13, "uint16", 1, 10000)
    s2[10] = 7  # B10 cirrus: a value no other band has, so reading it instead of B11 would show
    _tif(root / roi / f"s2{folder}" / f"{roi}_s2_{scene}_p{n}.tif", s2, crs, x0, y0)
    _tif(
        root / roi / f"s1{folder}" / f"{roi}_s1_{scene}_p{n}.tif", _values(seed + 1, 2, "float32", -30, 0), crs, x0, y0
    )
    if label == "lc":
        lc = _values(seed + 2, 4, "uint16", 1, 17)
        lc[1:] += 100  # the LCCS bands differ from IGBP
    else:
        lc = _values(seed + 2, 1, "uint16", 1, 10)
    _tif(root / roi / f"{label}{folder}" / f"{roi}_{label}_{scene}_p{n}.tif", lc, crs, x0, y0)


@pytest.fixture(scope="module")
def sen12ms_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sen12ms")
    # spring scene 7: two patches overlapping by half, with different values (a mix-up would show)
    _patch(root, "ROIs1158_spring", "7", "_7", 1, "lc", "EPSG:32632", 500000.0, 5300000.0)
    _patch(root, "ROIs1158_spring", "7", "_7", 2, "lc", "EPSG:32632", 500320.0, 5300000.0)
    # winter: another UTM zone, southern hemisphere
    _patch(root, "ROIs2017_winter", "31", "_31", 5, "lc", "EPSG:32755", 320000.0, 6100000.0)
    # an incomplete patch (no S1): skipped and listed, never fatal
    _tif(
        root / "ROIs1158_spring/s2_7/ROIs1158_spring_s2_7_p9.tif",
        _values(9, 13, "uint16", 1, 100),
        "EPSG:32632",
        510000.0,
        5300000.0,
    )
    return root


@pytest.fixture(scope="module")
def dfc_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dfc2020")
    _patch(root, "ROIs0000_validation", "0", "_validation", 0, "dfc", "EPSG:32633", 400000.0, 5000000.0)
    _patch(root, "ROIs0000_validation", "0", "_validation", 1, "dfc", "EPSG:32633", 400640.0, 5000000.0)
    _patch(root, "ROIs0000_test", "0", "_0", 3, "dfc", "EPSG:32617", 600000.0, 4000000.0)
    return root


def _cfg(catalog: Path, prefix: str, size: int) -> DataConfig:
    return parse_config(
        {
            "kind": "data",
            "catalog": {
                "backend": "static",
                "url": str(catalog),
                "s2_collection": f"{prefix}-s2",
                "s1_collection": f"{prefix}-s1",
                "label_collection": f"{prefix}-labels",
            },
            "pairing": {"max_days": 0, "min_overlap": 0.9},
            "chips": {"size_px": size},
        },
        prefix,
        DataConfig,
    )


def _band(path: Path, band: int, row: int, col: int, size: int) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(band, window=Window(col, row, size, size))


def _check_chips(plan: Path, src: Path, label_token: str, size: int) -> int:
    """Every chip of the plan equals its source bands; returns the number of chips checked."""
    frame, _ = read_plan(plan)
    b02, b8a, b12 = (S2_BAND_NAMES.index(b) for b in ("B02", "B8A", "B12"))
    for row in frame.to_dict("records"):
        s2_id, r, c = str(row["chip_id"]).split(":")
        r, c = int(r), int(c)
        roi = s2_id.split("_s2_")[0]
        stem = s2_id.split("_s2_")[1]  # <scene>_p<n>
        s2_file = next(src.glob(f"{roi}/s2_*/{s2_id}.tif"))
        s1_file = next(src.glob(f"{roi}/s1_*/{roi}_s1_{stem}.tif"))
        label_file = next(src.glob(f"{roi}/{label_token}_*/{roi}_{label_token}_{stem}.tif"))
        assert row["s1_item"] == f"{roi}_s1_{stem}", row["chip_id"]  # its own S1 patch, not the overlapping one
        assert gdal_path(str(row["label_href"])) == str(label_file), row["chip_id"]
        chip = read_chip(row, mode="none")
        assert chip.valid_fraction == 1.0
        assert chip.s2.shape == (12, size, size) and chip.s1.shape == (2, size, size)
        # S2 10 m band B02 = file band 2; B8A = band 9 and B12 = band 13 (B10, band 11, is skipped)
        assert np.array_equal(chip.s2[b02], _band(s2_file, 2, r, c, size).astype(np.float32)), row["chip_id"]
        assert np.array_equal(chip.s2[b8a], _band(s2_file, 9, r, c, size).astype(np.float32)), row["chip_id"]
        assert np.array_equal(chip.s2[b12], _band(s2_file, 13, r, c, size).astype(np.float32)), row["chip_id"]
        assert not (chip.s2 == 7).all(axis=(1, 2)).any()  # no band is the B10 marker
        # S1 dB as stored (VV = band 1, VH = band 2), carried as float16 storage units
        f16 = lambda band: band.astype(np.float16).astype(np.float32)  # noqa: E731
        assert np.array_equal(chip.s1[0], f16(_band(s1_file, 1, r, c, size))), row["chip_id"]
        assert np.array_equal(chip.s1[1], f16(_band(s1_file, 2, r, c, size))), row["chip_id"]
        # label: raw values of band 1 (IGBP 1..17 / DFC 1..10)
        assert chip.label is not None
        assert np.array_equal(chip.label, _band(label_file, 1, r, c, size).astype(np.uint8)), row["chip_id"]
    return len(frame)


def test_sen12ms_catalog_plan_and_exact_pixels(sen12ms_src: Path, tmp_path: Path) -> None:
    catalog = write_sen12ms_catalog(sen12ms_src, tmp_path / "cat", layout="sen12ms")
    assert catalog == tmp_path / "cat" / "catalog.json"
    skipped = json.loads((tmp_path / "cat" / "skipped.json").read_text())
    assert [Path(s["file"]).name for s in skipped] == ["ROIs1158_spring_s2_7_p9.tif"]
    assert "missing" in skipped[0]["reason"] and "_s1_7_p9.tif" in skipped[0]["reason"]

    backend = StaticCatalogBackend(str(catalog))
    s2 = backend.search(SearchQuery("sen12ms-s2", None, None, None, None))
    s1 = backend.search(SearchQuery("sen12ms-s1", None, None, None, None))
    labels = backend.search(SearchQuery("sen12ms-labels", None, None, None, None))
    assert [i.id for i in s2] == ["ROIs2017_winter_s2_31_p5", "ROIs1158_spring_s2_7_p1", "ROIs1158_spring_s2_7_p2"]
    assert len(s1) == len(labels) == 3
    item = next(i for i in s2 if i.id.endswith("p1"))
    assert item.datetime == SEASON_DATES["spring"][0] and item.properties["processing:level"] == "L1C"
    assert sorted(k for k in item.assets if k != "source") == sorted(S2_BAND_NAMES)  # 12 bands, no B10
    assert item.assets["B02"].href.endswith("/sen12ms-s2/ROIs1158_spring_s2_7_p1/B02.vrt")
    assert "L1C" in (pystac.Collection.from_file(str(tmp_path / "cat/sen12ms-s2/collection.json")).description)
    s1_item = next(i for i in s1 if i.id == "ROIs1158_spring_s1_7_p1")
    assert s1_item.datetime == item.datetime  # S1 and S2 of a patch share the date
    assert s1_item.assets["vv"].extra_fields["raster:bands"][0]["unit"] == "dB"
    # the VRT is the source band on the source grid (so the reader takes its windowed, exact path)
    with (
        rasterio.open(gdal_path(item.assets["B8A"].href)) as vrt,
        rasterio.open(gdal_path(item.assets["source"].href)) as f,
    ):
        assert vrt.count == 1 and vrt.crs == f.crs and vrt.transform == f.transform and vrt.dtypes[0] == "uint16"
        assert np.array_equal(vrt.read(1), f.read(9))
    lab = next(i for i in labels if i.id == "ROIs1158_spring_lc_7_p1")
    assert lab.assets["labels"].href.endswith("lc_7/ROIs1158_spring_lc_7_p1.tif")
    assert lab.properties["eoforge:label_map_dfc8"] == list(IGBP_TO_DFC8)

    plan = tmp_path / "plan.parquet"
    _, n = build_plan(_cfg(catalog, "sen12ms", PX), plan)
    assert n == 3  # one 64 px chip per patch
    assert _check_chips(plan, sen12ms_src, "lc", PX) == 3
    frame, _ = read_plan(plan)
    assert set(frame["dt_days"]) == {0.0} and set(frame["s1_units"]) == {"dB"}
    assert all(json.loads(r) == {b: [1.0, 0.0] for b in S2_BAND_NAMES} for r in frame["s2_radiometry"])

    # a second run over the same folder writes the same catalog
    first = {p: p.read_bytes() for p in (tmp_path / "cat").rglob("*") if p.is_file()}
    write_sen12ms_catalog(sen12ms_src, tmp_path / "cat", layout="sen12ms", workers=1)
    assert {p: p.read_bytes() for p in (tmp_path / "cat").rglob("*") if p.is_file()} == first


def test_dfc2020_catalog_chips_inside_patches(dfc_src: Path, tmp_path: Path) -> None:
    catalog = write_sen12ms_catalog(dfc_src, tmp_path / "cat", layout="dfc2020")
    backend = StaticCatalogBackend(str(catalog))
    labels = backend.search(SearchQuery("dfc2020-labels", None, None, None, None))
    assert sorted(i.id for i in labels) == [
        "ROIs0000_test_dfc_0_p3",
        "ROIs0000_validation_dfc_0_p0",
        "ROIs0000_validation_dfc_0_p1",
    ]
    assert labels[0].properties["eoforge:label_map_dfc8"] == list(DFC10_TO_DFC8)
    # 32 px chips: 4 per 64 px patch, every one (also those on the patch edges) linked to its label
    plan = tmp_path / "plan.parquet"
    _, n = build_plan(_cfg(catalog, "dfc2020", 32), plan)
    assert n == 3 * 4
    assert _check_chips(plan, dfc_src, "dfc", 32) == 12


def test_label_maps_follow_the_reference() -> None:
    # ssl-methods.md 1.2: IGBP -> DFC, then the 8-class set without Savanna and Snow/Ice
    assert list(IGBP_TO_DFC10) == [0, 1, 1, 1, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 6, 8, 9, 10]
    assert list(IGBP_TO_DFC8) == [255, 0, 0, 0, 0, 0, 1, 1, 255, 255, 2, 3, 4, 5, 4, 255, 6, 7]
    task = Task.from_config(
        TaskConfig(kind="segmentation", classes="dfc8", label_source="raster", label_map=list(IGBP_TO_DFC8))
    )
    igbp = np.arange(18, dtype=np.uint8).reshape(3, 6)
    ids = task.class_ids(igbp)
    names = {int(v): task.classes[int(i)] for v, i in zip(igbp.ravel(), ids.ravel(), strict=True) if i != 255}
    assert names[12] == names[14] == "Croplands" and names[13] == "Urban/Built-up" and names[17] == "Water"
    assert {v for v, i in zip(igbp.ravel(), ids.ravel(), strict=True) if i == 255} == {0, 8, 9, 15}


def test_bad_inputs_fail_with_a_message(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no ROIs"):
        write_sen12ms_catalog(tmp_path, tmp_path / "out", layout="sen12ms")
    with pytest.raises(CatalogError, match="layout 'bigearthnet'"):
        write_sen12ms_catalog(tmp_path, tmp_path / "out", layout="bigearthnet")


def test_cli_builds_the_catalog_and_rejects_an_unknown_layout(dfc_src: Path, tmp_path: Path) -> None:
    from eoforge.cli import app
    from typer.testing import CliRunner

    runner = CliRunner()
    res = runner.invoke(
        app, ["catalog", "sen12ms", "--src", str(dfc_src), "--out", str(tmp_path), "--layout", "dfc2020"]
    )
    assert res.exit_code == 0, res.output
    assert f"catalog: {tmp_path / 'catalog.json'}" in res.output and "dfc2020-labels" in res.output
    assert (tmp_path / "dfc2020-s1/ROIs0000_test_s1_0_p3/vh.vrt").is_file()
    res = runner.invoke(app, ["catalog", "sen12ms", "--src", str(dfc_src), "--out", str(tmp_path), "--layout", "x"])
    assert res.exit_code == 2 and "sen12ms, dfc2020" in res.output
