"""``--force`` never follows a symbolic link out of the output folder and never deletes or rewrites a
file qfx did not write (issue 15): qfx-gen, qfx train, qfx demo, qfx cost and the output-folder
record, each tried with links to files and folders outside, with foreign files at qfx's own paths,
and with a planted record naming paths outside the folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from qfx.cli import main as qfx_main
from qfx.export import export
from qfx.gen import main as qfx_gen
from qfx.outdir import RECORD


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    from tests.qmodels import MODELS, model_inputs

    make, shape, scale, _ = MODELS["mlp_auto"]
    return export(make(), model_inputs(shape, scale, 0)[:4], tmp_path_factory.mktemp("m") / "man")


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder outside every output folder, with a file that must survive."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "precious.v").write_text("// not qfx's\n")
    return d


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _gen(manifest: Path, out: Path, *extra: str) -> int:
    return qfx_gen([str(manifest), "-o", str(out), "--target", "rtl", *extra])


def test_gen_force_refuses_a_linked_folder(manifest, tmp_path, outside, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "rtl").symlink_to(outside, target_is_directory=True)
    before = _snapshot(outside)
    assert _gen(manifest, out, "--force") == 2
    err = capsys.readouterr().err
    assert "rtl is a symbolic link where qfx writes" in err and "--force or not" in err
    assert _snapshot(outside) == before and sorted(os.listdir(out)) == ["rtl"]


def test_gen_force_refuses_a_linked_file(manifest, tmp_path, outside, capsys):
    out = tmp_path / "out"
    assert _gen(manifest, out) == 0
    top = out / "rtl" / "qfx_top.v"
    top.unlink()
    top.symlink_to(outside / "precious.v")
    before = _snapshot(outside)
    assert _gen(manifest, out, "--force") == 2
    assert "qfx_top.v is a symbolic link where qfx writes" in capsys.readouterr().err
    assert _snapshot(outside) == before and top.is_symlink()


def test_gen_force_never_overwrites_a_foreign_file_at_its_path(manifest, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "rtl").mkdir(parents=True)
    (out / "rtl" / "qfx_top.v").write_text("// my own top\n")
    assert _gen(manifest, out, "--force") == 2
    err = capsys.readouterr().err
    assert "holds files qfx did not write where it writes its own: rtl/qfx_top.v" in err and "move them away" in err
    assert _snapshot(out) == {"rtl/qfx_top.v": b"// my own top\n"}


def test_a_planted_record_deletes_nothing_outside(manifest, tmp_path, outside):
    """An output folder is untrusted: a record naming ``rtl/../../outside/precious.v`` as qfx's own
    stale file must not make qfx delete it."""
    out = tmp_path / "out"
    assert _gen(manifest, out) == 0
    record = json.loads((out / RECORD).read_text())
    rel = os.path.relpath(outside / "precious.v", out).replace(os.sep, "/")
    record["files"] += [f"rtl/../{rel}", str(outside / "precious.v")]
    (out / RECORD).write_text(json.dumps(record))
    before = _snapshot(outside)
    assert _gen(manifest, out, "--force", "--top", "other") == 0  # rtl/qfx_top.v goes stale: removed
    assert _snapshot(outside) == before
    assert not (out / "rtl" / "qfx_top.v").exists() and (out / "rtl" / "other.v").exists()


TINY_RUN = {
    "model": "digits_mlp",
    "data": {"name": "digits", "batch_size": 128},
    "train": {"seed": 1, "float_epochs": 0, "epochs": 1},
    "quant": {"default": {"input": "ap_fixed<8,3,AP_RND,AP_SAT>", "weight": "ap_fixed<8,1,AP_RND_CONV,AP_SAT>",
                          "bias": "ap_fixed<16,4,AP_RND,AP_SAT>", "output": "ap_fixed<8,3,AP_RND,AP_SAT>"}},
}


def _train(tmp_path: Path, *extra: str) -> int:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(TINY_RUN))
    return qfx_main(["train", str(cfg), "-o", str(tmp_path / "run"), "-q", *extra])


@pytest.mark.parametrize("what", ["checkpoints", "final.pt", "config.yaml"])
def test_train_force_and_resume_refuse_links(tmp_path, outside, what, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / what).symlink_to(outside if what == "checkpoints" else outside / "precious.v")
    before = _snapshot(outside)
    for flag in ("--force", "--resume"):
        assert _train(tmp_path, flag) == 2
        err = capsys.readouterr().err
        assert f"{what}' is a symbolic link; qfx does not write or delete through links" in err, err
    assert _snapshot(outside) == before and (run / what).is_symlink()


def test_train_force_keeps_foreign_files_in_the_run_folder(tmp_path, capsys):
    assert _train(tmp_path) == 0
    run = tmp_path / "run"
    (run / "notes.txt").write_text("mine\n")
    (run / "checkpoints" / "my_backup.pt").write_text("mine too\n")
    assert _train(tmp_path, "--force") == 0
    assert (run / "notes.txt").read_text() == "mine\n"
    assert (run / "checkpoints" / "my_backup.pt").read_text() == "mine too\n"
    assert (run / "checkpoints" / "epoch_0001.pt").is_file() and (run / "final.pt").is_file()


def test_demo_force_refuses_a_link_in_its_folder(tmp_path, outside, capsys):
    out = tmp_path / "demo"
    (out / "cnn_w8").mkdir(parents=True)
    (out / "cnn_w8" / "run").symlink_to(outside, target_is_directory=True)
    before = _snapshot(outside)
    assert qfx_main(["demo", "-o", str(out), "--force", "--quick"]) == 2
    assert "run' is a symbolic link; qfx demo does not write or delete through links" in capsys.readouterr().err
    assert _snapshot(outside) == before


def test_cost_refuses_a_linked_report(manifest, tmp_path, outside, capsys):
    out = tmp_path / "out"
    assert _gen(manifest, out) == 0
    (out / "report.md").symlink_to(outside / "precious.v")
    before = _snapshot(outside)
    assert qfx_main(["cost", str(out), "--no-synth"]) == 2
    assert "report.md is a symbolic link; qfx cost does not write through links" in capsys.readouterr().err
    assert _snapshot(outside) == before
