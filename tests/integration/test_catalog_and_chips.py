"""Search backends, pairing, chip plan and chip pixels on the demo catalog and real samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from eoforge.catalog.assets import gdal_path
from eoforge.catalog.pairing import pair_items
from eoforge.catalog.search import SearchQuery, StacApiBackend, StaticCatalogBackend
from eoforge.config import DataConfig, PairingConfig, parse_config
from eoforge.data.chip import read_chip
from eoforge.plan.io import build_plan, read_plan
from pyproj import Transformer
from rasterio.transform import Affine
from rasterio.windows import Window


def data_cfg(url: str, backend: str = "static", **chips: int) -> DataConfig:
    return parse_config(
        {
            "kind": "data",
            "catalog": {"backend": backend, "url": url, "label_collection": "dfc-labels", "max_cloud_cover": 80},
            "pairing": {"max_days": 3},
            "chips": {"size_px": 64, **chips},
        },
        "test",
        DataConfig,
    )


@pytest.fixture(scope="module")
def stac_api(demo_catalog):
    from tests.support.stac_api import start_stac_api

    api = start_stac_api(demo_catalog.collections_ndjson, demo_catalog.items_ndjson)
    yield api
    api.stop()


def test_stac_api_and_static_backend_give_the_same_pairs(demo_catalog, stac_api) -> None:
    results = []
    for backend in (StaticCatalogBackend(str(demo_catalog.catalog_json)), StacApiBackend(stac_api.url, page_size=2)):
        s2 = backend.search(SearchQuery("sentinel-2-l2a", max_cloud_cover=50))
        s1 = backend.search(SearchQuery("sentinel-1-grd"))
        results.append(([p.key for p in pair_items(s2, s1, PairingConfig(max_days=3))], len(s2), len(s1)))
    assert results[0] == results[1]
    pairs, n_s2, n_s1 = results[0]
    assert n_s1 == 6 and 0 < n_s2 < 6  # the cloud filter dropped the heavy-cloud date
    assert len(pairs) == n_s2
    # bbox + datetime filters agree too
    static = StaticCatalogBackend(str(demo_catalog.catalog_json))
    item = static.search(SearchQuery("sentinel-2-l2a"))[0]
    q = SearchQuery("sentinel-2-l2a", bbox=tuple(item.bbox), datetime=item.datetime.strftime("%Y-%m-%dT00:00:00Z/.."))
    assert [i.id for i in static.search(q)] == [i.id for i in StacApiBackend(stac_api.url).search(q)]


def test_plans_from_both_backends_have_the_same_hash(demo_catalog, stac_api, tmp_path: Path) -> None:
    h1, n1 = build_plan(data_cfg(str(demo_catalog.catalog_json)), tmp_path / "a.parquet")
    h2, n2 = build_plan(data_cfg(stac_api.url, "stac_api"), tmp_path / "b.parquet")
    assert (h1, n1) == (h2, n2)
    frame, stored = read_plan(tmp_path / "a.parquet")
    assert stored == h1 and len(frame) == n1
    # the same place is in the same split on every date
    places = frame.groupby(frame["transform"].map(lambda t: (t[2], t[5])))["split"].nunique()
    assert (places == 1).all()


def test_s2_item_ids_narrow_the_search_on_both_backends(demo_catalog, stac_api, tmp_path: Path) -> None:
    """``catalog.s2_item_ids`` asks the catalog for those ids (STAC ``ids``); S1 is searched over their footprints."""
    from eoforge.catalog.search import search_sensor_items
    from eoforge.errors import CatalogError

    wanted = [demo_catalog.s2_item_ids[1], demo_catalog.s2_item_ids[0]]
    for url, backend in ((str(demo_catalog.catalog_json), "static"), (stac_api.url, "stac_api")):
        cfg = data_cfg(url, backend)
        report: dict[str, int] = {}
        narrowed = cfg.catalog.model_copy(update={"s2_item_ids": [*wanted, "NOT_AN_ITEM"], "max_cloud_cover": 100.0})
        s2, s1 = search_sensor_items(narrowed, report=report)
        assert sorted(i.id for i in s2) == sorted(wanted) and report["s2_ids_missing"] == 1
        assert s1 and all(i.collection_id == "sentinel-1-grd" for i in s1)
        with pytest.raises(CatalogError, match="none of the 1 S2 item ids"):
            search_sensor_items(cfg.catalog.model_copy(update={"s2_item_ids": ["NOT_AN_ITEM"]}))
    static = data_cfg(str(demo_catalog.catalog_json))
    only = static.model_copy(update={"catalog": static.catalog.model_copy(update={"s2_item_ids": wanted})})
    _, n = build_plan(only, tmp_path / "ids.parquet")
    frame, _ = read_plan(tmp_path / "ids.parquet")
    assert n > 0 and set(frame["s2_item"]) <= set(wanted)


def test_chip_pixels_equal_direct_reads_and_s1_is_coregistered(demo_catalog, tmp_path: Path) -> None:
    build_plan(data_cfg(str(demo_catalog.catalog_json)), tmp_path / "p.parquet")
    frame, _ = read_plan(tmp_path / "p.parquet")
    row = frame.iloc[len(frame) // 2].to_dict()
    chip = read_chip(row, "none")
    r, c = (int(x) for x in row["chip_id"].split(":")[1:])
    with rasterio.open(gdal_path(json.loads(row["s2_assets"])["B04"])) as src:
        direct = src.read(1, window=Window(c, r, 64, 64))
    assert np.array_equal(chip.s2[3], direct.astype(np.float32))

    # a corner reflector (known lon/lat) lands on the expected 10 m pixel after reprojection
    checked = 0
    for row in frame.to_dict("records"):
        s1 = pystac.Item.from_file(str(next(Path(demo_catalog.root).rglob(f"{row['s1_item']}.json"))))
        tr = Affine(*list(row["transform"]))
        to_utm = Transformer.from_crs("EPSG:4326", row["crs"], always_xy=True)
        for lon, lat in s1.properties["eoforge:reflectors"]:
            col, rr = ~tr * to_utm.transform(lon, lat)
            if 3 <= col < 61 and 3 <= rr < 61:
                vv = read_chip(row, "none").s1[0]
                i, j = int(rr), int(col)  # pixel i spans [i, i+1)
                near = vv[i - 1 : i + 2, j - 1 : j + 2]
                assert near.max() > 5.0, (near, vv.max())  # dB: the reflector is on its pixel (±1)
                assert np.median(vv) < 0.0  # and the land cover around it is not
                checked += 1
    assert checked >= 2


def test_bigearthnet_real_samples_stream_exact_pixels(shared_dir: Path, stack, tmp_path: Path) -> None:
    import ray
    from eoforge.data.dataset import build_chip_dataset
    from eoforge.demo.bigearthnet import write_bigearthnet_catalog

    src = shared_dir / "data/real-samples/bigearthnet-mm-example"
    catalog = write_bigearthnet_catalog(src, tmp_path / "ben")
    cfg = parse_config(
        {
            "kind": "data",
            "catalog": {
                "backend": "static",
                "url": str(catalog),
                "s2_collection": "bigearthnet-s2",
                "s1_collection": "bigearthnet-s1",
            },
            "pairing": {"max_days": 2},
            "chips": {"size_px": 64, "stride_px": 56},
        },
        "ben",
        DataConfig,
    )
    _, n = build_plan(cfg, tmp_path / "ben.parquet")
    assert n == 6 * 4  # 6 real pairs (one 1 day apart), 4 chips of 64 px in each 120 px patch
    ray.init(address=stack.ray_address, ignore_reinit_error=True)
    try:
        ds = build_chip_dataset(str(tmp_path / "ben.parquet"), split="all", normalize="none")
        rows = {r["chip_id"]: r for r in ds.take_all()}
    finally:
        ray.shutdown()
    assert len(rows) == n and all(r["ok"] for r in rows.values())
    for chip_id, r in rows.items():
        patch, row, col = chip_id.split(":")
        with rasterio.open(src / "S2" / patch / f"{patch}_B04.tif") as f:
            direct = f.read(1, window=Window(int(col), int(row), 64, 64))
        assert np.array_equal(r["s2"][3], direct.astype(np.float32)), chip_id
        assert -40 < float(r["s1"][0].mean()) < 5  # VV in dB
