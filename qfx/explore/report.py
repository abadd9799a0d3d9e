"""Pareto fronts, the Markdown table and the Pareto plot of a sweep (see :mod:`qfx.explore`)."""

from __future__ import annotations

from typing import Any, Sequence

from .sweep import COST_AXES, Sweep

def pareto_mask(accuracy: Sequence[float], costs: Sequence[Sequence[float]]) -> list[bool]:
    """``True`` for each point no other point dominates.

    ``a`` dominates ``b`` when ``a`` is at least as accurate and at most as costly in every cost,
    and strictly better in one of them. Equal points do not dominate each other (both stay).
    """
    if len(accuracy) != len(costs):
        raise ValueError(f"{len(accuracy)} accuracies but {len(costs)} cost tuples")

    def dominates(a: int, b: int) -> bool:
        ge = accuracy[a] >= accuracy[b] and all(x <= y for x, y in zip(costs[a], costs[b]))
        gt = accuracy[a] > accuracy[b] or any(x < y for x, y in zip(costs[a], costs[b]))
        return ge and gt

    idx = range(len(accuracy))
    return [not any(dominates(j, i) for j in idx if j != i) for i in idx]


def _with_pareto(results: list[dict[str, Any]]) -> None:
    ok = [r for r in results if r["status"] == "ok"]
    acc = [r["accuracy"] for r in ok]
    flags = {ax: pareto_mask(acc, [(r[ax],) for r in ok]) for ax, _ in COST_AXES}
    flags["all"] = pareto_mask(acc, [tuple(r[ax] for ax, _ in COST_AXES) for r in ok])
    for i, r in enumerate(ok):
        r["pareto"] = {ax: flags[ax][i] for ax in flags}
    for r in results:
        if r["status"] != "ok":
            r["pareto"] = {ax: False for ax in flags}


def summarize(sweep: Sweep, results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The content of ``explore.json``."""
    _with_pareto(results)
    base = sweep.points[0].config
    return {
        "schema": "qfx.explore", "version": 1,
        "sweep": str(sweep.path) if sweep.path else None,
        "description": sweep.description,
        "model": base["model"], "data": base["data"]["name"], "board": sweep.board,
        "overrides": sweep.overrides,
        "accuracy_basis": "integer-only reference (qfx.reference) on the exported manifest, held-out test split",
        "cost_basis": "qfx.cost analytic estimate (no synthesis): LUT/FF calibrated on Yosys counts, DSP/BRAM "
                      "structural; energy: dynamic energy per inference of the per-operation model (Horowitz "
                      "45 nm x FPGA factors; ratios meaningful, absolute values uncalibrated)",
        "pareto_axes": [ax for ax, _ in COST_AXES],
        "failed": [r["name"] for r in results if r["status"] != "ok"],
        "seconds": round(seconds, 2),
        "points": results,
    }


def _pareto_text(r: dict[str, Any]) -> str:
    p = r.get("pareto") or {}
    axes = [label.split(" ")[0] for ax, label in COST_AXES if p.get(ax)]
    return ("★ " if p.get("all") else "") + ", ".join(axes) if axes or p.get("all") else ""


def to_markdown(summary: dict[str, Any]) -> str:
    """``explore.md``: one row per point, Pareto-optimal rows marked."""
    pts = summary["points"]
    L = [f"# qfx explore: {summary['model']} on {summary['data']}, board {summary['board']}", ""]
    if summary.get("description"):
        L += [summary["description"], ""]
    L += ["| point | rule | weights | activations | accuracy % | LUT | FF | DSP | BRAM36 | energy nJ | MAC pJ "
          "| cycles | fits | Pareto |",
          "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in pts:
        if r["status"] != "ok":
            L.append(f"| {r['name']} | {r['spec']} | | | failed ({r.get('stage')}) | | | | | | | | | |")
            continue
        f = r["formats"]
        name = f"**{r['name']}**" if r["pareto"]["all"] else r["name"]
        L.append(f"| {name} | {r['spec']} | `{f['weight']}` | `{f['activation']}` | {100 * r['accuracy']:.2f} | "
                 f"{r['lut']} | {r['ff']} | {r['dsp']} | {r['bram36']:g} | {r['energy_nj']:.2f} | {r['mac_pj']:.3f} | "
                 f"{r['cycles']} | {'yes' if r['fits'] else 'NO'} | {_pareto_text(r)} |")
    L += ["", "Pareto: the cost axes (LUT, DSP, energy) on which the point is not dominated by a point at least as "
          "accurate and no more costly; ★ / bold: not dominated on accuracy, LUT, DSP and energy together.", "",
          f"Accuracy: {summary['accuracy_basis']}. Cost: {summary['cost_basis']}.",
          f"Sweep time {summary['seconds']:.1f} s (cached points count only their lookup)."]
    if summary["failed"]:
        L += ["", "## Failed points", ""]
        for r in pts:
            if r["status"] != "ok":
                L.append(f"- `{r['name']}` ({r['spec']}), at {r.get('stage')}: {r.get('reason')}")
    if summary.get("overrides"):
        L += ["", "Overrides: " + ", ".join(f"{k}={v}" for k, v in summary["overrides"].items())]
    return "\n".join(L) + "\n"


def plot(summary: dict[str, Any]) -> bytes:
    """``pareto.png`` (bytes): accuracy against LUT, DSP and energy, Pareto front per subplot."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in summary["points"] if r["status"] == "ok"]
    kinds = sorted({r["kind"] for r in ok})
    colors = {k: plt.get_cmap("tab10")(i) for i, k in enumerate(kinds)}
    fig, axes = plt.subplots(1, len(COST_AXES), figsize=(5 * len(COST_AXES), 4))
    for ax, (key, label) in zip(axes, COST_AXES):
        for kind in kinds:
            pts = [r for r in ok if r["kind"] == kind]
            for fits in (True, False):
                sel = [r for r in pts if r["fits"] is fits]
                if sel:
                    ax.scatter([r[key] for r in sel], [100 * r["accuracy"] for r in sel], color=colors[kind],
                               marker="o" if fits else "x", label=kind if fits or not any(r["fits"] for r in pts) else None)
        for r in ok:
            ax.annotate(r["name"], (r[key], 100 * r["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = sorted((r for r in ok if r["pareto"][key]), key=lambda r: (r[key], -r["accuracy"]))
        if front:
            ax.step([r[key] for r in front], [100 * r["accuracy"] for r in front], where="post", color="k", lw=1,
                    ls="--", label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    if ok:
        axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"qfx explore: {summary['model']} on {summary['board']} (x: does not fit; costs: analytic estimate)",
                 fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
