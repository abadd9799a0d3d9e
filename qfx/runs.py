"""Training runs as a library: the run config, ``qfx train``'s run folder, loading a finished run.

:func:`train_run` does what ``qfx train CONFIG -o RUN`` does (the command is a thin layer over
it); :func:`load_run` reads the frozen model back; :func:`run_loaders` builds a config's data
loaders. The demo pipeline (:mod:`qfx.demo.pipeline`) and ``qfx explore`` call these, never the
command line. Errors in configs, arguments or the run folder raise :class:`ConfigError` (a
``ValueError``: the commands print it as ``qfx: error: ...``, exit 2).

Checkpoints (``float.pt``, ``final.pt``, ``checkpoints/epoch_NNNN.pt``) hold only tensors and
plain data and are read with ``torch.load(weights_only=True)`` (:func:`qfx.train.load_checkpoint`):
a file holding anything else is refused, nothing in it runs.

    model: digits_cnn            # a demo model: digits_mlp, digits_cnn, digits_encoder
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

import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["ConfigError", "load_run_config", "read_yaml", "suggest", "run_loaders", "layer_formats", "load_run",
           "prepare_run_dir", "train_run", "without_n", "RUN_FILES", "RUN_DIRS", "TRAIN_KEYS", "DATA_KEYS"]

TRAIN_KEYS = {
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
DATA_KEYS = {"name": "digits", "batch_size": 64, "split_seed": 0}
_TOP_KEYS = ("model", "data", "train", "quant")
#: Files a run writes (``--force`` removes exactly these and the ``epoch_NNNN.pt`` checkpoints, nothing else).
RUN_FILES = ("config.yaml", "float.pt", "final.pt", "metrics.json")
RUN_DIRS = ("checkpoints",)


class ConfigError(ValueError):
    """A bad run config, argument or run folder: the message names the problem and the fix
    (``qfx`` prints it as ``qfx: error: ...`` and exits 2)."""


def suggest(word: str, options: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document in ``path``; a missing file or bad YAML is a :class:`ConfigError` naming ``what``."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {err}") from None


def load_run_config(source: "str | Path | dict[str, Any]") -> dict[str, Any]:
    """Read and validate a ``qfx train`` config; returns it with every default filled in."""
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
    else:
        path = Path(source)
        if path.is_dir():
            raise ConfigError(f"config {str(path)!r} is a folder; give the run config's YAML file")
        raw = read_yaml(path, "config file")
    if not isinstance(raw, dict):
        raise ConfigError(f"a run config must be a mapping with keys {', '.join(_TOP_KEYS)}")
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(f"unknown config key {key!r}{suggest(str(key), _TOP_KEYS)}; valid: {', '.join(_TOP_KEYS)}")
    from .demo.models import MODELS

    model = raw.get("model")
    if model is None:
        raise ConfigError(f"the config needs 'model:' (one of {', '.join(MODELS)})")
    if not isinstance(model, str) or model not in MODELS:
        raise ConfigError(f"unknown model {model!r}{suggest(str(model), MODELS)}; available: {', '.join(MODELS)}")
    data = raw.get("data", "digits")
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict):
        raise ConfigError("'data:' must be a data set name or a mapping")
    data = {**DATA_KEYS, **data}
    for key in data:
        if key not in DATA_KEYS:
            raise ConfigError(f"unknown data key {key!r}{suggest(str(key), DATA_KEYS)}; valid: {', '.join(DATA_KEYS)}")
    from .data import DATASETS

    if not isinstance(data["name"], str) or data["name"] not in DATASETS:
        raise ConfigError(f"unknown data set {data['name']!r}; available: {', '.join(DATASETS)}")
    for key, low in (("batch_size", 1), ("split_seed", 0)):
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"data.{key} must be an integer >= {low}, got {v!r}")
    train = raw.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError("'train:' must be a mapping")
    for key in train:
        if key not in TRAIN_KEYS:
            raise ConfigError(f"unknown train key {key!r}{suggest(str(key), TRAIN_KEYS)}; valid: {', '.join(TRAIN_KEYS)}")
    train = {**TRAIN_KEYS, **train}
    for key in ("seed", "float_epochs", "epochs", "calibrate_batches"):
        v = train[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"train.{key} must be a non-negative integer, got {v!r}")
    for key in ("float_lr", "lr", "frac_lr", "bits_penalty", "weight_decay"):
        v = train[key]
        if v is None and key == "frac_lr":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"train.{key} must be a finite non-negative number, got {v!r}")
    for key, options in (("optimizer", ("adam", "adamw", "sgd")), ("schedule", ("cosine", "constant"))):
        if not isinstance(train[key], str) or train[key] not in options:
            raise ConfigError(f"train.{key} must be one of {', '.join(options)}, got {train[key]!r}")
    if train["freeze_bn_stats"] is None:
        train["freeze_bn_stats"] = train["float_epochs"] > 0
    if not isinstance(train["freeze_bn_stats"], bool):
        raise ConfigError(f"train.freeze_bn_stats must be true, false or null, got {train['freeze_bn_stats']!r}")
    if "quant" not in raw:
        raise ConfigError("the config needs a 'quant:' section (the qfx.convert config: default, types, layers)")
    from .conversion import load_config

    try:
        load_config(raw["quant"])  # validate early (layer names are checked at conversion)
    except (ValueError, TypeError, OSError) as err:
        raise ConfigError(f"quant: {err}") from None
    return {"model": model, "data": data, "train": train, "quant": raw["quant"]}


# ---------------------------------------------------------------------------
# Building and loading runs
# ---------------------------------------------------------------------------


def run_loaders(cfg: dict[str, Any], seed: int):
    """``(train, val, test)`` DataLoaders of a validated run config, the training one seeded by ``seed``."""
    from .data import digits_loaders
    from .demo.models import MODELS

    image = MODELS[cfg["model"]][1]
    return digits_loaders(cfg["data"]["batch_size"], seed=seed, split_seed=cfg["data"]["split_seed"], image=image)


def layer_formats(model) -> dict[str, dict[str, Any]]:
    """Every quantized layer's formats as spellings (``metrics.json``'s ``formats``)."""
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
    from .conversion import convert
    from .demo.models import build_model
    from .nn import freeze
    from .train import load_checkpoint

    run = Path(run_dir)
    final = run / "final.pt"
    if not final.is_file():
        raise ConfigError(f"{str(final)!r} does not exist: the run has not finished")
    state = load_checkpoint(final)
    cfg = state["config"]
    model = convert(build_model(cfg["model"], seed=cfg["train"]["seed"]).eval(), cfg["quant"])
    model.load_state_dict(state["state_dict"])
    freeze(model)
    return model.eval()


def prepare_run_dir(run: Path, resume: bool, force: bool) -> bool:
    """Check/prepare RUN/; returns True if a previous run's files are there to resume from."""
    from .outdir import blocking_file

    blocker = blocking_file(run)
    if blocker is run:
        raise ConfigError(f"{str(run)!r} exists and is not a folder; choose another -o")
    if blocker is not None:
        raise ConfigError(f"{str(blocker)!r} is a file, so {str(run)!r} cannot be created; choose another -o")
    existing = run.is_dir() and any(run.iterdir())
    if not existing:
        return False
    # qfx writes and deletes these paths: a link there could lead out of the run folder
    links = [str(run / n) for n in (*RUN_FILES, *RUN_DIRS) if (run / n).is_symlink()]
    ckpt = run / "checkpoints"
    if ckpt.is_dir() and not ckpt.is_symlink():
        links += [str(q) for q in sorted(ckpt.iterdir()) if q.is_symlink()]
    if links:
        raise ConfigError(f"{links[0]!r} is a symbolic link; qfx does not write or delete through links in a run "
                          "folder: remove it, or choose another -o")
    if resume:
        return True
    if not force:
        raise ConfigError(
            f"the run folder {str(run)!r} exists and is not empty; use --resume to continue it, "
            "--force to start over (removes its qfx files), or another -o"
        )
    from .train import _CKPT_RE

    for name in RUN_FILES:
        (run / name).unlink(missing_ok=True)
    if ckpt.is_dir():  # only the checkpoints qfx writes; anything else there stays
        for q in ckpt.iterdir():
            if q.is_file() and _CKPT_RE.match(q.name):
                q.unlink()
        if not any(ckpt.iterdir()):
            ckpt.rmdir()
    return False


def train_run(config: "str | Path | dict[str, Any]", output: "str | Path", *, epochs: "int | None" = None,
              seed: "int | None" = None, resume: bool = False, force: bool = False,
              quiet: bool = False, compile: "bool | str" = False, compile_backend: str = "inductor") -> dict[str, Any]:
    """Train a run as ``qfx train`` does: float pre-training, conversion, quantization-aware training
    with learned binary points, freeze, test; writes the run folder ``output`` (see the module
    docstring) and returns its metrics (``metrics.json``).

    ``epochs`` / ``seed`` override the config's ``train.epochs`` / ``train.seed``; ``resume``
    continues the run in ``output`` from its last checkpoint, ``force`` starts over there
    (removing only the run's own files). Bad input raises :class:`ConfigError` before anything is
    written.

    ``compile`` (``True`` or ``"auto"``): compiled training steps (:func:`qfx.train.fit`); checked
    before anything is written: ``True`` raises :class:`qfx.train.CompileUnavailable` where
    ``compile_backend`` cannot compile here, ``"auto"`` prints one ``qfx: warning:`` line and
    trains eagerly.
    """
    import yaml

    from . import train as qtrain
    from .conversion import convert
    from .demo.models import build_model

    cfg = load_run_config(config)
    for opt, value in (("epochs", epochs), ("seed", seed)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"--{opt} {value}: give a non-negative integer")
    if epochs is not None:
        cfg["train"]["epochs"] = epochs
    if seed is not None:
        cfg["train"]["seed"] = seed
    if resume and force:
        raise ConfigError("--resume and --force exclude each other")
    try:  # the quant config against the model's layers, before anything is written
        convert(build_model(cfg["model"], seed=cfg["train"]["seed"]).eval(), cfg["quant"])
    except (ValueError, TypeError) as err:
        raise ConfigError(f"quant: {err}") from None
    if compile:
        compile = qtrain._check_compile(compile, compile_backend,
                                        warn=lambda msg: print(f"qfx: warning: {msg}", file=sys.stderr))
    run = Path(output)
    resuming = prepare_run_dir(run, resume, force)
    if resuming and (run / "config.yaml").is_file():
        old = yaml.safe_load((run / "config.yaml").read_text())
        for key in ("model", "data", "quant"):
            if old.get(key) != cfg[key]:
                raise ConfigError(f"cannot resume {str(run)!r}: its config differs in {key!r}; use another -o or --force")
        for key in ("seed", "float_epochs", "float_lr"):
            if old.get("train", {}).get(key) != cfg["train"][key]:
                raise ConfigError(f"cannot resume {str(run)!r}: train.{key} differs ({old['train'].get(key)!r} -> {cfg['train'][key]!r})")
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    tc = cfg["train"]
    seed = tc["seed"]
    progress = not quiet
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    t0 = time.perf_counter()
    train_loader, val_loader, test_loader = run_loaders(cfg, seed)
    fmodel = build_model(cfg["model"], seed=seed)
    metrics: dict[str, Any] = {"model": cfg["model"], "config": cfg}
    float_path = run / "float.pt"
    if tc["float_epochs"] > 0:
        if resuming and float_path.is_file():
            saved = qtrain.load_checkpoint(float_path)
            fmodel.load_state_dict(saved["state_dict"])
            metrics["float"] = saved["metrics"]
            log(f"float model loaded from {float_path}")
        else:
            log(f"float pre-training: {tc['float_epochs']} epochs")
            res = qtrain.fit(fmodel, train_loader, val_loader, epochs=tc["float_epochs"], lr=tc["float_lr"],
                             seed=seed, optimizer=tc["optimizer"], weight_decay=tc["weight_decay"],
                             progress=progress, compile=bool(compile), compile_backend=compile_backend)
            fm = {"val": res.final, "test": without_n(qtrain.evaluate(fmodel, test_loader)), "history": res.history}
            metrics["float"] = fm
            qtrain._atomic_save({"state_dict": fmodel.state_dict(), "metrics": fm}, float_path)
    fmodel.eval()
    try:
        model = convert(fmodel, cfg["quant"])
    except (ValueError, TypeError) as err:
        raise ConfigError(f"quant: {err}") from None
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
        compile=bool(compile), compile_backend=compile_backend,
    )
    test = without_n(qtrain.evaluate(model, test_loader))
    metrics["qfx"] = {"history": res.history, "val": res.final, "test": test, "resumed_from": res.resumed_from}
    metrics["formats"] = layer_formats(model)
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
    return metrics


def without_n(m: dict[str, Any]) -> dict[str, Any]:
    """An :func:`qfx.train.evaluate` result without its sample count (what metrics.json keeps)."""
    return {k: v for k, v in m.items() if k != "n"}

