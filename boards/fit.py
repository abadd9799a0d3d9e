"""Does a design fit a board?  Utilization against the board's SAFE limits.

``usage`` is a mapping of resource name to count, e.g. the ``summary()`` of
``qfx.hw.synth.synth_xilinx``: ``{"lut": ..., "ff": ..., "dsp": ..., "bram36": ..., "uram": ...}``.
Aliases ``bram`` (for ``bram36``) and ``luts``/``ffs``/``dsps`` are accepted; ``carry`` (CARRY8/CARRY4
cells, which live inside CLB slices and have no budget of their own here) is ignored.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Mapping

from .board import RESOURCE_KEYS, Board, get_board

__all__ = ["check_fit", "utilization"]

_ALIASES = {"bram": "bram36", "luts": "lut", "ffs": "ff", "dsps": "dsp", "bram36e": "bram36"}
_IGNORED = frozenset({"carry"})
_LABEL = {"lut": "LUT", "ff": "FF", "dsp": "DSP", "bram36": "BRAM36", "uram": "URAM"}


def _normalise(usage: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(usage, Mapping):
        raise TypeError(f"usage must be a mapping of resource name to count such as "
                        f"{{'lut': 1200, 'dsp': 16}}, got {type(usage).__name__}")
    out: dict[str, float] = {}
    for raw_key, value in usage.items():
        if not isinstance(raw_key, str):
            raise TypeError(f"usage keys must be resource names (str), got {raw_key!r}")
        key = raw_key.lower()
        if key in _IGNORED:
            continue
        key = _ALIASES.get(key, key)
        if key not in RESOURCE_KEYS:
            raise ValueError(f"unknown resource {raw_key!r} in usage; use {', '.join(RESOURCE_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"usage[{raw_key!r}] must be a number, got {type(value).__name__}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"usage[{raw_key!r}] must be a finite count >= 0, got {value!r}")
        if key in out:
            raise ValueError(f"usage names {key!r} twice (as {raw_key!r} and an alias); give it once")
        out[key] = float(value)
    return out


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def utilization(board: Board | str, usage: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Per resource: ``used``, ``available``, ``safe`` (count), ``fraction`` of the device and
    ``safe_fraction`` (fraction of the safe limit; > 1 means over)."""
    board = get_board(board)
    used = _normalise(usage)
    report: dict[str, dict[str, float]] = {}
    for key in RESOURCE_KEYS:
        n = used.get(key, 0.0)
        avail = board.resources[key]
        safe = board.safe_limit(key)
        report[key] = {
            "used": n,
            "available": float(avail),
            "safe": safe,
            "fraction": n / avail if avail else (0.0 if n == 0 else math.inf),
            "safe_fraction": n / safe if safe else (0.0 if n == 0 else math.inf),
        }
    return report


def check_fit(board: Board | str, usage: Mapping[str, float]) -> list[str]:
    """One human-readable problem per resource over the board's safe utilization; empty if it fits.

    Example: ``"DSP: 400 used > 288 safe (80 % of 360) on ultra96: over by 112"``.
    """
    board = get_board(board)
    problems = []
    for key, row in utilization(board, usage).items():
        used, safe, avail = row["used"], row["safe"], row["available"]
        if used <= safe + 1e-9:
            continue
        label = _LABEL[key]
        if avail == 0:
            problems.append(f"{label}: {_fmt(used)} used but {board.name} has no {label} "
                            f"(0 available): over by {_fmt(used)}")
            continue
        pct = round(board.safe_utilization[key] * 100)
        problems.append(f"{label}: {_fmt(used)} used > {_fmt(math.floor(safe))} safe "
                        f"({pct} % of {_fmt(avail)}) on {board.name}: over by {_fmt(used - math.floor(safe))}")
    return problems
