"""HTTP for STAC API searches: retries with backoff and jitter, counters, URLs safe to log."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from typing import Any

import requests
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO

from eoforge.errors import ServiceError
from eoforge.redact import redact, redact_url

log = logging.getLogger(__name__)


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


def safe_url(url: str) -> str:
    """``url`` without credentials, query string or fragment, fit for an error message or a log line."""
    return redact_url(url)


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


class SearchCancelled(Exception):
    """Another partition failed: stop this one."""


class RequestFailed(ServiceError):
    """An HTTP request of a search failed on every attempt (5xx, connection errors or time-outs)."""


def safe_url_in_text(text: str) -> str:
    """``text`` with every URL in it redacted (:func:`eoforge.redact.redact`), cut to 300 characters."""
    return redact(text)[:300]


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
                raise SearchCancelled
            if self.cancel is None:
                time.sleep(delay)
        raise RequestFailed(f"{method} {safe_url(href)} failed {self.retries + 1} times; last: {last}")


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
