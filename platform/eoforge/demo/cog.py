"""Pixel grids and Cloud-Optimized GeoTIFF writing for the demo catalog.

:class:`Grid` is a north-up pixel grid (CRS, affine transform, shape) that knows its
pixel-centre coordinates and its lon/lat footprint; :func:`write_cog` writes one band to
a COG (GDAL COG driver: tiled, deflate, overviews AUTO) without touching the stored
full-resolution values.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer


@cache
def _transformer(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


def transform_xy(src: str, dst: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reproject coordinates (x = easting/longitude, y = northing/latitude) between two CRSs."""
    if src == dst:
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    tx, ty = _transformer(src, dst).transform(x, y)
    return np.asarray(tx, dtype=np.float64), np.asarray(ty, dtype=np.float64)


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid.

    Attributes:
        crs: CRS as ``"EPSG:nnnn"``.
        transform: affine pixel -> CRS transform (GDAL order a, b, c, d, e, f; e < 0).
        height: rows.
        width: columns.
    """

    crs: str
    transform: Affine
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (self.height, self.width)

    @property
    def res(self) -> float:
        """Pixel width in CRS units (metres or degrees)."""
        return float(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        left, top = self.transform.c, self.transform.f
        return (left, top + self.transform.e * self.height, left + self.transform.a * self.width, top)

    def proj_transform(self) -> list[float]:
        """The transform as STAC ``proj:transform`` (6 numbers, a b c d e f)."""
        return [float(v) for v in tuple(self.transform)[:6]]

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates in the grid's CRS: two float64 arrays of shape (height, width)."""
        cols = np.arange(self.width) + 0.5
        rows = np.arange(self.height) + 0.5
        x = self.transform.c + self.transform.a * cols
        y = self.transform.f + self.transform.e * rows
        return np.broadcast_to(x[None, :], self.shape), np.broadcast_to(y[:, None], self.shape)

    def centres_in(self, crs: str) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates reprojected to ``crs``: two arrays of shape (height, width)."""
        x, y = self.centres()
        return transform_xy(self.crs, crs, x, y)

    def lonlat_outline(self, per_edge: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Grid outline in lon/lat degrees, ``4 * per_edge`` points counter-clockwise from lower-left."""
        left, bottom, right, top = self.bounds
        t = np.linspace(0.0, 1.0, per_edge, endpoint=False)
        xs = np.concatenate(
            [
                left + (right - left) * t,
                np.full_like(t, right),
                right - (right - left) * t,
                np.full_like(t, left),
            ]
        )
        ys = np.concatenate(
            [
                np.full_like(t, bottom),
                bottom + (top - bottom) * t,
                np.full_like(t, top),
                top - (top - bottom) * t,
            ]
        )
        return transform_xy(self.crs, "EPSG:4326", xs, ys)

    def footprint(self) -> dict:
        """GeoJSON Polygon of the grid's four corners in lon/lat (counter-clockwise, closed)."""
        left, bottom, right, top = self.bounds
        lon, lat = transform_xy(
            self.crs, "EPSG:4326", np.array([left, right, right, left]), np.array([bottom, bottom, top, top])
        )
        ring = [[float(a), float(b)] for a, b in zip(lon, lat, strict=True)]
        return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def _blocksize(width: int) -> int:
    """Largest power of two below ``width``, within [128, 256] (GDAL's COG driver wants BLOCKSIZE >= 128)."""
    size = 256
    while size > 128 and size >= width:
        size //= 2
    return size


def write_cog(path: Path, array: np.ndarray, grid: Grid, nodata: float, resampling: str = "average") -> None:
    """Write one band as a Cloud-Optimized GeoTIFF.

    The full-resolution values are stored exactly (deflate is lossless); overviews are
    built with ``resampling`` ("average" for reflectance and backscatter, "nearest" for
    classes). The tile size is the largest power of two (128..256) below the raster width,
    so every file is tiled and rasters wider than 256 px get at least one overview.

    Args:
        path: output file; parent folders are created.
        array: 2-D array of shape ``grid.shape`` (dtype kept: uint8, uint16, float32).
        grid: where the pixels are.
        nodata: the value that marks missing pixels.
        resampling: GDAL overview resampling name.
    """
    if array.shape != grid.shape:
        raise ValueError(f"{path}: array shape {array.shape} != grid shape {grid.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=grid.width,
        height=grid.height,
        count=1,
        dtype=array.dtype.name,
        crs=grid.crs,
        transform=grid.transform,
        nodata=nodata,
        blocksize=_blocksize(grid.width),
        compress="deflate",
        predictor="yes",
        overviews="auto",
        overview_resampling=resampling,
    ) as dst:
        dst.write(array, 1)
