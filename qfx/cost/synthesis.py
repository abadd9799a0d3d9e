"""Resources and logic depth from real synthesis: Yosys ``synth_xilinx`` per engine and for the whole design.

Each engine of the accelerator (:meth:`qfx.hw.accel.Accelerator.engines`) is written as its own
top module with :func:`qfx.hw.verilog.to_verilog` and synthesized alone; the whole accelerator is
synthesized once more (the sum of the engines plus the stream fork/join and the AXI control, and
what cross-engine optimisation changes). One Yosys run per module gives

* the primitive counts (as :class:`qfx.hw.synth.SynthResult`: LUT, FF, CARRY8, DSP48E2, RAMB),
* the mapped netlist's register-to-register paths, weighted by :mod:`qfx.cost.timing` into a
  critical-path delay.

Results are cached by the hash of the Verilog, the options and the Yosys version (the same
cache folder as :mod:`qfx.hw.synth`, sub-folder ``cost``).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from qfx.hw.synth import (FAMILIES, SynthError, SynthResult, cache_root, cell_counts, check_module_name,
                          max_parallel_runs, run_yosys, yosys_command, yosys_version)

__all__ = ["ModuleSynth", "synth_module", "synth_accelerator", "SynthError"]

_CACHE_VERSION = "cost-3"  # bumped with the timing model (qfx.cost.timing): cached paths are its output


class ModuleSynth:
    """Counts and timing graph summary of one synthesized module."""

    def __init__(self, name: str, result: SynthResult, paths: dict[str, Any]):
        self.name = name
        self.result = result
        self.paths = paths  # see qfx.cost.timing.critical_path

    def summary(self) -> dict[str, float]:
        return self.result.summary()


def _cache_dir() -> Path:
    return cache_root() / "cost"


def synth_module(verilog: str, top: str, *, family: str = "xcup", timeout: float = 1800) -> ModuleSynth:
    """Synthesize ``verilog`` (top ``top``) with ``synth_xilinx -family FAMILY -flatten -noiopad``.

    Returns the cell counts and the weighted critical path of the mapped netlist
    (:func:`qfx.cost.timing.critical_path`). Raises :class:`SynthError` with Yosys' last output
    lines when Yosys is missing or fails.
    """
    from .timing import critical_path

    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {', '.join(FAMILIES)}")
    check_module_name(top)
    cmd = yosys_command()
    opts = f"-family {family} -top {top} -noiopad -flatten"
    key = hashlib.sha256("\0".join([_CACHE_VERSION, yosys_version(cmd), opts, verilog]).encode()).hexdigest()[:32]
    cache = _cache_dir() / f"{key}.json"
    if cache.exists():
        data = json.loads(cache.read_text())
        return ModuleSynth(top, SynthResult(top=top, family=family, cells=data["cells"]), data["paths"])
    script = (f"read_verilog -sv design.v; synth_xilinx {opts}; tee -q -o stat.json stat -json -tech xilinx; "
              "write_json net.json")
    out = run_yosys(cmd, verilog, top, script, ("stat.json", "net.json"), timeout=timeout)
    report = json.loads(out["stat.json"])
    paths = critical_path(json.loads(out["net.json"]), top)
    cells = cell_counts(report)
    cache.parent.mkdir(parents=True, exist_ok=True)
    part = cache.with_suffix(f".tmp{os.getpid()}")
    part.write_text(json.dumps({"cells": cells, "paths": paths}, sort_keys=True))
    os.replace(part, cache)
    return ModuleSynth(top, SynthResult(top=top, family=family, cells=cells), paths)


def _ident(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    s = re.sub(r"__+", "_", s)
    return s if re.match(r"[A-Za-z_]", s) else f"n_{s}"


def synth_accelerator(manifest: Any, *, top: str = "qfx_top", family: str = "xcup",
                      engines: bool = True, whole: bool = True, folding: Any = None) -> dict[str, Any]:
    """Synthesize every engine of ``manifest``'s accelerator (at ``folding``: per dense / conv2d
    layer a :class:`~qfx.hw.accel.folding.Folding`) as its own top, and the whole design.

    Returns ``{"engines": {node: ModuleSynth}, "whole": ModuleSynth | None}``.
    """
    from qfx.hw.accel import Accelerator
    from qfx.hw.verilog import to_verilog

    acc = Accelerator(manifest, folding=folding)
    jobs: list[tuple[str, str, str]] = []  # (key, verilog, module)
    if whole:
        jobs.append(("", to_verilog(acc, top), top))
    else:
        acc._MustUse__silence = True
    if engines:
        engs = acc.engines()
        for eng in engs.values():
            eng._MustUse__silence = True  # a failing Yosys run leaves the rest unelaborated on purpose
        for name, eng in engs.items():
            mod = f"{_ident(top)}_{_ident(name)}"
            jobs.append((name, to_verilog(eng, mod), mod))
    # Independent Yosys processes: run them side by side, the biggest (the whole design) first;
    # yowasp's one-time compile happens once, before the fan-out (qfx.hw.synth.yosys_version).
    if jobs:
        yosys_version(yosys_command())
    workers = _workers(len(jobs))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        done = {key: pool.submit(synth_module, v, mod, family=family) for key, v, mod in jobs}
        results = {key: fut.result() for key, fut in done.items()}
    return {"engines": {k: r for k, r in results.items() if k != ""}, "whole": results.get("")}


def _workers(jobs: int = 1 << 30) -> int:
    """Parallel Yosys runs: ``QFX_SYNTH_JOBS``, else the CPUs, capped by the memory available."""
    return max_parallel_runs(jobs)
