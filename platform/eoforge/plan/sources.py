"""S2/S1 items resolved through the provider profile: band hrefs, radiometry, the S2 grid, whole-item labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pystac
import rasterio
from rasterio.transform import Affine

from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES, S2_SCL_ASSET
from eoforge.catalog.providers import ProviderProfile, asset_href, find_asset, href_of, resolve_profile
from eoforge.catalog.radiometry import item_polarizations, s1_product, s1_units, s2_dn_map
from eoforge.config import DataConfig
from eoforge.errors import CatalogError
from eoforge.plan.sampling import Grid


def _item_crs(item: pystac.Item, asset: pystac.Asset | None) -> str | None:
    for props in (asset.extra_fields if asset else {}, item.properties):
        if props.get("proj:code"):
            return str(props["proj:code"])
        if props.get("proj:epsg"):
            return f"EPSG:{int(props['proj:epsg'])}"
    return None


def s2_grid(item: pystac.Item, provider: str | ProviderProfile, resolution_m: float) -> Grid:
    """The S2 item's grid at ``resolution_m`` (from proj metadata of its 10 m B02 asset, else the file)."""
    profile = provider if isinstance(provider, ProviderProfile) else resolve_profile(provider)
    href = asset_href(item, "B02", profile)
    found = find_asset(item, "B02", profile)
    asset = found[1] if found else None
    crs = _item_crs(item, asset)
    fields = asset.extra_fields if asset else {}
    tr = fields.get("proj:transform") or item.properties.get("proj:transform")
    shp = fields.get("proj:shape") or item.properties.get("proj:shape")
    if crs is None or tr is None or shp is None:
        try:
            with rasterio.open(href) as src:
                crs, affine, shp = src.crs.to_string(), src.transform, (src.height, src.width)
        except (rasterio.errors.RasterioIOError, AttributeError) as exc:
            raise CatalogError(f"item {item.id}: no proj metadata and {href} unreadable: {exc}") from None
    else:
        affine = Affine(*tr[:6])
    if abs(affine.b) > 0 or abs(affine.d) > 0:
        raise CatalogError(f"item {item.id}: rotated S2 grid is not supported ({affine})")
    scale = resolution_m / abs(affine.a)
    rows, cols = int(shp[0] / scale), int(shp[1] / scale)
    grid_tr = Affine(resolution_m, 0, affine.c, 0, -resolution_m, affine.f)
    return Grid(crs=crs, transform=grid_tr, shape=(rows, cols))


#: Item properties that hold a whole-scene list of class names (e.g. BigEarthNet's CORINE labels).
ITEM_LABEL_KEYS = ("bigearthnet:labels", "eoforge:labels")


def item_label_list(item: pystac.Item) -> list[str]:
    """The class names an item carries for the whole item (multi-label datasets), else []."""
    for key in ITEM_LABEL_KEYS:
        value = item.properties.get(key)
        if isinstance(value, list):
            return [str(v) for v in value]
    return []


@dataclass(frozen=True)
class S2Source:
    """What the plan needs of one S2 item: band hrefs, SCL, radiometry and its grid."""

    assets: dict[str, str]
    scl: str | None
    radiometry: dict[str, list[float]]
    grid: Grid


@dataclass(frozen=True)
class S1Source:
    """What the plan needs of one S1 item: band hrefs, product, units, calibration annotations."""

    assets: dict[str, str]
    product: str
    units: str
    calibration: dict[str, str]


def prepare_s2(item: pystac.Item, profile: ProviderProfile, resolution_m: float) -> S2Source:
    """Resolve an S2 item through the profile.

    Raises:
        CatalogError: a band is missing or the grid cannot be known (the item is skipped).
    """
    assets: dict[str, str] = {}
    radiometry: dict[str, list[float]] = {}
    missing = []
    for band in S2_BAND_NAMES:
        found = find_asset(item, band, profile)
        if found is None:
            missing.append(band)
            continue
        assets[band] = href_of(found[1])
        gain, offset, _ = s2_dn_map(item, found[1])
        radiometry[band] = [gain, offset]
    if missing:
        raise CatalogError(
            f"missing band: no asset for {missing} (profile {profile.name!r} tried e.g. "
            f"{profile.keys_for(missing[0])}); assets are {sorted(item.assets)}"
        )
    scl = find_asset(item, S2_SCL_ASSET, profile)
    try:
        grid = s2_grid(item, profile, resolution_m)
    except CatalogError as exc:
        raise CatalogError(f"grid: {exc}") from None
    return S2Source(assets, href_of(scl[1]) if scl else None, radiometry, grid)


def prepare_s1(item: pystac.Item, profile: ProviderProfile, units_override: str | None = None) -> S1Source:
    """Resolve an S1 item through the profile.

    Raises:
        CatalogError: the item lacks VV or VH (``sar:polarizations`` or assets): it is skipped.
    """
    pols = item_polarizations(item)
    if pols is not None and not {"VV", "VH"} <= set(pols):
        raise CatalogError(f"polarisation: sar:polarizations {pols} lacks {sorted({'VV', 'VH'} - set(pols))}")
    assets: dict[str, str] = {}
    units: set[str] = set()
    calibration: dict[str, str] = {}
    for band in S1_BAND_NAMES:
        found = find_asset(item, band, profile)
        if found is None:
            raise CatalogError(
                f"polarisation: no asset for {band!r} (tried {profile.keys_for(band)}); has {sorted(item.assets)}"
            )
        assets[band] = href_of(found[1])
        units.add(s1_units(item, found[1], profile, units_override))
        for key in profile.s1_calibration_keys.get(band, ()):
            if key in item.assets:
                calibration[band] = href_of(item.assets[key])
                break
    if len(units) != 1:
        raise CatalogError(f"units: VV and VH assets disagree on units {sorted(units)}")
    unit = units.pop()
    return S1Source(assets, s1_product(item, profile), unit, calibration if unit == "amplitude" else {})


def declared_profile(cfg: DataConfig) -> dict[str, Any] | None:
    """The provider profile fields the config declares (``catalog.profile``), or None."""
    return cfg.catalog.profile.model_dump(exclude_none=True) if cfg.catalog.profile else None


def signing_of(cfg: DataConfig, profile: ProviderProfile) -> str:
    """How hrefs are signed at read time: ``catalog.signing``, else the profile's."""
    return cfg.catalog.signing or profile.signing
