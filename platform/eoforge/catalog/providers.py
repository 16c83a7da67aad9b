"""Provider profiles: how a catalog names its assets, mapped onto eoforge's band names.

eoforge's own catalogs and Microsoft Planetary Computer use ``B01``..``B12``, ``B8A``,
``SCL`` and ``vv``/``vh``; Element 84 Earth Search v1 uses common names (``red``,
``nir08``, ``scl``) for Sentinel-2. A profile resolves an eoforge band name to the asset
key of an item, so the chip plan always stores hrefs under eoforge names.
"""

from __future__ import annotations

import pystac

from eoforge.catalog.bands import EARTH_SEARCH_S2_ALIASES
from eoforge.errors import CatalogError

_REVERSE_EARTH_SEARCH = {v: k for k, v in EARTH_SEARCH_S2_ALIASES.items()}


def asset_key(provider: str, band: str) -> list[str]:
    """Candidate asset keys for an eoforge band name, most likely first."""
    keys = [band, band.lower(), band.upper()]
    if provider == "earth_search" and band in _REVERSE_EARTH_SEARCH:
        keys.insert(0, _REVERSE_EARTH_SEARCH[band])
    return list(dict.fromkeys(keys))


def asset_href(item: pystac.Item, band: str, provider: str = "eoforge", required: bool = True) -> str | None:
    """Absolute href of the asset holding ``band`` in ``item``.

    Raises:
        CatalogError: the item has no such asset and ``required`` is set; the message lists
            the assets it does have.
    """
    for key in asset_key(provider, band):
        asset = item.assets.get(key)
        if asset is not None:
            return asset.get_absolute_href() or asset.href
    if required:
        raise CatalogError(
            f"item {item.id} ({item.collection_id}): no asset for band {band!r}; assets are {sorted(item.assets)}"
        )
    return None
