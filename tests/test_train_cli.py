"""`qfx train`: run folder contents, resume, refusal to overwrite, error exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from qfx import train as qtrain
from qfx.cli import load_run, main

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "model": "digits_mlp",
    "data": {"name": "digits", "batch_size": 128},
    "train": {"seed": 1, "float_epochs": 2, "epochs": 1, "lr": 1e-3, "frac_lr": 1e-2, "calibrate_batches": 2},
    "quant": {
        "default": {
            "input": "ap_fixed<8,3,AP_RND,AP_SAT>",
            "weight": "ap_fixed<8,1,AP_RND_CONV,AP_SAT>",
            "bias": "ap_fixed<16,4,AP_RND,AP_SAT>",
            "output": "ap_fixed<8,3,AP_RND,AP_SAT>",
            "learn_binary_point": True,
        },
        "types": {"ReLU": {"output": "ap_ufixed<8,3,AP_RND,AP_SAT>"}},
        "layers": {"fc2": {"output": "ap_fixed<10,5,AP_RND,AP_SAT>"}},
    },
}


def _write(tmp_path: Path, cfg: dict, name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_train_writes_a_run_resumes_and_refuses_to_overwrite(tmp_path, capsys):
    cfg = _write(tmp_path, TINY)
    run = tmp_path / "run"
    assert main(["train", cfg, "-o", str(run), "-q"]) == 0
    assert {p.name for p in run.iterdir()} == {"config.yaml", "float.pt", "checkpoints", "final.pt", "metrics.json"}
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["epoch_0001.pt"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "digits_mlp" and len(metrics["qfx"]["history"]) == 1
    assert metrics["formats"]["fc2"]["output"].startswith("ap_fixed<10,")
    assert 0.5 < metrics["qfx"]["test"]["accuracy"] <= 1 and 0.5 < metrics["float"]["test"]["accuracy"] <= 1
    assert "test accuracy" in capsys.readouterr().out
    # the saved model is the evaluated one
    model = load_run(run)
    assert qtrain.learnable_quantizers(model) == []
    from qfx.cli import _loaders, load_run_config

    _, _, test = _loaders(load_run_config(TINY), 1)
    assert qtrain.evaluate(model, test)["accuracy"] == metrics["qfx"]["test"]["accuracy"]

    # an existing run is never overwritten without --resume / --force
    before = (run / "final.pt").read_bytes()
    assert main(["train", cfg, "-o", str(run), "-q"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (run / "final.pt").read_bytes() == before

    # --resume with more epochs continues from the last checkpoint
    assert main(["train", cfg, "-o", str(run), "-q", "--resume", "--epochs", "2"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["qfx"]["resumed_from"] == 1 and len(metrics["qfx"]["history"]) == 2
    # resuming with another quantization config is refused
    other = _write(tmp_path, {**TINY, "quant": {**TINY["quant"], "layers": {}}}, "other.yaml")
    assert main(["train", other, "-o", str(run), "-q", "--resume"]) == 2
    assert "differs in 'quant'" in capsys.readouterr().err
    # --force starts over and removes only qfx's files
    (run / "notes.txt").write_text("mine")
    assert main(["train", cfg, "-o", str(run), "-q", "--force", "--seed", "3"]) == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == 3
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["epoch_0001.pt"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": "digits_mpl"}, "did you mean 'digits_mlp'"),
        ({"data": "mnist"}, "unknown data set 'mnist'"),
        ({"train": {"epoch": 3}}, "did you mean 'epochs'"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"quant": {"layers": {"fc3": {}}}}, "fc3"),
        ({"quant": {"default": {"weight": "ap_fixd<8,1>"}}}, "quant"),
        ({"optimiser": "adam"}, "unknown config key 'optimiser'"),
    ],
)
def test_config_errors_exit_2(tmp_path, capsys, change, message):
    cfg = _write(tmp_path, {**TINY, "train": {**TINY["train"], "float_epochs": 0, "epochs": 0}, **change})
    assert main(["train", cfg, "-o", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qfx: error:") and message in err


def test_cli_exit_codes_in_a_subprocess(tmp_path):
    env_cmd = [sys.executable, "-m", "qfx.cli"]
    r = subprocess.run(env_cmd + ["train", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "r")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not (tmp_path / "r").exists()


def test_bad_yaml_and_bad_arguments_exit_2(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    assert main(["train", str(tmp_path / "bad.yaml"), "-o", str(tmp_path / "r")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit) as info:
        main(["train"])  # argparse: missing arguments
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["demo-accuracy", "--help"])
    assert info.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_example_configs_are_valid():
    from qfx.cli import load_run_config
    from qfx.conversion import convert
    from qfx.demo.models import build_model

    # explore_*.yaml are sweep configs of `qfx explore` (tests/test_explore.py checks them).
    paths = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("explore_"))
    assert len(paths) >= 3
    for path in paths:
        cfg = load_run_config(path)
        model = convert(build_model(cfg["model"], seed=0).eval(), cfg["quant"])
        x = torch.rand(2, 1, 8, 8)
        assert model(x).shape == (2, 10), path.name


def test_example_sweep_configs_are_valid():
    """Every configs/explore_*.yaml loads and validates (formats, layer names) without training."""
    from qfx.explore import load_sweep

    paths = sorted((ROOT / "configs").glob("explore_*.yaml"))
    assert paths
    for path in paths:
        assert load_sweep(path)
