"""De-duplication of STAC search results.

- :func:`unique_ids`: each item id once (copies come from overlapping pages or the inclusive ends
  of datetime partitions), the same copy whatever order they arrive in;
- :func:`dedup_acquisitions`: the same acquisition published twice under different ids (Sentinel-2
  reprocessed with a newer processing baseline; Sentinel-1 slices): the newest processing is kept.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import pystac
from shapely.geometry import shape

from eoforge.times import MIN_DT, parse_instant

log = logging.getLogger(__name__)


def sort_key(item: pystac.Item) -> tuple[datetime, str]:
    """Search order: (datetime, id); items without a datetime first."""
    return (item.datetime or MIN_DT, item.id)


def sorted_items(items: Iterable[pystac.Item]) -> list[pystac.Item]:
    """Items in search order (:func:`sort_key`)."""
    return sorted(items, key=sort_key)


def property_instant(value: Any) -> datetime:
    """A property's RFC 3339 instant, or the smallest datetime when absent or unparsable."""
    if not value:
        return MIN_DT
    try:
        return parse_instant(str(value)) or MIN_DT
    except ValueError:
        return MIN_DT


def _rank(item: pystac.Item) -> tuple[float, datetime, datetime, str]:
    """Which copy wins: newest processing baseline, then latest ``updated``, ``created``, then largest id."""
    from eoforge.catalog.radiometry import processing_baseline

    props = item.properties
    baseline = processing_baseline(item)
    return (
        -1.0 if baseline is None else baseline,
        property_instant(props.get("updated")),
        property_instant(props.get("created")),
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
        members = sorted_items(members)
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
