"""Band sets of the sensors eoforge reads, in the order tensors carry them.

Sentinel-2 L2A has 12 spectral bands (no B10). The order below is the SSL4EO-S12 L2A
order (B01..B12 with B8A after B08), so the SSL4EO normalisation constants apply as is.
Sentinel-1 GRD/RTC carries two polarisations, VV then VH, as backscatter in dB.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Band:
    """One spectral or polarimetric band.

    Attributes:
        name: asset key used in eoforge catalogs (``B04``, ``vv``).
        common_name: STAC eo common name, or the polarisation for SAR.
        resolution_m: native ground sampling distance in metres.
        center_wavelength_um: centre wavelength in micrometres (None for SAR).
    """

    name: str
    common_name: str
    resolution_m: float
    center_wavelength_um: float | None = None


S2_BANDS: tuple[Band, ...] = (
    Band("B01", "coastal", 60, 0.443),
    Band("B02", "blue", 10, 0.490),
    Band("B03", "green", 10, 0.560),
    Band("B04", "red", 10, 0.665),
    Band("B05", "rededge", 20, 0.705),
    Band("B06", "rededge", 20, 0.740),
    Band("B07", "rededge", 20, 0.783),
    Band("B08", "nir", 10, 0.842),
    Band("B8A", "nir08", 20, 0.865),
    Band("B09", "nir09", 60, 0.945),
    Band("B11", "swir16", 20, 1.610),
    Band("B12", "swir22", 20, 2.190),
)
S2_BAND_NAMES: tuple[str, ...] = tuple(b.name for b in S2_BANDS)

#: Sentinel-2 scene classification layer (SCL), 20 m, uint8.
S2_SCL_ASSET = "SCL"
#: SCL classes treated as invalid: 0 no data, 1 saturated, 3 cloud shadow,
#: 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus.
S2_SCL_INVALID: tuple[int, ...] = (0, 1, 3, 8, 9, 10)

S1_BANDS: tuple[Band, ...] = (
    Band("vv", "VV", 10),
    Band("vh", "VH", 10),
)
S1_BAND_NAMES: tuple[str, ...] = tuple(b.name for b in S1_BANDS)

#: DFC2020 land-cover classes as used by SSLTransformerRS (8 classes, 255 = ignore).
DFC_CLASSES: tuple[str, ...] = (
    "Forest",
    "Shrubland",
    "Grassland",
    "Wetlands",
    "Croplands",
    "Urban/Built-up",
    "Barren",
    "Water",
)
DFC_IGNORE = 255

#: Earth Search v1 asset keys -> eoforge asset keys (Planetary Computer already uses B01.., vv).
EARTH_SEARCH_S2_ALIASES: dict[str, str] = {
    "coastal": "B01",
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "rededge1": "B05",
    "rededge2": "B06",
    "rededge3": "B07",
    "nir": "B08",
    "nir08": "B8A",
    "nir09": "B09",
    "swir16": "B11",
    "swir22": "B12",
    "scl": "SCL",
}
