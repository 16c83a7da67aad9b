"""What the demo world's land looks like: the materials each land-cover class is made of.

A land-cover class is a land *use* as much as a cover, and in real Sentinel-2 scenes it is a
mixture of materials that look different from each other, some of them like another class's:

- Forest: broadleaf and conifer stands (conifers are darker in the near infrared and barely change
  with the season);
- Shrubland: dense shrub, and sparse shrub on bright soil;
- Grassland: green meadows and dry pastures;
- Wetlands: reed marsh and open, shallow water between the reeds;
- Croplands: summer crops (peak in late July), winter cereals (peak in May, harvested by July) and
  ploughed, bare fields, which look like barren soil to Sentinel-2;
- Urban: concrete and bright roofs, red tile roofs, and green parks and gardens, which look like
  grassland to Sentinel-2 but not to the radar (buildings around them);
- Barren: bright sand and soil, and dark rock;
- Water: clear and turbid water.

Each class's materials occupy parcels (fields, forest stands, city blocks; see
:data:`PARCEL_M`), and the share of each material in a class changes from region to region (see
:class:`~eoforge.demo.world.World`). Sentinel-1 sees structure and moisture more than pigment: the
radar tells a park from a meadow by the buildings' double bounce, but sees a ploughed field much
like bare soil.

Tables, in the band order of :data:`~eoforge.bands.S2_BAND_NAMES` (B01 B02 B03 B04 B05 B06 B07
B08 B8A B09 B11 B12), reflectance ×10000, and (VV, VH) backscatter in dB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from eoforge.bands import DFC_CLASSES, S2_BAND_NAMES

N_CLASSES = len(DFC_CLASSES)

#: Off-season (senescent vegetation / bare soil) reflectance ×10000.
DORMANT = (800, 900, 1100, 1300, 1500, 1700, 1800, 1900, 2000, 2000, 2600, 2000)
#: Day of year of peak greenness of most vegetation (late July).
PEAK_DOY = 200


@dataclass(frozen=True)
class Material:
    """One material of one land-cover class.

    Attributes:
        name: what it is.
        dfc_class: the DFC class id it belongs to (0 Forest .. 7 Water).
        peak: peak-season reflectance ×10000, 12 bands.
        seasonal_amplitude: how far it moves from ``peak`` towards :data:`DORMANT` at the seasonal
            minimum (0: no season).
        peak_doy_offset: days from :data:`PEAK_DOY` to its own peak (winter cereals: about -70).
        s1_db: mean (VV, VH) backscatter in dB.
        s1_biomass_db: extra (VV, VH) dB at peak biomass (crops), scaled by greenness.
        share: its share of the class's area where no regional shift applies (shares of a class sum to 1).
        scl: Sentinel-2 scene-classification code of a clear pixel: 4 vegetation, 5 not vegetated, 6 water.
    """

    name: str
    dfc_class: int
    peak: tuple[float, ...]
    seasonal_amplitude: float
    peak_doy_offset: float
    s1_db: tuple[float, float]
    s1_biomass_db: tuple[float, float]
    share: float
    scl: int


_NO = (0.0, 0.0)
MATERIALS: tuple[Material, ...] = (
    Material(
        "broadleaf forest", 0,
        (250, 300, 500, 300, 800, 2200, 2800, 3000, 3100, 3000, 1500, 700),
        0.15, 0, (-8.0, -14.0), _NO, 0.6, 4,
    ),
    Material(
        "conifer forest", 0,
        (180, 220, 380, 220, 650, 1600, 1950, 2150, 2200, 2150, 950, 450),
        0.04, 0, (-7.5, -13.5), _NO, 0.4, 4,
    ),
    Material(
        "dense shrub", 1,
        (350, 400, 650, 500, 1000, 2000, 2400, 2600, 2700, 2600, 2100, 1200),
        0.25, 0, (-10.0, -17.0), _NO, 0.6, 4,
    ),
    Material(
        "sparse shrub on soil", 1,
        (600, 700, 950, 1150, 1400, 1850, 2050, 2200, 2300, 2300, 2800, 2100),
        0.10, 0, (-12.5, -20.0), _NO, 0.4, 4,
    ),
    Material(
        "green meadow", 2,
        (300, 400, 750, 450, 1100, 2600, 3100, 3400, 3500, 3400, 2200, 1200),
        0.35, 0, (-12.0, -19.0), _NO, 0.6, 4,
    ),
    Material(
        "dry pasture", 2,
        (500, 600, 850, 1000, 1300, 2000, 2300, 2450, 2550, 2550, 2900, 2000),
        0.20, 0, (-13.0, -20.5), _NO, 0.4, 4,
    ),
    Material(
        "reed marsh", 3,
        (300, 350, 600, 400, 800, 1700, 2000, 2200, 2250, 2200, 1200, 600),
        0.30, 0, (-11.0, -18.0), _NO, 0.6, 4,
    ),
    Material(
        "open marsh water", 3,
        (600, 550, 600, 400, 450, 600, 600, 550, 550, 500, 250, 150),
        0.10, 0, (-19.0, -26.0), _NO, 0.4, 6,
    ),
    Material(
        "summer crop", 4,
        (300, 350, 750, 350, 1100, 3000, 3700, 4000, 4100, 4000, 2300, 1100),
        0.80, 0, (-11.0, -18.0), (2.0, 3.0), 0.45, 4,
    ),
    Material(
        "winter cereal", 4,
        (320, 380, 700, 400, 1050, 2700, 3300, 3600, 3700, 3600, 2300, 1150),
        0.75, -70, (-11.5, -18.5), (1.5, 2.5), 0.3, 4,
    ),
    Material(
        "ploughed field", 4,
        DORMANT,
        0.0, 0, (-14.0, -22.0), _NO, 0.25, 5,
    ),
    Material(
        "concrete and bright roofs", 5,
        (1200, 1300, 1400, 1500, 1650, 1800, 1900, 2000, 2050, 2000, 2300, 2100),
        0.0, 0, (0.0, -8.0), _NO, 0.5, 5,
    ),
    Material(
        "red tile roofs", 5,
        (800, 850, 1000, 1550, 1750, 1900, 2000, 2100, 2150, 2100, 2700, 2400),
        0.0, 0, (-1.0, -9.0), _NO, 0.3, 5,
    ),
    Material(
        "parks and gardens", 5,
        (320, 420, 750, 480, 1100, 2500, 3000, 3250, 3350, 3250, 2200, 1250),
        0.30, 0, (-5.0, -12.0), _NO, 0.2, 4,
    ),
    Material(
        "bright sand and soil", 6,
        (1300, 1500, 1900, 2300, 2500, 2650, 2750, 2850, 2950, 2900, 3500, 3000),
        0.0, 0, (-15.0, -24.0), _NO, 0.6, 5,
    ),
    Material(
        "dark rock", 6,
        (700, 800, 950, 1100, 1250, 1400, 1500, 1600, 1650, 1650, 2000, 1800),
        0.0, 0, (-11.0, -19.0), _NO, 0.4, 5,
    ),
    Material(
        "clear water", 7,
        (700, 600, 500, 300, 250, 200, 180, 150, 140, 120, 80, 60),
        0.0, 0, (-22.0, -28.0), _NO, 0.7, 6,
    ),
    Material(
        "turbid water", 7,
        (900, 900, 1050, 850, 650, 380, 320, 260, 240, 200, 100, 70),
        0.0, 0, (-21.0, -27.5), _NO, 0.3, 6,
    ),
)  # fmt: skip
N_MATERIALS = len(MATERIALS)

#: Material ids of each class, in table order: ``MATERIALS_OF_CLASS[c]``.
MATERIALS_OF_CLASS: tuple[tuple[int, ...], ...] = tuple(
    tuple(i for i, m in enumerate(MATERIALS) if m.dfc_class == c) for c in range(N_CLASSES)
)
#: Parcel size (m) of each class's materials: crop fields, forest stands, city blocks, ...
PARCEL_M = np.array([160.0, 60.0, 140.0, 70.0, 200.0, 50.0, 110.0, 300.0])
#: Class id of each material, shape (N_MATERIALS,).
CLASS_OF_MATERIAL = np.array([m.dfc_class for m in MATERIALS], dtype=np.uint8)
#: SCL code of a clear pixel of each material, shape (N_MATERIALS,).
SCL_OF_MATERIAL = np.array([m.scl for m in MATERIALS], dtype=np.uint8)

_PEAK = np.array([m.peak for m in MATERIALS], dtype=np.float64)
_DORMANT = np.array(DORMANT, dtype=np.float64)
_AMPLITUDE = np.array([m.seasonal_amplitude for m in MATERIALS])
_PEAK_OFFSET = np.array([m.peak_doy_offset for m in MATERIALS])
_S1_DB = np.array([m.s1_db for m in MATERIALS])
_S1_BIOMASS_DB = np.array([m.s1_biomass_db for m in MATERIALS])

if _PEAK.shape[1] != len(S2_BAND_NAMES) or any(  # pragma: no cover - guards edits of the table
    abs(sum(MATERIALS[i].share for i in ids) - 1.0) > 1e-9 for ids in MATERIALS_OF_CLASS
):
    raise RuntimeError("materials.py: a signature does not match bands.S2_BAND_NAMES or shares do not sum to 1")


def greenness(doy: float | np.ndarray) -> float | np.ndarray:
    """Seasonal greenness in [0, 1]: 1 at day-of-year :data:`PEAK_DOY`, 0 half a year away."""
    return 0.5 + 0.5 * np.cos(2.0 * math.pi * (np.asarray(doy, dtype=np.float64) - PEAK_DOY) / 365.25)


def s2_signature(doy: float, phenology_shift_days: float = 0.0) -> np.ndarray:
    """Mean surface reflectance ×10000 of every material on a given day of year.

    Args:
        doy: day of year, 1..366.
        phenology_shift_days: the region's delay of the season (days; see
            :meth:`~eoforge.demo.world.World.conditions_at`).

    Returns:
        float64 array of shape (N_MATERIALS, 12): rows :data:`MATERIALS`, columns S2 bands in the
        order of :data:`~eoforge.bands.S2_BAND_NAMES`, unit reflectance ×10000.
    """
    green = greenness(doy - phenology_shift_days - _PEAK_OFFSET)  # (M,)
    dormancy = _AMPLITUDE * (1.0 - green)
    return _PEAK * (1.0 - dormancy[:, None]) + _DORMANT[None, :] * dormancy[:, None]


def s1_backscatter_db(doy: float, phenology_shift_days: float = 0.0) -> np.ndarray:
    """Mean backscatter of every material on a given day of year.

    Crops get up to their ``s1_biomass_db`` at peak biomass (their own calendar, delayed by the
    region's ``phenology_shift_days``); the rest is constant.

    Returns:
        float64 array of shape (N_MATERIALS, 2): rows :data:`MATERIALS`, columns (VV, VH), unit dB.
    """
    green = greenness(doy - phenology_shift_days - _PEAK_OFFSET)  # (M,)
    return _S1_DB + np.asarray(green)[:, None] * _S1_BIOMASS_DB


def base_share_logits() -> np.ndarray:
    """Log of each material's base share within its class, shape (N_MATERIALS,)."""
    return np.log(np.array([m.share for m in MATERIALS]))
