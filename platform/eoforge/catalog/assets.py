"""Asset access: how a reading process opens the hrefs a plan names.

One place for what both the planner (:mod:`eoforge.plan.chips` reads SCL files) and the chip
reader (:mod:`eoforge.data.tiles`) need before a byte is read:

- :data:`GDAL_ENV`, the GDAL settings for COGs;
- :func:`gdal_path`, an href as rasterio opens it;
- :func:`resolve_signer` and :func:`sign_href`, the signing hook a plan row's ``access`` cell names
  (by name, from the closed registry of :mod:`eoforge.signing`), applied just before a file is
  opened (a signed URL lives only inside the reading process, and never in its errors:
  :func:`eoforge.redact.redact`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from urllib.parse import unquote, urlparse

from eoforge.errors import ChipReadError
from eoforge.signing import UnknownSigner, load_signer

#: GDAL settings for reading COGs (platform-notes §6): no directory listing on open, retries and
#: merged ranges for HTTP, a per-handle VSI cache, the whole COG header in the first request, and
#: an explicit block cache (MB) that holds the decoded tiles of a tile group for all its chips.
GDAL_ENV: dict[str, str | int] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(8 << 20),
    "GDAL_CACHEMAX": 256 << 20,  # bytes (an int: rasterio passes it to GDALSetCacheMax64)
}


def gdal_path(href: str) -> str:
    """Turn an href into something rasterio opens (``file://`` URLs become paths)."""
    if href.startswith("file://"):
        return unquote(urlparse(href).path)
    return href


@functools.lru_cache(maxsize=16)
def resolve_signer(name: str | None) -> Callable[[str], str]:
    """The href signing hook a plan names, from the closed registry (:mod:`eoforge.signing`).

    An unregistered name (``os:system``) is refused before anything is imported.

    Raises:
        ChipReadError: the name is not registered, or its hook cannot be imported.
    """
    try:
        return load_signer(name)
    except UnknownSigner as exc:
        raise ChipReadError(str(exc)) from None
    except (ImportError, AttributeError, TypeError) as exc:
        raise ChipReadError(f"signing hook {name!r}: cannot load ({type(exc).__name__}: {exc})") from None


def sign_href(href: str, sign: Callable[[str], str] | None) -> str:
    """``href`` passed through the signing hook (None: as is).

    Raises:
        ChipReadError: the hook failed (the chip is skipped, the worker lives on).
    """
    if sign is None:
        return href
    try:
        return str(sign(href))
    except Exception as exc:  # a signing service error must skip the chip, not kill the worker
        raise ChipReadError(f"{href}: signing failed: {type(exc).__name__}: {exc}") from None
