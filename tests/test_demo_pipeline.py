"""The main job end to end at reduced size: train -> export -> reference -> qfx-gen -> qfx sim -> cost."""

from __future__ import annotations

import json

import pytest

from qfx.cli import main


@pytest.mark.slow
def test_demo_pipeline_is_bit_exact(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "-o", str(out), "--quick", "--models", "mlp_khot", "--vectors", "40", "--no-synth"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"mlp_khot"} and summary["bit_exact"] is True
    run = summary["runs"]["mlp_khot"]
    assert run["reference_vs_emulation"]["inputs"] == 360
    assert set(run["reference_vs_emulation"]["mismatches_per_layer"].values()) == {0}
    names = [c["name"] for c in run["sim"]["checks"]]
    assert any("RTL" in n for n in names) and any("HLS C simulation" in n for n in names)
    assert any("emulation" in n for n in names)
    assert all(c["ok"] and c["mismatches"] == 0 for c in run["sim"]["checks"]) and run["sim"]["vectors"] == 40
    acc = run["accuracy"]
    assert acc["qfx"] > 70.0 and acc["float"] > 70.0 and acc["ptq"] is not None
    cost = run["cost"]
    assert cost["dsp"] == 0 and cost["fits"] and cost["cycles_per_inference"] > 0 and cost["energy_nj_per_inference"] > 0
    for rel in ("mlp_khot/gen/design.json", "mlp_khot/gen/report.md", "mlp_khot/gen/hls/run_hls.tcl",
                "mlp_khot/manifest/manifest.yaml", "mlp_khot/run/final.pt"):
        assert (out / rel).is_file(), rel
    printed = capsys.readouterr().out
    assert "qfx demo: BIT-EXACT" in printed and str(out / "summary.json") in printed
    # A second run into the same folder is refused without --force (exit code 2, nothing lost).
    assert main(argv) == 2
    assert (out / "summary.json").is_file()


def test_demo_rejects_unknown_models(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path / "d"), "--models", "resnet50"]) == 2
    assert "choose from cnn_w8, mlp_khot" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_demo_reports_a_failing_yosys_cleanly(tmp_path, capsys, monkeypatch):
    """Yosys failing in the cost stage: exit 2 with its error lines and the --no-synth hint, no traceback."""
    from qfx.cost import synthesis
    from qfx.hw.synth import SynthError

    def broken(*a, **k):
        raise SynthError("Yosys synth_xilinx of 'qfx_top' failed (exit 1):\nERROR: out of cheese")

    monkeypatch.setattr(synthesis, "synth_accelerator", broken)
    out = tmp_path / "d"
    assert main(["demo", "-o", str(out), "--quick", "--models", "mlp_khot", "--vectors", "5"]) == 2
    err = capsys.readouterr().err
    assert "qfx: error: qfx cost of mlp_khot" in err and "out of cheese" in err and "--no-synth" in err
    assert "Traceback" not in err
    assert not (out / "summary.json").exists()
