"""``kind: data``: from a STAC catalog to a chip plan (catalog, pairing, chip grid, splits)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from eoforge.config.base import Fraction, NonNegInt, PathStr, PosFloat, PosInt, Strict, _expand_path


class CatalogConfig(Strict):
    """Where items come from and how they are filtered."""

    backend: Literal["static", "stac_api"] = Field(
        description="'static': a STAC catalog on disk (catalog.json); 'stac_api': a STAC API URL."
    )
    url: PathStr = Field(description="catalog.json path / file:// URL, or the STAC API root URL.")
    provider: Literal["eoforge", "planetary_computer", "earth_search"] = Field(
        "eoforge", description="Asset-name profile of the catalog (see eoforge.catalog.providers)."
    )
    s2_collection: str = "sentinel-2-l2a"
    s1_collection: str = "sentinel-1-grd"
    label_collection: str | None = Field(None, description="Optional label collection (STAC label ext).")
    bbox: tuple[float, float, float, float] | None = Field(
        None, description="lon/lat bounding box (west, south, east, north), degrees."
    )
    datetime: str | None = Field(None, description="RFC 3339 interval, e.g. 2024-01-01/2024-12-31.")
    max_cloud_cover: Annotated[float, Field(ge=0, le=100)] = Field(
        100.0, description="Keep S2 items with eo:cloud_cover below this, percent."
    )
    page_size: PosInt = Field(100, description="STAC API page size (items per request).")
    max_items: PosInt | None = Field(None, description="Stop after this many items per collection.")

    _expand = field_validator("url", mode="before")(_expand_path)

    @field_validator("bbox")
    @classmethod
    def _check_bbox(cls, v: tuple[float, float, float, float] | None) -> Any:
        if v is not None and not (v[0] < v[2] and v[1] < v[3]):
            raise ValueError("bbox must be (west, south, east, north) with west < east and south < north")
        return v


class PairingConfig(Strict):
    """How S1 and S2 acquisitions are paired."""

    max_days: Annotated[float, Field(ge=0)] = Field(3.0, description="Largest |t_S1 - t_S2| of a pair, days.")
    min_overlap: Fraction = Field(0.5, description="Smallest intersection area / S2 footprint area of a pair.")
    one_s1_per_s2: bool = Field(True, description="Keep only the closest-in-time S1 item per S2 item.")


class ChipGridConfig(Strict):
    """The chip grid laid on each S2 item (chips are squares on the S2 item's UTM grid)."""

    size_px: PosInt = Field(64, description="Chip side in pixels at resolution_m.")
    stride_px: PosInt | None = Field(None, description="Step between chips in pixels (default: size_px).")
    resolution_m: PosFloat = Field(10.0, description="Output pixel size, metres.")


class SplitConfig(Strict):
    """Split fractions; chips at the same place always share a split (no leakage across dates)."""

    train: Fraction = 0.8
    val: Fraction = 0.1
    test: Fraction = 0.1

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


class DataConfig(Strict):
    """``kind: data``: from a STAC catalog to a chip plan."""

    kind: Literal["data"]
    catalog: CatalogConfig
    pairing: PairingConfig = PairingConfig()
    chips: ChipGridConfig = ChipGridConfig()
    splits: SplitConfig = SplitConfig()
    seed: NonNegInt = 0
