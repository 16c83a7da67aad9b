"""RFC 3339 instants and intervals of STAC queries and items, as UTC datetimes."""

from __future__ import annotations

from datetime import UTC, datetime

from eoforge.errors import CatalogError


def parse_instant(text: str) -> datetime | None:
    """An RFC 3339 instant as a UTC datetime; None for an open end (``""`` or ``..``)."""
    if text in ("", ".."):
        return None
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def parse_interval(value: str) -> tuple[datetime | None, datetime | None]:
    """Parse ``start/end`` (either may be ``..``) or a single instant into UTC datetimes."""
    try:
        if "/" in value:
            start, end = value.split("/", 1)
            return parse_instant(start), parse_instant(end)
        instant = parse_instant(value)
        return instant, instant
    except ValueError as exc:
        raise CatalogError(f"datetime {value!r}: not an RFC 3339 instant or interval ({exc})") from None


#: Sorts before every real instant (items without a datetime).
MIN_DT = datetime.min.replace(tzinfo=UTC)
