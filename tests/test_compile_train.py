"""Compiled training steps (issue 16): one graph, and the bits of the eager step.

Backend: ``aot_eager`` (Dynamo + AOTAutograd, the aten kernels of eager mode): the compiled
step's forward values and weight gradients must equal the eager step's bit for bit, and its
binary-point gradients may differ only by their summation order (eager sums them in the fused
C++ kernel in float64, the compiled cast in the tensor's dtype). That freedom is bounded per
quantizer by the rounding bound of a sum of ``n`` terms summed in two orders,
``2 * gamma(n + 2) * ln2 * sum |g| * max(|x - q|, |q|)`` with ``gamma(k) = k u / (1 - k u)``:
each term is ``g * (x - q)`` (inside the range) or ``-g * q`` (saturated), so the bound holds
for every term. ``test_inductor_forward_matches_eager`` checks Inductor (C++ kernels generated
here) on a small model: forward values identical (every cast is exact and the float ops in the
forward are correctly rounded), gradients within the same kind of bound.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import qfx
from qfx import train as qtrain
from qfx.nn import QAdd, QBatchNorm2d, QConv2d, QLinear, QReLU, TensorQuantizer, compile_model, refresh_compile_plan
from qfx.nn.plan import CompilePlanError
from qfx.types import Overflow, Rounding

ROOT = Path(__file__).resolve().parents[1]
X = "ap_fixed<8,3,AP_RND_CONV,AP_SAT>"
W = "ap_fixed<8,1,AP_RND_CONV,AP_SAT>"
B = "ap_fixed<16,6,AP_RND,AP_SAT>"
U = "ap_ufixed<8,3,AP_RND,AP_SAT>"
LEARN = {"learn_binary_point": True}


# -- models -----------------------------------------------------------------------------------


def _digits(config: str):
    from qfx.data import digits_splits
    from qfx.demo.accuracy import khot_config, word_length_config
    from qfx.demo.models import build_model

    fm = build_model("digits_cnn", seed=0).train()
    cfg = {"W8": word_length_config(8), "khot": khot_config(fm)}[config]
    data = digits_splits(0).train
    return qfx.convert(fm, cfg).train(), data.tensors[0][:32], data.tensors[1][:32]


class _ResBN(nn.Module):
    """conv - BN - ReLU, a residual QAdd, per-channel learned weight binary points."""

    def __init__(self, weight: str = W) -> None:
        super().__init__()
        kw = dict(input=X, weight=weight, output=X, **LEARN)
        self.conv1 = QConv2d(2, 4, 3, padding=1, bias=False, **kw)
        self.bn = QBatchNorm2d(4, input=X, scale="ap_fixed<10,3,AP_RND>", shift="ap_fixed<10,3,AP_RND>", output=X, **LEARN)
        self.relu = QReLU(output=U, **LEARN)
        self.conv2 = QConv2d(4, 4, 3, padding=1, bias=B, weight_per_channel=True, **kw)
        self.add = QAdd(input=X, output=X, **LEARN)
        self.fc = QLinear(4 * 16, 5, bias=B, **kw)

    def forward(self, x):
        y = self.relu(self.bn(self.conv1(x)))
        y = self.add(y, self.conv2(y))
        return self.fc(torch.flatten(F.max_pool2d(y, 2), 1))


def _mlp(weight: str = W) -> nn.Module:
    return nn.Sequential(
        QLinear(12, 10, input=X, weight=weight, bias=B, output=X, **LEARN),
        QReLU(output=U, **LEARN),
        QLinear(10, 5, input=X, weight=weight, bias=B, output=X, **LEARN),
    )


def _model(name: str):
    g = torch.Generator().manual_seed(3)
    if name in ("digits_W8", "digits_khot"):
        return _digits(name.split("_")[1])
    if name == "mlp":
        m, x = _mlp(), torch.randn(32, 12, generator=g) * 2
    elif name == "mlp_minifloat":
        m, x = _mlp("fp8_e4m3fn<saturate=true>"), torch.randn(32, 12, generator=g) * 2
    elif name == "resbn":
        m, x = _ResBN(), torch.randn(16, 2, 8, 8, generator=g) * 2
    else:
        raise KeyError(name)
    return m.train(), x, torch.randint(0, 5, (len(x),), generator=g)


# -- helpers ----------------------------------------------------------------------------------


def _record_terms(model: nn.Module):
    """Hooks recording each learnable quantizer's ``x``, ``q`` and upstream gradient ``g``."""
    rec: dict[str, dict[str, torch.Tensor]] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, TensorQuantizer) and m.learnable:

            def hook(mod, inp, out, name=name):
                low = torch.float32 if torch.float32 in (inp[0].dtype, out.dtype) else torch.float64
                rec[name] = {"x": inp[0].detach().double(), "q": out.detach().double(), "dtype": low}
                if out.requires_grad:
                    out.register_hook(lambda g, name=name: rec[name].__setitem__("g", g.detach().double()))

            handles.append(m.register_forward_hook(hook))
    return rec, handles


def _frac_bound(terms: dict, dtype: torch.dtype) -> float:
    """Two summation orders of ``ln2 * sum g * d`` differ by at most this (see the module docstring);
    ``u`` of the cast's lower-precision tensor (the compiled cast sums in its dtype) or of ``dtype``."""
    low = terms.get("dtype", dtype)
    u = 2.0**-24 if torch.float32 in (dtype, low) else 2.0**-53
    x, q, g = terms["x"], terms["q"], terms.get("g")
    if g is None:
        return 0.0
    n = x.numel() + 2
    gamma = n * u / (1 - n * u)
    mag = (g.abs() * torch.maximum((x - q).abs().nan_to_num(0.0, 0.0, 0.0), q.abs())).sum().item()
    return 2 * gamma * math.log(2) * mag + 4 * u * math.log(2) * mag


def _step(model: nn.Module, fn, x, y):
    model.zero_grad(set_to_none=True)
    out = fn(x)
    F.cross_entropy(out.float(), y).backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _perturb(models, seed: int) -> None:
    """The same small update of both copies (weights and binary points move)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        params = [dict(m.named_parameters()) for m in models]
        for k in params[0]:
            if params[0][k].grad is None:
                continue
            d = torch.randn(params[0][k].shape, generator=g, dtype=torch.float64).to(params[0][k].dtype)
            d = d * (0.3 if k.endswith("frac_bits") else 0.02)
            for p in params:
                p[k].add_(d)


def _assert_same_step(eager: nn.Module, compiled: nn.Module, fn, x, y, tag: str, monkeypatch=None) -> None:
    """The compiled step's bits against the eager step's (forward, gradients; frac to the bound)."""
    oe, ge = _step(eager, eager, x, y)
    oc, gc = _step(compiled, fn, x, y)
    assert oe.dtype == oc.dtype and torch.equal(oe, oc), f"{tag}: forward values differ"
    assert ge.keys() == gc.keys()
    frac = {k: v for k, v in ge.items() if k.endswith("frac_bits")}
    for k in ge:
        if k not in frac:
            assert torch.equal(ge[k], gc[k]), f"{tag}: gradient of {k} differs"
    # the binary-point gradients: terms from an eager run on the torch path (hooks on every cast)
    ref = copy.deepcopy(eager)
    rec, handles = _record_terms(ref)
    if monkeypatch is not None:
        with monkeypatch.context() as mp:
            mp.setenv("QFX_NO_CPP", "1")
            _step(ref, ref, x, y)
    else:
        _step(ref, ref, x, y)
    for h in handles:
        h.remove()
    for k, v in frac.items():
        name = k[: -len(".frac_bits")]
        bound = _frac_bound(rec[name], x.dtype) if name in rec else 0.0
        diff = (v.double() - gc[k].double()).abs().max().item()
        assert diff <= bound, f"{tag}: gradient of {k} differs by {diff} > bound {bound}"


# -- one graph, the eager bits ------------------------------------------------------------------

MODELS = ["digits_W8", "digits_khot", "mlp", "mlp_minifloat", "resbn"]


@pytest.mark.parametrize("name", MODELS)
def test_compiled_step_matches_eager(name, monkeypatch):
    """fullgraph=True (one graph or an error), two steps with moved weights and binary points."""
    model, x, y = _model(name)
    qtrain.calibrate(model, [(x, y)])
    other = copy.deepcopy(model)
    fn = compile_model(other, backend="aot_eager")
    for i in range(2):
        _assert_same_step(model, other, fn, x, y, f"{name} step {i}", monkeypatch)
        _perturb((model, other), i)


def test_demo_cnn_step_is_one_graph():
    model, x, y = _digits("W8")
    qtrain.calibrate(model, [(x, y)])
    refresh_compile_plan(model)

    def forward_loss(a, b):
        return F.cross_entropy(model(a).float(), b)

    with torch.backends.nnpack.flags(enabled=False):
        e = torch._dynamo.explain(forward_loss)(x, y)
    assert e.graph_count == 1 and e.graph_break_count == 0, e.break_reasons


def _modes_model(dtype: torch.dtype) -> nn.Module:
    """One learnable cast per (rounding, overflow) pair, after a shared dense layer (the casts are
    what the modes change; the layers' own logic is covered by the models above)."""
    casts = nn.ModuleList(
        TensorQuantizer(qfx.parse_type(f"ap_fixed<7,2,{r.value},{o.value}>"), name=f"{r.value}_{o.value}", learnable=True)
        for r in Rounding for o in Overflow
    )

    class Modes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = QLinear(4, 3, input=X, weight=W, bias=B, output="ap_fixed<12,5,AP_RND,AP_SAT>", **LEARN)
            self.casts = casts

        def forward(self, x):
            h = self.fc(x)
            return torch.cat([q(h * (1 + i / 8)) for i, q in enumerate(self.casts)], dim=1)

    return Modes().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_every_rounding_and_overflow_mode(dtype, monkeypatch):
    """All 7 x 6 modes in one model (one compilation per dtype), binary points moved off their
    calibration so that elements saturate or wrap; ties included."""
    model = _modes_model(dtype).train()
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(24, 4, generator=g, dtype=torch.float64) * 4).to(dtype)
    x[:4] = torch.tensor([[0.5 + 1 / 64, -1 / 32, 3.0, -3.0]], dtype=dtype)  # ties and overflow
    y = torch.randint(0, 3 * len(model.casts), (24,), generator=g)
    qtrain.calibrate(model, [(x, y)])
    with torch.no_grad():  # binary points off their calibration: some elements saturate or wrap
        for q in model.modules():
            if isinstance(q, TensorQuantizer) and q.learnable:
                q.frac_bits.add_(1.0)
    other = copy.deepcopy(model)
    fn = compile_model(other, backend="aot_eager")
    for i in range(2):
        _assert_same_step(model, other, fn, x, y, f"{dtype} step {i}", monkeypatch)
        _perturb((model, other), 10 + i)


def test_float64_model_matches_eager(monkeypatch):
    model, x, y = _model("resbn")
    model, x = model.double(), x.double()
    qtrain.calibrate(model, [(x, y)])
    other = copy.deepcopy(model)
    fn = compile_model(other, backend="aot_eager")
    _assert_same_step(model, other, fn, x, y, "float64 resbn", monkeypatch)


# -- the plan -----------------------------------------------------------------------------------


def test_stale_plan_is_refused_not_wrong():
    model, x, y = _model("mlp")
    qtrain.calibrate(model, [(x, y)])
    refresh_compile_plan(model)
    fn = torch.compile(model, fullgraph=True, backend="aot_eager")
    fn(x)
    with torch.no_grad():
        model[0].quant["input"].frac_bits.add_(1.0)  # moved by a whole bit; no refresh
    with pytest.raises(RuntimeError, match="refresh_compile_plan"):  # CompilePlanError or the fast cast's assert
        fn(x)
    refresh_compile_plan(model)
    assert torch.equal(fn(x), model(x))


@pytest.mark.parametrize("name", ["resbn", "digits_W8"])
def test_batched_reading_equals_each_quantizers_own(name):
    """refresh_compile_plan reads every binary point in a few batched reads; they must equal what
    each quantizer reads alone (scalar and per-channel binary points, calibration flags), also
    at exact half-way values where the rounding is to even."""
    from qfx.nn.plan import _read_binary_points

    model, x, y = _model(name)
    qtrain.calibrate(model, [(x, y)])
    qs = [m for m in model.modules() if isinstance(m, TensorQuantizer)]
    assert any(q.per_channel for q in qs) or name != "resbn"
    with torch.no_grad():
        for i, q in enumerate(q for q in qs if q.learnable):
            q.frac_bits.add_(0.5 if i % 2 else -2.5)  # ties: 3.5 -> 4, 2.5 -> 2, -2.5 -> -2
        first = next(q for q in qs if q.learnable)
        first.calibrated.fill_(False)
    got = _read_binary_points(qs)
    for q in qs:
        if q.frac_bits is not None:
            assert got[id(q)] == q.plan_reading(), q.name
    assert got[id(first)][1] is False


def test_unchanged_plan_is_kept_and_a_moved_point_refreshes_it():
    """A refresh in which no binary point crossed a rounding boundary keeps every plan object
    (the skip); one that moved refreshes that quantizer's plan, its buffer and the layers that
    read it, and the compiled forward then equals the eager one."""
    model, x, y = _model("resbn")
    qtrain.calibrate(model, [(x, y)])
    refresh_compile_plan(model)
    fn = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert torch.equal(fn(x), model(x))
    mods = [m for m in model.modules() if "_compile_plan" in m.__dict__]
    before = {id(m): m.__dict__["_compile_plan"] for m in mods}
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, TensorQuantizer) and m.learnable:
                m.frac_bits.add_(0.2)  # inside the same rounding interval (calibrated points are integers)
    refresh_compile_plan(model)
    assert all(m.__dict__["_compile_plan"] is before[id(m)] for m in mods)
    conv = model.conv1
    q = conv.quant["input"]
    with torch.no_grad():
        q.frac_bits.sub_(2.0)  # across a boundary: coarser input grid, a different product type
    old_layer_key = conv.__dict__["_layer_plan_key"]
    refresh_compile_plan(model)
    assert int(q._planned_frac) == int(torch.round(q.frac_bits))
    assert conv.__dict__["_layer_plan_key"] != old_layer_key
    assert torch.equal(fn(x), model(x))


def test_uncompilable_settings_are_named():
    model, x, y = _model("mlp")
    qfx.nn.set_track_overflow(model, True)
    with pytest.raises(CompilePlanError, match="set_track_overflow"):
        refresh_compile_plan(model)
    fresh = _model("mlp")[0]
    refresh_compile_plan(fresh)  # not calibrated: the compiled forward says so
    with pytest.raises(Exception, match="calibrate"):
        torch.compile(fresh, fullgraph=True, backend="aot_eager")(x)


# -- fit(compile=...), qfx train --compile -------------------------------------------------------


def _loaders():
    from torch.utils.data import DataLoader, TensorDataset

    model, x, y = _model("mlp")
    g = torch.Generator().manual_seed(5)
    xs, ys = torch.randn(80, 12, generator=g) * 2, torch.randint(0, 5, (80,), generator=g)
    return model, DataLoader(TensorDataset(xs, ys), batch_size=32, shuffle=True, generator=torch.Generator())


def test_fit_compiled_trains_like_eager():
    """Same losses, weights and formats after two epochs (batches of 32, 32 and a partial 16)."""
    m1, loader = _loaders()
    m2 = copy.deepcopy(m1)
    kw = dict(epochs=2, lr=1e-2, frac_lr=0.05, progress=False, freeze=False, seed=0)
    r1 = qtrain.fit(m1, loader, **kw)
    r2 = qtrain.fit(m2, loader, compile=True, compile_backend="aot_eager", **kw)
    for a, b in zip(r1.history, r2.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6) and a["int_bits"] == b["int_bits"]
    for (k, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        tol = 1e-4 if k.endswith("frac_bits") else 1e-5  # Adam amplifies the frac-gradient rounding freedom
        assert torch.allclose(p1, p2, rtol=tol, atol=tol), k


def test_fit_compile_bad_arguments():
    m, loader = _loaders()
    with pytest.raises(ValueError, match="compile must be"):
        qtrain.fit(m, loader, epochs=1, lr=1e-3, compile="yes", progress=False)
    with pytest.raises(qtrain.CompileUnavailable, match="nosuch"):
        qtrain.fit(m, loader, epochs=1, lr=1e-3, compile=True, compile_backend="nosuch", progress=False)
    with pytest.warns(RuntimeWarning, match="training eagerly"):
        qtrain.fit(m, loader, epochs=1, lr=1e-3, compile="auto", compile_backend="nosuch", progress=False)


TINY = {
    "model": "digits_mlp",
    "data": {"name": "digits", "batch_size": 256},
    "train": {"seed": 1, "float_epochs": 0, "epochs": 1, "lr": 1e-3, "calibrate_batches": 1},
    "quant": {"default": {"input": X, "weight": W, "bias": B, "output": X, "learn_binary_point": True},
              "types": {"ReLU": {"output": U}}},
}


def _cli(tmp_path: Path, *args: str, cxx: str):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    env = {**__import__("os").environ, "CXX": cxx, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    return subprocess.run([sys.executable, "-m", "qfx.cli", "train", str(cfg), "-o", str(tmp_path / "r"), "-q", *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_cli_compile_without_a_compiler(tmp_path):
    """CXX names no compiler: --compile is an error (exit 2, nothing written); --compile auto warns once and trains."""
    r = _cli(tmp_path, "--compile", cxx=str(tmp_path / "no-such-g++"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("qfx: error: torch.compile (backend 'inductor') does not work here") and "--compile auto" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "r").exists()
    r = _cli(tmp_path, "--compile", "auto", cxx=str(tmp_path / "no-such-g++"))
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if "warning" in ln]
    assert len(warn) == 1 and warn[0].startswith("qfx: warning: torch.compile") and "training eagerly" in warn[0]
    assert (tmp_path / "r" / "final.pt").is_file()


def test_cli_compile_bad_value(tmp_path, capsys):
    from qfx.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "x.yaml", "-o", str(tmp_path / "r"), "--compile", "maybe"])
    assert e.value.code == 2 and "invalid choice: 'maybe'" in capsys.readouterr().err


# -- Inductor -------------------------------------------------------------------------------------


def test_inductor_forward_matches_eager():
    if qtrain.compile_unavailable("inductor") is not None:
        pytest.skip(qtrain.compile_unavailable("inductor"))
    model, x, y = _model("mlp")
    qtrain.calibrate(model, [(x, y)])
    other = copy.deepcopy(model)
    fn = compile_model(other, backend="inductor")
    oe, ge = _step(model, model, x, y)
    oc, gc = _step(other, fn, x, y)
    assert torch.equal(oe, oc)
    for k in ge:  # Inductor fuses the loss and the casts' backward: float reductions in its own order
        assert torch.allclose(ge[k], gc[k], rtol=1e-5, atol=1e-6 * (1 + ge[k].abs().max().item())), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_compiled_step_matches_eager():
    model, x, y = _model("resbn")
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    qtrain.calibrate(model, [(x, y)])
    other = copy.deepcopy(model)
    fn = compile_model(other, backend="inductor")
    oe, _ = _step(model, model, x, y)
    oc, _ = _step(other, fn, x, y)
    assert torch.equal(oe, oc)


def test_exact_powers_of_two():
    """The compiled fast cast's 2**F is exact (the exponent field written directly)."""
    from qfx import _compiled

    e = torch.arange(-126, 128, dtype=torch.int32)
    assert torch.equal(_compiled._pow2(e), torch.tensor([2.0**int(v) for v in e], dtype=torch.float32))
    e = torch.arange(-1022, 1024, dtype=torch.float64)
    assert torch.equal(_compiled._pow2(e, torch.float64), torch.tensor([2.0**int(v) for v in e], dtype=torch.float64))
