"""Are a chip's values plausible for the units its plan row declares? One verdict per item and process.

A Sentinel-1 item read through the wrong provider profile comes out as numbers no radar measures
(GRD amplitude DN taken as dB: +60..+360 "dB"; RTC linear power taken as GRD amplitude: -84..-63 dB),
and a Sentinel-2 item with the wrong ``s2_radiometry`` as reflectances no surface has. The reader
(:func:`eoforge.data.tiles.read_rows`) hands each assembled batch of one file set (a tile group's
chips of one S1/S2 item pair) to :func:`check_batch` until each of its items has a verdict, made on
the valid pixels pooled over the batch's first :data:`CHECK_CHIPS` chips (at least
:data:`MIN_PIXELS`; a sample of at most :data:`SAMPLE` per band). The verdict is kept per reading
process (:data:`_VERDICTS`), keyed by the item's files and their declared units / radiometry, so
afterwards a plausible item costs one dict look-up per batch and an implausible one is refused
before its pixels are read (:func:`known_reason`). Its chips come out as
:class:`~eoforge.errors.ImplausibleItemError` (a :class:`~eoforge.errors.ChipReadError`) with a
reason that names the item, the provider profile, what was seen and the likely cause: skipped and
counted like any unreadable chip.

Rules (documented in docs/providers.md, "Values that no sensor measures"):

- S1, per polarisation, in dB after the declared units' conversion: at least
  :data:`S1_MIN_INSIDE` of the valid pixels inside :data:`S1_DB_RANGE` (-50..+30 dB: below the
  noise floor of any S1 mode, above the brightest corner reflectors); the median inside
  :data:`S1_MEDIAN_RANGE` (-40..+10 dB: whole scenes, from calm water to dense cities); not
  (nearly) all of them inside 0..1 "dB" (linear power taken as dB); and for ``linear`` /
  ``amplitude`` units, not (nearly) all raw values negative (dB taken as linear: no value survives).
- S2, in reflectance x 10000 after the item's gain/offset (the stored uint16), over the valid
  pixels of all 12 bands: at least :data:`S2_MIN_INSIDE` at or below :data:`S2_MAX` (reflectance
  1.6; fresh snow and specular glint stay below about 1.2), and a median of at least
  :data:`S2_MIN_MEDIAN` (reflectance 0.001: darker than clear deep water in every band at once, i.e.
  reflectance 0..1 stored as if it were x 10000, or a scale applied twice).

:func:`check_plan_items` reads a few chips of each of a plan's items on the driver and stops a job
whose checked items all fail with that reason (:class:`~eoforge.errors.ImplausibleDataError`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cachetools
import numpy as np

from eoforge.errors import ImplausibleItemError

__all__ = ["ImplausibleItemError", "ItemNames", "check_batch", "known_reason", "s1_reason", "s2_reason"]

if TYPE_CHECKING:
    from eoforge.data.plan_rows import _Files

#: S1 dB range of nearly every valid pixel, dB.
S1_DB_RANGE = (-50.0, 30.0)
#: Share of an S1 item's valid pixels that must lie inside :data:`S1_DB_RANGE`, per polarisation.
S1_MIN_INSIDE = 0.99
#: Range of an S1 item's median, dB, per polarisation.
S1_MEDIAN_RANGE = (-40.0, 10.0)
#: Share of values inside 0..1 "dB" (or of raw values below 0 under linear/amplitude units) that marks
#: linear power read as dB (dB read as linear).
SIGNATURE_SHARE = 0.99
#: Largest plausible S2 reflectance x 10000 (reflectance 1.6).
S2_MAX = 16000
#: Share of an S2 item's valid pixels (all bands) at or below :data:`S2_MAX`.
S2_MIN_INSIDE = 0.99
#: Smallest plausible median S2 reflectance x 10000 over all bands (reflectance 0.001).
S2_MIN_MEDIAN = 10
#: Valid pixels (per sensor, pooled over a batch) needed before an item gets a verdict.
MIN_PIXELS = 256
#: Chips of a batch looked at, at most (their valid pixels pooled).
CHECK_CHIPS = 8
#: Values per band looked at, at most (a strided sample of a batch's valid pixels).
SAMPLE = 1 << 16
#: Items with a verdict a reading process keeps.
VERDICTS_KEPT = 4096
#: (sensor, files, units/radiometry) -> "" (plausible) or the reason (implausible), per process.
_VERDICTS: cachetools.LRUCache = cachetools.LRUCache(maxsize=VERDICTS_KEPT)

#: Profiles to name for each kind of S1 data (built-in names of eoforge.catalog.providers).
_FOR_GRD = "profile 'planetary_computer' (sentinel-1-grd) or 'earth_search', or set catalog.s1_units: amplitude"
_FOR_RTC = "profile 'planetary_computer' (sentinel-1-rtc) or 'aws_rtc', or set catalog.s1_units: linear"
_FOR_DB = "set catalog.s1_units: dB (or a profile that declares dB, e.g. 'eoforge')"


@dataclass(frozen=True)
class ItemNames:
    """Who to name in a reason: the plan row's items and provider profile."""

    s1_item: str
    s2_item: str
    provider: str

    @classmethod
    def of(cls, row: dict[str, Any]) -> ItemNames:
        """The names of a plan row (``?`` where an older plan lacks the column)."""
        return cls(str(row.get("s1_item") or "?"), str(row.get("s2_item") or "?"), str(row.get("provider") or "?"))


#: The names of a row that lacks them.
UNKNOWN = ItemNames("?", "?", "?")


def _s1_key(files: _Files) -> tuple[object, ...]:
    # set_key: (s2 hrefs, s1 hrefs, scl, label, s1 units, radiometry, calibration, s1 access)
    return ("s1", files.set_key[1], files.set_key[4], files.set_key[6])


def _s2_key(files: _Files) -> tuple[object, ...]:
    return ("s2", files.set_key[0], files.set_key[5])


def clear_verdicts() -> None:
    """Forget every verdict of this process (benchmarks: a fresh reading process)."""
    _VERDICTS.clear()


def known_reason(files: _Files) -> str | None:
    """The reason an item of ``files`` was found implausible in this process, or None (plausible or unknown)."""
    return _VERDICTS.get(_s1_key(files)) or _VERDICTS.get(_s2_key(files)) or None


def needs_check(files: _Files) -> bool:
    """Whether an item of ``files`` has no verdict yet in this process."""
    return _s1_key(files) not in _VERDICTS or _s2_key(files) not in _VERDICTS


def raw_negative_share(band: np.ndarray) -> float:
    """Share of the finite values of an S1 band as read (before dB) that are negative; NaN if too few."""
    finite = band[np.isfinite(band)]
    return float(np.mean(finite < 0)) if finite.size >= MIN_PIXELS else float("nan")


def _sample(values: np.ndarray) -> np.ndarray:
    return values[:: max(1, values.size // SAMPLE)]


def _signed(x: float) -> str:
    return f"{x:+.1f}"


def s1_reason(db: np.ndarray, units: str, names: ItemNames, raw_negative: float = float("nan")) -> str | None:
    """Why an S1 item's dB values are implausible, or None; "" when there are too few valid pixels to say.

    Args:
        db: float32 [N, 2, H, W], VV and VH in dB after the declared units' conversion (NaN: no value).
        units: the plan row's ``s1_units``.
        names: the row's items and profile.
        raw_negative: share of finite values below 0 as read (:func:`raw_negative_share`), for
            ``linear`` / ``amplitude`` units.
    """
    where = f"S1 item {names.s1_item} (provider profile {names.provider!r}, s1_units {units!r})"
    if units != "dB" and raw_negative >= SIGNATURE_SHARE:
        return (
            f"{where}: {raw_negative:.0%} of the values as read are negative, which {units} values never are; "
            f"this looks like data already in dB: {_FOR_DB}"
        )
    lo, hi = S1_DB_RANGE
    for k, pol in enumerate(("VV", "VH")):
        values = db[:, k].ravel()
        values = _sample(values[np.isfinite(values)])
        if values.size < MIN_PIXELS:
            return ""
        median = float(np.median(values))
        inside = float(np.mean((values >= lo) & (values <= hi)))
        unit_like = float(np.mean((values >= 0) & (values <= 1)))
        seen = f"{pol} median {_signed(median)} 'dB', {inside:.0%} of valid pixels inside {lo:g}..{hi:+g} dB"
        median_ok = S1_MEDIAN_RANGE[0] <= median <= S1_MEDIAN_RANGE[1]
        if inside >= S1_MIN_INSIDE and median_ok and unit_like < SIGNATURE_SHARE:
            continue
        return f"{where}: {seen}; {_s1_cause(units, median, unit_like)}"
    return None


def _s1_cause(units: str, median: float, unit_like: float) -> str:
    """The likely cause of implausible S1 values and what to do, from the declared units and the median."""
    if unit_like >= SIGNATURE_SHARE:
        return f"this looks like linear power (RTC gamma0 / sigma0, 0..1) read as dB: use {_FOR_RTC}"
    if units == "dB" and median > S1_MEDIAN_RANGE[1]:
        return f"this looks like GRD amplitude DN (tens to thousands) read as dB: use {_FOR_GRD}"
    if units == "amplitude" and median < S1_MEDIAN_RANGE[0]:
        return f"this looks like linear power (an RTC product, 0..1) read as GRD amplitude DN: use {_FOR_RTC}"
    if units == "linear" and median > S1_MEDIAN_RANGE[1]:
        return f"this looks like GRD amplitude DN read as linear power: use {_FOR_GRD}"
    return "the declared units do not match the data: check the provider profile and catalog.s1_units"


def s2_reason(s2: np.ndarray, valid: np.ndarray, radiometry: dict[str, list[float]], names: ItemNames) -> str | None:
    """Why an S2 item's reflectances are implausible, or None; "" when there are too few valid pixels to say.

    Args:
        s2: uint16 [N, 12, H, W] reflectance x 10000 after the row's gain/offset (as stored).
        valid: bool [N, H, W] S2 valid pixels.
        radiometry: the row's ``s2_radiometry`` (band -> [gain, offset]).
        names: the row's items and profile.
    """
    if int(valid.sum()) * s2.shape[1] < MIN_PIXELS:
        return ""
    values = _sample(np.moveaxis(s2, 1, 0)[:, valid].ravel())
    median = float(np.median(values))
    inside = float(np.mean(values <= S2_MAX))
    if inside >= S2_MIN_INSIDE and median >= S2_MIN_MEDIAN:
        return None
    gains = sorted({tuple(v) for v in radiometry.values()}) or [(1.0, 0.0)]
    where = f"S2 item {names.s2_item} (provider profile {names.provider!r}, s2_radiometry gain/offset {gains})"
    seen = f"median reflectance x 10000 {median:.0f}, {inside:.0%} of valid pixels at or below {S2_MAX}"
    if median < S2_MIN_MEDIAN:
        cause = (
            "this looks like reflectance 0..1 stored as if it were x 10000, or a scale applied twice: "
            "check the item's raster:bands scale and the profile"
        )
    else:
        cause = "this looks like a gain applied to values already x 10000: check the item's raster:bands scale"
    return f"{where}: {seen}; {cause}"


def check_batch(
    files: _Files,
    names: ItemNames,
    s1_db: np.ndarray,
    s2: np.ndarray,
    valid: np.ndarray,
    at: np.ndarray,
    raw_negative: float = float("nan"),
) -> str | None:
    """Give the items of ``files`` a verdict from one assembled batch (where they have none); the reason if implausible.

    Looks at the batch's first :data:`CHECK_CHIPS` chips (a 64 px chip has 4096 pixels a band).

    Args:
        files: the batch's file set (all its chips share it).
        names: who to name in a reason.
        s1_db: float32 [N, 2, H, W] dB (as :func:`s1_reason`).
        s2: the assembled S2 output, uint16 [M, 12, H, W].
        valid: the assembled valid masks, bool [M, 2, H, W] (channel 0: S2).
        at: int [N] the output row of each chip of the batch.
        raw_negative: as :func:`s1_reason`.
    """
    rows = at[:CHECK_CHIPS]
    s1_db, s2, s2_valid = s1_db[:CHECK_CHIPS], s2[rows], valid[rows, 0]
    reasons = []
    for key, reason_of in (
        (_s1_key(files), lambda: s1_reason(s1_db, files.units, names, raw_negative)),
        (_s2_key(files), lambda: s2_reason(s2, s2_valid, files.radiometry, names)),
    ):
        if key in _VERDICTS:
            reasons.append(_VERDICTS[key])
            continue
        reason = reason_of()
        if reason != "":  # "": too few valid pixels, no verdict yet
            _VERDICTS[key] = reason or ""
        reasons.append(reason or "")
    found = [r for r in reasons if r]
    return "; ".join(found) if found else None
