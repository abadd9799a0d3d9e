"""The main job end to end at reduced size: train -> export -> integer reference, 0 mismatches."""

from __future__ import annotations

import json

import pytest

from qfx.cli import main


@pytest.mark.slow
def test_demo_pipeline_is_bit_exact(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--epochs", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"cnn_w8", "mlp_khot"}
    for run in summary["runs"].values():
        assert run["reference_vs_emulation_mismatches"] == 0
        assert run["hls_csim_vs_reference_mismatches"] == 0
        assert run["inputs_checked"] == 360
        assert run["test_accuracy_qfx"] > 80.0
        assert (out / run["manifest"].split("demo/", 1)[1] / "manifest.yaml").is_file()
    # A second run into the same folder is refused without --force (exit code 2, nothing lost).
    assert main(["demo", "-o", str(out), "--epochs", "1"]) == 2
    assert (out / "summary.json").is_file()
