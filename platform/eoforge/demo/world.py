"""The synthetic land-cover "world" behind the demo catalog.

The world is a deterministic function of a seed that assigns one of the 8 DFC2020 classes
(:data:`eoforge.bands.DFC_CLASSES`, 0 Forest .. 7 Water) to every point of the
plane of EPSG:32632 (UTM 32N, metres). Each class has a smooth random field
(:class:`FractalNoise`: hashed value noise, octaves from 1.5 km down to 47 m cells); the
class of a point is the argmax of the fields plus a per-class bias, which sets the class
mix (about 19 % forest, 20 % cropland, 13 % each shrubland and grassland, 12 % urban,
9 % water, 7 % wetlands, 6 % barren). The fine octaves make the borders ragged. Because
the world is a function of projected coordinates, the 10 m Sentinel-2 grid and the lon/lat
Sentinel-1 grid of a scene see the same land cover.

Regions differ, as DFC2020's regions of interest do (its train and test ROIs lie on other
continents and seasons). Slow fields (:data:`REGION_SCALE_M` cells, two octaves) shift, from
place to place:

- the class priors (each class's argmax bias moves by up to about ±:data:`PRIOR_SHIFT`): one
  region has more cropland, another more forest;
- the phenology (:meth:`World.conditions_at`): the date of peak greenness moves by about
  ±:data:`PHENOLOGY_SHIFT_DAYS` (latitude, altitude, crop calendars);
- the illumination of Sentinel-2 (a multiplicative factor of about ±:data:`ILLUMINATION_SHIFT`:
  residual sun-angle, BRDF and atmospheric-correction differences between L2A scenes);
- the Sentinel-1 radiometry (an offset of about ±:data:`S1_OFFSET_DB` dB: incidence angle across
  the swath, since backscatter falls with incidence).

The module also holds what each class looks like:

- :func:`s2_signature`: 12-band surface reflectance ×10000 (order of
  :data:`~eoforge.bands.S2_BAND_NAMES`), vegetation greening up towards July;
- :data:`S1_BACKSCATTER_DB`: mean VV and VH backscatter in dB;
- :data:`SCL_OF_CLASS`: the Sentinel-2 scene-classification code a clear pixel gets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from eoforge.bands import DFC_CLASSES, S2_BAND_NAMES

N_CLASSES = len(DFC_CLASSES)

#: Per-class bias of the argmax (larger = more frequent): forests and croplands dominate,
#: wetlands and barren land are rare, as in the Po valley foothills.
_CLASS_BIAS = np.array([0.30, 0.0, 0.10, -0.30, 0.35, -0.05, -0.35, -0.10])

#: Peak-season reflectance ×10000 per class (rows: DFC classes; columns: B01 B02 B03 B04
#: B05 B06 B07 B08 B8A B09 B11 B12).
_PEAK = np.array(
    [
        [250, 300, 500, 300, 800, 2200, 2800, 3000, 3100, 3000, 1500, 700],  # Forest
        [350, 400, 650, 500, 1000, 2000, 2400, 2600, 2700, 2600, 2100, 1200],  # Shrubland
        [300, 400, 750, 450, 1100, 2600, 3100, 3400, 3500, 3400, 2200, 1200],  # Grassland
        [300, 350, 600, 400, 800, 1700, 2000, 2200, 2250, 2200, 1200, 600],  # Wetlands
        [300, 350, 750, 350, 1100, 3000, 3700, 4000, 4100, 4000, 2300, 1100],  # Croplands
        [1200, 1300, 1400, 1500, 1650, 1800, 1900, 2000, 2050, 2000, 2300, 2100],  # Urban
        [1300, 1500, 1900, 2300, 2500, 2650, 2750, 2850, 2950, 2900, 3500, 3000],  # Barren
        [700, 600, 500, 300, 250, 200, 180, 150, 140, 120, 80, 60],  # Water
    ],
    dtype=np.float64,
)
#: Off-season (senescent vegetation / bare soil) reflectance ×10000, same band order.
_DORMANT = np.array([800, 900, 1100, 1300, 1500, 1700, 1800, 1900, 2000, 2000, 2600, 2000], dtype=np.float64)
#: How far each class moves from its peak towards ``_DORMANT`` at the seasonal minimum.
_SEASONAL_AMPLITUDE = np.array([0.15, 0.25, 0.35, 0.30, 0.80, 0.0, 0.0, 0.0])
#: Day of year of peak greenness (late July).
_PEAK_DOY = 200

#: Mean backscatter per class in dB, columns (VV, VH).
S1_BACKSCATTER_DB = np.array(
    [
        [-8.0, -14.0],  # Forest: volume scattering
        [-10.0, -17.0],  # Shrubland
        [-12.0, -19.0],  # Grassland
        [-14.0, -21.0],  # Wetlands
        [-11.0, -18.0],  # Croplands
        [0.0, -8.0],  # Urban: double bounce
        [-15.0, -24.0],  # Barren
        [-22.0, -28.0],  # Water: specular
    ]
)

#: SCL code of a clear pixel of each class: 4 vegetation, 5 not vegetated, 6 water.
SCL_OF_CLASS = np.array([4, 4, 4, 4, 4, 5, 5, 6], dtype=np.uint8)

#: Cell size (m) of the coarsest octave of the regional fields: scenes tens of km apart differ.
REGION_SCALE_M = 40_000.0
#: Regional shifts, per unit (about one standard deviation) of their field.
PRIOR_SHIFT = 0.25
PHENOLOGY_SHIFT_DAYS = 20.0
ILLUMINATION_SHIFT = 0.05
S1_OFFSET_DB = 0.7

if _PEAK.shape != (N_CLASSES, len(S2_BAND_NAMES)):  # pragma: no cover - guards edits of the tables
    raise RuntimeError("world.py: signature table does not match bands.S2_BAND_NAMES")


def greenness(doy: float) -> float:
    """Seasonal greenness in [0, 1]: 1 at day-of-year 200, 0 half a year away."""
    return 0.5 + 0.5 * math.cos(2.0 * math.pi * (doy - _PEAK_DOY) / 365.25)


def s2_signature(doy: float, phenology_shift_days: float = 0.0) -> np.ndarray:
    """Mean surface reflectance ×10000 of every class on a given day of year.

    Args:
        doy: day of year, 1..366.
        phenology_shift_days: the region's delay of the season (days; see :meth:`World.conditions_at`).

    Returns:
        float64 array of shape (8, 12): rows DFC classes, columns S2 bands in the order of
        :data:`~eoforge.bands.S2_BAND_NAMES`, unit reflectance ×10000.
    """
    dormancy = _SEASONAL_AMPLITUDE * (1.0 - greenness(doy - phenology_shift_days))  # (8,)
    return _PEAK * (1.0 - dormancy[:, None]) + _DORMANT[None, :] * dormancy[:, None]


def s1_backscatter_db(doy: float, phenology_shift_days: float = 0.0) -> np.ndarray:
    """Mean backscatter of every class on a given day of year.

    Croplands get up to +2 dB VV / +3 dB VH at peak biomass (delayed by the region's
    ``phenology_shift_days``); the rest is constant.

    Returns:
        float64 array of shape (8, 2): rows DFC classes, columns (VV, VH), unit dB.
    """
    out = S1_BACKSCATTER_DB.copy()
    out[4] += greenness(doy - phenology_shift_days) * np.array([2.0, 3.0])
    return out


_MASK64 = (1 << 64) - 1
#: Origin subtracted from EPSG:32632 coordinates before scaling (keeps the numbers small).
_X0, _Y0 = 500_000.0, 5_000_000.0
#: Standard deviation of one octave of value noise (uniform lattice values, smoothstep).
_OCTAVE_STD = 0.43


def _hash_unit(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random values in [-1, 1) at integer lattice points (splitmix64 mixing)."""
    with np.errstate(over="ignore"):
        n = ix.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        n = n ^ (iy.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F))
        n ^= np.uint64(salt)
        n ^= n >> np.uint64(30)
        n *= np.uint64(0xBF58476D1CE4E5B9)
        n ^= n >> np.uint64(27)
        n *= np.uint64(0x94D049BB133111EB)
        n ^= n >> np.uint64(31)
    return (n >> np.uint64(11)).astype(np.float64) * (2.0 / 2.0**53) - 1.0


def _value_noise(u: np.ndarray, v: np.ndarray, salt: int) -> np.ndarray:
    """One octave of value noise at lattice coordinates (u, v) (1 = one lattice cell)."""
    fu, fv = np.floor(u), np.floor(v)
    su, sv = u - fu, v - fv
    su *= su * (3.0 - 2.0 * su)  # smoothstep
    sv *= sv * (3.0 - 2.0 * sv)
    u0, v0 = int(fu.min()), int(fv.min())
    nu = int(fu.max()) - u0 + 2
    # Hash only the lattice nodes the points touch, then gather the 4 corners of each point.
    lattice = _hash_unit(np.arange(u0, u0 + nu)[None, :], np.arange(v0, int(fv.max()) + 2)[:, None], salt).ravel()
    idx = (fv - v0).astype(np.intp) * nu + (fu - u0).astype(np.intp)
    a, b = lattice.take(idx), lattice.take(idx + 1)
    c, d = lattice.take(idx + nu), lattice.take(idx + nu + 1)
    b -= a
    c -= a
    d -= a + b + c  # = a - b - c + d with the original corners
    return a + b * su + sv * (c + d * su)


@dataclass(frozen=True)
class FractalNoise:
    """Smooth, non-periodic random fields on the plane (fractal value noise).

    Each field is a sum of octaves of value noise; octave o has lattice spacing
    ``cells[o]`` metres and weight ``gains[o]``, and its own random rotation and shift so
    no lattice axis shows. Fields are normalised to a standard deviation of about 1.

    Attributes:
        cells: lattice spacing per octave, metres, shape (n_octaves,).
        gains: weight per octave, shape (n_octaves,).
        salts: hash salt per field and octave, shape (n_fields, n_octaves).
        angles: rotation per field and octave, radians, shape (n_fields, n_octaves).
        shifts: offset per field and octave, lattice cells, shape (n_fields, n_octaves, 2).
    """

    cells: np.ndarray
    gains: np.ndarray
    salts: np.ndarray
    angles: np.ndarray
    shifts: np.ndarray

    @staticmethod
    def random(
        rng: np.random.Generator, n_fields: int, largest_m: float, octaves: int, gain: float = 0.5
    ) -> FractalNoise:
        """Draw ``n_fields`` fields whose coarsest octave has ``largest_m`` metre cells."""
        return FractalNoise(
            cells=largest_m * 0.5 ** np.arange(octaves),
            gains=gain ** np.arange(octaves),
            salts=rng.integers(0, 2**63, (n_fields, octaves), dtype=np.int64),
            angles=rng.uniform(0.0, 2.0 * math.pi, (n_fields, octaves)),
            shifts=rng.uniform(0.0, 1000.0, (n_fields, octaves, 2)),
        )

    @property
    def n_fields(self) -> int:
        """Number of independent fields."""
        return int(self.salts.shape[0])

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Evaluate every field.

        Args:
            x: easting in metres (EPSG:32632), any shape S.
            y: northing in metres, same shape S.

        Returns:
            float64 array of shape (n_fields, *S), mean about 0, standard deviation about 1.
        """
        xf = np.asarray(x, dtype=np.float64).ravel() - _X0
        yf = np.asarray(y, dtype=np.float64).ravel() - _Y0
        norm = 1.0 / (_OCTAVE_STD * math.sqrt(float((self.gains**2).sum())))
        out = np.zeros((self.n_fields, xf.size))
        for f in range(self.n_fields):
            for o, (cell, g) in enumerate(zip(self.cells, self.gains, strict=True)):
                cos, sin = math.cos(self.angles[f, o]), math.sin(self.angles[f, o])
                u = (cos * xf - sin * yf) / cell + self.shifts[f, o, 0]
                v = (sin * xf + cos * yf) / cell + self.shifts[f, o, 1]
                out[f] += (g * norm) * _value_noise(u, v, int(self.salts[f, o]))
        return out.reshape((self.n_fields, *np.shape(x)))


@dataclass(frozen=True)
class RegionConditions:
    """What sets a region apart, at one place (see the module docstring).

    Attributes:
        phenology_shift_days: delay of peak greenness, days (negative: earlier).
        illumination: multiplicative factor on Sentinel-2 reflectance, unitless, about 1.
        s1_offset_db: additive offset on Sentinel-1 backscatter, dB.
    """

    phenology_shift_days: float
    illumination: float
    s1_offset_db: float


@dataclass(frozen=True)
class World:
    """Deterministic land cover and texture over the EPSG:32632 plane.

    Build with :meth:`from_seed`; evaluate with :meth:`classes_at`, :meth:`texture_at` and
    :meth:`conditions_at`.
    """

    seed: int
    _regions: FractalNoise
    _texture: FractalNoise
    _regional: FractalNoise

    @staticmethod
    def from_seed(seed: int) -> World:
        """The world of one seed (same seed, same world, on any grid)."""
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xE0F,)))
        return World(
            seed=seed,
            _regions=FractalNoise.random(rng, N_CLASSES, 1500.0, 6, gain=0.55),
            _texture=FractalNoise.random(rng, 1, 400.0, 5, gain=0.7),
            # one field per class prior, then phenology, illumination and S1 offset
            _regional=FractalNoise.random(rng, N_CLASSES + 3, REGION_SCALE_M, 2, gain=0.5),
        )

    def classes_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """DFC class of points given in EPSG:32632.

        Args:
            x: easting in metres, any shape S.
            y: northing in metres, same shape S.

        Returns:
            uint8 array of shape S with class ids 0..7 (see ``DFC_CLASSES``).
        """
        score = self._regions(x, y)
        score += _CLASS_BIAS.reshape((N_CLASSES,) + (1,) * np.ndim(x))
        score += PRIOR_SHIFT * self._regional_priors(x, y)
        return np.argmax(score, axis=0).astype(np.uint8)

    def _regional_priors(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The regional prior fields (N_CLASSES, *S), evaluated on a coarse lattice and interpolated.

        The fields vary over tens of km, so a 500 m lattice loses nothing and costs 2500x less.
        """
        xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
        step = 500.0
        gx = np.arange(np.floor(xs.min() / step) - 1, np.ceil(xs.max() / step) + 2) * step
        gy = np.arange(np.floor(ys.min() / step) - 1, np.ceil(ys.max() / step) + 2) * step
        mx, my = np.meshgrid(gx, gy)
        fields = self._regional(mx, my)[:N_CLASSES]  # (8, ny, nx)
        fx = (xs - gx[0]) / step
        fy = (ys - gy[0]) / step
        ix, iy = np.floor(fx).astype(np.intp), np.floor(fy).astype(np.intp)
        tx, ty = fx - ix, fy - iy
        f = fields
        top = f[:, iy, ix] * (1 - tx) + f[:, iy, ix + 1] * tx
        bottom = f[:, iy + 1, ix] * (1 - tx) + f[:, iy + 1, ix + 1] * tx
        return top * (1 - ty) + bottom * ty

    def conditions_at(self, x: float, y: float) -> RegionConditions:
        """The region's phenology, illumination and S1 offset at one point (EPSG:32632, metres)."""
        f = self._regional(np.array([x]), np.array([y]))[N_CLASSES:, 0]
        return RegionConditions(
            phenology_shift_days=float(PHENOLOGY_SHIFT_DAYS * f[0]),
            illumination=float(1.0 + ILLUMINATION_SHIFT * f[1]),
            s1_offset_db=float(S1_OFFSET_DB * f[2]),
        )

    def texture_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Within-class texture of points in EPSG:32632 (metres, any shape S).

        Returns:
            float64 array of shape S, mean 0 and standard deviation about 1 (unitless).
        """
        return self._texture(x, y)[0]
