"""The predict job on real processes: Ray (reading tasks, inference actors), MLflow's registry, files.

Each run maps demo scenes (128 px, 32 px windows, 8 px overlap) into small output tiles
(40-48 px) so that tile borders cut through windows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import torch
from eoforge.bands import DFC_CLASSES
from eoforge.config import parse_config
from eoforge.config.predict import PredictConfig
from eoforge.data.chip import read_chip
from eoforge.errors import ConfigError
from eoforge.finetune.registered import load_registered_model
from eoforge.finetune.task_heads import FinetuneModel
from eoforge.models.dual import DualBackbone, create_backbone
from eoforge.plan.io import iter_plan_batches
from eoforge.predict.cog import sha256_multihash, validate_cog
from eoforge.predict.grid import window_origin
from eoforge.predict.job import PredictResult, run_predict
from eoforge.predict.stac_validate import validate_stac

from tests.support.predict_models import card, constant_segmenter, pixel_segmenter, register

pytestmark = pytest.mark.integration
CLASSES = list(DFC_CLASSES)


@pytest.fixture(scope="module", autouse=True)
def ray_left_as_found():
    """run_predict connects this process to the stack's Ray; leave it disconnected for the modules after."""
    import ray

    was = ray.is_initialized()
    yield
    if not was:
        ray.shutdown()


@pytest.fixture(scope="module")
def models(stack) -> dict[str, str]:
    torch.manual_seed(0)
    backbone = DualBackbone(create_backbone("resnet18", 2), create_backbone("resnet18", 12), "resnet18")
    classifier = FinetuneModel(backbone, "classification", len(CLASSES), 32)
    uri = stack.mlflow_url
    wrong = card("classification", CLASSES, 32, s2_bands=["B04", "B03", "B02"])
    return {
        "classifier": register(classifier, "pt-classifier", card("classification", CLASSES, 32), uri),
        "pixel": register(pixel_segmenter(len(CLASSES)), "pt-pixel", card("segmentation", CLASSES, 32), uri),
        "constant": register(
            constant_segmenter(len(CLASSES), 3), "pt-constant", card("segmentation", CLASSES, 32), uri
        ),
        "wrong_bands": register(classifier, "pt-wrong-bands", wrong, uri),
    }


def predict_cfg(demo_catalog, out: Path | str, model: str, items: list[str], **changes) -> PredictConfig:
    raw = {
        "kind": "predict",
        "model": model,
        "products": ["classes", "probabilities"],
        "catalog": {"backend": "static", "url": str(demo_catalog.catalog_json)},
        "aoi": {"item_ids": items},
        "overlap_px": 8,
        "tile_px": 48,
        "inference": {"batch_size": 32},
        "output": str(out),
        "run": {"name": f"predict-{Path(str(out)).name}"},
    }
    raw.update(changes)
    return parse_config(raw, "test", PredictConfig)


def mosaic(collection: str, asset: str, item: str) -> tuple[np.ndarray, rasterio.Affine]:
    """The tiles of one source item, loaded back with odc-stac as one array [bands, y, x] and its grid."""
    from odc.stac import load

    items = [i for i in pystac.Collection.from_file(collection).get_items() if i.id.startswith(item)]
    n = len(items[0].assets[asset].extra_fields["raster:bands"])
    bands = [asset] if n == 1 else [f"{asset}.{k}" for k in range(1, n + 1)]  # odc-stac's names of a band
    ds = load(items, bands=bands, groupby="solar_day", chunks=None)
    return np.stack([ds[b].values[0] for b in bands]), ds.odc.geobox.affine


def plan_rows(out: Path) -> list[dict]:
    return [r for b in iter_plan_batches(str(out / "plan.parquet")) for r in b.to_pylist()]


@pytest.fixture(scope="module")
def classified(stack, demo_catalog, models, tmp_path_factory) -> tuple[PredictConfig, PredictResult]:
    out = tmp_path_factory.mktemp("predict") / "classified"
    items = [demo_catalog.s2_item_ids[0], demo_catalog.s2_item_ids[1]]  # a clear date, a cloudy one
    cfg = predict_cfg(
        demo_catalog, out, models["classifier"], items, products=["classes", "probabilities", "embeddings"]
    )
    return cfg, run_predict(cfg)


def test_class_map_equals_chipwise_predictions_at_window_centres(classified, demo_catalog, stack) -> None:
    import mlflow

    cfg, result = classified
    out = Path(cfg.output)
    mlflow.set_tracking_uri(stack.mlflow_url)
    model = load_registered_model("models:/pt-classifier/1").eval()
    item = demo_catalog.s2_item_ids[0]
    classes, grid = mosaic(result.collection, "classes", item)
    probs, _ = mosaic(result.collection, "probabilities", item)
    rows = [r for r in plan_rows(out) if r["s2_item"] == item]
    assert len(rows) == 25
    checked = 0
    for row in rows:
        chip = read_chip(row)
        if chip.valid_fraction < cfg.min_valid_fraction:
            continue
        with torch.inference_mode():
            p = torch.softmax(model(torch.from_numpy(chip.s1[None]), torch.from_numpy(chip.s2[None])), 1)[0].numpy()
        x, y = row["transform"][2] + 16 * 10 + 5, row["transform"][5] - 16 * 10 - 5  # the centre pixel
        col, r = (~grid) * (x, y)
        assert classes[0, int(r), int(col)] == int(p.argmax()), row["chip_id"]
        np.testing.assert_allclose(probs[:, int(r), int(col)], np.rint(p * 100), atol=1)
        checked += 1
    assert checked >= 20


def test_embeddings_equal_the_backbone_features_within_quantisation(classified, demo_catalog, stack) -> None:
    import geopandas as gpd

    cfg, result = classified
    model = load_registered_model("models:/pt-classifier/1").eval()
    items = list(pystac.Collection.from_file(result.collection).get_items())
    item = next(i for i in items if i.id.startswith(demo_catalog.s2_item_ids[0]))
    frame = gpd.read_parquet(item.assets["embedding_vectors"].get_absolute_href())
    assert len(frame) > 0 and frame.crs.to_epsg() == 4326
    rows = {r["chip_id"]: r for r in plan_rows(Path(cfg.output))}
    bands = item.assets["embeddings"].extra_fields["raster:bands"]
    with rasterio.open(item.assets["embeddings"].get_absolute_href()) as src:
        q = src.read()
        assert src.res == (240.0, 240.0)  # one pixel per window centre (24 px stride)
    for chip_id, vec in zip(frame["chip_id"], frame["embedding"], strict=True):
        chip = read_chip(rows[chip_id])
        with torch.inference_mode():
            want = model.backbone(torch.from_numpy(chip.s1[None]), torch.from_numpy(chip.s2[None]))[0].numpy()
        np.testing.assert_allclose(np.asarray(vec), want, rtol=1e-4, atol=1e-4)
    scale = np.array([b["scale"] for b in bands])
    offset = np.array([b["offset"] for b in bands])
    valid = q[0] != -128
    decoded = q[:, valid].T * scale + offset
    vectors = np.stack(frame["embedding"].to_numpy())
    assert decoded.shape == vectors.shape
    assert np.abs(np.sort(decoded, axis=0) - np.sort(vectors, axis=0)).max() <= scale.max() * 0.51 + 1e-6


def test_pixel_embeddings_are_the_backbones_feature_maps_at_10_m(stack, demo_catalog, models, tmp_path) -> None:
    """``embeddings: {mode: pixel}``: where one window alone covers a pixel, the map is that window's features."""
    from eoforge.predict.model import _feature_maps

    item = demo_catalog.s2_item_ids[0]
    cfg = predict_cfg(
        demo_catalog,
        tmp_path / "pixel-emb",
        models["classifier"],
        [item],
        products=["embeddings"],
        embeddings={"mode": "pixel"},
        tile_px=64,
    )
    result = run_predict(cfg)
    model = load_registered_model("models:/pt-classifier/1").eval()
    rows = {window_origin(r["chip_id"])[1:]: r for r in plan_rows(tmp_path / "pixel-emb")}
    tiles = {t.id: t for t in pystac.Collection.from_file(result.collection).get_items()}
    # window (0, 0) alone covers item pixels [0, 24)², in tile 00-00; window (96, 96) alone [104, 128)², in tile 01-01
    for win, key, first, origin in (((0, 0), "-00-00", 0, 0), ((96, 96), "-01-01", 104, 64)):
        tile = next(t for k, t in tiles.items() if k.endswith(key))
        asset = tile.assets["embeddings"]
        bands = asset.extra_fields["raster:bands"]
        scale = np.array([b["scale"] for b in bands])[:, None, None]
        offset = np.array([b["offset"] for b in bands])[:, None, None]
        at = slice(first - origin, first - origin + 24)
        with rasterio.open(asset.get_absolute_href()) as src:
            assert src.res == (10.0, 10.0) and src.count == len(bands)
            decoded = src.read()[:, at, at] * scale + offset
        chip = read_chip(rows[win])
        with torch.inference_mode():
            fmap = _feature_maps(model, torch.from_numpy(chip.s1[None]), torch.from_numpy(chip.s2[None]))[0]
        inside = slice(first - win[0], first - win[0] + 24)
        want = fmap.half().float().numpy()[:, inside, inside]
        assert decoded.shape == want.shape == (len(bands), 24, 24)
        assert np.abs(decoded - want).max() <= scale.max() * 0.51 + 2e-3 * np.abs(want).max()
    assert all("embedding_vectors" in t.assets for t in tiles.values()) and len(tiles) == result.tiles == 4


def test_items_cogs_and_collection_validate_and_read_back(classified) -> None:
    _cfg, result = classified
    collection = json.loads(Path(result.collection).read_text())
    validate_stac(collection)
    items = list(pystac.Collection.from_file(result.collection).get_items())
    assert len(items) == result.tiles > 2
    for item in items:
        d = item.to_dict(include_self_link=False, transform_hrefs=False)
        validate_stac(d)
        assert {link["rel"] for link in d["links"]} >= {"derived_from", "collection"}
        assert d["properties"]["eoforge:model_uri"] == "models:/pt-classifier/1"
        for key in ("classes", "probabilities", "embeddings"):
            href = item.assets[key].get_absolute_href()
            ok, errors, _ = validate_cog(href)
            assert ok, (href, errors)
            assert sha256_multihash(Path(href).read_bytes()) == item.assets[key].extra_fields["file:checksum"]
        with rasterio.open(item.assets["classes"].get_absolute_href()) as src:
            assert src.overviews(1), "COG without overviews"
            assert src.colormap(1)[0][3] == 255 and src.nodata == 255
            tile = src.read(1)
        # odc-stac gives back exactly what was written
        from odc.stac import load

        ds = load([item], bands=["classes"], chunks=None)
        np.testing.assert_array_equal(ds["classes"].values[0], tile)


def test_cloudy_windows_are_nodata_not_guesses(classified, demo_catalog) -> None:
    _cfg, result = classified
    classes, _ = mosaic(result.collection, "classes", demo_catalog.s2_item_ids[1])
    assert result.nodata_windows > 0  # under the cloudy date's clouds: nodata by design
    assert result.failed_windows == 0  # and no read failed: a cloud is not a fault
    assert (classes == 255).any() and (classes != 255).any()


def test_windows_that_fail_to_read_are_counted_apart_with_their_reason(stack, models, tmp_path) -> None:
    """A broken S1 file: its windows are nodata, counted as failed (not as clouds), and the run says why."""
    from eoforge.demo.catalog import write_demo_catalog
    from mlflow import MlflowClient

    cat = write_demo_catalog(tmp_path / "catalog", scenes=2, seed=0, size_px=128)
    s1 = pystac.Item.from_file(str(next(cat.root.rglob(f"{cat.s1_item_ids[0]}.json"))))
    broken = next(cat.root.rglob(f"{cat.s1_item_ids[0]}/{Path(s1.assets['vv'].href).name}"))
    broken.write_bytes(b"not a GeoTIFF")
    cfg = predict_cfg(cat, tmp_path / "out", models["classifier"], [cat.s2_item_ids[0]])
    result = run_predict(cfg)
    assert result.failed_windows == result.windows - result.nodata_windows > 0
    run = MlflowClient(stack.mlflow_url).get_run(result.run_id)
    assert run.data.metrics["predict/windows_failed"] == result.failed_windows
    assert run.data.metrics["predict/windows_nodata"] == result.nodata_windows
    errors = json.loads(
        Path(
            MlflowClient(stack.mlflow_url).download_artifacts(
                result.run_id, "predict/window_errors.json", str(tmp_path)
            )
        ).read_text()
    )
    assert errors["failed"] == result.failed_windows and broken.name in errors["first"][0]
    classes, _ = mosaic(result.collection, "classes", cat.s2_item_ids[0])
    assert (classes == 255).all()  # no guess from S2 alone where the model reads both sensors


def test_run_is_recorded_in_mlflow(classified, stack) -> None:
    from mlflow import MlflowClient

    _cfg, result = classified
    client = MlflowClient(stack.mlflow_url)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["predict/tiles"] == result.tiles
    assert run.data.tags["eoforge.collection"] == result.collection
    assert run.data.tags["eoforge.model_uri"] == "models:/pt-classifier/1"
    assert run.data.params["model"] == "models:/pt-classifier@champion"
    made = json.loads(client.get_model_version("pt-classifier", "1").tags["eoforge.collections"])
    assert result.collection in made


def test_inference_actors_need_neither_mlflow_nor_credentials(classified, stack) -> None:
    """The driver reads the weights once (``share_weights``); an actor whose MLflow is unreachable still
    builds the registered model from those bytes and predicts what the model itself gives."""
    import ray
    from eoforge.data.normalize import normalize_batch
    from eoforge.predict.model import WindowPredictor, resolve_models, share_weights

    spec = resolve_models(stack.mlflow_url, "models:/pt-classifier/1", None, ["classes"], None)
    weights = share_weights(spec, stack.mlflow_url)
    nowhere = {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_TRACKING_USERNAME": "",
        "MLFLOW_TRACKING_PASSWORD": "",
    }
    actor = (
        ray.remote(WindowPredictor)
        .options(num_cpus=0.5, runtime_env={"env_vars": nowhere})
        .remote(spec.to_dict(), weights)
    )
    rng = np.random.default_rng(0)
    batch = {
        "s2": rng.integers(0, 5000, (3, 12, 32, 32)).astype(np.uint16),
        "s1": rng.uniform(-25, -5, (3, 2, 32, 32)).astype(np.float16),
        "valid": np.ones((3, 2, 32, 32), bool),
        "ok": np.array([True, True, False]),
    }
    out = ray.get(actor.__call__.remote(batch))
    ray.kill(actor)
    s2, s1 = normalize_batch(
        torch.from_numpy(batch["s2"].astype(np.int32)),
        torch.from_numpy(batch["s1"]),
        torch.from_numpy(batch["valid"]),
        "ssl4eo",
    )
    with torch.inference_mode():
        expected = torch.softmax(load_registered_model("models:/pt-classifier/1").eval()(s1, s2), 1).numpy()
    np.testing.assert_allclose(out["probs"][:2].astype(np.float32), expected[:2], atol=2e-3)
    assert not out["probs"][2].any()  # a window that failed to read gets zeros


def test_a_rerun_writes_only_the_missing_and_broken_tiles(classified) -> None:
    import shutil

    cfg, first = classified
    out = Path(cfg.output)
    tiles = sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    shutil.rmtree(tiles[0])
    broken = tiles[1] / "classes.tif"
    data = bytearray(broken.read_bytes())
    data[-1] ^= 0xFF
    broken.write_bytes(bytes(data))
    untouched = {p: (p / f"{p.name}.json").stat().st_mtime_ns for p in tiles[2:]}
    again = run_predict(cfg)
    assert (again.written, again.skipped, again.tiles) == (2, first.tiles - 2, first.tiles)
    assert all((p / f"{p.name}.json").stat().st_mtime_ns == t for p, t in untouched.items())
    assert (tiles[0] / f"{tiles[0].name}.json").is_file()


def test_per_pixel_outputs_blend_without_seams(stack, demo_catalog, models, tmp_path) -> None:
    """Every window agrees on a pixel's value, so any step at a window or tile border would show.

    Overlap 6 px (stride 26): the regular grid stops at 110 px of the 128 px scene, so the last
    row and column of windows are flush with its bottom and right edges and overlap their
    neighbours by 14 px; those seams must not show either.

    The stream runs under an object-store budget smaller than one window block (``inflight_mb: 1``):
    Ray Data still has to pass every block through, one at a time, with nothing lost.
    """

    item = demo_catalog.s2_item_ids[0]
    cfg = predict_cfg(
        demo_catalog,
        tmp_path / "pixel",
        models["pixel"],
        [item],
        tile_px=40,
        overlap_px=6,
        inference={"batch_size": 32, "inflight_mb": 1},
    )
    result = run_predict(cfg)
    starts = {window_origin(r["chip_id"])[1] for r in plan_rows(tmp_path / "pixel")}
    assert starts == {0, 26, 52, 78, 96}
    probs, grid = mosaic(result.collection, "probabilities", item)
    model = load_registered_model("models:/pt-pixel/1").eval()
    expected = np.full_like(probs, 255)
    for row in plan_rows(tmp_path / "pixel"):
        chip = read_chip(row)
        with torch.inference_mode():
            p = torch.softmax(model(torch.from_numpy(chip.s1[None]), torch.from_numpy(chip.s2[None])), 1)[0].numpy()
        col, r = (~grid) * (row["transform"][2], row["transform"][5])
        expected[:, round(r) : round(r) + 32, round(col) : round(col) + 32] = np.rint(p * 100)
    assert expected.shape == probs.shape
    assert np.abs(probs.astype(int) - expected.astype(int)).max() <= 1


def test_a_constant_model_gives_a_seamless_map(stack, demo_catalog, models, tmp_path) -> None:
    item = demo_catalog.s2_item_ids[0]
    cfg = predict_cfg(demo_catalog, tmp_path / "constant", models["constant"], [item], tile_px=40, blend="cosine")
    result = run_predict(cfg)
    classes, _ = mosaic(result.collection, "classes", item)
    assert classes.shape[-2:] == (128, 128)
    assert (classes == 3).all()


def test_a_saved_model_folder_maps_the_scene_to_its_edges_with_its_lineage(
    stack, demo_catalog, models, tmp_path
) -> None:
    """``model:`` a folder (a registered version downloaded as weights + card); windows flush with the edges."""
    import hashlib

    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(stack.mlflow_url)
    folder = Path(mlflow.artifacts.download_artifacts("models:/pt-constant/1", dst_path=str(tmp_path / "saved")))
    assert {p.name for p in folder.iterdir()} == {"weights.safetensors", "card.json"}
    item = demo_catalog.s2_item_ids[0]
    cfg = predict_cfg(demo_catalog, tmp_path / "out", str(folder), [item], tile_px=40, overlap_px=6)
    result = run_predict(cfg)
    classes, _ = mosaic(result.collection, "classes", item)
    assert classes.shape[-2:] == (128, 128)
    assert (classes == 3).all(), "a nodata strip or a seam"  # the last 18 px at the bottom and right too
    sha = hashlib.sha256((folder / "weights.safetensors").read_bytes()).hexdigest()
    for tile in pystac.Collection.from_file(result.collection).get_items():
        assert tile.properties["eoforge:model_uri"] == str(folder)
        assert tile.properties["eoforge:model_sha256"] == sha
        assert tile.assets["model"].href == str(folder / "weights.safetensors")
    tags = MlflowClient(stack.mlflow_url).get_run(result.run_id).data.tags
    assert (tags["eoforge.model_uri"], tags["eoforge.model_sha256"]) == (str(folder), sha)


def test_a_model_for_other_bands_is_refused_before_any_read(stack, demo_catalog, models, tmp_path) -> None:
    cfg = predict_cfg(demo_catalog, tmp_path / "refused", models["wrong_bands"], [demo_catalog.s2_item_ids[0]])
    with pytest.raises(ConfigError, match=r"s2_bands \['B04', 'B03', 'B02'\]"):
        run_predict(cfg)
    assert not (tmp_path / "refused").exists()


def test_outputs_go_to_s3_and_a_rerun_skips_them(stack, demo_catalog, models, tmp_path, monkeypatch) -> None:
    """``output: s3://...`` against moto's S3 server (a real HTTP S3 API on 127.0.0.1)."""
    from eoforge.storage import s3_filesystem

    from tests.support.s3 import aws_env, moto_server

    server = moto_server(tmp_path / "moto.log")
    endpoint = next(server)
    try:
        aws_env(monkeypatch, endpoint, tmp_path, "predict-test-secret")
        s3 = s3_filesystem(allow_bucket_creation=True)
        s3.create_dir("eoforge-products")
        item = demo_catalog.s2_item_ids[0]
        cfg = predict_cfg(demo_catalog, "s3://eoforge-products/demo", models["constant"], [item], tile_px=64)
        first = run_predict(cfg)
        assert first.collection == "s3://eoforge-products/demo/collection.json"
        with s3.open_input_stream("eoforge-products/demo/collection.json") as f:
            collection = json.loads(f.read())
        links = [link["href"] for link in collection["links"] if link["rel"] == "item"]
        assert len(links) == first.tiles == 4
        for href in links:
            key = "eoforge-products/demo/" + href.removeprefix("./")
            with s3.open_input_stream(key) as f:
                tile = json.loads(f.read())
            validate_stac(tile)
            cog_key = key.rsplit("/", 1)[0] + "/classes.tif"
            with s3.open_input_stream(cog_key) as f:
                assert sha256_multihash(f.read()) == tile["assets"]["classes"]["file:checksum"]
        again = run_predict(cfg)
        assert (again.written, again.skipped) == (0, first.tiles)
    finally:
        server.close()
