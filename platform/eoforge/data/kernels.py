"""Compiled per-pixel kernels (numba) of the tile-aware reader: resampling and chip assembly.

The numpy formulations of these steps make one pass over the pixels per operation (gather,
multiply, add, compare, round, clip, cast), each a temporary array; at 64 px chips that was most
of a read task's time after decoding (``bench/reader_profile.py``). Each kernel here makes one
pass, with the same float32 arithmetic in the same order as the numpy code it replaces, so its
results are bit for bit those of the numpy reference (``tests/unit/test_kernels.py``).

Kernels are compiled on first use and cached on disk (numba ``cache=True``: next to this module,
else numba's user cache); :func:`warm` compiles every signature the reader uses ahead of time
(the Docker image runs it at build time).
"""

from __future__ import annotations

import numba
import numpy as np

_JIT = {"cache": True, "nogil": True}


@numba.njit(**_JIT)
def separable_bilinear(
    band: np.ndarray,
    top: np.ndarray,
    bottom: np.ndarray,
    wt: np.ndarray,
    wb: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    wl: np.ndarray,
    wr: np.ndarray,
) -> np.ndarray:
    """Separable bilinear resampling: a column pass per source row, then a row pass.

    Args:
        band: [h, w] source rows (any real dtype; converted to float32 per pixel).
        top: int [H] the upper source row of each output row (0 <= row < h).
        bottom: int [H] the lower source row of each output row.
        wt: float32 [H] the weight of ``top``.
        wb: float32 [H] the weight of ``bottom``.
        left: int [W] the left source column of each output column (0 <= col < w).
        right: int [W] the right source column of each output column.
        wl: float32 [W] the weight of ``left``.
        wr: float32 [W] the weight of ``right``.

    Returns:
        float32 [H, W]: ``across[top] * wt + across[bottom] * wb`` with
        ``across = band[:, left] * wl + band[:, right] * wr`` (float32 throughout).
    """
    h = band.shape[0]
    H, W = top.shape[0], left.shape[0]
    used = np.zeros(h, np.bool_)
    for i in range(H):
        used[top[i]] = True
        used[bottom[i]] = True
    across = np.empty((h, W), np.float32)
    for r in range(h):
        if used[r]:
            for j in range(W):
                across[r, j] = np.float32(band[r, left[j]]) * wl[j] + np.float32(band[r, right[j]]) * wr[j]
    out = np.empty((H, W), np.float32)
    for i in range(H):
        t, b, a, c = top[i], bottom[i], wt[i], wb[i]
        for j in range(W):
            out[i, j] = across[t, j] * a + across[b, j] * c
    return out


@numba.njit(**_JIT)
def taps_bilinear(
    flat: np.ndarray, k00: np.ndarray, width: int, w0: np.ndarray, w1: np.ndarray, w2: np.ndarray, w3: np.ndarray
) -> np.ndarray:
    """Bilinear resampling through precomputed taps (a map that is not separable, e.g. S1 on lon/lat).

    Args:
        flat: the source window, raveled ([h * w], any real dtype).
        k00: int [H, W] flat index of each output pixel's top-left neighbour (all four inside).
        width: the window's width ``w`` (the bottom neighbours are ``k00 + width``).
        w0: float32 [H, W] weight of the top-left neighbour.
        w1: float32 [H, W] weight of the top-right neighbour.
        w2: float32 [H, W] weight of the bottom-left neighbour.
        w3: float32 [H, W] weight of the bottom-right neighbour.

    Returns:
        float32 [H, W]: ``((w0 * v00 + w1 * v01) + w2 * v10) + w3 * v11``.
    """
    H, W = k00.shape
    out = np.empty((H, W), np.float32)
    for i in range(H):
        for j in range(W):
            k = k00[i, j]
            acc = w0[i, j] * np.float32(flat[k])
            acc += w1[i, j] * np.float32(flat[k + 1])
            acc += w2[i, j] * np.float32(flat[k + width])
            acc += w3[i, j] * np.float32(flat[k + width + 1])
            out[i, j] = acc
    return out


@numba.njit(**_JIT)
def f16_bits(v: np.float32, bits: np.uint32) -> np.uint16:
    """The bits of ``np.float16(v)``: IEEE half precision, rounded to nearest even (numpy's cast).

    numba has no float16 on the CPU, so the cast is done on the bits (``bits``: those of the
    float32 ``v``, e.g. read through a ``.view(np.uint32)`` of its array): values >= 65520 in
    magnitude become +-inf, NaN becomes a quiet NaN, |v| < 2**-14 becomes a subnormal (or zero).
    Every case is computed and one is selected (no branch), so loops over it vectorise.
    """
    u = np.int64(bits)
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    special = np.int64(0x7E00) if a > 0x7F800000 else np.int64(0x7C00)  # >= 65536, inf or nan: inf / nan
    subnormal = np.int64(np.rint(np.abs(np.float64(v)) * 16777216.0))  # < 2**-14: units of 2**-24
    normal = (a - 0x38000000 + 0xFFF + ((a >> 13) & 1)) >> 13  # rebias, round 13 bits to nearest even
    o = special if a >= 0x47800000 else (subnormal if a < 0x38800000 else normal)
    return np.uint16(o | sign)


@numba.njit(**_JIT)
def all_valid(data: np.ndarray, has_nodata: bool, nodata: float) -> bool:
    """Whether every pixel of ``data`` (2-D, any real dtype) is finite and, with ``has_nodata``, != ``nodata``.

    The test of ``eoforge.data.resample.valid_mask(data, nodata).all()``, in one pass and without a mask.
    """
    for y in range(data.shape[0]):
        for x in range(data.shape[1]):
            v = data[y, x]
            if v - v != 0 or (has_nodata and np.float64(v) == nodata):  # v - v: NaN for nan / inf
                return False
    return True


@numba.njit(**_JIT)
def _s2_stored(m: np.ndarray, r0: int, c0: int, first: bool, ok: np.ndarray, out: np.ndarray) -> None:
    """One S2 band of one chip from a uint16 mosaic, unscaled: ``out`` = its pixels; ``ok`` (&)= pixel > 0.

    ``ok``: uint8 [H, W] (0 / 1). The values ``_s2_band`` gives for such a band (``rint`` and the clip to
    [0, 65535] leave a uint16 as it is), in integer arithmetic.
    """
    H, W = out.shape
    for y in range(H):  # row slices: contiguous inner loops, which LLVM vectorises
        src, dst, k = m[r0 + y, c0 : c0 + W], out[y], ok[y]
        for x in range(W):
            v = src[x]
            dst[x] = v
            b = np.uint8(v > 0)
            k[x] = b if first else k[x] & b


@numba.njit(**_JIT)
def _s2_band(
    m: np.ndarray, r0: int, c0: int, g: np.float32, o: np.float32, scaled: bool, first: bool, ok: np.ndarray,
    out: np.ndarray,
) -> None:  # fmt: skip
    """One S2 band of one chip: ``ok`` (&)= pixel > 0; ``out`` = its uint16 storage value (unmasked).

    ``ok``: uint8 [H, W] (0 / 1). The clipped value is cast through int32 (exact in [0, 65535]): a
    float -> uint16 cast does not vectorise.
    """
    H, W = out.shape
    lo, hi = np.float32(0), np.float32(65535)
    for y in range(H):
        src, dst, k = m[r0 + y, c0 : c0 + W], out[y], ok[y]
        for x in range(W):
            v = np.float32(src[x])
            w = v * g + o if scaled else v
            dst[x] = np.uint16(np.int32(min(max(np.rint(w), lo), hi)))
            b = np.uint8(v > 0)
            k[x] = b if first else k[x] & b


@numba.njit(**_JIT)
def assemble(
    s2_u16_mosaics: tuple,
    s2_f32_mosaics: tuple,
    stored: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    dest: np.ndarray,
    at: np.ndarray,
    gains: np.ndarray,
    offsets: np.ndarray,
    scaled: bool,
    scl: np.ndarray,
    invalid_class: np.ndarray,
    s1: np.ndarray,
    s1_bits: np.ndarray,
    s2_u16: np.ndarray,
    s1_f16: np.ndarray,
    valid: np.ndarray,
) -> None:
    """Masks and storage units of chips cut from their S2 band mosaics, in one pass over their pixels.

    Band ``b``'s mosaic is ``s2_u16_mosaics[b]`` where ``stored[b]`` (the COG's uint16 window as read:
    a band on the chip grid needs no resampling), else ``s2_f32_mosaics[b]`` (resampled); the other
    entry is any placeholder array. Chip ``k`` is ``mosaic[rows[b, k]:rows[b, k] + H, cols[b, k]:cols[b, k] + W]``
    for band ``b``; its SCL and S1 are ``scl[dest[k]]``, ``s1[dest[k]]``, and its results go to index
    ``at[dest[k]]`` of the outputs (e.g. its row of a chip block).
    Each band is converted as it is checked; only a chip with masked pixels is passed over again
    (to zero them). Every inner loop runs over one contiguous row, branch-free (vectorised by LLVM);
    the masks are kept as uint8 (a view of ``valid``). Validity is per sensor: a cloud hides S2 only
    (SAR sees through it), and S1 nodata masks S1 only.

    Args:
        s2_u16_mosaics: 12 uint16 [Hm, Wm] mosaics (used where ``stored``; 0: nodata).
        s2_f32_mosaics: 12 float32 [Hm, Wm] mosaics (used where not ``stored``; 0: nodata).
        stored: bool [12], which of the two holds each band.
        rows: int [12, K] each chip's first row in each band's mosaic.
        cols: int [12, K] each chip's first column in each band's mosaic.
        dest: int [K] each chip's index in ``scl`` and ``s1``.
        at: int [N] the outputs' index of each index of ``scl`` / ``s1``.
        gains: float32 [12] per-band gain, applied when ``scaled``.
        offsets: float32 [12] per-band offset, applied when ``scaled``.
        scaled: whether ``gains`` / ``offsets`` apply (False: values as read).
        scl: float32 [N, H, W] SCL classes ([0, 0, 0] shaped: no SCL).
        invalid_class: bool [256], True for the SCL classes that mask a pixel.
        s1: float32 [N, 2, H, W] S1 in dB (NaN: no valid source).
        s1_bits: ``s1.view(np.uint32)`` (its bits, for the float16 cast).
        s2_u16: out, uint16 [M, 12, H, W] ``clip(rint(s2 * gain + offset), 0, 65535)``, 0 where S2 is invalid.
        s1_f16: out, uint16 [M, 2, H, W]: the bits of float16 ``s1``, 0 where S1 is invalid (view it as float16).
        valid: out, bool [M, 2, H, W] (C-contiguous), per sensor: ``[:, 0]`` S2 (every band > 0, SCL
            class not masked), ``[:, 1]`` S1 (both polarisations finite).
    """
    nb, ns1 = len(s2_f32_mosaics), s1.shape[1]
    H, W = valid.shape[2], valid.shape[3]
    has_scl = scl.shape[0] > 0
    keep = np.empty(256, np.uint8)  # 1 for the SCL classes that keep a pixel
    for c in range(256):
        keep[c] = np.uint8(not invalid_class[c])
    masks = valid.view(np.uint8)
    zero16 = np.uint16(0)
    for k in range(dest.shape[0]):
        d = dest[k]
        slot = at[d]
        ok2, ok1 = masks[slot, 0], masks[slot, 1]
        for b in range(nb):
            r0, c0 = rows[b, k], cols[b, k]
            if stored[b] and not scaled:
                _s2_stored(s2_u16_mosaics[b], r0, c0, b == 0, ok2, s2_u16[slot, b])
            elif stored[b]:
                _s2_band(s2_u16_mosaics[b], r0, c0, gains[b], offsets[b], scaled, b == 0, ok2, s2_u16[slot, b])
            else:
                _s2_band(s2_f32_mosaics[b], r0, c0, gains[b], offsets[b], scaled, b == 0, ok2, s2_u16[slot, b])
        kept2 = 0
        for y in range(H):
            m2, m1 = ok2[y], ok1[y]
            if has_scl:
                classes = scl[d, y]
                for x in range(W):
                    m2[x] &= keep[np.uint8(classes[x])]
            for x in range(W):
                kept2 += np.int64(m2[x])
                m1[x] = np.uint8(1)
            for b in range(ns1):
                row = s1[d, b, y]
                for x in range(W):
                    m1[x] &= np.uint8(np.isfinite(row[x]))
        if kept2 < H * W:
            for b in range(nb):
                for y in range(H):
                    dst, m = s2_u16[slot, b, y], ok2[y]
                    for x in range(W):
                        dst[x] = dst[x] if m[x] else zero16
        for b in range(ns1):
            for y in range(H):
                dst, m, row, bits = s1_f16[slot, b, y], ok1[y], s1[d, b, y], s1_bits[d, b, y]
                for x in range(W):
                    dst[x] = f16_bits(row[x], bits[x]) if m[x] else zero16


@numba.njit(**_JIT)
def cut(mosaic: np.ndarray, rows: np.ndarray, cols: np.ndarray, dest: np.ndarray, out: np.ndarray) -> None:
    """Copy chips out of a mosaic: ``out[dest[k]] = mosaic[rows[k]:rows[k] + H, cols[k]:cols[k] + W]``.

    Args:
        mosaic: float32 [Hm, Wm].
        rows: int [K] each chip's first row in the mosaic.
        cols: int [K] each chip's first column in the mosaic.
        dest: int [K] each chip's index in ``out``.
        out: float32 [N, H, W] (any strides), written.
    """
    H, W = out.shape[1], out.shape[2]
    for k in range(rows.shape[0]):
        r, c, d = rows[k], cols[k], dest[k]
        for y in range(H):
            src, dst = mosaic[r + y, c : c + W], out[d, y]
            for x in range(W):
                dst[x] = src[x]


def warm() -> None:
    """Compile (or load from the cache) every kernel signature the reader uses."""
    f32, i64 = np.float32, np.intp
    idx, w1 = np.zeros(2, i64), np.full(2, 0.5, f32)
    for dtype in (np.uint16, np.float32, np.int16, np.uint8):
        band = np.ones((2, 2), dtype)
        all_valid(band, True, 0.0)
        separable_bilinear(band, idx, idx, w1, w1, idx, idx, w1, w1)
        taps_bilinear(band.ravel(), np.zeros((2, 2), i64), 2, *(np.full((2, 2), 0.25, f32),) * 4)
    mosaic, at = np.zeros((4, 4), f32), np.zeros(1, i64)
    cut(mosaic, at, at, at, np.zeros((1, 2, 2), f32))
    cut(mosaic, at, at, at, np.zeros((1, 1, 2, 2), f32)[:, 0])
    lut = np.zeros(256, np.bool_)
    f32_bands, u16_bands = (np.ones((2, 2), f32),) * 12, (np.ones((2, 2), np.uint16),) * 12
    offsets = np.zeros((12, 1), i64)
    outs = np.zeros((1, 12, 2, 2), np.uint16), np.zeros((1, 2, 2, 2), np.uint16), np.zeros((1, 2, 2, 2), np.bool_)
    for scl in (np.zeros((1, 2, 2), f32), np.zeros((0, 0, 0), f32)):
        s1 = np.zeros((1, 2, 2, 2), f32)
        gains, zeros, stored = np.ones(12, f32), np.zeros(12, f32), np.zeros(12, np.bool_)
        assemble(
            u16_bands,
            f32_bands,
            stored,
            offsets,
            offsets,
            at,
            at,
            gains,
            zeros,
            False,
            scl,
            lut,
            s1,
            s1.view(np.uint32),
            *outs,
        )
