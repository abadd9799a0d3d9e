"""Untrusted files do not run code (issue 15): checkpoints are read with ``torch.load(weights_only=True)``.

A planted pickle payload -- an object whose unpickling would create a marker file -- is put where
qfx reads checkpoints (a run's ``final.pt``, ``float.pt``, ``checkpoints/epoch_NNNN.pt``); every
reader refuses it with a clear error and the marker never appears. A checkpoint of tensors and
plain data, what qfx writes, still loads.
"""

from __future__ import annotations

import builtins
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from qfx import train as qtrain
from qfx.cli import main as qfx_main
from qfx.runs import load_run
from qfx.train import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = {
    "model": "digits_mlp",
    "data": {"name": "digits", "batch_size": 128},
    "train": {"seed": 1, "float_epochs": 1, "epochs": 1},
    "quant": {"default": {"input": "ap_fixed<8,3,AP_RND,AP_SAT>", "weight": "ap_fixed<8,1,AP_RND_CONV,AP_SAT>",
                          "bias": "ap_fixed<16,4,AP_RND,AP_SAT>", "output": "ap_fixed<8,3,AP_RND,AP_SAT>"}},
}


class Payload:
    """Unpickling this calls ``exec`` with code that creates ``marker`` (what an attacker would plant)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _plant(path: Path, marker: Path, **plain) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**plain, "extra": Payload(marker)}, path)
    # the file really carries a working payload: the unsafe reader runs it
    assert not marker.exists()


def test_the_planted_payload_is_live_for_an_unsafe_reader(tmp_path):
    """Guard for the tests below: an unrestricted ``torch.load`` does run the planted code."""
    marker = tmp_path / "marker"
    _plant(tmp_path / "x.pt", marker)
    torch.load(tmp_path / "x.pt", weights_only=False)  # noqa: S614 - the point of this test
    assert marker.read_text() == "pwned"


def test_load_checkpoint_refuses_a_payload_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    _plant(tmp_path / "x.pt", marker, state_dict={"w": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"x\.pt: refused: the checkpoint holds more than tensors and plain "
                                              r"data .*weights_only=True"):
        load_checkpoint(tmp_path / "x.pt")
    assert not marker.exists()


def test_what_qfx_writes_loads_with_weights_only(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "rng": qtrain._rng_state([]), "epoch": 2,
             "history": [{"loss": 0.5}], "t": (1, "a", None)}
    qtrain._atomic_save(state, tmp_path / "c.pt")
    back = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(back["model"]["w"], torch.arange(3.0)) and back["epoch"] == 2 and back["t"] == (1, "a", None)
    kind, keys, pos, *_ = back["rng"]["numpy"]
    assert kind == "MT19937" and np.array_equal(np.asarray(keys, np.uint32), np.random.get_state()[1])


def test_a_checkpoint_holding_a_numpy_array_is_refused(tmp_path):
    """What qfx wrote before (the NumPy RNG state as an ndarray): refused by name, with the fix."""
    torch.save({"rng": {"numpy": np.random.get_state()}}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"old\.pt: refused: .*rerun the training"):
        load_checkpoint(tmp_path / "old.pt")


def test_garbage_is_not_a_checkpoint(tmp_path):
    (tmp_path / "g.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match=r"g\.pt: (not a readable checkpoint|refused)"):
        load_checkpoint(tmp_path / "g.pt")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    (root / "cfg.yaml").write_text(yaml.safe_dump(TINY_RUN))
    assert qfx_main(["train", str(root / "cfg.yaml"), "-o", str(root / "run"), "-q"]) == 0
    return root


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src / "run", dst / "run")
    shutil.copy(src / "cfg.yaml", dst / "cfg.yaml")
    return dst / "run"


def test_load_run_refuses_a_planted_final_pt(finished_run, tmp_path):
    run = _copy_run(finished_run, tmp_path)
    good = load_checkpoint(run / "final.pt")
    marker = tmp_path / "marker"
    _plant(run / "final.pt", marker, **good)
    with pytest.raises(CheckpointError, match="final.pt: refused"):
        load_run(run)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["checkpoints/epoch_0001.pt", "float.pt"])
def test_qfx_train_resume_refuses_a_planted_checkpoint(finished_run, tmp_path, where, capsys):
    run = _copy_run(finished_run, tmp_path)
    good = load_checkpoint(run / where)
    marker = tmp_path / "marker"
    _plant(run / where, marker, **good)
    capsys.readouterr()
    rc = qfx_main(["train", str(tmp_path / "cfg.yaml"), "-o", str(run), "--resume", "--epochs", "2", "-q"])
    out, err = capsys.readouterr()
    assert rc == 2 and err.startswith("qfx: error: ") and "Traceback" not in out + err
    assert re.search(rf"{re.escape(where.split('/')[-1])}: refused: the checkpoint holds more than tensors", err), err
    assert not marker.exists()


def test_qfx_sim_run_refuses_a_planted_final_pt(finished_run, tmp_path):
    """The same through a separate process (``python -m qfx.cli``): exit 2, one error line, nothing ran."""
    run = _copy_run(finished_run, tmp_path)
    marker = tmp_path / "marker"
    _plant(run / "final.pt", marker, **load_checkpoint(run / "final.pt"))
    code = ("import sys; from qfx.runs import load_run; load_run(sys.argv[1])")
    r = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ})
    assert r.returncode != 0 and "CheckpointError" in r.stderr and not marker.exists()
    r = subprocess.run([sys.executable, "-m", "qfx.cli", "sim", str(tmp_path / "nogen"), "--run", str(run)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("qfx: error: ") and "Traceback" not in r.stderr
    assert "final.pt: refused" in r.stderr or "Verilator" in r.stderr, r.stderr
    assert not marker.exists()


# ---------------------------------------------------------------------------
# Names from manifests and design folders (they reach Verilog, C++, TCL, Yosys scripts, paths)
# ---------------------------------------------------------------------------

#: Names that break out of an identifier, a string, a comment, a path or a command.
BAD_NAMES = ['a"b', "ab\n", "a'b", "x*/y", "/*x", "$x", "x$(id)", "../x", "a/b", "a\nb", "a\rb", "x;y", "a b", "",
             "module", "endmodule", "wire", "int", "class", "main", "__x", "_x", "9x"]


@pytest.fixture(scope="module")
def small_manifest(tmp_path_factory) -> Path:
    from qfx.export import export
    from tests.qmodels import MODELS, model_inputs

    make, shape, scale, _ = MODELS["mlp_auto"]
    return export(make(), model_inputs(shape, scale, 0)[:4], tmp_path_factory.mktemp("names") / "man")


def _edited(src: Path, dst: Path, edit) -> Path:
    import shutil

    shutil.copytree(src, dst)
    doc = yaml.safe_load((dst / "manifest.yaml").read_text())
    edit(doc)
    (dst / "manifest.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_a_bad_node_name_is_refused_at_load(small_manifest, tmp_path, bad):
    from qfx.manifest import ManifestError, load

    def rename(doc):
        old = doc["nodes"][2]["name"]
        doc["nodes"][2]["name"] = bad
        for n in doc["nodes"]:
            n["inputs"] = [bad if i == old else i for i in n["inputs"]]

    d = _edited(small_manifest, tmp_path / "m", rename)
    with pytest.raises(ManifestError, match=r"is not a valid C\+\+/Verilog identifier"):
        load(d)


@pytest.mark.parametrize("key", ["model", "generator", "source"])
@pytest.mark.parametrize("bad", ["x\nstatic int pwn = system(\"touch marker\");", "x\r#include <evil>", "x\x00y",
                                 "x\u2028y", "x\x1b[2J"])
def test_line_breaks_in_free_text_are_refused(small_manifest, tmp_path, key, bad):
    """``model``, ``generator`` and each node's ``source`` are written into C++/TCL/text comments: a line
    break would end the comment and let the manifest write code."""
    from qfx.manifest import ManifestError, load

    def edit(doc):
        if key == "source":
            doc["nodes"][1]["source"] = bad
        else:
            doc[key] = bad

    with pytest.raises(ManifestError, match=rf"{key} must be a string .*without line breaks or control characters"):
        load(_edited(small_manifest, tmp_path / "m", edit))


def test_other_characters_in_free_text_stay_inside_comments(small_manifest, tmp_path):
    """Quotes, ``*/``, ``$``, ``..``, backslashes and keywords in ``model`` / ``source`` are kept but only
    ever appear inside comment lines of the generated C++, and qfx-gen's outputs are still produced."""
    from qfx import hls
    from qfx.manifest import load

    text = "M'x\" */ /* $HOME $(id) `id` ../.. \\ module int endmodule"

    def edit(doc):
        doc["model"] = text
        doc["nodes"][1]["source"] = text

    man = load(_edited(small_manifest, tmp_path / "m", edit))
    files = hls.render(man)
    hits = [(f, ln) for f, body in files.items() for ln in body.splitlines() if "$(id)" in ln]
    assert hits, "the text was expected in the generated comments"
    for f, ln in hits:
        assert ln.lstrip().startswith(("//", "#")), (f, ln)
    assert qfx_gen_main([str(tmp_path / "m"), "-o", str(tmp_path / "out"), "--target", "rtl,hls"]) == 0


def qfx_gen_main(argv):
    from qfx.gen import main

    return main(argv)


@pytest.mark.parametrize("tensors", ["../tensors.npz", "..", ".", "", "a/b.npz", "x\n.npz"])
def test_the_tensors_file_must_be_in_the_manifest_folder(small_manifest, tmp_path, tensors):
    from qfx.manifest import ManifestError, load

    def edit(doc):
        doc["tensors"] = tensors

    with pytest.raises(ManifestError, match="tensors must be a file name in the manifest folder"):
        load(_edited(small_manifest, tmp_path / "m", edit))


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_qfx_gen_refuses_a_bad_top(small_manifest, tmp_path, bad, capsys):
    out = tmp_path / "out"
    assert qfx_gen_main([str(small_manifest), "-o", str(out), "--top", bad]) == 2
    assert "is not a Verilog / C++ identifier" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture(scope="module")
def small_gen(small_manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "gen"
    assert qfx_gen_main([str(small_manifest), "-o", str(out), "--target", "rtl"]) == 0
    return out


@pytest.mark.parametrize("bad", ["../../x", "x;y", 'a"b', "a\nb", "module", "$x", "x*/y"])
@pytest.mark.parametrize("cmd", ["sim", "cost"])
def test_a_design_folder_with_a_bad_top_is_refused(small_gen, small_manifest, tmp_path, bad, cmd, capsys):
    """design.json is untrusted: its ``top`` names files, Yosys' ``-top`` and the generated C++ driver."""
    import json
    import shutil

    d = tmp_path / "gen"
    shutil.copytree(small_gen, d)
    design = json.loads((d / "design.json").read_text())
    design["top"] = bad
    design["manifest"] = str(small_manifest.resolve())
    (d / "design.json").write_text(json.dumps(design))
    argv = [cmd, str(d)] + (["--no-synth"] if cmd == "cost" else ["--no-hls"])
    capsys.readouterr()
    assert qfx_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("qfx: error: ") and "Traceback" not in err
    assert "is not a Verilog / C++ identifier" in err or "Verilator" in err, err
    assert not list(d.glob("report*"))


@pytest.mark.parametrize("bad", ["x; !touch marker", "a\nb", "$x", "../x", "a b", ""])
def test_yosys_scripts_take_only_module_names(bad, tmp_path):
    from qfx.cost.synthesis import synth_module
    from qfx.hw.synth import synth_xilinx

    with pytest.raises(ValueError, match="is not a Verilog module name"):
        synth_xilinx("module t; endmodule", bad)
    with pytest.raises(ValueError, match="is not a Verilog module name"):
        synth_module("module t; endmodule", bad)
    with pytest.raises(ValueError, match="give synth_xilinx options only"):
        synth_xilinx("module t; endmodule", "t", extra="-nodsp; !touch marker")
