"""Provider-shaped STAC items over small local GeoTIFFs, for provider-profile tests.

The item JSON follows what each provider publishes (asset keys, ``proj:code`` / ``proj:epsg``,
``raster:bands`` scale/offset/nodata, ``sar:*`` and ``s2:*`` properties), as read from the
providers' public ingest code and sample items:

- Planetary Computer ``sentinel-2-l2a`` (stactools-sentinel2: ``B01``..``B12``, ``SCL``, per-asset
  ``proj:shape``/``proj:transform``, ``proj:epsg`` on the item, ``s2:processing_baseline``, no
  ``raster:bands`` offset), ``sentinel-1-grd`` (stactools-sentinel1: ``vv``/``vh`` measurement
  TIFFs with GCPs, ``schema-calibration-vv`` annotations, bbox-derived ``proj:transform`` in
  EPSG:4326) and ``sentinel-1-rtc`` (``vv``/``vh`` float32 linear gamma0 on UTM);
- Earth Search v1 ``sentinel-2-l2a`` (``blue``..``nir08``..``scl``, ``raster:bands`` scale 0.0001
  offset -0.1, ``earthsearch:boa_offset_applied``) and ``sentinel-1-grd`` (``s3://sentinel-s1-l1c``
  requester-pays hrefs in the real service);
- Copernicus Data Space ``sentinel-2-l2a`` (``B02_10m``, ``B8A_20m``, ``SCL_20m``, STAC 1.1 ``proj:code``,
  ``processing:version``, ``raster:bands`` scale 0.0001 offset -0.1 from baseline 04.00);
- AWS Sentinel-1 RTC (``gamma0_vv``/``gamma0_vh``).

Hrefs point at GeoTIFFs written here, on each item's published grid. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pystac
import rasterio
from pyproj import Transformer
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.transform import Affine

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
ES_KEYS = {
    "B01": "coastal",
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B05": "rededge1",
    "B06": "rededge2",
    "B07": "rededge3",
    "B08": "nir",
    "B8A": "nir08",
    "B09": "nir09",
    "B11": "swir16",
    "B12": "swir22",
    "SCL": "scl",
}
#: Base reflectance x 10000 of each band in the synthetic scene (the "truth" before any offset).
S2_TRUTH = {b: 500 + 100 * i for i, b in enumerate(S2_NATIVE) if b != "SCL"}


def write_tif(
    path: Path,
    array: np.ndarray,
    crs: str | None,
    transform: Affine | None,
    nodata: float | None = None,
    gcps: list[GroundControlPoint] | None = None,
) -> Path:
    """A small tiled GeoTIFF (georeferenced by CRS + transform, or by GCPs, or not at all)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": array.shape[1],
        "height": array.shape[0],
        "count": 1,
        "dtype": array.dtype.name,
        "nodata": nodata,
    }
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)
        if gcps:
            dst.gcps = (gcps, CRS.from_epsg(4326))
    return path


# ------------------------------------------------------------------------------ S1 GRD (GCPs)


@dataclass(frozen=True)
class RadarGeometry:
    """A smooth, rotated, mirrored (line, pixel) -> (lon, lat) map, like a GRD swath.

    ``lon = lon0 + a*col + b*row + q*col*row``, ``lat = lat0 + c*col + d*row`` (degrees): a
    descending pass has lines running south and range pixels running west.
    """

    lon0: float
    lat0: float
    a: float = -1.05e-4
    b: float = -2.0e-5
    c: float = 1.5e-5
    d: float = -0.9e-4
    q: float = 2e-10

    def lonlat(self, col: np.ndarray | float, row: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Geographic position of image coordinates (pixel corners; +0.5 for centres)."""
        col, row = np.asarray(col, float), np.asarray(row, float)
        return (
            self.lon0 + self.a * col + self.b * row + self.q * col * row,
            self.lat0 + self.c * col + self.d * row,
        )

    def gcps(self, height: int, width: int, step: int = 25) -> list[GroundControlPoint]:
        """A regular GCP grid (as GRD annotations carry), including the far edges."""
        out = []
        rows = sorted({*range(0, height, step), height})
        cols = sorted({*range(0, width, step), width})
        for r in rows:
            for c in cols:
                lon, lat = self.lonlat(c, r)
                out.append(GroundControlPoint(row=r, col=c, x=float(lon), y=float(lat), z=0.0))
        return out

    def footprint(self, height: int, width: int) -> dict:
        """GeoJSON polygon of the image corners."""
        corners = [(0, 0), (width, 0), (width, height), (0, height), (0, 0)]
        return {"type": "Polygon", "coordinates": [[[float(v) for v in self.lonlat(c, r)] for c, r in corners]]}


def grd_dn(height: int, width: int, feature: tuple[int, int] | None, dn_value: int = 75) -> np.ndarray:
    """uint16 amplitude DNs (land: DN 75, about -12 dB sigma0) with a bright 3x3 feature."""
    dn = np.full((height, width), dn_value, np.uint16)
    dn[:, :3] = 0  # GRD border noise removal leaves zeros at the swath edges
    if feature is not None:
        r, c = feature
        dn[r : r + 3, c : c + 3] = 3000
    return dn


def write_grd(
    path: Path, geom: RadarGeometry, height: int, width: int, feature: tuple[int, int] | None, dn_value: int = 75
) -> Path:
    """A GRD measurement TIFF: uint16, no CRS, no transform, GCPs only (like ``measurement/iw-vv.tiff``)."""
    return write_tif(path, grd_dn(height, width, feature, dn_value), None, None, gcps=geom.gcps(height, width))


def calibration_xml(height: int, width: int, sigma: Callable[[float, float], float], beta: float = 237.0) -> str:
    """A Sentinel-1 calibration annotation (``annotation/calibration/calibration-iw-vv.xml`` layout)."""
    vectors = []
    lines = [*range(0, height, 50), height - 1]
    pixels = [*range(0, width, 40), width - 1]
    for line in lines:
        sig = " ".join(f"{sigma(line, p):.6e}" for p in pixels)
        bet = " ".join(f"{beta:.6e}" for _ in pixels)
        vectors.append(
            f"<calibrationVector><azimuthTime>2023-06-28T21:07:05.000000</azimuthTime><line>{line}</line>"
            f'<pixel count="{len(pixels)}">{" ".join(map(str, pixels))}</pixel>'
            f'<sigmaNought count="{len(pixels)}">{sig}</sigmaNought>'
            f'<betaNought count="{len(pixels)}">{bet}</betaNought>'
            f'<gamma count="{len(pixels)}">{sig}</gamma><dn count="{len(pixels)}">{bet}</dn></calibrationVector>'
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><calibration><adsHeader><polarisation>VV</polarisation>'
        "</adsHeader><calibrationInformation><absoluteCalibrationConstant>1.0</absoluteCalibrationConstant>"
        f'</calibrationInformation><calibrationVectorList count="{len(vectors)}">{"".join(vectors)}'
        "</calibrationVectorList></calibration>"
    )


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 UTM zone of a point."""
    zone = int((lon + 180) // 6) + 1
    return (32600 if lat >= 0 else 32700) + zone


def utm_of(lon: float, lat: float) -> tuple[str, Transformer]:
    """(UTM CRS string, lon/lat -> UTM transformer) of a point."""
    crs = f"EPSG:{utm_epsg(lon, lat)}"
    return crs, Transformer.from_crs("EPSG:4326", crs, always_xy=True)


def _href(path: Path) -> str:
    return f"file://{path}"


def _item(item_id: str, collection: str, when: datetime, geometry: dict, props: dict) -> pystac.Item:
    coords = np.array(geometry["coordinates"][0])
    bbox = [float(coords[:, 0].min()), float(coords[:, 1].min()), float(coords[:, 0].max()), float(coords[:, 1].max())]
    item = pystac.Item(item_id, geometry, bbox, when, props, collection=collection)
    return item


# ------------------------------------------------------------------------------ a scene on disk


@dataclass(frozen=True)
class Scene:
    """One small S2 tile (UTM, 10 m grid origin snapped to 60 m) around a lon/lat point."""

    lon: float
    lat: float
    size_10m: int = 192

    @property
    def epsg(self) -> int:
        """UTM zone EPSG code."""
        return utm_epsg(self.lon, self.lat)

    @property
    def origin(self) -> tuple[float, float]:
        """Upper-left corner (x, y) in UTM metres."""
        _, to = utm_of(self.lon, self.lat)
        x, y = to.transform(self.lon, self.lat)
        half = self.size_10m * 5
        return float(np.floor((x - half) / 60) * 60), float(np.ceil((y + half) / 60) * 60)

    def transform(self, res: int) -> Affine:
        """Affine of the tile's grid at ``res`` metres."""
        x0, y0 = self.origin
        return Affine(res, 0, x0, 0, -res, y0)

    def shape(self, res: int) -> tuple[int, int]:
        """(rows, cols) at ``res`` metres."""
        n = self.size_10m * 10 // res
        return n, n

    def footprint(self) -> dict:
        """GeoJSON polygon (lon/lat) of the tile."""
        x0, y0 = self.origin
        ext = self.size_10m * 10
        to_ll = Transformer.from_crs(f"EPSG:{self.epsg}", "EPSG:4326", always_xy=True)
        ring = [(x0, y0), (x0 + ext, y0), (x0 + ext, y0 - ext), (x0, y0 - ext), (x0, y0)]
        return {"type": "Polygon", "coordinates": [[list(to_ll.transform(x, y)) for x, y in ring]]}

    def radar(self) -> RadarGeometry:
        """A radar geometry whose 400 x 400 image covers the tile with a wide margin."""
        g = RadarGeometry(0.0, 0.0)
        return RadarGeometry(self.lon - g.a * 200 - g.b * 200, self.lat - g.c * 200 - g.d * 200)


def _proj(scene: Scene, res: int) -> dict:
    return {"proj:shape": list(scene.shape(res)), "proj:transform": list(scene.transform(res))[:6]}


def write_s2_bands(folder: Path, scene: Scene, dn_offset: int, name: Callable[[str, int], str]) -> dict[str, Path]:
    """One GeoTIFF per band at its native resolution: DN = truth + ``dn_offset``; SCL = 4 (vegetation)."""
    out = {}
    for band, res in S2_NATIVE.items():
        if band == "SCL":
            arr = np.full(scene.shape(res), 4, np.uint8)
        else:
            arr = np.full(scene.shape(res), S2_TRUTH[band] + dn_offset, np.uint16)
        out[band] = write_tif(folder / name(band, res), arr, f"EPSG:{scene.epsg}", scene.transform(res), nodata=0)
    return out


_COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def pc_s2_item(root: Path, scene: Scene, when: datetime, baseline: str, tile: str = "32TNR") -> pystac.Item:
    """Planetary Computer ``sentinel-2-l2a`` item (stactools-sentinel2 layout, no raster offset)."""
    n = baseline.replace(".", "")
    pid = f"S2B_MSIL2A_{when:%Y%m%dT%H%M%S}_N{n}_R065_T{tile}_{when:%Y%m%dT%H%M%S}"
    offset = 1000 if float(baseline) >= 4 else 0
    files = write_s2_bands(root / pid, scene, offset, lambda b, r: f"T{tile}_{when:%Y%m%dT%H%M%S}_{b}_{r}m.tif")
    props = {
        "datetime": when.isoformat(),
        "platform": "Sentinel-2B",
        "constellation": "Sentinel 2",
        "instruments": ["msi"],
        "eo:cloud_cover": 3.2,
        "proj:epsg": scene.epsg,
        "s2:mgrs_tile": tile,
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": baseline,
        "s2:product_uri": f"{pid}.SAFE",
    }
    item = _item(
        f"S2B_MSIL2A_{when:%Y%m%dT%H%M%S}_R065_T{tile}_{when:%Y%m%dT%H%M%S}",
        "sentinel-2-l2a",
        when,
        scene.footprint(),
        props,
    )
    for band, path in files.items():
        res = S2_NATIVE[band]
        fields = {"gsd": float(res), **_proj(scene, res)}
        if band != "SCL":
            fields["eo:bands"] = [{"name": band, "common_name": ES_KEYS[band]}]
        item.add_asset(band, pystac.Asset(_href(path), media_type=_COG, roles=["data"], extra_fields=fields))
    return item


def es_s2_item(
    root: Path, scene: Scene, when: datetime, baseline: str, boa_offset_applied: bool, tile: str = "32TNR"
) -> pystac.Item:
    """Earth Search v1 ``sentinel-2-l2a`` item (common-name keys, raster:bands scale/offset)."""
    new = float(baseline) >= 4
    item_id = f"S2B_{tile}_{when:%Y%m%d}_0_L2A"
    pixels_offset = 1000 if new and not boa_offset_applied else 0
    files = write_s2_bands(root / item_id, scene, pixels_offset, lambda b, r: f"{b}.tif")
    props = {
        "datetime": when.isoformat(),
        "platform": "sentinel-2b",
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": 3.2,
        "proj:epsg": scene.epsg,
        "mgrs:utm_zone": int(tile[:2]),
        "s2:processing_baseline": baseline,
        "earthsearch:boa_offset_applied": boa_offset_applied,
    }
    item = _item(item_id, "sentinel-2-l2a", when, scene.footprint(), props)
    for band, path in files.items():
        res = S2_NATIVE[band]
        rb = {"nodata": 0, "data_type": "uint8" if band == "SCL" else "uint16", "spatial_resolution": res}
        if band != "SCL":
            rb.update(bits_per_sample=15, scale=0.0001, offset=-0.1 if new else 0)
        fields = {"gsd": res, "raster:bands": [rb], **_proj(scene, res)}
        item.add_asset(ES_KEYS[band], pystac.Asset(_href(path), media_type=_COG, roles=["data"], extra_fields=fields))
    return item


def cdse_s2_item(root: Path, scene: Scene, when: datetime, baseline: str, tile: str = "32TNR") -> pystac.Item:
    """Copernicus Data Space ``sentinel-2-l2a`` item (STAC 1.1: ``{band}_{res}m`` keys, proj:code, raster:offset)."""
    new = float(baseline) >= 4
    n = baseline.replace(".", "")
    item_id = f"S2A_MSIL2A_{when:%Y%m%dT%H%M%S}_N{n}_R022_T{tile}_{when:%Y%m%dT%H%M%S}"
    files = write_s2_bands(
        root / item_id, scene, 1000 if new else 0, lambda b, r: f"T{tile}_{when:%Y%m%dT%H%M%S}_{b}_{r}m.tif"
    )
    props = {
        "datetime": when.isoformat(),
        "platform": "sentinel-2a",
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": 3.2,
        "grid:code": f"MGRS-{tile}",
        "processing:version": baseline,
        "product:type": "S2MSI2A",
    }
    item = _item(item_id, "sentinel-2-l2a", when, scene.footprint(), props)
    for band, path in files.items():
        res = S2_NATIVE[band]
        fields = {
            "gsd": res,
            "proj:code": f"EPSG:{scene.epsg}",
            "nodata": 0,
            "data_type": "uint8" if band == "SCL" else "uint16",
            **_proj(scene, res),
        }
        if band != "SCL":
            fields.update({"raster:scale": 0.0001, "raster:offset": -0.1 if new else 0.0})
            fields["bands"] = [{"name": band, "eo:common_name": ES_KEYS[band]}]
        # the real hrefs are s3://eodata/Sentinel-2/MSI/L2A/... (.jp2) with an https alternate
        asset = pystac.Asset(_href(path), media_type="image/tiff", roles=["data"], extra_fields=fields)
        item.add_asset(f"{band}_{res}m", asset)
    return item


def pc_grd_item(
    root: Path,
    scene: Scene,
    when: datetime,
    pols: tuple[str, ...] = ("VV", "VH"),
    mode: str = "IW",
    feature: tuple[int, int] | None = (200, 200),
    dn_value: int = 75,
    calibration: float | None = None,
    collection: str = "sentinel-1-grd",
) -> pystac.Item:
    """Planetary Computer / Earth Search ``sentinel-1-grd`` item: GCP-only measurement TIFFs.

    ``proj:transform`` / ``proj:shape`` are bbox-derived in EPSG:4326 (as published) and wrong for the
    pixels: eoforge must not use them. ``calibration`` (a constant sigmaNought) links a calibration
    annotation as ``schema-calibration-<pol>``.
    """
    pol_code = {("VV", "VH"): "DV", ("HH", "HV"): "DH", ("HH",): "SH", ("VV",): "SV"}[pols]
    kind = "GRDH" if mode == "IW" else "GRDM"
    item_id = f"S1A_{mode}_{kind}_1S{pol_code}_{when:%Y%m%dT%H%M%S}_{when:%Y%m%dT%H%M%S}_049191_05EA4D_21D1"
    geom = scene.radar()
    h = w = 400
    folder = root / item_id
    props = {
        "datetime": when.isoformat(),
        "platform": "SENTINEL-1A",
        "constellation": "Sentinel-1",
        "sar:instrument_mode": mode,
        "sar:frequency_band": "C",
        "sar:center_frequency": 5.405,
        "sar:observation_direction": "right",
        "sar:polarizations": list(pols),
        "sar:product_type": "GRD",
        "sar:resolution_range": 20,
        "sar:pixel_spacing_range": 10,
        "sat:orbit_state": "descending",
        "sat:relative_orbit": 117,
        "s1:processing_level": "1",
        "s1:product_timeliness": "Fast-24h",
    }
    footprint = geom.footprint(h, w)
    item = _item(item_id, collection, when, footprint, props)
    bbox = item.bbox
    for pol in pols:
        key = pol.lower()
        path = write_grd(folder / "measurement" / f"{mode.lower()}-{key}.tiff", geom, h, w, feature, dn_value)
        fields = {
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "spatial_resolution": 10}],
            "proj:epsg": 4326,
            "proj:shape": [w, h],  # transposed, as published
            "proj:transform": [(bbox[2] - bbox[0]) / h, 0.0, bbox[0], 0.0, -(bbox[3] - bbox[1]) / w, bbox[3]],
            "sar:polarizations": [pol],
        }
        item.add_asset(key, pystac.Asset(_href(path), media_type=_COG, roles=["data"], extra_fields=fields))
        if calibration is not None:
            xml = folder / "annotation" / "calibration" / f"calibration-{mode.lower()}-{key}.xml"
            xml.parent.mkdir(parents=True, exist_ok=True)
            xml.write_text(calibration_xml(h, w, lambda _l, _p: calibration))
            item.add_asset(
                f"schema-calibration-{key}",
                pystac.Asset(_href(xml), media_type="application/xml", roles=["metadata", "calibration"]),
            )
    return item


def rtc_item(
    root: Path,
    scene: Scene,
    when: datetime,
    vv: float = 0.0631,
    vh: float = 0.01,
    aws: bool = False,
) -> pystac.Item:
    """``sentinel-1-rtc`` (Planetary Computer: ``vv``/``vh``) or AWS RTC (``gamma0_vv``/``gamma0_vh``) item.

    float32 linear gamma0 on the tile's UTM grid (PC: 10 m; AWS: 20 m). The first 4 columns are 0
    (no radar return / layover), which must come out masked, not -inf dB.
    """
    res = 20 if aws else 10
    item_id = f"S1A_{when:%Y%m%d}_32TNR_DSC" if aws else f"S1A_IW_GRDH_1SDV_{when:%Y%m%dT%H%M%S}_rtc"
    folder = root / item_id
    props = {
        "datetime": when.isoformat(),
        "platform": "SENTINEL-1A",
        "sar:instrument_mode": "IW",
        "sar:polarizations": ["VV", "VH"],
        "sar:product_type": "RTC",
        "sar:frequency_band": "C",
        "proj:epsg": scene.epsg,
        "proj:shape": list(scene.shape(res)),
        "proj:transform": [*list(scene.transform(res))[:6], 0.0, 0.0, 1.0],
    }
    coll = "sentinel1-rtc-aws" if aws else "sentinel-1-rtc"
    item = _item(item_id, coll, when, scene.footprint(), props)
    for pol, value in (("vv", vv), ("vh", vh)):
        arr = np.full(scene.shape(res), value, np.float32)
        arr[:, :4] = 0.0
        name = f"Gamma0_{pol.upper()}.tif" if aws else f"{pol}.tif"
        path = write_tif(folder / name, arr, f"EPSG:{scene.epsg}", scene.transform(res), nodata=-32768.0)
        fields = {} if aws else {"raster:bands": [{"nodata": -32768, "data_type": "float32", "spatial_resolution": 10}]}
        key = f"gamma0_{pol}" if aws else pol
        item.add_asset(key, pystac.Asset(_href(path), media_type=_COG, roles=["data", "gamma0"], extra_fields=fields))
    return item


def write_catalog(root: Path, items: list[pystac.Item]) -> Path:
    """A static catalog (catalog.json) of the items, hrefs kept absolute; returns its path."""
    cat = pystac.Catalog("providers", "provider-shaped items")
    for it in items:
        it.set_self_href(None)
        cat.add_item(it)
    cat.normalize_hrefs(str(root / "stac"))
    cat.save(catalog_type=pystac.CatalogType.ABSOLUTE_PUBLISHED)
    return root / "stac" / "catalog.json"


# ------------------------------------------------------------------------------ signing hooks for tests
# Registered by name (``test_recording``, ``test_planted``) through the test distribution that
# tests/support/signing_hooks.py writes: plans and configs name hooks, never modules.

SIGN_LOG_ENV = "EOFORGE_TEST_SIGN_LOG"

#: The secret ``planted_signer`` puts in every signed href: it must never be written anywhere.
PLANTED_SECRET = "PLANTED-SECRET-xyz"


def recording_signer(href: str) -> str:
    """A signing hook that logs each call to ``$EOFORGE_TEST_SIGN_LOG``.

    It appends a fake SAS token the way ``planetary_computer.sign`` does (``?st=..&se=..&sig=..``);
    for ``file://`` hrefs the reader opens the path and ignores the query.
    """
    import os

    log = os.environ.get(SIGN_LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(href + "\n")
    return href + ("&" if "?" in href else "?") + "st=2024-01-01&se=2099-01-01&sig=SECRET-SAS-TOKEN"


def planted_signer(href: str) -> str:
    """A signing hook that signs every href with :data:`PLANTED_SECRET` (SAS-shaped query)."""
    return href + ("&" if "?" in href else "?") + f"st=2024-01-01&se=2099-01-01&sig={PLANTED_SECRET}"
