"""Contender description, timing loop, bit-exactness check and table printing.

A contender is a callable ``fn(x) -> y`` taking the benchmark's float32 CPU
tensor and returning the quantized values as a float torch tensor, which is
the contract of ``qfx.quantize`` and of the torch baselines.  A peer that
works on NumPy arrays or on its own array type does its conversions inside
``fn``, so they are part of its time; its ``note`` says which.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

#: Row roles, in table order.
BASELINE, REFERENCE, QFX, PEER, INFO = "baseline", "reference", "qfx", "peer", "info"


@dataclass
class Contender:
    name: str
    role: str
    api: str  # the exact call that is timed, for the report
    fn: Callable[[torch.Tensor], object] | None = None
    note: str = ""  # conversions included in the time, semantic differences
    skip_reason: str | None = None  # set: the row is reported as skipped
    compare: bool = True  # False: timing only (a different format, e.g. fake-quant in table B)


@dataclass
class Row:
    contender: Contender
    status: str = "ok"  # ok | skipped | error
    reason: str = ""  # why skipped / the error
    warmup_ms: list[float] = field(default_factory=list)  # untimed calls, first one checked
    times_ms: list[float] = field(default_factory=list)
    target_repeats: int = 0
    ms: float | None = None  # median of times_ms
    iqr_ms: float | None = None  # interquartile range of times_ms
    ratio: float | None = None  # ms / baseline ms
    mismatches: int | None = None
    mismatch_by_class: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)  # one mismatch per class
    out_dtype: str = ""
    mutated_input: bool = False

    @property
    def bit_exact(self) -> bool | None:
        if self.mismatches is None:
            return None
        return self.mismatches == 0


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def to_float64(out) -> np.ndarray:
    if isinstance(out, tuple):  # defensive: a quantizer that returns (values, ...)
        out = out[0]
    if isinstance(out, torch.Tensor):
        out = out.detach().to("cpu")
        if out.dtype not in (torch.float32, torch.float64):
            out = out.to(torch.float32)
        out = out.numpy()
    return np.asarray(out, dtype=np.float64).reshape(-1)


def compare(out64: np.ndarray, ref64: np.ndarray, signed_zero: bool) -> np.ndarray:
    """Boolean mask of mismatching elements.  NaN equals NaN (any payload);
    with ``signed_zero`` a zero of the wrong sign is a mismatch too."""
    if out64.shape != ref64.shape:
        raise ValueError(f"output has {out64.size} elements, reference {ref64.size}")
    with np.errstate(invalid="ignore"):
        equal = (out64 == ref64) | (np.isnan(out64) & np.isnan(ref64))
        if signed_zero:
            equal &= ~((out64 == 0) & (ref64 == 0) & (np.signbit(out64) != np.signbit(ref64)))
    return ~equal


def _call_ms(fn, x) -> float:
    t0 = time.perf_counter()
    y = fn(x)
    ms = (time.perf_counter() - t0) * 1e3
    del y
    return ms


def prepare(
    c: Contender,
    x: torch.Tensor,
    x_pristine: torch.Tensor,
    ref64: np.ndarray | None,
    classes: np.ndarray | None,
    class_names: list[str],
    signed_zero: bool,
    warmup: int,
) -> Row:
    """First call (its output is the one checked against the reference), then
    the remaining warm-up calls.  Errors become an ``error`` row."""
    row = Row(contender=c)
    if c.skip_reason is not None:
        row.status, row.reason = "skipped", c.skip_reason
        return row
    try:
        gc.collect()
        t0 = time.perf_counter()
        out = c.fn(x)
        row.warmup_ms.append((time.perf_counter() - t0) * 1e3)
        if not torch.equal(x, x_pristine):  # the contender wrote into its input
            row.mutated_input = True
            x.copy_(x_pristine)
        out64 = to_float64(out)
        row.out_dtype = str(out.dtype).removeprefix("torch.") if hasattr(out, "dtype") else type(out).__name__
        del out
        if c.compare and ref64 is not None:
            bad = compare(out64, ref64, signed_zero)
            row.mismatches = int(bad.sum())
            if row.mismatches:
                counts = np.bincount(classes[bad], minlength=len(class_names))
                row.mismatch_by_class = {g: int(k) for g, k in zip(class_names, counts) if k}
                idx = np.flatnonzero(bad)
                # One example per class: enough to see what differs.
                for name in row.mismatch_by_class:
                    i = int(idx[classes[idx] == class_names.index(name)][0])
                    row.examples.append(
                        {
                            "class": name,
                            "index": i,
                            "input": float(x_pristine[i]),
                            "got": _jsonable(out64[i]),
                            "want": _jsonable(ref64[i]),
                        }
                    )
        del out64
        for _ in range(max(warmup - 1, 0)):
            row.warmup_ms.append(_call_ms(c.fn, x))
    except Exception as e:  # a broken contender must not stop the run
        row.status = "error"
        row.reason = f"{type(e).__name__}: {e}".strip()
        progress("    " + traceback.format_exc(limit=-3).replace("\n", "\n    "))
    return row


def time_interleaved(rows: list[Row], x: torch.Tensor, repeats: int, budget_s: float, on_round=None) -> None:
    """Timed calls, round-robin over the contenders (one call each per round),
    so that background load drifting during the run hits every contender
    alike.  A contender gets ``repeats`` calls, or fewer (at least 3) if its
    warm-up time says they would take more than ``budget_s``."""
    live = [r for r in rows if r.status == "ok"]
    for r in live:
        est_s = min(r.warmup_ms) / 1e3
        r.target_repeats = repeats if est_s * repeats <= budget_s else max(3, int(budget_s / max(est_s, 1e-9)))
    n_rounds = max((r.target_repeats for r in live), default=0)
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does
    try:
        for k in range(n_rounds):
            for r in live:
                if k < r.target_repeats:
                    r.times_ms.append(_call_ms(r.contender.fn, x))
            if on_round:
                on_round(k + 1, n_rounds)
    finally:
        if gc_was_enabled:
            gc.enable()
    for r in live:
        r.ms = statistics.median(r.times_ms)
        if len(r.times_ms) >= 4:
            q1, _, q3 = statistics.quantiles(r.times_ms, n=4)
            r.iqr_ms = q3 - q1


def _jsonable(v: float):
    v = float(v)
    if np.isnan(v):
        return "nan"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "-0.0" if np.signbit(v) else 0.0
    return v


# --------------------------------------------------------------------------
# Text table
# --------------------------------------------------------------------------


def bit_exact_cell(row: Row) -> str:
    if row.status != "ok":
        return "-"
    if not row.contender.compare:
        return "n/a"
    if row.mismatches is None:
        return "?"
    if row.mismatches == 0:
        return "yes (0 mismatches)"
    return f"no ({row.mismatches} mismatches)"


def note_cell(row: Row) -> str:
    c = row.contender
    if row.status == "skipped":
        return f"SKIPPED: {row.reason}"
    if row.status == "error":
        return f"ERROR: {row.reason}"
    parts = []
    if row.mismatch_by_class:
        parts.append("mismatch: " + ", ".join(f"{g} {n}" for g, n in row.mismatch_by_class.items()))
    if c.note:
        parts.append(c.note)
    if row.mutated_input:
        parts.append("WROTE INTO ITS INPUT (restored)")
    if row.times_ms and len(row.times_ms) < 5:
        parts.append(f"{len(row.times_ms)} timed calls")
    if row.ms and row.iqr_ms is not None and row.iqr_ms > 0.25 * row.ms:
        parts.append(f"noisy: IQR {100 * row.iqr_ms / row.ms:.0f}% of median, min {min(row.times_ms):.2f} ms")
    return "; ".join(parts)


def format_table(rows: list[Row]) -> str:
    """Rows as a text table; 'x fake-quant' divides by the bare torch fake-quant of the same run."""
    fake = next((r.ms for r in rows if r.contender.name.startswith("bare torch fake-quant") and r.ms), None)
    header = ("contender", "ms", "x baseline", "x fake-quant", "bit-exact", "note")
    lines = []
    for r in rows:
        ms = "-" if r.ms is None else f"{r.ms:.2f}"
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        vs_fake = "-" if (r.ms is None or fake is None) else f"{r.ms / fake:.2f}"
        lines.append((r.contender.name, ms, ratio, vs_fake, bit_exact_cell(r), note_cell(r)))
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(header[:-1])]
    out = []
    fmt_row = lambda cells: "  ".join(  # noqa: E731
        [cells[0].ljust(widths[0]), *(cells[i].rjust(widths[i]) for i in (1, 2, 3)), cells[4].ljust(widths[4]), cells[5]]
    ).rstrip()
    out.append(fmt_row(header))
    out.append(fmt_row(tuple("-" * w for w in widths) + ("-" * 4,)))
    out.extend(fmt_row(l) for l in lines)
    return "\n".join(out)
