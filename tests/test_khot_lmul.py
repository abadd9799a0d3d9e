"""K-hot against brute-force enumeration; L-Mul against the paper's formula in exact rationals."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qfx
from qfx.types import FixedType, KHot, MinifloatType
from tests.oracles.minifloat_exact import all_values, round_minifloat


def brute_force_khot_codes(base: FixedType, k: int) -> list[int]:
    """All codes in range that are sums of at most k signed powers of two (any positions)."""
    positions = range(base.width + 2)  # one beyond NAF's reach: brute force must not assume NAF
    found = {0}
    for n in range(1, k + 1):
        for combo in itertools.combinations(positions, n):
            for signs in itertools.product((1, -1), repeat=n):
                found.add(sum(s << p for s, p in zip(signs, combo)))
    return sorted(c for c in found if base.min_code <= c <= base.max_code)


KHOT_CASES = [
    ("ap_fixed<8,1>", 1), ("ap_fixed<8,1>", 2), ("ap_fixed<8,1>", 3), ("ap_ufixed<6,2>", 2),
    ("ap_fixed<5,5>", 1), ("ap_fixed<10,-2>", 2), ("ap_fixed<12,4>", 4), ("ap_fixed<3,1>", 2),
]


@pytest.mark.parametrize("base, k", KHOT_CASES)
def test_khot_set_equals_brute_force(base, k):
    t = KHot(qfx.parse_type(base), k)
    assert t.codes().tolist() == brute_force_khot_codes(t.base, k)


def nearest_toward_zero(s: Fraction, codes: list[int]) -> int:
    best = None
    for c in codes:
        d = abs(s - c)
        if best is None or d < best[0] or (d == best[0] and abs(c) < abs(best[1])):
            best = (d, c)
    return best[1]


@pytest.mark.parametrize("base, k", KHOT_CASES[:6])
def test_khot_quantize_is_nearest_with_ties_toward_zero(base, k):
    t = KHot(qfx.parse_type(base), k)
    codes = brute_force_khot_codes(t.base, k)
    lsb = Fraction(2) ** -t.base.frac_bits
    mids = [Fraction(a + b, 2) for a, b in zip(codes, codes[1:])]  # exact ties
    rng = np.random.default_rng(1)
    spread = float((codes[-1] - codes[0]) * lsb)
    xs = [float(m * lsb) for m in mids] + [float(c * lsb) for c in codes]
    xs += list(rng.uniform(-1.5 * spread, 1.5 * spread, 500)) + [math.inf, -math.inf]
    x = torch.tensor(xs, dtype=torch.float64)
    got = qfx.to_codes(x, t).tolist()
    for xi, g in zip(xs, got):
        if math.isinf(xi):
            want = codes[-1] if xi > 0 else codes[0]
        else:
            want = nearest_toward_zero(Fraction(xi) / lsb, codes)
        assert g == want, (t, xi, g, want)
    values = qfx.quantize(x, t)
    assert torch.equal(values, torch.tensor(got, dtype=torch.float64) * float(lsb))


@pytest.mark.parametrize("base, k", KHOT_CASES)
def test_khot_digits_rebuild_every_code_with_at_most_k_digits(base, k):
    t = KHot(qfx.parse_type(base), k)
    codes = t.codes()
    shifts, signs = qfx.khot_digits(codes, t)
    assert shifts.shape == codes.shape + (k,)
    rebuilt = (signs.astype(np.int64) << shifts).sum(-1)
    assert np.array_equal(rebuilt, codes)
    assert ((signs != 0).sum(-1) <= k).all()
    assert shifts.max() <= t.base.width  # the shifter never exceeds the word plus one


def test_khot_digits_rejects_codes_outside_the_set():
    t = qfx.parse_type("khot<1,ap_fixed<8,1>>")
    with pytest.raises(ValueError, match="not representable"):
        qfx.khot_digits(np.array([3]), t)


def test_khot_straight_through_gradient():
    t = qfx.parse_type("khot<2,ap_fixed<8,1>>")
    x = torch.tensor([0.3, -0.7, 5.0, -5.0], requires_grad=True)
    qfx.quantize(x, t).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]


# ---------------------------------------------------------------------------
# L-Mul
# ---------------------------------------------------------------------------


def lmul_formula(a: float, b: float, m: int) -> Fraction:
    """The paper's definition with exact rationals (finite nonzero operands)."""
    def split(v: float) -> tuple[int, Fraction, int]:
        f = abs(Fraction(v))
        e = math.floor(math.log2(f))
        while Fraction(2) ** e > f:
            e -= 1
        while Fraction(2) ** (e + 1) <= f:
            e += 1
        return (1 if v < 0 else 0), f / Fraction(2) ** e - 1, e

    sa, xa, ea = split(a)
    sb, xb, eb = split(b)
    ell = m if m <= 3 else (3 if m == 4 else 4)
    mag = (1 + xa + xb + Fraction(1, 2**ell)) * Fraction(2) ** (ea + eb)
    return -mag if sa ^ sb else mag


def test_lmul_offset_bits():
    assert [qfx.lmul_offset_bits(m) for m in range(8)] == [0, 1, 2, 3, 3, 4, 4, 4]


@pytest.mark.parametrize("spelling", ["fp8_e4m3fn", "fp8_e5m2", "fp6_e2m3fn", "fp4_e2m1fn", "e4m4", "e5m7<saturate=true>"])
def test_lmul_exhaustive_against_formula(spelling):
    t = qfx.parse_type(spelling)
    vals = [v for v in all_values(t) if v != 0]
    if len(vals) > 120:
        vals = list(np.random.default_rng(0).choice(vals, 120, replace=False))
    pairs = list(itertools.product(vals, repeat=2))
    a = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    b = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    exact = qfx.lmul(a, b, t, exact=True)
    rounded = qfx.lmul(a, b, t)
    for (x, y), e, r in zip(pairs, exact.tolist(), rounded.tolist()):
        want = lmul_formula(x, y, t.mantissa_bits)
        assert Fraction(e) == want, (x, y, e, want)
        want_r = round_minifloat(float(want), t)  # float(want) is exact: <= M+2 significant bits
        assert (math.isnan(r) and math.isnan(want_r)) or r == want_r, (x, y, r, want_r)


def test_lmul_specials_and_rounding_into_other_formats():
    t = qfx.parse_type("fp8_e5m2")
    a = torch.tensor([0.0, -0.0, 2.0, math.inf, math.inf, math.nan, 3.0])
    b = torch.tensor([5.0, 5.0, -0.0, 2.0, 0.0, 1.0, -math.inf])
    got = qfx.lmul(a, b, t)
    assert got[0].item() == 0 and not math.copysign(1, got[0].item()) < 0
    assert got[1].item() == 0 and math.copysign(1, got[1].item()) < 0
    assert got[2].item() == 0 and math.copysign(1, got[2].item()) < 0
    assert got[3].item() == math.inf and math.isnan(got[4].item()) and math.isnan(got[5].item())
    assert got[6].item() == -math.inf
    # Into a fixed-point accumulator format: the exact value cast with ap_fixed rounding.
    x, y = torch.tensor([1.5]), torch.tensor([1.25])
    exact = qfx.lmul(x, y, t, exact=True)  # (1 + .5 + .25 + .25) = 2.0
    assert exact.item() == 2.0
    assert qfx.lmul(x, y, t, "ap_fixed<8,1,AP_TRN,AP_SAT>").item() == qfx.parse_type("ap_fixed<8,1>").max


def test_lmul_error_is_bounded_like_the_paper_says():
    # L-Mul replaces xa*xb in [0, 1) by 2**-l: the relative error of the exact L-Mul value
    # against the true product stays below 1/(1 + xa + xb + xa*xb) * max|xa*xb - 2**-l| <= 0.5.
    t = qfx.parse_type("fp8_e4m3fn")
    vals = torch.tensor([v for v in all_values(t) if v > 0], dtype=torch.float64)
    a, b = torch.meshgrid(vals, vals, indexing="ij")
    approx = qfx.lmul(a, b, t, exact=True)
    rel = ((approx - a * b) / (a * b)).abs()
    assert rel.max().item() < 0.5
    assert rel.mean().item() < 0.1


def test_lmul_rejects_non_minifloat_formats():
    with pytest.raises(ValueError, match="minifloat"):
        qfx.lmul(torch.ones(1), torch.ones(1), "ap_fixed<8,3>")


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e4, 1e4, allow_nan=False), st.floats(-1e4, 1e4, allow_nan=False))
def test_lmul_property_gradient_is_the_exact_products(x, y):
    a = torch.tensor([x], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([y], dtype=torch.float64, requires_grad=True)
    qfx.lmul(a, b, "fp8_e4m3fn<saturate=true>").sum().backward()
    t = qfx.parse_type("fp8_e4m3fn<saturate=true>")
    qa, qb = qfx.quantize(a.detach(), t), qfx.quantize(b.detach(), t)
    inside_a = float(abs(x) <= t.max)
    inside_b = float(abs(y) <= t.max)
    assert a.grad.item() == qb.item() * inside_a
    assert b.grad.item() == qa.item() * inside_b
