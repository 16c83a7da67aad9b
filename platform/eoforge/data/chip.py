"""One chip of a plan row, read alone: the entry point for notebooks, tests and checks.

:func:`read_chip_raw` and :func:`read_chip` run the tile-aware reader
(:func:`eoforge.data.tiles.read_rows`) on one row, so a chip read alone equals the same chip
streamed by Ray Data; every file is opened (and its href signed) for the call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eoforge.data.files import DatasetCache
from eoforge.data.normalize import S1_DB_MEAN, S1_DB_STD, S2_L2A_MEAN, S2_L2A_STD, normalize
from eoforge.data.tiles import VALID_S1, VALID_S2, RawChip, read_rows
from eoforge.errors import ChipReadError


@dataclass
class Chip:
    """One chip in model units.

    Attributes:
        s1: float32 [2, H, W], VV and VH (normalised, or dB with ``normalize='none'``).
        s2: float32 [12, H, W], bands in S2_BAND_NAMES order (normalised, or reflectance x 10000).
        valid_fraction: the smaller of the sensors' valid-pixel shares (S2: not nodata, not cloud; S1:
            not nodata), [0, 1].
        label: uint8 [H, W] class ids (255 = ignore), or None when the plan has no label.
    """

    s1: np.ndarray
    s2: np.ndarray
    valid_fraction: float
    label: np.ndarray | None = None


def read_chip_raw(row: dict[str, object]) -> RawChip:
    """Read the chip of one plan row in storage units (uint16 S2, float16 S1 dB, per-sensor valid mask).

    The same code path as the tile-aware reader (:func:`eoforge.data.tiles.read_rows` with one
    row), so both give the same pixels. Every file is opened (and its href signed) for this call.

    Raises:
        ChipReadError: an asset is missing from the row, its file cannot be read or georeferenced.
    """
    cache = DatasetCache()
    try:
        (result,) = read_rows([row], cache)
    finally:
        cache.close()
    if isinstance(result, ChipReadError):
        raise result
    return result


def read_chip(row: dict[str, object], mode: str = "ssl4eo") -> Chip:
    """Read the chip of one plan row, normalised (float32).

    Args:
        row: a plan row with ``crs``, ``transform`` (6 numbers), ``size_px``, ``s2_assets``,
            ``s1_assets`` (JSON band -> href), ``scl_href`` and ``label_href`` (may be None); and,
            from plans with provider profiles, ``s2_radiometry`` (JSON band -> [gain, offset]),
            ``s1_units``, ``s1_calibration`` (JSON band -> href) and ``access`` (JSON per sensor:
            ``signing`` hook name and GDAL ``env``). Rows without them read as dB S1, DN-as-is S2.
        mode: normalisation, see :mod:`eoforge.data.normalize`.

    Returns:
        the pixels of :func:`read_chip_raw` (S2 rounded to integer reflectance x 10000, S1 dB
        in float16 precision) normalised to float32.

    Raises:
        ChipReadError: an asset is missing from the row, its file cannot be read or georeferenced.
    """
    raw = read_chip_raw(row)
    return Chip(
        s1=normalize(raw.s1.astype(np.float32), S1_DB_MEAN, S1_DB_STD, raw.valid[VALID_S1], mode),
        s2=normalize(raw.s2.astype(np.float32), S2_L2A_MEAN, S2_L2A_STD, raw.valid[VALID_S2], mode),
        valid_fraction=raw.valid_fraction,
        label=raw.label,
    )
