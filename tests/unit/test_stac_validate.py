"""Offline STAC validation against the vendored schemas (eoforge.predict.stac_validate)."""

from __future__ import annotations

import copy
import json
import re
import socket
from datetime import UTC, datetime
from importlib.resources import files

import pystac
import pytest
from eoforge.predict import stac_validate
from eoforge.predict.stac_validate import SchemaNotShipped, StacValidationError, shipped_schemas, validate_stac
from pyproj import CRS
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.mlm import (
    AssetGeneralMLMExtension,
    InputStructure,
    MLMExtension,
    ModelInput,
    ModelOutput,
    ResultStructure,
    TaskType,
)
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension

PROCESSING = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
ITEM_SCHEMA = "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"
BANDS = ["B02", "B03", "B04", "B08"]
BBOX = [600000.0, 4997440.0, 602560.0, 5000000.0]


class _NoNetwork(socket.socket):
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted during STAC validation")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs with sockets disabled and with the schema registry built from scratch."""
    monkeypatch.setattr(socket, "socket", _NoNetwork)
    monkeypatch.setattr(socket, "create_connection", _NoNetwork)
    monkeypatch.setattr(socket, "getaddrinfo", _NoNetwork)
    stac_validate._schema_files.cache_clear()
    stac_validate._registry.cache_clear()


def _classes() -> list[Classification]:
    return [
        Classification.create(value=0, name="nodata", description="No data", nodata=True),
        Classification.create(value=1, name="water", description="Open water", color_hint="1F78B4"),
        Classification.create(value=2, name="forest", description="Tree cover", color_hint="33A02C"),
    ]


def _item() -> pystac.Item:
    geometry = {
        "type": "Polygon",
        "coordinates": [[[3.0, 45.1], [3.03, 45.1], [3.03, 45.12], [3.0, 45.12], [3.0, 45.1]]],
    }
    item = pystac.Item(
        id="pred-31TEL-20240601",
        geometry=geometry,
        bbox=[3.0, 45.1, 3.03, 45.12],
        datetime=datetime(2024, 6, 1, 10, 30, tzinfo=UTC),
        properties={},
    )

    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.apply(code="EPSG:32631", shape=[256, 256], transform=[10.0, 0.0, 600000.0, 0.0, -10.0, 5000000.0], bbox=BBOX)
    proj.geometry = geometry
    proj.projjson = CRS.from_epsg(32631).to_json_dict()

    classes = pystac.Asset(
        href="s3://maps/pred-31TEL-20240601/classes.tif",
        media_type=pystac.MediaType.COG,
        roles=["data"],
    )
    item.add_asset("classes", classes)
    RasterExtension.ext(classes, add_if_missing=True).apply(
        bands=[RasterBand.create(nodata=0, data_type=DataType.UINT8, spatial_resolution=10.0)]
    )
    ClassificationExtension.ext(classes, add_if_missing=True).apply(classes=_classes())
    FileExtension.ext(classes, add_if_missing=True).apply(size=65536, checksum="1220" + "ab" * 32)

    model = pystac.Asset(href="s3://models/landcover/7/model.pt2", roles=["mlm:model"], title="exported model")
    item.add_asset("model", model)
    AssetGeneralMLMExtension.ext(model, add_if_missing=True).apply(artifact_type="torch.export.save")
    bands = [RasterBand.create(data_type=DataType.FLOAT32) for _ in BANDS]
    RasterExtension.ext(model).apply(bands=bands)
    for band, name in zip(model.extra_fields["raster:bands"], BANDS, strict=True):
        band["name"] = name  # MLM needs named bands; raster v1.1.0 has no name field of its own

    MLMExtension.ext(item, add_if_missing=True).apply(
        name="eoforge landcover",
        architecture="ViT-S/16 + UPerNet",
        tasks=[TaskType.SEMANTIC_SEGMENTATION],
        input=[
            ModelInput.create(
                name="s2-l2a",
                bands=BANDS,
                input=InputStructure.create(
                    shape=[-1, 4, 256, 256], dim_order=["batch", "bands", "height", "width"], data_type=DataType.FLOAT32
                ),
            )
        ],
        output=[
            ModelOutput.create(
                name="classes",
                tasks=[TaskType.SEMANTIC_SEGMENTATION],
                result=ResultStructure.create(
                    shape=[-1, 256, 256], dim_order=["batch", "height", "width"], data_type=DataType.UINT8
                ),
                classes=_classes()[1:],
            )
        ],
        framework="pytorch",
        framework_version="2.15.0",
        pretrained=True,
    )

    item.properties.update(
        {
            "processing:software": {"eoforge": "0.1.0"},
            "processing:lineage": "Predicted by eoforge from Sentinel-2 L2A",
            "processing:datetime": "2024-06-02T08:00:00Z",
            "processing:version": "7",
        }
    )
    item.stac_extensions.append(PROCESSING)
    return item


def _collection() -> pystac.Collection:
    collection = pystac.Collection(
        id="eoforge-landcover",
        description="Land-cover maps predicted by eoforge.",
        extent=pystac.Extent(
            pystac.SpatialExtent([[3.0, 45.1, 3.03, 45.12]]),
            pystac.TemporalExtent([[datetime(2024, 6, 1, tzinfo=UTC), None]]),
        ),
        license="CC-BY-4.0",
    )
    ClassificationExtension.summaries(collection, add_if_missing=True).classes = _classes()
    ProjectionExtension.add_to(collection)
    collection.summaries.add("proj:code", ["EPSG:32631"])
    collection.add_item(_item())
    collection.normalize_hrefs("s3://maps/stac/eoforge-landcover")
    return collection


def _item_dict() -> dict:
    return _item().to_dict(include_self_link=False)


def test_item_with_all_extensions_validates() -> None:
    item = _item_dict()
    assert item["stac_version"] == "1.1.0"
    assert set(item["stac_extensions"]) <= set(shipped_schemas())
    assert len(item["stac_extensions"]) == 6
    validate_stac(item)


def test_collection_and_its_item_validate() -> None:
    collection = _collection()
    as_dict = collection.to_dict()
    assert as_dict["type"] == "Collection"
    assert "https://stac-extensions.github.io/classification/v2.0.0/schema.json" in as_dict["stac_extensions"]
    validate_stac(as_dict)
    (item,) = collection.get_items()
    item_dict = item.to_dict()
    assert item_dict["collection"] == "eoforge-landcover"
    validate_stac(item_dict)


def test_wrong_type_of_proj_code_names_projection_schema() -> None:
    item = _item_dict()
    item["properties"]["proj:code"] = 32631
    with pytest.raises(StacValidationError, match=r"projection/v2\.0\.0/schema\.json") as info:
        validate_stac(item)
    assert info.value.object_id == "pred-31TEL-20240601"
    assert "pred-31TEL-20240601" in str(info.value)
    assert any("proj:code" in m for m in info.value.messages)


def test_missing_mlm_field_names_mlm_schema() -> None:
    item = _item_dict()
    del item["properties"]["mlm:architecture"]
    with pytest.raises(StacValidationError, match=r"mlm/v1\.4\.0/schema\.json") as info:
        validate_stac(item)
    assert "mlm:architecture" in str(info.value)


def test_missing_geometry_names_item_schema() -> None:
    item = _item_dict()
    del item["geometry"]
    with pytest.raises(StacValidationError, match=re.escape(ITEM_SCHEMA)) as info:
        validate_stac(item)
    assert "geometry" in str(info.value)


def test_bad_classification_and_processing_fields_are_caught() -> None:
    item = _item_dict()
    item["assets"]["classes"]["classification:classes"][1]["value"] = "water"
    with pytest.raises(StacValidationError, match=r"classification/v2\.0\.0"):
        validate_stac(item)
    item = _item_dict()
    item["properties"]["processing:software"] = "eoforge"
    with pytest.raises(StacValidationError, match=re.escape(PROCESSING)):
        validate_stac(item)


def test_unknown_extension_raises_schema_not_shipped() -> None:
    item = _item_dict()
    unknown = "https://stac-extensions.github.io/sar/v1.0.0/schema.json"
    item["stac_extensions"].append(unknown)
    with pytest.raises(SchemaNotShipped) as info:
        validate_stac(item)
    assert info.value.url == unknown
    assert unknown in str(info.value)
    assert "https://stac-extensions.github.io/mlm/v1.4.0/schema.json" in str(info.value)


def test_unshipped_core_version_raises_schema_not_shipped() -> None:
    item = _item_dict()
    item["stac_version"] = "1.0.0"
    with pytest.raises(SchemaNotShipped, match=r"v1\.0\.0/item-spec"):
        validate_stac(item)


def test_network_is_really_blocked() -> None:
    with pytest.raises(AssertionError, match="network access"):
        socket.create_connection(("stac-extensions.github.io", 443))


def test_every_ref_in_every_shipped_schema_resolves_locally() -> None:
    registry = stac_validate._registry()
    root = files("eoforge.predict") / "stac_schemas"
    checked = 0
    for url in shipped_schemas():
        path = root.joinpath(*url.removeprefix("https://").split("/"))
        text = path.read_text("utf-8")
        base = registry[url].id() or url
        resolver = registry.resolver(base_uri=base)
        for ref in set(re.findall(r'"\$ref":\s*"([^"]+)"', text)):
            resolver.lookup(ref)
            checked += 1
    assert checked > 100


def test_shipped_files_are_the_published_schemas() -> None:
    root = files("eoforge.predict") / "stac_schemas"
    for url in shipped_schemas():
        schema = json.loads(root.joinpath(*url.removeprefix("https://").split("/")).read_text("utf-8"))
        assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
        declared = schema["$id"].rstrip("#")
        assert declared == url or declared == url.replace("common.json", "commonjson")  # upstream typo in v1.1.0


def test_validation_does_not_mutate_input() -> None:
    item = _item_dict()
    before = copy.deepcopy(item)
    validate_stac(item)
    assert item == before
