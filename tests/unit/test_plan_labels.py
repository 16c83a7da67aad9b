"""Planner: label look-up through the footprint index, and splits from an item property (no Ray).

Small SEN12MS / DFC2020 layouts are written on disk (16..64 px patches, UTM) and catalogued with
``write_sen12ms_catalog``, as in ``test_sen12ms_catalog.py``; plans are built with ``build_plan``.
"""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio
from eoforge.catalog.providers import resolve_profile
from eoforge.config import DataConfig, SplitConfig, load_config, parse_config
from eoforge.demo.sen12ms import write_sen12ms_catalog
from eoforge.errors import CatalogError, ConfigError
from eoforge.plan.build import LabelIndex, _place_u, chip_split, split_of
from eoforge.plan.io import build_plan, plan_stats, read_plan
from pyproj import Transformer
from rasterio.transform import Affine
from shapely.geometry import box, mapping
from shapely.ops import transform as shp_transform

PX = 64
CRS = "EPSG:32632"
X0, Y0 = 500000.0, 5300000.0


def _tif(path: Path, data: np.ndarray, x0: float, y0: float, crs: str = CRS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": str(data.dtype),
        "crs": crs,
        "transform": Affine(10.0, 0.0, x0, 0.0, -10.0, y0),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _patch(root: Path, roi: str, scene: str, folder: str, n: int, label: str, x0: float, y0: float) -> None:
    """One patch (S2 13 bands, S1 2 bands, label: lc 4 bands or dfc 1 band) at (x0, y0), PX x PX."""
    rng = np.random.default_rng(zlib.crc32(f"{roi}:{scene}:{n}".encode()))
    _tif(
        root / roi / f"s2{folder}" / f"{roi}_s2_{scene}_p{n}.tif",
        rng.integers(1, 10000, (13, PX, PX), "uint16"),
        x0,
        y0,
    )
    _tif(
        root / roi / f"s1{folder}" / f"{roi}_s1_{scene}_p{n}.tif", rng.uniform(-30, 0, (2, PX, PX)).astype("f4"), x0, y0
    )
    bands = 4 if label == "lc" else 1
    _tif(
        root / roi / f"{label}{folder}" / f"{roi}_{label}_{scene}_p{n}.tif",
        rng.integers(1, 10, (bands, PX, PX), "uint16"),
        x0,
        y0,
    )


def _cfg(catalog: Path, prefix: str, size: int, **extra: object) -> DataConfig:
    raw: dict[str, object] = {
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
        **extra,
    }
    return parse_config(raw, prefix, DataConfig)


def _stem(href: object) -> str:
    """``.../ROIs1158_spring_lc_7_p3.tif`` -> ``7_p3`` (scene and patch)."""
    return str(href).rsplit("/", 1)[-1].split("_", 3)[-1].removesuffix(".tif")


# ------------------------------------------------------------------------------------ label look-up


@pytest.fixture(scope="module")
def overlapping(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SEN12MS layout: a 3 x 3 block of patches overlapping by half (stride PX / 2), one scene,
    plus a lone patch (scene 9) far away whose label footprint is cut to its top half."""
    root = tmp_path_factory.mktemp("sen12ms-overlap")
    step = PX * 10 / 2
    for k in range(9):
        i, j = divmod(k, 3)
        _patch(root / "src", "ROIs1158_spring", "7", "_7", k, "lc", X0 + j * step, Y0 - i * step)
    _patch(root / "src", "ROIs1158_spring", "9", "_9", 0, "lc", X0 + 20000, Y0)
    catalog = write_sen12ms_catalog(root / "src", root / "cat", layout="sen12ms", workers=1)
    # cut the lone patch's label footprint to its top half (rows 0..31): its bottom chips lie outside it
    lab = root / "cat/sen12ms-labels/ROIs1158_spring_lc_9_p0/ROIs1158_spring_lc_9_p0.json"
    doc = json.loads(lab.read_text())
    x0, y0 = X0 + 20000, Y0
    doc["geometry"] = mapping(_to_ll(box(x0 - 0.01, y0 - PX * 5, x0 + PX * 10 + 0.01, y0 + 0.01)))
    lab.write_text(json.dumps(doc))
    return catalog


def _to_ll(geom):  # type: ignore[no-untyped-def]
    return shp_transform(Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform, geom)


def test_overlapping_patches_link_each_chip_to_its_own_patch(overlapping: Path, tmp_path: Path) -> None:
    # 32 px chips: every chip of an inner patch lies inside up to 4 overlapping label footprints
    _, n = build_plan(_cfg(overlapping, "sen12ms", PX // 2), tmp_path / "plan.parquet")
    frame, _ = read_plan(tmp_path / "plan.parquet")
    assert n == 10 * 4
    inside = frame[~frame.s2_item.str.contains("_9_")]
    assert len(inside) == 36
    for row in inside.itertuples():
        assert _stem(row.label_href) == row.s2_item.split("_s2_")[1], row.chip_id  # its own patch's labels
    # one chip per patch (64 px): the label is the patch's own, the only footprint that holds it
    _, n = build_plan(_cfg(overlapping, "sen12ms", PX), tmp_path / "plan64.parquet")
    frame, _ = read_plan(tmp_path / "plan64.parquet")
    linked = frame[frame.label_href.notna()]
    assert len(linked) == 9 and all(_stem(r.label_href) == r.s2_item.split("_s2_")[1] for r in linked.itertuples())
    assert plan_stats(tmp_path / "plan64.parquet")["stages"]["label_items"] == 10


def test_a_chip_outside_every_label_footprint_gets_no_label(overlapping: Path, tmp_path: Path) -> None:
    build_plan(_cfg(overlapping, "sen12ms", PX // 2), tmp_path / "plan.parquet")
    frame, _ = read_plan(tmp_path / "plan.parquet")
    lone = {
        str(r.chip_id).split(":", 1)[1]: r.label_href for r in frame[frame.s2_item.str.contains("_9_")].itertuples()
    }
    assert set(lone) == {"0:0", "0:32", "32:0", "32:32"}
    assert _stem(lone["0:0"]) == _stem(lone["0:32"]) == "9_p0"  # top half: inside the cut footprint
    assert pd.isna(lone["32:0"]) and pd.isna(lone["32:32"])  # bottom half: outside every label footprint


def _label_item(item_id: str, x0: float, width_px: int, sources: tuple[str, ...] = ()) -> pystac.Item:
    """A label item over PX rows x width_px columns from (x0, Y0), footprint grown by 1 cm."""
    foot = _to_ll(box(x0 - 0.01, Y0 - PX * 10 - 0.01, x0 + width_px * 10 + 0.01, Y0 + 0.01))
    item = pystac.Item(item_id, mapping(foot), list(foot.bounds), datetime(2017, 4, 15, tzinfo=UTC), {})
    item.add_asset("labels", pystac.Asset(f"/labels/{item_id}.tif"))
    for s in sources:
        item.add_link(pystac.Link("source", f"/s2/{s}/{s}.json", title=s))
    return item


def _find(index: LabelIndex, col: int, s2_id: str = "S2") -> str | None:
    """The label href for a 16 x 16 px chip at column ``col`` of row 0."""
    chip = box(X0 + col * 10, Y0 - 160, X0 + col * 10 + 160, Y0)
    return index.find(_to_ll(chip), CRS, (chip.centroid.x, chip.centroid.y), s2_id)


def test_label_index_picks_the_nearest_footprint_then_the_smallest_id() -> None:
    profile = resolve_profile("eoforge")
    # a: columns 0..64, b: 16..80, c: 16..80 as well (same footprint as b), d: 200..264
    items = [
        _label_item("d", X0 + 2000, PX),
        _label_item("b", X0 + 160, PX),
        _label_item("a", X0, PX),
        _label_item("c", X0 + 160, PX),
    ]
    index = LabelIndex(items, profile)
    assert len(index) == 4
    assert _find(index, 0) == "/labels/a.tif"  # only a holds it
    assert _find(index, 16) == "/labels/a.tif"  # a and b/c hold it; a's centre (32) is nearest the chip's (24)
    assert _find(index, 40) == "/labels/b.tif"  # chip centre 48: b and c (centre 48) tie; the smaller id
    assert _find(index, 70) is None  # 70..86 sticks out of b and c
    assert _find(index, 150) is None  # between footprints
    # a source link to the chip's S2 item wins over a nearer footprint
    linked = LabelIndex([_label_item("a", X0, PX), _label_item("z", X0 + 160, PX, sources=("S2_own",))], profile)
    assert _find(linked, 16, "S2_own") == "/labels/z.tif"
    assert _find(linked, 16, "S2_other") == "/labels/a.tif"


# ------------------------------------------------------------------------------------ splits by property


@pytest.fixture(scope="module")
def dfc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DFC2020 layout: 4 validation-ROI patches and 2 test-ROI patches (no overlap)."""
    root = tmp_path_factory.mktemp("dfc2020-splits")
    for n in range(4):
        _patch(root / "src", "ROIs0000_validation", "0", "_validation", n, "dfc", X0 + n * 1000, Y0)
    for n in range(2):
        _patch(root / "src", "ROIs0000_test", "0", "_0", n, "dfc", X0 + n * 1000, Y0 - 5000)
    return write_sen12ms_catalog(root / "src", root / "cat", layout="dfc2020", workers=1)


PROTOCOL = {"name": "dfc2020:roi", "map": {"ROIs0000_validation": "train", "ROIs0000_test": "test"}}


def test_property_splits_follow_the_map_and_carve_val_by_place(dfc: Path, tmp_path: Path) -> None:
    by = {**PROTOCOL, "val_fraction": 0.25}
    cfg = _cfg(dfc, "dfc2020", 16, splits={"by_property": by})
    digest, n = build_plan(cfg, tmp_path / "a.parquet")
    assert n == 6 * 16
    frame, _ = read_plan(tmp_path / "a.parquet")
    test_roi = frame.s2_item.str.startswith("ROIs0000_test")
    assert set(frame[test_roi].split) == {"test"} and test_roi.sum() == 32
    val_roi = frame[~test_roi]
    assert set(val_roi.split) == {"train", "val"}
    for row in val_roi.itertuples():  # val = the train chips whose place hash falls below val_fraction
        x0, y0 = row.transform[2], row.transform[5]
        assert (row.split == "val") == (_place_u(row.crs, x0, y0, cfg.seed) < 0.25), row.chip_id
    # deterministic: the same config gives the same plan; another seed carves other places
    assert build_plan(cfg, tmp_path / "b.parquet")[0] == digest
    other = build_plan(cfg.model_copy(update={"seed": 1}), tmp_path / "c.parquet")
    assert other[0] != digest
    stats = plan_stats(tmp_path / "a.parquet")
    assert stats["stages"]["chips_in_split"] == 96 and stats["skipped_chips"] == {}


def test_the_shipped_dfc2020_config_follows_the_published_protocol(
    dfc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EOFORGE_HOME", str(tmp_path))
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs/data/dfc2020.yaml", DataConfig, [f"catalog.url={dfc}", "chips.size_px=16"])
    build_plan(cfg, tmp_path / "plan.parquet")
    frame, _ = read_plan(tmp_path / "plan.parquet")
    by_roi = frame.groupby([frame.s2_item.str.split("_s2_").str[0], "split"]).size().to_dict()
    assert set(by_roi) == {("ROIs0000_test", "test"), ("ROIs0000_validation", "train"), ("ROIs0000_validation", "val")}
    assert by_roi[("ROIs0000_test", "test")] == 32 and 0 < by_roi[("ROIs0000_validation", "val")] < 16


def test_unmapped_values_are_left_out_and_counted(dfc: Path, tmp_path: Path) -> None:
    only_val = {"name": "dfc2020:roi", "map": {"ROIs0000_validation": "test"}}
    _, n = build_plan(_cfg(dfc, "dfc2020", 32, splits={"by_property": only_val}), tmp_path / "p.parquet")
    frame, _ = read_plan(tmp_path / "p.parquet")
    assert n == 16 and set(frame.split) == {"test"} and frame.s2_item.str.startswith("ROIs0000_validation").all()
    stats = plan_stats(tmp_path / "p.parquet")
    assert stats["skipped_chips"] == {"split: dfc2020:roi='ROIs0000_test' is not in splits.by_property.map": 8}
    assert stats["stages"]["chips_in_s1"] == 24 and stats["stages"]["chips_in_split"] == 16
    # no chip left: the error names the split stage and the values
    nothing = {"name": "dfc2020:roi", "map": {"ROIs0000_train": "train"}}
    with pytest.raises(CatalogError, match=r"split: none of the 24 chips has a split.*ROIs0000_test"):
        build_plan(_cfg(dfc, "dfc2020", 32, splits={"by_property": nothing}), tmp_path / "q.parquet")
    # unmapped: a split for every value not listed (e.g. list only the hold-out scenes)
    holdout = {"name": "dfc2020:roi", "map": {"ROIs0000_test": "test"}, "unmapped": "train"}
    build_plan(_cfg(dfc, "dfc2020", 32, splits={"by_property": holdout}), tmp_path / "u.parquet")
    frame, _ = read_plan(tmp_path / "u.parquet")
    assert frame.groupby("split").size().to_dict() == {"test": 8, "train": 16}
    assert plan_stats(tmp_path / "u.parquet")["skipped_chips"] == {}
    missing = {"name": "dfc2020:nope", "map": {"x": "train"}, "unmapped": "train"}
    with pytest.raises(CatalogError, match="has no property 'dfc2020:nope'"):
        build_plan(_cfg(dfc, "dfc2020", 32, splits={"by_property": missing}), tmp_path / "r.parquet")


def test_split_config_checks(tmp_path: Path) -> None:
    # default: by place, as before
    default = SplitConfig()
    assert default.by_property is None
    assert chip_split(None, CRS, X0, Y0, 0, default) == split_of(CRS, X0, Y0, 0, default)
    # YAML int keys are read as text
    path = tmp_path / "data.yaml"
    path.write_text(
        "kind: data\ncatalog: {backend: static, url: x}\n"
        "splits:\n  by_property: {name: 'sen12ms:scene', map: {7: test, '12': train}, val_fraction: 0.1}\n"
    )
    by = load_config(path, DataConfig).splits.by_property
    assert by is not None and by.map == {"7": "test", "12": "train"} and by.val_fraction == 0.1
    # fractions and by_property do not mix; the carve-out needs train; splits are train | val | test
    bad = [
        ({"train": 0.5, "val": 0.5, "test": 0.0, "by_property": PROTOCOL}, "splits: train/val/test: fractions do not"),
        (
            {"by_property": {**PROTOCOL, "map": {"a": "test"}, "val_fraction": 0.1}},
            "no value in map (nor unmapped) goes",
        ),
        ({"by_property": {**PROTOCOL, "unmapped": "holdout"}}, "splits.by_property.unmapped: Input should be"),
        ({"by_property": {**PROTOCOL, "map": {"a": "holdout"}}}, "splits.by_property.map.a: Input should be"),
        ({"by_property": {**PROTOCOL, "map": {}}}, "splits.by_property.map: Dictionary should have at least 1"),
        ({"by_property": {**PROTOCOL, "val_fraction": 1.0}}, "splits.by_property.val_fraction: Input should be less"),
        ({"by_property": {**PROTOCOL, "values": {}}}, "splits.by_property.values: unknown key"),
    ]
    for splits, message in bad:
        raw = {"kind": "data", "catalog": {"backend": "static", "url": "x"}, "splits": splits}
        with pytest.raises(ConfigError) as err:
            parse_config(raw, "data.yaml", DataConfig)
        assert message in str(err.value), (splits, str(err.value))


def test_edge_chips_of_the_demo_catalog_get_their_label(tmp_path: Path) -> None:
    """A 4-corner lon/lat label footprint cuts ~10 cm inside the UTM edge; edge chips still link."""
    from eoforge.demo.catalog import write_demo_catalog
    from eoforge.plan.build import plan_rows

    cat = write_demo_catalog(tmp_path / "demo", scenes=1, dates_per_scene=1, size_px=128)
    raw = {
        "kind": "data",
        "catalog": {
            "backend": "static",
            "url": str(cat.catalog_json),
            "s2_collection": "sentinel-2-l2a",
            "s1_collection": "sentinel-1-grd",
            "label_collection": "dfc-labels",
            "max_cloud_cover": 100,
        },
        "chips": {"size_px": 32},
    }
    rows = plan_rows(parse_config(raw, "demo", DataConfig))
    assert len(rows) == 16
    unlabelled = [r["chip_id"] for r in rows if not r["label_href"]]
    assert not unlabelled, unlabelled  # the top row and left column were dropped before
