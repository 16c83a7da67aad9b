"""``kind: data``: from a STAC catalog to a chip plan (catalog, pairing, chip grid, splits, seasons).

The chip grid and its sampling strategies (``chips``) are in :mod:`eoforge.config.sampling` and
re-exported here (:data:`__all__`), so ``from eoforge.config.data import ChipGridConfig`` keeps working.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from eoforge.config.base import Fraction, NonNegInt, PathStr, PosInt, Strict, _expand_path, check_bbox, check_datetime
from eoforge.config.sampling import (
    ChipGridConfig,
    GaussianPoint,
    GaussianSampling,
    GridSampling,
    RandomSampling,
    Sampling,
)
from eoforge.signing import check_signer_name

# the chip grid and its sampling models moved to eoforge.config.sampling: importers of
# ``eoforge.config.data`` keep working.
__all__ = [
    "PROVIDERS",
    "SEASON_SCHEMES",
    "CatalogConfig",
    "ChipGridConfig",
    "DataConfig",
    "GaussianPoint",
    "GaussianSampling",
    "GridSampling",
    "PairingConfig",
    "ProfileConfig",
    "RandomSampling",
    "Sampling",
    "SeasonsConfig",
    "SplitByProperty",
    "SplitConfig",
    "SplitName",
]


class ProfileConfig(Strict):
    """A provider profile declared in config (see :mod:`eoforge.catalog.providers`), no code needed."""

    name: str | None = Field(None, description="Name recorded in the plan (default: the provider name).")
    extends: str | None = Field(None, description="Built-in profile to start from (default: catalog.provider).")
    s2_assets: dict[str, str | list[str]] = Field(
        default_factory=dict, description="Canonical S2 band (B01..B12, B8A) -> asset key(s) of the provider."
    )
    s2_template: str | None = Field(
        None, description="Asset key template tried after s2_assets, e.g. '{band}_{res}m' ({res}: native metres)."
    )
    scl_asset: str | list[str] | None = Field(None, description="Asset key(s) of the scene classification layer.")
    s1_assets: dict[str, str | list[str]] = Field(
        default_factory=dict, description="'vv' / 'vh' -> asset key(s) of the provider."
    )
    s1_units: Literal["dB", "linear", "amplitude"] | None = Field(
        None, description="Units of the S1 assets: dB, linear power (gamma0/sigma0) or amplitude DN (GRD)."
    )
    s1_product: str | None = Field(None, description="S1 product recorded in the plan (GRD, RTC, ...).")
    s1_calibration_assets: dict[str, str | list[str]] = Field(
        default_factory=dict, description="'vv' / 'vh' -> asset key(s) of the GRD calibration annotation XML."
    )
    gdal_env: dict[str, str] | None = Field(
        None, description="Extra GDAL options for reading (never secrets: those stay in the environment)."
    )

    @field_validator("s2_assets", "s1_assets", "s1_calibration_assets")
    @classmethod
    def _check_bands(cls, v: dict[str, Any], info: Any) -> Any:
        from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES, S2_SCL_ASSET

        allowed = set(S2_BAND_NAMES) | {S2_SCL_ASSET} if info.field_name == "s2_assets" else set(S1_BAND_NAMES)
        unknown = sorted(set(v) - allowed)
        if unknown:
            raise ValueError(f"unknown band(s) {unknown}; canonical names are {sorted(allowed)}")
        return v

    @field_validator("gdal_env")
    @classmethod
    def _no_secrets(cls, v: dict[str, str] | None) -> Any:
        secret = [k for k in (v or {}) if any(s in k.upper() for s in ("SECRET", "TOKEN", "PASSWORD", "KEY_ID"))]
        if secret:
            raise ValueError(f"{secret}: secrets never go in a config; set them in the environment of the workers")
        return v


PROVIDERS = ("eoforge", "planetary_computer", "earth_search", "earth_search_v0", "cdse", "aws_rtc", "custom")


class CatalogConfig(Strict):
    """Where items come from and how they are filtered."""

    backend: Literal["static", "stac_api"] = Field(
        description="'static': a STAC catalog on disk (catalog.json); 'stac_api': a STAC API URL."
    )
    url: PathStr = Field(description="catalog.json path / file:// URL, or the STAC API root URL.")
    provider: Literal[PROVIDERS] = Field(  # type: ignore[valid-type]
        "eoforge", description="Provider profile of the catalog (see eoforge.catalog.providers)."
    )
    profile: ProfileConfig | None = Field(None, description="Declare or extend a provider profile in config.")
    signing: str | None = Field(
        None,
        description="Href signing hook run just before each read, by name: none | planetary_computer | a hook "
        "registered in entry point group 'eoforge.signing' (default: the provider's). Signed URLs are never "
        "stored in a plan or a run.",
    )
    s1_units: Literal["dB", "linear", "amplitude"] | None = Field(
        None, description="Override the S1 units the profile / item metadata imply."
    )
    aoi: dict[str, Any] | None = Field(
        None, description="GeoJSON geometry (lon/lat) of the area of interest: clips the chip grid (with bbox)."
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
    max_items: PosInt | None = Field(
        None, description="Keep the first this many items per collection, in (datetime, id) order."
    )
    s2_item_ids: list[str] | None = Field(
        None,
        min_length=1,
        description="Only these S2 items: the search asks the catalog for these ids (STAC `ids`), and S1 is "
        "searched over their footprints (with bbox/aoi/datetime if given as well).",
    )
    retries: Annotated[int, Field(ge=0, le=20)] = Field(
        5,
        description="STAC API: retries of each HTTP request on 5xx / 408 / 429, connection errors and time-outs "
        "(exponential backoff with jitter); 0 = none.",
    )
    timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        30.0, description="STAC API: time-out of each HTTP request (connect, and each read), seconds."
    )
    backoff_s: Annotated[float, Field(ge=0, le=60)] = Field(
        0.5, description="STAC API: wait before the first retry, seconds; doubles per retry (at most 30 s)."
    )
    search_workers: Annotated[int, Field(ge=1, le=32)] = Field(
        4,
        description="STAC API: parallel datetime partitions of one search, each paged sequentially "
        "(1 = one sequential search). The result is the same for any value.",
    )

    _expand = field_validator("url", mode="before")(_expand_path)

    _check_bbox = field_validator("bbox")(check_bbox)
    _check_datetime = field_validator("datetime")(check_datetime)

    @field_validator("signing")
    @classmethod
    def _check_signing(cls, v: str | None) -> Any:
        # a closed registry: an unregistered name (os:system) is refused here, nothing imported
        return v if v is None else check_signer_name(v)

    @field_validator("aoi")
    @classmethod
    def _check_aoi(cls, v: dict[str, Any] | None) -> Any:
        if v is not None:
            from shapely.geometry import shape

            try:
                geom = shape(v)
            except Exception as exc:
                raise ValueError(f"aoi is not a GeoJSON geometry: {exc}") from None
            if geom.is_empty or geom.area <= 0:
                raise ValueError("aoi must be a polygon with a positive area")
        return v


class PairingConfig(Strict):
    """How S1 and S2 acquisitions are paired."""

    max_days: Annotated[float, Field(ge=0)] = Field(3.0, description="Largest |t_S1 - t_S2| of a pair, days.")
    min_overlap: Fraction = Field(0.5, description="Smallest intersection area / S2 footprint area of a pair.")
    one_s1_per_s2: bool = Field(True, description="Keep only the closest-in-time S1 item per S2 item.")


SplitName = Literal["train", "val", "test"]


class SplitByProperty(Strict):
    """The split of a chip from a property of its S2 item (a dataset's published protocol)."""

    name: str = Field(
        min_length=1,
        description="Property of the S2 item whose value decides the split, e.g. 'dfc2020:roi'.",
    )
    map: dict[str, SplitName] = Field(
        min_length=1,
        description="Property value -> train | val | test. Values are compared as text (str(value)). A chip "
        "whose S2 item lacks the property, or has a value not listed here (and no 'unmapped'), is left out of "
        "the plan and counted in the plan stats (skipped_chips, with the value).",
    )
    unmapped: SplitName | None = Field(
        None,
        description="Split of the values not in map (e.g. map only the hold-out scenes to test and the rest to "
        "train); default: such chips are left out. Items without the property are left out either way.",
    )
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0,
        description="Fraction of the chips mapped to train that go to val instead, chosen by a hash of the "
        "chip's place (CRS + chip origin + seed): deterministic, and a place is in one split on every date.",
    )

    @field_validator("map", mode="before")
    @classmethod
    def _text_keys(cls, v: Any) -> Any:
        # YAML reads `7: test` with an int key; property values are compared as text anyway
        if isinstance(v, dict):
            return {str(k) if isinstance(k, int | float | bool) else k: s for k, s in v.items()}
        return v

    @model_validator(mode="after")
    def _carve_from_train(self) -> SplitByProperty:
        if self.val_fraction > 0 and "train" not in (*self.map.values(), self.unmapped):
            raise ValueError("val_fraction carves val out of train, but no value in map (nor unmapped) goes to train")
        return self


class SplitConfig(Strict):
    """How chips are split.

    By place (default): the fractions below, drawn by a hash of the chip's place (CRS + chip
    origin + seed), so chips at the same place always share a split (no leakage across dates).
    With ``by_property``: from a property of the chip's S2 item (e.g. DFC2020's ``dfc2020:roi``);
    the fractions do not apply then.
    """

    train: Fraction = Field(0.8, description="Share of places in train (by-place splits).")
    val: Fraction = Field(0.1, description="Share of places in val (by-place splits).")
    test: Fraction = Field(0.1, description="Share of places in test (by-place splits).")
    by_property: SplitByProperty | None = Field(
        None,
        description="Split from an S2 item property (a published protocol) instead of by place, e.g. "
        "{name: 'dfc2020:roi', map: {ROIs0000_validation: train, ROIs0000_test: test}, val_fraction: 0.2}.",
    )

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        given = [k for k in ("train", "val", "test") if k in self.model_fields_set]
        if self.by_property is not None and given:
            raise ValueError(
                f"{'/'.join(given)}: fractions do not apply with by_property (the property decides the split); "
                "carve val out of train with by_property.val_fraction"
            )
        return self


#: Seasons of the built-in schemes: name -> months, per hemisphere. A season's year is the year of its
#: last month (meteorological winter 2021 = DJF = December 2020 + January and February 2021).
SEASON_SCHEMES: dict[str, dict[str, dict[str, tuple[int, ...]]]] = {
    "meteorological": {
        "north": {"DJF": (12, 1, 2), "MAM": (3, 4, 5), "JJA": (6, 7, 8), "SON": (9, 10, 11)},
        "south": {"DJF": (12, 1, 2), "MAM": (3, 4, 5), "JJA": (6, 7, 8), "SON": (9, 10, 11)},
    },
    "hemispheric": {
        "north": {"winter": (12, 1, 2), "spring": (3, 4, 5), "summer": (6, 7, 8), "autumn": (9, 10, 11)},
        "south": {"summer": (12, 1, 2), "autumn": (3, 4, 5), "winter": (6, 7, 8), "spring": (9, 10, 11)},
    },
}


class SeasonsConfig(Strict):
    """Multi-season sampling: one S2 scene per season per location, cloud-filtered (SSL4EO-S12 style).

    Per location (MGRS tile, else the S2 grid, else the footprint centroid) and season, the planner
    keeps the S2 item with the lowest ``eo:cloud_cover`` below the threshold (ties: earlier date, then
    smaller id); a season with no such item is counted as missing, not fatal. Each chip gets the share
    of its pixels that the SCL calls clear; chips below ``min_clear_fraction`` are left out and counted.
    Set ``catalog.datetime`` to cover the seasons you want (e.g. ``2020-12-01/2021-11-30`` for the
    meteorological year 2021).
    """

    scheme: Literal["meteorological", "hemispheric", "custom"] = Field(
        "meteorological",
        description="Season names and months: 'meteorological' DJF/MAM/JJA/SON (same months everywhere); "
        "'hemispheric' winter/spring/summer/autumn by the item's hemisphere (summer = JJA north of the "
        "equator, DJF south of it); 'custom': the months below.",
    )
    months: dict[str, list[Annotated[int, Field(ge=1, le=12)]]] | None = Field(
        None,
        description="scheme 'custom' only: season name -> months (1-12) in time order; a season may wrap "
        "the year end ([11, 12, 1, 2]): its months after the last listed one count for the next year. "
        "A month is in at most one season; scenes in no season are left out.",
    )
    year: int | None = Field(
        None,
        ge=2015,
        le=2100,
        description="Keep only the seasons of this year (a season's year is the year of its last month). "
        "Default: every year the catalog search returns.",
    )
    per_year: bool = Field(
        False,
        description="One scene per season and year (a seasonal time series); default: one per season over "
        "all years searched.",
    )
    max_cloud_cover: Annotated[float, Field(ge=0, le=100)] = Field(
        20.0,
        description="Keep S2 scenes with eo:cloud_cover below this, percent (SSL4EO-S12: 20); 100: no "
        "filter. Scenes without eo:cloud_cover are kept only with 100 (ranked last).",
    )
    season_max_cloud_cover: dict[str, Annotated[float, Field(ge=0, le=100)]] = Field(
        default_factory=dict,
        description="Per-season thresholds overriding max_cloud_cover, e.g. {DJF: 40} for cloudy winters.",
    )
    min_clear_fraction: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0,
        description="Leave out chips whose share of clear SCL pixels (not no-data, saturated, cloud shadow, "
        "cloud or cirrus) is below this; counted in the plan stats. 0: keep every chip (the share is still "
        "recorded in the plan's clear_fraction column).",
    )

    @model_validator(mode="after")
    def _check_seasons(self) -> SeasonsConfig:
        if self.scheme == "custom":
            if not self.months:
                raise ValueError("scheme 'custom' needs months: {season name: [month, ...]}")
            seen: dict[int, str] = {}
            for name, months in self.months.items():
                if not name.strip() or any(ch.isspace() or ch in "/:" for ch in name):
                    raise ValueError(f"season name {name!r}: use a word without spaces, '/' or ':'")
                if not months:
                    raise ValueError(f"months.{name}: list at least one month")
                for m in months:
                    if m in seen:
                        raise ValueError(f"month {m} is in both seasons {seen[m]!r} and {name!r}")
                    seen[m] = name
        elif self.months is not None:
            raise ValueError(f"months apply to scheme 'custom' only (scheme is {self.scheme!r})")
        unknown = sorted(set(self.season_max_cloud_cover) - set(self.season_names()))
        if unknown:
            raise ValueError(
                f"season_max_cloud_cover: unknown season(s) {unknown}; seasons are {list(self.season_names())}"
            )
        return self

    def season_names(self) -> tuple[str, ...]:
        """The names of the seasons, in the scheme's order."""
        if self.scheme == "custom":
            return tuple(self.months or {})
        return tuple(SEASON_SCHEMES[self.scheme]["north"])

    def season_months(self, hemisphere: Literal["north", "south"] = "north") -> dict[str, tuple[int, ...]]:
        """Season name -> months (1-12, in time order) for a hemisphere."""
        if self.scheme == "custom":
            return {name: tuple(months) for name, months in (self.months or {}).items()}
        return dict(SEASON_SCHEMES[self.scheme][hemisphere])

    def cloud_threshold(self, season: str) -> float:
        """The eo:cloud_cover threshold of a season, percent."""
        return float(self.season_max_cloud_cover.get(season, self.max_cloud_cover))


class DataConfig(Strict):
    """``kind: data``: from a STAC catalog to a chip plan."""

    kind: Literal["data"]
    catalog: CatalogConfig
    pairing: PairingConfig = PairingConfig()
    chips: ChipGridConfig = ChipGridConfig()
    splits: SplitConfig = SplitConfig()
    seed: NonNegInt = 0
    seasons: SeasonsConfig | None = Field(
        None, description="Multi-season sampling: one S2 scene per season per location, clear chips only."
    )
