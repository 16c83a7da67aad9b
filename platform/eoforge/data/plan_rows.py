"""A plan row's cells parsed for the tile reader: its chip grid, its files and their settings.

Every row of a scene pair has the same asset, radiometry, calibration and access cells, so they are
parsed once per distinct cells (:func:`_files`, cached) and rows whose cells match assemble together
(:attr:`_Files.set_key`). The reader (:func:`eoforge.data.tiles.read_rows`) parses each row with
:func:`_parse`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES
from eoforge.data.grid_keys import ChipGridKey
from eoforge.errors import ChipReadError


def chip_grid(row: dict[str, Any]) -> ChipGridKey:
    """The chip grid of a plan row."""
    return ChipGridKey(str(row["crs"]), tuple(float(v) for v in list(row["transform"])[:6]), int(row["size_px"]))


def _json_cell(row: dict[str, Any], key: str, default: object) -> Any:
    value = row.get(key)
    if isinstance(value, str) and value:
        return json.loads(value)
    return default


def _href(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class _Files:
    """What the rows of one scene pair share: their assets, radiometry, calibration, access (parsed once)."""

    s2_assets: dict[str, str]
    s1_assets: dict[str, str]
    radiometry: dict[str, list[float]]
    calibration: dict[str, str]
    access: dict[str, Any]
    units: str
    scl: str | None
    label: str | None
    #: what makes chips assemble alike (with their size): files, units, radiometry, calibration, S1 access
    set_key: tuple[object, ...]


@functools.lru_cache(maxsize=1024)
def _files(
    s2_assets: str, s1_assets: str, radiometry: object, calibration: object, access: object, units: object,
    scl: object, label: object,
) -> _Files:  # fmt: skip
    """The parsed cells of a row (cached: every row of a scene pair has the same cells).

    Raises:
        ChipReadError: a band has no asset (the caller names the chip).
    """
    s2, s1 = json.loads(s2_assets), json.loads(s1_assets)
    missing = [b for b in S2_BAND_NAMES if not s2.get(b)] + [b for b in S1_BAND_NAMES if not s1.get(b)]
    if missing:
        raise ChipReadError(f"no asset for bands {missing}")
    cells = {"s2_radiometry": radiometry, "s1_calibration": calibration, "access": access}
    rad, cal, acc = (_json_cell(cells, k, {}) for k in cells)
    s1_units, scl_href, label_href = str(units or "dB"), _href(scl), _href(label)
    set_key = (
        tuple(s2[b] for b in S2_BAND_NAMES),
        tuple(s1[b] for b in S1_BAND_NAMES),
        scl_href,
        label_href,
        s1_units,
        json.dumps(rad, sort_keys=True),
        json.dumps(cal, sort_keys=True),
        json.dumps(acc.get("s1", {}), sort_keys=True),
    )
    return _Files(s2, s1, rad, cal, acc, s1_units, scl_href, label_href, set_key)


@dataclass
class _Parsed:
    grid: ChipGridKey
    files: _Files


#: The optional cells of a row that :func:`_files` parses, after its two asset cells.
_FILE_CELLS = ("s2_radiometry", "s1_calibration", "access", "s1_units", "scl_href", "label_href")


def _parse(row: dict[str, Any]) -> _Parsed:
    try:
        files = _files(str(row["s2_assets"]), str(row["s1_assets"]), *(row.get(c) for c in _FILE_CELLS))
    except ChipReadError as exc:
        raise ChipReadError(f"chip {row.get('chip_id')}: {exc}") from None
    return _Parsed(grid=chip_grid(row), files=files)
