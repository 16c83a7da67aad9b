"""Provider profiles: how a catalog names its assets, what units they hold, how they are read.

A profile maps eoforge's canonical band names (``B01``..``B12``, ``B8A``, ``SCL`` for
Sentinel-2; ``vv``, ``vh`` for Sentinel-1) onto a provider's asset keys, and says what
Sentinel-1 product and units each collection carries and how hrefs are accessed
(signing hook by name, GDAL options such as requester-pays). The chip plan always stores hrefs
under eoforge names, unsigned; the reader signs them just before it opens them.

Built-in profiles (``catalog.provider``):

- ``eoforge``: eoforge's demo catalog and BigEarthNet items (``B02``, ``SCL``, ``vv``; S1 in dB).
- ``planetary_computer``: Microsoft Planetary Computer ``sentinel-2-l2a`` (``B02``, ``SCL``),
  ``sentinel-1-grd`` (``vv``/``vh``, uint16 amplitude DN, GCP georeferencing) and
  ``sentinel-1-rtc`` (``vv``/``vh``, float32 linear gamma0, UTM); signing ``planetary_computer``.
- ``earth_search``: Element 84 Earth Search v1 ``sentinel-2-l2a`` (``blue``, ``nir08``, ``scl``)
  and ``sentinel-1-grd`` (amplitude DN in the requester-pays bucket ``s3://sentinel-s1-l1c``).
- ``earth_search_v0``: Earth Search v0 ``sentinel-s2-l2a-cogs`` (``B02``, ``SCL``).
- ``cdse``: Copernicus Data Space Ecosystem ``sentinel-2-l2a`` (``B02_10m``, ``B8A_20m``, ``SCL_20m``).
- ``aws_rtc``: the AWS open-data Sentinel-1 RTC collection (``gamma0_vv``/``gamma0_vh``, linear).

A config can declare its own profile (``catalog.profile``), optionally extending a
built-in one, without code: asset key(s) per band, a key template such as
``{band}_{res}m`` with the band's native resolution, S1 units per collection, signing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pystac

from eoforge.bands import EARTH_SEARCH_S2_ALIASES, S1_BAND_NAMES, S2_BANDS, S2_SCL_ASSET
from eoforge.errors import CatalogError

#: Units a Sentinel-1 asset can hold. ``dB``: backscatter in decibels (read as is); ``linear``:
#: calibrated power (RTC gamma0, calibrated sigma0), converted with 10 log10, values <= 0 masked;
#: ``amplitude``: GRD digital numbers (uncalibrated amplitude), calibrated then converted to dB.
S1_UNITS = ("dB", "linear", "amplitude")

#: Native resolution of each canonical S2 band (and SCL), metres: fills ``{res}`` in key templates.
S2_NATIVE_RES: dict[str, int] = {b.name: int(b.resolution_m) for b in S2_BANDS} | {S2_SCL_ASSET: 20}

_ES_REVERSE = {v: k for k, v in EARTH_SEARCH_S2_ALIASES.items()}


@dataclass(frozen=True)
class ProviderProfile:
    """How one provider names and serves its assets.

    Attributes:
        name: profile name (recorded in the plan).
        s2_keys: canonical S2 band (and ``SCL``) -> candidate asset keys, most likely first.
        s1_keys: ``vv`` / ``vh`` -> candidate asset keys.
        s2_template: optional key template tried after ``s2_keys``, e.g. ``{band}_{res}m``
            (``{band}`` canonical name, ``{res}`` native resolution in metres).
        s1_units: S1 collection id -> units (one of :data:`S1_UNITS`); ``*`` is the fallback.
        s1_product: S1 collection id -> product name recorded in the plan (``GRD``, ``RTC``); ``*`` fallback.
        s1_calibration_keys: ``vv`` / ``vh`` -> asset keys of the calibration annotation (XML).
        signing: default href signing hook, by name (``none``, ``planetary_computer`` or a registered
            hook: :mod:`eoforge.signing`).
        gdal_env: collection id -> extra GDAL options for reading its assets (no secrets); ``*`` fallback.
    """

    name: str
    s2_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    s1_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    s2_template: str | None = None
    s1_units: Mapping[str, str] = field(default_factory=lambda: {"*": "dB"})
    s1_product: Mapping[str, str] = field(default_factory=lambda: {"*": "GRD"})
    s1_calibration_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    signing: str = "none"
    gdal_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def keys_for(self, band: str) -> list[str]:
        """Candidate asset keys for a canonical band name, most likely first."""
        table = self.s1_keys if band in S1_BAND_NAMES else self.s2_keys
        keys = list(table.get(band, ()))
        if self.s2_template and band in S2_NATIVE_RES:
            keys.append(self.s2_template.format(band=band, res=S2_NATIVE_RES[band]))
        keys += [band, band.lower(), band.upper()]
        return list(dict.fromkeys(keys))

    def units_for(self, collection: str | None) -> str:
        """Default S1 units of a collection."""
        return self.s1_units.get(collection or "", self.s1_units.get("*", "dB"))

    def product_for(self, collection: str | None) -> str:
        """S1 product name of a collection."""
        return self.s1_product.get(collection or "", self.s1_product.get("*", "GRD"))

    def env_for(self, collection: str | None) -> dict[str, str]:
        """Extra GDAL options (no secrets) for reading a collection's assets."""
        return dict(self.gdal_env.get(collection or "", self.gdal_env.get("*", {})))


_PC_S2 = {"SCL": ("SCL",)}
_ES_S2 = {band: (key,) for band, key in _ES_REVERSE.items()}

BUILTIN_PROFILES: dict[str, ProviderProfile] = {
    "eoforge": ProviderProfile("eoforge", s1_units={"*": "dB"}),
    "planetary_computer": ProviderProfile(
        "planetary_computer",
        s2_keys=_PC_S2,
        s1_units={"sentinel-1-grd": "amplitude", "sentinel-1-rtc": "linear", "*": "amplitude"},
        s1_product={"sentinel-1-grd": "GRD", "sentinel-1-rtc": "RTC", "*": "GRD"},
        s1_calibration_keys={"vv": ("schema-calibration-vv",), "vh": ("schema-calibration-vh",)},
        signing="planetary_computer",
    ),
    "earth_search": ProviderProfile(
        "earth_search",
        s2_keys=_ES_S2,
        s1_units={"sentinel-1-grd": "amplitude", "*": "amplitude"},
        s1_product={"*": "GRD"},
        s1_calibration_keys={"vv": ("calibration-vv",), "vh": ("calibration-vh",)},
        gdal_env={
            "sentinel-2-l2a": {"AWS_NO_SIGN_REQUEST": "YES", "AWS_REGION": "us-west-2"},
            "sentinel-1-grd": {"AWS_REQUEST_PAYER": "requester", "AWS_REGION": "eu-central-1"},
        },
    ),
    "earth_search_v0": ProviderProfile(
        "earth_search_v0",
        s1_units={"*": "amplitude"},
        gdal_env={"*": {"AWS_NO_SIGN_REQUEST": "YES", "AWS_REGION": "us-west-2"}},
    ),
    "cdse": ProviderProfile(
        "cdse",
        s2_template="{band}_{res}m",
        s1_units={"*": "amplitude"},
        gdal_env={"*": {"AWS_S3_ENDPOINT": "eodata.dataspace.copernicus.eu", "AWS_VIRTUAL_HOSTING": "FALSE"}},
    ),
    "aws_rtc": ProviderProfile(
        "aws_rtc",
        s1_keys={"vv": ("gamma0_vv",), "vh": ("gamma0_vh",)},
        s1_units={"*": "linear"},
        s1_product={"*": "RTC"},
        gdal_env={"*": {"AWS_NO_SIGN_REQUEST": "YES", "AWS_REGION": "us-west-2"}},
    ),
}


def _keys(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def resolve_profile(provider: str, declared: Mapping[str, Any] | None = None) -> ProviderProfile:
    """The profile a catalog config names: a built-in one, optionally extended by a declared one.

    Args:
        provider: built-in profile name (``custom`` means ``eoforge`` as the base).
        declared: ``catalog.profile`` as a plain dict (see :class:`eoforge.config.data.ProfileConfig`).

    Raises:
        CatalogError: unknown provider name.
    """
    base_name = (declared or {}).get("extends") or ("eoforge" if provider == "custom" else provider)
    if base_name not in BUILTIN_PROFILES:
        raise CatalogError(f"provider {base_name!r}: unknown; built-in profiles are {sorted(BUILTIN_PROFILES)}")
    prof = BUILTIN_PROFILES[base_name]
    if not declared:
        return prof
    s2 = dict(prof.s2_keys) | {b: _keys(k) for b, k in (declared.get("s2_assets") or {}).items()}
    s1 = dict(prof.s1_keys) | {b: _keys(k) for b, k in (declared.get("s1_assets") or {}).items()}
    if declared.get("scl_asset"):
        s2[S2_SCL_ASSET] = _keys(declared["scl_asset"])
    units = dict(prof.s1_units)
    if declared.get("s1_units"):
        units = {"*": declared["s1_units"]}
    product = dict(prof.s1_product)
    if declared.get("s1_product"):
        product = {"*": declared["s1_product"]}
    declared_cal = declared.get("s1_calibration_assets") or {}
    cal = dict(prof.s1_calibration_keys) | {b: _keys(k) for b, k in declared_cal.items()}
    env = dict(prof.gdal_env)
    if declared.get("gdal_env"):
        env = {"*": dict(declared["gdal_env"])}
    return replace(
        prof,
        name=str(declared.get("name") or (provider if provider != "custom" else "custom")),
        s2_keys=s2,
        s1_keys=s1,
        s2_template=declared.get("s2_template") or prof.s2_template,
        s1_units=units,
        s1_product=product,
        s1_calibration_keys=cal,
        gdal_env=env,
    )


def find_asset(item: pystac.Item, band: str, profile: ProviderProfile) -> tuple[str, pystac.Asset] | None:
    """(asset key, asset) holding ``band`` in ``item``, or None."""
    for key in profile.keys_for(band):
        asset = item.assets.get(key)
        if asset is not None:
            return key, asset
    return None


def href_of(asset: pystac.Asset) -> str:
    """Absolute href of an asset (as published: never signed)."""
    return asset.get_absolute_href() or asset.href


def asset_href(
    item: pystac.Item, band: str, provider: str | ProviderProfile = "eoforge", required: bool = True
) -> str | None:
    """Absolute href of the asset holding ``band`` in ``item``.

    Raises:
        CatalogError: the item has no such asset and ``required`` is set; the message lists
            the keys tried and the assets it does have.
    """
    profile = provider if isinstance(provider, ProviderProfile) else resolve_profile(provider)
    found = find_asset(item, band, profile)
    if found is not None:
        return href_of(found[1])
    if required:
        raise CatalogError(
            f"item {item.id} ({item.collection_id}): no asset for band {band!r} (tried {profile.keys_for(band)}); "
            f"assets are {sorted(item.assets)}"
        )
    return None
