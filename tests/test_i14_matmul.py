"""Issue 14 transformer pieces, four ways: the matmul of two activations (``@``, ``torch.matmul``,
``torch.bmm``) and the ops that only reorder codes (``transpose`` / ``permute`` / ``.mT``,
``reshape`` / ``view`` keeping the batch dim).

Models (attention scores ``q @ k.transpose(-2, -1)`` and ``attn @ v`` from Linear projections of a
``[N, T, F]`` input, one and two heads, and a reorder-only model) go float -> ``qfx.convert`` -> a few
QAT steps (learned binary points) -> export -> integer reference == emulation on every layer ->
``qfx-gen`` (rtl, hls) -> ``verify`` with 0 mismatches. The reference's matmul is also checked against
an independent oracle (Python integers, the documented accumulation order and casts written out
here), and mutations of that oracle (k descending, a transposed operand) must disagree with it.
Expected values come from the reference, the emulation and the oracle, never from the hardware.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import qfx
from qfx.conversion import ConversionError
from qfx.export import export
from qfx.manifest import ManifestError, load
from qfx.reference import run, run_codes
from qfx.types import Overflow, Rounding
from tests.fourway import config, assert_reference_equals_emulation, assert_rtl_and_hls_bit_exact, assert_verilog_lints_clean, short_qat

CFG = config()
#: the two-head model's score matmul accumulates in a narrow format: every step rounds and saturates
NARROW = {**CFG, "layers": {"matmul": {"accum": "ap_fixed<9,4,AP_RND,AP_SAT>", "output": "ap_fixed<8,4,AP_RND,AP_SAT>"}}}


class AttentionHead(nn.Module):
    """One head: scores ``q @ k.transpose(-2, -1)``, then ``torch.bmm(scores, v)`` and an output projection."""

    def __init__(self, f: int = 6, d: int = 4) -> None:
        super().__init__()
        self.q, self.k, self.v, self.proj = nn.Linear(f, d), nn.Linear(f, d), nn.Linear(f, d), nn.Linear(d, 3)

    def forward(self, x):
        s = self.q(x) @ self.k(x).transpose(-2, -1)
        return self.proj(torch.bmm(s, self.v(x)))


class TwoHeads(nn.Module):
    """Two heads of width 3 over 5 tokens: reshape(-1, T, H, D).permute(0, 2, 1, 3), ``.mT``,
    ``torch.matmul``, then back with permute and view."""

    def __init__(self, f: int = 4, h: int = 2, d: int = 3, t: int = 5) -> None:
        super().__init__()
        self.h, self.d, self.t = h, d, t
        self.q, self.k, self.v = nn.Linear(f, h * d), nn.Linear(f, h * d), nn.Linear(f, h * d)
        self.proj = nn.Linear(h * d, 3)  # not 'o': a node named like an engine port trips verilator's VARHIDDEN

    def heads(self, y):
        return y.reshape(-1, self.t, self.h, self.d).permute(0, 2, 1, 3)

    def forward(self, x):
        q, k, v = self.heads(self.q(x)), self.heads(self.k(x)), self.heads(self.v(x))
        s = torch.matmul(q, k.mT)
        o = (s @ v).permute(0, 2, 1, 3).view(-1, self.t, self.h * self.d)
        return self.proj(o)


class Reorder(nn.Module):
    """Only reorders between two Linear layers: reshape to 4-D, a 4-D permute, reshape, transpose."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x):  # [N, 4, 5]
        y = self.fc1(x).reshape(-1, 4, 2, 3).permute(0, 3, 1, 2)  # [N, 3, 4, 2]
        y = torch.reshape(y, (-1, 4, 6)).transpose(1, 2)  # [N, 6, 4]
        return self.fc2(torch.transpose(y, 1, 2))


MODELS = {
    "attention_head": (AttentionHead, (6, 6), CFG, {"dense", "permute", "matmul"}),
    "two_heads": (TwoHeads, (5, 4), NARROW, {"dense", "permute", "reshape", "matmul"}),
    "reorder": (Reorder, (4, 5), CFG, {"dense", "permute", "reshape"}),
}


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    name = request.param
    make, shape, cfg, _ops = MODELS[name]
    q, x = short_qat(make, shape, cfg)
    d = tmp_path_factory.mktemp(name)
    export(q, x, d / "manifest")
    return name, q, x, d


def test_reference_equals_emulation_on_every_layer(exported):
    name, q, x, d = exported
    man = load(d / "manifest")
    assert_reference_equals_emulation(name, q, x, man, MODELS[name][3])
    for node in man:
        if node.op in ("permute", "reshape"):  # the format passes through: no cast
            src = man.node(node.inputs[0]).output_format
            assert node.formats["input"] == node.formats["output"] == src


def test_rtl_and_hls_bit_exact(exported):
    _name, q, _x, d = exported
    assert_rtl_and_hls_bit_exact(q, d)


def test_verilog_lints_clean_and_is_deterministic(exported, tmp_path):
    name, _q, _x, d = exported
    assert_verilog_lints_clean(d / "manifest", tmp_path, name)


def test_cost_model_covers_the_new_engines(exported):
    from qfx.cost.energy import energy_per_inference
    from qfx.cost.estimate import estimate
    from qfx.hw.accel import Accelerator, estimate_resources

    name, _q, _x, d = exported
    man = load(d / "manifest")
    computing = [n.name for n in man if n.op not in ("input", "flatten", "reshape", "output")]
    est = estimate(man)
    assert set(est["per_layer"]) == set(computing) and est["lut"] > 0
    acc = Accelerator(man)
    acc._MustUse__silence = True  # only its cycle model is used here
    cyc = acc.cycle_estimate()
    assert set(cyc["engines"]) == set(computing) and cyc["total"] > 0
    res = estimate_resources(man)["per_layer"]
    dsp = {k: v["dsp"] for k, v in res.items()}
    energy = energy_per_inference(man, dsp, {k: v["bram36"] for k, v in res.items()})["per_layer"]
    for node in man:
        if node.op == "matmul":  # one in_a x in_b multiplier, both operands buffered, K products per output
            assert res[node.name]["dsp"] >= 1 and res[node.name]["memory_bits"] > 0
            k = node.input_shapes[0][-1]
            assert cyc["engines"][node.name]["compute"] == math.prod(node.output_shape) * k
            assert energy[node.name]["macs"] == math.prod(node.output_shape) * k
            assert energy[node.name]["product_pj"] > 0 and energy[node.name]["accumulate_pj"] > 0
        if node.op == "permute":
            assert res[node.name]["memory_bits"] == 2 * math.prod(node.output_shape) * node.formats["output"].width
            assert cyc["engines"][node.name]["compute"] == math.prod(node.output_shape)


def test_cost_report_covers_the_new_engines(exported):
    from qfx.cost.report import cost_report

    _name, _q, _x, d = exported
    rep = cost_report(d / "manifest", synth=False)
    man = load(d / "manifest")
    for node in man:
        if node.op in ("matmul", "permute"):
            assert rep["throughput"]["per_engine_cycles"][node.name]["compute"] >= math.prod(node.output_shape)
            row = rep["energy"]["per_layer"][node.name]
            assert row["memory_pj"] > 0 and row["total_pj"] > 0
        if node.op == "matmul":
            assert rep["energy"]["per_layer"][node.name]["product_pj"] > 0
            assert rep["resources"]["per_layer"][node.name]["dsp"] >= 1
        if node.op == "reshape":  # wiring: no engine, no cost
            assert node.name not in rep["resources"]["per_layer"] and node.name not in rep["energy"]["per_layer"]


def test_two_heads_manifest_shapes(tmp_path):
    q, x = short_qat(TwoHeads, (5, 4), NARROW)
    man = load(export(q, x, tmp_path / "m"))
    mms = [n for n in man if n.op == "matmul"]
    assert [(n.input_shapes, n.output_shape) for n in mms] == [
        (((2, 5, 3), (2, 3, 5)), (2, 5, 5)), (((2, 5, 5), (2, 5, 3)), (2, 5, 3))]
    assert [n.params["accum_exact"] for n in mms] == [False, True]
    assert {tuple(n.params["dims"]) for n in man if n.op == "permute"} == {(1, 0, 2), (0, 2, 1)}


# ---------------------------------------------------------------------------
# The independent oracle: Python integers, the documented order and casts written out here
# ---------------------------------------------------------------------------


def _cast(v: Fraction, fmt) -> int:
    """The ap_fixed cast of an exact rational (the modes these tests use), as a code."""
    s = v * 2 ** fmt.frac_bits
    fl = math.floor(s)
    rem = s - fl
    if fmt.rounding is Rounding.AP_TRN:
        c = fl
    elif fmt.rounding is Rounding.AP_RND:
        c = fl + (rem >= Fraction(1, 2))
    else:  # pragma: no cover
        raise AssertionError(fmt)
    if fmt.overflow is Overflow.AP_SAT:
        return min(max(c, fmt.min_code), fmt.max_code)
    assert fmt.overflow is Overflow.AP_WRAP  # pragma: no cover
    w = fmt.width
    c &= (1 << w) - 1
    return c - (1 << w) if fmt.signed and c >> (w - 1) else c


def _oracle(a_codes, a_fmt, b_codes, b_fmt, node, order: str = "ascending", transpose_b: bool = False) -> np.ndarray:
    """``cast(sum_k cast(.. cast(0 + a*b, accum) .., accum), output)`` on values, per output element."""
    f = node.formats
    a = np.asarray(a_codes, dtype=object)
    b = np.asarray(b_codes, dtype=object)
    if transpose_b:
        b = np.swapaxes(b, -1, -2)
    n, lead = a.shape[0], a.shape[1:-2]
    t_n, k_n, s_n = a.shape[-2], a.shape[-1], b.shape[-1]
    out = np.zeros((n, *lead, t_n, s_n), dtype=np.int64)
    ks = range(k_n) if order == "ascending" else range(k_n - 1, -1, -1)
    for idx in np.ndindex(n, *lead):
        for t in range(t_n):
            for s in range(s_n):
                acc = Fraction(0)
                for k in ks:
                    qa = _cast(Fraction(int(a[idx + (t, k)]), 2 ** a_fmt.frac_bits), f["in_a"])
                    qb = _cast(Fraction(int(b[idx + (k, s)]), 2 ** b_fmt.frac_bits), f["in_b"])
                    p = Fraction(qa, 2 ** f["in_a"].frac_bits) * Fraction(qb, 2 ** f["in_b"].frac_bits)
                    acc = Fraction(_cast(acc + p, f["accum"]), 2 ** f["accum"].frac_bits)
                out[idx + (t, s)] = _cast(acc, f["output"])
    return out


@pytest.mark.parametrize("name", ["attention_head", "two_heads"])
def test_reference_matmul_equals_the_oracle_and_mutations_differ(name, tmp_path):
    make, shape, cfg, _ops = MODELS[name]
    q, x = short_qat(make, shape, cfg)
    export(q, x, tmp_path / "m")
    man = load(tmp_path / "m")
    ref = run(man, x)
    narrow = 0
    for node in (n for n in man if n.op == "matmul"):
        (sa, sb) = node.inputs
        fa, fb = man.node(sa).output_format, man.node(sb).output_format
        want = _oracle(ref[sa], fa, ref[sb], fb, node)
        assert np.array_equal(ref[node.name], want), node.name
        assert len(np.unique(want)) > 5
        if not node.params["accum_exact"]:  # a rounding, saturating accumulator: the order matters
            narrow += 1
            rev = _oracle(ref[sa], fa, ref[sb], fb, node, order="descending")
            assert not np.array_equal(rev, want), f"{node.name}: k descending gives the same bits"
        if node.input_shapes[1][-1] == node.input_shapes[1][-2]:  # square b: a @ b.T has the same shape
            swapped = _oracle(ref[sa], fa, ref[sb], fb, node, transpose_b=True)
            assert not np.array_equal(swapped, want), f"{node.name}: a transposed b gives the same bits"
    assert narrow == (1 if name == "two_heads" else 0)


def test_explicit_accum_is_the_step_by_step_loop():
    """QMatMul by hand: accum ap_fixed<4,2,AP_TRN,AP_SAT> (lsb 1/4, range [-2, 1.75]): products
    1.5*1 = 1.5, then 1.5 + 0.75 = 2.25 saturates to 1.75, then 1.75 - 0.375 = 1.375 truncates to 1.25;
    the exact sum 1.875 would give another answer."""
    m = qfx.nn.QMatMul(input="ap_fixed<8,3,AP_TRN,AP_SAT>", accum="ap_fixed<4,2,AP_TRN,AP_SAT>",
                       output="ap_fixed<8,3,AP_TRN,AP_SAT>")
    a = torch.tensor([[[1.5, 0.75, -0.375]]])  # [1, 1, 3]
    b = torch.tensor([[[1.0], [1.0], [1.0]]])  # [1, 3, 1]
    assert m(a, b).item() == 1.25
    exact = qfx.nn.QMatMul(input="ap_fixed<8,3,AP_TRN,AP_SAT>", output="ap_fixed<8,3,AP_TRN,AP_SAT>")
    assert exact(a, b).item() == 1.875
    assert not m.accum_is_exact() and exact.accum_is_exact()


def test_gradients_reach_both_operands_and_the_binary_points():
    torch.manual_seed(0)
    q = qfx.convert(AttentionHead(), CFG)
    q.train()
    x = torch.randn(8, 6, 6)
    q(x).square().mean().backward()
    mm = q.get_submodule("matmul")
    grads = {n: p.grad for n, p in mm.named_parameters()}
    assert grads and all(g is not None for g in grads.values())
    assert q.get_submodule("q").weight.grad.abs().sum() > 0 and q.get_submodule("k").weight.grad.abs().sum() > 0


def test_matmul_and_permute_engine_cycles_measured(tmp_path):
    """``x @ x.transpose(-2, -1)`` alone: one tensor takes the modelled ``total`` cycles, back-to-back
    tensors leave every ``ii`` cycles (the matmul's G*T*S*K products), with backpressure on both
    sides the outputs are the reference's (Amaranth simulation of the whole accelerator)."""
    from qfx.hw.accel import Accelerator
    from qfx.sim.amaranth_run import run_accelerator

    class Gram(nn.Module):
        def forward(self, x):
            return x @ x.transpose(-2, -1)

    cfg = {"default": {"input": "ap_fixed<6,2,AP_RND,AP_SAT>", "output": "ap_fixed<8,3,AP_RND,AP_SAT>",
                       "accum": "ap_fixed<8,3,AP_RND,AP_SAT>", "learn_binary_point": False}}
    q = qfx.convert(Gram(), cfg).eval()
    x = torch.randn(6, 4, 3)
    q(x)
    export(q, x, tmp_path / "m")
    man = load(tmp_path / "m")
    mm = next(n for n in man if n.op == "matmul")
    assert not mm.params["accum_exact"]
    acc = Accelerator(man)
    est = acc.cycle_estimate()
    assert est["ii"] == est["engines"][mm.name]["ii"] == 4 * 4 * 3
    rng = np.random.default_rng(3)
    fmt = man.input_node.output_format
    codes = rng.integers(fmt.min_code, fmt.max_code + 1, size=(6, 4, 3))
    codes[0] = fmt.max_code  # saturating steps
    codes[1] = fmt.min_code
    want = run_codes(man, codes)[man.output].reshape(len(codes), -1)
    assert len(np.unique(want)) > 5
    r = run_accelerator(acc, codes[:1].reshape(1, -1), max_cycles=3 * est["total"])
    assert np.array_equal(r.outputs, want[:1]) and r.cycles == [est["total"]]
    r = run_accelerator(acc, codes[:4].reshape(4, -1), back_to_back=True, max_cycles=10 * est["total"])
    assert np.array_equal(r.outputs, want[:4])
    assert np.diff(r.done_at).tolist() == [est["ii"]] * 3
    r = run_accelerator(acc, codes.reshape(6, -1), stall_in=0.3, stall_out=0.3, seed=1, max_cycles=60 * est["total"])
    assert np.array_equal(r.outputs, want)


# ---------------------------------------------------------------------------
# Bad input: the layer, the argument and what is supported
# ---------------------------------------------------------------------------


class _Two(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.a(x), self.b(x))


@pytest.mark.parametrize("fn, shape, words", [
    (lambda a, b: a @ b, (5, 4), ["layer 'matmul' (matmul)", "inner dims differ", "K = 4", "K = 5"]),
    (lambda a, b: a.reshape(-1, 2, 5, 2) @ a.reshape(-1, 1, 2, 10),
     (5, 4), ["layer 'matmul' (matmul)", "different leading dims", "no broadcasting"]),
    (lambda a, b: a.transpose(0, 1) @ b, (5, 4), ["layer 'transpose' (permute)", "batch dim (0) must stay first"]),
    (lambda a, b: a.reshape(-1, 4) @ b, (5, 4), ["layer 'reshape' (reshape)", "keeping the batch dim"]),
])
def test_bad_operands_name_the_layer(fn, shape, words):
    x = torch.randn(2, *shape)
    try:
        q = qfx.convert(_Two(fn), CFG)
        q(x)
    except (ConversionError, ValueError) as err:
        msg = str(err)
    else:  # pragma: no cover
        raise AssertionError("no error")
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("fn, words", [
    (lambda a, b: a.view(8, 5, 4) @ b.mT, ["view", "batch dim", "-1"]),
    (lambda a, b: a.view(a.size(0), 5, 4) @ b.mT, ["size", "constant"]),
    (lambda a, b: torch.matmul(a, b.mT, out=None), ["matmul", "two tensors"]),
])
def test_unsupported_calls_are_refused_at_conversion(fn, words):
    with pytest.raises(ConversionError) as info:
        qfx.convert(_Two(fn), CFG)
    msg = str(info.value)
    for w in words:
        assert w in msg, (w, msg)
    assert "matmul" in msg and "permute" in msg and "reshape" in msg  # the supported table


def test_lmul_without_operand_is_refused_for_matmul():  # L-Mul itself: tests/test_i14_matmul_lmul.py
    cfg = {**CFG, "layers": {"matmul": {"multiply": "lmul"}}}
    with pytest.raises(ConversionError, match=r"layer 'matmul' \(matmul\).*multiply='lmul' needs the minifloat operand"):
        qfx.convert(AttentionHead(), cfg)


def test_manifest_checks_the_new_ops(tmp_path):
    import yaml

    q, x = short_qat(TwoHeads, (5, 4), NARROW)
    export(q, x, tmp_path / "m")
    path = tmp_path / "m" / "manifest.yaml"
    text = path.read_text()

    def broken(change, match):
        doc = yaml.safe_load(text)
        change(doc["nodes"])
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        with pytest.raises(ManifestError, match=match):
            load(tmp_path / "m")

    def first(nodes, op):
        return next(n for n in nodes if n["op"] == op)

    broken(lambda ns: first(ns, "matmul")["params"].update(accum_exact=True), "accum_exact is true but accum")
    broken(lambda ns: first(ns, "matmul")["params"].update(multiply="lmul"), "multiply: lmul needs formats.operand")
    broken(lambda ns: first(ns, "matmul")["params"].update(multiply="fast"), "multiply must be one of")
    broken(lambda ns: first(ns, "permute")["params"].update(dims=[0, 0, 1]), "not a permutation")
    broken(lambda ns: first(ns, "reshape")["params"].update(shape=[5, 2, 4]), r"reshape of input \[5, 6\]")
    broken(lambda ns: first(ns, "permute")["formats"].update(output="ap_fixed<9,3>"), "must equal")

    def wrong_inner(ns):
        mm = first(ns, "matmul")
        mm["inputs"] = [mm["inputs"][0], mm["inputs"][0]]
        mm["input_shapes"] = [mm["input_shapes"][0]] * 2
    broken(wrong_inner, "matmul inner dims differ")
    path.write_text(text)
    assert load(tmp_path / "m")  # the unchanged export loads


def test_qonnx_reorder_model_equals_reference(tmp_path):
    """permute / reshape lower to ONNX Transpose / Reshape: qonnx's execution of the file equals the
    integer reference; a matmul is refused naming the node."""
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    from qfx.export import to_qonnx
    from qfx.qonnx_export import QonnxExportError

    q, x = short_qat(Reorder, (4, 5), CFG)
    path = to_qonnx(q, x, tmp_path / "reorder.onnx")
    man = load(export(q, x, tmp_path / "m"))
    mw = ModelWrapper(str(path))
    (y,) = execute_onnx(mw, {mw.graph.input[0].name: x.numpy().astype(np.float32)}).values()
    codes = y.astype(np.float64) * 2.0 ** man.output_node.output_format.frac_bits
    ref = run(man, x)[man.output]
    assert np.array_equal(codes, ref) and len(np.unique(ref)) > 4
    q2, x2 = short_qat(AttentionHead, (6, 6), CFG)
    with pytest.raises(QonnxExportError, match=r"node 'matmul' \(matmul, source 'matmul'\).*no QONNX"):
        to_qonnx(q2, x2, tmp_path / "attn.onnx")
