"""The synthetic demo STAC catalog: layout, determinism, COGs, grids, clouds, S1, labels."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from eoforge.bands import DFC_CLASSES, S2_BAND_NAMES, S2_BANDS
from eoforge.demo.catalog import SEASON_NAMES, DemoCatalog, cloud_kind, labelled_season, write_demo_catalog
from eoforge.demo.synth import cloud_cover_percent, make_scene, render_s2
from eoforge.demo.world import World
from eoforge.errors import ConfigError
from pyproj import Transformer
from rasterio.warp import Resampling, reproject

SIZE = 128
SCENES = 2
DATES = 2
TO_UTM = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)


def _write(out: Path, seed: int = 0, scenes: int = SCENES, dates: int = DATES) -> DemoCatalog:
    return write_demo_catalog(out, scenes=scenes, seed=seed, dates_per_scene=dates, size_px=SIZE)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoCatalog:
    return _write(tmp_path_factory.mktemp("demo_a"))


@pytest.fixture(scope="module")
def items(demo: DemoCatalog) -> dict[str, dict]:
    lines = demo.items_ndjson.read_text().splitlines()
    return {d["id"]: d for d in map(json.loads, lines)}


def _path(href: str) -> str:
    assert href.startswith("file:///"), href
    return href[len("file://") :]


def _read(item: dict, asset: str) -> tuple[np.ndarray, rasterio.profiles.Profile, rasterio.Affine]:
    with rasterio.open(item["assets"][asset]["href"]) as src:
        return src.read(1), src.profile, src.transform


def test_layout_ids_and_counts(demo: DemoCatalog, items: dict[str, dict]) -> None:
    assert demo.catalog_json == demo.root / "catalog.json" and demo.catalog_json.is_file()
    assert demo.s2_item_ids[0] == "S2A_DEMO_000_20240501"
    assert len(demo.s2_item_ids) == len(demo.s1_item_ids) == SCENES * DATES
    assert demo.label_item_ids == ("DFC_DEMO_000", "DFC_DEMO_001")
    assert all(i.startswith("S1A_DEMO_") for i in demo.s1_item_ids)
    assert set(items) == set(demo.s2_item_ids + demo.s1_item_ids + demo.label_item_ids)
    for item_id, item in items.items():
        for key, asset in item["assets"].items():
            path = Path(_path(asset["href"]))
            assert path == demo.root / "data" / item["collection"] / item_id / f"{key}.tif"
            assert path.is_file()
    s2 = items[demo.s2_item_ids[0]]
    assert list(s2["assets"]) == [*S2_BAND_NAMES, "SCL"]
    assert set(items[demo.s1_item_ids[0]]["assets"]) == {"vv", "vh"}
    assert set(items[demo.label_item_ids[0]]["assets"]) == {"labels"}
    west, south, east, north = demo.bbox
    assert 9.0 < west < east < 11.0 and 44.5 < south < north < 45.5
    start, end = demo.datetime_range.split("/")
    assert start == "2024-05-01T10:20:00Z" and end > start


def test_each_labelled_scene_is_imaged_in_one_season_and_every_four_span_all_seasons(
    demo: DemoCatalog, items: dict[str, dict]
) -> None:
    """As SEN12MS's ROIs: one season per region, the labelled set over all four (train and test ROIs alike)."""
    for seed in range(5):
        seasons = [labelled_season(seed, k) for k in range(16)]
        assert all(sorted(seasons[b : b + 4]) == [0, 1, 2, 3] for b in range(0, 16, 4)), (seed, seasons)
    assert len({tuple(labelled_season(seed, k) for k in range(16)) for seed in range(5)}) > 1  # drawn from the seed
    # the meteorological season of each acquisition (DJF, MAM, JJA, SON) is its scene's
    meteorological = {12: 3, 1: 3, 2: 3, 3: 0, 4: 0, 5: 0, 6: 1, 7: 1, 8: 1, 9: 2, 10: 2, 11: 2}
    for item_id in demo.s2_item_ids:
        k = int(item_id.split("_")[2])
        when = datetime.fromisoformat(items[item_id]["properties"]["datetime"].replace("Z", "+00:00"))
        assert meteorological[when.month] == labelled_season(0, k), (item_id, SEASON_NAMES[labelled_season(0, k)])


def test_ndjson_is_pgstac_loadable(demo: DemoCatalog, items: dict[str, dict]) -> None:
    def no_nan(token: str) -> None:
        raise AssertionError(f"non-finite number {token} in ndjson")

    for path in (demo.items_ndjson, demo.collections_ndjson):
        for line in path.read_text().splitlines():
            json.loads(line, parse_constant=no_nan)
    collections = [json.loads(line) for line in demo.collections_ndjson.read_text().splitlines()]
    assert [c["id"] for c in collections] == ["sentinel-2-l2a", "sentinel-1-grd", "dfc-labels"]
    for c in collections:
        assert c["type"] == "Collection" and c["license"] in ("CC-BY-4.0", "proprietary")
        assert "ynthetic" in c["description"]
        (bbox,) = c["extent"]["spatial"]["bbox"]
        assert 9.0 < bbox[0] < bbox[2] < 11.0
        (interval,) = c["extent"]["temporal"]["interval"]
        assert interval[0] <= interval[1]
        assert c["item_assets"]
    for item in items.values():
        assert item["collection"] in ("sentinel-2-l2a", "sentinel-1-grd", "dfc-labels")
        assert any(link["rel"] == "self" and link["href"].startswith("/") for link in item["links"])
        for link in item["links"]:
            assert link["href"].startswith("/"), link


def test_pystac_walks_catalog(demo: DemoCatalog) -> None:
    catalog = pystac.Catalog.from_file(str(demo.catalog_json))
    assert catalog.id == "eoforge-demo"
    assert sorted(c.id for c in catalog.get_children()) == ["dfc-labels", "sentinel-1-grd", "sentinel-2-l2a"]
    found = {it.id: it for it in catalog.get_items(recursive=True)}
    assert set(found) == set(demo.s2_item_ids + demo.s1_item_ids + demo.label_item_ids)
    s2 = found[demo.s2_item_ids[0]]
    assert s2.collection_id == "sentinel-2-l2a"
    assert s2.get_self_href() and Path(s2.get_self_href()).is_absolute()
    assert s2.assets["B04"].get_absolute_href().startswith("file:///")
    # every link in every saved JSON file is absolute (ABSOLUTE_PUBLISHED)
    for path in demo.root.rglob("*.json"):
        doc = json.loads(path.read_text())
        assert all(link["href"].startswith("/") for link in doc["links"]), path


def test_s2_item_fields(demo: DemoCatalog, items: dict[str, dict]) -> None:
    for item_id in demo.s2_item_ids:
        item = items[item_id]
        p = item["properties"]
        assert p["platform"] == "sentinel-2a" and p["constellation"] == "sentinel-2"
        assert p["instruments"] == ["msi"] and p["s2:processing_baseline"] == "05.10"
        assert p["proj:code"] == "EPSG:32632" and p["eoforge:scene"] == int(item_id.split("_")[2])
        assert item_id.endswith(p["datetime"][:10].replace("-", ""))
        assert datetime.fromisoformat(p["datetime"]).tzinfo is not None
        exts = " ".join(item["stac_extensions"])
        assert "eo/v1.1.0" in exts and "projection/v2.0.0" in exts and "raster/v1.1.0" in exts
        assert item["geometry"]["type"] == "Polygon"
        lons = [c[0] for c in item["geometry"]["coordinates"][0]]
        assert item["bbox"][0] == min(lons) and item["bbox"][2] == max(lons)
        b08 = item["assets"]["B08"]
        assert b08["roles"] == ["data"]
        assert b08["eo:bands"] == [{"name": "B08", "common_name": "nir", "center_wavelength": 0.842}]
        assert b08["raster:bands"][0] == {
            "data_type": "uint16",
            "nodata": 0,
            "spatial_resolution": 10,
            "scale": 0.0001,
            "offset": 0,
        }
        assert item["assets"]["SCL"]["roles"] == ["data", "cloud"]


@pytest.mark.parametrize(("band", "res"), [("B02", 10), ("B05", 20), ("B01", 60), ("B09", 60), ("SCL", 20)])
def test_band_resolutions(demo: DemoCatalog, items: dict[str, dict], band: str, res: int) -> None:
    item = items[demo.s2_item_ids[0]]
    arr, profile, transform = _read(item, band)
    assert profile["crs"].to_epsg() == 32632
    assert transform.a == res and transform.e == -res
    assert arr.shape == (math.ceil(SIZE * 10 / res),) * 2
    # all bands share the scene's upper-left corner (snapped to 60 m)
    assert transform.c % 60 == 0 and transform.f % 60 == 0
    asset = item["assets"][band]
    assert asset["proj:shape"] == list(arr.shape)
    assert asset["proj:transform"] == list(transform)[:6]
    assert asset["raster:bands"][0]["spatial_resolution"] == res
    assert arr.dtype == (np.uint8 if band == "SCL" else np.uint16)
    if band != "SCL":
        assert arr.min() > 0  # 0 is nodata and never written


def test_cogs_are_tiled_with_overviews(demo: DemoCatalog, items: dict[str, dict]) -> None:
    for item in items.values():
        for key, asset in item["assets"].items():
            with rasterio.open(asset["href"]) as src:
                assert src.driver == "GTiff"
                # one 128 px tile covering a small raster reads back as "not tiled"
                assert src.profile["tiled"] or src.width <= 128, (item["id"], key)
                bh, bw = src.block_shapes[0]
                assert bh == bw and bw in (128, 256)  # GDAL's COG driver warns below 128
                assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
                assert src.compression.name.lower() == "deflate"
                if src.width > 2 * bw:
                    assert src.overviews(1), (item["id"], key)


def test_s2_10m_pixels_stored_exactly(demo: DemoCatalog, items: dict[str, dict]) -> None:
    scene = make_scene(World.from_seed(0), 0, 0, SIZE)
    item = items[demo.s2_item_ids[0]]
    when = datetime.fromisoformat(item["properties"]["datetime"])
    render = render_s2(scene, 0, 0, when, cloud_kind(0, 0, 0, DATES))
    for band in ("B02", "B08", "B05", "B01"):
        np.testing.assert_array_equal(_read(item, band)[0], render.bands[band])
    np.testing.assert_array_equal(_read(items[demo.label_item_ids[0]], "labels")[0], scene.label_map)


def test_cloud_cover_matches_scl(demo: DemoCatalog, items: dict[str, dict]) -> None:
    covers = []
    for item_id in demo.s2_item_ids:
        item = items[item_id]
        scl = _read(item, "SCL")[0]
        assert set(np.unique(scl)) <= {3, 4, 5, 6, 7, 8, 9}
        cover = item["properties"]["eo:cloud_cover"]
        assert isinstance(cover, float)
        assert cover == pytest.approx(100.0 * np.isin(scl, (3, 8, 9)).mean(), abs=1e-3)
        assert cover == cloud_cover_percent(scl)
        covers.append(cover)
    assert covers[1] > 60.0  # scene 0, second date: the heavily clouded one
    assert sum(c < 30.0 for c in covers) >= len(covers) - 1
    # clouds are bright in the blue band where SCL says "cloud high probability"
    item = items[demo.s2_item_ids[1]]
    scl, blue = _read(item, "SCL")[0], _read(item, "B02")[0]
    assert blue[::2, ::2][scl == 9].mean() > 5000 > blue[::2, ::2][np.isin(scl, (4, 5, 6))].mean()


def test_spectral_signatures_plausible(demo: DemoCatalog, items: dict[str, dict]) -> None:
    scene = make_scene(World.from_seed(0), 0, 0, SIZE)
    item = items[demo.s2_item_ids[0]]
    red = _read(item, "B04")[0].astype(float)
    nir = _read(item, "B08")[0].astype(float)
    ndvi = (nir - red) / (nir + red)
    labels = scene.label_map
    scl10 = _read(item, "SCL")[0].repeat(2, 0).repeat(2, 1)
    clear = np.isin(scl10, (4, 5, 6))
    veg = clear & np.isin(labels, (0, 2, 4))
    assert veg.any() and ndvi[veg].mean() > 0.6
    water = clear & (labels == 7)
    if water.any():
        assert ndvi[water].mean() < 0.0


def test_s1_items(demo: DemoCatalog, items: dict[str, dict]) -> None:
    offsets = []
    for s2_id, s1_id in zip(demo.s2_item_ids, demo.s1_item_ids, strict=True):
        s1, s2 = items[s1_id], items[s2_id]
        p = s1["properties"]
        assert p["platform"] == "sentinel-1a" and p["constellation"] == "sentinel-1"
        assert p["sar:instrument_mode"] == "IW" and p["sar:frequency_band"] == "C"
        assert p["sar:polarizations"] == ["VV", "VH"] and p["sar:product_type"] == "GRD"
        assert p["sat:orbit_state"] in ("ascending", "descending")
        assert p["proj:code"] == "EPSG:4326" and p["eoforge:scene"] == s2["properties"]["eoforge:scene"]
        exts = " ".join(s1["stac_extensions"])
        assert all(e in exts for e in ("sar/v1.0.0", "sat/v1.0.0", "projection/v2.0.0", "raster/v1.1.0"))
        dt = datetime.fromisoformat(p["datetime"]) - datetime.fromisoformat(s2["properties"]["datetime"])
        offsets.append(abs(dt.total_seconds()) / 86400.0)
        assert s1_id.endswith(p["datetime"][:10].replace("-", ""))
        assert s1["assets"]["vv"]["raster:bands"][0] == {
            "data_type": "float32",
            "nodata": -9999.0,
            "unit": "dB",
            "spatial_resolution": 10,
        }
        assert s1["assets"]["vv"]["roles"] == ["data"]
    assert max(offsets) <= 2.0 and 0.0 in offsets and 2.0 in offsets


def test_s1_grid_covers_s2_with_margin(demo: DemoCatalog, items: dict[str, dict]) -> None:
    s1, s2 = items[demo.s1_item_ids[0]], items[demo.s2_item_ids[0]]
    vv, profile, transform = _read(s1, "vv")
    assert profile["crs"].to_epsg() == 4326 and profile["nodata"] == -9999.0
    assert transform.a == pytest.approx(1e-4) and transform.e == pytest.approx(-1e-4)
    assert s1["assets"]["vv"]["proj:shape"] == list(vv.shape)
    assert vv.dtype == np.float32 and np.isfinite(vv).all()
    assert -45.0 < vv.min() and vv.max() <= 15.0
    w, s, e, n = s1["bbox"]
    sw, ss, se, sn = s2["bbox"]
    lat_m, lon_m = 111_320.0, 111_320.0 * math.cos(math.radians(45.0))
    for gap in ((sw - w) * lon_m, (e - se) * lon_m, (s - ss) * -lat_m, (n - sn) * lat_m):
        assert 250.0 < gap < 400.0


def test_reflectors(demo: DemoCatalog, items: dict[str, dict]) -> None:
    for s1_id in demo.s1_item_ids:
        s1 = items[s1_id]
        label = items[f"DFC_DEMO_{s1['properties']['eoforge:scene']:03d}"]
        _, _, s2_transform = _read(label, "labels")
        vv, _, transform = _read(s1, "vv")
        vh = _read(s1, "vh")[0]
        reflectors = s1["properties"]["eoforge:reflectors"]
        assert 2 <= len(reflectors) <= 3
        for lon, lat in reflectors:
            col, row = ~transform @ (lon, lat)
            assert col % 1 == pytest.approx(0.5) and row % 1 == pytest.approx(0.5)  # pixel centre
            r, c = int(row), int(col)
            np.testing.assert_array_equal(vv[r - 1 : r + 2, c - 1 : c + 2], 15.0)
            np.testing.assert_array_equal(vh[r - 1 : r + 2, c - 1 : c + 2], 5.0)
            assert vv[r - 3, c] < 15.0 and vv[r, c + 3] < 15.0  # only a 3×3 block
            x, y = TO_UTM.transform(lon, lat)
            px, py = ~s2_transform @ (x, y)
            assert 40 <= px <= SIZE - 40 and 40 <= py <= SIZE - 40


def test_s1_and_s2_see_the_same_world(demo: DemoCatalog, items: dict[str, dict]) -> None:
    labels, lprof, ltransform = _read(items[demo.label_item_ids[0]], "labels")
    s1 = items[demo.s1_item_ids[0]]
    vv, sprof, stransform = _read(s1, "vv")
    on_s1 = np.full(vv.shape, 255, dtype=np.uint8)
    reproject(
        labels,
        on_s1,
        src_transform=ltransform,
        src_crs=lprof["crs"],
        src_nodata=255,
        dst_transform=stransform,
        dst_crs=sprof["crs"],
        dst_nodata=255,
        resampling=Resampling.nearest,
    )
    scene = make_scene(World.from_seed(0), 0, 0, SIZE)
    inside = on_s1 != 255
    assert inside.mean() > 0.3  # S2 is 1.28 km wide, S1 1.28 km + 2 × 300 m
    agreement = (on_s1[inside] == scene.s1_classes[inside]).mean()
    assert agreement > 0.9
    # backscatter follows the classes: water is dark, forest brighter
    forest, water = scene.s1_classes == 0, scene.s1_classes == 7
    if forest.sum() > 100 and water.sum() > 100:
        assert np.median(vv[water]) < np.median(vv[forest]) - 8.0


def test_label_item(demo: DemoCatalog, items: dict[str, dict]) -> None:
    for k, label_id in enumerate(demo.label_item_ids):
        item = items[label_id]
        p = item["properties"]
        assert p["label:type"] == "raster" and p["label:tasks"] == ["segmentation", "classification"]
        assert p["label:classes"] == [{"name": None, "classes": list(range(8))}]
        assert p["eoforge:class_names"] == list(DFC_CLASSES) and p["label:description"]
        assert any("label/v1.0.1" in e for e in item["stac_extensions"])
        scene_s2 = [i for i in demo.s2_item_ids if i.startswith(f"S2A_DEMO_{k:03d}_")]
        assert p["datetime"] == items[scene_s2[0]]["properties"]["datetime"]
        sources = [link["href"] for link in item["links"] if link["rel"] == "source"]
        assert sorted(Path(h).stem for h in sources) == sorted(scene_s2)
        assert item["assets"]["labels"]["roles"] == ["labels", "data"]
        arr, profile, transform = _read(item, "labels")
        assert arr.dtype == np.uint8 and profile["nodata"] == 255 and arr.max() <= 7
        assert arr.shape == (SIZE, SIZE) and transform.a == 10
        assert list(transform)[:6] == items[scene_s2[0]]["assets"]["B02"]["proj:transform"]
        assert len(np.unique(arr)) >= 2


def test_scenes_do_not_overlap(demo: DemoCatalog, items: dict[str, dict]) -> None:
    a, b = (items[i]["bbox"] for i in demo.label_item_ids)
    assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


def test_same_seed_same_bytes(demo: DemoCatalog, tmp_path: Path) -> None:
    again = _write(tmp_path / "again")
    text_a = demo.items_ndjson.read_text().replace(str(demo.root), "ROOT")
    text_b = again.items_ndjson.read_text().replace(str(again.root), "ROOT")
    assert text_a == text_b
    files = sorted(p.relative_to(demo.root) for p in (demo.root / "data").rglob("*.tif"))
    assert files == sorted(p.relative_to(again.root) for p in (again.root / "data").rglob("*.tif"))
    for rel in files:
        with rasterio.open(demo.root / rel) as s1, rasterio.open(again.root / rel) as s2:
            np.testing.assert_array_equal(s1.read(), s2.read())
        assert (demo.root / rel).read_bytes() == (again.root / rel).read_bytes(), rel


def test_other_seed_differs(demo: DemoCatalog, items: dict[str, dict], tmp_path: Path) -> None:
    other = _write(tmp_path / "other", seed=1, scenes=1, dates=1)
    lines = [json.loads(line) for line in other.items_ndjson.read_text().splitlines()]
    other_items = {d["id"]: d for d in lines}
    assert (
        other_items["DFC_DEMO_000"]["properties"]["datetime"]
        == other_items[other.s2_item_ids[0]]["properties"]["datetime"]
    )
    mine = _read(items["DFC_DEMO_000"], "labels")[0]
    theirs = _read(other_items["DFC_DEMO_000"], "labels")[0]
    assert (mine != theirs).mean() > 0.2
    b02_other = _read(other_items[other.s2_item_ids[0]], "B02")[0]
    assert not np.array_equal(b02_other, _read(items[demo.s2_item_ids[0]], "B02")[0])


def test_folder_with_space_is_readable(tmp_path: Path) -> None:
    cat = write_demo_catalog(tmp_path / "with space", scenes=1, dates_per_scene=1, size_px=100)
    item = json.loads(cat.items_ndjson.read_text().splitlines()[0])
    arr, _, _ = _read(item, "B02")
    assert arr.shape == (100, 100)
    assert _read(item, "B01")[0].shape == (17, 17)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="size_px"):
        write_demo_catalog(tmp_path, size_px=64)
    with pytest.raises(ConfigError, match="scenes"):
        write_demo_catalog(tmp_path, scenes=0)


def test_band_constants_used() -> None:
    assert [b.name for b in S2_BANDS] == list(S2_BAND_NAMES)
