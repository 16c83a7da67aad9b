"""STAC items for BigEarthNet-MM patches on disk (real Sentinel-1 + Sentinel-2 data).

Layout read (as distributed by BigEarthNet v1.0 / BigEarthNet-S1):
``S2/<patch>/<patch>_<band>.tif`` (12 L2A bands, uint16 reflectance x 10000, 10/20/60 m) and
``S1/<patch>/<patch>_{VV,VH}.tif`` (float32 dB, 10 m, same grid as the S2 patch), each with
``<patch>_labels_metadata.json`` (CORINE labels, acquisition time; S1 names its S2 partner).

One item per patch, one asset per band file, with ``proj:code``/``proj:shape``/``proj:transform``
read from the file. Collections: ``bigearthnet-s2`` and ``bigearthnet-s1``. There is no
cloud metadata: the patches were selected cloud-free, so ``eo:cloud_cover`` is set to 0
(an assumption, noted in the collection description).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pystac
import rasterio
from pyproj import Transformer
from shapely.geometry import box, mapping
from shapely.ops import transform as shp_transform

from eoforge.bands import S1_BAND_NAMES, S2_BANDS
from eoforge.errors import CatalogError

S2_COLLECTION = "bigearthnet-s2"
S1_COLLECTION = "bigearthnet-s1"


def _asset(path: Path, roles: list[str], extra: dict[str, object]) -> tuple[pystac.Asset, dict[str, object]]:
    with rasterio.open(path) as src:
        proj = {
            "proj:code": src.crs.to_string(),
            "proj:shape": [src.height, src.width],
            "proj:transform": list(src.transform)[:6],
        }
        bounds, crs = src.bounds, src.crs.to_string()
    asset = pystac.Asset(
        path.absolute().as_uri(), media_type=pystac.MediaType.GEOTIFF, roles=roles, extra_fields={**proj, **extra}
    )
    return asset, {"bounds": bounds, "crs": crs}


def _item(
    item_id: str, collection: str, when: datetime, bounds: object, crs: str, props: dict[str, object]
) -> pystac.Item:
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    foot = shp_transform(to_ll.transform, box(*bounds))  # type: ignore[misc]
    return pystac.Item(
        item_id, mapping(foot), list(foot.bounds), when, {"proj:code": crs, **props}, collection=collection
    )


def _when(meta: dict[str, str]) -> datetime:
    text = meta.get("acquisition_date") or meta.get("acquisition_time") or ""
    return datetime.fromisoformat(text.replace(" ", "T")).replace(tzinfo=UTC)


def _meta(folder: Path) -> dict[str, object]:
    files = list(folder.glob("*_labels_metadata.json"))
    if not files:
        raise CatalogError(f"BigEarthNet patch {folder}: no *_labels_metadata.json")
    return json.loads(files[0].read_text())


def s2_item(folder: Path) -> pystac.Item:
    """Item of one S2 patch folder."""
    meta = _meta(folder)
    assets = {}
    info: dict[str, object] = {}
    for band in S2_BANDS:
        path = folder / f"{folder.name}_{band.name}.tif"
        if not path.is_file():
            raise CatalogError(f"BigEarthNet patch {folder.name}: missing band file {path.name}")
        extra = {
            "eo:bands": [
                {"name": band.name, "common_name": band.common_name, "center_wavelength": band.center_wavelength_um}
            ],
            "gsd": band.resolution_m,
        }
        assets[band.name], grid = _asset(path, ["data"], extra)
        if band.name == "B02":
            info = grid
    item = _item(
        folder.name,
        S2_COLLECTION,
        _when(meta),
        info["bounds"],
        str(info["crs"]),
        {"platform": "sentinel-2", "eo:cloud_cover": 0.0, "bigearthnet:labels": meta.get("labels", [])},
    )
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item


def s1_item(folder: Path) -> pystac.Item:
    """Item of one S1 patch folder (assets ``vv`` and ``vh``)."""
    meta = _meta(folder)
    assets = {}
    info: dict[str, object] = {}
    for band in S1_BAND_NAMES:
        path = folder / f"{folder.name}_{band.upper()}.tif"
        if not path.is_file():
            raise CatalogError(f"BigEarthNet patch {folder.name}: missing band file {path.name}")
        assets[band], info = _asset(path, ["data"], {"raster:bands": [{"unit": "dB", "data_type": "float32"}]})
    item = _item(
        folder.name,
        S1_COLLECTION,
        _when(meta),
        info["bounds"],
        str(info["crs"]),
        {
            "platform": "sentinel-1",
            "sar:polarizations": ["VV", "VH"],
            "sar:instrument_mode": "IW",
            "sar:product_type": "GRD",
            "bigearthnet:s2_patch": meta.get("corresponding_s2_patch"),
            "bigearthnet:labels": meta.get("labels", []),
        },
    )
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item


def write_bigearthnet_catalog(src: Path, out: Path) -> Path:
    """Write a static catalog for every patch under ``src/S2`` and ``src/S1``; returns catalog.json."""
    s2_dirs = sorted(p for p in (src / "S2").glob("*") if p.is_dir())
    s1_dirs = sorted(p for p in (src / "S1").glob("*") if p.is_dir())
    if not s2_dirs or not s1_dirs:
        raise CatalogError(f"BigEarthNet folder {src}: expected S1/<patch>/ and S2/<patch>/ folders")
    catalog = pystac.Catalog("bigearthnet-mm", "BigEarthNet-MM patches (real Sentinel-1/2 data)")
    for cid, dirs, build in ((S2_COLLECTION, s2_dirs, s2_item), (S1_COLLECTION, s1_dirs, s1_item)):
        items = [build(d) for d in dirs]
        extent = pystac.Extent(
            pystac.SpatialExtent(
                [
                    [
                        min(i.bbox[0] for i in items),
                        min(i.bbox[1] for i in items),
                        max(i.bbox[2] for i in items),
                        max(i.bbox[3] for i in items),
                    ]
                ]
            ),
            pystac.TemporalExtent([[min(i.datetime for i in items), max(i.datetime for i in items)]]),
        )
        coll = pystac.Collection(
            cid,
            f"BigEarthNet-MM {cid[-2:].upper()} patches; eo:cloud_cover=0 assumed "
            "(patches were selected cloud-free). CDLA-Permissive-1.0.",
            extent,
            license="CDLA-Permissive-1.0",
        )
        coll.add_items(items)
        catalog.add_child(coll)
    out.mkdir(parents=True, exist_ok=True)
    catalog.normalize_hrefs(str(out.absolute()))
    catalog.save(pystac.CatalogType.ABSOLUTE_PUBLISHED)
    return out.absolute() / "catalog.json"
