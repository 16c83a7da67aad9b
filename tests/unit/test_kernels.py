"""The compiled reader kernels give bit for bit what their numpy formulations give."""

from __future__ import annotations

import numpy as np
import pytest
from eoforge.bands import S2_SCL_INVALID
from eoforge.data import kernels


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int16])
def test_separable_bilinear_equals_its_numpy_formulation(dtype: type) -> None:
    rng = np.random.default_rng(0)
    band = rng.uniform(0, 3000, (40, 50)).astype(dtype)
    top = rng.integers(0, 39, 64)
    bottom = np.minimum(top + 1, 39)
    left = rng.integers(0, 49, 70)
    right = np.minimum(left + 1, 49)
    wt, wl = rng.uniform(0, 1, 64).astype(np.float32), rng.uniform(0, 1, 70).astype(np.float32)
    wb, wr = 1 - wt, 1 - wl
    v = band.astype(np.float32)
    across = v[:, left] * wl + v[:, right] * wr
    want = across[top] * wt[:, None] + across[bottom] * wb[:, None]
    got = kernels.separable_bilinear(band, top, bottom, wt, wb, left, right, wl, wr)
    assert got.dtype == np.float32 and got.shape == (64, 70)
    np.testing.assert_array_equal(got, want)


def test_taps_bilinear_equals_its_numpy_formulation() -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(0.05, 0.02, (30, 40)).astype(np.float32)
    h, w = data.shape
    k00 = rng.integers(0, h - 1, (16, 20)) * w + rng.integers(0, w - 1, (16, 20))
    wr, wc = rng.uniform(0, 1, (2, 16, 20)).astype(np.float32)
    weights = [((1 - wr) * (1 - wc)), ((1 - wr) * wc), (wr * (1 - wc)), (wr * wc)]
    flat = data.ravel()
    want = weights[0] * flat[k00]
    for off, wk in zip((1, w, w + 1), weights[1:], strict=True):
        want += wk * flat[k00 + off]
    np.testing.assert_array_equal(kernels.taps_bilinear(flat, k00, w, *weights), want)


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("with_scl", [False, True])
def test_assemble_equals_its_numpy_formulation(scaled: bool, with_scl: bool) -> None:
    rng = np.random.default_rng(2)
    n, h, w = 3, 8, 9
    mosaics = tuple(rng.uniform(-50, 70000, (20, 24)).astype(np.float32) for _ in range(12))
    mosaics[3][2:5, 4:9] = 0  # nodata
    # bands 1, 2, 3 and 7 as stored (uint16 windows, as the 10 m bands are read), the rest resampled (float32)
    stored = np.isin(np.arange(12), [1, 2, 3, 7])
    mosaics = tuple(np.clip(np.rint(m), 0, 65535) if k else m for m, k in zip(mosaics, stored, strict=True))
    u16s = tuple(
        m.astype(np.uint16) if k else np.zeros((1, 1), np.uint16) for m, k in zip(mosaics, stored, strict=True)
    )
    f32s = tuple(np.zeros((1, 1), np.float32) if k else m for m, k in zip(mosaics, stored, strict=True))
    rows, cols = rng.integers(0, 12, (12, n)), rng.integers(0, 15, (12, n))
    dest = np.array([2, 0, 1])
    scl = rng.integers(0, 12, (n, h, w)).astype(np.float32) if with_scl else np.zeros((0, 0, 0), np.float32)
    s1 = rng.normal(-12, 4, (n, 2, h, w)).astype(np.float32)
    s1[1, 0, :2] = np.nan
    gains = rng.uniform(0.9, 1.1, 12).astype(np.float32) if scaled else np.ones(12, np.float32)
    offsets = rng.uniform(-1000, 0, 12).astype(np.float32) if scaled else np.zeros(12, np.float32)
    lut = np.isin(np.arange(256), S2_SCL_INVALID)
    # outputs: rows 4, 0, 2 of a block of 5 (as chips are assembled into their block rows); 1 and 3 untouched
    at, m = np.array([4, 0, 2]), 5
    u16, s1_out = np.full((m, 12, h, w), 7, np.uint16), np.full((m, 2, h, w), 7, np.uint16)
    valid = np.ones((m, 2, h, w), bool)
    bits = s1.view(np.uint32)
    kernels.assemble(
        u16s, f32s, stored, rows, cols, dest, at, gains, offsets, scaled, scl, lut, s1, bits, u16, s1_out, valid
    )
    assert (u16[[1, 3]] == 7).all() and (s1_out[[1, 3]] == 7).all() and valid[[1, 3]].all()
    u16, s1_out, valid = u16[at], s1_out[at], valid[at]

    raw = np.empty((n, 12, h, w), np.float32)
    for k, d in enumerate(dest):
        for b in range(12):
            raw[d, b] = mosaics[b][rows[b, k] : rows[b, k] + h, cols[b, k] : cols[b, k] + w]
    # validity per sensor: S2 nodata and SCL clouds mask S2 only, S1 nodata masks S1 only
    want_s2 = np.all(raw > 0, axis=1)
    if with_scl:
        want_s2 &= ~np.isin(scl.astype(np.uint8), S2_SCL_INVALID)
    want_s1 = np.all(np.isfinite(s1), axis=1)
    s2 = raw * gains[:, None, None] + offsets[:, None, None] if scaled else raw
    want_u16 = np.where(want_s2[:, None], np.clip(np.rint(s2), 0, 65535), 0).astype(np.uint16)
    assert 0 < want_s2.mean() < 1 and 0 < want_s1.mean() < 1  # both outcomes exercised
    assert (want_s1 & ~want_s2).any()  # S1 stays valid where S2 is masked
    np.testing.assert_array_equal(valid[:, 0], want_s2)
    np.testing.assert_array_equal(valid[:, 1], want_s1)
    np.testing.assert_array_equal(u16, want_u16)
    np.testing.assert_array_equal(s1_out.view(np.float16), np.where(want_s1[:, None], s1, 0).astype(np.float16))


def test_cut_copies_each_chip_from_its_place_in_the_mosaic() -> None:
    mosaic = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    out = np.zeros((2, 4, 5), np.float32)
    kernels.cut(mosaic, np.array([3, 10]), np.array([7, 0]), np.array([1, 0]), out)
    np.testing.assert_array_equal(out[1], mosaic[3:7, 7:12])
    np.testing.assert_array_equal(out[0], mosaic[10:14, 0:5])


def test_f16_bits_is_numpys_float16_cast_bit_for_bit() -> None:
    import numba

    @numba.njit
    def cast(v: np.ndarray, out: np.ndarray) -> None:
        bits = v.view(np.uint32)
        for i in range(v.shape[0]):
            out[i] = kernels.f16_bits(v[i], bits[i])

    rng = np.random.default_rng(3)
    edges = [0, -0.0, 65504, 65519.99, 65520, 65536, 2**-14, 2**-24, 2**-25, 1.5 * 2**-25, 6.1e-5, 1 / 3, -12.345]
    v = np.concatenate(
        [
            rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32),  # every exponent
            rng.normal(-12, 6, 50_000).astype(np.float32),  # dB
            rng.uniform(-(2**-13), 2**-13, 50_000).astype(np.float32),  # subnormal halves
            np.array(edges, np.float32),
        ]
    )
    v = v[np.isfinite(v)]
    out = np.empty(v.shape, np.uint16)
    cast(v, out)
    with np.errstate(over="ignore"):
        want = v.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.uint8, np.int16])
@pytest.mark.parametrize("nodata", [None, 0.0, 7.0, float("nan")])
def test_all_valid_is_the_reader_mask_all(dtype: type, nodata: float | None) -> None:
    from eoforge.data.resample import valid_mask

    rng = np.random.default_rng(4)
    cases = [rng.integers(1, 100, (5, 6)).astype(dtype) for _ in range(4)]
    cases[1][2, 3] = 0
    cases[2][4, 5] = 7
    if np.issubdtype(dtype, np.floating):
        cases[3][0, 0] = np.nan
        cases.append(cases[0].copy())
        cases[-1][1, 1] = np.inf
    outcomes = set()
    for data in cases:
        want = bool(valid_mask(data, nodata).all())
        assert kernels.all_valid(data, nodata is not None, 0.0 if nodata is None else nodata) == want
        outcomes.add(want)
    can_fail = np.issubdtype(dtype, np.floating) or nodata in (0.0, 7.0)  # a NaN nodata never matches an int
    assert outcomes == ({True, False} if can_fail else {True})


def test_warm_compiles_every_kernel_signature_the_reader_uses() -> None:
    """`kernels.warm()` runs at install time (scripts/bootstrap.sh, the Dockerfile): it must match the kernels."""
    kernels.warm()
    for kernel in (kernels.assemble, kernels.cut, kernels.separable_bilinear, kernels.taps_bilinear, kernels.all_valid):
        assert kernel.signatures, kernel
