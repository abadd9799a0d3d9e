"""The fused C++ fast cast (qfx._fused) against the pure-torch casts, bit for bit.

float32: ``qfx.quant._FixedSTEFast`` with the kernels vs its torch ops (``QFX_NO_CPP=1``);
float64: ``_FixedSTEFused64`` vs ``_FixedSTE``. Forward values are compared as bit
patterns (signed zeros and NaN included), ``grad_x`` exactly, the binary-point gradient
to rounding (its summation order differs).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qfx import _fused, quant
from qfx.types import FixedType, Overflow, Rounding

pytestmark = pytest.mark.skipif(_fused.kernels() is None, reason="fused kernel unavailable (no C++ compiler)")

ROUNDINGS = list(Rounding)
OVERFLOWS = [Overflow.AP_SAT, Overflow.AP_SAT_SYM]
# (width, int_bits, signed, frac): frac as the binary point the cast uses.
SHAPES = [
    (8, 3, True, 5),
    (8, 3, False, 5),
    (4, 1, True, 3),
    (1, 1, True, 0),
    (1, 0, False, 1),
    (12, 12, True, 0),
    (16, 4, True, 12),
    (22, 2, True, 20),
    (22, 22, False, 0),
    (6, -40, True, 46),
    (10, 2, True, 100 - 0),
]


def _fmt(width: int, int_bits: int, signed: bool, rounding: Rounding, overflow: Overflow) -> FixedType:
    return FixedType(width, int_bits, signed, rounding, overflow)


def _corner_values(t: FixedType, frac: int, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Ties and their float32 neighbours, range edges, specials, and random values."""
    step = 2.0**-frac
    lo, hi = t.min_code, t.max_code
    codes = np.unique(np.concatenate([np.arange(-4, 5), [lo - 2, lo - 1, lo, lo + 1, hi - 1, hi, hi + 1, hi + 2],
                                      rng.integers(lo - 3, hi + 4, 24)]))
    base = []
    for c in codes:
        for off in (0.0, 0.5, 0.25, 0.75):
            base.append((float(c) + off) * step)
    base = np.asarray(base, dtype=dtype)
    near = np.concatenate([base, np.nextafter(base, dtype(np.inf)), np.nextafter(base, dtype(-np.inf))])
    fi = np.finfo(dtype)
    specials = np.array(
        [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, fi.smallest_subnormal, -fi.smallest_subnormal,
         fi.tiny, -fi.tiny, fi.max, -fi.max, 1e-45, -1e-45, 3e38, -3e38],
        dtype=dtype,
    )
    scale = max(abs(lo), hi, 1) * step * 1.5
    rand = (rng.standard_normal(3000) * scale).astype(dtype)
    # small negatives in (-0.5, 0) lsb: where s - floor(s) is inexact
    tiny = (-rng.random(200) * 0.5 * step).astype(dtype)
    return np.concatenate([near, -near, specials, rand, tiny]).astype(dtype)


def _run(x: np.ndarray, t: FixedType, frac: int, fused: bool, monkeypatch, g: "np.ndarray | None" = None):
    monkeypatch.setenv("QFX_NO_CPP", "0" if fused else "1")
    assert quant._fast_plan(t, frac) is not None
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    fb = torch.tensor(float(frac), requires_grad=True)
    q = quant._fixed_ste(xt, fb, t)
    expected = (quant._FixedSTEFast if x.dtype == np.float32 else
                quant._FixedSTEFused64 if fused else quant._FixedSTE)
    assert type(q.grad_fn).__name__.startswith(expected.__name__)
    gt = torch.ones_like(q) if g is None else torch.from_numpy(g)
    q.backward(gt)
    return q.detach(), xt.grad, fb.grad


def _bits(v: torch.Tensor) -> np.ndarray:
    v = v.detach().contiguous()
    return v.view(torch.int32 if v.dtype == torch.float32 else torch.int64).numpy()


def _assert_frac_grad_close(got, want, x, q, g=None) -> None:
    """The binary-point gradients of two summation orders agree to the float sum's rounding.

    The terms are g * (x - q) inside the range and -g * q outside, so sum |terms| is
    bounded by max|g| * (sum|x| + sum|q|); the two sums may differ by a few ulps of that
    bound, which is far more than rel=1e-5 of a result that cancels to near zero.
    """
    x = np.asarray(x.detach() if isinstance(x, torch.Tensor) else x)
    tol = 1e-5 if x.dtype == np.float32 else 1e-12
    xa = np.abs(x.astype(np.float64))
    g = None if g is None else np.asarray(g.detach() if isinstance(g, torch.Tensor) else g)
    ga = 1.0 if g is None else float(np.abs(g.astype(np.float64)).max(initial=1.0))
    mag = ga * (float(xa[xa < 2.0**40].sum()) + float(np.nansum(np.abs(q.detach().double().numpy()))))
    assert float(got) == pytest.approx(float(want), rel=tol, abs=tol * (1 + mag))


def _check(x: np.ndarray, t: FixedType, frac: int, monkeypatch, g: "np.ndarray | None" = None) -> None:
    qf, gxf, gff = _run(x, t, frac, True, monkeypatch, g)
    qt, gxt, gft = _run(x, t, frac, False, monkeypatch, g)
    bad = _bits(qf) != _bits(qt)
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(-1))[0])
        xi = float(x.reshape(-1)[i])
        raise AssertionError(f"{t} frac {frac}: x={xi!r} fused {float(qf.reshape(-1)[i])!r} torch {float(qt.reshape(-1)[i])!r}")
    assert qf.dtype == qt.dtype and gxf.dtype == gxt.dtype
    assert np.array_equal(_bits(gxf), _bits(gxt)), f"{t} frac {frac}: grad_x differs"
    if math.isnan(float(gft)):
        assert math.isnan(float(gff))
    else:
        _assert_frac_grad_close(gff, gft, x, qt, g)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("rounding", ROUNDINGS, ids=str)
@pytest.mark.parametrize("overflow", OVERFLOWS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"w{s[0]}i{s[1]}{'s' if s[2] else 'u'}f{s[3]}")
def test_fused_matches_torch(rounding, overflow, shape, dtype, monkeypatch):
    width, int_bits, signed, frac = shape
    t = _fmt(width, int_bits, signed, rounding, overflow)
    if quant._fast_plan(t, frac) is None:
        pytest.skip("outside the fast plan")
    rng = np.random.default_rng(hash((width, int_bits, signed, frac, str(rounding), str(overflow))) % 2**32)
    x = _corner_values(t, frac, rng, dtype)
    # NaN gradients would make the frac gradient NaN: the values are compared with NaN
    # inputs, the frac gradient without.
    _check(x, t, frac, monkeypatch)
    finite = x[~np.isnan(x)]
    g = rng.standard_normal(finite.shape).astype(dtype)
    _check(finite, t, frac, monkeypatch, g)
    if dtype == np.float64:  # grad * inside: NaN and signed-zero upstream gradients as _FixedSTE
        g[::7] = np.nan
        g[1::7] = -0.0
        qf, gxf, _ = _run(finite, t, frac, True, monkeypatch, g)
        qt, gxt, _ = _run(finite, t, frac, False, monkeypatch, g)
        assert np.array_equal(_bits(gxf), _bits(gxt))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n", [0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 1000])
def test_lengths_and_tails(n, dtype, monkeypatch):
    """Every element position (vector body and the padded tail) rounds the same."""
    t = _fmt(8, 3, True, Rounding.AP_RND_ZERO, Overflow.AP_SAT)
    rng = np.random.default_rng(n)
    x = (rng.integers(-300, 300, n) * 0.5 / 32).astype(dtype)  # ties and integers
    x[::3] = -0.0 if n else x[::3]
    _check(x, t, 5, monkeypatch, rng.standard_normal(n).astype(dtype))


def test_non_contiguous_and_views(monkeypatch):
    t = _fmt(8, 3, True, Rounding.AP_RND, Overflow.AP_SAT)
    base = torch.randn(6, 10, 5) * 4
    monkeypatch.setenv("QFX_NO_CPP", "0")
    fb = torch.tensor(5.0, requires_grad=True)
    for x in (base.transpose(0, 2), base[:, ::2], base[2:], base.to(memory_format=torch.contiguous_format)):
        xa = x.detach().requires_grad_(True)
        q = quant.quantize(xa, t, frac_bits=fb)
        g = torch.randn_like(q)
        q.backward(g)
        ref_x = x.detach().clone().requires_grad_(True)
        monkeypatch.setenv("QFX_NO_CPP", "1")
        fb2 = torch.tensor(5.0, requires_grad=True)
        qr = quant.quantize(ref_x, t, frac_bits=fb2)
        qr.backward(g)
        monkeypatch.setenv("QFX_NO_CPP", "0")
        assert np.array_equal(_bits(q), _bits(qr)) and q.shape == x.shape
        assert torch.equal(xa.grad, ref_x.grad)
        _assert_frac_grad_close(fb.grad, fb2.grad, x, qr, g)
        fb.grad = None


def test_no_frac_bits_and_no_grad(monkeypatch):
    """Fixed binary point (x grad only) and frac-only gradients."""
    t = _fmt(8, 3, True, Rounding.AP_RND_CONV, Overflow.AP_SAT_SYM)
    x = torch.randn(4, 33) * 8
    out = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("QFX_NO_CPP", flag)
        xa = x.clone().requires_grad_(True)
        q = quant.quantize(xa, t)
        q.backward(torch.ones_like(q))
        fb = torch.tensor(5.0, requires_grad=True)
        q2 = quant.quantize(x, t, frac_bits=fb)
        q2.sum().backward()
        out[flag] = (q, xa.grad, q2, fb.grad)
    assert torch.equal(out["0"][0], out["1"][0]) and torch.equal(out["0"][1], out["1"][1])
    assert torch.equal(out["0"][2], out["1"][2])
    _assert_frac_grad_close(out["0"][3], out["1"][3], x, out["1"][2])


def test_fallback_without_compiler(tmp_path):
    """No compiler: one warning, then the torch path (same values); importing needs none."""
    import os
    import subprocess
    import sys

    code = (
        "import warnings, torch, qfx\n"
        "from qfx import _fused\n"
        "x = torch.linspace(-9, 9, 101, requires_grad=True)\n"
        "fb = torch.tensor(5.0, requires_grad=True)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    q = qfx.quantize(x, 'ap_fixed<8,3,AP_RND,AP_SAT>', frac_bits=fb)\n"
        "    q2 = qfx.quantize(x, 'ap_fixed<8,3,AP_RND,AP_SAT>', frac_bits=fb)\n"
        "q.sum().backward()\n"
        "assert _fused.kernels() is None\n"
        "assert len([m for m in w if 'fused C++ cast' in str(m.message)]) == 1, [str(m.message) for m in w]\n"
        "assert type(q.grad_fn).__name__.startswith('_FixedSTEFast')\n"
        "print(repr(q.detach().tolist()), repr(x.grad.tolist()))\n"
    )
    env = {**os.environ, "QFX_CXX": "qfx-no-such-compiler", "TORCH_EXTENSIONS_DIR": str(tmp_path), "QFX_NO_CPP": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    env["QFX_CXX"] = os.environ.get("QFX_CXX", "g++")
    env["QFX_NO_CPP"] = "0"
    ref = subprocess.run([sys.executable, "-c", code.replace("assert _fused.kernels() is None\n", "").replace(
        "== 1, [", ">= 0, [")], env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    assert out.stdout == ref.stdout


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_double_backward(dtype, monkeypatch):
    """create_graph=True: grad_x stays differentiable in the upstream gradient."""
    t = _fmt(8, 3, True, Rounding.AP_RND, Overflow.AP_SAT)
    x0 = torch.randn(5, 17, dtype=dtype) * 6
    res = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("QFX_NO_CPP", flag)
        x = x0.clone().requires_grad_(True)
        w = torch.randn(5, 17, dtype=dtype, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        fb = torch.tensor(5.0, requires_grad=True)
        q = quant.quantize(x, t, frac_bits=fb)
        gx, gf = torch.autograd.grad((q * w).sum(), (x, fb), create_graph=True)
        (gx.square().sum() + gf).backward()
        res[flag] = (gx.detach(), w.grad)
    assert torch.equal(res["0"][0], res["1"][0])
    assert torch.allclose(res["0"][1], res["1"][1], rtol=1e-5, atol=1e-6)


def test_disabled_by_env(monkeypatch):
    monkeypatch.setenv("QFX_NO_CPP", "1")
    assert _fused.kernels() is None
    monkeypatch.setenv("QFX_NO_CPP", "0")
    assert _fused.kernels() is not None


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(
    width=st.integers(1, 22),
    frac=st.integers(0, 40),
    signed=st.booleans(),
    rounding=st.sampled_from(ROUNDINGS),
    overflow=st.sampled_from(OVERFLOWS),
    xs=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=40),
    ties=st.lists(st.tuples(st.integers(-(2**23), 2**23), st.sampled_from([-1, 0, 1])), max_size=20),
    f64=st.booleans(),
)
def test_property(width, frac, signed, rounding, overflow, xs, ties, f64):
    t = _fmt(width, width - frac, signed, rounding, overflow)
    plan = quant._fast_plan(t, frac)
    if plan is None:
        return
    # half-integers of the code grid and their float32 neighbours
    dt = np.float64 if f64 else np.float32
    tie_vals = []
    for k, d in ties:
        v = dt((k + 0.5) * 2.0**-frac)
        if d:
            v = np.nextafter(v, dt(np.inf * d))
        tie_vals.append(v)
    x = np.asarray(list(xs) + tie_vals, dtype=dt)
    with pytest.MonkeyPatch.context() as mp:
        _check(x, t, frac, mp) if not np.isnan(x).any() else _values_only(x, t, frac, mp)


def _values_only(x: np.ndarray, t: FixedType, frac: int, mp) -> None:
    qf, gxf, _ = _run(x, t, frac, True, mp)
    qt, gxt, _ = _run(x, t, frac, False, mp)
    assert np.array_equal(_bits(qf), _bits(qt))
    assert np.array_equal(_bits(gxf), _bits(gxt))
