"""Robust Yosys runs (issue 15): the one-time yowasp compile serialised across processes, a run killed by
a signal retried once, a remaining failure reported with the signal's name, the module, the log's last
lines and a working rerun command, and parallel runs capped by memory as well as CPUs.

The failures are injected through :func:`qfx.hw.synth.run_yosys`'s ``runner`` seam (a fake that fails
and otherwise hands over to the real ``subprocess.run``), never by faking a successful synthesis.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qfx.hw import synth
from qfx.hw.synth import SynthError, run_yosys, yosys_command

MULT = "module qfx_t(input [7:0] a, input [7:0] b, output [15:0] p); assign p = a * b; endmodule\n"
SCRIPT = "read_verilog -sv design.v; synth_xilinx -family xcup -top qfx_t -noiopad -flatten; " \
         "tee -q -o stat.json stat -json -tech xilinx"


def _real_yosys() -> list[str]:
    try:
        return yosys_command()
    except SynthError as err:
        pytest.skip(str(err))


class FailingRunner:
    """Kills the first ``fail`` synthesis runs with ``-signal`` (after writing a log line), then runs Yosys."""

    def __init__(self, fail: int, sig: int = 7) -> None:
        self.fail, self.sig, self.calls = fail, sig, 0

    def __call__(self, argv, **kw):
        if "-V" in argv:
            return subprocess.run(argv, **kw)
        self.calls += 1
        if self.calls <= self.fail:
            Path(kw["cwd"], "yosys.log").write_text("3.1. Executing SYNTH_XILINX pass.\nlast words before the crash\n")
            return subprocess.CompletedProcess(argv, -self.sig, "", "")
        return subprocess.run(argv, **kw)


def test_a_run_killed_by_a_signal_is_retried_once(capfd):
    cmd = _real_yosys()
    runner = FailingRunner(fail=1)
    out = run_yosys(cmd, MULT, "qfx_t", SCRIPT, ("stat.json",), runner=runner)
    assert runner.calls == 2
    cells = synth.cell_counts(json.loads(out["stat.json"]))
    assert cells.get("DSP48E2") == 1  # an 8 x 8 multiply maps to one DSP slice
    assert "was killed by SIGBUS (signal 7); retrying once" in capfd.readouterr().err


def test_a_remaining_failure_names_signal_module_log_and_rerun_command(tmp_path, monkeypatch):
    cmd = _real_yosys()
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path))
    runner = FailingRunner(fail=2)
    with pytest.raises(SynthError) as info:
        run_yosys(cmd, MULT, "qfx_t", SCRIPT, ("stat.json",), runner=runner)
    msg = str(info.value)
    assert runner.calls == 2  # retried once, not more
    assert "Yosys synth_xilinx of 'qfx_t' was killed by SIGBUS (signal 7) twice" in msg
    assert "last words before the crash" in msg
    rerun = msg.split("rerun it with: ", 1)[1].strip()
    folder = Path(rerun.split(" && ")[0][3:].strip("'"))
    assert (folder / "design.v").read_text() == MULT and (folder / "run.ys").is_file()
    # the command given really reruns the synthesis (here it succeeds: the kills were injected)
    r = subprocess.run(rerun, shell=True, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert synth.cell_counts(json.loads((folder / "stat.json").read_text())).get("DSP48E2") == 1
    import shutil

    shutil.rmtree(folder)


def test_other_signals_are_named_too(tmp_path, monkeypatch):
    cmd = _real_yosys()
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path))  # the failed run's folder is kept there
    with pytest.raises(SynthError, match=r"'qfx_t' was killed by SIGKILL \(signal 9\) twice") as info:
        run_yosys(cmd, MULT, "qfx_t", SCRIPT, ("stat.json",), runner=FailingRunner(fail=2, sig=9))
    assert f"rerun it with: cd {tmp_path / 'yosys' / 'runs'}/qfx_t-" in str(info.value)


def test_a_yosys_error_is_not_retried_and_shows_its_error_line(tmp_path, monkeypatch):
    cmd = _real_yosys()
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path))
    runner = FailingRunner(fail=0)
    with pytest.raises(SynthError, match=r"(?s)failed \(exit 1\).*ERROR.*nosuchtop.*rerun it with: cd ") as info:
        run_yosys(cmd, MULT, "nosuchtop", SCRIPT.replace("-top qfx_t", "-top nosuchtop"), ("stat.json",),
                  runner=runner)
    assert runner.calls == 1
    import shutil

    shutil.rmtree(str(info.value).split("rerun it with: cd ", 1)[1].split(" && ")[0].strip("'"))


def test_the_one_time_compile_runs_in_one_process_at_a_time(tmp_path):
    """Several processes asking for the Yosys version at once (each would compile yowasp's cache on a
    cold machine): a fake Yosys whose ``-V`` records overlapping runs shows that they ran one by one."""
    fake = tmp_path / "yosys"
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import os, sys, time
        busy = {str(tmp_path / "busy")!r}
        if os.path.exists(busy):
            open({str(tmp_path / "overlap")!r}, "a").write("x")
        open(busy, "w").close()
        time.sleep(0.3)  # the window a second compile would fall into
        os.unlink(busy)
        open({str(tmp_path / "runs")!r}, "a").write("x")
        print("Yosys 0.0 (fake)")
        """))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    code = f"from qfx.hw.synth import yosys_version; assert yosys_version([{str(fake)!r}]) == 'Yosys 0.0 (fake)'"
    env = {**os.environ, "QFX_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert (tmp_path / "runs").read_text() == "xxx"
    assert not (tmp_path / "overlap").exists(), "two Yosys -V (cold compiles) ran at the same time"


def test_parallel_runs_respect_memory_and_cpus(monkeypatch):
    monkeypatch.delenv("QFX_SYNTH_JOBS", raising=False)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    monkeypatch.setattr(synth, "available_memory", lambda: int(1.5 * synth.RUN_MEMORY))
    assert synth.max_parallel_runs(8) == 1
    monkeypatch.setattr(synth, "available_memory", lambda: 64 * synth.RUN_MEMORY)
    assert synth.max_parallel_runs(8) == min(8, cpus)
    assert synth.max_parallel_runs(1) == 1
    monkeypatch.setattr(synth, "available_memory", lambda: 0)
    assert synth.max_parallel_runs(8) == 1  # never zero
    monkeypatch.setenv("QFX_SYNTH_JOBS", "3")
    assert synth.max_parallel_runs(8) == 3
    monkeypatch.setenv("QFX_SYNTH_JOBS", "zero")
    with pytest.raises(ValueError, match="QFX_SYNTH_JOBS='zero': give a positive integer"):
        synth.max_parallel_runs(8)


def test_available_memory_is_plausible():
    mem = synth.available_memory()
    if mem is None:
        pytest.skip("not Linux")
    assert 0 <= mem < 1 << 50
