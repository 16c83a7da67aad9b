"""STAC catalogs for SEN12MS and DFC2020 patches on disk (real Sentinel-1 + Sentinel-2 + land cover).

Layouts read, as distributed (``src`` is the folder holding the ``ROIs*`` folders, or one of them):

- ``sen12ms``: ``ROIs1158_spring/s2_<scene>/ROIs1158_spring_s2_<scene>_p<patch>.tif`` (13 bands, uint16
  L1C TOA reflectance x 10000, order B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12, all at 10 m),
  ``s1_<scene>/..._s1_<scene>_p<patch>.tif`` (2 bands, float32 sigma0 in dB: VV, VH) and
  ``lc_<scene>/..._lc_<scene>_p<patch>.tif`` (4 bands, uint16 MODIS land cover; band 1 = IGBP 1..17).
  Seasons ``ROIs1158_spring``, ``ROIs1868_summer``, ``ROIs1970_fall``, ``ROIs2017_winter``.
- ``dfc2020``: ``ROIs0000_validation/{s2,s1,dfc}_validation/ROIs0000_validation_{s2,s1,dfc}_0_p<n>.tif``
  and ``ROIs0000_test/{s2,s1,dfc}_0/ROIs0000_test_{s2,s1,dfc}_0_p<n>.tif``; the same S2/S1 files, and
  ``dfc`` = 1 band of DFC2020 classes 1..10 (high-resolution labels).

Every file of a patch is 256 x 256 px at 10 m on the same UTM grid.

How the multi-band files are exposed. eoforge reads one band per asset (band 1 of the asset's
href, :func:`tests.support.gdal_reference.read_band`). For each S2 and S1 band the catalog writes a tiny
GDAL VRT next to the item JSON (``<out>/<collection>/<item>/<band>.vrt``) that selects band k of
the source GeoTIFF with the source's own CRS, transform, size, data type and nodata: reading it is
reading the source band, pixel for pixel. The assets ``B01`` ... ``B12`` (12 bands, B10 cirrus
dropped: eoforge's band set is the 12 L2A bands, :data:`eoforge.bands.S2_BANDS`) and
``vv``/``vh`` point at those VRTs; the asset ``source`` points at the original multi-band file.
The VRTs hold absolute paths: keep ``src`` where it was when the catalog was written.

Labels (collection ``sen12ms-labels`` / ``dfc2020-labels``, one item per patch, asset ``labels``)
point at the label GeoTIFF itself: band 1 is what the reader reads, and it holds the **raw**
values: IGBP 1..17 (SEN12MS) or DFC 1..10 (DFC2020). Fine-tuning maps them onto class ids with
``task.label_map`` (:data:`IGBP_TO_DFC8`, :data:`DFC10_TO_DFC8`).

Dates. The files carry no acquisition date, and SEN12MS S2 patches are cloud-free mosaics of a
season's acquisitions, so there is no single date. Items get a fixed date per season, the
15th of the season's middle month (:data:`SEASON_DATES`), with ``start_datetime``/``end_datetime``
spanning the meteorological season (winter = Dec 2016 .. Feb 2017, the others 2017); DFC2020 has
no season and gets :data:`DFC2020_DATE` (a placeholder). S1 and S2 of a patch get the same
date, so they pair with ``pairing.max_days: 0``. ``eo:cloud_cover`` is 0 (the S2 patches are
cloud-free composites; an assumption, noted in the collection description).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pystac
import rasterio
from pyproj import Transformer
from shapely.geometry import box, mapping
from shapely.ops import transform as shp_transform

from eoforge.bands import S1_BANDS, S2_BANDS
from eoforge.errors import CatalogError

LAYOUTS = ("sen12ms", "dfc2020")

#: SEN12MS / DFC2020 S2 band order (13 L1C bands); eoforge band name -> 1-based band index in the file.
S2_FILE_BANDS: tuple[str, ...] = tuple("B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12".split())
S2_BAND_INDEX: dict[str, int] = {b.name: S2_FILE_BANDS.index(b.name) + 1 for b in S2_BANDS}
#: S1 file band order: VV, VH (sigma0, dB).
S1_BAND_INDEX: dict[str, int] = {"vv": 1, "vh": 2}

#: MODIS IGBP classes (SEN12MS ``lc`` band 1), raw value -> name.
IGBP_CLASSES: dict[int, str] = {
    1: "Evergreen Needleleaf Forests",
    2: "Evergreen Broadleaf Forests",
    3: "Deciduous Needleleaf Forests",
    4: "Deciduous Broadleaf Forests",
    5: "Mixed Forests",
    6: "Closed Shrublands",
    7: "Open Shrublands",
    8: "Woody Savannas",
    9: "Savannas",
    10: "Grasslands",
    11: "Permanent Wetlands",
    12: "Croplands",
    13: "Urban and Built-up Lands",
    14: "Cropland/Natural Vegetation Mosaics",
    15: "Permanent Snow and Ice",
    16: "Barren",
    17: "Water Bodies",
}
#: Simplified IGBP (DFC2020) classes, raw value -> name.
DFC10_CLASSES: dict[int, str] = {
    1: "Forest",
    2: "Shrubland",
    3: "Savanna",
    4: "Grassland",
    5: "Wetlands",
    6: "Croplands",
    7: "Urban/Built-up",
    8: "Snow/Ice",
    9: "Barren",
    10: "Water",
}
#: IGBP code (index 0..17) -> DFC2020 class 1..10 (0: none), as in SSLTransformerRS / dfc2020_baseline.
IGBP_TO_DFC10: tuple[int, ...] = (0, 1, 1, 1, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 6, 8, 9, 10)
#: DFC2020 class 1..10 (index) -> the 8-class set ``dfc8`` (Savanna, Snow/Ice and 0 -> 255 ignore).
DFC10_TO_DFC8: tuple[int, ...] = (255, 0, 1, 255, 2, 3, 4, 5, 255, 6, 7)
#: IGBP code (index 0..17) -> ``dfc8`` class id: ``task.label_map`` for SEN12MS labels.
IGBP_TO_DFC8: tuple[int, ...] = tuple(DFC10_TO_DFC8[d] for d in IGBP_TO_DFC10)

#: Item date of each SEN12MS season (mid-season) and the season's interval (start, end).
SEASON_DATES: dict[str, tuple[datetime, datetime, datetime]] = {
    "winter": (
        datetime(2017, 1, 15, tzinfo=UTC),
        datetime(2016, 12, 1, tzinfo=UTC),
        datetime(2017, 2, 28, 23, 59, 59, tzinfo=UTC),
    ),
    "spring": (
        datetime(2017, 4, 15, tzinfo=UTC),
        datetime(2017, 3, 1, tzinfo=UTC),
        datetime(2017, 5, 31, 23, 59, 59, tzinfo=UTC),
    ),
    "summer": (
        datetime(2017, 7, 15, tzinfo=UTC),
        datetime(2017, 6, 1, tzinfo=UTC),
        datetime(2017, 8, 31, 23, 59, 59, tzinfo=UTC),
    ),
    "fall": (
        datetime(2017, 10, 15, tzinfo=UTC),
        datetime(2017, 9, 1, tzinfo=UTC),
        datetime(2017, 11, 30, 23, 59, 59, tzinfo=UTC),
    ),
}
#: DFC2020 items (validation and test): the files carry no date; a placeholder, not an acquisition date.
DFC2020_DATE = datetime(2020, 1, 1, tzinfo=UTC)

_EXT = "https://stac-extensions.github.io/{}/schema.json"
EXTENSIONS = {
    "eo": _EXT.format("eo/v1.1.0"),
    "proj": _EXT.format("projection/v2.0.0"),
    "raster": _EXT.format("raster/v1.1.0"),
    "sar": _EXT.format("sar/v1.0.0"),
    "label": _EXT.format("label/v1.0.1"),
}
_NAME = re.compile(r"^(?P<roi>ROIs\d+_[A-Za-z]+)_s2_(?P<scene>[A-Za-z0-9]+)_p(?P<patch>\d+)\.tif$")
_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


@dataclass(frozen=True)
class Layout:
    """Names of one published layout."""

    name: str
    label_prefix: str  # folder/file token of the label files: "lc" or "dfc"
    label_what: str
    label_values: dict[int, str]

    def collection(self, kind: str) -> str:
        """Collection id: ``<layout>-s2``, ``<layout>-s1``, ``<layout>-labels``."""
        return f"{self.name}-{kind}"


_LAYOUTS = {
    "sen12ms": Layout("sen12ms", "lc", "MODIS land cover, band 1 = IGBP 1..17 (raw values)", IGBP_CLASSES),
    "dfc2020": Layout("dfc2020", "dfc", "DFC2020 high-resolution labels, classes 1..10 (raw values)", DFC10_CLASSES),
}


@dataclass(frozen=True)
class Patch:
    """The files of one patch (S2, S1, label) and where it belongs."""

    roi: str  # e.g. ROIs1158_spring, ROIs0000_test
    scene: str
    patch: int
    s2: Path
    s1: Path
    label: Path

    @property
    def group(self) -> str:
        """Season (SEN12MS) or split (DFC2020): the word after ``ROIsNNNN_``."""
        return self.roi.split("_", 1)[1]

    def item_id(self, token: str) -> str:
        """Item id, the file's stem: ``ROIs1158_spring_s2_1_p30``."""
        return f"{self.roi}_{token}_{self.scene}_p{self.patch}"


# ----------------------------------------------------------------------------------------- discovery


def _roi_dirs(src: Path) -> list[Path]:
    if re.match(r"^ROIs\d+_", src.name) and src.is_dir():
        return [src]
    return sorted(p for p in src.glob("ROIs*_*") if p.is_dir())


def find_patches(src: Path, layout: Layout) -> tuple[list[Patch], list[dict[str, str]]]:
    """Every complete patch under ``src`` (sorted), and the incomplete ones with the reason.

    Raises:
        CatalogError: ``src`` holds no ``ROIs*/s2_*/*.tif``.
    """
    patches: list[Patch] = []
    skipped: list[dict[str, str]] = []
    for roi_dir in _roi_dirs(src):
        for s2_dir in sorted(p for p in roi_dir.glob("s2_*") if p.is_dir()):
            suffix = s2_dir.name[len("s2") :]  # "_1", "_validation", "_0"
            for s2 in s2_dir.glob("*.tif"):
                m = _NAME.match(s2.name)
                if m is None or m["roi"] != roi_dir.name:
                    skipped.append({"file": str(s2), "reason": "name: not <ROI>_s2_<scene>_p<n>.tif"})
                    continue
                roi, scene, n = m["roi"], m["scene"], int(m["patch"])
                s1 = roi_dir / f"s1{suffix}" / f"{roi}_s1_{scene}_p{n}.tif"
                lp = layout.label_prefix
                label = roi_dir / f"{lp}{suffix}" / f"{roi}_{lp}_{scene}_p{n}.tif"
                missing = [str(p) for p in (s1, label) if not p.is_file()]
                if missing:
                    skipped.append({"file": str(s2), "reason": f"missing: {', '.join(missing)}"})
                    continue
                patches.append(Patch(roi, scene, n, s2, s1, label))
    if not patches and not skipped:
        raise CatalogError(
            f"{layout.name} folder {src}: no ROIs*/s2_*/*.tif found (expected e.g. "
            + (
                "ROIs1158_spring/s2_1/ROIs1158_spring_s2_1_p30.tif)"
                if layout.name == "sen12ms"
                else "ROIs0000_test/s2_0/ROIs0000_test_s2_0_p0.tif)"
            )
        )
    order = sorted(patches, key=lambda p: (p.roi, int(p.scene) if p.scene.isdigit() else -1, p.scene, p.patch))
    return order, skipped


# ----------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class RasterInfo:
    """What a VRT and the STAC proj fields need of a GeoTIFF."""

    path: Path
    width: int
    height: int
    count: int
    crs: str
    wkt: str
    transform: tuple[float, ...]  # a, b, c, d, e, f
    bounds: tuple[float, float, float, float]
    dtypes: tuple[str, ...]
    nodata: tuple[float | None, ...]
    blocks: tuple[tuple[int, int], ...]  # (rows, cols) per band

    @classmethod
    def read(cls, path: Path) -> RasterInfo:
        """Header of a GeoTIFF (no pixels read).

        Raises:
            CatalogError: unreadable, or no CRS.
        """
        try:
            with rasterio.open(path) as src:
                if src.crs is None:
                    raise CatalogError(f"{path}: no CRS")
                return cls(
                    path.absolute(),
                    src.width,
                    src.height,
                    src.count,
                    src.crs.to_string(),
                    src.crs.to_wkt(),
                    tuple(src.transform)[:6],
                    tuple(src.bounds),
                    tuple(src.dtypes),
                    tuple(src.nodatavals),
                    tuple(src.block_shapes),
                )
        except rasterio.errors.RasterioIOError as exc:
            raise CatalogError(f"{path}: unreadable: {exc}") from None

    def proj(self) -> dict[str, object]:
        """STAC projection fields of the file's grid."""
        return {"proj:code": self.crs, "proj:shape": [self.height, self.width], "proj:transform": list(self.transform)}


def _nodata_text(value: float) -> str:
    if np.isnan(value):
        return "nan"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


def band_vrt(info: RasterInfo, band: int, description: str) -> str:
    """A one-band GDAL VRT selecting ``band`` (1-based) of ``info.path`` on the file's own grid."""
    if not 1 <= band <= info.count:
        raise CatalogError(f"{info.path}: no band {band} (the file has {info.count})")
    dtype = _GDAL_TYPES.get(info.dtypes[band - 1])
    if dtype is None:
        raise CatalogError(f"{info.path}: band {band} has unsupported data type {info.dtypes[band - 1]}")
    a, b, c, d, e, f = info.transform
    nodata = info.nodata[band - 1]
    block_rows, block_cols = info.blocks[band - 1]
    w, h = info.width, info.height
    nodata_xml = f"    <NoDataValue>{_nodata_text(nodata)}</NoDataValue>\n" if nodata is not None else ""
    return (
        f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}">\n'
        f'  <SRS dataAxisToSRSAxisMapping="1,2">{escape(info.wkt)}</SRS>\n'
        f"  <GeoTransform>{c!r}, {a!r}, {b!r}, {f!r}, {d!r}, {e!r}</GeoTransform>\n"
        f'  <VRTRasterBand dataType="{dtype}" band="1">\n'
        f"{nodata_xml}"
        f"    <Description>{escape(description)}</Description>\n"
        "    <SimpleSource>\n"
        f'      <SourceFilename relativeToVRT="0">{escape(str(info.path))}</SourceFilename>\n'
        f"      <SourceBand>{band}</SourceBand>\n"
        f'      <SourceProperties RasterXSize="{w}" RasterYSize="{h}" DataType="{dtype}" '
        f'BlockXSize="{block_cols}" BlockYSize="{block_rows}" />\n'
        f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}" />\n'
        f'      <DstRect xOff="0" yOff="0" xSize="{w}" ySize="{h}" />\n'
        "    </SimpleSource>\n"
        "  </VRTRasterBand>\n"
        "</VRTDataset>\n"
    )


def _href(path: Path) -> str:
    # "file://" + the plain path, not Path.as_uri(): GDAL does not undo %-escapes (see demo/catalog.py)
    return f"file://{path.absolute()}"


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------------------- items


def _dates(patch: Patch, layout: Layout) -> tuple[datetime, dict[str, str]]:
    """(item datetime, extra properties) of a patch: the season's date, or the DFC2020 placeholder."""
    if layout.name == "dfc2020":
        return DFC2020_DATE, {"eoforge:datetime_note": "placeholder: DFC2020 files carry no acquisition date"}
    if patch.group not in SEASON_DATES:
        raise CatalogError(f"{patch.s2}: unknown SEN12MS season {patch.group!r}; expected {sorted(SEASON_DATES)}")
    when, start, end = SEASON_DATES[patch.group]
    return when, {
        "start_datetime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end_datetime": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eoforge:datetime_note": "fixed per season (mid-season); S2 patches are seasonal cloud-free mosaics",
    }


#: Label footprints are grown by this much (metres, on the UTM grid) before going to lon/lat. The
#: planner links a chip to a label item whose geometry *contains* the chip; a chip on the patch edge
#: touches the footprint's edge, and in lon/lat that touch is decided by float round-off. 1 cm is far
#: below a 10 m pixel and far below the step between patches, so no other patch's chip gets inside.
LABEL_MARGIN_M = 0.01


def _footprint(info: RasterInfo, margin_m: float = 0.0) -> tuple[dict, list[float]]:
    to_ll = Transformer.from_crs(info.crs, "EPSG:4326", always_xy=True)
    x0, y0, x1, y1 = info.bounds
    foot = shp_transform(to_ll.transform, box(x0 - margin_m, y0 - margin_m, x1 + margin_m, y1 + margin_m))
    return mapping(foot), list(foot.bounds)


@dataclass(frozen=True)
class ItemSpec:
    """One item ready to write: its dict, collection and the VRTs beside it (name -> XML)."""

    collection: str
    item: pystac.Item
    vrts: dict[str, str]


def _new_item(
    item_id: str, info: RasterInfo, when: datetime, props: dict, ext: list[str], margin_m: float = 0.0
) -> pystac.Item:
    geometry, bbox = _footprint(info, margin_m)
    return pystac.Item(
        item_id,
        geometry,
        bbox,
        when,
        {"proj:code": info.crs, **props},
        stac_extensions=[EXTENSIONS["proj"], *ext],
    )


def _patch_props(patch: Patch, layout: Layout) -> dict[str, object]:
    return {f"{layout.name}:roi": patch.roi, f"{layout.name}:scene": patch.scene, f"{layout.name}:patch": patch.patch}


def _s2_spec(patch: Patch, layout: Layout, folder: Path) -> ItemSpec:
    info = RasterInfo.read(patch.s2)
    if info.count != len(S2_FILE_BANDS):
        raise CatalogError(f"{patch.s2}: {info.count} bands, expected the {len(S2_FILE_BANDS)} L1C bands")
    when, date_props = _dates(patch, layout)
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
    item = _new_item(item_id, info, when, props, [EXTENSIONS["eo"], EXTENSIONS["raster"]])
    vrts: dict[str, str] = {}
    for band in S2_BANDS:
        k = S2_BAND_INDEX[band.name]
        name = f"{band.name}.vrt"
        vrts[name] = band_vrt(info, k, f"{band.name} (band {k} of {patch.s2.name})")
        eo = {"name": band.name, "common_name": band.common_name, "center_wavelength": band.center_wavelength_um}
        raster = {"data_type": info.dtypes[k - 1], "spatial_resolution": abs(info.transform[0])}
        if info.nodata[k - 1] is not None:
            raster["nodata"] = info.nodata[k - 1]
        item.add_asset(
            band.name,
            pystac.Asset(
                _href(folder / item_id / name),
                title=f"{band.name}: band {k} of the L1C GeoTIFF (GDAL VRT)",
                media_type="application/x-gdal-vrt",
                roles=["data"],
                extra_fields={"eo:bands": [eo], "raster:bands": [raster], "gsd": band.resolution_m, **info.proj()},
            ),
        )
    item.add_asset(
        "source",
        pystac.Asset(
            _href(patch.s2),
            title=f"{layout.name} S2 L1C GeoTIFF, 13 bands ({' '.join(S2_FILE_BANDS)})",
            media_type=pystac.MediaType.GEOTIFF,
            roles=["source"],
            extra_fields={"eo:bands": [{"name": b} for b in S2_FILE_BANDS], **info.proj()},
        ),
    )
    return ItemSpec(layout.collection("s2"), item, vrts)


def _s1_spec(patch: Patch, layout: Layout, folder: Path) -> ItemSpec:
    info = RasterInfo.read(patch.s1)
    if info.count != len(S1_BAND_INDEX):
        raise CatalogError(f"{patch.s1}: {info.count} bands, expected 2 (VV, VH)")
    when, date_props = _dates(patch, layout)
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
    item = _new_item(item_id, info, when, props, [EXTENSIONS["sar"], EXTENSIONS["raster"]])
    vrts: dict[str, str] = {}
    for band in S1_BANDS:
        k = S1_BAND_INDEX[band.name]
        name = f"{band.name}.vrt"
        vrts[name] = band_vrt(info, k, f"{band.common_name} sigma0 dB (band {k} of {patch.s1.name})")
        raster = {"data_type": info.dtypes[k - 1], "unit": "dB", "spatial_resolution": abs(info.transform[0])}
        if info.nodata[k - 1] is not None:
            raster["nodata"] = info.nodata[k - 1]
        item.add_asset(
            band.name,
            pystac.Asset(
                _href(folder / item_id / name),
                title=f"{band.common_name} backscatter (dB): band {k} of the S1 GeoTIFF (GDAL VRT)",
                media_type="application/x-gdal-vrt",
                roles=["data"],
                extra_fields={"sar:polarizations": [band.common_name], "raster:bands": [raster], **info.proj()},
            ),
        )
    item.add_asset(
        "source",
        pystac.Asset(
            _href(patch.s1),
            title=f"{layout.name} S1 GeoTIFF, 2 bands (VV, VH; sigma0 dB)",
            media_type=pystac.MediaType.GEOTIFF,
            roles=["source"],
            extra_fields=info.proj(),
        ),
    )
    return ItemSpec(layout.collection("s1"), item, vrts)


def _label_spec(patch: Patch, layout: Layout, s2_href: str, s1_href: str) -> ItemSpec:
    info = RasterInfo.read(patch.label)
    when, date_props = _dates(patch, layout)
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
    ext = [EXTENSIONS["label"], EXTENSIONS["raster"]]
    item = _new_item(patch.item_id(layout.label_prefix), info, when, props, ext, LABEL_MARGIN_M)
    bands = [{"data_type": info.dtypes[0], "spatial_resolution": abs(info.transform[0])}]
    if layout.name == "sen12ms":
        bands[0]["name"] = "IGBP"
        names = ("LCCS_LC", "LCCS_LU", "LCCS_SH")[: info.count - 1]
        bands += [{"data_type": t, "name": n} for t, n in zip(info.dtypes[1:], names, strict=False)]
    item.add_asset(
        "labels",
        pystac.Asset(
            _href(patch.label),
            title=f"{layout.label_what}; eoforge reads band 1",
            media_type=pystac.MediaType.GEOTIFF,
            roles=["labels", "data"],
            extra_fields={"raster:bands": bands, **info.proj()},
        ),
    )
    item.add_link(pystac.Link("source", s2_href, media_type=pystac.MediaType.JSON, title=patch.item_id("s2")))
    item.add_link(pystac.Link("source", s1_href, media_type=pystac.MediaType.JSON, title=patch.item_id("s1")))
    return ItemSpec(layout.collection("labels"), item, {})


def patch_specs(patch: Patch, layout: Layout, out: Path) -> list[ItemSpec]:
    """The S2, S1 and label items of one patch (and their VRTs), under the catalog folder ``out``."""
    s2 = _s2_spec(patch, layout, out / layout.collection("s2"))
    s1 = _s1_spec(patch, layout, out / layout.collection("s1"))
    label = _label_spec(patch, layout, _item_path(out, s2).as_posix(), _item_path(out, s1).as_posix())
    return [s2, s1, label]


def _item_path(out: Path, spec: ItemSpec) -> Path:
    return out / spec.collection / spec.item.id / f"{spec.item.id}.json"


# ----------------------------------------------------------------------------------------- catalog


@dataclass
class _CollectionAcc:
    """Items written so far into one collection: hrefs, bbox, time range."""

    hrefs: list[str]
    bbox: list[float]
    start: datetime | None = None
    end: datetime | None = None

    def add(self, href: str, item: pystac.Item) -> None:
        self.hrefs.append(href)
        b = item.bbox or self.bbox
        self.bbox = [min(self.bbox[0], b[0]), min(self.bbox[1], b[1]), max(self.bbox[2], b[2]), max(self.bbox[3], b[3])]
        for key, fallback in (("start_datetime", item.datetime), ("end_datetime", item.datetime)):
            text = item.properties.get(key)
            when = datetime.fromisoformat(text.replace("Z", "+00:00")) if text else fallback
            if when is None:
                continue
            if key == "start_datetime":
                self.start = when if self.start is None else min(self.start, when)
            else:
                self.end = when if self.end is None else max(self.end, when)


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


def _write_catalog_json(
    out: Path, layout: Layout, accs: dict[str, _CollectionAcc], catalog_type: pystac.CatalogType
) -> Path:
    catalog_path = out / "catalog.json"
    name = "SEN12MS" if layout.name == "sen12ms" else "DFC2020"
    catalog = pystac.Catalog(
        layout.name,
        f"{name} patches (real Sentinel-1 + Sentinel-2 + land cover), catalogued by eoforge",
        catalog_type=catalog_type,
    )
    catalog.set_self_href(str(catalog_path))
    for kind in ("s2", "s1", "labels"):
        cid = layout.collection(kind)
        acc = accs[cid]
        coll_path = out / cid / "collection.json"
        title, description = _describe(layout, kind)
        ext = [EXTENSIONS["label"]] if kind == "labels" else [EXTENSIONS["sar" if kind == "s1" else "eo"]]
        coll = pystac.Collection(
            cid,
            description,
            pystac.Extent(pystac.SpatialExtent([acc.bbox]), pystac.TemporalExtent([[acc.start, acc.end]])),
            title=title,
            license="CC-BY-4.0",
            stac_extensions=ext,
        )
        coll.links = [
            pystac.Link("root", str(catalog_path), media_type=pystac.MediaType.JSON),
            pystac.Link("parent", str(catalog_path), media_type=pystac.MediaType.JSON),
            pystac.Link("self", str(coll_path), media_type=pystac.MediaType.JSON),
        ] + [pystac.Link("item", h, media_type=pystac.MediaType.GEOJSON) for h in acc.hrefs]
        _write_text(coll_path, json.dumps(coll.to_dict(include_self_link=True, transform_hrefs=False), indent=1))
        catalog.add_link(pystac.Link("child", str(coll_path), media_type=pystac.MediaType.JSON, title=title))
    catalog.links = [
        pystac.Link("root", str(catalog_path), media_type=pystac.MediaType.JSON),
        pystac.Link("self", str(catalog_path), media_type=pystac.MediaType.JSON),
    ] + [link for link in catalog.links if link.rel == "child"]
    _write_text(catalog_path, json.dumps(catalog.to_dict(include_self_link=True, transform_hrefs=False), indent=1))
    return catalog_path


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

    Raises:
        CatalogError: unknown layout, no patch found, or every patch skipped.
    """
    if layout not in _LAYOUTS:
        raise CatalogError(f"layout {layout!r}: unknown; expected one of {list(LAYOUTS)}")
    lay = _LAYOUTS[layout]
    src, out = Path(src).expanduser().absolute(), Path(out).expanduser().absolute()
    if not src.is_dir():
        raise CatalogError(f"{layout} folder {src}: not a directory")
    patches, skipped = find_patches(src, lay)
    out.mkdir(parents=True, exist_ok=True)
    accs = {lay.collection(k): _CollectionAcc([], [180.0, 90.0, -180.0, -90.0]) for k in ("s2", "s1", "labels")}
    catalog_path = out / "catalog.json"
    n_workers = workers or min(8, os.cpu_count() or 1)
    total = len(patches)
    for i, (patch, result) in enumerate(zip(patches, _parallel(patches, lay, out, n_workers), strict=True), 1):
        if isinstance(result, str):
            skipped.append({"file": str(patch.s2), "reason": result})
        else:
            for spec in result:
                item_path = _item_path(out, spec)
                coll_path = out / spec.collection / "collection.json"
                for name, xml in spec.vrts.items():
                    _write_text(item_path.parent / name, xml)
                spec.item.links = [
                    pystac.Link("root", str(catalog_path), media_type=pystac.MediaType.JSON),
                    pystac.Link("parent", str(coll_path), media_type=pystac.MediaType.JSON),
                    pystac.Link("collection", str(coll_path), media_type=pystac.MediaType.JSON),
                    pystac.Link("self", str(item_path), media_type=pystac.MediaType.GEOJSON),
                    *(link for link in spec.item.links if link.rel == "source"),
                ]
                spec.item.collection_id = spec.collection
                doc = spec.item.to_dict(include_self_link=True, transform_hrefs=False)
                _write_text(item_path, json.dumps(doc, indent=1))
                accs[spec.collection].add(str(item_path), spec.item)
        if i % 1000 == 0 or i == total:
            print(f"eoforge {layout}: {i}/{total} patches ({len(skipped)} skipped)", file=sys.stderr, flush=True)
    skipped.sort(key=lambda s: s["file"])
    _write_text(out / "skipped.json", json.dumps(skipped, indent=1) + "\n")
    if skipped:
        print(
            f"eoforge {layout}: skipped {len(skipped)} patches (see {out / 'skipped.json'}), "
            f"first: {skipped[0]['file']}: {skipped[0]['reason']}",
            file=sys.stderr,
            flush=True,
        )
    if not accs[lay.collection("s2")].hrefs:
        raise CatalogError(
            f"{layout} folder {src}: no usable patch ({len(skipped)} skipped; see {out}/skipped.json). "
            "Is the layout right? sen12ms has lc_* label folders, dfc2020 has dfc_* ones"
        )
    return _write_catalog_json(out, lay, accs, pystac.CatalogType.ABSOLUTE_PUBLISHED)
