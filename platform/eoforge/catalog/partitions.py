"""Datetime partitions of one STAC search: parallel searches whose union is exactly the query."""

from __future__ import annotations

from datetime import UTC, datetime

from eoforge.errors import CatalogError
from eoforge.times import parse_interval


def utc(dt: datetime | None) -> datetime | None:
    """``dt`` with UTC attached when it is naive."""
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def fmt_utc(dt: datetime) -> str:
    """RFC 3339 with microseconds, in UTC (``...Z``)."""
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
    cuts = [fmt_utc(lo + (hi - lo) * i / n) for i in range(1, n)]
    return [f"{a}/{b}" for a, b in zip([start_text, *cuts], [*cuts, end_text], strict=True)]
