"""One search interface, two backends: a STAC API (pystac-client) or a static catalog on disk.

Both return :class:`pystac.Item` lists with the same filters applied, so everything
downstream (pairing, chip plan) is identical whichever backend found the items:

- collection id,
- ``bbox`` in lon/lat degrees (items whose geometry intersects it),
- ``datetime`` as an RFC 3339 instant or ``start/end`` interval (either end may be ``..``),
- ``max_cloud_cover`` in percent on ``eo:cloud_cover`` (items without it are kept).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import pystac
from shapely.geometry import box, shape

from eoforge.config import CatalogConfig
from eoforge.errors import CatalogError, ServiceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchQuery:
    """Filters of one search; ``None`` means no filter."""

    collection: str
    bbox: tuple[float, float, float, float] | None = None
    datetime: str | None = None
    max_cloud_cover: float | None = None
    max_items: int | None = None


class SearchBackend(Protocol):
    """What the planner needs from a catalog."""

    def search(self, query: SearchQuery) -> list[pystac.Item]:
        """Items of ``query.collection`` matching the filters, sorted by (datetime, id)."""
        ...


def _parse_instant(text: str) -> datetime | None:
    if text in ("", ".."):
        return None
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def parse_interval(value: str) -> tuple[datetime | None, datetime | None]:
    """Parse ``start/end`` (either may be ``..``) or a single instant into UTC datetimes."""
    try:
        if "/" in value:
            start, end = value.split("/", 1)
            return _parse_instant(start), _parse_instant(end)
        instant = _parse_instant(value)
        return instant, instant
    except ValueError as exc:
        raise CatalogError(f"datetime {value!r}: not an RFC 3339 instant or interval ({exc})") from None


def _sorted(items: list[pystac.Item]) -> list[pystac.Item]:
    return sorted(items, key=lambda it: (it.datetime or datetime.min.replace(tzinfo=UTC), it.id))


class StaticCatalogBackend:
    """Search a static STAC catalog on disk (``catalog.json``) without any server."""

    def __init__(self, catalog_path: str) -> None:
        path = urlparse(catalog_path).path if catalog_path.startswith("file://") else catalog_path
        if not Path(path).is_file():
            raise CatalogError(f"static catalog {catalog_path}: catalog.json not found")
        try:
            self.catalog = pystac.Catalog.from_file(path)
        except Exception as exc:  # pystac raises a zoo of errors for bad JSON
            raise CatalogError(f"static catalog {catalog_path}: cannot be read: {exc}") from None
        self._by_collection: dict[str, list[pystac.Item]] | None = None

    def _index(self) -> dict[str, list[pystac.Item]]:
        if self._by_collection is None:
            index: dict[str, list[pystac.Item]] = {}
            for item in self.catalog.get_items(recursive=True):
                index.setdefault(item.collection_id or "", []).append(item)
            self._by_collection = index
        return self._by_collection

    def search(self, query: SearchQuery) -> list[pystac.Item]:
        """Filter the catalog's items in memory (see module docstring for the semantics)."""
        index = self._index()
        if query.collection not in index:
            raise CatalogError(f"static catalog: collection {query.collection!r} not found; has {sorted(index)}")
        start, end = parse_interval(query.datetime) if query.datetime else (None, None)
        area = box(*query.bbox) if query.bbox else None
        found = []
        for item in index[query.collection]:
            if area is not None and (item.geometry is None or not shape(item.geometry).intersects(area)):
                continue
            when = item.datetime
            if when is not None and ((start and when < start) or (end and when > end)):
                continue
            cloud = item.properties.get("eo:cloud_cover")
            if query.max_cloud_cover is not None and cloud is not None and cloud >= query.max_cloud_cover:
                continue
            found.append(item)
        found = _sorted(found)
        return found[: query.max_items] if query.max_items else found


class StacApiBackend:
    """Search a STAC API through pystac-client (paging handled by pystac-client)."""

    def __init__(self, url: str, page_size: int = 100) -> None:
        from pystac_client import Client
        from pystac_client.exceptions import APIError

        self.url = url
        self.page_size = page_size
        try:
            self.client = Client.open(url)
        except (APIError, OSError) as exc:
            raise ServiceError(f"STAC API {url}: unreachable or not a STAC API: {exc}") from None
        except Exception as exc:
            raise ServiceError(f"STAC API {url}: cannot open: {type(exc).__name__}: {exc}") from None

    def _items(self, query: SearchQuery) -> Iterator[pystac.Item]:
        kwargs: dict[str, object] = {
            "collections": [query.collection],
            "limit": self.page_size,
            "max_items": query.max_items,
        }
        if query.bbox:
            kwargs["bbox"] = list(query.bbox)
        if query.datetime:
            kwargs["datetime"] = query.datetime
        if query.max_cloud_cover is not None and query.max_cloud_cover < 100:
            kwargs["query"] = {"eo:cloud_cover": {"lt": query.max_cloud_cover}}
        yield from self.client.search(**kwargs).items()

    def search(self, query: SearchQuery) -> list[pystac.Item]:
        """Run the search and return every page's items."""
        from pystac_client.exceptions import APIError

        try:
            return _sorted(list(self._items(query)))
        except APIError as exc:
            raise CatalogError(f"STAC API {self.url}: search in {query.collection!r} failed: {exc}") from None
        except OSError as exc:
            raise ServiceError(f"STAC API {self.url}: unreachable during search: {exc}") from None


def open_backend(cfg: CatalogConfig) -> SearchBackend:
    """Build the backend a data config names."""
    if cfg.backend == "static":
        return StaticCatalogBackend(cfg.url)
    return StacApiBackend(cfg.url, page_size=cfg.page_size)


def search_bbox(cfg: CatalogConfig) -> tuple[float, float, float, float] | None:
    """The lon/lat bbox the searches use: ``catalog.bbox``, else the bounds of ``catalog.aoi``."""
    if cfg.bbox is not None:
        return cfg.bbox
    if cfg.aoi is not None:
        return tuple(float(v) for v in shape(cfg.aoi).bounds)  # type: ignore[return-value]
    return None


def search_sensor_items(
    cfg: CatalogConfig, backend: SearchBackend | None = None
) -> tuple[list[pystac.Item], list[pystac.Item]]:
    """Search S2 (with the cloud filter) and S1 items for a data config; returns (s2, s1)."""
    backend = backend or open_backend(cfg)
    bbox = search_bbox(cfg)
    s2 = backend.search(SearchQuery(cfg.s2_collection, bbox, cfg.datetime, cfg.max_cloud_cover, cfg.max_items))
    s1 = backend.search(SearchQuery(cfg.s1_collection, bbox, cfg.datetime, None, cfg.max_items))
    log.info("catalog %s: %d S2 items, %d S1 items", cfg.url, len(s2), len(s1))
    return s2, s1
