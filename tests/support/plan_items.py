"""Synthetic S2 / S1 STAC items with full ``proj:`` metadata and no pixel files, for planning at scale.

The items follow the ``eoforge`` provider profile (asset keys ``B01``..``B12``, ``SCL``, ``vv``,
``vh``; ``proj:code``/``proj:epsg`` on the item, ``proj:shape``/``proj:transform`` per asset,
``raster:bands`` scale/offset, S1 ``unit: dB``). Hrefs point at ``s3://eoforge-bench/...`` objects
that do not exist: planning never opens a file when the proj metadata is there (a test checks
it). S2 tiles are laid on one UTM zone; each S1 item covers its tile with a margin, one day
after its S2 date.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pystac
from pyproj import Transformer

S2_NATIVE = {
    "B01": 60,
    "B02": 10,
    "B03": 10,
    "B04": 10,
    "B05": 20,
    "B06": 20,
    "B07": 20,
    "B08": 10,
    "B8A": 20,
    "B09": 60,
    "B11": 20,
    "B12": 20,
    "SCL": 20,
}
S2_COLLECTION = "sentinel-2-l2a"
S1_COLLECTION = "sentinel-1-grd"
START = datetime(2024, 4, 1, 10, 20, tzinfo=UTC)
BUCKET = "s3://eoforge-bench"


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def utm_footprint(epsg: int, x0: float, y0: float, width_m: float, height_m: float) -> list[list[float]]:
    """Lon/lat ring of a UTM rectangle (top-left x0, y0), 8 points per side."""
    to_ll = Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
    ring = []
    for k in range(8):
        t = k / 8
        ring.append((x0 + t * width_m, y0))
    for k in range(8):
        t = k / 8
        ring.append((x0 + width_m, y0 - t * height_m))
    for k in range(8):
        t = k / 8
        ring.append((x0 + width_m - t * width_m, y0 - height_m))
    for k in range(8):
        t = k / 8
        ring.append((x0, y0 - height_m + t * height_m))
    xs, ys = zip(*ring, strict=True)
    lon, lat = to_ll.transform(xs, ys)
    coords = [[float(a), float(b)] for a, b in zip(lon, lat, strict=True)]
    return [*coords, coords[0]]


def s2_item(
    item_id: str,
    epsg: int,
    x0: float,
    y0: float,
    size_px: int,
    when: datetime,
    cloud: float = 5.0,
    extra_properties: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An S2 L2A item dict: a ``size_px`` x ``size_px`` tile at 10 m, top-left corner (x0, y0) in EPSG:epsg."""
    ring = utm_footprint(epsg, x0, y0, size_px * 10.0, size_px * 10.0)
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    assets = {}
    for band, res in S2_NATIVE.items():
        n = size_px * 10 // res
        raster = {"data_type": "uint16", "nodata": 0, "spatial_resolution": res}
        if band != "SCL":
            raster.update(scale=0.0001, offset=0)
        assets[band] = {
            "href": f"{BUCKET}/{S2_COLLECTION}/{item_id}/{band}.tif",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "raster:bands": [raster],
            "proj:shape": [n, n],
            "proj:transform": [float(res), 0.0, float(x0), 0.0, -float(res), float(y0)],
        }
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        ],
        "id": item_id,
        "collection": S2_COLLECTION,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "properties": {
            "datetime": _iso(when),
            "platform": "sentinel-2a",
            "constellation": "sentinel-2",
            "eo:cloud_cover": cloud,
            "proj:code": f"EPSG:{epsg}",
            "proj:epsg": epsg,
            "s2:processing_baseline": "05.10",
            **(extra_properties or {}),
        },
        "links": [],
        "assets": assets,
    }


def s1_item(item_id: str, bbox: list[float], when: datetime) -> dict[str, Any]:
    """An S1 GRD item dict (VV, VH in dB) whose footprint is the lon/lat rectangle ``bbox``."""
    w, s, e, n = bbox
    ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
    assets = {
        band: {
            "href": f"{BUCKET}/{S1_COLLECTION}/{item_id}/{band}.tif",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "sar:polarizations": [band.upper()],
            "raster:bands": [{"data_type": "float32", "nodata": -9999.0, "unit": "dB", "spatial_resolution": 10}],
        }
        for band in ("vv", "vh")
    }
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        ],
        "id": item_id,
        "collection": S1_COLLECTION,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [w, s, e, n],
        "properties": {
            "datetime": _iso(when),
            "platform": "sentinel-1a",
            "constellation": "sentinel-1",
            "sar:instrument_mode": "IW",
            "sar:polarizations": ["VV", "VH"],
            "sar:product_type": "GRD",
        },
        "links": [],
        "assets": assets,
    }


def collections(bbox: list[float]) -> list[dict[str, Any]]:
    """The two collection documents (pgstac needs them before the items)."""
    out = []
    for cid in (S2_COLLECTION, S1_COLLECTION):
        out.append(
            {
                "type": "Collection",
                "stac_version": "1.1.0",
                "id": cid,
                "description": f"synthetic {cid} for planner tests (no pixels)",
                "license": "CC-BY-4.0",
                "extent": {
                    "spatial": {"bbox": [bbox]},
                    "temporal": {"interval": [[_iso(START - timedelta(days=1)), None]]},
                },
                "links": [],
            }
        )
    return out


def tile_items(
    tiles: int, dates: int, size_px: int = 10980, epsg: int = 32632, per_row: int = 6
) -> Iterator[dict[str, Any]]:
    """S2 + S1 item dicts: ``tiles`` UTM tiles of ``size_px`` 10 m pixels, ``dates`` acquisitions each.

    Tiles are ``size_px * 10`` m apart, ``per_row`` per row, from (300000, 5400000) in EPSG:epsg
    (zone 32N: northern Italy / Alps); S1 item ``d`` of a tile is one day after S2 date ``d`` and
    covers the tile with a 0.05 degree margin.
    """
    side = size_px * 10.0
    for t in range(tiles):
        x0, y0 = 300000.0 + (t % per_row) * side, 5400000.0 - (t // per_row) * side
        for d in range(dates):
            when = START + timedelta(days=10 * d)
            s2 = s2_item(f"S2A_T{t:03d}_{when:%Y%m%d}", epsg, x0, y0, size_px, when)
            w, s, e, n = s2["bbox"]
            s1 = s1_item(
                f"S1A_T{t:03d}_{when + timedelta(days=1):%Y%m%d}",
                [w - 0.05, s - 0.05, e + 0.05, n + 0.05],
                when + timedelta(days=1),
            )
            yield s2
            yield s1


def chips_per_tile(size_px: int, chip_px: int) -> int:
    """Chips of the regular grid (stride = chip) on one tile."""
    return (size_px // chip_px) ** 2


def tiles_for(chips: int, size_px: int = 10980, chip_px: int = 64, dates: int = 3) -> tuple[int, int]:
    """(tiles, dates) whose plan has at least ``chips`` chips."""
    items = max(1, math.ceil(chips / chips_per_tile(size_px, chip_px)))
    dates = min(dates, items)
    return math.ceil(items / dates), dates


def write_ndjson(path: Path, docs: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> int:
    """One JSON document per line; returns how many."""
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, separators=(",", ":")) + "\n")
            n += 1
    return n


def write_static_catalog(root: Path, items: list[dict[str, Any]]) -> Path:
    """A static STAC catalog (catalog.json + collections) holding ``items``; returns catalog.json."""
    catalog = pystac.Catalog("synthetic", "synthetic items for planner tests")
    bbox = [
        min(it["bbox"][0] for it in items),
        min(it["bbox"][1] for it in items),
        max(it["bbox"][2] for it in items),
        max(it["bbox"][3] for it in items),
    ]
    for doc in collections(bbox):
        coll = pystac.Collection.from_dict(doc)
        coll.add_items([pystac.Item.from_dict(it) for it in items if it["collection"] == coll.id])
        catalog.add_child(coll)
    catalog.normalize_hrefs(str(root))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"
