"""Pixel rendering of the demo catalog's scenes: Sentinel-2 bands, SCL, clouds, Sentinel-1.

A :class:`Scene` is one square of ``size_px`` × ``size_px`` pixels at 10 m in EPSG:32632
with its 20 m and 60 m Sentinel-2 grids (same upper-left corner, snapped to 60 m, sizes
``ceil(size_px / 2)`` and ``ceil(size_px / 6)``: the 60 m grid may reach up to 50 m past
the scene's right and bottom edges), and a lon/lat Sentinel-1 grid (0.0001°) covering the
scene plus 300 m on every side. Everything is drawn from :class:`~eoforge.demo.world.World`
and from random streams keyed by (seed, scene, date), so a scene does not depend on how
many other scenes or dates are generated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from affine import Affine

from eoforge.bands import S2_BANDS
from eoforge.demo.cog import Grid, transform_xy
from eoforge.demo.materials import SCL_OF_MATERIAL, s1_backscatter_db, s2_signature
from eoforge.demo.world import FractalNoise, RegionConditions, World

UTM = "EPSG:32632"
LONLAT = "EPSG:4326"
#: Upper-left corner of scene 0 (metres, EPSG:32632; multiples of 60 m): about 9.26°E, 45.05°N.
ORIGIN_X, ORIGIN_Y = 520_020.0, 4_990_020.0
#: Gap between neighbouring scenes (m) and scenes per row (rows go south).
SCENE_GAP_M, SCENES_PER_ROW = 5_000.0, 8
#: Sentinel-1 grid: 10000 pixels per degree (0.0001°, about 7.9 m E-W × 11.1 m N-S at 45°N).
S1_PX_PER_DEG = 10_000
S1_MARGIN_M = 300.0
#: Reflectors sit at least this far (m) from the scene edges (40 S2 pixels + snapping slack).
REFLECTOR_MARGIN_M = 450.0
REFLECTOR_DB = (15.0, 5.0)
#: Cloud "colour" (reflectance ×10000, S2 band order): bright in the visible, darker in the SWIR.
_CLOUD = np.array([7200, 7000, 6900, 6800, 6800, 6700, 6700, 6600, 6600, 5000, 4500, 3200], dtype=np.float64)
#: Cloud-shadow displacement (m, east / south): sun in the south-east at 10:20 UTC.
_SHADOW_SHIFT = (-180.0, -420.0)

#: Cloud scenarios: blob count [lo, hi), blob radius range (fraction of the scene side),
#: accepted cloud cover range (%), radius factor applied until the cover is in range.
_CLOUD_KINDS = {
    "clear": ((0, 1), (0.0, 0.0), (0.0, 100.0), 1.0),
    "light": ((1, 4), (0.06, 0.16), (0.0, 25.0), 0.85),
    "heavy": ((3, 5), (0.35, 0.6), (65.0, 100.0), 1.15),
}

# Tags of the random streams (SeedSequence spawn keys are (tag, scene, date)).
_TAG_SCENE, _TAG_CLOUD, _TAG_S2NOISE, _TAG_S1 = 1, 2, 3, 4


def stream(seed: int, tag: int, scene: int, date: int = 0) -> np.random.Generator:
    """Independent random generator for one (purpose, scene, date) of a seed."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(tag, scene, date)))


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over f×f blocks of the last two axes (their sizes must be multiples of f)."""
    *lead, h, w = a.shape
    return a.reshape(*lead, h // f, f, w // f, f).mean(axis=(-3, -1))


@dataclass(frozen=True)
class Scene:
    """Geometry and static land cover of one demo scene.

    Attributes:
        index: scene number k.
        size_px: side of the 10 m grid in pixels.
        grids: Sentinel-2 grids by resolution in metres (10, 20, 60), EPSG:32632.
        s1_grid: Sentinel-1 grid, EPSG:4326, 0.0001° pixels.
        classes: DFC class ids on the 10 m grid extended to ``6 * ceil(size_px / 6)`` pixels,
            uint8 of shape (E, E); ``classes[:size_px, :size_px]`` is the label map.
        materials: material ids (:data:`~eoforge.demo.materials.MATERIALS`) on the same extended
            grid, uint8 (E, E).
        texture: unitless texture on the same extended grid, float64 (E, E).
        s1_classes: DFC class ids at the S1 pixel centres, uint8 of shape ``s1_grid.shape``.
        s1_materials: material ids at the S1 pixel centres, uint8 of shape ``s1_grid.shape``.
        s1_texture: texture at the S1 pixel centres, float64 of shape ``s1_grid.shape``.
        reflectors: (lon, lat) degrees of the corner reflectors, each an S1 pixel centre.
        reflector_pixels: (row, col) of each reflector in ``s1_grid``.
        conditions: the region's phenology, illumination and S1 offset at the scene centre.
    """

    index: int
    size_px: int
    grids: dict[int, Grid]
    s1_grid: Grid
    classes: np.ndarray
    materials: np.ndarray
    texture: np.ndarray
    s1_classes: np.ndarray
    s1_materials: np.ndarray
    s1_texture: np.ndarray
    reflectors: tuple[tuple[float, float], ...]
    reflector_pixels: tuple[tuple[int, int], ...]
    conditions: RegionConditions

    @property
    def label_map(self) -> np.ndarray:
        """DFC class ids on the scene's 10 m grid: uint8 of shape (size_px, size_px)."""
        return self.classes[: self.size_px, : self.size_px]


def scene_origin(k: int, size_px: int) -> tuple[float, float]:
    """Upper-left corner (x, y) in EPSG:32632 metres of scene k; multiples of 60 m."""
    pitch = math.ceil((size_px * 10.0 + SCENE_GAP_M) / 60.0) * 60.0
    row, col = divmod(k, SCENES_PER_ROW)
    return ORIGIN_X + col * pitch, ORIGIN_Y - row * pitch


def _s1_grid(s2_grid: Grid) -> Grid:
    """Lon/lat grid of 0.0001° pixels covering ``s2_grid`` plus ``S1_MARGIN_M`` on every side."""
    lon, lat = s2_grid.lonlat_outline()
    pad_lat = S1_MARGIN_M / 111_320.0
    pad_lon = S1_MARGIN_M / (111_320.0 * math.cos(math.radians(float(lat.max()))))
    # Integer pixel indices from (0°, 0°); dividing integers keeps the degrees tidy (9.2503, not 9.25030001).
    west = math.floor((float(lon.min()) - pad_lon) * S1_PX_PER_DEG)
    east = math.ceil((float(lon.max()) + pad_lon) * S1_PX_PER_DEG)
    south = math.floor((float(lat.min()) - pad_lat) * S1_PX_PER_DEG)
    north = math.ceil((float(lat.max()) + pad_lat) * S1_PX_PER_DEG)
    res = 1.0 / S1_PX_PER_DEG
    transform = Affine(res, 0.0, west / S1_PX_PER_DEG, 0.0, -res, north / S1_PX_PER_DEG)
    return Grid(LONLAT, transform, north - south, east - west)


def _reflectors(
    rng: np.random.Generator, x0: float, y0: float, size_px: int, s1: Grid
) -> tuple[tuple[tuple[float, float], ...], tuple[tuple[int, int], ...]]:
    """2-3 points in separate west-east strips of the scene interior, snapped to S1 pixel centres."""
    n = int(rng.integers(2, 4))
    inner = size_px * 10.0 - 2 * REFLECTOR_MARGIN_M
    strip = inner / n
    u = REFLECTOR_MARGIN_M + strip * (np.arange(n) + rng.uniform(0.2, 0.8, n))
    v = REFLECTOR_MARGIN_M + inner * rng.uniform(0.0, 1.0, n)
    lon, lat = transform_xy(UTM, LONLAT, x0 + u, y0 - v)
    west = round(s1.transform.c * S1_PX_PER_DEG)
    north = round(s1.transform.f * S1_PX_PER_DEG)
    points, pixels = [], []
    for lo, la in zip(lon, lat, strict=True):
        ilon, ilat = math.floor(lo * S1_PX_PER_DEG), math.floor(la * S1_PX_PER_DEG)
        points.append(((2 * ilon + 1) / (2 * S1_PX_PER_DEG), (2 * ilat + 1) / (2 * S1_PX_PER_DEG)))
        pixels.append((north - 1 - ilat, ilon - west))
    return tuple(points), tuple(pixels)


def make_scene(world: World, seed: int, k: int, size_px: int, origin: tuple[float, float] | None = None) -> Scene:
    """Lay out scene k and evaluate the world on its grids.

    ``origin``: upper-left corner (EPSG:32632 metres, multiples of 60 m); default :func:`scene_origin`.
    """
    x0, y0 = scene_origin(k, size_px) if origin is None else origin
    grids = {
        res: Grid(UTM, Affine(float(res), 0.0, x0, 0.0, -float(res), y0), n, n)
        for res, n in ((10, size_px), (20, math.ceil(size_px / 2)), (60, math.ceil(size_px / 6)))
    }
    ext = grids[60].width * 6
    xs, ys = Grid(UTM, grids[10].transform, ext, ext).centres()
    s1 = _s1_grid(grids[10])
    sx, sy = s1.centres_in(UTM)
    points, pixels = _reflectors(stream(seed, _TAG_SCENE, k), x0, y0, size_px, s1)
    classes, s1_classes = world.classes_at(xs, ys), world.classes_at(sx, sy)
    return Scene(
        index=k,
        size_px=size_px,
        grids=grids,
        s1_grid=s1,
        classes=classes,
        materials=world.materials_at(xs, ys, classes),
        texture=world.texture_at(xs, ys),
        s1_classes=s1_classes,
        s1_materials=world.materials_at(sx, sy, s1_classes),
        s1_texture=world.texture_at(sx, sy),
        reflectors=points,
        reflector_pixels=pixels,
        conditions=world.conditions_at(x0 + size_px * 5.0, y0 - size_px * 5.0),
    )


@dataclass(frozen=True)
class S2Render:
    """One Sentinel-2 acquisition's pixels.

    Attributes:
        bands: band name -> uint16 reflectance ×10000 (0 = nodata never occurs) at the band's
            native grid: (size_px, size_px) at 10 m, (ceil(size_px/2),)*2 at 20 m,
            (ceil(size_px/6),)*2 at 60 m.
        scl: scene classification, uint8 on the 20 m grid.
        cloud_cover: percent of SCL pixels that are cloud (8, 9) or cloud shadow (3).
    """

    bands: dict[str, np.ndarray]
    scl: np.ndarray
    cloud_cover: float


def cloud_cover_percent(scl: np.ndarray) -> float:
    """Percent (0..100, rounded to 3 decimals) of SCL pixels with codes 3, 8 or 9."""
    return round(100.0 * float(np.isin(scl, (3, 8, 9)).mean()), 3)


def _cloud_alpha(u: np.ndarray, v: np.ndarray, blobs: np.ndarray, scale: float, noise: np.ndarray) -> np.ndarray:
    """Cloud opacity in [0, 1] at scene-relative metres (u east, v south); blobs rows (cu, cv, r)."""
    core = np.zeros(u.shape)
    for cu, cv, r in blobs:
        rr = (r * scale) ** 2
        np.maximum(core, np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / rr), out=core)
    return np.clip((core + 0.2 * noise - 0.45) / 0.35, 0.0, 1.0)


def _clouds(scene: Scene, rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cloud and shadow opacity (float64, extended 10 m grid) and the SCL (uint8, 20 m grid)."""
    ext = scene.classes.shape[0]
    side = scene.size_px * 10.0
    x0, y0 = scene.grids[10].transform.c, scene.grids[10].transform.f
    u = np.broadcast_to((np.arange(ext) + 0.5)[None, :] * 10.0, (ext, ext))
    v = np.broadcast_to((np.arange(ext) + 0.5)[:, None] * 10.0, (ext, ext))
    noise_field = FractalNoise.random(rng, 1, 800.0, 5, gain=0.6)
    noise = noise_field(x0 + u, y0 - v)[0]
    shadow_noise = noise_field(x0 + u - _SHADOW_SHIFT[0], y0 - v + _SHADOW_SHIFT[1])[0]
    (n_lo, n_hi), r_range, (cover_lo, cover_hi), growth = _CLOUD_KINDS[kind]
    n = int(rng.integers(n_lo, n_hi))
    blobs = np.column_stack([rng.uniform(-0.1, 1.1, (n, 2)) * side, rng.uniform(*r_range, n) * side])
    classes20 = SCL_OF_MATERIAL[scene.materials[::2, ::2]]
    unclassified = rng.random(classes20.shape) < 0.003
    h20 = scene.grids[20].height
    scale = 1.0
    for _ in range(20):  # grow or shrink the blobs until the cover fits the kind
        alpha = _cloud_alpha(u, v, blobs, scale, noise)
        shadow = _cloud_alpha(u - _SHADOW_SHIFT[0], v - _SHADOW_SHIFT[1], blobs, scale, shadow_noise)
        shadow = shadow * (1.0 - alpha)
        a20, s20 = _block_mean(alpha, 2), _block_mean(shadow, 2)
        scl = np.where(unclassified, np.uint8(7), classes20)
        scl = np.where(s20 > 0.3, np.uint8(3), scl)
        scl = np.where(a20 > 0.2, np.uint8(8), scl)
        scl = np.where(a20 > 0.6, np.uint8(9), scl).astype(np.uint8)[:h20, :h20]
        if cover_lo <= cloud_cover_percent(scl) <= cover_hi:
            break
        scale *= growth
    return alpha, shadow, scl


def render_s2(scene: Scene, seed: int, d: int, when: datetime, kind: str) -> S2Render:
    """Render acquisition ``d`` of a scene.

    Args:
        scene: the scene.
        seed: catalog seed.
        d: date index within the scene.
        when: acquisition time (its day of year drives the vegetation season).
        kind: "clear" (no clouds), "light" (cloud + shadow <= ~25 %), "heavy" (>= ~65 %).
    """
    alpha, shadow, scl = _clouds(scene, stream(seed, _TAG_CLOUD, scene.index, d), kind)
    rng = stream(seed, _TAG_S2NOISE, scene.index, d)
    cond = scene.conditions
    sig = s2_signature(when.timetuple().tm_yday, cond.phenology_shift_days) * cond.illumination  # (M, 12)
    ext = scene.classes.shape[0]
    surface = np.moveaxis(sig[scene.materials], -1, 0)  # (12, E, E)
    surface *= 1.0 + 0.06 * scene.texture
    surface *= 1.0 + rng.normal(0.0, 0.02, (len(S2_BANDS), ext, ext))
    surface *= 1.0 - 0.65 * shadow
    cloud = _CLOUD[:, None, None] * (1.0 + 0.04 * rng.normal(0.0, 1.0, (1, ext, ext)))
    toa = (1.0 - alpha) * surface + alpha * cloud
    bands = {}
    for i, band in enumerate(S2_BANDS):
        res = int(band.resolution_m)
        n = scene.grids[res].width
        arr = toa[i] if res == 10 else _block_mean(toa[i], res // 10)
        bands[band.name] = np.clip(np.rint(arr[:n, :n]), 1, 65535).astype(np.uint16)
    return S2Render(bands, scl, cloud_cover_percent(scl))


def render_s1(scene: Scene, seed: int, d: int, when: datetime) -> tuple[np.ndarray, np.ndarray]:
    """Backscatter of acquisition ``d`` of a scene on its S1 grid.

    Per-material mean (seasonal for crops) plus ±0.8 dB texture, then multiplicative
    gamma speckle (5 looks) in linear power, back to dB and clipped to [-40, 25]; each
    reflector is a 3×3 block at +15 dB VV / +5 dB VH.

    Returns:
        (vv, vh): float32 arrays of shape ``scene.s1_grid.shape``, unit dB.
    """
    rng = stream(seed, _TAG_S1, scene.index, d)
    cond = scene.conditions
    mean_db = s1_backscatter_db(when.timetuple().tm_yday, cond.phenology_shift_days)[scene.s1_materials]  # (H, W, 2)
    mean_db = mean_db + cond.s1_offset_db
    mean_db = mean_db + 0.8 * scene.s1_texture[..., None]
    looks = 5.0
    speckle = rng.gamma(looks, 1.0 / looks, mean_db.shape)
    db = np.clip(10.0 * np.log10(10.0 ** (mean_db / 10.0) * speckle), -40.0, 25.0)
    for row, col in scene.reflector_pixels:
        db[row - 1 : row + 2, col - 1 : col + 2] = REFLECTOR_DB
    db = db.astype(np.float32)
    return np.ascontiguousarray(db[..., 0]), np.ascontiguousarray(db[..., 1])
