"""The area of interest (lon/lat) and its copies in each grid's CRS; lon/lat transforms of chip boxes."""

from __future__ import annotations

import shapely
from pyproj import Transformer
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import transform as shp_transform

from eoforge.config import DataConfig


def to_lonlat(crs: str) -> Transformer:
    """A transformer from ``crs`` to lon/lat (x = lon, y = lat)."""
    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True)


def area_of_interest(cfg: DataConfig) -> BaseGeometry | None:
    """``catalog.aoi`` intersected with ``catalog.bbox`` (lon/lat), or whichever is set, or None."""
    area: BaseGeometry | None = shape(cfg.catalog.aoi) if cfg.catalog.aoi else None
    if cfg.catalog.bbox is not None:
        bb = box(*cfg.catalog.bbox)
        area = bb if area is None else area.intersection(bb)
    return area


def densified_to(crs: str, geom: BaseGeometry) -> BaseGeometry:
    """A lon/lat geometry in ``crs``, its edges densified (0.01 degree) so they stay true."""
    to = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return shp_transform(to.transform, geom.segmentize(0.01))


class AreaCache:
    """The area of interest (lon/lat) and, per CRS, densified, prepared and with its bounds."""

    def __init__(self, area: BaseGeometry | None) -> None:
        self.area = area
        self._in: dict[str, tuple[BaseGeometry, tuple[float, float, float, float]]] = {}

    def in_crs(self, crs: str) -> tuple[BaseGeometry, tuple[float, float, float, float]] | None:
        """(geometry, bounds) of the area in ``crs``, prepared for vectorised tests; None without an area."""
        if self.area is None:
            return None
        if crs not in self._in:
            geom = densified_to(crs, self.area)
            shapely.prepare(geom)
            self._in[crs] = (geom, geom.bounds)
        return self._in[crs]
