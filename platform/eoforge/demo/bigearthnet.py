"""STAC items for BigEarthNet-MM patches on disk (real Sentinel-1 + Sentinel-2 data).

Layout read (as distributed by BigEarthNet v1.0 / BigEarthNet-S1):
``S2/<patch>/<patch>_<band>.tif`` (12 L2A bands, uint16 reflectance x 10000, 10/20/60 m) and
``S1/<patch>/<patch>_{VV,VH}.tif`` (float32 dB, 10 m, same grid as the S2 patch), each with
``<patch>_labels_metadata.json`` (CORINE labels, acquisition time; S1 names its S2 partner).

One item per patch, one asset per band file, with ``proj:code``/``proj:shape``/``proj:transform``
read from the file (:class:`~eoforge.demo.geotiff.RasterInfo`); the STAC is written through
:mod:`eoforge.demo.stac_writer`. Collections: ``bigearthnet-s2`` and ``bigearthnet-s1``. There is no
cloud metadata: the patches were selected cloud-free, so ``eo:cloud_cover`` is set to 0
(an assumption, noted in the collection description).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pystac

from eoforge.bands import S1_BAND_NAMES, S2_BANDS
from eoforge.demo.geotiff import RasterInfo
from eoforge.demo.stac_writer import collection_of, eo_band, file_item, file_proj, new_asset, save_catalog
from eoforge.errors import CatalogError

S2_COLLECTION = "bigearthnet-s2"
S1_COLLECTION = "bigearthnet-s1"


def _band_assets(
    folder: Path, bands: dict[str, tuple[str, dict[str, object]]]
) -> tuple[dict[str, pystac.Asset], dict[str, RasterInfo]]:
    """Data assets of a patch's band files and their headers, both by asset key.

    Args:
        folder: the patch folder; band file ``<folder>/<patch>_<suffix>.tif``.
        bands: asset key -> (file suffix, extension fields of the asset besides ``proj:``).

    Raises:
        CatalogError: a band file is missing or unreadable.
    """
    assets: dict[str, pystac.Asset] = {}
    infos: dict[str, RasterInfo] = {}
    for key, (suffix, extra) in bands.items():
        path = folder / f"{folder.name}_{suffix}.tif"
        if not path.is_file():
            raise CatalogError(f"BigEarthNet patch {folder.name}: missing band file {path.name}")
        infos[key] = RasterInfo.read(path)
        # href: Path.as_uri() (%-escaped), as this writer always wrote; the other writers use file_href
        href = path.absolute().as_uri()
        assets[key] = new_asset(href, pystac.MediaType.GEOTIFF, ["data"], {**file_proj(infos[key]), **extra})
    return assets, infos


def _when(meta: dict[str, str]) -> datetime:
    text = meta.get("acquisition_date") or meta.get("acquisition_time") or ""
    return datetime.fromisoformat(text.replace(" ", "T")).replace(tzinfo=UTC)


def _meta(folder: Path) -> dict[str, object]:
    files = list(folder.glob("*_labels_metadata.json"))
    if not files:
        raise CatalogError(f"BigEarthNet patch {folder}: no *_labels_metadata.json")
    return json.loads(files[0].read_text())


def s2_item(folder: Path) -> pystac.Item:
    """Item of one S2 patch folder (footprint and ``proj:code`` of its B02 file)."""
    meta = _meta(folder)
    assets, infos = _band_assets(
        folder, {b.name: (b.name, {"eo:bands": [eo_band(b)], "gsd": b.resolution_m}) for b in S2_BANDS}
    )
    props = {"platform": "sentinel-2", "eo:cloud_cover": 0.0, "bigearthnet:labels": meta.get("labels", [])}
    item = file_item(folder.name, infos["B02"], _when(meta), props, [])
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item


def s1_item(folder: Path) -> pystac.Item:
    """Item of one S1 patch folder (assets ``vv`` and ``vh``; footprint and ``proj:code`` of the last)."""
    meta = _meta(folder)
    assets, infos = _band_assets(
        folder, {b: (b.upper(), {"raster:bands": [{"unit": "dB", "data_type": "float32"}]}) for b in S1_BAND_NAMES}
    )
    props = {
        "platform": "sentinel-1",
        "sar:polarizations": ["VV", "VH"],
        "sar:instrument_mode": "IW",
        "sar:product_type": "GRD",
        "bigearthnet:s2_patch": meta.get("corresponding_s2_patch"),
        "bigearthnet:labels": meta.get("labels", []),
    }
    item = file_item(folder.name, infos[S1_BAND_NAMES[-1]], _when(meta), props, [])
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item


def write_bigearthnet_catalog(src: Path, out: Path) -> Path:
    """Write a static catalog for every patch under ``src/S2`` and ``src/S1``; returns catalog.json."""
    s2_dirs = sorted(p for p in (src / "S2").glob("*") if p.is_dir())
    s1_dirs = sorted(p for p in (src / "S1").glob("*") if p.is_dir())
    if not s2_dirs or not s1_dirs:
        raise CatalogError(f"BigEarthNet folder {src}: expected S1/<patch>/ and S2/<patch>/ folders")
    collections = [
        collection_of(
            cid,
            f"BigEarthNet-MM {cid[-2:].upper()} patches; eo:cloud_cover=0 assumed "
            "(patches were selected cloud-free). CDLA-Permissive-1.0.",
            [build(d) for d in dirs],
            "CDLA-Permissive-1.0",
        )
        for cid, dirs, build in ((S2_COLLECTION, s2_dirs, s2_item), (S1_COLLECTION, s1_dirs, s1_item))
    ]
    root = out.absolute()
    save_catalog(root, "bigearthnet-mm", "BigEarthNet-MM patches (real Sentinel-1/2 data)", collections, ndjson=False)
    return root / "catalog.json"
