"""One search interface, two backends: a STAC API (pystac-client) or a static catalog on disk.

Both return :class:`pystac.Item` lists with the same filters applied, so everything
downstream (pairing, chip plan) is identical whichever backend found the items:

- collection id,
- ``bbox`` in lon/lat degrees (items whose geometry intersects it),
- ``datetime`` as an RFC 3339 instant or ``start/end`` interval (either end may be ``..``),
- ``max_cloud_cover`` in percent on ``eo:cloud_cover`` (items without it are kept),
- ``max_items``: the first ``max_items`` items in (datetime, id) order.

An item id is returned once (:func:`unique_ids`). :func:`search_sensor_items` then drops the
same acquisition published twice under different ids (:func:`dedup_acquisitions`).

The STAC API backend splits a search into datetime partitions searched by parallel threads,
each paged sequentially; every HTTP request retries 5xx / 429, connection errors and time-outs
with exponential backoff and jitter (:class:`RetryingStacApiIO`). The merged result is the same
whatever the partitioning, the page size or the failures.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse, urlsplit, urlunsplit

import pystac
import requests
from pystac_client import Client, ConformanceClasses, ItemSearch
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
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
        """Items of ``query.collection`` matching the filters, sorted by (datetime, id), each id once."""
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


_MIN_DT = datetime.min.replace(tzinfo=UTC)


def _sort_key(item: pystac.Item) -> tuple[datetime, str]:
    return (item.datetime or _MIN_DT, item.id)


def _sorted(items: Iterable[pystac.Item]) -> list[pystac.Item]:
    return sorted(items, key=_sort_key)


# --------------------------------------------------------------------------- de-duplication


def _instant(value: Any) -> datetime:
    """A property's RFC 3339 instant, or the smallest datetime when absent or unparsable."""
    if not value:
        return _MIN_DT
    try:
        return _parse_instant(str(value)) or _MIN_DT
    except ValueError:
        return _MIN_DT


def _rank(item: pystac.Item) -> tuple[float, datetime, datetime, str]:
    """Which copy wins: newest processing baseline, then latest ``updated``, ``created``, then largest id."""
    from eoforge.catalog.radiometry import processing_baseline

    props = item.properties
    baseline = processing_baseline(item)
    return (
        -1.0 if baseline is None else baseline,
        _instant(props.get("updated")),
        _instant(props.get("created")),
        item.id,
    )


def unique_ids(items: Iterable[pystac.Item]) -> tuple[list[pystac.Item], int]:
    """Each item id once (the best copy by :func:`_rank`, then by content), and how many copies were dropped.

    Copies come from overlapping pages or from the inclusive ends of datetime partitions; they are
    normally identical, and the choice among differing copies does not depend on the order seen.
    """
    by_id: dict[str, list[pystac.Item]] = {}
    for item in items:
        by_id.setdefault(item.id, []).append(item)
    kept, dropped = [], 0
    for copies in by_id.values():
        if len(copies) > 1:
            dropped += len(copies) - 1
            kept.append(max(copies, key=lambda it: (_rank(it), json.dumps(it.to_dict(), sort_keys=True))))
        else:
            kept.append(copies[0])
    return kept, dropped


_MGRS = re.compile(r"^(?:MGRS-)?(\d{1,2})([C-X])([A-Z]{2})$")
#: Items of one acquisition have datetimes at most this far apart (seconds).
SAME_ACQUISITION_S = 1.0
#: ... and footprints whose intersection over union is at least this.
SAME_FOOTPRINT_IOU = 0.5
S1_SLICE_KEYS = (
    "sat:absolute_orbit",
    "s1:datatake_id",
    "s1:slice_number",
    "sar:product_type",
    "sar:instrument_mode",
    "s1:resolution",
)


def mgrs_tile(props: dict[str, Any]) -> str | None:
    """The MGRS tile of an S2 item (``31UFU``) from ``s2:mgrs_tile``, ``grid:code`` or ``mgrs:*``, else None."""
    candidates = [props.get("s2:mgrs_tile"), props.get("grid:code")]
    if all(props.get(k) is not None for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square")):
        candidates.append(f"{props['mgrs:utm_zone']}{props['mgrs:latitude_band']}{props['mgrs:grid_square']}")
    for value in candidates:
        match = _MGRS.match(str(value).strip().upper()) if value else None
        if match:
            return f"{int(match.group(1)):02d}{match.group(2)}{match.group(3)}"
    return None


def s2_acquisition_key(item: pystac.Item) -> tuple[Any, ...] | None:
    """(platform, MGRS tile) of an S2 item, or None when the tile is unknown (the item is never merged)."""
    tile = mgrs_tile(item.properties)
    if tile is None or item.datetime is None:
        return None
    return (str(item.properties.get("platform") or "").lower(), tile)


def s1_acquisition_key(item: pystac.Item) -> tuple[Any, ...] | None:
    """(platform, absolute orbit, slice keys present) of an S1 item, or None without ``sat:absolute_orbit``."""
    props = item.properties
    if props.get("sat:absolute_orbit") is None or item.datetime is None:
        return None
    return (str(props.get("platform") or "").lower(), *(json.dumps(props.get(k)) for k in S1_SLICE_KEYS))


def _iou(a: pystac.Item, b: pystac.Item) -> float:
    if a.geometry is None or b.geometry is None:
        return 0.0
    try:
        ga, gb = shape(a.geometry), shape(b.geometry)
        union = ga.union(gb).area
        return ga.intersection(gb).area / union if union > 0 else 0.0
    except Exception:  # an invalid footprint never merges two items
        return 0.0


def dedup_acquisitions(
    items: Sequence[pystac.Item], key: Callable[[pystac.Item], tuple[Any, ...] | None], label: str = "item"
) -> tuple[list[pystac.Item], list[tuple[str, str]]]:
    """Keep one item per acquisition published under several ids.

    Two items are the same acquisition when ``key`` gives both the same non-None value (platform +
    MGRS tile for S2, :func:`s2_acquisition_key`; platform + orbit + slice keys for S1,
    :func:`s1_acquisition_key`), their datetimes are within :data:`SAME_ACQUISITION_S` and their
    footprints overlap with IoU >= :data:`SAME_FOOTPRINT_IOU` (so patch catalogs that copy scene
    metadata onto every patch are never merged). The kept item has the newest processing baseline,
    then the latest ``updated``, ``created``, then the largest id.

    Returns:
        The kept items in the input order, and (dropped id, kept id) pairs.
    """
    groups: dict[tuple[Any, ...], list[pystac.Item]] = {}
    for item in items:
        k = key(item)
        if k is not None:
            groups.setdefault(k, []).append(item)
    dropped: dict[str, str] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        members = _sorted(members)
        # runs of items within SAME_ACQUISITION_S of the previous one, then footprint components in each run
        run: list[pystac.Item] = []
        for item in [*members, None]:
            if item is not None and run and (item.datetime - run[-1].datetime).total_seconds() <= SAME_ACQUISITION_S:
                run.append(item)
                continue
            if len(run) > 1:
                for component in _footprint_components(run):
                    if len(component) > 1:
                        best = max(component, key=_rank)
                        dropped.update({it.id: best.id for it in component if it is not best})
            run = [item] if item is not None else []
    for lost, kept in sorted(dropped.items()):
        log.info("%s %s dropped: same acquisition as %s (kept the newer processing)", label, lost, kept)
    return [it for it in items if it.id not in dropped], sorted(dropped.items())


def _footprint_components(items: list[pystac.Item]) -> list[list[pystac.Item]]:
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            if _iou(items[i], items[j]) >= SAME_FOOTPRINT_IOU:
                parent[find(i)] = find(j)
    components: dict[int, list[pystac.Item]] = {}
    for i, item in enumerate(items):
        components.setdefault(find(i), []).append(item)
    return list(components.values())


class SearchCounters:
    """Thread-safe running totals of a backend (``requests``, ``retries``, ``pages``, ...)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        """Add ``n`` to ``key``."""
        with self._lock:
            self._counts[key] += n

    def snapshot(self) -> Counter[str]:
        """A copy of the totals."""
        with self._lock:
            return Counter(self._counts)


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
        found, repeated = unique_ids(found)
        self.counters.add(f"repeated_ids:{query.collection}", repeated)
        found = _sorted(found)
        return found[: query.max_items] if query.max_items else found


# --------------------------------------------------------------------------- STAC API


def safe_url(url: str) -> str:
    """``url`` without credentials, query string or fragment, fit for an error message or a log line."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "…" if parts.query else "", ""))


#: HTTP statuses that are retried: rate limited, and server errors that may pass.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Longest wait between two attempts, seconds.
MAX_BACKOFF_S = 30.0


#: Transport errors that are retried: connect errors, resets, time-outs, a body cut short.
_TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class _Cancelled(Exception):
    """Another partition failed: stop this one."""


class RequestFailed(ServiceError):
    """An HTTP request of a search failed on every attempt (5xx, connection errors or time-outs)."""


_URL_IN_TEXT = re.compile(r"https?://[^\s'\"<>)]+")


def safe_url_in_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`safe_url` (exception messages quote URLs)."""
    return _URL_IN_TEXT.sub(lambda m: safe_url(m.group(0)), text)[:300]


class RetryingStacApiIO(StacApiIO):
    """``StacApiIO`` whose every request retries 5xx / 408 / 429, connection errors and time-outs.

    Attempts are ``retries + 1``; the wait before retry *k* is ``backoff_s * 2**(k-1)`` (at most
    :data:`MAX_BACKOFF_S`, or the server's ``Retry-After`` when longer), half of it random. Each
    attempt has the time-out ``timeout_s`` (connect, and each read). Every attempt and retry is
    counted in ``counters``. When ``cancel`` is set the retries stop.

    An own loop rather than urllib3's ``Retry`` on the session adapter (what ``max_retries`` of
    ``StacApiIO`` sets): urllib3 retries until the response headers arrive, but requests reads the
    body afterwards, so a connection reset or stalled mid-body escapes it (checked with
    ``tests/support/fault_proxy.py``'s ``truncated`` fault); and the final error here names the
    attempts and the last status.

    Raises:
        RequestFailed: every attempt failed; names the method, the URL (no credentials or query
            string) and the last status or error.
        APIError: a status that is not retried (4xx); as pystac-client raises it.
    """

    def __init__(
        self,
        *,
        retries: int,
        timeout_s: float,
        backoff_s: float,
        counters: SearchCounters,
        cancel: threading.Event | None = None,
    ) -> None:
        super().__init__(timeout=timeout_s, max_retries=None)
        self.retries = retries
        self.backoff_s = backoff_s
        self.counters = counters
        self.cancel = cancel
        self._jitter = random.Random()

    def request(
        self,
        href: str,
        method: str | None = None,
        headers: dict[str, str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> str:
        """Send one request (JSON body for POST, query string for GET) with retries; the body as text."""
        method = (method or "GET").upper()
        if method in ("POST", "PUT", "PATCH"):
            req = requests.Request(method=method, url=href, headers=headers, json=parameters)
        else:
            req = requests.Request(method=method, url=href, headers=headers, params=dict(parameters or {}))
        modified = self._req_modifier(req) if self._req_modifier else None
        prepped = self.session.prepare_request(modified or req)
        settings = self.session.merge_environment_settings(prepped.url, proxies={}, stream=None, verify=True, cert=None)
        last = ""
        for attempt in range(1, self.retries + 2):
            self.counters.add("requests")
            retry_after: float | None = None
            try:
                resp = self.session.send(prepped, timeout=self.timeout, **settings)
            except _TRANSIENT as exc:
                last = f"{type(exc).__name__}: {safe_url_in_text(str(exc))}"
            except requests.RequestException as exc:  # invalid URL, too many redirects: not transient
                raise APIError(f"{method} {safe_url(href)}: {type(exc).__name__}: {exc}") from None
            else:
                if 200 <= resp.status_code < 300:
                    return resp.content.decode("utf-8")
                if resp.status_code not in RETRY_STATUSES:
                    raise APIError.from_response(resp)
                last = f"HTTP {resp.status_code}"
                retry_after = _retry_after(resp.headers.get("Retry-After"))
            if attempt > self.retries:
                break
            delay = min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1))
            delay = delay / 2 + self._jitter.uniform(0, delay / 2)
            if retry_after is not None:
                delay = max(delay, min(retry_after, MAX_BACKOFF_S))
            self.counters.add("retries")
            log.debug("%s %s: %s; retry %d/%d in %.2f s", method, safe_url(href), last, attempt, self.retries, delay)
            if self.cancel is not None and self.cancel.wait(delay):
                raise _Cancelled
            if self.cancel is None:
                time.sleep(delay)
        raise RequestFailed(f"{method} {safe_url(href)} failed {self.retries + 1} times; last: {last}")


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


SORTBY = [{"field": "properties.datetime", "direction": "asc"}, {"field": "id", "direction": "asc"}]


def _utc(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def _fmt(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def datetime_partitions(
    interval: str | None, extent: tuple[datetime | None, datetime | None], n: int
) -> list[str | None]:
    """Split a datetime filter into ``n`` contiguous sub-intervals, inclusive at both ends.

    The known span is ``interval`` clipped to the collection's temporal ``extent``; the first and
    the last sub-interval keep the query's own open or closed ends, so their union is exactly the
    query whatever the extent says. One partition (``[interval]``) when ``n`` is 1, the query is a
    single instant, or the span is unknown or empty. An item on a boundary is found twice (and
    kept once by :func:`unique_ids`).
    """
    if n <= 1 or (interval is not None and "/" not in interval):
        return [interval]
    try:
        q_start, q_end = parse_interval(interval) if interval else (None, None)
    except CatalogError:
        return [interval]
    lo = max((t for t in (q_start, extent[0]) if t is not None), default=None)
    hi = min((t for t in (q_end, extent[1]) if t is not None), default=None)
    if lo is None or hi is None or hi <= lo:
        return [interval]
    start_text, end_text = interval.split("/", 1) if interval else ("..", "..")
    cuts = [_fmt(lo + (hi - lo) * i / n) for i in range(1, n)]
    return [f"{a}/{b}" for a, b in zip([start_text, *cuts], [*cuts, end_text], strict=True)]


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
        return _utc(start), _utc(end)

    def _partition(self, query: SearchQuery, when: str | None, cancel: threading.Event) -> list[dict[str, Any]]:
        """Every feature of one partition, page after page; stops early once ``max_items`` are certain."""
        n = query.max_items
        kwargs: dict[str, Any] = {"collections": [query.collection], "datetime": when}
        if query.bbox:
            kwargs["bbox"] = list(query.bbox)
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
                dt = _instant(feature.get("properties", {}).get("datetime"))
                if ordered and (dt == _MIN_DT or (last is not None and dt < last)):
                    ordered = False  # the server did not sort: max_items needs every item
                    log.info("STAC API %s: results of %r not sorted by datetime", safe_url(self.url), query.collection)
                last = dt
                if n and len(seen) == n:
                    nth = dt
            # sorted by datetime: every item up to the n-th distinct one's datetime is in (ties included)
            if ordered and nth is not None and last is not None and last > nth:
                break
            if cancel.is_set():
                raise _Cancelled
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
            errors = [e for e in failed if not isinstance(e, _Cancelled)]
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
        items = _sorted(items)
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
    s2 = backend.search(SearchQuery(cfg.s2_collection, bbox, cfg.datetime, cfg.max_cloud_cover, cfg.max_items))
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
