"""The STAC of a predict run: one Item per output tile, one Collection over them.

Items carry projection (the tile's grid), raster (bands, nodata, scale and offset), file
(size, checksum), classification (class names and colours of the class map), the ML-model
extension (the model, its inputs and outputs) and processing fields, with ``derived_from`` links
to the source S2 and S1 items and ``eoforge:model_uri`` (the pinned version) and
``eoforge:plan_hash`` for lineage. Built as plain dicts with the extensions' own field names, and
validated offline against the shipped schemas (:mod:`eoforge.predict.stac_validate`). Every href
and string in them passes through :mod:`eoforge.redact`: a signed source URL is published unsigned.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import eoforge
from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES
from eoforge.redact import redact, redact_tree

STAC_VERSION = "1.1.0"
EXT = {
    "proj": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "file": "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "classification": "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
    "mlm": "https://stac-extensions.github.io/mlm/v1.4.0/schema.json",
    "processing": "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
}
MEDIA = {
    "cog": "image/tiff; application=geotiff; profile=cloud-optimized",
    "parquet": "application/vnd.apache.parquet",
}


def public_href(href: str) -> str:
    """An href fit to publish in an item: redacted, without the marks redaction leaves.

    :func:`eoforge.redact.redact` drops the query string, user info and a credential-carrying
    fragment; the ``?…`` / ``#…`` it leaves in their place are dropped too. A signed URL (SAS
    ``sig=``, ``X-Amz-Signature=``, a token) becomes its unsigned form, which a reader signs again
    with their own credentials.
    """
    return redact(href).replace("?…", "").replace("#…", "")


def classes_field(names: list[str], colours: dict[int, tuple[int, int, int, int]]) -> list[dict[str, Any]]:
    """``classification:classes`` of a class map (value, name, colour hint), nodata 255 marked as such."""
    out = [
        {"value": i, "name": _slug(n), "title": n, "color_hint": "{:02X}{:02X}{:02X}".format(*colours[i][:3])}
        for i, n in enumerate(names)
    ]
    out.append({"value": 255, "name": "nodata", "description": "no valid input", "nodata": True})
    return out


def _slug(name: str) -> str:
    s = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return "-".join(p for p in s.split("-") if p) or "class"


def mlm_fields(model: dict[str, Any], window_px: int, classes: list[str] | None) -> dict[str, Any]:
    """The ML-model extension's fields for the model that made a product.

    Args:
        model: ``uri``, ``name`` (default: from a registry URI), ``task`` (None for a backbone),
            ``backbone``, ``normalize``.
        window_px: the model's input side, pixels.
        classes: class names (task models).
    """
    task = model.get("task")
    tasks = {"classification": ["classification"], "multilabel": ["classification"]}.get(
        task or "", ["semantic-segmentation"] if task == "segmentation" else ["embedding"]
    )
    inputs = [
        {
            "name": f"{sensor} {'reflectance' if sensor == 'S2' else 'backscatter (dB)'}",
            "bands": list(bands),
            "input": {
                "shape": [-1, len(bands), window_px, window_px],
                "dim_order": ["batch", "bands", "height", "width"],
                "data_type": "float32",
            },
            "pre_processing_function": {
                "format": "documentation-link",
                "expression": "eoforge.data.normalize.normalize_batch (" + str(model.get("normalize", "ssl4eo")) + ")",
            },
        }
        for sensor, bands in (("S2", S2_BAND_NAMES), ("S1", S1_BAND_NAMES))
    ]
    if task == "segmentation":
        out_shape, dims = [-1, len(classes or []), window_px, window_px], ["batch", "channel", "height", "width"]
    elif task:
        out_shape, dims = [-1, len(classes or [])], ["batch", "channel"]
    else:
        out_shape, dims = [-1, -1], ["batch", "embedding"]
    output = {
        "name": task or "embedding",
        "tasks": tasks,
        "result": {"shape": out_shape, "dim_order": dims, "data_type": "float32"},
    }
    if classes:
        output["classification:classes"] = [
            {"value": i, "name": _slug(n), "description": n} for i, n in enumerate(classes)
        ]
    return {
        "mlm:name": _mlm_name(str(model.get("name") or str(model["uri"]).removeprefix("models:/").replace("/", " v"))),
        "mlm:architecture": str(model.get("backbone") or "DualBackbone"),
        "mlm:tasks": tasks,
        "mlm:framework": "pytorch",
        "mlm:input": inputs,
        "mlm:output": [output],
    }


def _mlm_name(name: str) -> str:
    """``name`` in the characters ``mlm:name`` allows (a letter first, letters, digits, ``_.-`` and spaces)."""
    clean = re.sub(r"[^A-Za-z0-9_.\-\s]", " ", name).strip()
    clean = clean if clean[:1].isalpha() else f"model {clean}"
    return clean if clean[-1:].isalnum() else f"{clean}0"


def model_asset(href: str, uri: str) -> dict[str, Any]:
    """The ``mlm:model`` asset: the registered weights, with the input bands it reads (``raster:bands``).

    The weights are a safetensors file; the version's ``card.json`` beside it says how to build the module.
    """
    return {
        "href": href,
        "type": "application/octet-stream; application=safetensors",
        "title": f"the model's weights: {uri} (its card.json says how to build it)",
        "roles": ["mlm:model"],
        "mlm:artifact_type": "safetensors.torch.save_file",
        "raster:bands": [{"name": b} for b in (*S2_BAND_NAMES, *S1_BAND_NAMES)],
    }


def tile_item(
    item_id: str,
    geo: dict[str, Any],
    assets: dict[str, dict[str, Any]],
    sources: list[tuple[str, str]],
    lineage: dict[str, Any],
    mlm: dict[str, Any],
    collection_id: str,
) -> dict[str, Any]:
    """One output tile's Item (see module docstring).

    Args:
        item_id: the tile's id.
        geo: ``geometry`` and ``bbox`` (the footprint, lon/lat), ``datetime`` (the S2 acquisition,
            RFC 3339), ``crs``, ``shape`` (rows, cols) and ``transform`` (GDAL-order affine) of the tile.
        assets: key -> asset dict (href relative to the item, type, roles, raster / file / classification fields).
        sources: (rel, href) of the source items: ``derived_from`` links.
        lineage: ``model_uri``, ``plan_hash``, ``model_version_run`` and the run's ``run_id``.
        mlm: :func:`mlm_fields` of the model.
        collection_id: the run's collection.
    """
    props = {
        "datetime": geo["datetime"],
        "proj:code": str(geo["crs"]).upper(),
        "proj:shape": list(geo["shape"]),
        "proj:transform": [float(v) for v in geo["transform"][:6]],
        "processing:software": {"eoforge": eoforge.__version__},
        "processing:datetime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "processing:lineage": f"eoforge predict: {lineage['model_uri']} over plan {lineage['plan_hash'][:12]}",
        "processing:level": "L4",
        "eoforge:model_uri": lineage["model_uri"],
        **({"eoforge:model_sha256": lineage["model_sha256"]} if lineage.get("model_sha256") else {}),
        "eoforge:plan_hash": lineage["plan_hash"],
        "eoforge:run_id": lineage.get("run_id", ""),
        **mlm,
    }
    ext = sorted(
        {EXT["proj"], EXT["raster"], EXT["file"], EXT["mlm"], EXT["processing"]}
        | ({EXT["classification"]} if any("classification:classes" in a for a in assets.values()) else set())
    )
    item = {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": ext,
        "id": item_id,
        "geometry": geo["geometry"],
        "bbox": geo["bbox"],
        "properties": props,
        "links": [
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
            {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            {"rel": "root", "href": "../collection.json", "type": "application/json"},
            *({"rel": rel, "href": public_href(href), "type": "application/geo+json"} for rel, href in sources),
        ],
        "assets": {k: {**a, "href": public_href(a["href"])} for k, a in assets.items()},
        "collection": collection_id,
    }
    return redact_tree(item)  # no signed URL or credential anywhere in what is published


def collection(
    collection_id: str, items: list[dict[str, Any]], description: str, mlm: dict[str, Any], model_uri: str
) -> dict[str, Any]:
    """The run's Collection: extent from its items, item links, the model in the mlm fields."""
    west = min(i["bbox"][0] for i in items)
    south = min(i["bbox"][1] for i in items)
    east = max(i["bbox"][2] for i in items)
    north = max(i["bbox"][3] for i in items)
    times = sorted(i["properties"]["datetime"] for i in items)
    return redact_tree(
        {
            "type": "Collection",
            "stac_version": STAC_VERSION,
            "stac_extensions": [EXT["mlm"]],
            "id": collection_id,
            "description": description,
            "license": "other",
            "extent": {
                "spatial": {"bbox": [[west, south, east, north]]},
                "temporal": {"interval": [[times[0], times[-1]]]},
            },
            "eoforge:model_uri": model_uri,
            **mlm,
            "links": [
                {"rel": "root", "href": "./collection.json", "type": "application/json"},
                {"rel": "self", "href": "./collection.json", "type": "application/json"},
                *(
                    {"rel": "item", "href": f"./{i['id']}/{i['id']}.json", "type": "application/geo+json"}
                    for i in sorted(items, key=lambda x: x["id"])
                ),
            ],
        }
    )
