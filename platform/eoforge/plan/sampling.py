"""Where chips go on an S2 item's grid: the strategies of ``chips.sampling``.

Every strategy returns chip origins as an int64 array ``[N, 2]`` of (row, col) pixel offsets of
the chip's top-left corner on the S2 item's grid at ``chips.resolution_m`` (the item's own 10 m
band grid when ``resolution_m`` is 10), so 10 m bands are read without resampling. Origins are
unique and every chip lies wholly inside the item's grid. The planner then applies the same
tests to every strategy (``catalog.aoi`` / ``catalog.bbox`` intersect, inside the S1 footprint),
and a later filter can drop origins with a boolean mask before any row is built.

- ``grid`` (default): a regular grid from the item's top-left corner, stepping ``stride_px``
  (default ``size_px``): today's planner. With ``cover_edges`` a last row and column flush with the
  item's bottom and right edges are added where the grid stops short of them (predict's full coverage).
- ``gaussian``: SSL4EO-S12-style. Around each point (lon/lat) ``n`` chip centres are drawn from
  an isotropic normal distribution of standard deviation ``sigma_km`` per axis (metres east and
  north of the point, placed on the ellipsoid with :class:`pyproj.Geod`: geodesic distance and
  azimuth from the point, i.e. an azimuthal-equidistant map around it).
- ``random``: chip centres uniform by area over each AOI (sampled in a Lambert azimuthal
  equal-area projection centred on the AOI, rejection inside the polygon), ``chips_per_aoi``
  per AOI or ``chips_per_km2`` times its area.

Draws are made once per plan in lon/lat, independent of any S2 item: each draw is a place, and
every S2 item (every date) whose grid holds the chip centred nearest that place gets a chip
there, so a place is in one split on every date, as with the grid. A draw is snapped to the
chip whose centre is nearest on the item's grid (within ``resolution_m / sqrt(2)``); two draws
that snap to the same chip make one chip. The random generator of a point or AOI is
``numpy.random.default_rng`` seeded by SHA-256 of (seed, strategy, the point's id or the AOI's
GeoJSON), so draws do not depend on the search order, on the other points, or on the catalog.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import shapely
from pyproj import CRS, Geod, Transformer
from rasterio.transform import Affine
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

if TYPE_CHECKING:
    from eoforge.config.sampling import ChipGridConfig, GaussianSampling, RandomSampling

_GEOD = Geod(ellps="WGS84")


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: CRS, affine transform (GDAL order a,b,c,d,e,f) and shape (rows, cols)."""

    crs: str
    transform: Affine
    shape: tuple[int, int]


def chips_on_grid(grid: Grid, size_px: int, stride_px: int, cover_edges: bool = False) -> tuple[int, int]:
    """(rows, cols) of the regular chip grid: chips of ``size_px`` every ``stride_px`` wholly inside ``grid``.

    With ``cover_edges``, an axis whose last regular chip stops short of the grid's edge counts
    one more chip, flush with that edge (:func:`axis_starts`).
    """
    return len(axis_starts(grid.shape[0], size_px, stride_px, cover_edges)), len(
        axis_starts(grid.shape[1], size_px, stride_px, cover_edges)
    )


def axis_starts(extent: int, size_px: int, stride_px: int, cover_edges: bool = False) -> np.ndarray:
    """Chip starts along one axis of ``extent`` pixels, int64, increasing.

    Multiples of ``stride_px`` while a whole chip fits; with ``cover_edges``, also
    ``extent - size_px`` when the last of those stops short of the edge: that chip is flush with
    the edge and overlaps its neighbour by more than the regular overlap, so every pixel of the
    axis lies in a chip.
    """
    if extent < size_px:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(0, extent - size_px + 1, stride_px, dtype=np.int64)
    if cover_edges and starts[-1] + size_px < extent:
        starts = np.append(starts, np.int64(extent - size_px))
    return starts


def grid_origins(
    grid: Grid,
    size_px: int,
    stride_px: int,
    area_bounds: tuple[float, float, float, float] | None = None,
    cover_edges: bool = False,
) -> np.ndarray:
    """Origins of the regular chip grid, int64 ``[N, 2]`` (row, col), row-major.

    Args:
        grid: the S2 item's grid.
        size_px: chip side, pixels.
        stride_px: step between chips, pixels.
        area_bounds: (xmin, ymin, xmax, ymax) of the area of interest in the grid's CRS: only the
            window of chips that may intersect it is returned (a superset; the exact test is the
            planner's).
        cover_edges: add the chips flush with the bottom and right edges (:func:`axis_starts`).
    """
    rows = axis_starts(grid.shape[0], size_px, stride_px, cover_edges)
    cols = axis_starts(grid.shape[1], size_px, stride_px, cover_edges)
    if area_bounds is not None:
        res = grid.transform.a
        x_min, y_min, x_max, y_max = area_bounds
        x0, y0 = grid.transform.c, grid.transform.f
        # a chip may meet the area when its span [start, start + size) meets the area's span in pixels
        cols = cols[(cols + size_px >= math.floor((x_min - x0) / res)) & (cols <= math.ceil((x_max - x0) / res))]
        rows = rows[(rows + size_px >= math.floor((y0 - y_max) / res)) & (rows <= math.ceil((y0 - y_min) / res))]
    ri, ci = np.meshgrid(rows, cols, indexing="ij")
    return np.column_stack([ri.ravel(), ci.ravel()]).astype(np.int64)


def snap_centres(x: np.ndarray, y: np.ndarray, grid: Grid, size_px: int) -> np.ndarray:
    """Origins (row, col) of the chips centred nearest the points (x, y) (grid CRS), unique, inside the grid.

    Args:
        x: float array ``[N]``, easting in ``grid.crs``, metres.
        y: float array ``[N]``, northing in ``grid.crs``, metres.
        grid: the S2 item's grid.
        size_px: chip side, pixels.

    Returns:
        int64 ``[M, 2]``, M <= N, sorted by (row, col): duplicates (two points nearest the same
        chip) and chips that would stick out of the grid are dropped.
    """
    res = grid.transform.a
    col = np.rint((x - grid.transform.c) / res - size_px / 2)
    row = np.rint((grid.transform.f - y) / res - size_px / 2)
    ok = np.isfinite(col) & np.isfinite(row)
    ok &= (row >= 0) & (col >= 0) & (row <= grid.shape[0] - size_px) & (col <= grid.shape[1] - size_px)
    origins = np.column_stack([row[ok], col[ok]]).astype(np.int64)
    if len(origins) == 0:
        return origins.reshape(0, 2)
    return np.unique(origins, axis=0)


def _rng(seed: int, *key: object) -> np.random.Generator:
    digest = hashlib.sha256(json.dumps([seed, *key], sort_keys=True, default=str).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def point_id(lon: float, lat: float, given: str | None = None) -> str:
    """The id a Gaussian point's draws are seeded by: ``id`` when given, else its coordinates."""
    return given if given else f"{lon:.7f},{lat:.7f}"


def gaussian_draws(cfg: GaussianSampling, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chip centres drawn around each point: (lon, lat, point index), float64/float64/int64 ``[N]``.

    Offsets (east, north) are normal with standard deviation ``sigma_km`` per axis, metres,
    placed on the WGS84 ellipsoid along the geodesic from the point (distance = |offset|,
    azimuth = its bearing).
    """
    lons, lats, idx = [], [], []
    for i, p in enumerate(cfg.points):
        n = p.n if p.n is not None else cfg.chips_per_point
        sigma_m = 1000.0 * (p.sigma_km if p.sigma_km is not None else cfg.sigma_km)
        east, north = _rng(seed, "gaussian", point_id(p.lon, p.lat, p.id)).normal(0.0, sigma_m, size=(2, n))
        lon, lat, _ = _GEOD.fwd(
            np.full(n, p.lon), np.full(n, p.lat), np.degrees(np.arctan2(east, north)), np.hypot(east, north)
        )
        lons.append(np.asarray(lon, dtype=np.float64))
        lats.append(np.asarray(lat, dtype=np.float64))
        idx.append(np.full(n, i, dtype=np.int64))
    return np.concatenate(lons), np.concatenate(lats), np.concatenate(idx)


def _laea(geom: BaseGeometry) -> tuple[Transformer, Transformer]:
    """(lon/lat -> LAEA, LAEA -> lon/lat) transformers of an equal-area projection centred on ``geom``."""
    c = geom.centroid
    laea = CRS.from_proj4(f"+proj=laea +lat_0={c.y:.9f} +lon_0={c.x:.9f} +datum=WGS84 +units=m +no_defs")
    return (
        Transformer.from_crs("EPSG:4326", laea, always_xy=True),
        Transformer.from_crs(laea, "EPSG:4326", always_xy=True),
    )


def _apply(tr: Transformer) -> Callable[[np.ndarray], np.ndarray]:
    """A ``shapely.transform`` function: coordinates ``[N, 2]`` through ``tr``."""
    return lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1]))


def aoi_area_km2(geom: BaseGeometry) -> float:
    """Area of a lon/lat polygon, km² (on the ellipsoid)."""
    return abs(_GEOD.geometry_area_perimeter(geom)[0]) / 1e6


def random_draws(
    cfg: RandomSampling, seed: int, default_area: BaseGeometry | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[BaseGeometry]]:
    """Chip centres uniform by area over each AOI: (lon, lat, AOI index, AOIs).

    ``chips_per_aoi`` draws per AOI, or ``round(chips_per_km2 * area)``. The AOIs are
    ``cfg.aois`` or, when not given, ``default_area`` (``catalog.aoi`` / ``catalog.bbox``).

    Raises:
        ValueError: no AOI (neither ``aois`` nor a default area).
    """
    if cfg.aois:
        aois = [shape(a) for a in cfg.aois]
    elif default_area is not None:
        aois = [default_area]
    else:
        raise ValueError(
            "chips.sampling.aois: no AOI to sample (give aois, or set catalog.aoi or catalog.bbox for the default)"
        )
    lons, lats, idx = [], [], []
    for i, aoi in enumerate(aois):
        n = (
            cfg.chips_per_aoi
            if cfg.chips_per_aoi is not None
            else round((cfg.chips_per_km2 or 0.0) * aoi_area_km2(aoi))
        )
        key = json.dumps(mapping(aoi), sort_keys=True, default=list)
        rng = _rng(seed, "random", key)
        fwd, inv = _laea(aoi)
        poly = shapely.transform(aoi.segmentize(0.01), _apply(fwd))
        shapely.prepare(poly)
        x_min, y_min, x_max, y_max = poly.bounds
        fill = max(poly.area / max((x_max - x_min) * (y_max - y_min), 1e-12), 1e-3)
        xs: list[np.ndarray] = []
        got = 0
        while got < n:
            k = int(min(max(2 * (n - got) / fill, 1024), 4_000_000))
            x = rng.uniform(x_min, x_max, k)
            y = rng.uniform(y_min, y_max, k)
            inside = shapely.contains_xy(poly, x, y)
            pts = np.column_stack([x[inside], y[inside]])[: n - got]
            xs.append(pts)
            got += len(pts)
        pts = np.concatenate(xs) if xs else np.zeros((0, 2))
        lon, lat = inv.transform(pts[:, 0], pts[:, 1])
        lons.append(np.asarray(lon, dtype=np.float64))
        lats.append(np.asarray(lat, dtype=np.float64))
        idx.append(np.full(len(pts), i, dtype=np.int64))
    return np.concatenate(lons), np.concatenate(lats), np.concatenate(idx), aois


class Sampler:
    """The sampling strategy of a plan, its draws made once; :meth:`origins` per S2 item grid.

    Args:
        chips: the ``chips`` section of the data config.
        seed: the plan's seed.
        default_area: lon/lat area of interest (``catalog.aoi`` ∩ ``catalog.bbox``), the AOI of
            the ``random`` strategy when it lists none.
    """

    def __init__(self, chips: ChipGridConfig, seed: int = 0, default_area: BaseGeometry | None = None) -> None:
        self.size_px = chips.size_px
        self.stride_px = chips.stride_px or chips.size_px
        self.kind = chips.sampling.strategy
        self.cover_edges = bool(getattr(chips.sampling, "cover_edges", False))
        self.lon = self.lat = np.zeros(0)
        self.group = np.zeros(0, dtype=np.int64)
        self.aois: list[BaseGeometry] = []
        if chips.sampling.strategy == "gaussian":
            self.lon, self.lat, self.group = gaussian_draws(chips.sampling, seed)
        elif chips.sampling.strategy == "random":
            self.lon, self.lat, self.group, self.aois = random_draws(chips.sampling, seed, default_area)
        self._to_crs: dict[str, Transformer] = {}

    @property
    def n_drawn(self) -> int:
        """Number of chip centres drawn (0 for the grid)."""
        return len(self.lon)

    def _lonlat_bounds(self, grid: Grid) -> tuple[float, float, float, float]:
        rows, cols = grid.shape
        t = np.linspace(0.0, 1.0, 33)
        c = np.concatenate([t * cols, np.full_like(t, cols), (1 - t) * cols, np.zeros_like(t)])
        r = np.concatenate([np.zeros_like(t), t * rows, np.full_like(t, rows), (1 - t) * rows])
        x, y = grid.transform * (c, r)
        lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(x, y)
        lon, lat = np.asarray(lon), np.asarray(lat)
        if not (np.isfinite(lon).all() and np.isfinite(lat).all()) or lon.max() - lon.min() > 180:
            return -180.0, -90.0, 180.0, 90.0  # across the antimeridian or a pole: test every draw
        m = 0.01  # degrees (~1 km): a draw just outside the outline can still snap onto an edge chip
        return lon.min() - m, lat.min() - m, lon.max() + m, lat.max() + m

    def origins(self, grid: Grid, area_bounds: tuple[float, float, float, float] | None = None) -> np.ndarray:
        """Chip origins on ``grid``, int64 ``[N, 2]`` (row, col), unique, every chip inside the grid.

        Args:
            grid: the S2 item's grid at ``chips.resolution_m``.
            area_bounds: bounds of the area of interest in ``grid.crs`` (the grid strategy lays
                only the window that may intersect it).
        """
        if self.kind == "grid":
            return grid_origins(grid, self.size_px, self.stride_px, area_bounds, self.cover_edges)
        w, s, e, n = self._lonlat_bounds(grid)
        near = np.flatnonzero((self.lon >= w) & (self.lon <= e) & (self.lat >= s) & (self.lat <= n))
        if len(near) == 0:
            return np.zeros((0, 2), dtype=np.int64)
        if grid.crs not in self._to_crs:
            self._to_crs[grid.crs] = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
        x, y = self._to_crs[grid.crs].transform(self.lon[near], self.lat[near])
        return snap_centres(np.asarray(x), np.asarray(y), grid, self.size_px)


def chip_origins(
    chips: ChipGridConfig,
    grid: Grid,
    *,
    seed: int = 0,
    area: BaseGeometry | None = None,
    area_bounds: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """Chip origins of ``chips.sampling`` on one grid, int64 ``[N, 2]`` (row, col) (see :class:`Sampler`).

    Args:
        chips: the ``chips`` config (size, stride, sampling strategy).
        grid: the S2 item's grid at ``chips.resolution_m``.
        seed: the plan's seed.
        area: lon/lat area of interest (the random strategy's default AOI).
        area_bounds: bounds of the area of interest in ``grid.crs`` (window of the grid strategy).
    """
    return Sampler(chips, seed, area).origins(grid, area_bounds)


def sampling_bbox(chips: ChipGridConfig) -> tuple[float, float, float, float] | None:
    """A lon/lat search box around what the strategy samples (points ± 5 sigma, AOI bounds), or None."""
    s = chips.sampling
    if s.strategy == "gaussian":
        boxes = []
        for p in s.points:
            r_km = 5 * (p.sigma_km if p.sigma_km is not None else s.sigma_km)
            dlat = r_km / 111.0
            dlon = r_km / (111.0 * max(math.cos(math.radians(p.lat)), 0.01))
            boxes.append((p.lon - dlon, p.lat - dlat, p.lon + dlon, p.lat + dlat))
    elif s.strategy == "random" and s.aois:
        boxes = [shape(a).bounds for a in s.aois]
    else:
        return None
    b = np.array(boxes)
    return (
        float(max(b[:, 0].min(), -180.0)),
        float(max(b[:, 1].min(), -90.0)),
        float(min(b[:, 2].max(), 180.0)),
        float(min(b[:, 3].max(), 90.0)),
    )
