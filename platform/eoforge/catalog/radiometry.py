"""Radiometry read from item metadata: S2 digital-number offsets, S1 product and units.

Sentinel-2 L2A digital numbers are reflectance x 10000. Since processing baseline 04.00
(25 January 2022) ESA adds ``BOA_ADD_OFFSET = -1000``: ``reflectance = (DN - 1000) / 10000``.
eoforge works in the pre-2022 units (reflectance x 10000 without offset, the units of the
SSL4EO-S12 statistics), so each S2 band gets a linear map ``value = DN * gain + offset``
decided once per item at plan time, from the first rule that applies:

1. ``earthsearch:boa_offset_applied: true`` (Earth Search v1): the provider already removed the
   offset from the pixels; ``raster:bands`` may still advertise ``offset: -0.1``, which is ignored
   so the offset is never removed twice. -> ``(1, 0)``.
2. A processing baseline below 04.00 (``s2:processing_baseline``, ``processing:version``,
   ``sentinel:processing_baseline``, or ``_Nxxyy_`` in ``s2:product_uri``): no offset exists. -> ``(1, 0)``.
3. ``raster:bands`` ``scale`` / ``offset`` on the asset (STAC 1.1: ``raster:scale`` / ``raster:offset``;
   Copernicus Data Space, stactools items):
   ``value = (DN * scale + offset) * 10000``; e.g. ``scale 0.0001, offset -0.1`` -> ``(1, -1000)``.
4. A baseline of 04.00 or later and no ``raster:bands`` offset (Planetary Computer): ``(1, -1000)``.
5. Nothing known: the DNs are taken as they are. -> ``(1, 0)``.

Nodata (DN 0) is masked from the raw DNs before the map is applied.
"""

from __future__ import annotations

import re
from typing import Any

import pystac

from eoforge.catalog.providers import ProviderProfile

#: DN offset of processing baseline >= 04.00 products (BOA_ADD_OFFSET), in DN.
BOA_ADD_OFFSET_DN = -1000.0
_BASELINE_KEYS = ("s2:processing_baseline", "processing:version", "sentinel:processing_baseline")


def processing_baseline(item: pystac.Item) -> float | None:
    """The item's S2 processing baseline as a number (``"04.00"`` -> 4.0), or None if unknown."""
    props = item.properties
    for key in _BASELINE_KEYS:
        value = props.get(key)
        if value not in (None, ""):
            try:
                return float(str(value))
            except ValueError:
                continue
    match = re.search(r"_N(\d{2})(\d{2})_", str(props.get("s2:product_uri") or item.id))
    if match:
        return int(match.group(1)) + int(match.group(2)) / 100
    return None


def _raster_band(asset: pystac.Asset | None) -> dict[str, Any]:
    """Scale / offset / unit / nodata of an asset's first band, STAC 1.0 or 1.1 style.

    STAC 1.0 (raster extension v1) puts them in ``raster:bands[0]``; STAC 1.1 (raster v2, e.g.
    Copernicus Data Space) puts ``raster:scale`` / ``raster:offset`` / ``unit`` on the asset or in ``bands[0]``.
    """
    if asset is None:
        return {}
    fields = asset.extra_fields
    out: dict[str, Any] = {}
    for source in (fields, *(fields.get("bands") or [])[:1]):
        if isinstance(source, dict):
            for key in ("scale", "offset", "unit", "nodata"):
                if f"raster:{key}" in source:
                    out[key] = source[f"raster:{key}"]
                elif key in ("unit", "nodata") and key in source:
                    out[key] = source[key]
    bands = fields.get("raster:bands") or []
    if bands and isinstance(bands[0], dict):
        out.update({k: v for k, v in bands[0].items() if k in ("scale", "offset", "unit", "nodata")})
    return out


def s2_dn_map(item: pystac.Item, asset: pystac.Asset | None) -> tuple[float, float, str]:
    """``(gain, offset, rule)``: ``value = DN * gain + offset`` in reflectance x 10000 (see module docs)."""
    if item.properties.get("earthsearch:boa_offset_applied") is True:
        return 1.0, 0.0, "earthsearch:boa_offset_applied"
    baseline = processing_baseline(item)
    if baseline is not None and baseline < 4.0:
        return 1.0, 0.0, f"baseline {baseline:05.2f} < 04.00"
    rb = _raster_band(asset)
    if "offset" in rb or "scale" in rb:
        scale = float(rb.get("scale", 1e-4))
        offset = float(rb.get("offset", 0.0))
        return round(scale * 1e4, 9), round(offset * 1e4, 6), "raster:bands"
    if baseline is not None:
        return 1.0, BOA_ADD_OFFSET_DN, f"baseline {baseline:05.2f} >= 04.00"
    return 1.0, 0.0, "no radiometric metadata"


def item_polarizations(item: pystac.Item) -> list[str] | None:
    """``sar:polarizations`` of an item (upper case), or None when the item does not say."""
    pols = item.properties.get("sar:polarizations")
    return [str(p).upper() for p in pols] if isinstance(pols, list) else None


def s1_units(item: pystac.Item, asset: pystac.Asset | None, profile: ProviderProfile, override: str | None) -> str:
    """Units of an S1 asset (one of ``dB``, ``linear``, ``amplitude``).

    The config override wins, then ``raster:bands`` ``unit: dB``, then the profile's default for the
    collection, then ``sar:product_type`` (RTC -> linear, GRD -> amplitude).
    """
    if override:
        return override
    unit = str(_raster_band(asset).get("unit") or "").lower()
    if unit in ("db", "decibel", "decibels"):
        return "dB"
    if item.collection_id in profile.s1_units or "*" in profile.s1_units:
        return profile.units_for(item.collection_id)
    product = str(item.properties.get("sar:product_type") or "").upper()
    return "linear" if product == "RTC" else "amplitude"


def s1_product(item: pystac.Item, profile: ProviderProfile) -> str:
    """Product name recorded in the plan: ``sar:product_type`` when the item says, else the profile's."""
    return str(item.properties.get("sar:product_type") or profile.product_for(item.collection_id))
