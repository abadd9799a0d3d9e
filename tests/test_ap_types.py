"""qfx fixed point against the real Xilinx ap_types headers (compiled with g++).

Expected values come only from the C++ oracle (tests/oracles/ap_types_oracle.py),
never from qfx. The sweep covers every quantization x overflow x signedness
combination, widths 1..64, integer bits below 0, inside and above the width,
exact ties, values at and beyond the range limits, float32 and float64 inputs,
fixed-to-fixed casts and the arithmetic result types.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qfx
from qfx import _fixed
from qfx.types import FixedType, Overflow, Rounding
from tests.oracles import ap_types_oracle as oracle

ROUNDINGS = [r.value for r in Rounding]
OVERFLOWS = [o.value for o in Overflow]

# Widths: every small width, the float32 (24) and float64 (53) precision edges, 64.
WIDTHS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 17, 22, 23, 24, 25, 31, 32, 33, 48, 52, 53, 54, 63, 64]


def int_bits_for(w: int) -> list[int]:
    """Integer bits below zero, inside the word and beyond it."""
    return sorted({-3, 1, max(1, w // 2), w, w + 5})


def configs_for(w: int, i: int) -> list[oracle.FixedConfig]:
    return [
        oracle.FixedConfig(w, i, signed, q, o)
        for signed in (True, False)
        for q in ROUNDINGS
        for o in OVERFLOWS
        if signed or o != "AP_WRAP_SM"
    ]


def fixed_type(cfg: oracle.FixedConfig) -> FixedType:
    t = FixedType(cfg.width, cfg.int_bits, cfg.signed, cfg.rounding, cfg.overflow)
    assert str(t).startswith(("ap_fixed", "ap_ufixed", "ap_int", "ap_uint"))
    return t


def probe_values(w: int, i: int, rng: np.random.Generator) -> np.ndarray:
    """Codes, exact ties and quarter points around them, range edges, wrap images, specials."""
    f = w - i
    lo, hi = -(1 << (w - 1)), (1 << w) - 1  # union of the signed and unsigned code ranges
    if w <= 7:
        codes = list(range(lo - 3, hi + 4))
    else:
        edges = [lo, lo + 1, -1, 0, 1, (1 << (w - 1)) - 1, 1 << (w - 1), hi - 1, hi]
        codes = edges + [lo + int(u * (hi - lo)) for u in rng.random(40)]
        codes += [c + d for c in edges for d in (-2, -1, 1, 2)]
    points = []
    for c in codes:
        for frac in (Fraction(0), Fraction(1, 2), Fraction(1, 4), Fraction(3, 4), Fraction(-1, 2)):
            points.append((Fraction(c) + frac) * Fraction(2) ** -f)
    # Images of in-range codes under wrapping, and far beyond the range.
    span = Fraction(1 << w)
    for c in (0, 1, 3, (1 << (w - 1)) - 1):
        for k in (1, -1, 3, -3, 1 << 10):
            points.append((Fraction(c) + k * span + Fraction(1, 2)) * Fraction(2) ** -f)
    values = [float(p) for p in points]
    # One ulp either side of each tie: where floor(s + 0.5) or s - floor(s) would round.
    ties = np.array([float((Fraction(c) + Fraction(1, 2)) * Fraction(2) ** -f) for c in codes])
    values += list(np.nextafter(ties, np.inf)) + list(np.nextafter(ties, -np.inf))
    scale = 2.0 ** (i - 1)
    values += list(rng.standard_normal(60) * scale) + list(rng.standard_normal(20) * scale * 2.0**w)
    values += [0.0, -0.0, math.inf, -math.inf, 1e300, -1e300, 5e-300, -5e-300, 2.0**-1000, -(2.0**-1000)]
    v = np.unique(np.array(values, dtype=np.float64))
    return np.concatenate([v, [-0.0]])


def assert_codes_equal(t: FixedType, x: np.ndarray, got: list[int], want: list[int], what: str) -> None:
    bad = [(xv, g, e) for xv, g, e in zip(x.tolist(), got, want) if g != e]
    if bad:
        sample = "; ".join(f"x={xv!r}: qfx {g}, ap_types {e}" for xv, g, e in bad[:4])
        raise AssertionError(f"{t} ({what}): {len(bad)} of {len(got)} differ from ap_types, e.g. {sample}")


def qfx_codes(values: np.ndarray, t: FixedType, dtype=torch.float64) -> list[int]:
    codes = _fixed.codes_fixed(torch.from_numpy(values).to(dtype), t, t.frac_bits, bit_pattern=True)
    codes = codes.tolist()
    if not t.signed and t.width == 64:
        codes = [c & ((1 << 64) - 1) for c in codes]
    return codes


@pytest.mark.parametrize("w", WIDTHS)
def test_cast_from_double_matches_ap_types(w):
    """``T y = (double)x`` for every mode combination: 0 mismatches."""
    rng = np.random.default_rng(w)
    groups = {i: probe_values(w, i, rng) for i in int_bits_for(w)}
    configs = [c for i in groups for c in configs_for(w, i)]
    # One oracle program per width; each group's own values.
    for i, values in groups.items():
        cfgs = [c for c in configs if c.int_bits == i]
        expected = oracle.cast_from_double(cfgs, values)
        for cfg in cfgs:
            t = fixed_type(cfg)
            assert_codes_equal(t, values, qfx_codes(values, t), expected[cfg], "from float64")
            # The value API agrees with the codes wherever float64 holds the result.
            if w <= 53:
                q = qfx.quantize(torch.from_numpy(values), t).numpy()
                want = np.array([c * 2.0 ** -t.frac_bits for c in expected[cfg]])
                assert np.array_equal(q, want), t


@pytest.mark.parametrize("w", [w for w in WIDTHS if w <= 24])
def test_cast_from_float32_matches_ap_types(w):
    """float32 inputs take qfx's float32 fast path; ap_types converts float via double."""
    rng = np.random.default_rng(100 + w)
    for i in int_bits_for(w):
        with np.errstate(over="ignore"):  # huge probes become +-inf in float32, on purpose
            values = probe_values(w, i, rng).astype(np.float32)
        # float32 neighbours of the ties (probe_values' float64 neighbours round back onto them).
        ties = values[np.isfinite(values)]
        values = np.concatenate([values, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))])
        values = np.unique(values[np.isfinite(values) | np.isinf(values)])
        cfgs = configs_for(w, i)
        expected = oracle.cast_from_double(cfgs, values.astype(np.float64))
        for cfg in cfgs:
            t = fixed_type(cfg)
            got = qfx_codes(values, t, torch.float32)
            assert_codes_equal(t, values, got, expected[cfg], "from float32")
            q = qfx.quantize(torch.from_numpy(values), t)
            assert q.dtype in (torch.float32, torch.float64)
            assert np.array_equal(q.double().numpy(), np.array(expected[cfg]) * 2.0 ** -t.frac_bits), t


@pytest.mark.parametrize("src", [(8, 3, True), (12, -2, True), (16, 16, False), (20, 9, True), (33, 20, True)])
def test_fixed_to_fixed_casts_match_ap_types(src):
    """``D y = x`` between fixed types equals qfx's conversion of x's exact value."""
    sw, si, ss = src
    src_cfg = oracle.FixedConfig(sw, si, ss)
    lo, hi = src_cfg.code_range()
    rng = np.random.default_rng(sw)
    codes = sorted({lo, lo + 1, -1 if ss else 1, 0, 1, hi - 1, hi, *rng.integers(lo, hi, 200, endpoint=True).tolist()})
    values = np.array([c * 2.0 ** -(sw - si) for c in codes])
    dsts = [
        oracle.FixedConfig(dw, di, sgn, q, o)
        for dw, di in ((4, 2), (6, -1), (9, 9), (11, 4))
        for sgn in (True, False)
        for q in ROUNDINGS
        for o in OVERFLOWS
        if sgn or o != "AP_WRAP_SM"
    ]
    # ap_types itself asserts ("Attempting to read bit beyond MSB") when a rounding mode
    # reads the bit below the new lsb and that bit lies above the source's MSB; those casts
    # have no C++ answer to compare with.
    expected = oracle.cast_fixed(src_cfg, dsts, codes, on_abort="record")
    for cfg in expected.aborted:
        assert (sw - si) - cfg.frac_bits > sw and cfg.rounding != "AP_TRN", cfg
    for cfg in dsts:
        if cfg in expected.aborted:
            continue
        t = fixed_type(cfg)
        assert_codes_equal(t, values, qfx_codes(values, t), expected[cfg], f"cast from {src_cfg.cpp_type()}")


def test_ap_int_from_double_matches_ap_types():
    values = np.array([0.0, 0.5, -0.5, 1.5, -1.5, 2.7, -2.7, 127.9, -128.9, 300.2, -300.2, 1e20])
    for w, signed in ((8, True), (8, False), (13, True), (64, True)):
        expected = oracle.cast_int_from_double(w, signed, values)
        t = qfx.parse_type(f"ap_int<{w}>" if signed else f"ap_uint<{w}>")
        assert_codes_equal(t, values, qfx_codes(values, t), list(expected), "ap_int from double")


def test_result_types_match_ap_types():
    operands = [(w, i, s) for w, i in ((1, 1), (4, 2), (8, 3), (8, -2), (12, 14), (16, 8), (5, 5)) for s in (True, False)]
    pairs = [(a, b) for a in operands for b in operands]
    expected = oracle.result_types(pairs)
    for (a, b), want in zip(pairs, expected):
        ta, tb = FixedType(*a), FixedType(*b)
        got = {"+": ta + tb, "-": ta - tb, "*": ta * tb}
        for op, t in got.items():
            assert (t.width, t.int_bits, t.signed) == tuple(want[op]), (a, op, b, t, want[op])


def test_nan_behaviour_differs_from_ap_types_on_purpose():
    # ap_types warns and treats NaN as a huge value of the NaN's sign; qfx keeps NaN visible.
    cfg = oracle.FixedConfig(8, 3, True, "AP_RND", "AP_SAT")
    expected = oracle.cast_from_double([cfg], np.array([math.nan]))
    assert expected.warnings  # the headers flag it as an error condition
    t = fixed_type(cfg)
    assert math.isnan(qfx.quantize(torch.tensor([math.nan]), t).item())
    with pytest.raises(ValueError, match="NaN"):
        qfx.to_codes(torch.tensor([math.nan]), t)


def test_ap_int_small_negative_quirk_is_documented_not_emulated():
    # The ap_types ap_int(double) constructor turns -0.5 < v < 0 into +1 (bit pattern 1);
    # truncation toward zero gives 0. qfx models the documented C semantics; the HLS
    # generator must therefore never assign a double straight to an ap_int.
    values = np.array([-0.3, -0.1, -0.49])
    expected = oracle.cast_int_from_double(8, True, values)
    assert list(expected) == [1, 1, 1]
    assert qfx.to_codes(torch.from_numpy(values), "ap_int<8>").tolist() == [0, 0, 0]


# Property tests: hypothesis draws the values; the configs are the sweep's (cached programs).
_PROPERTY_CONFIGS = configs_for(8, 4) + configs_for(5, -3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=False, width=64), min_size=1, max_size=40))
def test_property_random_doubles_match_ap_types(values):
    x = np.array(values, dtype=np.float64)
    expected = oracle.cast_from_double(_PROPERTY_CONFIGS, x)
    for cfg in _PROPERTY_CONFIGS:
        t = fixed_type(cfg)
        assert_codes_equal(t, x, qfx_codes(x, t), expected[cfg], "hypothesis")


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([fixed_type(c) for c in _PROPERTY_CONFIGS]),
    st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=2, max_size=30),
)
def test_property_idempotent_and_monotone(t, values):
    x = torch.tensor(values, dtype=torch.float32)
    q = qfx.quantize(x, t)
    assert torch.equal(qfx.quantize(q, t), q)  # a value of the format converts to itself
    if t.overflow in (Overflow.AP_SAT, Overflow.AP_SAT_SYM):
        xs, order = torch.sort(x)
        assert bool((torch.diff(q[order]) >= 0).all())  # rounding and saturation keep order
