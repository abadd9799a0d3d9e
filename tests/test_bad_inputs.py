"""Bad inputs for every entry point, as one table (issue 8, "Hardening").

Each row of :data:`CASES` names a bad input, builds it, makes one call -- a command line of
``qfx`` (:func:`qfx.cli.main`) or ``qfx-gen`` (:func:`qfx.gen.main`), or a public function --
and states the expected outcome:

* commands: exit status 2, stderr starting with ``qfx: error:`` / ``qfx-gen: error:`` and
  matching the row's regex (which names the problem, often the fix too), no traceback;
* functions: the exception type and a regex its message must match.

A row may also check what is on disk afterwards (nothing half-written, the user's files
untouched). Rows share one small exported manifest and one ``qfx-gen --target rtl`` folder
built once per module; a row that corrupts them works on a copy.

The end of the file runs a real interrupted ``qfx train`` (SIGINT in a subprocess once the
first checkpoint exists) and checks that ``--resume`` finishes with the metrics of an
uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from qfx import convert, hls, parse_type, quantize
from qfx.boards import get_board, load_board
from qfx.cli import main as qfx_main
from qfx.export import export
from qfx.gen import main as qfx_gen
from qfx.hw.accel import Accelerator
from qfx.manifest import load as load_manifest
from qfx.reference import run as reference_run

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# Shared inputs (built once per module)
# ---------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a row's setup gets: a fresh folder and the shared (read-only) artefacts."""

    tmp: Path
    manifest: Path  # an exported manifest folder (mlp_auto of tests/qmodels.py)
    gen: Path  # qfx-gen --target rtl output of that manifest

    def copy_manifest(self, name: str = "man") -> Path:
        d = self.tmp / name
        shutil.copytree(self.manifest, d)
        return d

    def copy_gen(self, name: str = "gen") -> Path:
        d = self.tmp / name
        shutil.copytree(self.gen, d)
        # keep the design's relative manifest path valid from the copy
        design = json.loads((d / "design.json").read_text())
        design["manifest"] = os.path.relpath(self.manifest.resolve(), d.resolve())
        (d / "design.json").write_text(json.dumps(design, indent=2))
        return d

    def write(self, name: str, text: str) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[Path, Path]:
    from tests.qmodels import MODELS, model_inputs

    make, shape, scale, _ = MODELS["mlp_auto"]
    base = tmp_path_factory.mktemp("bad_inputs")
    man = export(make(), model_inputs(shape, scale, 0)[:4], base / "man")
    gen = base / "gen"
    assert qfx_gen([str(man), "-o", str(gen), "--target", "rtl"]) == 0
    return man, gen


@pytest.fixture
def ctx(shared, tmp_path) -> Ctx:
    return Ctx(tmp_path, *shared)


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------

TINY_RUN = {
    "model": "digits_mlp",
    "data": {"name": "digits", "batch_size": 128},
    "train": {"seed": 1, "float_epochs": 0, "epochs": 0},
    "quant": {"default": {"input": "ap_fixed<8,3,AP_RND,AP_SAT>", "weight": "ap_fixed<8,1,AP_RND_CONV,AP_SAT>",
                          "bias": "ap_fixed<16,4,AP_RND,AP_SAT>", "output": "ap_fixed<8,3,AP_RND,AP_SAT>"}},
}


def _run_cfg(c: Ctx, **change: Any) -> str:
    cfg = {**TINY_RUN, **change}
    return str(c.write("run.yaml", yaml.safe_dump(cfg)))


def _train(c: Ctx, **change: Any) -> list[str]:
    return ["train", _run_cfg(c, **change), "-o", str(c.tmp / "run"), "-q"]


def _mlp():
    from tests.qmodels import MODELS

    return MODELS["mlp_auto"][0]()


def _x(n: int = 2, shape: tuple[int, ...] = (12,)) -> torch.Tensor:
    return torch.zeros((n, *shape), dtype=torch.float64)


def _nan_weight_model():
    m = _mlp()
    with torch.no_grad():
        m[0].weight[1, 2] = float("nan")
    return m


def _corrupt_design(c: Ctx) -> Path:
    d = c.copy_gen()
    (d / "design.json").write_text('{"schema": "qfx.design", "version": 1, "top": ')  # truncated
    return d


def _design_without_manifest(c: Ctx) -> Path:
    d = c.copy_gen()
    design = json.loads((d / "design.json").read_text())
    design["manifest"] = "../nowhere"
    (d / "design.json").write_text(json.dumps(design))
    return d


def _design_text(c: Ctx, text: str) -> Path:
    d = c.copy_gen()
    (d / "design.json").write_text(text)
    return d


def _design_edit(c: Ctx, **change: Any) -> Path:
    d = c.copy_gen()
    design = json.loads((d / "design.json").read_text())
    (d / "design.json").write_text(json.dumps({**design, **change}))
    return d


def _no_report(c: Ctx) -> None:
    assert not list((c.tmp / "gen").glob("report*")), "a report was (partly) written"


def _without_tensors(c: Ctx) -> Path:
    d = c.copy_manifest()
    (d / "tensors.npz").unlink()
    return d


def _manifest_text(c: Ctx, text: str) -> Path:
    d = c.copy_manifest()
    (d / "manifest.yaml").write_text(text)
    return d


def _corrupt_npz(c: Ctx) -> Path:
    d = c.copy_manifest()
    (d / "tensors.npz").write_bytes(b"PK\x03\x04garbage")
    return d


def _foreign_hls(c: Ctx) -> Path:
    """A user's own qfx_top.cpp where qfx.hls.generate would write its file of that name."""
    out = c.tmp / "out"
    (out / "hls").mkdir(parents=True)
    (out / "hls" / "qfx_top.cpp").write_text("// mine\n")
    return out


def _foreign_out(c: Ctx) -> Path:
    out = c.tmp / "out"
    (out / "rtl").mkdir(parents=True)
    (out / "rtl" / "qfx_top.v").write_text("// my own hand-written top\n")
    (out / "notes.txt").write_text("mine\n")
    return out


def _foreign_untouched(c: Ctx) -> None:
    out = c.tmp / "out"
    assert (out / "rtl" / "qfx_top.v").read_text() == "// my own hand-written top\n"
    assert (out / "notes.txt").read_text() == "mine\n"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "notes.txt", "rtl/qfx_top.v"], "qfx wrote files beside the refused foreign ones"


def _nothing_at(name: str) -> Callable[[Ctx], None]:
    def check(c: Ctx) -> None:
        assert not (c.tmp / name).exists(), f"{name} was (partly) written"
    return check


def _npy(c: Ctx, name: str, arr: np.ndarray) -> str:
    p = c.tmp / name
    np.save(p, arr)
    return str(p)


def _convert_lstm():
    return convert(nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4)), {"default": {"weight": "ap_fixed<8,1>"}})


class _MatMul(nn.Module):
    """Two Linear projections of a [N, T, 4] input combined by ``fn`` (a matmul / reorder to refuse)."""

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.a(x), self.b(x))


class _Interp(nn.Module):
    """A conv, then F.interpolate with the given arguments."""

    def __init__(self, **kw: Any) -> None:
        super().__init__()
        self.conv, self.kw = nn.Conv2d(2, 2, 1), kw

    def forward(self, x):
        return torch.nn.functional.interpolate(self.conv(x), **self.kw)


_FIXED = {"default": {"input": "ap_fixed<8,3,AP_RND,AP_SAT>", "weight": "ap_fixed<8,1,AP_RND,AP_SAT>",
                      "bias": "ap_fixed<8,3>", "output": "ap_fixed<8,3,AP_RND,AP_SAT>"}}


def _board_yaml(c: Ctx) -> Any:
    src = yaml.safe_load((ROOT / "boards" / "ultra96.yaml").read_text())
    del src["part"]
    return load_board(c.write("broken.yaml", yaml.safe_dump(src)))


@dataclass
class Case:
    """One bad input.

    ``call(ctx)`` returns either an argv list for the ``prog`` command, or (``prog`` None) it
    calls the public function itself. ``expect``: the exit status, or the exception type.
    ``then(ctx)``: extra checks on disk afterwards.
    """

    id: str
    prog: "str | None"
    call: Callable[[Ctx], Any]
    expect: "int | type[BaseException]"
    match: str
    then: "Callable[[Ctx], None] | None" = field(default=None)


CASES = [
    # --- qfx train: run configs -----------------------------------------------------------
    Case("train-malformed-yaml", "qfx", lambda c: ["train", str(c.write("bad.yaml", "model: [unclosed\n")),
                                                    "-o", str(c.tmp / "run")],
         2, r"bad\.yaml' is not valid YAML", _nothing_at("run")),
    Case("train-yaml-not-a-mapping", "qfx", lambda c: ["train", str(c.write("list.yaml", "- a\n- b\n")),
                                                        "-o", str(c.tmp / "run")],
         2, r"must be a mapping with keys model, data, train, quant", _nothing_at("run")),
    Case("train-binary-garbage", "qfx", lambda c: ["train", str(c.write("bin.yaml", "\x00\x01\xff{[")),
                                                    "-o", str(c.tmp / "run")],
         2, r"not valid YAML|must be a mapping", _nothing_at("run")),
    Case("train-missing-config", "qfx", lambda c: ["train", str(c.tmp / "missing.yaml"), "-o", str(c.tmp / "run")],
         2, r"missing\.yaml' does not exist", _nothing_at("run")),
    Case("train-unknown-top-key", "qfx", lambda c: _train(c, optimiser="adam"),
         2, r"unknown config key 'optimiser'.*valid: model, data, train, quant", _nothing_at("run")),
    Case("train-unknown-train-key", "qfx", lambda c: _train(c, train={"epoch": 3}),
         2, r"unknown train key 'epoch' \(did you mean 'epochs'\?\)", _nothing_at("run")),
    Case("train-unknown-model", "qfx", lambda c: _train(c, model="digits_mpl"),
         2, r"unknown model 'digits_mpl' \(did you mean 'digits_mlp'\?\); available: ", _nothing_at("run")),
    Case("train-wrong-type-lr", "qfx", lambda c: _train(c, train={"lr": "fast"}),
         2, r"train\.lr must be a finite non-negative number, got 'fast'", _nothing_at("run")),
    Case("train-wrong-type-epochs", "qfx", lambda c: _train(c, train={"epochs": 2.5}),
         2, r"train\.epochs must be a non-negative integer, got 2\.5", _nothing_at("run")),
    Case("train-nan-lr", "qfx", lambda c: _train(c, train={"lr": float("nan")}),
         2, r"train\.lr must be a finite non-negative number, got nan", _nothing_at("run")),
    Case("train-wrong-type-batch", "qfx", lambda c: _train(c, data={"batch_size": "64"}),
         2, r"data\.batch_size must be an integer >= 1, got '64'", _nothing_at("run")),
    Case("train-bad-format", "qfx", lambda c: _train(c, quant={"default": {"weight": "ap_fixd<8,1>"}}),
         2, r"quant: .*ap_fixd.*ap_fixed", _nothing_at("run")),
    Case("train-quant-wrong-type", "qfx", lambda c: _train(c, quant=["ap_fixed<8,3>"]),
         2, r"quant: ", _nothing_at("run")),
    Case("train-unknown-layer", "qfx", lambda c: _train(c, quant={**TINY_RUN["quant"], "layers": {"fc3": {}}}),
         2, r"fc3", _nothing_at("run")),
    Case("train-output-is-a-file", "qfx", lambda c: ["train", _run_cfg(c), "-o", str(c.write("run", "x"))],
         2, r"exists and is not a folder", None),
    Case("train-foreign-run-folder", "qfx", lambda c: (c.write("run/notes.txt", "mine\n"), _train(c))[1],
         2, r"exists and is not empty; use --resume .*--force",
         lambda c: [p.name for p in (c.tmp / "run").iterdir()] == ["notes.txt"] or pytest.fail("run folder touched")),
    Case("train-resume-and-force", "qfx", lambda c: _train(c) + ["--resume", "--force"],
         2, r"--resume and --force exclude each other", _nothing_at("run")),
    Case("train-config-is-a-folder", "qfx", lambda c: ["train", str(c.tmp), "-o", str(c.tmp / "run")],
         2, r"is a folder; give the run config's YAML file", _nothing_at("run")),
    Case("train-output-below-a-file", "qfx", lambda c: ["train", _run_cfg(c), "-o", str(c.write("f", "x") / "run")],
         2, r"'.*f' is a file, so .* cannot be created; choose another -o", None),
    Case("train-negative-epochs", "qfx", lambda c: _train(c) + ["--epochs", "-1"],
         2, r"--epochs -1: give a non-negative integer", _nothing_at("run")),
    Case("train-unknown-top-key-close", "qfx", lambda c: _train(c, qaunt={}),
         2, r"unknown config key 'qaunt' \(did you mean 'quant'\?\)", _nothing_at("run")),
    # --- qfx demo / demo-accuracy ---------------------------------------------------------------
    Case("demo-foreign-output", "qfx", lambda c: ["demo", "-o", str(c.write("demo/notes.txt", "mine").parent)],
         2, r"exists and is not empty; use --force", None),
    Case("demo-accuracy-output-is-a-file", "qfx",
         lambda c: ["demo-accuracy", "--quick", "--models", "digits_mlp", "--out", str(c.write("acc", "x"))],
         2, r"--out .*acc. exists and is not a folder; choose another --out", None),
    Case("demo-accuracy-zero-threads", "qfx", lambda c: ["demo-accuracy", "--quick", "--threads", "0",
                                                          "--out", str(c.tmp / "acc")],
         2, r"--threads 0: give 1 or more", _nothing_at("acc")),
    Case("demo-accuracy-negative-seed", "qfx", lambda c: ["demo-accuracy", "--quick", "--seeds", "-1",
                                                           "--out", str(c.tmp / "acc")],
         2, r"--seeds -1: give non-negative integers", _nothing_at("acc")),
    Case("demo-output-is-a-file", "qfx", lambda c: ["demo", "-o", str(c.write("demo", "x"))],
         2, r"demo' exists and is not a folder; choose another -o", None),
    Case("demo-unknown-model", "qfx", lambda c: ["demo", "-o", str(c.tmp / "demo"), "--models", "cnn_w9"],
         2, r"--models 'cnn_w9': choose from cnn_w8, mlp_khot", _nothing_at("demo")),
    Case("demo-zero-vectors", "qfx", lambda c: ["demo", "-o", str(c.tmp / "demo"), "--vectors", "0"],
         2, r"--vectors 0: give at least 1", _nothing_at("demo")),
    Case("demo-negative-epochs", "qfx", lambda c: ["demo", "-o", str(c.tmp / "demo"), "--float-epochs", "-2"],
         2, r"--float-epochs -2: give 0 or more", _nothing_at("demo")),
    # --- qfx explore --------------------------------------------------------------------------
    Case("explore-missing-config", "qfx", lambda c: ["explore", str(c.tmp / "sweep.yaml"), "-o", str(c.tmp / "ex")],
         2, r"sweep config '.*sweep\.yaml' does not exist", _nothing_at("ex")),
    Case("explore-malformed-yaml", "qfx", lambda c: ["explore", str(c.write("s.yaml", "base: [\n")),
                                                      "-o", str(c.tmp / "ex")],
         2, r"s\.yaml' is not valid YAML", _nothing_at("ex")),
    Case("explore-unknown-key", "qfx", lambda c: ["explore", str(c.write("s.yaml", "bsae: x\n")), "-o", str(c.tmp / "ex")],
         2, r"unknown key 'bsae' \(did you mean 'base'\?\)", _nothing_at("ex")),
    Case("explore-base-missing", "qfx", lambda c: ["explore", str(c.write("s.yaml", "base: nothere.yaml\nsweep: {fixed: [8]}\n")),
                                                    "-o", str(c.tmp / "ex")],
         2, r"base run config '.*nothere\.yaml' does not exist", _nothing_at("ex")),
    Case("explore-bad-board", "qfx", lambda c: ["explore", _sweep_cfg(c), "-o", str(c.tmp / "ex"), "--board", "ultra69"],
         2, r"board: unknown board 'ultra69'", _nothing_at("ex")),
    Case("explore-zero-threads", "qfx", lambda c: ["explore", _sweep_cfg(c), "-o", str(c.tmp / "ex"), "--threads", "0"],
         2, r"--threads must be >= 1, got 0", _nothing_at("ex")),
    Case("explore-negative-epochs", "qfx", lambda c: ["explore", _sweep_cfg(c), "-o", str(c.tmp / "ex"), "--epochs", "-1"],
         2, r"--epochs must be >= 0, got -1", _nothing_at("ex")),
    Case("explore-output-is-a-file", "qfx", lambda c: ["explore", _sweep_cfg(c), "-o", str(c.write("ex", "x"))],
         2, r"ex' exists and is not a folder; choose another -o", None),
    Case("explore-foreign-output", "qfx",
         lambda c: ["explore", _sweep_cfg(c), "-o", str(c.write("ex/mine.txt", "mine").parent)],
         2, r"holds files qfx did not write: mine\.txt.*--force",
         lambda c: sorted(p.name for p in (c.tmp / "ex").iterdir()) == ["mine.txt"] or pytest.fail("ex touched")),
    # --- qfx train: checkpoints (only tensors and plain data; tests/test_untrusted.py plants payloads) ---------
    Case("train-resume-corrupt-checkpoint", "qfx",
         lambda c: (_run_with_checkpoint(c, b"\x80\x02garbage"), _train(c) + ["--resume"])[1],
         2, r"epoch_0001\.pt: (not a readable checkpoint|refused).*rerun the training", None),
    Case("sim-run-without-final", "qfx", lambda c: ["sim", str(c.gen), "--run", str(c.write("run/x.txt", "").parent)],
         2, r"--run .*run: '.*final\.pt' does not exist: the run has not finished", None),
    # --- qfx sim ------------------------------------------------------------------------------
    Case("sim-missing-folder", "qfx", lambda c: ["sim", str(c.tmp / "nope")],
         2, r"no such folder \(give the output folder of qfx-gen", None),
    Case("sim-not-qfx-gen-output", "qfx", lambda c: ["sim", str(c.write("d/x.txt", "").parent)],
         2, r"is not a qfx-gen output folder: it has no design\.json", None),
    Case("sim-corrupt-design-json", "qfx", lambda c: ["sim", str(_corrupt_design(c))],
         2, r"design\.json: not readable JSON .*regenerate with qfx-gen --force", None),
    Case("sim-design-manifest-missing", "qfx", lambda c: ["sim", str(_design_without_manifest(c))],
         2, r"manifest.*(--manifest|not found|no such|does not exist)", None),
    Case("sim-inputs-missing", "qfx", lambda c: ["sim", str(c.gen), "--inputs", str(c.tmp / "x.npy")],
         2, r"--inputs .*x\.npy: no such file", None),
    Case("sim-inputs-not-npy", "qfx", lambda c: ["sim", str(c.gen), "--inputs", str(c.write("x.npy", "hello"))],
         2, r"x\.npy: not a \.npy file \(save the float inputs with numpy\.save\)", None),
    Case("sim-inputs-wrong-shape", "qfx",
         lambda c: ["sim", str(c.gen), "--inputs", _npy(c, "x.npy", np.zeros((3, 11)))],
         2, r"inputs have shape \[3, 11\]; the model takes \[N, 12\]", None),
    Case("sim-inputs-int-dtype", "qfx",
         lambda c: ["sim", str(c.gen), "--inputs", _npy(c, "x.npy", np.zeros((3, 12), np.int32))],
         2, r"inputs must be floating point .*int32", None),
    Case("sim-inputs-nan", "qfx",
         lambda c: ["sim", str(c.gen), "--inputs", _npy(c, "x.npy", np.full((3, 12), np.nan))],
         2, r"NaN|finite", None),
    Case("sim-design-json-not-an-object", "qfx", lambda c: ["sim", str(_design_text(c, "[]"))],
         2, r"design\.json: schema None is not 'qfx\.design'.*regenerate with qfx-gen --force", None),
    Case("sim-design-json-bad-interface", "qfx", lambda c: ["sim", str(_design_edit(c, interface=3))],
         2, r"design\.json: malformed 'top' or 'interface'.*regenerate with qfx-gen --force", None),
    Case("sim-inputs-empty", "qfx", lambda c: ["sim", str(c.gen), "--inputs", _npy(c, "x.npy", np.zeros((0, 12)))],
         2, r"inputs have shape \[0, 12\]: no vectors; give at least one \[12\]", None),
    Case("sim-zero-vectors", "qfx", lambda c: ["sim", str(c.gen), "--vectors", "0"],
         2, r"--vectors 0: give at least 1", None),
    # --- qfx cost -----------------------------------------------------------------------------
    Case("cost-not-qfx-gen-output", "qfx", lambda c: ["cost", str(c.write("d/x.txt", "").parent), "--no-synth"],
         2, r"not a qfx-gen output folder", None),
    Case("cost-corrupt-design-json", "qfx", lambda c: ["cost", str(_corrupt_design(c)), "--no-synth"],
         2, r"design\.json.*(JSON|json)", None),
    Case("cost-unknown-board", "qfx", lambda c: ["cost", str(c.copy_gen()), "--no-synth", "--board", "ultra69"],
         2, r"unknown board 'ultra69'; valid boards: pynq-z2, ultra96, zcu104", None),
    Case("cost-missing-manifest", "qfx",
         lambda c: ["cost", str(c.copy_gen()), "--no-synth", "--manifest", str(c.tmp / "missing")],
         2, r"missing.*not found", None),
    Case("cost-design-json-not-an-object", "qfx", lambda c: ["cost", str(_design_text(c, "[]")), "--no-synth"],
         2, r"design\.json: not a qfx-gen design\.json", None),
    Case("cost-zero-clock", "qfx", lambda c: ["cost", str(c.copy_gen()), "--no-synth", "--clock-mhz", "0"],
         2, r"clock 0\.0 MHz: give a finite positive --clock-mhz", lambda c: _no_report(c)),
    Case("cost-nan-clock", "qfx", lambda c: ["cost", str(c.copy_gen()), "--no-synth", "--clock-mhz", "nan"],
         2, r"clock nan MHz: give a finite positive --clock-mhz", lambda c: _no_report(c)),
    # --- qfx-gen ------------------------------------------------------------------------------
    Case("gen-unknown-board", "qfx-gen", lambda c: [str(c.manifest), "-o", str(c.tmp / "out"), "--board", "ultra69"],
         2, r"unknown board 'ultra69'; valid boards: pynq-z2, ultra96, zcu104\. Did you mean 'ultra96'\?",
         _nothing_at("out")),
    Case("gen-unknown-arch", "qfx-gen", lambda c: [str(c.manifest), "-o", str(c.tmp / "out"), "--arch", "systolik"],
         2, r"unknown architecture 'systolik'; choose from: dataflow", _nothing_at("out")),
    Case("gen-unknown-target", "qfx-gen", lambda c: [str(c.manifest), "-o", str(c.tmp / "out"), "--target", "vhdl"],
         2, r"--target 'vhdl': choose from rtl, hls", _nothing_at("out")),
    Case("gen-missing-manifest", "qfx-gen", lambda c: [str(c.tmp / "missing"), "-o", str(c.tmp / "out")],
         2, r"missing", _nothing_at("out")),
    Case("gen-manifest-without-tensors", "qfx-gen",
         lambda c: [str(_without_tensors(c)), "-o", str(c.tmp / "out")],
         2, r"tensors\.npz: missing", _nothing_at("out")),
    Case("gen-malformed-manifest-yaml", "qfx-gen",
         lambda c: [str(_manifest_text(c, "nodes: [\n")),
                    "-o", str(c.tmp / "out")],
         2, r"not valid YAML", _nothing_at("out")),
    Case("gen-foreign-files", "qfx-gen", lambda c: [str(c.manifest), "-o", str(_foreign_out(c))],
         2, r"holds files qfx did not write: rtl/qfx_top\.v.*pass --force", _foreign_untouched),
    Case("gen-output-below-a-file", "qfx-gen", lambda c: [str(c.manifest), "-o", str(c.write("f", "x") / "out")],
         2, r"f is a file, so .*out cannot be created; choose another -o", None),
    Case("gen-nan-clock", "qfx-gen", lambda c: [str(c.manifest), "-o", str(c.tmp / "out"), "--clock-mhz", "nan"],
         2, r"clock_mhz.* must be finite, got nan", _nothing_at("out")),
    Case("gen-not-a-manifest", "qfx-gen", lambda c: [_run_cfg(c), "-o", str(c.tmp / "out")],
         2, r"run\.yaml: top level: unknown key .*; valid keys: schema, version", _nothing_at("out")),
    Case("gen-negative-reuse", "qfx-gen",
         lambda c: [str(c.manifest), "-o", str(c.tmp / "out"), "--target", "hls", "--reuse-factor", "0"],
         2, r"reuse", _nothing_at("out")),
    # --- public functions ---------------------------------------------------------------------
    Case("parse_type-garbage", None, lambda c: parse_type("ap_fixd<8,3>"),
         ValueError, r"unknown type name 'ap_fixd'.*ap_fixed"),
    Case("parse_type-bad-width", None, lambda c: parse_type("ap_fixed<0,3>"),
         ValueError, r"ap_fixed<0,3>|width|W"),
    Case("parse_type-not-a-string", None, lambda c: parse_type(8),
         TypeError, r"str|string"),
    Case("quantize-bad-format", None, lambda c: quantize(torch.zeros(3), "ap_fixed<8"),
         ValueError, r"ap_fixed<8"),
    Case("quantize-not-a-tensor", None, lambda c: quantize([0.5, 1.0], "ap_fixed<8,3>"),
         TypeError, r"[Tt]ensor"),
    Case("convert-unsupported-layer", None, lambda c: _convert_lstm(),
         ValueError, r"LSTM.*(supported|Linear)"),
    Case("convert-upsample-bilinear", None,
         lambda c: convert(nn.Sequential(nn.Conv2d(2, 2, 1), nn.Upsample(scale_factor=2, mode="bilinear")), _FIXED),
         ValueError, r"module '1' \(Upsample\): argument mode='bilinear' is not supported; only mode='nearest'"),
    Case("convert-interpolate-fractional-scale", None, lambda c: convert(_Interp(scale_factor=1.5), _FIXED),
         ValueError, r"interpolate \(node 'interpolate'\): argument scale_factor=1\.5 is not supported; only integer "
                     r"scale factors"),
    Case("convert-softmax-batch-dim", None,
         lambda c: convert(nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=0), nn.Linear(3, 2)), _FIXED),
         ValueError, r"module '1' \(Softmax\): argument dim=0 is not supported; a softmax runs over one non-batch dim "
                     r"given as an int: dim=-1 .*\(not the batch dim 0\)"),
    Case("convert-interpolate-align-corners", None,
         lambda c: convert(_Interp(scale_factor=2, mode="bilinear", align_corners=True), _FIXED),
         ValueError, r"node 'interpolate'.*mode='bilinear' is not supported"),
    Case("export-upsample-size-not-a-multiple", None,
         lambda c: export(convert(_Interp(size=(5, 5)), _FIXED), torch.randn(2, 2, 2, 2), c.tmp / "m"),
         ValueError, r"layer 'interpolate' \(Upsample\): size \(5, 5\) is not an integer multiple of the input's "
                     r"spatial size \(2, 2\)", _nothing_at("m")),
    Case("convert-layernorm-two-dims", None,
         lambda c: convert(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm((2, 4))), _FIXED),
         ValueError, r"module '1' \(LayerNorm\): normalized_shape=\(2, 4\) is not supported; only normalization over "
                     r"the last dim"),
    Case("convert-layernorm-eps-zero", None,
         lambda c: convert(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8, eps=0.0)), _FIXED),
         ValueError, r"module '1' \(LayerNorm\): eps=0\.0 is not supported; eps must be a finite number > 0"),
    Case("convert-layernorm-no-intermediate-formats", None,
         lambda c: convert(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8)), _FIXED),
         ValueError, r"layer '1' \(LayerNorm\).*needs the format\(s\) mean, var, inv_std"),
    Case("forward-matmul-inner-dims", None,
         lambda c: convert(_MatMul(lambda a, b: a @ b), _FIXED)(torch.randn(2, 5, 4)),
         ValueError, r"layer 'matmul' \(matmul\): inner dims differ: a \[2, 5, 4\] has K = 4, b \[2, 5, 3\] has "
                     r"K = 5"),
    Case("forward-matmul-broadcast", None,
         lambda c: convert(_MatMul(lambda a, b: a.reshape(-1, 2, 5, 2) @ a.reshape(-1, 1, 2, 10)), _FIXED)(
             torch.randn(2, 5, 4)),
         ValueError, r"layer 'matmul' \(matmul\): operands .* have different leading dims; only equal leading dims "
                     r"\(batch, heads\) are supported, no broadcasting"),
    Case("forward-transpose-batch-dim", None,
         lambda c: convert(_MatMul(lambda a, b: a.transpose(0, 1) @ b), _FIXED)(torch.randn(2, 5, 4)),
         ValueError, r"layer 'transpose' \(permute\): the batch dim \(0\) must stay first"),
    Case("convert-view-constant-batch", None,
         lambda c: convert(_MatMul(lambda a, b: a.view(8, 5, 4) @ b.mT), _FIXED),
         ValueError, r"method \.view\(\) \(node 'view'\): the target shape \[8, 5, 4\] must keep the batch dim, "
                     r"given as -1 first"),
    Case("convert-unknown-config-key", None,
         lambda c: convert(_float_mlp(), {"defaults": {"weight": "ap_fixed<8,1>"}}),
         ValueError, r"'defaults'.*did you mean 'default'"),
    Case("convert-config-file-missing", None, lambda c: convert(_float_mlp(), c.tmp / "q.yaml"),
         (FileNotFoundError, ValueError), r"q\.yaml"),
    Case("export-nan-weight", None,
         lambda c: export(_nan_weight_model(), _x(), c.tmp / "m"),
         ValueError, r"layer '0' \(QLinear\): weight holds 1 NaN/Inf", _nothing_at("m")),
    Case("export-inf-bias", None,
         lambda c: export(_inf_bias_model(), _x(), c.tmp / "m"),
         ValueError, r"layer '0' \(QLinear\): bias holds 1 NaN/Inf", _nothing_at("m")),
    Case("export-unsupported-module", None,
         lambda c: export(
             nn.Sequential(*_mlp(), nn.Softmax(dim=1)), _x(), c.tmp / "m"),
         ValueError, r"Softmax", _nothing_at("m")),
    Case("export-foreign-folder", None,
         lambda c: export(_mlp(), _x(), c.write("m/mine.txt", "x").parent),
         FileExistsError, r"not empty; pass force=True",
         lambda c: [p.name for p in (c.tmp / "m").iterdir()] == ["mine.txt"] or pytest.fail("export wrote beside")),
    Case("manifest-load-missing", None, lambda c: load_manifest(c.tmp / "none"),
         ValueError, r"none"),
    Case("manifest-load-no-tensors", None,
         lambda c: load_manifest(
             _without_tensors(c)),
         ValueError, r"tensors\.npz: missing"),
    Case("manifest-load-unknown-key", None,
         lambda c: load_manifest(_manifest_edit(c, "formats:", "fromats:")),
         ValueError, r"unknown node key 'fromats' \(did you mean 'formats'\?\)"),
    Case("manifest-load-corrupt-npz", None,
         lambda c: load_manifest(
             _corrupt_npz(c)),
         ValueError, r"not a readable \.npz"),
    Case("reference-wrong-input-shape", None,
         lambda c: reference_run(c.manifest, np.zeros((2, 11))),
         ValueError, r"input shape \[2, 11\] does not match \[N, 12\]"),
    Case("reference-int-input", None,
         lambda c: reference_run(c.manifest, np.zeros((2, 12), np.int32)),
         TypeError, r"floating-point input"),
    Case("hls-generate-foreign-files", None,
         lambda c: hls.generate(
             c.manifest, _foreign_hls(c)),
         FileExistsError, r"holds files qfx\.hls did not write \(qfx_top\.cpp\); pass force=True",
         lambda c: (c.tmp / "out" / "hls" / "qfx_top.cpp").read_text() == "// mine\n" or pytest.fail("overwritten")),
    Case("hls-generate-bad-top", None,
         lambda c: hls.generate(c.manifest, c.tmp / "out", top="2x"),
         ValueError, r"top '2x' is not a valid C\+\+ identifier", _nothing_at("out")),
    Case("hls-csim-not-generated", None,
         lambda c: hls.csim(c.tmp, np.zeros((1, 12), np.int64)),
         (ValueError, FileNotFoundError), r"hls"),
    Case("accelerator-not-a-manifest", None,
         lambda c: Accelerator(str(c.manifest)),
         TypeError, r"must be a qfx\.manifest\.Manifest \(qfx\.manifest\.load\(path\)\)"),
    Case("boards-unknown", None, lambda c: get_board("zcu106"),
         ValueError, r"unknown board 'zcu106'; valid boards: pynq-z2, ultra96, zcu104"),
    Case("boards-yaml-missing-key", None, _board_yaml, ValueError, r"broken\.yaml: missing key 'part'"),
]


def _sweep_cfg(c: Ctx) -> str:
    return str(c.write("sweep.yaml", yaml.safe_dump({"base": {**TINY_RUN}, "sweep": {"fixed": [8]}})))


def _run_with_checkpoint(c: Ctx, data: bytes) -> None:
    """A run folder as an interrupted ``qfx train`` leaves it, its checkpoint replaced by ``data``."""
    cfg = yaml.safe_load(Path(_run_cfg(c)).read_text())
    from qfx.runs import load_run_config

    (c.tmp / "run" / "checkpoints").mkdir(parents=True)
    (c.tmp / "run" / "config.yaml").write_text(yaml.safe_dump(load_run_config(cfg), sort_keys=False))
    (c.tmp / "run" / "checkpoints" / "epoch_0001.pt").write_bytes(data)


def _float_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))


def _inf_bias_model():
    m = _mlp()
    with torch.no_grad():
        m[0].bias[0] = float("inf")
    return m


def _manifest_edit(c: Ctx, old: str, new: str) -> Path:
    d = c.copy_manifest()
    text = (d / "manifest.yaml").read_text()
    assert old in text
    (d / "manifest.yaml").write_text(text.replace(old, new, 1))
    return d


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, ctx: Ctx, capsys) -> None:
    if case.prog is not None:
        argv = case.call(ctx)
        capsys.readouterr()
        rc = (qfx_main if case.prog == "qfx" else qfx_gen)(argv)
        out, err = capsys.readouterr()
        assert rc == case.expect, f"exit {rc}, expected {case.expect}; stderr: {err!r}"
        prefix = f"{case.prog}: error: "
        assert err.startswith(prefix), f"stderr does not start with {prefix!r}: {err!r}"
        assert "Traceback" not in out + err
        assert re.search(case.match, err, flags=re.S), f"{case.match!r} not in {err!r}"
    else:
        with pytest.raises(case.expect) as info:
            case.call(ctx)
        assert re.search(case.match, str(info.value), flags=re.S), f"{case.match!r} not in {str(info.value)!r}"
    if case.then is not None:
        case.then(ctx)


# ---------------------------------------------------------------------------
# Interrupted runs
# ---------------------------------------------------------------------------


def test_interrupted_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    """An interrupt while a checkpoint is being written leaves the previous file whole, no temporary file."""
    from qfx import train as qtrain

    class Interrupting:
        def __reduce__(self):
            raise KeyboardInterrupt

    path = tmp_path / "epoch_0001.pt"
    qtrain._atomic_save({"epoch": 1}, path)
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        qtrain._atomic_save({"epoch": 2, "model": Interrupting()}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["epoch_0001.pt"]
    assert torch.load(path, weights_only=True) == {"epoch": 1}


def _comparable(metrics: dict) -> dict:
    """metrics.json without wall-clock times and the resume bookkeeping."""
    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in ("seconds", "resumed_from")}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v
    return strip({k: metrics[k] for k in ("float", "qfx", "formats")})


def test_sigint_during_qfx_train_then_resume_equals_uninterrupted_run(tmp_path):
    """A real Ctrl-C: ``qfx train`` in a subprocess gets SIGINT once its first checkpoint exists. It exits
    130 with ``qfx: interrupted`` (no traceback), the checkpoint survives and loads, and ``--resume``
    finishes with exactly the metrics of an uninterrupted run (qfx.train's documented guarantee)."""
    cfg = yaml.safe_load((ROOT / "configs" / "digits_mlp_w8.yaml").read_text())
    cfg["train"].update(float_epochs=1, epochs=3)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "qfx.cli", "train", str(config)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    ref = tmp_path / "ref"  # the uninterrupted run, alongside
    ref_proc = subprocess.Popen(cmd + ["-o", str(ref), "-q"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        _interrupt_and_resume(cmd, env, tmp_path / "run", ref_proc, ref)
    finally:
        if ref_proc.poll() is None:
            ref_proc.kill()
            ref_proc.communicate()


def _interrupt_and_resume(cmd: list[str], env: dict, run: Path, ref_proc: subprocess.Popen, ref: Path) -> None:
    first = run / "checkpoints" / "epoch_0001.pt"
    # SIG_DFL: a child of a shell that ignores SIGINT (background jobs) would otherwise ignore it too
    proc = subprocess.Popen(cmd + ["-o", str(run)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.exists(), "no checkpoint appeared"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.rstrip().endswith("qfx: interrupted") and "Traceback" not in out + err, err
    assert not (run / "final.pt").exists() and not (run / "metrics.json").exists()
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert left and all(re.fullmatch(r"epoch_000[12]\.pt", n) for n in left), left  # no temporary files
    state = torch.load(run / "checkpoints" / left[-1], map_location="cpu", weights_only=True)
    assert state["epoch"] == int(left[-1][6:10]) < 3 and len(state["history"]) == state["epoch"]

    r = subprocess.run(cmd + ["-o", str(run), "-q", "--resume"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["qfx"]["resumed_from"] == state["epoch"]

    _, ref_err = ref_proc.communicate(timeout=300)
    assert ref_proc.returncode == 0, ref_err
    expected = json.loads((ref / "metrics.json").read_text())
    assert expected["qfx"]["resumed_from"] is None
    assert _comparable(resumed) == _comparable(expected)


# ---------------------------------------------------------------------------
# No traceback from any command (issue 15)
# ---------------------------------------------------------------------------


def test_python_m_qfx_cli_reports_errors_raised_in_the_library():
    """``python -m qfx.cli`` (what ``make demo`` runs) once had two copies of qfx.cli, and an error the
    demo pipeline raised escaped as a traceback; now it is one ``qfx: error:`` line, exit 2."""
    for argv in (["demo", "--models", "cnn_w9"], ["explore", "nothere.yaml"]):
        r = subprocess.run([sys.executable, "-m", "qfx.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2, (argv, r.stderr)
        assert r.stderr.startswith("qfx: error: ") and "Traceback" not in r.stdout + r.stderr, r.stderr


def test_an_unexpected_error_is_one_line_naming_a_bug(ctx, monkeypatch, capsys):
    """An error qfx did not foresee (here a KeyError planted in the cost report) still gives no traceback."""
    import qfx.cost.report as report

    def broken(*a, **k):
        raise KeyError("lut")

    monkeypatch.setattr(report, "write_report", broken)
    gen = ctx.copy_gen()
    capsys.readouterr()
    assert qfx_main(["cost", str(gen), "--no-synth"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("qfx: error: internal error (KeyError: 'lut'); this is a bug in qfx") and "Traceback" not in err
    monkeypatch.setattr("qfx.gen.generate", broken)
    assert qfx_gen([str(ctx.manifest), "-o", str(ctx.tmp / "out")]) == 2
    assert capsys.readouterr().err.startswith("qfx-gen: error: internal error (KeyError")


def test_a_tool_failure_and_an_os_error_are_one_line(ctx, monkeypatch, capsys):
    from qfx.hw.synth import SynthError

    def synth_fails(*a, **k):
        raise SynthError("Yosys synth_xilinx of 'qfx_top' was killed by SIGBUS (signal 7) twice; ...")

    import qfx.cost.report as report

    monkeypatch.setattr(report, "write_report", synth_fails)
    capsys.readouterr()
    assert qfx_main(["cost", str(ctx.copy_gen())]) == 2
    assert capsys.readouterr().err.startswith("qfx: error: Yosys synth_xilinx of 'qfx_top' was killed by SIGBUS")

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device", "/out/rtl/qfx_top.v")

    monkeypatch.setattr("qfx.gen.generate", disk_full)
    assert qfx_gen([str(ctx.manifest), "-o", str(ctx.tmp / "out")]) == 2
    err = capsys.readouterr().err
    assert err == "qfx-gen: error: [Errno 28] No space left on device: '/out/rtl/qfx_top.v'\n"
