"""Split assignment: a chip's train / val / test split from its place and the seed, or its S2 item's property."""

from __future__ import annotations

import hashlib

import pystac

from eoforge.config import SplitConfig


def _place_u(crs: str, x0: float, y0: float, seed: int) -> float:
    """A number in [0, 1) that depends only on the place (CRS, chip origin) and the seed."""
    digest = hashlib.sha256(f"{crs}:{x0:.3f}:{y0:.3f}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(crs: str, x0: float, y0: float, seed: int, splits: SplitConfig) -> str:
    """Deterministic split of a place: hash(crs, chip origin, seed) -> train / val / test."""
    u = _place_u(crs, x0, y0, seed)
    if u < splits.train:
        return "train"
    return "val" if u < splits.train + splits.val else "test"


def item_split(item: pystac.Item, splits: SplitConfig) -> tuple[str | None, str | None]:
    """(split, None) an item's property gives with ``splits.by_property``, or (None, why not).

    The split is before the val carve-out (:func:`chip_split`). Without ``by_property``: (None, None).
    """
    by = splits.by_property
    if by is None:
        return None, None
    if by.name not in item.properties:
        return None, f"split: S2 item has no property {by.name!r} (splits.by_property.name)"
    value = str(item.properties[by.name])
    if value in by.map:
        return by.map[value], None
    if by.unmapped is not None:
        return by.unmapped, None
    return None, f"split: {by.name}={value!r} is not in splits.by_property.map"


def chip_split(item_split_name: str | None, crs: str, x0: float, y0: float, seed: int, splits: SplitConfig) -> str:
    """The split of a chip: by place, or the item's split with val carved out of train by place."""
    by = splits.by_property
    if by is None or item_split_name is None:
        return split_of(crs, x0, y0, seed, splits)
    if item_split_name == "train" and by.val_fraction > 0 and _place_u(crs, x0, y0, seed) < by.val_fraction:
        return "val"
    return item_split_name
