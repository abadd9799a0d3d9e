"""OCP Microscaling (MX) formats: qfx.types.MXType, qfx.quantize / mx_encode (issue 17 item 3).

Two oracles, neither of which is qfx code:

* an exact model written here with ``fractions.Fraction`` from the OCP MX v1.0 definitions
  (element encodings from their sign/exponent/mantissa fields and biases, the shared-scale
  rule of section 6.3, round to nearest with ties to the even code, saturation);
* torchao's MX implementation (``torchao.prototype.mx_formats``, ``to_mx`` with its default
  ``ScaleCalculationMode.FLOOR``, the spec's rule), compared scale byte and element bits.

Where torchao's rules differ from the spec's (and qfx's), the tests say so:

* a block whose scale is E8M0's smallest, 2**-127 (scale code 0: block max below
  ``2**(emax_elem - 126)``, or all zeros), is divided by 2**-126 in torchao (it clamps the
  float32 scale to the smallest normal) but stored with code 0; qfx divides by 2**-127;
* a block holding +-inf: torchao reads the scale from inf's exponent field (a finite scale)
  and saturates inf to the element max; the spec's reference and qfx give the NaN scale;
* torchao has no MXINT8 and takes float32/bfloat16 only, and blocks along the last axis only
  (the other axes are compared by transposing).
"""

from __future__ import annotations

import logging
import math
import warnings
from bisect import bisect_left
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qfx.quant import count_overflow, mx_decode, mx_encode, quantize, to_codes
from qfx.types import MX_ELEMENTS, MXType, parse_type

# -- the exact model (independent of qfx) -------------------------------------------------

#: name -> (exponent bits, mantissa bits, bias, emax_elem, reserved exponent-field rule)
SPEC = {
    "mxfp8_e4m3": (4, 3, 7, 8, "fn"),  # S.1111.111 is NaN
    "mxfp8_e5m2": (5, 2, 15, 15, "ieee"),  # exponent field 31 is inf/NaN
    "mxfp6_e2m3": (2, 3, 1, 2, "none"),
    "mxfp6_e3m2": (3, 2, 3, 4, "none"),
    "mxfp4_e2m1": (2, 1, 1, 2, "none"),
}
EMAX = {**{k: v[3] for k, v in SPEC.items()}, "mxint8": 0}
FLOAT_NAMES = list(SPEC)
ALL_NAMES = [*SPEC, "mxint8"]


def _grid(name: str) -> tuple[list[Fraction], list[int]]:
    """Non-negative finite element magnitudes, ascending, and their (sign-less) codes."""
    if name == "mxint8":
        return [Fraction(k, 64) for k in range(128)], list(range(128))
    e_bits, m_bits, bias, _, rule = SPEC[name]
    out = []
    for fe in range(1 << e_bits):
        for fm in range(1 << m_bits):
            if rule == "ieee" and fe == (1 << e_bits) - 1:
                continue
            if rule == "fn" and fe == (1 << e_bits) - 1 and fm == (1 << m_bits) - 1:
                continue
            if fe == 0:
                v = Fraction(fm, 1 << m_bits) * Fraction(2) ** (1 - bias)
            else:
                v = (1 + Fraction(fm, 1 << m_bits)) * Fraction(2) ** (fe - bias)
            out.append((v, (fe << m_bits) | fm))
    out.sort()
    return [v for v, _ in out], [c for _, c in out]


GRIDS = {n: _grid(n) for n in ALL_NAMES}


def _floor_log2(a: Fraction) -> int:
    e = a.numerator.bit_length() - a.denominator.bit_length()
    return e - 1 if Fraction(2) ** e > a else e


def _round_element(r: Fraction, name: str) -> int:
    """Magnitude code of |r| rounded to nearest (ties to the even code), saturated."""
    vals, codes = GRIDS[name]
    a = abs(r)
    if a >= vals[-1]:
        return codes[-1]
    i = bisect_left(vals, a)
    if vals[i] == a:
        return codes[i]
    lo, hi = i - 1, i
    dlo, dhi = a - vals[lo], vals[hi] - a
    if dlo != dhi:
        return codes[lo] if dlo < dhi else codes[hi]
    return codes[lo] if codes[lo] % 2 == 0 else codes[hi]


def model_encode(block: list[float], name: str) -> tuple[int, list[int], list[Fraction | None]]:
    """(scale byte, element codes, values or None for NaN) of one block, by the spec."""
    if not all(math.isfinite(v) for v in block):
        return 255, [0] * len(block), [None] * len(block)
    amax = max(abs(Fraction(v)) for v in block)
    shared = max(_floor_log2(amax) - EMAX[name], -127) if amax > 0 else -127
    if shared > 127:
        return 255, [0] * len(block), [None] * len(block)
    x = Fraction(2) ** shared
    codes, values = [], []
    vals, gcodes = GRIDS[name]
    for v in block:
        mag = _round_element(Fraction(v) / x, name)
        neg = math.copysign(1.0, v) < 0
        value = vals[gcodes.index(mag)] * x
        if name == "mxint8":
            codes.append(-mag if neg else mag)
        else:
            e_bits, m_bits = SPEC[name][:2]
            codes.append(((1 << (e_bits + m_bits)) if neg else 0) | mag)
        values.append(-value if neg else value)
    return shared + 127, codes, values


def model_check(x: torch.Tensor, fmt: str) -> None:
    """mx_encode / quantize of ``x`` equal the exact model, block by block."""
    t = parse_type(fmt)
    scales, codes = mx_encode(x, t)
    q = quantize(x, t)
    axis = t.axis % x.dim()
    xm = x.movedim(axis, -1).reshape(-1, t.block_size)
    cm = codes.movedim(axis, -1).reshape(-1, t.block_size)
    qm = q.movedim(axis, -1).reshape(-1, t.block_size)
    sm = scales.movedim(axis, -1).reshape(-1)
    bad = []
    for i in range(xm.shape[0]):
        s, c, vals = model_encode(xm[i].tolist(), t.name)
        got_vals = qm[i].tolist()
        same_vals = all((g != g) if v is None else Fraction(g) == v for g, v in zip(got_vals, vals))
        if s != int(sm[i]) or c != cm[i].tolist() or not same_vals:
            bad.append((i, xm[i].tolist(), s, int(sm[i]), c, cm[i].tolist()))
    assert not bad, f"{len(bad)} blocks differ from the exact model, first: {bad[0]}"


# -- inputs --------------------------------------------------------------------------------


def _special_blocks(name: str, block: int, gen: torch.Generator) -> torch.Tensor:
    """Rows of ``block`` float32 values: exact ties, values at/over the element max, zeros,
    float32 subnormals, widely spread magnitudes."""
    vals, _ = GRIDS[name]
    top = float(vals[-1])
    rows = []
    for shared in (-20, -3, 0, 5, 40):
        x = 2.0**shared
        # the block max pins the scale: an element value of the top binade
        head = [2.0 ** EMAX[name] * x]
        mids = [float((vals[i] + vals[i + 1]) / 2) * x for i in range(len(vals) - 1)]  # exact ties
        row = (head + mids + [-m for m in mids])[:block]
        rows.append(row + [0.0] * (block - len(row)))
        # at and over the element max (saturation), and just below the next binade
        over = [top * x, -top * x, (top + float(vals[-1] - vals[-2]) / 2) * x, 2.0 ** (EMAX[name] + 1) * x * (1 - 2**-20)]
        rows.append((over * block)[:block])
    rows.append([0.0] * block)
    rows.append([-0.0] * block)
    sub = [k * 2.0**-149 for k in range(1, block + 1)]  # float32 subnormals (scale code 0)
    rows.append(sub)
    rows.append([1.0] + sub[: block - 1])  # subnormals next to a normal max: flushed by rounding
    spread = torch.randn(block, generator=gen) * torch.exp2(torch.randint(-30, 30, (block,), generator=gen).float())
    rows.append(spread.tolist())
    return torch.tensor(rows, dtype=torch.float32)


def _random(shape, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(shape, generator=gen)
    return x * torch.exp2(torch.randint(-12, 12, shape, generator=gen).float())


# -- formats -------------------------------------------------------------------------------


def test_spelling_round_trip_and_elements():
    for name in ALL_NAMES:
        for text in (name, f"{name}<block=16>", f"{name}<block=8,axis=0>", f"{name.upper()}<axis=1>"):
            t = parse_type(text)
            assert isinstance(t, MXType) and parse_type(str(t)) == t
        assert MX_ELEMENTS[name][1] == EMAX[name]
    assert str(MXType("mxfp4_e2m1")) == "mxfp4_e2m1"
    assert MXType("mxint8", 16, 0) == parse_type("mxint8<block=16,axis=0>")
    # the element formats are the minifloats qfx already defines, saturating (spec 6.3)
    assert parse_type("mxfp8_e4m3").element == parse_type("fp8_e4m3fn<saturate=true>")
    assert parse_type("mxfp4_e2m1").element == parse_type("fp4_e2m1fn")
    assert str(parse_type("mxint8").element) == "ap_fixed<8,2,AP_RND_CONV,AP_SAT_SYM>"


@pytest.mark.parametrize(
    "text, words",
    [
        ("mxfp4_e3m0", ["unknown MX element format", "mxfp8_e4m3", "mxint8"]),
        ("mxfp7", ["unknown MX element format"]),
        ("mxfp4_e2m1<block=0>", ["block_size=0", ">= 1"]),
        ("mxfp4_e2m1<blk=16>", ["unknown MX option 'blk'", "block, axis"]),
        ("mxfp4_e2m1<block=x>", ["'x'", "not an integer"]),
        ("mxfp4_e2m1<block=16", ["malformed MX format"]),
        ("mxfp4_e2m1<16>", ["not key=value"]),
    ],
)
def test_bad_spellings(text, words):
    with pytest.raises(ValueError) as err:
        parse_type(text)
    for w in words:
        assert w in str(err.value)


def test_block_size_must_divide_axis():
    with pytest.raises(ValueError) as err:
        quantize(torch.ones(4, 20), "mxfp4_e2m1", what="QLinear 'fc' weight")
    msg = str(err.value)
    for w in ("QLinear 'fc' weight", "[4, 20]", "block size 32", "length 20", "mxfp4_e2m1<block=20,axis=-1>", "pad"):
        assert w in msg
    with pytest.raises(ValueError, match="has no axis 2"):
        quantize(torch.ones(4, 32), "mxfp4_e2m1<axis=2>")
    with pytest.raises(ValueError, match="scalar"):
        quantize(torch.tensor(1.0), "mxint8")
    with pytest.raises(TypeError, match="mx_encode"):
        to_codes(torch.ones(32), "mxint8")


# -- against the exact model ---------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("block", [32, 16])
def test_exact_model_special_values(name, block):
    gen = torch.Generator().manual_seed(block)
    model_check(_special_blocks(name, block, gen), f"{name}<block={block}>")


@pytest.mark.parametrize("name", ALL_NAMES)
def test_exact_model_other_axis_and_float64(name):
    gen = torch.Generator().manual_seed(1)
    x = _random((32, 3, 4), gen)
    model_check(x, f"{name}<block=16,axis=0>")
    model_check(x, f"{name}<block=4,axis=2>")
    # float64 input: beyond float32's range, and shared exponents over 127 (NaN scale)
    big = torch.tensor([[1e300, 3.0] * 8, [2.0**130, -1.0] * 8, [1e-300, 0.0] * 8], dtype=torch.float64)
    model_check(big, f"{name}<block=16>")
    assert torch.isnan(quantize(big, f"{name}<block=16>")[0]).all()


@pytest.mark.parametrize("name", ALL_NAMES)
def test_nan_and_inf_blocks(name):
    x = torch.ones(3, 32)
    x[0, 5] = float("nan")
    x[1, 7] = float("-inf")
    t = f"{name}<block=16>"
    model_check(x, t)
    q = quantize(x, t)
    assert torch.isnan(q[0, :16]).all() and torch.isnan(q[1, :16]).all()
    assert (q[0, 16:] == 1).all() and (q[2] == 1).all()
    scales, _ = mx_encode(x, t)
    assert scales[:2, 0].tolist() == [255, 255]


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
any32 = st.one_of(finite32, st.sampled_from([float("nan"), float("inf"), -0.0, 2.0**-149]))


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(ALL_NAMES), block=st.sampled_from([1, 2, 8, 16]), data=st.data())
def test_exact_model_property(name, block, data):
    values = data.draw(st.lists(st.one_of(finite32, any32), min_size=block * 2, max_size=block * 2))
    model_check(torch.tensor(values, dtype=torch.float32).reshape(2, block), f"{name}<block={block}>")


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(ALL_NAMES), data=st.data(), k=st.integers(-8, 8))
def test_properties(name, data, k):
    values = data.draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=16, max_size=16))
    x = torch.tensor(values, dtype=torch.float32)
    t = parse_type(f"{name}<block=8>")
    q = quantize(x, t)
    assert torch.equal(quantize(q, t), q)  # idempotent: a quantized block keeps its scale
    assert torch.equal(quantize(-x, t), -q)  # symmetric (round to nearest even, symmetric saturation)
    # power-of-two scaling commutes while no block reaches E8M0's bounds
    if bool((x != 0).any()) and float(x.abs().max()) > 2.0**-90:
        assert torch.equal(quantize(x * 2.0**k, t), q * 2.0**k)
    s, c = mx_encode(x, t)
    assert torch.equal(mx_decode(s, c, t), q.double())


# -- against torchao -----------------------------------------------------------------------


def _torchao():
    warnings.filterwarnings("ignore")
    logging.getLogger("torchao").setLevel(logging.ERROR)
    mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
    kernels = pytest.importorskip("torchao.prototype.mx_formats.kernels")
    return mx.to_mx, kernels.unpack_uint4


TORCHAO_DTYPES = {
    "mxfp8_e4m3": torch.float8_e4m3fn,
    "mxfp8_e5m2": torch.float8_e5m2,
    "mxfp6_e2m3": "fp6_e2m3",
    "mxfp6_e3m2": "fp6_e3m2",
    "mxfp4_e2m1": torch.float4_e2m1fn_x2,
}


def torchao_encode(x: torch.Tensor, name: str, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's (scale bytes, element bit patterns) of float32 ``x`` (blocks along the last axis)."""
    to_mx, unpack_uint4 = _torchao()
    dtype = TORCHAO_DTYPES[name]
    scale, data = to_mx(x.contiguous(), dtype, block)
    scale = scale.view(torch.uint8).to(torch.int64)
    if dtype == torch.float4_e2m1fn_x2:
        codes = unpack_uint4(data.view(torch.uint8)).to(torch.int64).reshape(x.shape)
    else:
        codes = data.view(torch.uint8).to(torch.int64)
    return scale, codes


def _compare_torchao(x: torch.Tensor, name: str, block: int) -> int:
    """Mismatches (scale bytes and element codes) against torchao. Excluded from the element
    comparison: blocks of scale code 0 (torchao divides them by 2**-126, see the module
    docstring) and NaN-scale blocks (their elements do not matter: every value is NaN; qfx
    stores 0, torchao the cast of NaN)."""
    ts, tc = torchao_encode(x, name, block)
    s, c = mx_encode(x, f"{name}<block={block}>")
    assert ts.shape == s.shape
    keep = ((s != 0) & (s != 255)).repeat_interleave(block, dim=-1)
    return int((ts != s).sum()) + int(((tc != c) & keep).sum())


@pytest.mark.parametrize("name", FLOAT_NAMES)
@pytest.mark.parametrize("block", [32, 16])
def test_torchao_bit_exact(name, block):
    gen = torch.Generator().manual_seed(7)
    special = _special_blocks(name, block, gen)
    x = torch.cat([special, _random((64, block), gen), torch.randn(8, block, generator=gen)])
    x[-1, 3] = float("nan")  # a NaN block: both give the NaN scale
    assert _compare_torchao(x, name, block) == 0
    # a non-default axis: qfx's blocks along axis 0 are torchao's along the last axis of x.T
    y = _random((2 * block, 6), gen)
    ts, tc = torchao_encode(y.T, name, block)
    s, c = mx_encode(y, f"{name}<block={block},axis=0>")
    assert torch.equal(ts, s.T) and torch.equal(tc, c.T)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(FLOAT_NAMES), block=st.sampled_from([32, 16]), data=st.data())
def test_torchao_property(name, block, data):
    values = data.draw(st.lists(st.one_of(finite32, st.just(float("nan"))), min_size=block, max_size=block))
    assert _compare_torchao(torch.tensor([values], dtype=torch.float32), name, block) == 0


def test_torchao_differences_are_the_documented_ones():
    """Where the rules differ: scale-code-0 blocks and inf (the spec's reference: NaN scale)."""
    block = 32
    tiny = torch.full((1, block), 2.0**-125)  # mxfp4: floor(log2) - 2 = -127, scale code 0
    ts, tc = torchao_encode(tiny, "mxfp4_e2m1", block)
    s, c = mx_encode(tiny, "mxfp4_e2m1")
    assert ts.tolist() == s.tolist() == [[0]]
    # qfx: 2**-125 / 2**-127 = 4 (code 0b0110); torchao divides by 2**-126: 2 (code 0b0100)
    assert c[0, 0].item() == 0b0110 and tc[0, 0].item() == 0b0100
    inf = torch.ones(1, block)
    inf[0, 0] = float("inf")
    ts, _ = torchao_encode(inf, "mxfp4_e2m1", block)
    s, _ = mx_encode(inf, "mxfp4_e2m1")
    assert s.item() == 255 and ts.item() != 255


# -- stochastic rounding and training ------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_stochastic_rounding(name):
    t = parse_type(f"{name}<block=16>")
    gen = torch.Generator().manual_seed(3)
    x = _random((64, 16), gen)
    draw = lambda seed: quantize(x, t, stochastic=True, generator=torch.Generator().manual_seed(seed))
    a, b = draw(11), draw(11)
    assert torch.equal(a, b)  # seeded: the same bits
    # every result is one of the two neighbours on the block's element grid: the RNE result
    # of x or the value one element step away (checked with the exact model's grid)
    q = quantize(x, t)
    assert torch.equal(quantize(a, t), a)  # MX values, same scales
    s_rne, _ = mx_encode(x, t)
    s_sr, _ = mx_encode(a, t)
    assert torch.equal(s_rne, s_sr)
    # representable inputs are kept exactly
    assert torch.equal(quantize(q, t, stochastic=True, generator=gen), q)
    # unbiased: the mean of many draws approaches x (fixed seeds: deterministic)
    row = x[:1].expand(2000, 16).contiguous()
    mean = quantize(row, t, stochastic=True, generator=torch.Generator().manual_seed(5)).double().mean(0)
    scale = torch.exp2(s_rne[:1].double() - 127).repeat_interleave(16, -1)[0]
    ulp = scale * (2.0 ** -6 if name == "mxint8" else 2.0 ** -SPEC[name][1]) * 2.0 ** EMAX[name]
    sat = quantize(row[:1], t).abs() >= t.element.max * scale  # saturated elements are biased
    err = ((mean - x[0].double()).abs() / ulp)[~sat[0]]
    assert float(err.max()) < 0.1


@pytest.mark.parametrize("name", ALL_NAMES)
def test_straight_through_gradient(name):
    t = parse_type(f"{name}<block=4>")
    x = torch.tensor([[1.0, 0.3, -0.2, 0.01], [7.9, 1.0, 1.0, 1.0]], requires_grad=True)
    q = quantize(x, t)
    q.backward(torch.ones_like(q))
    sat_mask = torch.zeros_like(x, dtype=torch.bool)
    for i in range(2):
        for j in range(4):
            s, _, _ = model_encode(x.detach()[i].tolist(), name)
            r = Fraction(float(x.detach()[i, j])) / Fraction(2) ** (s - 127)
            sat_mask[i, j] = abs(r) > GRIDS[name][0][-1]
    assert torch.equal(x.grad, (~sat_mask).float())
    assert count_overflow(x.detach(), t) == int(sat_mask.sum())


# -- MX weights in QLinear / QConv2d --------------------------------------------------------

X_FMT = "ap_fixed<8,3,AP_RND_CONV,AP_SAT>"
Y_FMT = "ap_fixed<32,12,AP_RND_CONV,AP_SAT>"


def _model_weight(w: torch.Tensor, name: str, block: int) -> list[list[Fraction]]:
    """Weight rows (blocks along the last axis) by the exact model."""
    rows = []
    for row in w.tolist():
        vals = []
        for b in range(0, len(row), block):
            vals += model_encode(row[b : b + block], name)[2]
        rows.append(vals)
    return rows


@pytest.mark.parametrize("name", ALL_NAMES)
def test_qlinear_mx_weight_exact(name):
    from qfx.nn import QLinear

    torch.manual_seed(0)
    layer = QLinear(32, 5, bias=False, input=X_FMT, weight=f"{name}<block=16>", output=Y_FMT)
    with torch.no_grad():
        layer.weight.mul_(torch.exp2(torch.randint(-6, 3, (5, 32)).float()))
    x = torch.randn(3, 32) * 2
    y = layer(x)
    xq = [[Fraction(v) for v in r] for r in quantize(x, X_FMT).tolist()]
    wq = _model_weight(layer.weight.detach(), name, 16)
    exact = torch.tensor([[float(sum(a * b for a, b in zip(xr, wr))) for wr in wq] for xr in xq], dtype=torch.float64)
    assert torch.equal(y.double(), quantize(exact, Y_FMT).double())
    # an explicit accumulator as wide as the auto one (the step-by-step loop) gives the same bits
    wide = QLinear(32, 5, bias=False, input=X_FMT, weight=f"{name}<block=16>", output=Y_FMT,
                   accum=str(layer.auto_accum_format()))
    wide.load_state_dict(layer.state_dict())
    assert not wide.config.accum_is_auto and torch.equal(wide(x), y)


def test_qconv2d_mx_weight_blocks_along_input_channels():
    from qfx.nn import QConv2d

    torch.manual_seed(1)
    conv = QConv2d(16, 3, 3, bias=False, input=X_FMT, weight="mxfp4_e2m1<block=16,axis=1>", output=Y_FMT)
    x = torch.randn(2, 16, 5, 5)
    wq = quantize(conv.weight.detach(), "mxfp4_e2m1<block=16,axis=1>").double()
    # blocks of the exact model: one per (out channel, kh, kw), along the input channels
    w_model = conv.weight.detach().permute(0, 2, 3, 1).reshape(-1, 16)
    vals = torch.tensor([[float(v) for v in model_encode(r, "mxfp4_e2m1")[2]] for r in w_model.tolist()])
    assert torch.equal(vals.reshape(3, 3, 3, 16).permute(0, 3, 1, 2).double(), wq)
    ref = torch.nn.functional.conv2d(quantize(x, X_FMT).double(), wq)
    assert torch.equal(conv(x).double(), quantize(ref, Y_FMT).double())


def test_mx_weight_training_with_ste():
    from qfx.nn import QLinear

    g = torch.Generator().manual_seed(2)
    target = torch.randn(4, 32, generator=g) * 0.5
    x = torch.randn(256, 32, generator=g)
    y = x @ target.T
    layer = QLinear(32, 4, bias=False, input=X_FMT, weight="mxfp6_e2m3", output=Y_FMT)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(layer(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.05 * losses[0]
    # the weights the layer computes with are MX values (idempotent under the format)
    wq = quantize(layer.weight.detach(), "mxfp6_e2m3")
    assert torch.equal(quantize(wq, "mxfp6_e2m3"), wq)


def test_mx_layer_bad_input():
    from qfx.nn import QConv2d, QLinear

    with pytest.raises(ValueError) as err:
        QLinear(20, 4, bias=False, input=X_FMT, weight="mxfp4_e2m1", output=Y_FMT)
    assert "QLinear: weight format mxfp4_e2m1" in str(err.value) and "length 20" in str(err.value)
    with pytest.raises(ValueError, match="axis=1"):
        QConv2d(32, 4, 3, bias=False, input=X_FMT, weight="mxfp4_e2m1", output=Y_FMT)
    with pytest.raises(ValueError, match="only weights may be K-hot, minifloat or MX"):
        QLinear(32, 4, bias=False, input="mxfp8_e4m3", weight="mxfp4_e2m1", output=Y_FMT)
    with pytest.raises(ValueError, match="mxfp4_e2m1 is not fixed point"):
        QLinear(32, 4, bias=False, input=X_FMT, weight="mxfp4_e2m1", output=Y_FMT, learn_binary_point=["weight"])


# -- manifest export and the integer reference (issue 17 item 4, dense only) -----------------


def _mx_mlp(weight: str, bias: bool = True):
    from qfx.nn import QLinear, QReLU

    torch.manual_seed(4)
    model = torch.nn.Sequential(
        QLinear(32, 16, bias="ap_fixed<12,4,AP_RND>" if bias else False, input=X_FMT, weight=weight, output="ap_fixed<10,4,AP_RND_CONV,AP_SAT>"),
        QReLU(output="ap_ufixed<8,3,AP_RND,AP_SAT>"),
        QLinear(16, 4, bias=False, input=X_FMT, weight=weight.replace("<block=32>", "<block=16>"), output="ap_fixed<12,4,AP_RND_CONV,AP_SAT>"),
    )
    with torch.no_grad():
        for m in model:
            if isinstance(m, QLinear):
                m.weight.mul_(torch.exp2(torch.randint(-5, 2, m.weight.shape).float()))
    return model


@pytest.mark.parametrize("name", ALL_NAMES)
def test_mx_dense_reference_bit_exact(name, tmp_path):
    from qfx.export import emulate, export
    from qfx.manifest import load
    from qfx.quant import to_codes as codes_of
    from qfx.reference import run

    model = _mx_mlp(f"{name}<block=16>")
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(5)) * 3
    export(model, x, tmp_path / "m")
    export(model, x, tmp_path / "again")
    for f in ("manifest.yaml", "tensors.npz"):  # deterministic: byte-identical files
        assert (tmp_path / "m" / f).read_bytes() == (tmp_path / "again" / f).read_bytes()
    man = load(tmp_path / "m")
    dense = [n for n in man if n.op == "dense"]
    assert [str(n.formats["weight"]) for n in dense] == [f"{name}<block=16>"] * 2
    # the stored weights are the exact model's scale bytes and element codes
    w0 = model[0].weight.detach()
    for o in range(w0.shape[0]):
        for j in range(2):
            s, c, _ = model_encode(w0[o, 16 * j : 16 * (j + 1)].tolist(), name)
            assert dense[0].arrays["weight_mx_scales"][o, j] == s
            assert dense[0].arrays["weight"][o, 16 * j : 16 * (j + 1)].tolist() == c
    ref, emu = run(man, x), emulate(model, x)
    for node in man:
        want = codes_of(emu[node.name], node.output_format).numpy()
        assert np.array_equal(np.asarray(ref[node.name], dtype=np.int64), want), node.name
    big = run(man, x, big_ints=True)  # the Python-int path gives the same codes
    assert all(np.array_equal(np.asarray(big[k], dtype=np.int64), np.asarray(ref[k], dtype=np.int64)) for k in ref)


def test_mx_export_and_manifest_bad_input(tmp_path):
    import yaml

    from qfx.export import ExportError, export
    from qfx.hls import generate
    from qfx.manifest import ManifestError, load
    from qfx.nn import QConv2d, QLinear

    x = torch.randn(2, 32)
    narrow = torch.nn.Sequential(QLinear(32, 4, bias=False, input=X_FMT, weight="mxfp4_e2m1", output=Y_FMT, accum="ap_fixed<12,4>"))
    with pytest.raises(ExportError, match="layer '0': MX weights need an exact accumulator"):
        export(narrow, x, tmp_path / "a")
    conv = torch.nn.Sequential(QConv2d(4, 4, 1, bias=False, input=X_FMT, weight="mxfp4_e2m1<block=1>", output=Y_FMT))
    with pytest.raises(ExportError, match=r"layer '0': MX weight blocks must run along the input channels .*axis=1>"):
        export(conv, torch.randn(1, 4, 2, 2), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    model = _mx_mlp("mxfp4_e2m1<block=32>")
    export(model, x, tmp_path / "m")
    man = load(tmp_path / "m")
    # HLS, qfx-gen, the Accelerator and the estimate build MX layers now (tests/test_mx_hw.py checks their bits)
    generate(man, tmp_path / "hls")
    assert "n0_wsh" in (tmp_path / "hls" / "hls" / "qfx_top.cpp").read_text()
    # a tampered manifest: a NaN scale, a wrong accum_exact
    npz = dict(np.load(tmp_path / "m" / "tensors.npz"))
    key = next(k for k in npz if k.endswith("weight_mx_scales"))
    bad = dict(npz)
    bad[key] = bad[key].copy()
    bad[key][0, 0] = 255
    np.savez(tmp_path / "m" / "tensors.npz", **bad)
    with pytest.raises(ManifestError, match="255 is NaN"):
        load(tmp_path / "m")
    np.savez(tmp_path / "m" / "tensors.npz", **npz)
    doc = yaml.safe_load((tmp_path / "m" / "manifest.yaml").read_text())
    node = next(n for n in doc["nodes"] if n["op"] == "dense")
    node["formats"]["accum"] = "ap_fixed<12,4>"
    (tmp_path / "m" / "manifest.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ManifestError, match="does not hold every partial sum of the MX weights"):
        load(tmp_path / "m")


@pytest.mark.parametrize("name, groups", [("mxfp4_e2m1", 1), ("mxfp8_e4m3", 2), ("mxint8", 1), ("mxfp6_e3m2", 2)])
def test_mx_conv_reference_bit_exact(name, groups, tmp_path):
    from qfx.export import emulate, export
    from qfx.manifest import load
    from qfx.nn import QConv2d, QFlatten, QLinear, QReLU
    from qfx.quant import to_codes as codes_of
    from qfx.reference import run

    torch.manual_seed(6)
    model = torch.nn.Sequential(
        QConv2d(32, 8, 3, padding=1, groups=groups, bias="ap_fixed<12,4,AP_RND>", input=X_FMT,
                weight=f"{name}<block={16 // groups},axis=1>", output="ap_fixed<10,4,AP_RND_CONV,AP_SAT>"),
        QReLU(output="ap_ufixed<8,3,AP_RND,AP_SAT>"),
        QFlatten(),
        QLinear(8 * 4 * 4, 4, bias=False, input=X_FMT, weight=f"{name}", output=Y_FMT),
    )
    with torch.no_grad():
        for m in model:
            if isinstance(m, (QConv2d, QLinear)):
                m.weight.mul_(torch.exp2(torch.randint(-5, 2, m.weight.shape).float()))
    x = torch.randn(8, 32, 4, 4, generator=torch.Generator().manual_seed(7)) * 3
    export(model, x, tmp_path / "m")
    man = load(tmp_path / "m")
    conv = next(n for n in man if n.op == "conv2d")
    w = model[0].weight.detach()
    assert conv.arrays["weight_mx_scales"].shape == (8, 32 // groups // (16 // groups), 3, 3)
    for o, i, j in ((0, 0, 0), (7, 2, 1), (3, 1, 2)):  # blocks along the input channels, by the exact model
        for b in range(conv.arrays["weight_mx_scales"].shape[1]):
            sl = slice(b * (16 // groups), (b + 1) * (16 // groups))
            s_, c_, _ = model_encode(w[o, sl, i, j].tolist(), name)
            assert conv.arrays["weight_mx_scales"][o, b, i, j] == s_ and conv.arrays["weight"][o, sl, i, j].tolist() == c_
    ref, emu = run(man, x), emulate(model, x)
    for node in man:
        assert np.array_equal(np.asarray(ref[node.name], dtype=np.int64), codes_of(emu[node.name], node.output_format).numpy()), node.name
    big = run(man, x, big_ints=True)
    assert all(np.array_equal(np.asarray(big[k], dtype=np.int64), np.asarray(ref[k], dtype=np.int64)) for k in ref)
