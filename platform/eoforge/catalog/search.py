"""One search interface, two backends: a STAC API (pystac-client) or a static catalog on disk.

Both return :class:`pystac.Item` lists with the same filters applied, so everything
downstream (pairing, chip plan) is identical whichever backend found the items:

- collection id,
- ``bbox`` in lon/lat degrees (items whose geometry intersects it),
- ``datetime`` as an RFC 3339 instant or ``start/end`` interval (either end may be ``..``),
- ``max_cloud_cover`` in percent on ``eo:cloud_cover`` (items without it are kept),
- ``max_items``: the first ``max_items`` items in (datetime, id) order,
- ``ids``: only these item ids (STAC ``ids``).

An item id is returned once (:func:`unique_ids`). :func:`search_sensor_items` then drops the
same acquisition published twice under different ids (:func:`dedup_acquisitions`).

The STAC API backend splits a search into datetime partitions searched by parallel threads,
each paged sequentially; every HTTP request retries 5xx / 429, connection errors and time-outs
with exponential backoff and jitter (:class:`RetryingStacApiIO`). The merged result is the same
whatever the partitioning, the page size or the failures.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import pystac
from pystac_client import Client, ConformanceClasses, ItemSearch
from pystac_client.exceptions import APIError
from shapely.geometry import box, shape

from eoforge.catalog.dedup import (
    dedup_acquisitions,
    property_instant,
    s1_acquisition_key,
    s2_acquisition_key,
    sorted_items,
    unique_ids,
)
from eoforge.catalog.http import (
    RequestFailed,
    RetryingStacApiIO,
    SearchCancelled,
    SearchCounters,
    safe_url,
    safe_url_in_text,
)
from eoforge.catalog.partitions import datetime_partitions, utc
from eoforge.config import CatalogConfig
from eoforge.errors import CatalogError, ServiceError
from eoforge.times import MIN_DT, parse_interval

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchQuery:
    """Filters of one search; ``None`` means no filter."""

    collection: str
    bbox: tuple[float, float, float, float] | None = None
    datetime: str | None = None
    max_cloud_cover: float | None = None
    max_items: int | None = None
    ids: tuple[str, ...] | None = None


class SearchBackend(Protocol):
    """What the planner needs from a catalog."""

    def search(self, query: SearchQuery) -> list[pystac.Item]:
        """Items of ``query.collection`` matching the filters, sorted by (datetime, id), each id once."""
        ...


# --------------------------------------------------------------------------- de-duplication
# --------------------------------------------------------------------------- static catalog


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
        #: Running totals: ``repeated_ids:<collection>`` (copies of an id dropped).
        self.counters = SearchCounters()

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
        wanted = frozenset(query.ids) if query.ids else None
        found = []
        for item in index[query.collection]:
            if wanted is not None and item.id not in wanted:
                continue
            if area is not None and (item.geometry is None or not shape(item.geometry).intersects(area)):
                continue
            when = item.datetime
            if when is not None and ((start and when < start) or (end and when > end)):
                continue
            cloud = item.properties.get("eo:cloud_cover")
            if query.max_cloud_cover is not None and cloud is not None and cloud >= query.max_cloud_cover:
                continue
            found.append(item)
        found, repeated = unique_ids(found)
        self.counters.add(f"repeated_ids:{query.collection}", repeated)
        found = sorted_items(found)
        return found[: query.max_items] if query.max_items else found


# --------------------------------------------------------------------------- STAC API


SORTBY = [{"field": "properties.datetime", "direction": "asc"}, {"field": "id", "direction": "asc"}]


class StacApiBackend:
    """Search a STAC API: datetime partitions searched in parallel threads, each paged sequentially.

    Args:
        url: API root URL.
        page_size: items per request (``limit``).
        retries: retries of each HTTP request (attempts = retries + 1).
        timeout_s: per-request time-out (connect, and each read), seconds.
        backoff_s: first wait between attempts, seconds; doubles per retry, with jitter.
        workers: parallel partitions of one search (1 = one sequential search).
    """

    def __init__(
        self,
        url: str,
        page_size: int = 100,
        *,
        retries: int = 5,
        timeout_s: float = 30.0,
        backoff_s: float = 0.5,
        workers: int = 4,
    ) -> None:
        self.url = url
        self.page_size = page_size
        self.workers = workers
        self._io_settings = {"retries": retries, "timeout_s": timeout_s, "backoff_s": backoff_s}
        #: Running totals: ``requests``, ``retries``, ``pages``, ``repeated_ids:<collection>``.
        self.counters = SearchCounters()
        where = f"STAC API {safe_url(url)}"
        try:
            self.client = Client.open(url, stac_io=self._new_io(None), timeout=timeout_s)
        except RequestFailed as exc:
            raise ServiceError(f"{where}: unreachable: {exc}") from None
        except (APIError, OSError) as exc:
            raise ServiceError(f"{where}: unreachable or not a STAC API: {safe_url_in_text(str(exc))}") from None
        except Exception as exc:
            raise ServiceError(f"{where}: cannot open: {type(exc).__name__}: {safe_url_in_text(str(exc))}") from None
        link = self.client.get_search_link()
        self._search_href = link.get_absolute_href() if link is not None else None
        self._sortable = self.client.conforms_to(ConformanceClasses.SORT)

    def _new_io(self, cancel: threading.Event | None) -> RetryingStacApiIO:
        return RetryingStacApiIO(counters=self.counters, cancel=cancel, **self._io_settings)  # type: ignore[arg-type]

    def _extent(self, collection: str) -> tuple[datetime | None, datetime | None]:
        """The collection's temporal extent (GET /collections/{id}), (None, None) when unknown."""
        if not self.client.conforms_to(ConformanceClasses.COLLECTIONS):
            return None, None
        try:
            coll = self.client.get_collection(collection)
            start, end = coll.extent.temporal.intervals[0] if coll is not None else (None, None)
        except (APIError, ValueError, KeyError, IndexError, AttributeError) as exc:
            log.info("STAC API %s: no temporal extent for %r (%s): one partition", safe_url(self.url), collection, exc)
            return None, None
        return utc(start), utc(end)

    def _partition(self, query: SearchQuery, when: str | None, cancel: threading.Event) -> list[dict[str, Any]]:
        """Every feature of one partition, page after page; stops early once ``max_items`` are certain."""
        n = query.max_items
        kwargs: dict[str, Any] = {"collections": [query.collection], "datetime": when}
        if query.bbox:
            kwargs["bbox"] = list(query.bbox)
        if query.ids:
            kwargs["ids"] = list(query.ids)
        if query.max_cloud_cover is not None and query.max_cloud_cover < 100:
            kwargs["query"] = {"eo:cloud_cover": {"lt": query.max_cloud_cover}}
        search = ItemSearch(
            self._search_href or f"{self.url.rstrip('/')}/search",
            method="POST",
            stac_io=self._new_io(cancel),
            client=self.client,
            limit=min(self.page_size, n + 1) if n else self.page_size,
            sortby=SORTBY if self._sortable else None,
            **kwargs,
        )
        features: list[dict[str, Any]] = []
        seen: set[str] = set()
        ordered, last, nth = self._sortable, None, None
        pages = 0
        for page in search.pages_as_dicts():
            pages += 1
            for feature in page.get("features", []):
                features.append(feature)
                if feature.get("id") in seen:
                    continue
                seen.add(feature.get("id"))
                dt = property_instant(feature.get("properties", {}).get("datetime"))
                if ordered and (dt == MIN_DT or (last is not None and dt < last)):
                    ordered = False  # the server did not sort: max_items needs every item
                    log.info("STAC API %s: results of %r not sorted by datetime", safe_url(self.url), query.collection)
                last = dt
                if n and len(seen) == n:
                    nth = dt
            # sorted by datetime: every item up to the n-th distinct one's datetime is in (ties included)
            if ordered and nth is not None and last is not None and last > nth:
                break
            if cancel.is_set():
                raise SearchCancelled
        self.counters.add("pages", pages)
        self.counters.add(f"repeated_ids:{query.collection}", len(features) - len(seen))
        log.info(
            "STAC API %s %r %s: %d items in %d pages",
            safe_url(self.url),
            query.collection,
            when or "(all dates)",
            len(seen),
            pages,
        )
        return features

    def _features(self, query: SearchQuery) -> list[dict[str, Any]]:
        interval_open = query.datetime is None or any(p in ("", "..") for p in query.datetime.split("/"))
        extent = self._extent(query.collection) if self.workers > 1 and interval_open else (None, None)
        parts = datetime_partitions(query.datetime, extent, self.workers)
        cancel = threading.Event()
        if len(parts) == 1:
            return self._partition(query, parts[0], cancel)
        with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="stac-search") as pool:
            futures = [pool.submit(self._partition, query, when, cancel) for when in parts]
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f.exception() for f in futures if f.done() and f.exception() is not None]
            errors = [e for e in failed if not isinstance(e, SearchCancelled)]
            if errors:
                cancel.set()
                for f in futures:
                    f.cancel()
                raise errors[0]
            return [feature for f in futures for feature in f.result()]

    def search(self, query: SearchQuery) -> list[pystac.Item]:
        """Run the search: each id once, sorted by (datetime, id), the first ``max_items``."""
        try:
            features = self._features(query)
        except RequestFailed as exc:
            raise ServiceError(f"STAC API {safe_url(self.url)}: search in {query.collection!r}: {exc}") from None
        except APIError as exc:
            raise CatalogError(f"STAC API {safe_url(self.url)}: search in {query.collection!r} failed: {exc}") from None
        except OSError as exc:
            raise ServiceError(f"STAC API {safe_url(self.url)}: unreachable during search: {exc}") from None
        items = [pystac.Item.from_dict(f, root=self.client, preserve_dict=False) for f in features]
        items, _ = unique_ids(items)
        items = sorted_items(items)
        return items[: query.max_items] if query.max_items else items


def open_backend(cfg: CatalogConfig) -> SearchBackend:
    """Build the backend a data config names."""
    if cfg.backend == "static":
        return StaticCatalogBackend(cfg.url)
    return StacApiBackend(
        cfg.url,
        page_size=cfg.page_size,
        retries=cfg.retries,
        timeout_s=cfg.timeout_s,
        backoff_s=cfg.backoff_s,
        workers=cfg.search_workers,
    )


def search_bbox(cfg: CatalogConfig) -> tuple[float, float, float, float] | None:
    """The lon/lat bbox the searches use: ``catalog.bbox``, else the bounds of ``catalog.aoi``."""
    if cfg.bbox is not None:
        return cfg.bbox
    if cfg.aoi is not None:
        return tuple(float(v) for v in shape(cfg.aoi).bounds)  # type: ignore[return-value]
    return None


def _union_bbox(items: list[pystac.Item]) -> tuple[float, float, float, float] | None:
    """The lon/lat bbox around the items' footprints (None when an item has no geometry)."""
    bounds = [shape(it.geometry).bounds for it in items if it.geometry is not None]
    if not bounds or len(bounds) < len(items):
        return None
    return (min(b[0] for b in bounds), min(b[1] for b in bounds), max(b[2] for b in bounds), max(b[3] for b in bounds))


def _counts(backend: object) -> Counter[str]:
    counters = getattr(backend, "counters", None)
    return counters.snapshot() if isinstance(counters, SearchCounters) else Counter()


def search_sensor_items(
    cfg: CatalogConfig, backend: SearchBackend | None = None, report: dict[str, int] | None = None
) -> tuple[list[pystac.Item], list[pystac.Item]]:
    """Search S2 (with the cloud filter) and S1 items for a data config; returns (s2, s1).

    Each list has each id once and one item per acquisition (:func:`dedup_acquisitions`).
    ``report``, when given, receives what was dropped and why, and the HTTP work done:
    ``s2_duplicates`` / ``s1_duplicates`` (same acquisition under another id),
    ``s2_repeated_ids`` / ``s1_repeated_ids`` (an id returned twice by the catalog's pages),
    ``search_requests``, ``search_retries``, ``search_pages`` (0 for a static catalog).
    """
    backend = backend or open_backend(cfg)
    before = _counts(backend)
    bbox = search_bbox(cfg)
    ids = tuple(cfg.s2_item_ids) if cfg.s2_item_ids else None
    s2 = backend.search(SearchQuery(cfg.s2_collection, bbox, cfg.datetime, cfg.max_cloud_cover, cfg.max_items, ids))
    if ids:
        missing = sorted(set(ids) - {it.id for it in s2})
        if len(missing) == len(ids):
            raise CatalogError(
                f"catalog {safe_url(cfg.url)}: none of the {len(ids)} S2 item ids found in {cfg.s2_collection!r} "
                f"(with the bbox/datetime/cloud filters), e.g. {missing[:3]}"
            )
        if missing:
            log.warning("catalog %s: %d S2 item ids not found: %s", safe_url(cfg.url), len(missing), missing[:5])
        if report is not None:
            report["s2_ids_missing"] = len(missing)
        if bbox is None:  # S1 partners: over the listed items' footprints only
            bbox = _union_bbox(s2)
    s1 = backend.search(SearchQuery(cfg.s1_collection, bbox, cfg.datetime, None, cfg.max_items))
    s2, s2_dropped = dedup_acquisitions(s2, s2_acquisition_key, "S2 item")
    s1, s1_dropped = dedup_acquisitions(s1, s1_acquisition_key, "S1 item")
    done = _counts(backend)
    done.subtract(before)
    log.info(
        "catalog %s: %d S2 items, %d S1 items (dropped as re-published: %d S2, %d S1; %d HTTP retries)",
        safe_url(cfg.url),
        len(s2),
        len(s1),
        len(s2_dropped),
        len(s1_dropped),
        done["retries"],
    )
    if report is not None:
        report.update(
            s2_duplicates=len(s2_dropped),
            s1_duplicates=len(s1_dropped),
            s2_repeated_ids=done[f"repeated_ids:{cfg.s2_collection}"],
            s1_repeated_ids=done[f"repeated_ids:{cfg.s1_collection}"],
            search_requests=done["requests"],
            search_retries=done["retries"],
            search_pages=done["pages"],
        )
    return s2, s1
