"""The training fast paths give the same bits as the general (slow) paths.

* ``qfx.quant._FixedSTEFast`` (float32, <= 22-bit saturating formats, one binary point)
  against the general ``_FixedSTE``: values, the straight-through mask, the frac_bits gradient;
* float32 multiply-accumulate in QConv2d/QLinear against float64, with accumulators just at
  the 24-bit boundary of float32 and beyond it (where the layer must fall back to float64);
* float32 QBatchNorm2d / QAdd / QReLU against their float64 paths.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import qfx
from qfx import quant
from qfx.nn import mac as mac_mod
from qfx.types import FixedType, Overflow, Rounding

ROUNDINGS = list(Rounding)
SAT_MODES = [Overflow.AP_SAT, Overflow.AP_SAT_SYM]


def _adversarial(t: FixedType, frac: int, n_random: int = 2000) -> torch.Tensor:
    """Ties at every half lsb near the range ends and zero, range ends +- 1 lsb, specials, random."""
    lsb = 2.0**-frac
    lo, hi = t.min_code, t.max_code
    codes = list(range(lo - 3, lo + 4)) + list(range(-4, 5)) + list(range(hi - 3, hi + 4))
    vals = []
    for c in codes:
        for d in (-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75):
            vals.append((c + d) * lsb)
    vals += [math.nan, math.inf, -math.inf, -0.0, 0.0, 1e30, -1e30, 1e-30, -1e-30, 3.4e38, -3.4e38]
    vals += [(hi + 0.5) * lsb, (lo - 0.5) * lsb, (hi + 1) * lsb * 4, (lo - 1) * lsb * 4]
    g = torch.Generator().manual_seed(t.width * 1000 + frac)
    span = (hi - lo + 8) * lsb
    rnd = (torch.rand(n_random, generator=g, dtype=torch.float64) - 0.5) * span * 1.5
    x = torch.cat([torch.tensor(vals, dtype=torch.float64), rnd])
    return x.float()  # float32 input, as in training (rounds some of the ties: fine, still adversarial)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)) and torch.equal(
        torch.isnan(a), torch.isnan(b)
    )


@pytest.mark.parametrize("rounding,overflow", list(itertools.product(ROUNDINGS, SAT_MODES)))
@pytest.mark.parametrize("signed", [True, False])
def test_fast_cast_matches_general_cast(rounding, overflow, signed):
    for width, frac in [(1, 0), (2, 1), (8, 5), (8, 10), (16, 18), (22, 0), (22, 30), (12, 100)]:
        if not signed and width == 1 and overflow is Overflow.AP_SAT_SYM:
            continue
        t = FixedType(width, width - frac, signed, rounding, overflow)
        assert quant._fast_plan(t, frac) is not None, t
        x = _adversarial(t, frac)
        fb = torch.tensor(float(frac) + 0.3)  # rounds to frac
        # fast path
        xf = x.clone().requires_grad_()
        fbf = fb.clone().requires_grad_()
        qf = quant._FixedSTEFast.apply(xf, fbf, t, quant._fast_plan(t, frac))
        # general path
        xs = x.clone().requires_grad_()
        fbs = fb.clone().requires_grad_()
        qs = quant._FixedSTE.apply(xs, fbs, t)
        assert _same_bits(qf.detach(), qs.detach()), t
        # and the public entry point takes the fast path with the same result
        assert _same_bits(qfx.quantize(x.clone().requires_grad_(), t, frac_bits=fb).detach(), qs.detach())
        g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        qf.backward(g)
        qs.backward(g)
        # straight-through mask identical (finite upstream gradient: same values, zeros alike)
        assert torch.equal(xf.grad, xs.grad), t
        # frac_bits gradient: same terms, summed in another order
        assert torch.isfinite(fbs.grad) == torch.isfinite(fbf.grad)
        if torch.isfinite(fbs.grad):
            assert torch.allclose(fbf.grad, fbs.grad, rtol=1e-4, atol=1e-4 * float(g.abs().sum()) * 2.0**-frac), t


def test_fast_cast_is_not_used_where_it_would_be_inexact():
    assert quant._fast_plan(FixedType(23, 3, True, Rounding.AP_RND, Overflow.AP_SAT), 20) is None  # > 22 bits
    assert quant._fast_plan(FixedType(8, 10, True, Rounding.AP_RND, Overflow.AP_SAT), -2) is None  # frac < 0
    assert quant._fast_plan(FixedType(8, 3, True, Rounding.AP_RND, Overflow.AP_WRAP), 5) is None  # wraps
    assert quant._fast_plan(FixedType(8, 3, True, Rounding.AP_RND, Overflow.AP_SAT_ZERO), 5) is None


def _force_float64(monkeypatch):
    monkeypatch.setattr(mac_mod, "float32_kernels_exact", lambda: False)


def _codes_tensor(shape, lo, hi, gen, extremes: str):
    if extremes == "max":
        return torch.full(shape, hi, dtype=torch.int64)
    if extremes == "min":
        return torch.full(shape, lo, dtype=torch.int64)
    if extremes == "alternate":  # large partial sums that cancel: +max, min, +max, ...
        c = torch.full(shape, hi, dtype=torch.int64)
        c.view(-1)[1::2] = lo
        return c
    return torch.randint(lo, hi + 1, shape, generator=gen)


@pytest.mark.parametrize("n_terms", [16, 32, 64, 128, 256, 512])
@pytest.mark.parametrize("extremes", ["max", "min", "alternate", "random"])
def test_float32_linear_accumulator_matches_float64_at_the_24_bit_boundary(n_terms, extremes, monkeypatch):
    # 8-bit signed input x 12-bit signed weight -> 20-bit products; n terms add log2(n) bits:
    # auto accumulators of 24 .. 29 bits straddle float32's 24-bit (25-bit signed) limit.
    x_fmt, w_fmt = "ap_fixed<8,2,AP_RND,AP_SAT>", "ap_fixed<12,1,AP_RND,AP_SAT>"
    layer = qfx.nn.QLinear(n_terms, 6, bias=False, input=x_fmt, weight=w_fmt, output="ap_fixed<32,16>")
    acc = layer.auto_accum_format()
    layer = qfx.nn.QLinear(n_terms, 6, bias=False, input=x_fmt, weight=w_fmt, output=str(acc))
    cpu = torch.device("cpu")
    assert layer.float32_exact(cpu) == (acc.width <= 25), acc
    g = torch.Generator().manual_seed(n_terms)
    xt, wt = qfx.parse_type(x_fmt), qfx.parse_type(w_fmt)
    xc = _codes_tensor((5, n_terms), xt.min_code, xt.max_code, g, extremes)
    wc = _codes_tensor((6, n_terms), wt.min_code, wt.max_code, g, "min" if extremes == "max" else extremes)
    x = (xc.double() * 2.0**-xt.frac_bits).float()
    with torch.no_grad():
        layer.weight.copy_(wc.double() * 2.0**-wt.frac_bits)
        fast = layer(x)
        monkeypatch.setattr(mac_mod, "float32_kernels_exact", lambda: False)
        assert not layer.float32_exact(cpu)
        slow = layer(x)
    exact = (xc @ wc.T).double() * 2.0 ** -(xt.frac_bits + wt.frac_bits)  # integer reference
    assert torch.equal(slow.double(), exact)
    assert torch.equal(fast.double(), exact)


@pytest.mark.parametrize("in_ch,w_bits", [(8, 8), (8, 9), (16, 9), (64, 10)])
@pytest.mark.parametrize("extremes", ["max", "alternate", "random"])
def test_float32_conv_accumulator_matches_float64(in_ch, w_bits, extremes, monkeypatch):
    x_fmt, w_fmt = "ap_ufixed<8,3,AP_RND,AP_SAT>", f"ap_fixed<{w_bits},1,AP_RND_CONV,AP_SAT>"
    conv = qfx.nn.QConv2d(in_ch, 4, 3, padding=1, bias="ap_fixed<16,4,AP_RND,AP_SAT>", input=x_fmt, weight=w_fmt,
                          output="ap_fixed<32,16>")
    acc = conv.auto_accum_format()
    conv = qfx.nn.QConv2d(in_ch, 4, 3, padding=1, bias="ap_fixed<16,4,AP_RND,AP_SAT>", input=x_fmt, weight=w_fmt,
                          output=str(acc))
    cpu = torch.device("cpu")
    assert conv.float32_exact(cpu) == (acc.width <= 25), acc
    g = torch.Generator().manual_seed(in_ch * w_bits)
    xt, wt = qfx.parse_type(x_fmt), qfx.parse_type(w_fmt)
    x = (_codes_tensor((3, in_ch, 6, 6), xt.min_code, xt.max_code, g, extremes).double() * 2.0**-xt.frac_bits).float()
    with torch.no_grad():
        conv.weight.copy_(_codes_tensor(conv.weight.shape, wt.min_code, wt.max_code, g, extremes) * 2.0**-wt.frac_bits)
        conv.bias.copy_(torch.linspace(-7.9, 7.9, 4))
        fast = conv(x)
        monkeypatch.setattr(mac_mod, "float32_kernels_exact", lambda: False)
        slow = conv(x)
    assert _same_bits(fast.double(), slow.double())


def test_float32_mac_is_off_when_torch_may_drop_float32_precision(monkeypatch):
    conv = qfx.nn.QConv2d(2, 2, 3, bias=False, input="ap_ufixed<8,3>", weight="ap_fixed<8,1>", output="ap_fixed<8,3>")
    cpu = torch.device("cpu")
    assert conv.float32_exact(cpu)
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert not conv.float32_exact(cpu)
    finally:
        torch.set_float32_matmul_precision(old)
    assert not conv.float32_exact(torch.device("meta"))


def _train_step_outputs(model_fn, x, monkeypatch, float64: bool):
    if float64:
        monkeypatch.setattr(mac_mod, "float32_kernels_exact", lambda: False)
    m = model_fn()
    out = m(x)
    monkeypatch.undo()
    return out


def test_demo_cnn_forward_matches_float64_input_path():
    """The whole demo CNN (training mode, batch statistics): float32 input runs every float32
    fast path, float64 input runs the float64 paths; the same values come out."""
    from qfx.demo.accuracy import word_length_config
    from qfx.demo.models import build_model

    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 8, 8, generator=g) * 16
    x[0, 0, :2, :] = torch.tensor([0.5 * k for k in range(16)]).reshape(2, 8)  # ties
    x[1] = 1e6  # saturation
    for cfg in (word_length_config(8), word_length_config(4)):
        fmodel = build_model("digits_cnn", seed=0)
        q = qfx.convert(fmodel, cfg).train()
        qfx.train.calibrate(q, [(x, torch.zeros(32, dtype=torch.long))])
        state = {k: v.clone() for k, v in q.state_dict().items()}
        y32 = q(x)
        q.load_state_dict(state)  # running statistics back
        y64 = q(x.double())
        assert _same_bits(y32.double(), y64.double())


def test_bn_add_relu_float32_paths_match_float64():
    bn = qfx.nn.QBatchNorm2d(3, input="ap_fixed<8,3,AP_RND,AP_SAT>", scale="ap_fixed<8,2,AP_RND_CONV,AP_SAT>",
                             shift="ap_fixed<8,3,AP_RND,AP_SAT>", output="ap_fixed<8,3,AP_RND,AP_SAT>").eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.3, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([0.5, 2.0, 0.01]))
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(2)) * 6
    x[0, 0, 0, :4] = torch.tensor([math.inf, -math.inf, math.nan, 0.0625 * 3])
    assert _same_bits(bn(x).double(), bn(x.double()).double())
    add = qfx.nn.QAdd(input="ap_fixed<8,3,AP_RND,AP_SAT>", output="ap_fixed<8,3,AP_RND,AP_SAT>")
    a, b = x, x.flip(0) * 0.7
    assert _same_bits(add(a, b).double(), add(a.double(), b.double()).double())
    relu = qfx.nn.QReLU(output="ap_ufixed<6,2,AP_RND,AP_SAT>")
    assert _same_bits(relu(x).double(), relu(x.double()).double())
