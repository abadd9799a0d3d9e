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
