"""Bit-exactness check of a qfx-gen design: RTL (Verilator) and HLS C simulation vs the integer reference.

:func:`verify` takes an OUT folder written by ``qfx-gen``, the manifest it came from (the path
recorded in ``design.json`` or given), and float inputs (or N random input codes plus corner
vectors); it runs the integer reference (:func:`qfx.reference.run`, the golden model), the RTL
under Verilator/cocotb (:func:`qfx.sim.accel.simulate`) and, when ``OUT/hls`` exists, the HLS
C simulation (:func:`qfx.hls.csim`), and compares codes. On an RTL mismatch it reruns the
first failing vector with per-layer probes (every engine's output stream) to name the first
layer whose codes differ from the reference, and records a VCD of that run.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from qfx.intops import corner_and_random_codes  # re-exported: tests and scripts use it from here

from .accel import Design, DesignError, RtlRun, load_design, simulate

__all__ = ["Mismatch", "CheckResult", "Report", "verify", "resolve_manifest", "corner_and_random_codes"]


@dataclasses.dataclass
class Mismatch:
    """The first differing element: where, both codes and values, the formats involved."""

    layer: str  # the node whose codes differ (the output node unless localized)
    vector: int
    index: int  # flat index in the node's output (C order)
    position: tuple[int, ...]  # the same as a multi-index of the node's output shape
    expected: int
    actual: int
    fmt: str
    expected_value: float
    actual_value: float
    formats: dict[str, Any]
    count: int  # differing elements (in this layer / output) over all compared vectors
    localized: bool  # True: found by probing the engines layer by layer

    def describe(self) -> str:
        where = "first failing layer" if self.localized else "output"
        return (f"{where} {self.layer!r}: vector {self.vector}, element {self.index} {list(self.position)}: "
                f"expected code {self.expected} ({self.expected_value:g}), got {self.actual} "
                f"({self.actual_value:g}) in {self.fmt}; {self.count} element(s) differ; formats: "
                + ", ".join(f"{k}={v}" for k, v in self.formats.items()))


@dataclasses.dataclass
class CheckResult:
    name: str
    ok: bool
    vectors: int
    mismatches: int
    seconds: float
    first: "Mismatch | None" = None
    note: str = ""


@dataclasses.dataclass
class Report:
    design: Design
    manifest_path: Path
    source: str
    inputs: np.ndarray  # input codes [N, n_in]
    expected: np.ndarray  # reference output codes [N, n_out]
    rtl_outputs: "np.ndarray | None"
    checks: list[CheckResult]
    localized: "Mismatch | None" = None
    waves: "Path | None" = None
    rtl: "RtlRun | None" = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def table(self) -> str:
        rows = [("check", "verdict", "vectors", "mismatches", "time")]
        for c in self.checks:
            rows.append((c.name, "PASS" if c.ok else "FAIL", str(c.vectors), str(c.mismatches), f"{c.seconds:.2f} s"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        for c in self.checks:
            if c.note:
                lines.append(f"  {c.name}: {c.note}")
        return "\n".join(lines)


def resolve_manifest(design: Design, manifest: "str | os.PathLike | None") -> Path:
    """The manifest folder/file: ``manifest`` if given, else ``design.json``'s ``manifest`` field."""
    cand = manifest if manifest is not None else design.info.get("manifest")
    if cand is None:
        raise DesignError(f"{design.out_dir}/design.json does not record its manifest (older qfx-gen); "
                          "pass --manifest PATH (the folder given to qfx-gen)")
    p = Path(cand)
    # qfx-gen records it relative to OUT; an explicit --manifest is relative to the working folder
    order = (p, design.out_dir / p) if manifest is not None else (design.out_dir / p, p)
    for c in order:
        if c.exists():
            return c
    raise DesignError(f"manifest {str(cand)!r} (from {'--manifest' if manifest else 'design.json'}) not found; "
                      "pass --manifest PATH (the folder given to qfx-gen)")


def _first(expected: np.ndarray, actual: np.ndarray, layer: str, shape: tuple[int, ...], fmt: Any,
           formats: dict[str, Any], localized: bool, vector_offset: int = 0) -> "Mismatch | None":
    bad = np.argwhere(expected != actual)
    if bad.size == 0:
        return None
    v, i = int(bad[0][0]), int(bad[0][1])
    e, a = int(expected[v, i]), int(actual[v, i])
    scale = 2.0 ** -fmt.frac_bits
    pos = tuple(int(t) for t in np.unravel_index(i, shape)) if shape else (i,)
    return Mismatch(layer=layer, vector=v + vector_offset, index=i, position=pos, expected=e, actual=a, fmt=str(fmt),
                    expected_value=e * scale, actual_value=a * scale, formats=formats, count=len(bad),
                    localized=localized)


def verify(out_dir: "str | os.PathLike", x: Any = None, *, vectors: int = 100, seed: int = 0,
           manifest: "str | os.PathLike | None" = None, waves: "bool | str | os.PathLike" = False,
           hls: bool = True, mode: str = "native", localize: bool = True, model: Any = None) -> Report:
    """Run the checks; see the module docstring. ``x``: float inputs ``[N, *input_shape]`` or None (random).

    ``model``: the qfx model the manifest was exported from (e.g. :func:`qfx.runs.load_run`); when given,
    its PyTorch emulation (:func:`qfx.export.emulate`) is compared with the reference layer by layer too.
    """
    import torch

    from qfx.manifest import load
    from qfx.reference import run

    d = load_design(out_dir)
    mpath = resolve_manifest(d, manifest)
    man = load(mpath)
    in_shape = tuple(man.input_node.output_shape)
    if list(in_shape) != list(d.info["interface"]["s_axis"]["shape"]):
        raise DesignError(f"manifest {mpath} takes input {list(in_shape)} but the design was generated for "
                          f"{d.info['interface']['s_axis']['shape']}: regenerate OUT from this manifest")
    in_fmt = man.input_node.formats["output"]
    if x is None:
        codes = corner_and_random_codes(int(in_fmt.min_code), int(in_fmt.max_code), int(vectors), d.n_in, seed)
        xf = (codes.astype(np.float64) * 2.0 ** -in_fmt.frac_bits).reshape((len(codes),) + in_shape)
        source = f"{len(codes)} vectors: corners + random codes (seed {seed})"
    else:
        xf = np.asarray(x)
        if xf.dtype.kind != "f":
            raise ValueError(f"inputs must be floating point (real values of the model input), got dtype {xf.dtype}; "
                             f"the model takes float [N, {', '.join(map(str, in_shape))}]")
        if xf.shape == in_shape:
            xf = xf[None]
        if xf.shape[1:] != in_shape or xf.ndim != len(in_shape) + 1:
            raise ValueError(f"inputs have shape {list(xf.shape)}; the model takes [N, {', '.join(map(str, in_shape))}] "
                             f"(or one [{', '.join(map(str, in_shape))}])")
        if len(xf) == 0:
            raise ValueError(f"inputs have shape {list(xf.shape)}: no vectors; give at least one "
                             f"[{', '.join(map(str, in_shape))}]")
        source = f"{len(xf)} vectors from the given inputs (quantized to {in_fmt})"
        codes = None
    t0 = time.perf_counter()
    ref = run(man, torch.as_tensor(np.ascontiguousarray(xf, dtype=np.float64)))
    t_ref = time.perf_counter() - t0
    ref_codes = ref[man.input].reshape(len(xf), -1).astype(np.int64)
    if codes is not None and not np.array_equal(ref_codes, codes):  # pragma: no cover - exact grid values
        raise AssertionError("the reference quantized exact input codes differently")
    codes = ref_codes
    out_node = man.output_node
    out_fmt = out_node.formats.get("output") or man.node(out_node.inputs[0]).formats["output"]
    want = ref[man.output].reshape(len(xf), -1).astype(np.int64)
    n = len(codes)
    checks = [CheckResult("integer reference (golden)", True, n, 0, t_ref, note="")]
    if model is not None:
        checks.append(_check_emulation(model, man, ref, xf))
    wave_path = None
    if waves:
        wave_path = Path(waves) if not isinstance(waves, bool) else Path(d.out_dir) / "sim" / "waves.vcd"
    rtl = simulate(d, codes, mode=mode, waves=bool(waves), waves_path=wave_path)
    first = _first(want, rtl.outputs, man.output, tuple(out_node.output_shape), out_fmt,
                   {"output": str(out_fmt)}, False)
    checks.append(CheckResult(f"RTL (Verilator, {mode}) vs reference", first is None, n,
                              0 if first is None else first.count, rtl.wall_seconds, first,
                              note="" if first is None else first.describe()))
    report = Report(d, mpath, source, codes, want, rtl.outputs, checks, waves=rtl.waves, rtl=rtl)
    if first is not None and localize:
        report.localized, report.waves = _localize(d, man, ref, codes, first.vector, wave_path)
    if hls and (d.out_dir / "hls" / "run_hls.tcl").is_file():
        from qfx import hls as qhls

        t0 = time.perf_counter()
        try:
            got = np.asarray(qhls.csim(d.out_dir, codes), dtype=np.int64).reshape(n, -1)
            hfirst = _first(want, got, man.output, tuple(out_node.output_shape), out_fmt, {"output": str(out_fmt)},
                            False)
            checks.append(CheckResult("HLS C simulation (g++, ap_types) vs reference", hfirst is None, n,
                                      0 if hfirst is None else hfirst.count, time.perf_counter() - t0, hfirst,
                                      note="" if hfirst is None else hfirst.describe()))
        except (RuntimeError, OSError) as err:
            checks.append(CheckResult("HLS C simulation (g++, ap_types) vs reference", False, n, 0,
                                      time.perf_counter() - t0, note=f"could not run: {str(err).splitlines()[0]}"))
    return report


def _check_emulation(model: Any, man: Any, ref: dict[str, np.ndarray], xf: np.ndarray) -> CheckResult:
    """The PyTorch emulation of ``model`` against the reference, every layer; the first differing one."""
    import torch

    import qfx
    from qfx.export import emulate

    t0 = time.perf_counter()
    emu = emulate(model, torch.as_tensor(np.ascontiguousarray(xf, dtype=np.float64)))
    if list(emu) != man.names:
        raise ValueError("the model's layers do not match the manifest's nodes (was the manifest exported from "
                         f"this model?): model {list(emu)[:4]}..., manifest {man.names[:4]}...")
    n = len(xf)
    for node in man:
        fmt = node.output_format
        got = qfx.to_codes(emu[node.name], fmt).numpy().reshape(n, -1).astype(np.int64)
        want = ref[node.name].reshape(n, -1).astype(np.int64)
        formats = {k: str(v) if not isinstance(v, tuple) else [str(t) for t in v] for k, v in node.formats.items()}
        m = _first(want, got, node.name, tuple(node.output_shape), fmt, formats, True)
        if m is not None:
            return CheckResult("PyTorch emulation vs reference", False, n, m.count, time.perf_counter() - t0, m,
                               note=m.describe())
    return CheckResult("PyTorch emulation vs reference", True, n, 0, time.perf_counter() - t0,
                       note=f"all {len(man.names)} layers")


def _localize(d: Design, man: Any, ref: dict[str, np.ndarray], codes: np.ndarray, vector: int,
              wave_path: "Path | None") -> "tuple[Mismatch | None, Path | None]":
    """Rerun one failing vector with engine probes and a VCD; the first layer that differs."""
    wp = wave_path or (Path(d.out_dir) / "sim" / f"fail_vector{vector}.vcd")
    run1 = simulate(d, codes[vector: vector + 1], mode="native", probe=True, waves=True, waves_path=wp)
    for node in man:
        if node.name not in (run1.probes or {}):
            continue
        want = ref[node.name][vector: vector + 1].reshape(1, -1).astype(np.int64)
        got = run1.probes[node.name]
        fmt = node.formats["output"]
        formats = {k: str(v) if not isinstance(v, tuple) else [str(t) for t in v] for k, v in node.formats.items()}
        m = _first(want, got, node.name, tuple(node.output_shape), fmt, formats, True, vector_offset=vector)
        if m is not None:
            return m, run1.waves
    return None, run1.waves

