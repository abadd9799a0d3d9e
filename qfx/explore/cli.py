"""``qfx explore CONFIG -o OUT``: the command (see :mod:`qfx.explore`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..runs import ConfigError
from .points import check_output, run_sweep
from .sweep import load_sweep

def add_explore_command(sub: argparse._SubParsersAction) -> None:
    """Register ``qfx explore``."""
    p = sub.add_parser("explore", help="sweep number formats: train, evaluate, cost each; table and Pareto plot",
                       description="Design-space exploration of number formats: train, evaluate (integer "
                                   "reference on the exported manifest) and cost every point of a sweep; writes "
                                   "OUT/explore.json, explore.md and pareto.png. Exit 0: every point ran; 1: some "
                                   "point failed (recorded); 2: bad sweep config or output folder.")
    p.add_argument("config", help="sweep config (YAML): base, sweep and/or points (see configs/README.md)")
    p.add_argument("-o", "--output", default="out/explore", help="output folder (default out/explore)")
    p.add_argument("--epochs", type=int, help="quantization-aware training epochs of every point (quick runs)")
    p.add_argument("--float-epochs", type=int, help="float pre-training epochs of every point")
    p.add_argument("--seed", type=int, help="seed of every point (overrides train.seed)")
    p.add_argument("--board", help="board for cost and fit (default: the sweep's, else ultra96)")
    p.add_argument("--retry-failed", action="store_true", help="run failed points again instead of reusing the failure")
    p.add_argument("--force", action="store_true", help="write into a folder holding files qfx did not write (kept)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's choice; 1 is often fastest for these small models)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-point progress lines")
    p.set_defaults(func=cmd_explore)


def cmd_explore(args: argparse.Namespace) -> int:
    """``qfx explore``: exit 0 if every point ran, 1 if any failed, 2 on a bad sweep config or folder."""
    for name in ("epochs", "float_epochs"):
        v = getattr(args, name)
        if v is not None and v < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {v}")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    sweep = load_sweep(args.config, epochs=args.epochs, float_epochs=args.float_epochs, seed=args.seed,
                       board=args.board)
    out = Path(args.output)
    check_output(out, args.force)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    log(f"qfx explore: {len(sweep.points)} points of {sweep.points[0].config['model']} on {sweep.board} -> {out}/")
    summary = run_sweep(sweep, out, force=args.force, retry_failed=args.retry_failed, log=log)
    n_fail = len(summary["failed"])
    print(f"{len(summary['points']) - n_fail} points ok, {n_fail} failed in {summary['seconds']:.1f} s; "
          f"wrote {out}/explore.json, explore.md, pareto.png")
    return 1 if n_fail else 0
