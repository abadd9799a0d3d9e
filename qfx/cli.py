"""The ``qfx`` command line.

``qfx train CONFIG.yaml -o RUN/ [--epochs N] [--seed S] [--resume] [--force]``
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
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["main", "COMMANDS", "load_run", "load_run_config", "CliError"]

_TRAIN_KEYS = {
    "seed": 0,
    "float_epochs": 15,
    "float_lr": 1e-2,
    "epochs": 8,
    "lr": 1e-3,
    "frac_lr": None,
    "bits_penalty": 0.0,
    "optimizer": "adam",
    "schedule": "cosine",
    "weight_decay": 0.0,
    "calibrate_batches": 8,
    "freeze_bn_stats": None,
}
_DATA_KEYS = {"name": "digits", "batch_size": 64, "split_seed": 0}
_TOP_KEYS = ("model", "data", "train", "quant")
#: Files a run writes (``--force`` removes exactly these, nothing else).
RUN_FILES = ("config.yaml", "float.pt", "final.pt", "metrics.json")
RUN_DIRS = ("checkpoints",)


class CliError(Exception):
    """A user error: printed as ``qfx: error: ...``, exit status 2."""


# ---------------------------------------------------------------------------
# Run config
# ---------------------------------------------------------------------------


def _suggest(word: str, options: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document in ``path``; a missing file or bad YAML is a :class:`CliError` naming ``what``."""
    import yaml

    if not path.is_file():
        raise CliError(f"{what} {str(path)!r} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise CliError(f"{what} {str(path)!r} is not valid YAML: {err}") from None


def load_run_config(source: "str | Path | dict[str, Any]") -> dict[str, Any]:
    """Read and validate a ``qfx train`` config; returns it with every default filled in."""
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
    else:
        path = Path(source)
        if path.is_dir():
            raise CliError(f"config {str(path)!r} is a folder; give the run config's YAML file")
        raw = read_yaml(path, "config file")
    if not isinstance(raw, dict):
        raise CliError(f"a run config must be a mapping with keys {', '.join(_TOP_KEYS)}")
    for key in raw:
        if key not in _TOP_KEYS:
            raise CliError(f"unknown config key {key!r}{_suggest(str(key), _TOP_KEYS)}; valid: {', '.join(_TOP_KEYS)}")
    from .demo.models import MODELS

    model = raw.get("model")
    if model is None:
        raise CliError(f"the config needs 'model:' (one of {', '.join(MODELS)})")
    if not isinstance(model, str) or model not in MODELS:
        raise CliError(f"unknown model {model!r}{_suggest(str(model), MODELS)}; available: {', '.join(MODELS)}")
    data = raw.get("data", "digits")
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict):
        raise CliError("'data:' must be a data set name or a mapping")
    data = {**_DATA_KEYS, **data}
    for key in data:
        if key not in _DATA_KEYS:
            raise CliError(f"unknown data key {key!r}{_suggest(str(key), _DATA_KEYS)}; valid: {', '.join(_DATA_KEYS)}")
    from .data import DATASETS

    if not isinstance(data["name"], str) or data["name"] not in DATASETS:
        raise CliError(f"unknown data set {data['name']!r}; available: {', '.join(DATASETS)}")
    for key, low in (("batch_size", 1), ("split_seed", 0)):
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise CliError(f"data.{key} must be an integer >= {low}, got {v!r}")
    train = raw.get("train") or {}
    if not isinstance(train, dict):
        raise CliError("'train:' must be a mapping")
    for key in train:
        if key not in _TRAIN_KEYS:
            raise CliError(f"unknown train key {key!r}{_suggest(str(key), _TRAIN_KEYS)}; valid: {', '.join(_TRAIN_KEYS)}")
    train = {**_TRAIN_KEYS, **train}
    for key in ("seed", "float_epochs", "epochs", "calibrate_batches"):
        v = train[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise CliError(f"train.{key} must be a non-negative integer, got {v!r}")
    for key in ("float_lr", "lr", "frac_lr", "bits_penalty", "weight_decay"):
        v = train[key]
        if v is None and key == "frac_lr":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise CliError(f"train.{key} must be a finite non-negative number, got {v!r}")
    for key, options in (("optimizer", ("adam", "adamw", "sgd")), ("schedule", ("cosine", "constant"))):
        if not isinstance(train[key], str) or train[key] not in options:
            raise CliError(f"train.{key} must be one of {', '.join(options)}, got {train[key]!r}")
    if train["freeze_bn_stats"] is None:
        train["freeze_bn_stats"] = train["float_epochs"] > 0
    if not isinstance(train["freeze_bn_stats"], bool):
        raise CliError(f"train.freeze_bn_stats must be true, false or null, got {train['freeze_bn_stats']!r}")
    if "quant" not in raw:
        raise CliError("the config needs a 'quant:' section (the qfx.convert config: default, types, layers)")
    from .conversion import load_config

    try:
        load_config(raw["quant"])  # validate early (layer names are checked at conversion)
    except (ValueError, TypeError, OSError) as err:
        raise CliError(f"quant: {err}") from None
    return {"model": model, "data": data, "train": train, "quant": raw["quant"]}


# ---------------------------------------------------------------------------
# Building and loading runs
# ---------------------------------------------------------------------------


def _loaders(cfg: dict[str, Any], seed: int):
    from .data import digits_loaders
    from .demo.models import MODELS

    image = MODELS[cfg["model"]][1]
    return digits_loaders(cfg["data"]["batch_size"], seed=seed, split_seed=cfg["data"]["split_seed"], image=image)


def _formats(model) -> dict[str, dict[str, Any]]:
    from .nn import QuantizedModule

    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantizedModule):
            out[name] = {
                k: [str(t) for t in v] if isinstance(v, tuple) else str(v) for k, v in m.formats().items()
            }
    return out


def load_run(run_dir: "str | Path"):
    """The frozen qfx model a finished ``qfx train`` run wrote (``RUN/final.pt``), in eval mode."""
    import torch

    from .conversion import convert
    from .demo.models import build_model
    from .nn import freeze

    run = Path(run_dir)
    final = run / "final.pt"
    if not final.is_file():
        raise CliError(f"{str(final)!r} does not exist: the run has not finished")
    state = torch.load(final, map_location="cpu", weights_only=False)
    cfg = state["config"]
    model = convert(build_model(cfg["model"], seed=cfg["train"]["seed"]).eval(), cfg["quant"])
    model.load_state_dict(state["state_dict"])
    freeze(model)
    return model.eval()


# ---------------------------------------------------------------------------
# qfx train
# ---------------------------------------------------------------------------


def _prepare_run_dir(run: Path, resume: bool, force: bool) -> bool:
    """Check/prepare RUN/; returns True if a previous run's files are there to resume from."""
    from .outdir import blocking_file

    blocker = blocking_file(run)
    if blocker is run:
        raise CliError(f"{str(run)!r} exists and is not a folder; choose another -o")
    if blocker is not None:
        raise CliError(f"{str(blocker)!r} is a file, so {str(run)!r} cannot be created; choose another -o")
    existing = run.is_dir() and any(run.iterdir())
    if not existing:
        return False
    if resume:
        return True
    if not force:
        raise CliError(
            f"the run folder {str(run)!r} exists and is not empty; use --resume to continue it, "
            "--force to start over (removes its qfx files), or another -o"
        )
    import shutil

    for name in RUN_FILES:
        (run / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        if (run / name).is_dir():
            shutil.rmtree(run / name)
    return False


def cmd_train(args: argparse.Namespace) -> int:
    """``qfx train``: float pre-training, conversion, quantization-aware training, freeze, test."""
    import torch
    import yaml

    from . import train as qtrain
    from .conversion import convert
    from .demo.models import build_model

    cfg = load_run_config(args.config)
    for opt in ("epochs", "seed"):
        if getattr(args, opt) is not None and getattr(args, opt) < 0:
            raise CliError(f"--{opt} {getattr(args, opt)}: give a non-negative integer")
    if args.epochs is not None:
        cfg["train"]["epochs"] = args.epochs
    if args.seed is not None:
        cfg["train"]["seed"] = args.seed
    if args.resume and args.force:
        raise CliError("--resume and --force exclude each other")
    try:  # the quant config against the model's layers, before anything is written
        convert(build_model(cfg["model"], seed=cfg["train"]["seed"]).eval(), cfg["quant"])
    except (ValueError, TypeError) as err:
        raise CliError(f"quant: {err}") from None
    run = Path(args.output)
    resuming = _prepare_run_dir(run, args.resume, args.force)
    if resuming and (run / "config.yaml").is_file():
        old = yaml.safe_load((run / "config.yaml").read_text())
        for key in ("model", "data", "quant"):
            if old.get(key) != cfg[key]:
                raise CliError(f"cannot resume {str(run)!r}: its config differs in {key!r}; use another -o or --force")
        for key in ("seed", "float_epochs", "float_lr"):
            if old.get("train", {}).get(key) != cfg["train"][key]:
                raise CliError(f"cannot resume {str(run)!r}: train.{key} differs ({old['train'].get(key)!r} -> {cfg['train'][key]!r})")
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    tc = cfg["train"]
    seed = tc["seed"]
    progress = not args.quiet
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    t0 = time.perf_counter()
    train_loader, val_loader, test_loader = _loaders(cfg, seed)
    fmodel = build_model(cfg["model"], seed=seed)
    metrics: dict[str, Any] = {"model": cfg["model"], "config": cfg}
    float_path = run / "float.pt"
    if tc["float_epochs"] > 0:
        if resuming and float_path.is_file():
            saved = torch.load(float_path, map_location="cpu", weights_only=False)
            fmodel.load_state_dict(saved["state_dict"])
            metrics["float"] = saved["metrics"]
            log(f"float model loaded from {float_path}")
        else:
            log(f"float pre-training: {tc['float_epochs']} epochs")
            res = qtrain.fit(fmodel, train_loader, val_loader, epochs=tc["float_epochs"], lr=tc["float_lr"],
                             seed=seed, optimizer=tc["optimizer"], weight_decay=tc["weight_decay"],
                             progress=progress)
            fm = {"val": res.final, "test": _strip(qtrain.evaluate(fmodel, test_loader)), "history": res.history}
            metrics["float"] = fm
            qtrain._atomic_save({"state_dict": fmodel.state_dict(), "metrics": fm}, float_path)
    fmodel.eval()
    try:
        model = convert(fmodel, cfg["quant"])
    except (ValueError, TypeError) as err:
        raise CliError(f"quant: {err}") from None
    # Calibrate with the float model's BatchNorm statistics (eval mode), as PTQ does; a resumed
    # run loads its calibration from the checkpoint.
    qtrain.calibrate(model, train_loader, batches=tc["calibrate_batches"])
    log(f"quantization-aware training: {tc['epochs']} epochs")
    res = qtrain.fit(
        model, train_loader, val_loader, epochs=tc["epochs"], lr=tc["lr"], seed=seed,
        bits_penalty=tc["bits_penalty"], frac_lr=tc["frac_lr"], optimizer=tc["optimizer"],
        weight_decay=tc["weight_decay"], schedule=tc["schedule"], calibrate_batches=tc["calibrate_batches"],
        freeze_bn_stats=tc["freeze_bn_stats"],
        checkpoint_dir=run / "checkpoints", resume=resuming, progress=progress,
    )
    test = _strip(qtrain.evaluate(model, test_loader))
    metrics["qfx"] = {"history": res.history, "val": res.final, "test": test, "resumed_from": res.resumed_from}
    metrics["formats"] = _formats(model)
    metrics["seconds"] = time.perf_counter() - t0
    qtrain._atomic_save(
        {"state_dict": model.state_dict(), "formats": metrics["formats"], "config": cfg, "meta": model.meta.get("qfx")},
        run / "final.pt",
    )
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    msg = f"test accuracy {100 * test['accuracy']:.2f} %"
    if "float" in metrics:
        msg += f" (float {100 * metrics['float']['test']['accuracy']:.2f} %)"
    print(f"{msg}; wrote {run}/")
    return 0


def _strip(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k != "n"}


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
    try:
        return int(args.func(args) or 0)
    except CliError as err:
        print(f"qfx: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            PermissionError) as err:
        print(f"qfx: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qfx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
