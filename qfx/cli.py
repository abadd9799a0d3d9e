"""The ``qfx`` command line.

``qfx train CONFIG.yaml -o RUN/ [--epochs N] [--seed S] [--resume] [--force] [--compile [auto]]``
    Train a demo model with learned binary points; see :func:`cmd_train`.
``qfx demo-accuracy [--out DIR] [--quick]``
    The float / PTQ / qfx-trained accuracy table (:mod:`qfx.demo.accuracy`).

Errors in configs, arguments or the run folder print ``qfx: error: ...`` and
exit with status 2. Further subcommands (``qfx sim``, ``qfx cost``) and the
``qfx-gen`` generator entry point register in :data:`COMMANDS`.

Run config (YAML)::

    model: digits_cnn            # a demo model: digits_mlp, digits_cnn
    data:                        # or just `data: digits`
      name: digits
      batch_size: 64
      split_seed: 0              # fixes the train/val/test split
    train:
      seed: 0
      float_epochs: 15           # float pre-training before conversion (0: none)
      float_lr: 0.01
      epochs: 8                  # quantization-aware training
      lr: 0.001
      frac_lr: 0.01              # learning rate of the binary points
      bits_penalty: 0.0
      optimizer: adam            # adam, adamw, sgd
      schedule: cosine           # cosine, constant
      weight_decay: 0.0
      calibrate_batches: 8
      freeze_bn_stats: null      # BatchNorm statistics fixed during QAT (null: when float_epochs > 0)
    quant:                       # the qfx.convert config (DESIGN.md "Config")
      fold_bn: false
      default: {input: ..., weight: ..., bias: ..., accum: auto, output: ..., learn_binary_point: true}
      types:  {ReLU: {output: ...}}
      layers: {fc: {weight: "khot<2,ap_fixed<8,1>>"}}

RUN/ receives ``config.yaml`` (the effective config), ``float.pt`` (the
pre-trained float weights), ``checkpoints/epoch_NNNN.pt``, ``final.pt``
(the frozen qfx model's state_dict and layer formats) and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

# The run config, run folders and training live in the library (qfx.runs); the command line sits on
# top of it and keeps these names importable from here.
from .runs import DATA_KEYS as _DATA_KEYS  # noqa: F401
from .runs import RUN_DIRS, RUN_FILES, load_run, load_run_config, read_yaml  # noqa: F401
from .runs import TRAIN_KEYS as _TRAIN_KEYS  # noqa: F401
from .runs import ConfigError as CliError  # the user error of every command: `qfx: error: ...`, exit 2
from .runs import layer_formats as _formats  # noqa: F401
from .runs import prepare_run_dir as _prepare_run_dir  # noqa: F401
from .runs import run_loaders as _loaders  # noqa: F401
from .runs import suggest as _suggest  # noqa: F401
from .runs import without_n as _strip  # noqa: F401

__all__ = ["main", "COMMANDS", "load_run", "load_run_config", "CliError"]


# ---------------------------------------------------------------------------
# qfx train
# ---------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    """``qfx train``: float pre-training, conversion, quantization-aware training, freeze, test."""
    from .runs import train_run

    compile = {None: False, "on": True, "auto": "auto"}[args.compile]
    train_run(args.config, args.output, epochs=args.epochs, seed=args.seed, resume=args.resume, force=args.force,
              quiet=args.quiet, compile=compile, compile_backend=args.compile_backend)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a demo model with learned binary points",
                       description=cmd_train.__doc__)
    p.add_argument("config", help="run config (YAML): model, data, train, quant")
    p.add_argument("-o", "--output", required=True, help="run folder RUN/ (must not exist unless --resume/--force)")
    p.add_argument("--epochs", type=int, help="quantization-aware training epochs (overrides train.epochs)")
    p.add_argument("--seed", type=int, help="seed (overrides train.seed)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN/ from its last checkpoint")
    p.add_argument("--force", action="store_true", help="start over in an existing RUN/ (removes its qfx files)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("--compile", nargs="?", const="on", choices=("on", "auto"),
                   help="compile each training step with torch.compile (same bits as eager); 'auto': "
                        "train eagerly with a warning where compilation is unavailable (plain --compile: error)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend for --compile (default inductor; aot_eager needs no C++ compiler)")
    p.set_defaults(func=cmd_train)


def _add_demo_accuracy(sub: argparse._SubParsersAction) -> None:
    from .demo import accuracy

    p = sub.add_parser("demo-accuracy", help="float / PTQ / qfx-trained accuracy table on digits",
                       description="Demo accuracy table (see qfx.demo.accuracy).")
    accuracy.add_arguments(p)
    p.set_defaults(func=accuracy.run_cli)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from .demo import pipeline

    p = sub.add_parser("demo", help="the main job: train, export, generate (RTL+HLS), simulate (bit-exact verdict), cost, accuracy table",
                       description=pipeline.__doc__.split("\n\n")[0])
    pipeline.add_arguments(p)
    p.set_defaults(func=pipeline.run_cli)


#: Subcommand registrars: ``name -> function(subparsers)``. Later: ``sim``, ``cost``.
COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "train": _add_train,
    "demo-accuracy": _add_demo_accuracy,
    "demo": _add_demo,
    "sim": lambda sub: __import__("qfx.sim.cli", fromlist=["add_sim_command"]).add_sim_command(sub),
    "cost": lambda sub: __import__("qfx.cost.cli", fromlist=["add_cost_command"]).add_cost_command(sub),
    "explore": lambda sub: __import__("qfx.explore", fromlist=["add_explore_command"]).add_explore_command(sub),
    "export": lambda sub: __import__("qfx.qonnx_cli", fromlist=["add_export_command"]).add_export_command(sub),
    "import": lambda sub: __import__("qfx.qonnx_cli", fromlist=["add_import_command"]).add_import_command(sub),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qfx", description="qfx: bit-exact fixed-point training and FPGA co-design")
    try:
        from importlib.metadata import version

        ver = version("qfx")
    except Exception:  # not installed: running from a checkout
        ver = "unknown"
    parser.add_argument("--version", action="version", version=f"qfx {ver}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in COMMANDS.values():
        register(sub)
    return parser


def main(argv: "Sequence[str] | None" = None) -> int:
    """Entry point of ``qfx``; returns the exit status (0 success, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits with 2 on bad arguments
    from ._errors import report_errors

    # Every error, raised anywhere below (demo, explore, sim, cost too), becomes `qfx: error: ...`.
    return report_errors("qfx", lambda: args.func(args))


if __name__ == "__main__":
    # `python -m qfx.cli` runs this file as __main__, a second copy of the module beside the
    # qfx.cli that the library code imports; run the canonical one.
    from qfx.cli import main as _main

    sys.exit(_main())
