"""``chips`` of ``kind: data``: the chip grid and where chips go on it (``chips.sampling``).

Three strategies, told apart by ``strategy`` (:data:`Sampling`): ``grid`` (default), ``gaussian``
around points (SSL4EO-S12-style) and ``random`` over AOIs. The planner's side of each strategy is
:mod:`eoforge.plan.sampling`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from eoforge.config.base import PosFloat, PosInt, Strict

__all__ = [
    "ChipGridConfig",
    "GaussianPoint",
    "GaussianSampling",
    "GridSampling",
    "RandomSampling",
    "Sampling",
]


def _check_geojson_polygon(v: dict[str, Any], where: str) -> None:
    from shapely.geometry import shape

    try:
        geom = shape(v)
    except Exception as exc:
        raise ValueError(f"{where} is not a GeoJSON geometry: {exc}") from None
    if geom.is_empty or geom.area <= 0 or not geom.is_valid:
        raise ValueError(f"{where} must be a valid polygon with a positive area")
    w, s, e, n = geom.bounds
    if w < -180 or e > 180 or s < -90 or n > 90:
        raise ValueError(f"{where} must be lon/lat degrees (bounds {[w, s, e, n]})")


class GridSampling(Strict):
    """A regular grid of chips from each S2 item's top-left corner, every ``chips.stride_px``."""

    strategy: Literal["grid"] = "grid"
    cover_edges: bool = Field(
        False,
        description="Add a last row and column of chips flush with the item's bottom and right edges "
        "(overlapping their neighbours) where the regular grid stops short of them, so the chips cover "
        "every pixel of the item; predict sets it.",
    )


class GaussianPoint(Strict):
    """A centre of the ``gaussian`` strategy (e.g. a city), lon/lat degrees."""

    lon: Annotated[float, Field(ge=-180, le=180)] = Field(description="Longitude, degrees.")
    lat: Annotated[float, Field(ge=-90, le=90)] = Field(description="Latitude, degrees.")
    id: str | None = Field(
        None, min_length=1, description="Name seeding this point's draws (default: its coordinates)."
    )
    sigma_km: PosFloat | None = Field(
        None, description="Standard deviation of this point's draws, km (default: sigma_km)."
    )
    n: PosInt | None = Field(None, description="Chip centres drawn around this point (default: chips_per_point).")

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, v: Any) -> Any:
        # [lon, lat] is the short form of {lon: .., lat: ..}
        if isinstance(v, list | tuple):
            if len(v) != 2:
                raise ValueError("a point is [lon, lat] or {lon, lat, id, sigma_km, n}")
            return {"lon": v[0], "lat": v[1]}
        return v


class GaussianSampling(Strict):
    """SSL4EO-S12-style: chip centres drawn from a normal distribution around given points."""

    strategy: Literal["gaussian"]
    points: list[GaussianPoint] = Field(
        min_length=1, description="Centres, e.g. cities: [lon, lat] or {lon, lat, id, sigma_km, n}."
    )
    sigma_km: PosFloat = Field(50.0, description="Standard deviation per axis (east, north), km (SSL4EO-S12: 50).")
    chips_per_point: PosInt = Field(100, description="Chip centres drawn per point (each makes a chip per date).")


class RandomSampling(Strict):
    """Chip centres uniform by area over AOIs."""

    strategy: Literal["random"]
    aois: list[dict[str, Any]] | None = Field(
        None,
        description="GeoJSON polygons (lon/lat) to sample, each on its own; default: catalog.aoi / catalog.bbox.",
    )
    chips_per_aoi: PosInt | None = Field(None, description="Chip centres drawn per AOI.")
    chips_per_km2: PosFloat | None = Field(None, description="Chip centres drawn per km² of each AOI.")

    @field_validator("aois")
    @classmethod
    def _check_aois(cls, v: list[dict[str, Any]] | None) -> Any:
        if v is not None:
            if not v:
                raise ValueError("aois is empty: list at least one polygon, or leave it out for catalog.aoi")
            for i, aoi in enumerate(v):
                _check_geojson_polygon(aoi, f"aois[{i}]")
        return v

    @model_validator(mode="after")
    def _one_count(self) -> RandomSampling:
        if (self.chips_per_aoi is None) == (self.chips_per_km2 is None):
            raise ValueError("give exactly one of chips_per_aoi and chips_per_km2")
        return self


Sampling = Annotated[GridSampling | GaussianSampling | RandomSampling, Field(discriminator="strategy")]


class ChipGridConfig(Strict):
    """Where chips go on each S2 item: squares on the item's UTM grid, placed by ``sampling``."""

    size_px: PosInt = Field(64, description="Chip side in pixels at resolution_m.")
    stride_px: PosInt | None = Field(
        None, description="Step between chips in pixels (default: size_px); grid sampling only."
    )
    resolution_m: PosFloat = Field(10.0, description="Output pixel size, metres.")
    sampling: Sampling = Field(
        default_factory=GridSampling,
        description="Where chips go: {strategy: grid} (default), {strategy: gaussian, points: [[lon, lat], ...], "
        "sigma_km, chips_per_point} or {strategy: random, aois: [GeoJSON, ...], chips_per_aoi | chips_per_km2}. "
        "Every chip is snapped to the S2 item's grid and kept only inside the AOI and the S1 footprint.",
    )

    @model_validator(mode="after")
    def _stride_for_grid(self) -> ChipGridConfig:
        if self.stride_px is not None and self.sampling.strategy != "grid":
            raise ValueError(f"stride_px applies to grid sampling only, not to {self.sampling.strategy!r}")
        return self
