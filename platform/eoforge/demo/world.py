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

Within a class, land is a mosaic of materials (:mod:`eoforge.demo.materials`: conifer and
broadleaf stands, summer crops, winter cereals and ploughed fields, roofs and parks, ...) laid out
in parcels (:meth:`World.materials_at`); the share of each material in its class also changes
from region to region (:data:`MIX_SCALE_M` cells, up to about ±:data:`MIX_SHIFT` in the logits of
the shares): one region's croplands are mostly maize, another's mostly winter wheat and bare
fields in spring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from eoforge.bands import DFC_CLASSES
from eoforge.demo.materials import MATERIALS_OF_CLASS, PARCEL_M, base_share_logits

N_CLASSES = len(DFC_CLASSES)

#: Per-class bias of the argmax (larger = more frequent): forests and croplands dominate,
#: wetlands and barren land are rare, as in the Po valley foothills.
_CLASS_BIAS = np.array([0.30, 0.0, 0.10, -0.30, 0.35, -0.05, -0.35, -0.10])

#: Cell size (m) of the coarsest octave of the regional fields: scenes tens of km apart differ.
REGION_SCALE_M = 40_000.0
#: Regional shifts, per unit (about one standard deviation) of their field.
PRIOR_SHIFT = 0.25
PHENOLOGY_SHIFT_DAYS = 20.0
ILLUMINATION_SHIFT = 0.05
S1_OFFSET_DB = 0.7
#: Cell size (m) of the coarsest octave of the fields that shift the material mix of each class.
MIX_SCALE_M = 20_000.0
#: Shift of the logits of a class's material shares per unit of its mix field (first material up,
#: last one down): shares of 0.6 / 0.4 become about 0.3-0.85 / 0.7-0.15 one unit away.
MIX_SHIFT = 1.2

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
    _mix: FractalNoise
    _parcel_salts: np.ndarray
    _parcel_angles: np.ndarray

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
            # drawn after the fields above, so the land cover of a seed does not depend on the materials
            _mix=FractalNoise.random(rng, N_CLASSES, MIX_SCALE_M, 2, gain=0.5),
            _parcel_salts=rng.integers(0, 2**63, N_CLASSES, dtype=np.int64),
            _parcel_angles=rng.uniform(0.0, 0.5 * math.pi, N_CLASSES),
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
        """The regional prior fields (N_CLASSES, *S)."""
        return _coarse(self._regional, N_CLASSES, x, y)

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

    def materials_at(self, x: np.ndarray, y: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Material of points of known class (see :mod:`eoforge.demo.materials`).

        Each class's land is cut into parcels (squares of :data:`~eoforge.demo.materials.PARCEL_M`
        on a lattice rotated per class); each parcel draws one material of its class, with the
        class's shares shifted by the region (:data:`MIX_SHIFT`, :data:`MIX_SCALE_M`).

        Args:
            x: easting in metres (EPSG:32632), any shape S.
            y: northing in metres, same shape S.
            classes: class ids of the points (:meth:`classes_at`), uint8 of shape S.

        Returns:
            uint8 array of shape S: indices into :data:`~eoforge.demo.materials.MATERIALS`.
        """
        xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
        out = np.zeros(np.shape(classes), np.uint8)
        mix = _coarse(self._mix, N_CLASSES, xs, ys)  # (N_CLASSES, *S)
        base = base_share_logits()
        for c, ids in enumerate(MATERIALS_OF_CLASS):
            sel = classes == c
            if not sel.any():
                continue
            if len(ids) == 1:
                out[sel] = ids[0]
                continue
            cos, sin = math.cos(self._parcel_angles[c]), math.sin(self._parcel_angles[c])
            u = (cos * (xs[sel] - _X0) - sin * (ys[sel] - _Y0)) / PARCEL_M[c]
            v = (sin * (xs[sel] - _X0) + cos * (ys[sel] - _Y0)) / PARCEL_M[c]
            parcel_u, parcel_v = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
            draw = 0.5 + 0.5 * _hash_unit(parcel_u, parcel_v, int(self._parcel_salts[c]))  # [0, 1) per parcel
            direction = np.linspace(1.0, -1.0, len(ids))  # first material up, last down
            logits = base[list(ids)][:, None] + MIX_SHIFT * direction[:, None] * mix[c][sel][None, :]
            shares = np.exp(logits - logits.max(axis=0))
            cumulative = np.cumsum(shares / shares.sum(axis=0), axis=0)  # (k, n)
            pick = (draw[None, :] >= cumulative[:-1]).sum(axis=0)
            out[sel] = np.asarray(ids, np.uint8)[pick]
        return out


def _coarse(field: FractalNoise, n: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The first ``n`` fields of a slow ``field`` at points (x, y), shape (n, *S).

    Evaluated on a 500 m lattice and interpolated bilinearly: the fields vary over tens of km,
    so the lattice loses nothing and costs 2500x less than evaluating every 10 m pixel.
    """
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    step = 500.0
    gx = np.arange(np.floor(xs.min() / step) - 1, np.ceil(xs.max() / step) + 2) * step
    gy = np.arange(np.floor(ys.min() / step) - 1, np.ceil(ys.max() / step) + 2) * step
    mx, my = np.meshgrid(gx, gy)
    f = field(mx, my)[:n]  # (n, ny, nx)
    fx = (xs - gx[0]) / step
    fy = (ys - gy[0]) / step
    ix, iy = np.floor(fx).astype(np.intp), np.floor(fy).astype(np.intp)
    tx, ty = fx - ix, fy - iy
    top = f[:, iy, ix] * (1 - tx) + f[:, iy, ix + 1] * tx
    bottom = f[:, iy + 1, ix] * (1 - tx) + f[:, iy + 1, ix + 1] * tx
    return top * (1 - ty) + bottom * ty
