"""Tile-aware chip reading: plan rows grouped by source tile, each tile read once, chips cut densely.

A random 64 px chip read on its own opens 15 COGs and decodes ~14 internal tiles of which it
uses < 2%. Here rows are grouped by the internal tile of their Sentinel-2 10 m COG that holds the
chip's origin (:func:`tile_key`; the block size and origin come from the COG's header). For a
group, every asset is opened once (:class:`eoforge.data.files.DatasetCache`, a bounded LRU per
reading process), the source window covering all of the group's chips is read once (decoding
each internal tile once), and the chips are cut from it with index/weight maps computed once per
(source grid, chip grid) (:mod:`eoforge.data.resample`), never a GDAL warp per chip. A row's
cells are parsed once per scene pair (:mod:`eoforge.data.plan_rows`).

:func:`read_rows` is the one code path: :func:`eoforge.data.chip.read_chip` calls it with a
single row, the Ray Data reader with a tile group, so both give the same pixels exactly.

Output (:class:`RawChip`), the units the training worker normalises (half the bytes of float32):

- ``s2``: uint16 [12, H, W], reflectance x 10000 after the plan's per-band gain/offset, rounded
  to the nearest integer and clipped to [0, 65535]; 0 where ``valid[0]`` is False;
- ``s1``: float16 [2, H, W], dB (VV, VH); 0 where ``valid[1]`` is False;
- ``valid``: bool [2, H, W], per sensor (:data:`VALID_S2`, :data:`VALID_S1`): S2 has data and its
  SCL is not cloud/shadow/saturated; S1 has data. A cloud hides S2 only: SAR sees through it;
- ``label``: uint8 [H, W] or None.

:class:`~eoforge.data.files.DatasetCache` is re-exported here, where callers import it.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import Affine
from rasterio.windows import Window

from eoforge.bands import S1_BAND_NAMES, S2_BAND_NAMES, S2_SCL_INVALID
from eoforge.catalog.assets import GDAL_ENV, resolve_signer
from eoforge.data import kernels, plausibility
from eoforge.data.calibration import grd_calibration_on_grid, s1_to_db
from eoforge.data.files import DatasetCache
from eoforge.data.grid import ChipGrid
from eoforge.data.grid_keys import ChipGridKey, mosaics
from eoforge.data.plan_rows import _json_cell, _parse, _Parsed
from eoforge.data.resample import apply_map
from eoforge.data.sample_maps import SampleMap, sample_map, union_bbox
from eoforge.errors import ChipReadError

__all__ = [
    "ASSEMBLE_CHIPS",
    "KEY_BAND",
    "S1_FILL",
    "VALID_S1",
    "VALID_S2",
    "Cut",
    "DatasetCache",
    "RawChip",
    "group_rows",
    "read_band_cuts",
    "read_rows",
    "tile_key",
]

#: The S2 band whose COG's internal tiles define the groups (a 10 m band).
KEY_BAND = "B04"
#: Chips assembled as one batch at most (float32 temporaries of ~1 MB a chip at 64 px: bounded memory).
ASSEMBLE_CHIPS = 32
#: Fill of S1 pixels with no valid source neighbour (masked). One object: it is part of a dict key.
S1_FILL = math.nan
#: True at the SCL classes that mask a pixel (:data:`eoforge.bands.S2_SCL_INVALID`), by class.
_SCL_INVALID_LUT = np.isin(np.arange(256), S2_SCL_INVALID)


#: Channels of a chip's per-sensor ``valid`` mask.
VALID_S2, VALID_S1 = 0, 1


@dataclass
class RawChip:
    """One chip in storage units (see module docstring for dtypes and units)."""

    s2: np.ndarray
    s1: np.ndarray
    valid: np.ndarray
    label: np.ndarray | None

    @property
    def valid_fractions(self) -> tuple[float, float]:
        """(S2, S1) share of pixels valid in each sensor, [0, 1] each."""
        return float(self.valid[VALID_S2].mean()), float(self.valid[VALID_S1].mean())

    @property
    def valid_fraction(self) -> float:
        """The smaller of the sensors' valid shares, [0, 1]: what ``min_valid_fraction`` is held to."""
        return min(self.valid_fractions)


def tile_key(row: dict[str, Any], cache: DatasetCache) -> str:
    """``<S2 key-band href>#<tile row>:<tile col>``: the internal tile holding the chip's origin.

    Raises:
        ChipReadError: the row has no key band or its file cannot be opened.
    """
    ((key, _),) = group_rows([row], cache)
    if key.startswith("!"):
        raise ChipReadError(f"chip {row.get('chip_id')}: no readable asset for band {KEY_BAND}")
    return key


#: Where a chip's pixels of one band are: (float32 [Hm, Wm] mosaic, row offset, col offset); with
#: ``stored`` (:func:`read_band_cuts`) the mosaic may be the uint16 window as read.
Cut = tuple[np.ndarray, int, int]
#: Placeholders for the unused entries of :func:`eoforge.data.kernels.assemble`'s two mosaic tuples.
_NO_U16, _NO_F32 = np.zeros((1, 1), np.uint16), np.zeros((1, 1), np.float32)


def read_band_cuts(
    href: str,
    grids: list[ChipGridKey],
    kind: str,
    fill: float,
    cache: DatasetCache,
    sign: Callable[[str], str] | None,
    stored: bool = False,
) -> list[Cut]:
    """Band 1 of ``href`` on each grid, one window read for all of them: one :data:`Cut` per grid.

    Chips on one lattice are sampled as mosaics (:func:`eoforge.data.grid_keys.mosaics`), one map
    and one resampling pass per mosaic, and each grid's cut is its place in its mosaic (no copies);
    a source georeferenced by GCPs is sampled chip by chip (its local GCP fit depends on the chip's
    centre). ``mosaic[dr:dr + H, dc:dc + W]`` is the grid's float32 [H, W] pixels.

    With ``stored`` (S2 bands, ``fill`` 0), a uint16 source whose mosaic lies on the chip grid
    (``aligned``) and inside the image, with no nodata or nodata 0, is cut from the window as read:
    uint16 pixels, no float32 copy (the same values; 0 stays 0, i.e. nodata, for the masks).
    """
    src = cache.get(href, sign)
    groups = [(g, [(k, 0, 0)]) for k, g in enumerate(grids)] if src.grid.gcps is not None else mosaics(grids)
    try:
        maps: list[SampleMap] = [sample_map(src.grid, g, kind) for g, _ in groups]
        r0, r1, c0, c1 = union_bbox(maps)
        if r0 < r1 and c0 < c1:
            data = src.ds.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
        else:
            data = np.zeros((0, 0), np.float32)
    except ChipReadError as exc:
        raise ChipReadError(f"{href}: {exc}") from None
    except (rasterio.errors.RasterioError, OSError, ValueError) as exc:
        raise ChipReadError(f"{href}: {type(exc).__name__}: {exc}") from None
    out: list[Cut | None] = [None] * len(grids)
    as_read = stored and fill == 0 and data.dtype == np.uint16 and src.nodata in (None, 0)
    for m, (_, members) in zip(maps, groups, strict=True):
        if as_read and m.kind == "aligned":
            r, c = int(m.rows[0]), int(m.cols[0])
            if m.bbox == (r, r + m.shape[0], c, c + m.shape[1]):  # inside the image: nothing to fill
                for k, dr, dc in members:
                    out[k] = (data, r - r0 + dr, c - c0 + dc)
                continue
        pixels = apply_map(m, data, (r0, c0), src.nodata, fill)
        for k, dr, dc in members:
            out[k] = (pixels, dr, dc)
    return out  # type: ignore[return-value]


def read_rows(
    rows: list[dict[str, Any]], cache: DatasetCache, into: tuple[dict[str, np.ndarray], list[int]] | None = None
) -> list[RawChip | ChipReadError]:
    """Read the chips of ``rows`` (best: one tile group), each asset window read once.

    ``into`` = (chip block, block row of each of ``rows``): the chips' ``s2``, ``s1`` and ``valid`` are
    written straight into the block's arrays of those names (uint16 / float16 / bool, [B, ...]) and each
    :class:`RawChip` views its rows there, so the block needs no copy. Rows that come back as errors
    may have been written too; the caller clears them.

    Returns:
        one entry per row, in order: its :class:`RawChip`, or the :class:`ChipReadError` that
        stopped it (missing asset, unreadable file, no georeferencing).
    """
    out: list[RawChip | ChipReadError | None] = [None] * len(rows)
    parsed: dict[int, _Parsed] = {}
    for i, row in enumerate(rows):
        try:
            parsed[i] = _parse(row)
        except ChipReadError as exc:
            out[i] = exc
            continue
        reason = plausibility.known_reason(parsed[i].files)
        if reason:  # an item this process found implausible: refused before any of its pixels are read
            out[i] = plausibility.ImplausibleItemError(reason)
            del parsed[i]
    # (sensor, href, kind, fill) -> row indices; pixels per (row index, name). The fill is one
    # object (S1_FILL): a fresh float("nan") per row is a new key (nan != nan), which read S1 chip by chip
    jobs: dict[tuple[str, str, str, float], list[int]] = {}
    for i, p in parsed.items():
        for b in S2_BAND_NAMES:
            jobs.setdefault(("s2", p.files.s2_assets[b], "bilinear", 0.0), []).append(i)
        if p.files.scl:
            jobs.setdefault(("s2", p.files.scl, "nearest", 0.0), []).append(i)
        if p.files.label:
            jobs.setdefault(("s2", p.files.label, "nearest", 255.0), []).append(i)
        for b in S1_BAND_NAMES:
            jobs.setdefault(("s1", p.files.s1_assets[b], "bilinear", S1_FILL), []).append(i)
    pixels: dict[tuple[int, str, str], Cut] = {}
    # one GDAL environment per (sensor, access settings), entered once for all of its files
    by_env: dict[str, list[tuple[tuple[str, str, str, float], list[int]]]] = {}
    for job, idx in jobs.items():
        access = parsed[idx[0]].files.access.get(job[0], {})
        by_env.setdefault(json.dumps(access, sort_keys=True), []).append((job, idx))
    for access_json, env_jobs in by_env.items():
        access = json.loads(access_json)
        sign = resolve_signer(access.get("signing"))
        with rasterio.Env(**GDAL_ENV, **access.get("env", {})):
            for (sensor, href, kind, fill), idx in env_jobs:
                idx = [i for i in idx if out[i] is None]
                if not idx:
                    continue
                try:
                    grids = [parsed[i].grid for i in idx]
                    bands = read_band_cuts(
                        href, grids, kind, fill, cache, sign, stored=sensor == "s2" and kind == "bilinear"
                    )
                except ChipReadError as exc:
                    for i in idx:
                        out[i] = exc
                    continue
                for i, band in zip(idx, bands, strict=True):
                    pixels[(i, href, kind)] = band
    # chips of one file set (same files, units and radiometry: a tile group's chips) are assembled together
    sets: dict[tuple[object, ...], list[int]] = {}
    for i, p in parsed.items():
        if out[i] is None:
            sets.setdefault(_file_set(p), []).append(i)
    for members in sets.values():
        for k in range(0, len(members), ASSEMBLE_CHIPS):
            idx = members[k : k + ASSEMBLE_CHIPS]
            try:
                block = None if into is None else (into[0], [into[1][i] for i in idx])
                names = plausibility.ItemNames.of(rows[idx[0]])
                chips = _assemble(idx, [parsed[i] for i in idx], pixels, block, names)
            except ChipReadError as exc:  # e.g. unknown S1 units: every chip of the set, with the reason
                chips = [exc] * len(idx)
            for i, chip in zip(idx, chips, strict=True):
                out[i] = chip
    return out  # type: ignore[return-value]


def _file_set(p: _Parsed) -> tuple[object, ...]:
    """What makes chips assemble alike: their files, units, radiometry, calibration, S1 access and size."""
    return (*p.files.set_key, p.grid.size)


def _assemble(
    idx: list[int],
    ps: list[_Parsed],
    pixels: dict[tuple[int, str, str], Cut],
    into: tuple[dict[str, np.ndarray], list[int]] | None = None,
    names: plausibility.ItemNames = plausibility.UNKNOWN,
) -> list[RawChip | ChipReadError]:
    """The chips ``idx`` of one file set (``ps``: their parsed rows), assembled as one [N, ...] batch.

    ``into``: (chip block, block row of each chip): outputs written there (see :func:`read_rows`).
    ``names``: the set's items and profile, named when its values are implausible for their units
    (:mod:`eoforge.data.plausibility`; then every chip of the set gets the reason).

    Gains and offsets, masks (S2 nodata, SCL classes, S1 nodata), dB and the storage dtypes are
    applied to the whole batch; only GRD calibration LUTs are computed chip by chip (they depend
    on the chip's own grid), and a chip whose LUT fails gets its own error.
    """
    p = ps[0]

    h, w = p.grid.shape

    def gather(href: str, kind: str, out: np.ndarray | None = None) -> np.ndarray:
        """The chips' pixels of one band: float32 [N, H, W] (into ``out`` when given), cut from their mosaics."""
        out = np.empty((len(idx), h, w), np.float32) if out is None else out
        by_mosaic: dict[int, tuple[np.ndarray, list[int], list[int], list[int]]] = {}
        for j, i in enumerate(idx):
            mosaic, dr, dc = pixels[(i, href, kind)]
            entry = by_mosaic.setdefault(id(mosaic), (mosaic, [], [], []))
            entry[1].append(j), entry[2].append(dr), entry[3].append(dc)
        for mosaic, js, drs, dcs in by_mosaic.values():
            kernels.cut(mosaic, np.array(drs), np.array(dcs), np.array(js), out)
        return out

    gains = np.array([p.files.radiometry.get(b, [1.0, 0.0])[0] for b in S2_BAND_NAMES], np.float32)
    offsets = np.array([p.files.radiometry.get(b, [1.0, 0.0])[1] for b in S2_BAND_NAMES], np.float32)
    scaled = bool((gains != 1).any() or (offsets != 0).any())
    scl = gather(p.files.scl, "nearest") if p.files.scl else np.zeros((0, 0, 0), np.float32)
    label = gather(p.files.label, "nearest").astype(np.uint8) if p.files.label else None
    s1_access = p.files.access.get("s1", {})
    failed: dict[int, ChipReadError] = {}
    n = len(idx)
    check = plausibility.needs_check(p.files)
    raw_negative = math.nan
    s1 = np.empty((n, len(S1_BAND_NAMES), h, w), np.float32)  # [N, 2, H, W] dB
    for k, b in enumerate(S1_BAND_NAMES):
        lut = None
        if p.files.units == "amplitude" and p.files.calibration.get(b):
            lut = np.full((len(idx), *p.grid.shape), np.nan, np.float32)
            with rasterio.Env(**GDAL_ENV, **s1_access.get("env", {})):
                for j in range(len(idx)):
                    g = ps[j].grid  # rows of a file set share files, not grids: each chip's LUT on its own
                    grid = ChipGrid(g.crs, Affine(*g.transform), g.size)
                    try:
                        lut[j] = grd_calibration_on_grid(
                            p.files.s1_assets[b], p.files.calibration[b], grid, resolve_signer(s1_access.get("signing"))
                        )
                    except ChipReadError as exc:
                        failed[j] = exc
        band = gather(p.files.s1_assets[b], "bilinear", s1[:, k])
        if check and k == 0 and p.files.units != "dB":
            raw_negative = plausibility.raw_negative_share(band[: plausibility.CHECK_CHIPS])
        db = s1_to_db(band, p.files.units, lut)
        if db is not band:
            s1[:, k] = db
    if into is None:
        s2_u16 = np.empty((n, len(S2_BAND_NAMES), h, w), np.uint16)
        s1_f16, valid = np.empty(s1.shape, np.uint16), np.empty((n, 2, h, w), bool)
        at = np.arange(n, dtype=np.intp)
    else:
        block, at_rows = into
        s2_u16, s1_f16, valid = block["s2"], block["s1"].view(np.uint16), block["valid"]
        at = np.array(at_rows, np.intp)
    # S2 is read straight from its band mosaics: chips grouped by the mosaics they are cut from
    by_mosaics: dict[tuple[int, ...], tuple[tuple[np.ndarray, ...], list[list[int]], list[list[int]], list[int]]] = {}
    for j, i in enumerate(idx):
        cuts = [pixels[(i, p.files.s2_assets[b], "bilinear")] for b in S2_BAND_NAMES]
        entry = by_mosaics.setdefault(tuple(id(c[0]) for c in cuts), (tuple(c[0] for c in cuts), [], [], []))
        entry[1].append([c[1] for c in cuts]), entry[2].append([c[2] for c in cuts]), entry[3].append(j)
    for mosaics_, rows, cols, js in by_mosaics.values():
        rows_, cols_ = np.array(rows, np.intp).T.copy(), np.array(cols, np.intp).T.copy()
        stored = np.array([m.dtype == np.uint16 for m in mosaics_])
        u16s = tuple(m if k else _NO_U16 for m, k in zip(mosaics_, stored, strict=True))
        f32s = tuple(_NO_F32 if k else m for m, k in zip(mosaics_, stored, strict=True))
        kernels.assemble(
            u16s, f32s, stored, rows_, cols_, np.array(js, np.intp), at, gains, offsets, scaled, scl,
            _SCL_INVALID_LUT, s1, s1.view(np.uint32), s2_u16, s1_f16, valid,
        )  # fmt: skip
    reason = check and plausibility.check_batch(p.files, names, s1, s2_u16, valid, at, raw_negative)
    if reason:
        return [plausibility.ImplausibleItemError(reason)] * n
    s1_f16 = s1_f16.view(np.float16)
    return [
        failed[j]
        if j in failed
        else RawChip(s2=s2_u16[a], s1=s1_f16[a], valid=valid[a], label=None if label is None else label[j])
        for j, a in enumerate(at.tolist())
    ]


@functools.lru_cache(maxsize=1024)
def _key_file(s2_assets: object, access: object) -> tuple[str | None, str]:
    """(href of the key band or None, JSON of the S2 access settings) of a row's cells (cached)."""
    try:
        href = json.loads(str(s2_assets)).get(KEY_BAND)
        settings = json.dumps(_json_cell({"access": access}, "access", {}).get("s2", {}), sort_keys=True)
    except (TypeError, ValueError, KeyError, AttributeError):
        return None, "{}"
    return (href if isinstance(href, str) and href else None), settings


def group_rows(rows: list[dict[str, Any]], cache: DatasetCache) -> Iterator[tuple[str, list[int]]]:
    """(tile key, row indices) per source tile (:func:`tile_key`), in first-seen order.

    Rows are keyed file by file (one open and one GDAL environment per key-band file). A row whose
    key cannot be found gets a key of its own (``!<chip_id>``) and fails later with the reason.
    """
    by_file: dict[tuple[str, str], list[int]] = {}
    keys: list[str | None] = [None] * len(rows)
    for i, row in enumerate(rows):
        href, access = _key_file(row.get("s2_assets"), row.get("access"))
        if not href:
            keys[i] = f"!{row.get('chip_id')}"
            continue
        by_file.setdefault((href, access), []).append(i)
    for (href, access_json), idx in by_file.items():
        access = json.loads(access_json)
        try:
            with rasterio.Env(**GDAL_ENV, **access.get("env", {})):
                src = cache.get(href, resolve_signer(access.get("signing")))
        except ChipReadError:
            for i in idx:
                keys[i] = f"!{rows[i].get('chip_id')}"
            continue
        if src.grid.gcps is not None or not src.grid.transform:
            for i in idx:
                keys[i] = f"{href}#0:0"
            continue
        inverse, (bh, bw) = ~Affine(*src.grid.transform), src.block
        for i in idx:
            t = list(rows[i]["transform"])
            col, r = inverse * (float(t[2]), float(t[5]))
            keys[i] = f"{href}#{int(np.floor(r / bh))}:{int(np.floor(col / bw))}"
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(str(key), []).append(i)
    yield from groups.items()
