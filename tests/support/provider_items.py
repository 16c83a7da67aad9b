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


def grd_dn(height: int, width: int, feature: tuple[int, int] | None, seed: int = 0) -> np.ndarray:
    """uint16 amplitude DNs (land ~ DN 75, i.e. about -12.5 dB sigma0) with a bright 3x3 feature."""
    rng = np.random.default_rng(seed)
    dn = rng.normal(75, 5, (height, width)).clip(20, 200).astype(np.uint16)
    dn[:, :3] = 0  # GRD border noise removal leaves zeros at the swath edges
    if feature is not None:
        r, c = feature
        dn[r : r + 3, c : c + 3] = 3000
    return dn


def write_grd(path: Path, geom: RadarGeometry, height: int, width: int, feature: tuple[int, int] | None) -> Path:
    """A GRD measurement TIFF: uint16, no CRS, no transform, GCPs only (like ``measurement/iw-vv.tiff``)."""
    return write_tif(path, grd_dn(height, width, feature), None, None, gcps=geom.gcps(height, width))


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
