"""Vitis HLS C++ generation (qfx.hls): the g++ C simulation equals the integer reference, bit for bit.

* Small exported models (MLP with an auto accumulator; MLP with a narrow one
  that really rounds and overflows; CNN with conv, BatchNorm, ReLU / ReLU6,
  max / average pooling, flatten, dense and K-hot weights; a residual block
  with a minifloat conv and an add; a K-hot MLP): C-sim output codes ==
  ``qfx.reference.run`` codes on 64 random vectors plus corner vectors,
  0 mismatches. Each model is compiled once (module fixture, two at a time)
  and the executable is cached by content hash.
* The generated code compiles without a single warning of its own under
  ``-Wall`` (ap_types' own warnings are listed and allowed, see below).
* ``run_hls.tcl`` under ``tclsh`` with stub commands: order and part.
* L-Mul layers (``multiply: lmul``, dense and conv, seven minifloat weight
  formats): the same C-sim == reference check, on the random vectors plus
  every input code at every position; the activations hit ties, subnormals,
  flushes to zero and saturation (checked).
* Determinism, atomic writes, refusals (unsupported op named by node,
  foreign files), compiler errors surfaced.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import qfx.hls as hls
from qfx.export import export
from qfx.manifest import load
from qfx.nn import QLinear, QReLU
from qfx.reference import run
from qfx.intops import cast_codes, fixed_to_minifloat_fields
from tests.qmodels import LMUL_MODELS, MODELS, B, W, X, Y, accum_overflows, code_sweep, init_weights, per_channel
from tests.qmodels import model_inputs as _inputs

# The hardware matrix plus the L-Mul models (their inputs add a sweep of every input code at every position).
HLS_MODELS = {**MODELS, **LMUL_MODELS}


pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed for the HLS C simulation")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every model exported, generated and compiled once (two g++ at a time; cached by content)."""
    root = tmp_path_factory.mktemp("hls")
    out = {}
    for i, (name, (make, shape, scale, _ops)) in enumerate(HLS_MODELS.items()):
        x = _inputs(shape, scale, 100 + i)
        if name in LMUL_MODELS:
            x = torch.cat([x, code_sweep(shape)])
        model = make(x) if make is per_channel else make()
        d = root / name
        export(model, x, d / "manifest")
        man = load(d / "manifest")
        ref = run(man, x)
        hls.generate(d / "manifest", d)
        out[name] = dict(model=model, x=x, manifest=man, ref=ref, dir=d)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        builds = dict(zip(out, pool.map(lambda n: hls.build(out[n]["dir"]), out)))
    for name, (exe, log, cached) in builds.items():
        out[name].update(exe=exe, log=log, cached=cached)
    return out


@pytest.mark.parametrize("name", list(HLS_MODELS))
def test_csim_equals_reference(built, name):
    b = built[name]
    man, ref = b["manifest"], b["ref"]
    assert HLS_MODELS[name][3] <= {n.op for n in man}
    codes = ref[man.input]
    got = hls.csim(b["dir"], codes)
    want = ref[man.output].reshape(len(codes), -1)
    assert got.shape == want.shape and got.dtype == np.int64
    bad = np.argwhere(got != want)
    assert bad.size == 0, (
        f"{name}: {len(bad)} of {want.size} output codes differ, first at vector {bad[0][0]} element {bad[0][1]}: "
        f"C sim {got[tuple(bad[0])]}, reference {want[tuple(bad[0])]}, format {man.node(man.output).output_format}"
    )
    assert len(np.unique(want)) > 3  # the outputs are not trivially constant


def test_narrow_accumulators_really_round_and_overflow(built):
    for name in ("mlp_narrow", "khot_mlp"):
        b = built[name]
        macs = [n for n in b["manifest"] if n.op == "dense"]
        assert macs and not any(n.params["accum_exact"] for n in macs)
        assert accum_overflows(b["model"], b["x"]) > 0, name
    assert all(n.params["accum_exact"] for n in built["mlp_auto"]["manifest"] if n.op == "dense")


def test_per_channel_weight_formats_are_covered(built):
    man = built["per_channel"]["manifest"]
    w = man.nodes[1].formats["weight"]
    assert isinstance(w, tuple) and len({t.int_bits for t in w}) == 3


def _lmul_corners(man, ref) -> dict[str, int]:
    """How often the L-Mul layers' activations hit each corner of the rounding to the weight format."""
    n = dict(ties=0, subnormal=0, saturated=0, to_zero=0, zero=0, layers=0)
    for node in man:
        if node.op not in ("dense", "conv2d") or node.params["multiply"] != "lmul":
            continue
        n["layers"] += 1
        src, fx, t = man.node(node.inputs[0]), node.formats["input"], node.formats["weight"]
        x = cast_codes(ref[src.name], src.output_format.frac_bits, fx).reshape(-1)
        _, zero, e, f = fixed_to_minifloat_fields(x, fx.frac_bits, t, node.name)
        a = np.abs(x)
        length = np.array([int(v).bit_length() for v in a])
        sh = np.maximum(length - 1, t.emin + fx.frac_bits) - t.mantissa_bits
        rem = a & ((np.int64(1) << np.maximum(sh, 0)) - 1)
        n["ties"] += int(((sh > 0) & (rem == (np.int64(1) << np.maximum(sh - 1, 0)))).sum())
        n["subnormal"] += int((~zero & (e < t.emin)).sum())
        n["saturated"] += int((np.ldexp(a.astype(np.float64), -fx.frac_bits) > t.max).sum())
        n["to_zero"] += int((zero & (x != 0)).sum())
        n["zero"] += int((x == 0).sum())
    return n


def test_lmul_models_cover_the_rounding_corners(built):
    for name in LMUL_MODELS:
        b = built[name]
        c = _lmul_corners(b["manifest"], b["ref"])
        assert c["layers"] >= 2 and c["ties"] > 0 and c["zero"] > 0, (name, c)
    c = _lmul_corners(built["lmul_formats"]["manifest"], built["lmul_formats"]["ref"])
    assert c["layers"] == 6 and min(c.values()) > 0, c  # ties, subnormals, saturation, flushes to zero
    man = built["lmul_formats"]["manifest"]
    kinds = {str(n.formats["weight"]) for n in man if n.op == "dense"}
    assert len(kinds) >= 5  # subnormals, no subnormals, M = 1, M = 0 (fn), non-saturating IEEE
    cpp = (built["lmul_cnn"]["dir"] / "hls" / "qfx_top.cpp").read_text()
    for node in built["lmul_cnn"]["manifest"]:
        if node.op in ("dense", "conv2d"):
            assert f"{node.name}_lmul(" in cpp and f"static const {node.name}_e_t {node.name}_we[" in cpp
            assert f"static const {node.name}_w_t" not in cpp  # no multiplier operand: fields and adds


def test_khot_weights_are_shifts_and_adds(built):
    for name in ("khot_mlp", "cnn"):
        man = built[name]["manifest"]
        khot = [n for n in man if n.op == "dense" and "weight_khot_shifts" in n.arrays]
        assert khot
        cpp = (built[name]["dir"] / "hls" / "qfx_top.cpp").read_text()
        for n in khot:
            assert f"{n.name}_wsh[" in cpp and f"{n.name}_wsg[" in cpp
            assert f"static const {n.name}_w_t" not in cpp  # no multiplier operand for K-hot layers


# ap_types' own warnings under -Wall at -O1: ap_private's default constructor leaves VAL uninitialised and
# clearUnusedBits() reads it (etc/ap_private.h, clearUnusedBits); g++ reports it inside the header.
HEADER_WARNING_KINDS = ("-Wuninitialized", "-Wmaybe-uninitialized")


def test_generated_code_compiles_without_warnings(built):
    for name, b in built.items():
        ws = hls.compiler_warnings(b["log"])
        # A cached build's log names the headers where they were when it compiled (another
        # checkout's venv, say): recognise them by their folder, not by this venv's path.
        own = [w for w in ws if "ap_types" not in Path(w[0]).parts]
        assert own == [], f"{name}: warnings in generated code: {own}"
        for path, line, msg in ws:
            assert Path(path).name == "ap_private.h" and msg.endswith(tuple(f"[{k}]" for k in HEADER_WARNING_KINDS)), (name, path, line, msg)


def test_testbench_reads_a_file_argument(built, tmp_path):
    b = built["mlp_auto"]
    man, ref = b["manifest"], b["ref"]
    codes = ref[man.input][:3]
    lines = ["3"] + [" ".join(str(int(v) & 0xFF) for v in row) for row in codes]
    f = tmp_path / "tb_input.txt"
    f.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([str(b["exe"]), str(f)], capture_output=True, text=True, check=True)
    rows = [[int(v) for v in ln.split()] for ln in proc.stdout.splitlines()]
    want = ref[man.output][:3] & 0x3FF
    assert rows == want.tolist()


# ---------------------------------------------------------------------------
# The generated files
# ---------------------------------------------------------------------------


def test_generated_project_layout_and_pragmas(built):
    d = built["cnn"]["dir"] / "hls"
    assert sorted(p.name for p in d.iterdir()) == sorted(hls.generated_files("qfx_top"))
    cpp = (d / "qfx_top.cpp").read_text()
    h = (d / "qfx_top.h").read_text()
    for pragma in ("INTERFACE axis port=in_stream", "INTERFACE axis port=out_stream",
                   "INTERFACE s_axilite port=return", "DATAFLOW", "PIPELINE II=1", "ARRAY_PARTITION"):
        assert f"#pragma HLS {pragma}" in cpp, pragma
    assert "void qfx_top(hls::stream<qfx_top_in_t>& in_stream, hls::stream<qfx_top_out_t>& out_stream)" in h
    man = built["cnn"]["manifest"]
    for node in man:
        if node.op in ("input", "output"):
            continue
        assert f"typedef ap_fixed<10,4,AP_RND_CONV,AP_SAT> {node.name}_out_t;" in h or f"{node.name}_out_t;" in h
    conv = man.nodes[1]
    assert f"typedef ap_fixed<8,1,AP_RND_CONV,AP_SAT> {conv.name}_w_t;" in h
    assert f"static const {conv.name}_w_t {conv.name}_w[72]" in cpp


def test_generate_is_deterministic_and_reuse_factor_drives_pragmas(built, tmp_path):
    src = built["residual"]["dir"] / "manifest"
    a = hls.generate(src, tmp_path / "a")
    b = hls.generate(src, tmp_path / "b")
    for name in hls.generated_files("qfx_top"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    again = (built["residual"]["dir"] / "hls" / "qfx_top.cpp").read_bytes()
    assert (a / "qfx_top.cpp").read_bytes() == again
    r4 = hls.generate(src, tmp_path / "c", reuse_factor=4, top="res_top")
    cpp4 = (r4 / "res_top.cpp").read_text()
    assert "#pragma HLS PIPELINE II=4" in cpp4 and "#pragma HLS PIPELINE II=4" not in (a / "qfx_top.cpp").read_text()
    assert sorted(p.name for p in r4.iterdir()) == sorted(hls.generated_files("res_top"))


def test_run_hls_tcl_under_tclsh_with_stubs(built, tmp_path):
    tclsh = shutil.which("tclsh")
    if tclsh is None:
        pytest.skip("tclsh not installed")
    d = tmp_path / "hls"
    shutil.copytree(built["mlp_auto"]["dir"] / "hls", d)
    cmds = ["open_project", "set_top", "add_files", "open_solution", "set_part", "create_clock",
            "csim_design", "csynth_design", "export_design"]
    stub = tmp_path / "stub.tcl"
    stub.write_text(
        "set ::calls {}\n"
        + "".join(f"proc {c} args {{ lappend ::calls [linsert $args 0 {c}] }}\n" for c in cmds)
        + "rename exit __exit\nproc exit args {}\n"
        + f"source {{{d / 'run_hls.tcl'}}}\n"
        + "foreach c $::calls { puts $c }\n"
    )

    def calls() -> list[list[str]]:
        out = subprocess.run([tclsh, str(stub)], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
        return [ln.split() for ln in out.splitlines()]

    got = calls()
    names = [c[0] for c in got]
    assert names == ["open_project", "set_top", "add_files", "add_files", "add_files", "open_solution", "set_part",
                     "create_clock", "csim_design", "csynth_design", "export_design"]
    assert got[1] == ["set_top", "qfx_top"]
    assert ["add_files", "-tb", "qfx_top_tb.cpp"] == got[4][:3]
    assert {"qfx_top.cpp", "qfx_top.h"} <= {c[1] for c in got[2:4]}
    assert got[6] == ["set_part", "xczu3eg-sbva484-1-i"] and hls.PART == "xczu3eg-sbva484-1-i"
    assert got[7][:3] == ["create_clock", "-period", "10"]
    assert got[8] == ["csim_design"]
    (d / "tb_input.txt").write_text("0\n")
    assert calls()[8] == ["csim_design", "-argv", str(d / "tb_input.txt")]


# ---------------------------------------------------------------------------
# Refusals and errors
# ---------------------------------------------------------------------------


def test_unsupported_op_is_named(built, tmp_path):
    man = built["mlp_auto"]["manifest"]
    nodes = list(man.nodes)
    nodes[2] = dataclasses.replace(nodes[2], op="softmax")
    bad = dataclasses.replace(man, nodes=tuple(nodes))
    with pytest.raises(ValueError, match=rf"node '{nodes[2].name}': op 'softmax' is not supported"):
        hls.generate(bad, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_node_names_that_clash_in_cpp_are_refused(built, tmp_path):
    man = built["mlp_auto"]["manifest"]
    for bad_name in ("std", "ap_thing"):
        nodes = list(man.nodes)
        nodes[2] = dataclasses.replace(nodes[2], name=bad_name)
        with pytest.raises(ValueError, match=f"node '{bad_name}'"):
            hls.render(dataclasses.replace(man, nodes=tuple(nodes)))
    nodes = list(man.nodes)
    nodes[2] = dataclasses.replace(nodes[2], name="n0_buf")  # would shadow n0's output buffer
    nodes[3] = dataclasses.replace(nodes[3], inputs=("n0_buf",))
    with pytest.raises(ValueError, match=r"\['n0_buf'\] collide"):
        hls.render(dataclasses.replace(man, nodes=tuple(nodes)))




def test_bad_top_and_reuse_factor(built, tmp_path):
    src = built["mlp_auto"]["dir"] / "manifest"
    for top in ("9x", "a__b", "int", "n0", "", "std", "ap_top", "n0_buf", "n0_w_t"):
        with pytest.raises(ValueError, match="top"):
            hls.generate(src, tmp_path / "o", top=top)
    for rf in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="reuse_factor"):
            hls.generate(src, tmp_path / "o", reuse_factor=rf)
    assert not (tmp_path / "o").exists()


def test_foreign_files_are_refused_and_nothing_is_written(built, tmp_path):
    src = built["mlp_auto"]["dir"] / "manifest"
    d = hls.generate(src, tmp_path)
    hls.generate(src, tmp_path, reuse_factor=2)  # only our own files there: replaced
    assert "II=2" in (d / "qfx_top.cpp").read_text()
    (d / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(FileExistsError, match="notes.txt"):
        hls.generate(src, tmp_path, reuse_factor=3)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hls"]  # no temporary folder left behind
    hls.generate(src, tmp_path, reuse_factor=3, force=True)
    assert not (d / "notes.txt").exists() and "II=3" in (d / "qfx_top.cpp").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hls"]


def test_compile_errors_surface_compiler_lines(built, tmp_path):
    d = tmp_path / "hls"
    shutil.copytree(built["mlp_auto"]["dir"] / "hls", d)
    with open(d / "qfx_top.cpp", "a") as fh:
        fh.write("\nstatic int broken = undeclared_identifier_xyz;\n")
    with pytest.raises(hls.HlsCompileError, match=r"qfx_top\.cpp:\d+:\d+: error: .*undeclared_identifier_xyz"):
        hls.csim(tmp_path, np.zeros((1, 12), dtype=np.int64))


def test_csim_checks_its_inputs(built):
    d = built["mlp_auto"]["dir"]
    with pytest.raises(ValueError, match="12"):
        hls.csim(d, np.zeros((2, 5), dtype=np.int64))
    with pytest.raises(ValueError, match="-128..127"):
        hls.csim(d, np.full((1, 12), 128, dtype=np.int64))
    with pytest.raises(TypeError, match="integer"):
        hls.csim(d, np.zeros((1, 12)))
    with pytest.raises(FileNotFoundError, match="generate"):
        hls.csim(d / "manifest", np.zeros((1, 12), dtype=np.int64))


def test_cast_to_a_grid_above_the_source_msb_does_not_abort(tmp_path):
    # ap_fixed<8,1> -> ap_fixed<4,8,AP_RND_CONV>: the destination lsb (16) lies above the source msb; a plain
    # assignment aborts in ap_private::get_bit, qfx_cast sign-extends first. Every value rounds to 0 there.
    model = init_weights(nn.Sequential(
        QLinear(12, 4, input=X, weight=W, bias=B, output="ap_fixed<8,1,AP_RND,AP_SAT>"),
        QReLU(output="ap_fixed<4,8,AP_RND_CONV,AP_SAT>"),
        QLinear(4, 3, input=X, weight=W, bias=B, output=Y),
    ), 21)
    x = _inputs((12,), 2.0, 7)
    export(model, x, tmp_path / "m")
    man = load(tmp_path / "m")
    ref = run(man, x)
    hls.generate(tmp_path / "m", tmp_path)
    assert "qfx_cast<n1_out_t>(v)" in (tmp_path / "hls" / "qfx_top.cpp").read_text()
    got = hls.csim(tmp_path, ref[man.input])
    assert np.array_equal(got, ref[man.output].reshape(len(x), -1))
    assert (ref["n1"] == 0).all() and len(np.unique(ref["n0"])) > 4
