"""``qfx explore``: a small real sweep (digits MLP, 2 float epochs, 1 QAT epoch), its cache, its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from qfx import reference
from qfx.cli import load_run, main
from qfx.data import digits_splits
from qfx.explore import load_sweep, pareto_mask
from qfx.manifest import load

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _sweep(tmp: Path, **extra) -> Path:
    cfg = {
        "base": str(CONFIGS / "digits_mlp_w8.yaml"),
        "train": {"float_epochs": 2, "epochs": 1},
        "sweep": {"fixed": [4], "khot": [1]},
        # A real run-time failure: the trained weights overflow this minifloat (ieee, no saturation,
        # largest value 0.375), so training refuses them; validation cannot know the weights.
        "points": [{"name": "tiny_mf", "quant": {"default": {"weight": "e2m1<bias=4>"}}}],
        **extra,
    }
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _no_training(monkeypatch) -> None:
    import qfx.train

    def boom(*a, **k):
        raise AssertionError("training ran")

    monkeypatch.setattr(qfx.train, "fit", boom)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explore")
    out = tmp / "out"
    rc = main(["explore", str(_sweep(tmp)), "-o", str(out), "-q"])
    return rc, tmp, out


def test_sweep_outputs_and_failed_point(swept):
    rc, _, out = swept
    assert rc == 1  # one point failed, the others completed
    for name in ("explore.json", "explore.md", "pareto.png"):
        assert (out / name).is_file()
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "explore.json").read_text())
    pts = {p["name"]: p for p in summary["points"]}
    assert list(pts) == ["fixed4", "khot1", "tiny_mf"]
    assert summary["failed"] == ["tiny_mf"]
    bad = pts["tiny_mf"]
    assert bad["status"] == "failed" and bad["stage"] == "train" and "overflow" in bad["reason"]
    for name in ("fixed4", "khot1"):
        p = pts[name]
        assert p["status"] == "ok"
        for key in ("accuracy", "lut", "ff", "dsp", "bram36", "energy_nj", "cycles", "fits", "formats", "pareto"):
            assert key in p, key
        assert 0.5 < p["accuracy"] <= 1.0 and p["lut"] > 0 and p["energy_nj"] > 0 and p["cycles"] > 0
        assert set(p["pareto"]) == {"lut", "dsp", "energy_nj", "all"}
    assert pts["khot1"]["dsp"] == 0 and pts["fixed4"]["dsp"] > 0  # shift-add vs DSP multiply
    md = (out / "explore.md").read_text()
    assert "| fixed4 |" in md or "**fixed4**" in md
    assert "tiny_mf" in md and "Failed points" in md


def test_accuracy_is_the_exported_manifests(swept):
    """The table's accuracy is what the integer reference computes on the exported manifest, and
    what the trained (emulated) model computes; checked here from the files, independently."""
    _, _, out = swept
    summary = json.loads((out / "explore.json").read_text())
    test = digits_splits(0, image=False).test
    x, y = test.tensors
    for p in summary["points"]:
        if p["status"] != "ok":
            continue
        folder = out / p["folder"]
        man = load(folder / "manifest")
        codes = reference.run(man, x.numpy())
        ref_pred = np.asarray(codes[man.output]).reshape(len(y), -1).argmax(1)
        model = load_run(folder / "run")
        with torch.no_grad():
            emu_pred = model(x).argmax(1).numpy()
        np.testing.assert_array_equal(ref_pred, emu_pred)
        assert p["accuracy"] == pytest.approx(float((ref_pred == y.numpy()).mean()), abs=1e-12)
        assert p["test_images"] == len(y)


def test_rerun_uses_the_cache(swept, monkeypatch, capsys):
    rc, tmp, out = swept
    results = sorted((out / "points").glob("*/result.json"))
    assert len(results) == 3
    before = {p: p.stat().st_mtime_ns for p in results}
    _no_training(monkeypatch)
    assert main(["explore", str(tmp / "sweep.yaml"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("(cached,") == 3
    assert {p: p.stat().st_mtime_ns for p in results} == before
    # another board: only the cost is recomputed
    assert main(["explore", str(tmp / "sweep.yaml"), "-o", str(out), "--board", "zcu104", "-q"]) == 1
    summary = json.loads((out / "explore.json").read_text())
    assert summary["board"] == "zcu104"
    assert all(p["board"] == "zcu104" for p in summary["points"] if p["status"] == "ok")


def test_invalid_format_fails_before_training(tmp_path, monkeypatch, capsys):
    _no_training(monkeypatch)
    path = _sweep(tmp_path, points=[{"name": "broken", "quant": {"default": {"weight": "ap_fixd<8,1>"}}}])
    out = tmp_path / "out"
    assert main(["explore", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "point 'broken'" in err and "ap_fixd" in err
    assert not out.exists()


@pytest.mark.parametrize("extra, words", [
    ({"sweep": {"fixd": [8]}}, ["sweep", "'fixd'", "did you mean 'fixed'"]),
    ({"sweep": {"minifloat": ["ap_fixed<8,3>"]}}, ["sweep.minifloat[0]", "not a minifloat"]),
    ({"sweep": {"fixed": [8, 8]}}, ["'fixed8'", "twice"]),
    ({"points": [{"name": "p", "quant": {"layers": {"fc9": {"weight": "ap_fixed<4,1>"}}}}]}, ["point 'p'", "fc9"]),
    ({"points": [{"name": "p", "train": {"epochz": 3}}]}, ["point 'p'", "did you mean 'epochs'"]),
    ({"bord": "ultra96"}, ["'bord'", "did you mean 'board'"]),
    ({"board": "ultra69"}, ["board", "ultra96"]),
])
def test_bad_sweep_configs(tmp_path, extra, words):
    from qfx.cli import CliError

    with pytest.raises(CliError) as info:
        load_sweep(_sweep(tmp_path, **extra))
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_foreign_files_refused(tmp_path, monkeypatch, capsys):
    _no_training(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["explore", str(_sweep(tmp_path)), "-o", str(out)]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


def test_pareto_mask():
    acc = [0.90, 0.95, 0.95, 0.80, 0.95, 0.70]
    cost = [(10,), (20,), (20,), (5,), (30,), (5,)]
    # 0.90@10 and 0.80@5 are trade-offs; the two 0.95@20 tie (both kept); 0.95@30 is dominated by
    # 0.95@20; 0.70@5 is dominated by 0.80@5
    assert pareto_mask(acc, cost) == [True, True, True, True, False, False]
    two = pareto_mask([0.9, 0.9, 0.8], [(1, 5), (5, 1), (5, 5)])
    assert two == [True, True, False]
    assert pareto_mask([], []) == []
    with pytest.raises(ValueError):
        pareto_mask([0.5], [])
