"""Vitis HLS C++ generation (qfx.hls): the g++ C simulation equals the integer reference, bit for bit.

* Small exported models (MLP with an auto accumulator; MLP with a narrow one
  that really rounds and overflows; CNN with conv, BatchNorm, ReLU / ReLU6,
  max / average pooling, flatten, dense and K-hot weights; a residual block
  with a minifloat conv and an add; a K-hot MLP): C-sim output codes ==
  ``qfx.reference.run`` codes on 64 random vectors plus corner vectors,
  0 mismatches. Each model is compiled once (module fixture, two at a time)
  and the executable is cached by content hash.
* K-hot conv2d and minifloat (``multiply: exact``, weights as ap_uint bit
  patterns decoded in C++) models; C-sim == the PyTorch emulation as well.
* The generated code compiles without a single warning under ``-Wall``
  (ap_types' own are silenced around its includes only).
* The testbench checks itself (what ``csim_design`` runs): ``tb_input.txt`` /
  ``tb_expected.txt`` hold the integer reference's codes; one wrong expected
  code fails it, naming vector and element.
* ``run_hls.tcl`` under ``tclsh`` with stub commands: order, part, -tb files.
* L-Mul layers (``multiply: lmul``, dense and conv, seven minifloat weight
  formats): the same C-sim == reference check, on the random vectors plus
  every input code at every position; the activations hit ties, subnormals,
  flushes to zero and saturation (checked).
* Determinism, atomic writes, refusals (unsupported op named by node, names
  that are not C++ identifiers, formats spanning more than ap_fixed's 1024
  bits, weight codes beyond exact doubles, foreign files), compiler errors
  surfaced.
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
from qfx.types import parse_type
from qfx.quant import to_codes
from tests.qmodels import FORMAT_MODELS, LMUL_MODELS, MODELS, B, W, X, Y, accum_overflows, code_sweep, init_weights
from tests.qmodels import per_channel
from tests.qmodels import model_inputs as _inputs

# The hardware matrix, the L-Mul models (their inputs add a sweep of every input code at every position) and
# the format kinds only the HLS generator covers (K-hot conv2d, minifloat dense with exact products).
HLS_MODELS = {**MODELS, **LMUL_MODELS, **FORMAT_MODELS}


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
    # and the PyTorch emulation, directly (the model the manifest was exported from)
    with torch.no_grad():
        emu = to_codes(b["model"].eval()(b["x"]), man.node(man.output).output_format).numpy().reshape(len(codes), -1)
    bad = np.argwhere(got != emu)
    assert bad.size == 0, f"{name}: {len(bad)} C sim codes differ from the emulation, first at {bad[0]}"


def test_format_models_cover_khot_conv_and_exact_minifloat(built):
    conv = [n for n in built["khot_cnn"]["manifest"] if n.op == "conv2d"]
    assert len(conv) == 2 and all("weight_khot_shifts" in n.arrays for n in conv)
    assert {n.formats["weight"].k for n in conv} == {2, 3}
    assert {n.params["groups"] for n in conv} == {1, 2}
    dense = [n for n in built["minifloat_mlp"]["manifest"] if n.op == "dense"]
    assert len(dense) == 4 and all(n.params["multiply"] == "exact" for n in dense)
    assert all(type(n.formats["weight"]).__name__ == "MinifloatType" for n in dense)
    assert accum_overflows(built["minifloat_mlp"]["model"], built["minifloat_mlp"]["x"]) > 0


def test_minifloat_weights_are_bit_patterns_decoded_in_cpp(built):
    # multiply: exact minifloat weights: the manifest's bit patterns as ap_uint<1+E+M>, decoded by <node>_wdec
    # (their bit-exact values are the C-sim == reference tests above: minifloat_mlp, residual)
    for name in ("minifloat_mlp", "residual"):
        cpp = (built[name]["dir"] / "hls" / "qfx_top.cpp").read_text()
        nodes = [n for n in built[name]["manifest"] if n.op in ("dense", "conv2d")
                 and type(n.formats["weight"]).__name__ == "MinifloatType"]
        assert nodes
        for n in nodes:
            t = n.formats["weight"]
            bits = 1 + t.exponent_bits + t.mantissa_bits
            head = f"static const ap_uint<{bits}> {n.name}_w[{n.arrays['weight'].size}] = {{ "
            assert head in cpp, head
            table = cpp[cpp.index(head) + len(head):].split(" }", 1)[0]
            assert [int(v) for v in table.split(", ")] == n.arrays["weight"].reshape(-1).tolist()
            assert f"{n.name}_wdec({n.name}_w[" in cpp and f"static {n.name}_w_t {n.name}_wdec(" in cpp
    kinds = {(n.formats["weight"].subnormals, n.formats["weight"].mantissa_bits > 0)
             for n in built["minifloat_mlp"]["manifest"] if n.op == "dense"}
    assert kinds == {(True, True), (False, True), (True, False)}  # both decoder branches and M = 0


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
    for name in ("khot_mlp", "cnn", "khot_cnn"):
        man = built[name]["manifest"]
        khot = [n for n in man if n.op in ("dense", "conv2d") and "weight_khot_shifts" in n.arrays]
        assert khot
        cpp = (built[name]["dir"] / "hls" / "qfx_top.cpp").read_text()
        for n in khot:
            assert f"{n.name}_wsh[" in cpp and f"{n.name}_wsg[" in cpp
            assert f"static const {n.name}_w_t" not in cpp  # no multiplier operand for K-hot layers


def test_generated_code_compiles_without_warnings(built):
    # ap_types' own -Wall warnings (ap_private's uninitialised VAL) are silenced for its headers only, by
    # diagnostic pragmas in <top>.h: g++ -Wall prints nothing at all
    for name, b in built.items():
        assert hls.compiler_warnings(b["log"]) == [], f"{name}: -Wall warnings: {hls.compiler_warnings(b['log'])}"
        assert "warning" not in b["log"], (name, b["log"][:2000])


def test_plain_wall_compile_prints_nothing(built):
    # hls.CXX_FLAGS also switch off GCC's access-analysis warnings (for speed); plain -Wall
    # compiles of the generated files print nothing either
    from qfx._toolchain import compiler

    for name in ("cnn", "lmul_cnn"):
        d = built[name]["dir"] / "hls"
        for src in ("qfx_top.cpp", "qfx_top_tb.cpp"):
            cmd = [compiler()[0], "-std=c++14", "-O1", "-Wall", "-Wno-unknown-pragmas", "-isystem",
                   str(hls.include_dir()), "-I", str(d), "-c", str(d / src), "-o", "/dev/null"]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            assert proc.returncode == 0 and proc.stdout + proc.stderr == "", (name, src, proc.stderr[:2000])


def test_diagnostic_pragmas_silence_only_the_headers(built, tmp_path):
    # the same uninitialised read in generated code is still reported: -Wall stays on after the headers
    d = tmp_path / "hls"
    shutil.copytree(built["mlp_auto"]["dir"] / "hls", d)
    with open(d / "qfx_top.cpp", "a") as fh:
        fh.write("\nint qfx_probe() {\n    int u;\n    return u + 1;\n}\n")
    _, log, _ = hls.build(d)
    assert [(Path(p).name, msg.split()[-1]) for p, _, msg in hls.compiler_warnings(log)] == [
        ("qfx_top.cpp", "[-Wuninitialized]")]


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


def _read_codes(path: Path) -> list[list[int]]:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert int(lines[0]) == len(lines) - 1
    return [[int(v) for v in ln.split()] for ln in lines[1:]]


@pytest.mark.parametrize("name", list(HLS_MODELS))
def test_testbench_checks_itself_against_the_reference(built, name):
    # what csim_design runs: no arguments, tb_input.txt / tb_expected.txt from the current folder
    b = built[name]
    man, d = b["manifest"], b["dir"] / "hls"
    proc = subprocess.run([str(b["exe"])], capture_output=True, text=True, cwd=d, check=False)
    assert proc.returncode == 0 and "PASS: 16 vectors" in proc.stdout, (proc.stdout, proc.stderr)
    # the expected codes are the integer reference's on the input codes, recomputed here
    fin, fout = man.input_node.output_format, man.node(man.output).output_format
    codes = np.array(_read_codes(d / "tb_input.txt"), dtype=np.int64)
    codes = np.where(codes >= 1 << (fin.width - 1), codes - (1 << fin.width), codes) if fin.signed else codes
    assert codes.shape == (16, int(np.prod(man.input_node.output_shape)))
    assert codes.min() == fin.min_code and codes.max() == fin.max_code and len(np.unique(codes)) > 20
    x = torch.from_numpy(np.ldexp(codes.astype(np.float64), -fin.frac_bits)).reshape(16, *man.input_node.output_shape)
    want = run(man, x)[man.output].reshape(16, -1) & ((1 << fout.width) - 1)
    assert _read_codes(d / "tb_expected.txt") == want.tolist()


def test_testbench_fails_on_a_wrong_expected_code(built, tmp_path):
    b = built["cnn"]
    d = tmp_path / "hls"
    shutil.copytree(b["dir"] / "hls", d)
    fout = b["manifest"].node(b["manifest"].output).output_format
    rows = _read_codes(d / "tb_expected.txt")
    good = rows[3][2]
    rows[3][2] = (good + 1) & ((1 << fout.width) - 1)
    (d / "tb_expected.txt").write_text(f"{len(rows)}\n" + "".join(" ".join(map(str, r)) + "\n" for r in rows))
    proc = subprocess.run([str(b["exe"])], capture_output=True, text=True, cwd=d, check=False)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert f"MISMATCH at vector 3 element 2: expected code {rows[3][2]}, got {good}" in proc.stdout
    assert f"FAIL: 1 of {16 * len(rows[0])} output codes differ" in proc.stdout
    # the explicit form on other files: the same verdict; a missing file is an error, not a pass
    moved = tmp_path / "want.txt"
    (d / "tb_expected.txt").rename(moved)
    proc2 = subprocess.run([str(b["exe"]), "tb_input.txt", str(moved)], capture_output=True, text=True, cwd=d)
    assert proc2.returncode == 1 and proc2.stdout == proc.stdout.replace("tb_expected.txt", str(moved))
    proc3 = subprocess.run([str(b["exe"])], capture_output=True, text=True, cwd=d)
    assert proc3.returncode == 2 and "cannot open tb_expected.txt" in proc3.stderr


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
        # every format of the node, spelled from the manifest's format (not from the generator's helper)
        for role, key in (("out", "output"), ("in", "input"), ("acc", "accum"), ("b", "bias"), ("scale", "scale"),
                          ("shift", "shift"), ("recip", "reciprocal"), ("a", "in_a"), ("b", "in_b")):
            t = node.formats.get(key)
            if t is None or (node.op in ("input", "output") and role != "out"):
                continue
            spelled = (f"{'ap_fixed' if t.signed else 'ap_ufixed'}<{t.width},{t.int_bits},{t.rounding.name},"
                       f"{t.overflow.name}>")
            assert f"typedef {spelled} {node.name}_{role}_t;" in h, (node.name, role, spelled)
        assert str(node.output_format).startswith(("ap_fixed<", "ap_ufixed<"))
    conv = man.nodes[1]
    assert f"typedef ap_fixed<8,1,AP_RND_CONV,AP_SAT> {conv.name}_w_t;" in h
    assert f"static const {conv.name}_w_t {conv.name}_w[72]" in cpp
    assert "typedef ap_fixed<8,3,AP_RND,AP_SAT> qfx_top_in_t;" in h  # X, spelled by hand
    assert "typedef ap_fixed<10,4,AP_RND_CONV,AP_SAT> qfx_top_out_t;" in h  # Y


def test_conv_input_buffer_is_partitioned_by_the_reuse_factor(built, tmp_path):
    man = built["cnn"]["manifest"]
    convs = [n for n in man if n.op == "conv2d"]
    for rf in (1, 4):
        d = hls.generate(built["cnn"]["dir"] / "manifest", tmp_path / str(rf), reuse_factor=rf)
        cpp = (d / "qfx_top.cpp").read_text()
        for n in convs:
            c, _, _ = n.input_shapes[0]
            kh, kw = n.params["kernel"]
            n_terms = c // n.params["groups"] * kh * kw  # read by one output, over rf cycles
            body = cpp[cpp.index(f"void {n.name}("):]
            body = body[:body.index("\n}\n")]
            want = f"#pragma HLS ARRAY_PARTITION variable=x cyclic factor={-(-n_terms // rf)}"
            assert want in body, (n.name, rf, want)
            assert f"variable={n.name}_w cyclic factor={-(-n_terms // rf)}" in body


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
    assert names == ["open_project", "set_top", "add_files", "add_files", "add_files", "add_files", "add_files",
                     "open_solution", "set_part", "create_clock", "csim_design", "csynth_design", "export_design"]
    assert got[1] == ["set_top", "qfx_top"]
    assert {"qfx_top.cpp", "qfx_top.h"} <= {c[1] for c in got[2:4]}
    # the testbench and its two data files as -tb files (Vitis copies them where csim runs the testbench)
    assert [c[:3] for c in got[4:7]] == [["add_files", "-tb", "qfx_top_tb.cpp"], ["add_files", "-tb", "tb_input.txt"],
                                         ["add_files", "-tb", "tb_expected.txt"]]
    assert all((d / c[2]).is_file() for c in got[4:7])
    assert got[8] == ["set_part", "xczu3eg-sbva484-1-i"] and hls.PART == "xczu3eg-sbva484-1-i"
    assert got[9][:3] == ["create_clock", "-period", "10"]
    assert got[10] == ["csim_design"]  # no arguments: the testbench checks itself
    assert got[12][:3] == ["export_design", "-format", "ip_catalog"]


# ---------------------------------------------------------------------------
# Refusals and errors
# ---------------------------------------------------------------------------


def test_unsupported_op_is_named(built, tmp_path):
    man = built["mlp_auto"]["manifest"]
    nodes = list(man.nodes)
    nodes[2] = dataclasses.replace(nodes[2], op="lstm")
    bad = dataclasses.replace(man, nodes=tuple(nodes))
    with pytest.raises(ValueError, match=rf"node '{nodes[2].name}': op 'lstm' is not supported"):
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




def _replace_node(man, i, **changes):
    nodes = list(man.nodes)
    nodes[i] = dataclasses.replace(nodes[i], **changes)
    return dataclasses.replace(man, nodes=tuple(nodes))


def test_node_names_that_are_not_cpp_identifiers_are_refused(built, tmp_path):
    man = built["mlp_auto"]["manifest"]
    for bad_name in ("3x", "a-b", "a b", "a__b", "_a", "int", "delete"):
        bad = _replace_node(man, 2, name=bad_name)
        with pytest.raises(ValueError, match=rf"node name {bad_name!r} is not a valid C\+\+ identifier"):
            hls.generate(bad, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_formats_wider_than_ap_fixed_are_refused(built, tmp_path):
    # a ReLU from a grid of 2**-900 to one of 2**900: every format is legal, but casting between them needs
    # ap_fixed types far beyond AP_INT_MAX_W (1024 bits), which ap_types refuses to declare
    man = built["mlp_auto"]["manifest"]
    relu = man.nodes[2]
    assert relu.op == "relu"
    fine, coarse = parse_type("ap_fixed<8,-892,AP_RND,AP_SAT>"), parse_type("ap_fixed<8,908,AP_RND,AP_SAT>")
    bad = _replace_node(man, 2, formats={**relu.formats, "input": fine, "output": coarse})
    with pytest.raises(ValueError, match=rf"node '{relu.name}' \(relu\): its formats span \d+ bits .* beyond the "
                                         r"1024-bit maximum of ap_fixed"):
        hls.generate(bad, tmp_path / "o")
    assert not (tmp_path / "o").exists()
    # just inside: a span of ~1000 bits renders
    ok = _replace_node(man, 2, formats={**relu.formats, "input": parse_type("ap_fixed<8,-480,AP_RND,AP_SAT>"),
                                        "output": parse_type("ap_fixed<8,500,AP_RND,AP_SAT>")})
    assert "typedef ap_fixed<8,500,AP_RND,AP_SAT>" in hls.render(ok)["qfx_top.h"]


def test_weight_codes_wider_than_exact_doubles_are_refused(built, tmp_path):
    # constants are written as exact double literals: a 60-bit weight code cannot be, and is refused by name
    man = built["mlp_auto"]["manifest"]
    dense = man.nodes[1]
    assert dense.op == "dense"
    w60 = parse_type("ap_fixed<60,1,AP_RND_CONV,AP_SAT>")
    wide = dense.arrays["weight"] << 52
    assert np.abs(wide).max() >= 1 << 53
    bad = _replace_node(man, 1, formats={**dense.formats, "weight": w60}, arrays={**dense.arrays, "weight": wide})
    with pytest.raises(ValueError, match=rf"node '{dense.name}' weight: code -?\d+ needs more than 53 bits"):
        hls.generate(bad, tmp_path / "o")
    assert not (tmp_path / "o").exists()


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
