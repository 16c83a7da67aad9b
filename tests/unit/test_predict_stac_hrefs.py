"""What a predict run publishes carries no signed URL: derived_from links, asset hrefs, any string (no Ray).

The source items' self hrefs are planted with SAS / presigned-URL signatures; one tile and the
collection are written for real (COG, item, collection.json on disk) with a saved model folder,
and the files are searched for the signatures.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
from eoforge.bands import DFC_CLASSES
from eoforge.catalog.pairing import Pair
from eoforge.config import parse_config
from eoforge.config.predict import PredictConfig
from eoforge.predict.assemble import TileProducts
from eoforge.predict.grid import ItemGrid
from eoforge.predict.job import TilePlan
from eoforge.predict.model import resolve_models
from eoforge.predict.stac_items import public_href
from eoforge.predict.stac_validate import validate_stac
from eoforge.predict.tiles import TileWriter, finish_collection

from tests.support.predict_models import card, constant_segmenter, save_folder

SECRETS = ("PLANTED-SAS-SIGNATURE", "PLANTED-AMZ-SIGNATURE", "PLANTED-TOKEN")
S2_HREF = "https://eoforge.blob.core.windows.net/stac/S2X.json"
S1_HREF = "https://bucket.s3.amazonaws.com/stac/S1X.json"


def _item(item_id: str, href: str) -> pystac.Item:
    geom = {"type": "Polygon", "coordinates": [[[9, 45], [9.01, 45], [9.01, 45.01], [9, 45.01], [9, 45]]]}
    item = pystac.Item(item_id, geom, [9, 45, 9.01, 45.01], datetime(2024, 5, 7, 10, tzinfo=UTC), {})
    item.set_self_href(href)
    return item


def test_public_href_drops_signatures_and_keeps_the_resource() -> None:
    assert public_href(f"{S2_HREF}?sv=2024-05-04&se=2030-01-01&sig={SECRETS[0]}") == S2_HREF
    assert public_href(f"{S1_HREF}?X-Amz-Credential=AK%2F&X-Amz-Signature={SECRETS[1]}") == S1_HREF
    assert public_href(f"https://user:{SECRETS[2]}@host/a.json") == "https://***@host/a.json"
    assert public_href(f"{S2_HREF}#access_token={SECRETS[2]}") == S2_HREF
    assert public_href("./classes.tif") == "./classes.tif"
    assert public_href("https://host/ui#/experiments/1") == "https://host/ui#/experiments/1"


def test_items_and_collection_carry_no_signed_url(tmp_path: Path) -> None:
    classes = list(DFC_CLASSES)
    folder = save_folder(constant_segmenter(len(classes), 3), card("segmentation", classes, 32), str(tmp_path / "m"))
    out = tmp_path / "out"
    raw = {
        "kind": "predict",
        "model": folder,
        "products": ["classes"],
        "catalog": {"backend": "static", "url": str(tmp_path / "catalog.json")},
        "aoi": {"item_ids": ["S2X"]},
        "tile_px": 32,
        "output": str(out),
        "run": {"name": "hrefs"},
    }
    cfg = parse_config(raw, "test", PredictConfig)
    models = resolve_models("http://127.0.0.1:9", folder, None, ["classes"], None)
    grid = ItemGrid("S2X", "EPSG:32632", 500000.0, 5000000.0, 10.0, 32, 32, 32, 24)
    s2 = _item("S2X", f"{S2_HREF}?sv=2024-05-04&se=2030-01-01&sr=b&sp=r&sig={SECRETS[0]}")
    s1 = _item("S1X", f"{S1_HREF}?X-Amz-Credential=AKIDX%2F20240507&X-Amz-Signature={SECRETS[1]}&token={SECRETS[2]}")
    items = {"S2X": {"grid": grid, "datetime": "2024-05-07T10:00:00+00:00", "s1_items": ["S1X"]}}
    writer = TileWriter(cfg, models, "http://127.0.0.1:9", "ab" * 32, "run-1", items, [Pair(s2, s1, 0.5, 1.0)])
    tile = TilePlan("S2X-00-00", grid, (0, 0), [], [])
    writer.write(tile, TileProducts(classes=np.full((32, 32), 3, np.uint8)))
    coll_uri = finish_collection(cfg, writer, models)

    written = [out / "S2X-00-00" / "S2X-00-00.json", Path(coll_uri)]
    for path in written:
        text = path.read_text()
        assert not any(s in text for s in SECRETS), path
        assert "sig=" not in text and "X-Amz-" not in text and "?" not in text, path
        validate_stac(json.loads(text))
    item = json.loads(written[0].read_text())
    assert sorted(link["href"] for link in item["links"] if link["rel"] == "derived_from") == sorted([S2_HREF, S1_HREF])
    weights = Path(folder) / "weights.safetensors"
    assert item["assets"]["model"]["href"] == str(weights)
    assert item["properties"]["eoforge:model_uri"] == folder
    assert item["properties"]["eoforge:model_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert writer.complete(tile)  # a rerun trusts it: same folder, same weights, same plan
