"""STAC catalogs for SEN12MS and DFC2020 patches on disk (real Sentinel-1 + Sentinel-2 + land cover).

The layouts read, the class tables, the item dates and the patch discovery are in
:mod:`eoforge.demo.sen12ms_layout` (its names are re-exported here); this module writes the STAC
through :mod:`eoforge.demo.stac_writer`.

How the multi-band files are exposed. eoforge reads one band per asset (band 1 of the asset's
href, :func:`tests.support.gdal_reference.read_band`). For each S2 and S1 band the catalog writes a tiny
GDAL VRT next to the item JSON (``<out>/<collection>/<item>/<band>.vrt``) that selects band k of
the source GeoTIFF with the source's own CRS, transform, size, data type and nodata: reading it is
reading the source band, pixel for pixel (:func:`eoforge.demo.geotiff.band_vrt`). The assets ``B01``
... ``B12`` (12 bands, B10 cirrus dropped: eoforge's band set is the 12 L2A bands,
:data:`eoforge.bands.S2_BANDS`) and ``vv``/``vh`` point at those VRTs; the asset ``source`` points
at the original multi-band file. The VRTs hold absolute paths: keep ``src`` where it was when the
catalog was written.

Labels (collection ``sen12ms-labels`` / ``dfc2020-labels``, one item per patch, asset ``labels``)
point at the label GeoTIFF itself: band 1 is what the reader reads, and it holds the **raw**
values: IGBP 1..17 (SEN12MS) or DFC 1..10 (DFC2020). Fine-tuning maps them onto class ids with
``task.label_map`` (:data:`IGBP_TO_DFC8`, :data:`DFC10_TO_DFC8`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pystac

from eoforge.bands import S1_BANDS, S2_BANDS
from eoforge.demo.geotiff import RasterInfo, band_vrt
from eoforge.demo.sen12ms_layout import (
    DFC10_CLASSES,
    DFC10_TO_DFC8,
    DFC2020_DATE,
    IGBP_CLASSES,
    IGBP_TO_DFC8,
    IGBP_TO_DFC10,
    LAYOUT_BY_NAME,
    LAYOUTS,
    S1_BAND_INDEX,
    S2_BAND_INDEX,
    S2_FILE_BANDS,
    SEASON_DATES,
    Layout,
    Patch,
    find_patches,
    patch_dates,
)
from eoforge.demo.stac_writer import (
    EO,
    LABEL,
    PROJ,
    RASTER,
    SAR,
    VRT_MEDIA_TYPE,
    CollectionText,
    StreamedCatalog,
    eo_band,
    file_href,
    file_item,
    file_proj,
    item_json_path,
    new_asset,
    write_text,
)
from eoforge.errors import CatalogError

__all__ = [
    "DFC10_CLASSES",
    "DFC10_TO_DFC8",
    "DFC2020_DATE",
    "IGBP_CLASSES",
    "IGBP_TO_DFC8",
    "IGBP_TO_DFC10",
    "LABEL_MARGIN_M",
    "LAYOUTS",
    "S1_BAND_INDEX",
    "S2_BAND_INDEX",
    "S2_FILE_BANDS",
    "SEASON_DATES",
    "ItemSpec",
    "Layout",
    "Patch",
    "RasterInfo",
    "band_vrt",
    "find_patches",
    "patch_specs",
    "write_sen12ms_catalog",
]

#: Label footprints are grown by this much (metres, on the UTM grid) before going to lon/lat. The
#: planner links a chip to a label item whose geometry *contains* the chip; a chip on the patch edge
#: touches the footprint's edge, and in lon/lat that touch is decided by float round-off. 1 cm is far
#: below a 10 m pixel and far below the step between patches, so no other patch's chip gets inside.
LABEL_MARGIN_M = 0.01


@dataclass(frozen=True)
class ItemSpec:
    """One item ready to write: its dict, collection and the VRTs beside it (name -> XML)."""

    collection: str
    item: pystac.Item
    vrts: dict[str, str]


def _patch_props(patch: Patch, layout: Layout) -> dict[str, object]:
    return {f"{layout.name}:roi": patch.roi, f"{layout.name}:scene": patch.scene, f"{layout.name}:patch": patch.patch}


def _s2_spec(patch: Patch, layout: Layout, folder: Path) -> ItemSpec:
    info = RasterInfo.read(patch.s2)
    if info.count != len(S2_FILE_BANDS):
        raise CatalogError(f"{patch.s2}: {info.count} bands, expected the {len(S2_FILE_BANDS)} L1C bands")
    when, date_props = patch_dates(patch, layout)
    item_id = patch.item_id("s2")
    props = {
        "platform": "sentinel-2",
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "processing:level": "L1C",
        "eo:cloud_cover": 0.0,
        **date_props,
        **_patch_props(patch, layout),
    }
    item = file_item(item_id, info, when, props, [PROJ, EO, RASTER])
    vrts: dict[str, str] = {}
    for band in S2_BANDS:
        k = S2_BAND_INDEX[band.name]
        name = f"{band.name}.vrt"
        vrts[name] = band_vrt(info, k, f"{band.name} (band {k} of {patch.s2.name})")
        raster = {"data_type": info.dtypes[k - 1], "spatial_resolution": abs(info.transform[0])}
        if info.nodata[k - 1] is not None:
            raster["nodata"] = info.nodata[k - 1]
        fields = {"eo:bands": [eo_band(band)], "raster:bands": [raster], "gsd": band.resolution_m, **file_proj(info)}
        title = f"{band.name}: band {k} of the L1C GeoTIFF (GDAL VRT)"
        item.add_asset(
            band.name, new_asset(file_href(folder / item_id / name), VRT_MEDIA_TYPE, ["data"], fields, title)
        )
    fields = {"eo:bands": [{"name": b} for b in S2_FILE_BANDS], **file_proj(info)}
    title = f"{layout.name} S2 L1C GeoTIFF, 13 bands ({' '.join(S2_FILE_BANDS)})"
    item.add_asset("source", new_asset(file_href(patch.s2), pystac.MediaType.GEOTIFF, ["source"], fields, title))
    return ItemSpec(layout.collection("s2"), item, vrts)


def _s1_spec(patch: Patch, layout: Layout, folder: Path) -> ItemSpec:
    info = RasterInfo.read(patch.s1)
    if info.count != len(S1_BAND_INDEX):
        raise CatalogError(f"{patch.s1}: {info.count} bands, expected 2 (VV, VH)")
    when, date_props = patch_dates(patch, layout)
    item_id = patch.item_id("s1")
    props = {
        "platform": "sentinel-1",
        "constellation": "sentinel-1",
        "sar:polarizations": ["VV", "VH"],
        "sar:instrument_mode": "IW",
        "sar:product_type": "GRD",
        "sar:frequency_band": "C",
        **date_props,
        **_patch_props(patch, layout),
    }
    item = file_item(item_id, info, when, props, [PROJ, SAR, RASTER])
    vrts: dict[str, str] = {}
    for band in S1_BANDS:
        k = S1_BAND_INDEX[band.name]
        name = f"{band.name}.vrt"
        vrts[name] = band_vrt(info, k, f"{band.common_name} sigma0 dB (band {k} of {patch.s1.name})")
        raster = {"data_type": info.dtypes[k - 1], "unit": "dB", "spatial_resolution": abs(info.transform[0])}
        if info.nodata[k - 1] is not None:
            raster["nodata"] = info.nodata[k - 1]
        fields = {"sar:polarizations": [band.common_name], "raster:bands": [raster], **file_proj(info)}
        title = f"{band.common_name} backscatter (dB): band {k} of the S1 GeoTIFF (GDAL VRT)"
        item.add_asset(
            band.name, new_asset(file_href(folder / item_id / name), VRT_MEDIA_TYPE, ["data"], fields, title)
        )
    title = f"{layout.name} S1 GeoTIFF, 2 bands (VV, VH; sigma0 dB)"
    item.add_asset(
        "source", new_asset(file_href(patch.s1), pystac.MediaType.GEOTIFF, ["source"], file_proj(info), title)
    )
    return ItemSpec(layout.collection("s1"), item, vrts)


def _label_spec(patch: Patch, layout: Layout, s2_href: str, s1_href: str) -> ItemSpec:
    info = RasterInfo.read(patch.label)
    when, date_props = patch_dates(patch, layout)
    values = sorted(layout.label_values)
    props = {
        "label:type": "raster",
        "label:tasks": ["segmentation", "classification"],
        "label:description": layout.label_what,
        "label:properties": None,
        "label:classes": [{"name": None, "classes": values}],
        "eoforge:label_values": {str(k): v for k, v in layout.label_values.items()},
        "eoforge:label_map_dfc8": list(IGBP_TO_DFC8 if layout.name == "sen12ms" else DFC10_TO_DFC8),
        **date_props,
        **_patch_props(patch, layout),
    }
    item = file_item(patch.item_id(layout.label_prefix), info, when, props, [PROJ, LABEL, RASTER], LABEL_MARGIN_M)
    bands = [{"data_type": info.dtypes[0], "spatial_resolution": abs(info.transform[0])}]
    if layout.name == "sen12ms":
        bands[0]["name"] = "IGBP"
        names = ("LCCS_LC", "LCCS_LU", "LCCS_SH")[: info.count - 1]
        bands += [{"data_type": t, "name": n} for t, n in zip(info.dtypes[1:], names, strict=False)]
    fields = {"raster:bands": bands, **file_proj(info)}
    title = f"{layout.label_what}; eoforge reads band 1"
    item.add_asset(
        "labels", new_asset(file_href(patch.label), pystac.MediaType.GEOTIFF, ["labels", "data"], fields, title)
    )
    item.add_link(pystac.Link("source", s2_href, media_type=pystac.MediaType.JSON, title=patch.item_id("s2")))
    item.add_link(pystac.Link("source", s1_href, media_type=pystac.MediaType.JSON, title=patch.item_id("s1")))
    return ItemSpec(layout.collection("labels"), item, {})


def patch_specs(patch: Patch, layout: Layout, out: Path) -> list[ItemSpec]:
    """The S2, S1 and label items of one patch (and their VRTs), under the catalog folder ``out``."""
    s2 = _s2_spec(patch, layout, out / layout.collection("s2"))
    s1 = _s1_spec(patch, layout, out / layout.collection("s1"))
    s2_path = item_json_path(out, s2.collection, s2.item.id)
    s1_path = item_json_path(out, s1.collection, s1.item.id)
    label = _label_spec(patch, layout, s2_path.as_posix(), s1_path.as_posix())
    return [s2, s1, label]


# ----------------------------------------------------------------------------------------- catalog


def _describe(layout: Layout, kind: str) -> tuple[str, str]:
    """(title, description) of a collection."""
    name = "SEN12MS" if layout.name == "sen12ms" else "DFC2020"
    dates = (
        "Item dates are fixed per season (mid-season; start/end_datetime span the season): the files carry no "
        "acquisition date."
        if layout.name == "sen12ms"
        else "Item dates are a placeholder (2020-01-01): the files carry no acquisition date."
    )
    if kind == "s2":
        return f"{name} Sentinel-2 L1C", (
            f"{name} Sentinel-2 patches. The product is **L1C** (top-of-atmosphere reflectance x 10000, 13 bands), "
            "not L2A: eoforge reads 12 of them (B01..B12 with B8A, B10 cirrus dropped; band k of the source "
            "through a per-band GDAL VRT), and normalisation statistics computed on L2A (SSL4EO-S12 L2A) do not "
            "match L1C values, so keep one normalisation for pretraining and fine-tuning. The patches are "
            "cloud-free composites: eo:cloud_cover=0 is assumed. " + dates
        )
    if kind == "s1":
        return f"{name} Sentinel-1 GRD (dB)", (
            f"{name} Sentinel-1 patches: sigma0 backscatter in dB, VV and VH, on the S2 patch's UTM grid. " + dates
        )
    return f"{name} labels", (
        f"{name} {layout.label_what}; asset 'labels' is the label GeoTIFF (band 1 read). Map raw values to class "
        "ids with the fine-tuning task's label_map (eoforge:label_map_dfc8 gives the 8-class DFC set). " + dates
    )


def _collection_texts(layout: Layout) -> list[CollectionText]:
    """What the S2, S1 and label collections say of themselves."""
    extensions = {"s2": [EO], "s1": [SAR], "labels": [LABEL]}
    return [CollectionText(layout.collection(k), *_describe(layout, k), extensions[k]) for k in ("s2", "s1", "labels")]


def _specs_or_skip(patch: Patch, layout: Layout, out: Path) -> list[ItemSpec] | str:
    try:
        return patch_specs(patch, layout, out)
    except CatalogError as exc:
        return str(exc)


def _parallel(patches: list[Patch], layout: Layout, out: Path, workers: int) -> Iterator[list[ItemSpec] | str]:
    if workers <= 1:
        yield from (_specs_or_skip(p, layout, out) for p in patches)
        return
    with ThreadPoolExecutor(workers) as pool:  # rasterio releases the GIL while it opens files
        chunk = 256
        for i in range(0, len(patches), chunk):
            yield from pool.map(lambda p: _specs_or_skip(p, layout, out), patches[i : i + chunk])


def write_sen12ms_catalog(src: Path, out: Path, layout: str = "sen12ms", workers: int | None = None) -> Path:
    """Write a static STAC catalog of every SEN12MS / DFC2020 patch under ``src``; returns catalog.json.

    Items are written one by one (memory stays flat for the 180,662 SEN12MS patches); a patch whose
    files are missing or malformed is skipped and listed in ``<out>/skipped.json`` (also printed).
    Progress goes to stderr.

    Args:
        src: the dataset folder holding ``ROIs*`` folders (or one ``ROIs*`` folder).
        out: output folder of the catalog (created); VRTs and item JSON go under it.
        layout: ``sen12ms`` (``s1_/s2_/lc_`` folders) or ``dfc2020`` (``s1_/s2_/dfc_`` folders).
        workers: threads reading file headers (default: up to 8).

    Returns:
        The path of ``<out>/catalog.json``.

    Raises:
        CatalogError: unknown layout, no patch found, or every patch skipped.
    """
    if layout not in LAYOUT_BY_NAME:
        raise CatalogError(f"layout {layout!r}: unknown; expected one of {list(LAYOUTS)}")
    lay = LAYOUT_BY_NAME[layout]
    src, out = Path(src).expanduser().absolute(), Path(out).expanduser().absolute()
    if not src.is_dir():
        raise CatalogError(f"{layout} folder {src}: not a directory")
    patches, skipped = find_patches(src, lay)
    out.mkdir(parents=True, exist_ok=True)
    texts = _collection_texts(lay)
    catalog = StreamedCatalog(out, [t.cid for t in texts])
    n_workers = workers or min(8, os.cpu_count() or 1)
    total = len(patches)
    for i, (patch, result) in enumerate(zip(patches, _parallel(patches, lay, out, n_workers), strict=True), 1):
        if isinstance(result, str):
            skipped.append({"file": str(patch.s2), "reason": result})
        else:
            for spec in result:
                for name, xml in spec.vrts.items():
                    write_text(item_json_path(out, spec.collection, spec.item.id).parent / name, xml)
                catalog.write_item(spec.collection, spec.item)
        if i % 1000 == 0 or i == total:
            print(f"eoforge {layout}: {i}/{total} patches ({len(skipped)} skipped)", file=sys.stderr, flush=True)
    skipped.sort(key=lambda s: s["file"])
    write_text(out / "skipped.json", json.dumps(skipped, indent=1) + "\n")
    if skipped:
        print(
            f"eoforge {layout}: skipped {len(skipped)} patches (see {out / 'skipped.json'}), "
            f"first: {skipped[0]['file']}: {skipped[0]['reason']}",
            file=sys.stderr,
            flush=True,
        )
    if not catalog.item_count(lay.collection("s2")):
        raise CatalogError(
            f"{layout} folder {src}: no usable patch ({len(skipped)} skipped; see {out}/skipped.json). "
            "Is the layout right? sen12ms has lc_* label folders, dfc2020 has dfc_* ones"
        )
    name = "SEN12MS" if lay.name == "sen12ms" else "DFC2020"
    description = f"{name} patches (real Sentinel-1 + Sentinel-2 + land cover), catalogued by eoforge"
    return catalog.finish(lay.name, description, texts, license="CC-BY-4.0")
