"""Quantization throughput: qfx vs bare torch vs peer emulators.

Run from the repository root::

    python bench/run.py            # or: make bench
    python bench/run.py --help

Prints one table per format and writes bench/results/quantize.json.
See bench/README.md for what is measured and how to read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if __package__ in (None, ""):
    # Run as a script: import this directory as the package ``bench`` rather
    # than putting its modules on sys.path as top-level names.
    if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
        sys.path[0] = str(ROOT)
    else:
        sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.baselines import baseline, extra_rows  # noqa: E402
from bench.formats import ALL_FORMATS  # noqa: E402
from bench.harness import BASELINE, QFX, format_table, prepare, progress, time_interleaved  # noqa: E402
from bench.inputs import classify, make_input, reference_fixed, reference_minifloat  # noqa: E402
from bench.peers import PEERS, peer_contenders, peer_versions  # noqa: E402
from bench.qfx_adapter import qfx_contenders  # noqa: E402

DEFAULT_JSON = HERE / "results" / "quantize.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4_000_000, help="elements in the input tensor (default 4M)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads and the apytypes pool (default 2)")
    p.add_argument("--repeats", type=int, default=15, help="timed calls per contender; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (the first one is the checked output)")
    p.add_argument(
        "--budget", type=float, default=4.0, help="seconds of timed calls per contender; slow ones get fewer repeats (>= 3)"
    )
    p.add_argument("--formats", default="A,B,B2", help="comma list of format keys: A (ap_fixed), B (e4m3fn), B2 (e5m2)")
    p.add_argument("--peers", default=",".join(PEERS), help="comma list of peers to run")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    p.add_argument(
        "--no-strict",
        action="store_true",
        help="exit 0 even if qfx ran and was not bit-exact or raised (default: exit 1 then; a skipped qfx is fine)",
    )
    return p.parse_args(argv)


def environment(args) -> dict:
    import ml_dtypes

    try:
        import apytypes

        apy_threads = apytypes.n_threads()
    except Exception:
        apy_threads = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "apytypes_threads": apy_threads,
        "numpy": np.__version__,
        "ml_dtypes": ml_dtypes.__version__,
        "peers": peer_versions(),
    }


def _loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    try:
        import apytypes

        apytypes.reset_thread_pool(n)
    except Exception:
        pass


def bench_format(fmt, inp, args, ctx) -> dict:
    x = inp.x
    x_pristine = x.clone()
    t0 = time.perf_counter()
    if fmt.kind == "fixed":
        ref = reference_fixed(inp.np, fmt)
        ref_desc = "NumPy: np.clip(np.round(float64(x) * 2**F), -2**(W-1), 2**(W-1)-1) / 2**F"
        signed_zero = False  # ap_fixed has no -0: compare values
    else:
        ref = reference_minifloat(inp.np, fmt).astype(np.float64)
        ref_desc = f"ml_dtypes: x.numpy().astype(ml_dtypes.{fmt.np_dtype.__name__}).astype(np.float32)"
        signed_zero = True  # the format has a -0 code: its sign must match
    classes, class_names = classify(inp.np, fmt)
    class_counts = dict(zip(class_names, np.bincount(classes, minlength=len(class_names)).tolist()))
    tag = f"[{fmt.key} {fmt.spelling}]"
    progress(f"{tag} reference and value classes computed in {time.perf_counter() - t0:.1f} s")

    contenders = [baseline(fmt), *qfx_contenders(fmt), *peer_contenders(fmt, ctx, args.peers), *extra_rows(fmt)]
    rows = []
    for c in contenders:
        row = prepare(c, x, x_pristine, ref, classes, class_names, signed_zero, args.warmup)
        rows.append(row)
        if row.status != "ok":
            progress(f"{tag} {c.name}: {row.status.upper()}: {row.reason}")
            continue
        if row.mismatches is None:
            exact = "not compared"
        elif row.mismatches == 0:
            exact = "bit-exact"
        else:
            exact = f"NOT bit-exact, {row.mismatches} mismatches {row.mismatch_by_class}"
        progress(f"{tag} {c.name}: checked, {exact}; warm-up {min(row.warmup_ms):.1f} ms")

    def on_round(k, n):
        progress(f"{tag} timing round {k}/{n}")

    time_interleaved(rows, x, args.repeats, args.budget, on_round)
    if not torch.equal(x, x_pristine):  # a contender wrote into x while being timed
        x.copy_(x_pristine)
        progress(f"{tag} WARNING: the input was modified during timing; restored")

    base = next(r for r in rows if r.contender.role == BASELINE)
    for r in rows:
        if r.ms is not None and base.ms:
            r.ratio = r.ms / base.ms
        if r.ms is not None:
            progress(f"{tag} {r.contender.name}: {r.ms:.2f} ms median of {len(r.times_ms)}")

    return {
        "key": fmt.key,
        "format": fmt.spelling,
        "reference": ref_desc,
        "compare": "values, NaN == NaN" + ("; zero signs must match" if signed_zero else "; -0 == +0"),
        "value_classes": class_counts,
        "baseline": base.contender.name,
        "rows": rows,
    }


def row_json(r) -> dict:
    c = r.contender
    return {
        "contender": c.name,
        "role": c.role,
        "api": c.api,
        "status": r.status,
        "reason": r.reason or None,
        "ms": r.ms,
        "ratio_to_baseline": r.ratio,
        "min_ms": min(r.times_ms) if r.times_ms else None,
        "iqr_ms": r.iqr_ms,
        "times_ms": r.times_ms,
        "warmup_ms": r.warmup_ms,
        "bit_exact": None if not c.compare else r.bit_exact,
        "mismatches": r.mismatches,
        "mismatch_by_class": r.mismatch_by_class,
        "mismatch_examples": r.examples,
        "output_dtype": r.out_dtype or None,
        "wrote_into_input": r.mutated_input,
        "note": c.note,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    keys = [k.strip() for k in args.formats.split(",") if k.strip()]
    formats = [f for f in ALL_FORMATS if f.key in keys]
    if not formats:
        sys.exit(f"no known format in --formats={args.formats!r}")

    t_start = time.perf_counter()
    load_start = _loadavg()
    set_threads(args.threads)
    print(f"torch.set_num_threads({args.threads}) -> torch.get_num_threads() = {torch.get_num_threads()}")

    inp = make_input(args.n, args.seed, ALL_FORMATS)
    ctx = {"n": args.n, "max_abs": float(np.abs(inp.np).max())}
    edge = sum(c for g, c in inp.group_counts().items() if g != "bulk")
    print(
        f"input: torch.randn({args.n}) * 3, seed {args.seed}, float32, {edge} edge values "
        f"(ties, +-1 ulp, overflow, zeros) spread in; sha256 {inp.sha256[:16]}"
    )

    results = []
    for fmt in formats:
        results.append(bench_format(fmt, inp, args, ctx))

    env = environment(args)
    env["loadavg_1min"] = {"start": load_start, "end": _loadavg()}
    for res in results:
        print()
        print(f"== {res['key']}: {res['format']}  (baseline: {res['baseline']}; reference: {res['reference']})")
        print(format_table(res["rows"]))
    print()
    print(
        f"n={args.n}, threads={args.threads}, median of up to {args.repeats} calls after {args.warmup} warm-up; "
        f"'x baseline' = ms / baseline ms (>1 is slower). Total {time.perf_counter() - t_start:.0f} s."
    )
    la = env["loadavg_1min"]
    if la["start"] is not None and max(la["start"], la["end"]) > 0.5:
        print(
            f"note: 1-min load average was {la['start']:.2f} at start and {la['end']:.2f} at end "
            f"on {os.cpu_count()} CPUs; other processes were competing, so timings are noisy."
        )

    doc = {
        "benchmark": "quantize",
        "config": {
            "n": args.n,
            "seed": args.seed,
            "threads": args.threads,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "budget_s": args.budget,
            "input": "torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 3, edge values spread in",
            "input_sha256": inp.sha256,
            "edge_groups": {g: c for g, c in inp.group_counts().items()},
            "max_abs_input": ctx["max_abs"],
        },
        "environment": env,
        "formats": [{**{k: v for k, v in res.items() if k != "rows"}, "rows": [row_json(r) for r in res["rows"]]} for res in results],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.json}")

    failures = []
    for res in results:
        for r in res["rows"]:
            if r.contender.role != QFX:
                continue
            if r.status == "error":
                failures.append(f"qfx raised on {res['format']}: {r.reason}")
            elif r.status == "ok" and r.mismatches:
                failures.append(
                    f"qfx is NOT bit-exact on {res['format']}: {r.mismatches} mismatches "
                    f"{r.mismatch_by_class}; e.g. {r.examples}"
                )
    for msg in failures:
        print(msg)
    if failures and not args.no_strict:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
