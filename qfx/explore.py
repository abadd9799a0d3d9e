"""``qfx explore SWEEP.yaml -o OUT``: design-space exploration of number formats.

For every point of a sweep (a set of formats for one model and data set) this trains the model
exactly as ``qfx train`` would, exports the manifest, measures the test accuracy with the
integer-only reference on the exported manifest (what the hardware computes), estimates the cost
analytically (:func:`qfx.cost.report.cost_report` with ``synth=False``: LUT/FF from the calibrated
linear model, DSP/BRAM from the structure, cycles, energy per inference from the per-operation
model) and checks the fit on a board. It writes a table and a Pareto plot of accuracy against
LUT, DSP and energy, so the trade-off between formats is visible in one place.

Sweep config (YAML)::

    base: digits_mlp_w8.yaml     # the run config every point starts from (model, data, train, quant):
                                 # a path relative to this file, or an inline mapping
    train: {epochs: 4}           # optional: train overrides applied to every point
    board: ultra96               # optional, default ultra96 (--board overrides)
    sweep:                       # optional: the compact generator form (rules below)
      activations: 8             # word length A of the activations of khot/minifloat/lmul points
      fixed: [8, 6, 4]           # -> points fixed8, fixed6, fixed4
      khot: [1, 2]               # -> khot1, khot2
      minifloat: [e4m3]          # -> mf_e4m3
      lmul: [e4m3]               # -> lmul_e4m3
    points:                      # optional: explicit points
      - name: w8_wide_logits     # [A-Za-z0-9_.-]+, unique in the sweep
        quant:                   # deep-merged over the base's quant; a null value removes a key
          layers: {fc2: {output: "ap_fixed<12,6,AP_RND,AP_SAT>"}}
        train: {lr: 0.002}       # optional per-point train overrides

Generator rules (why: one knob per point, everything else held at a sensible fixed-point
setting, so that rows differ in the format named and nothing else). A generated point takes its
``quant`` section from the rule, not from the base (only the base's ``fold_bn`` is kept); the base
still gives model, data and train. Accumulators are always ``auto`` (exact), biases are fixed
point of twice the activation width, every fixed-point binary point is learned.

``fixed: W``       :func:`qfx.demo.accuracy.word_length_config` ``(W)``: weights ``ap_fixed<W,1>``,
                   activations (layer inputs/outputs, BatchNorm scale/shift, residual adds) W bits
                   (``ap_ufixed`` where never negative), biases 2W bits.
``khot: k``        as ``fixed: A``, weights ``khot<k,ap_fixed<A,I>>`` with ``I`` per layer from the
                   float model's weights (:func:`qfx.demo.accuracy.khot_config`; K-hot has no
                   learnable binary point): shift-add products, no multipliers.
``minifloat: F``   as ``fixed: A``, weights in the minifloat ``F`` (any :func:`qfx.types.parse_type`
                   minifloat spelling, e.g. ``e4m3``, ``fp8_e5m2``), exact products.
``lmul: F``        as ``minifloat: F`` with ``multiply: lmul``: products by L-Mul (no multiplier).

Names: ``fixed<W>``, ``khot<k>``, ``mf_<F>``, ``lmul_<F>`` (characters outside ``[A-Za-z0-9_.-]``
of ``F`` become ``_``).

Everything is validated before anything trains: unknown keys (with close-name suggestions),
format spellings, train keys, board, and a conversion of the untrained model with each point's
quant (layer names). A bad sweep raises :class:`qfx.cli.CliError` naming the point and field
(``qfx`` exits 2). A point that fails while it runs (training, export, reference, cost) is
recorded as ``{"status": "failed", "stage", "reason"}`` and the sweep goes on; the exit status is
then 1.

Output folder ``OUT/``::

    explore.json   every point: formats, accuracy, lut, ff, dsp, bram36, energy_nj, cycles, fits,
                   status, pareto flags
    explore.md     the table, Pareto-optimal rows marked
    pareto.png     accuracy against LUT, DSP and energy (Pareto front per subplot)
    points/<name>-<key>/   point.json (what was hashed), run/ (config.yaml, final.pt, metrics.json:
                   :func:`qfx.cli.load_run` reads it), manifest/, result.json, error.txt on failure
    float/<key>/   the float pre-trained model, shared by every point with the same float settings

Cache: ``<key>`` is a content hash of the point's resolved run config (epochs and seed included),
its generator rule, the qfx version, the torch and NumPy versions and the source of the modules
that decide the result (training, conversion, export, reference, cost model, boards). A rerun
reuses every point whose ``result.json`` carries the same key; failed points are reused too
(same inputs, same failure) unless ``--retry-failed``. Changing ``--board`` only recomputes the
cost of cached points. Files in ``OUT`` that qfx did not write make the command refuse unless
``--force``; files qfx did not write are never deleted (:mod:`qfx.outdir`).
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .cli import CliError, _suggest

__all__ = [
    "Point", "Sweep", "load_sweep", "run_sweep", "pareto_mask", "to_markdown", "plot",
    "add_explore_command", "cmd_explore", "SWEEP_KEYS", "POINT_KEYS", "GENERATOR_KEYS",
]

SWEEP_KEYS = ("base", "train", "board", "sweep", "points", "description")
POINT_KEYS = ("name", "quant", "train")
GENERATOR_KEYS = ("activations", "fixed", "khot", "minifloat", "lmul")
#: Cost axes of the Pareto fronts: (result field, label).
COST_AXES = (("lut", "LUT"), ("dsp", "DSP"), ("energy_nj", "energy (nJ)"))
OUTPUT_FILES = ("explore.json", "explore.md", "pareto.png")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
#: What decides a point's result, hashed into its cache key (why so narrow: the working tree is
#: shared and edited, and a change to, say, the HLS generator must not retrain a sweep).
#: Whole modules (a package: its .py and .yaml files, recursively) ...
_SOURCE_MODULES = (
    "qfx._fixed", "qfx._khot", "qfx._lmul", "qfx._minifloat", "qfx.arith", "qfx.intops", "qfx.quant", "qfx.types",
    "qfx.conversion", "qfx.train", "qfx.data", "qfx.export", "qfx.manifest", "qfx.reference", "qfx.explore",
    "qfx.nn", "qfx.demo.models", "qfx.cost.estimate", "qfx.cost.energy", "qfx.cost.report", "qfx.cost.timing",
    "qfx.hw.cast", "qfx.hw.accel", "qfx.hw.pe", "qfx.boards",
)
#: ... and single objects of modules that also hold unrelated code (``module:attribute``).
_SOURCE_OBJECTS = (
    "qfx.cli:load_run_config", "qfx.cli:_loaders", "qfx.cli:_formats", "qfx.cli:_strip", "qfx.cli:_TRAIN_KEYS",
    "qfx.cli:_DATA_KEYS", "qfx.demo.accuracy:word_length_config", "qfx.demo.accuracy:khot_config",
    "qfx.demo.accuracy:_khot_int_bits",
)


@dataclass(frozen=True)
class Point:
    """One point of a sweep, fully resolved.

    ``config`` is the validated run config (:func:`qfx.cli.load_run_config`), ``khot`` is
    ``(k, base_width)`` for a generated K-hot point, whose weight formats are fixed per layer only
    once the float model exists (``config``'s quant then holds a placeholder).
    """

    name: str
    kind: str
    spec: str
    config: dict[str, Any]
    khot: "tuple[int, int] | None" = None


@dataclass
class Sweep:
    """A validated sweep: its points and board."""

    points: list[Point]
    board: str = "ultra96"
    path: "Path | None" = None
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Loading and validating a sweep
# ---------------------------------------------------------------------------


def _check_keys(mapping: Any, valid: Sequence[str], where: str) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        raise CliError(f"{where} must be a mapping with keys {', '.join(valid)}, got {type(mapping).__name__}")
    for key in mapping:
        if key not in valid:
            raise CliError(f"{where}: unknown key {key!r}{_suggest(str(key), valid)}; valid: {', '.join(valid)}")
    return mapping


def _deep_merge(base: Any, over: Any) -> Any:
    """``over`` on top of ``base``: mappings merge recursively, a ``None`` value removes the key."""
    if not isinstance(base, dict) or not isinstance(over, dict):
        return copy.deepcopy(over)
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_yaml(path: Path, what: str) -> Any:
    import yaml

    if not path.is_file():
        raise CliError(f"{what} {str(path)!r} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise CliError(f"{what} {str(path)!r} is not valid YAML: {err}") from None


def _load_base(value: Any, sweep_dir: Path) -> dict[str, Any]:
    """The base run config as written (a path relative to the sweep file, or inline), validated."""
    from .cli import load_run_config

    if isinstance(value, str):
        p = Path(value)
        path = p if p.is_absolute() else sweep_dir / p
        raw = _load_yaml(path, "base run config")
    elif isinstance(value, dict):
        raw = copy.deepcopy(value)
    else:
        raise CliError("the sweep needs 'base:': a run config path (relative to the sweep file) or an inline mapping")
    try:
        load_run_config(raw)
    except CliError as err:
        raise CliError(f"base: {err}") from None
    return raw


def _as_list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if not items:
        raise CliError(f"{where} is an empty list; give at least one value or remove the key")
    return items


def _int_arg(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CliError(f"{where} must be an integer from {low} to {high}, got {value!r}")
    return value


def _minifloat_arg(value: Any, where: str) -> str:
    from .types import MinifloatType, parse_type

    if not isinstance(value, str):
        raise CliError(f"{where} must be a minifloat spelling such as 'e4m3' or 'fp8_e5m2', got {value!r}")
    try:
        fmt = parse_type(value)
    except ValueError as err:
        raise CliError(f"{where}: {err}") from None
    if not isinstance(fmt, MinifloatType):
        raise CliError(f"{where}: {value!r} is not a minifloat format (e.g. 'e4m3', 'e2m3', 'fp8_e5m2')")
    return value


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _rule_quant(kind: str, arg: Any, act: int, fold_bn: bool) -> tuple[dict[str, Any], "tuple[int, int] | None"]:
    """The quant section of a generated point (see the module docstring for the rules)."""
    from .demo.accuracy import word_length_config

    if kind == "fixed":
        quant = word_length_config(arg)
        khot = None
    else:
        quant = word_length_config(act)
        khot = None
        if kind == "khot":
            # placeholder integer bits: the real ones come from the float weights at run time
            quant["default"]["weight"] = f"khot<{arg},ap_fixed<{act},1,AP_RND_CONV,AP_SAT>>"
            khot = (int(arg), int(act))
        else:
            quant["default"]["weight"] = arg
            if kind == "lmul":
                quant["default"]["multiply"] = "lmul"
    quant["fold_bn"] = fold_bn
    return quant, khot


def _generated(spec: Any, base: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any], Any]]:
    """``(name, kind, description, quant, khot)`` for each point of the ``sweep:`` section."""
    spec = _check_keys(spec, GENERATOR_KEYS, "sweep")
    act = _int_arg(spec.get("activations", 8), "sweep.activations", 2, 32)
    fold_bn = bool(base["quant"].get("fold_bn", False))  # base validated: quant is a mapping
    out = []
    for i, w in enumerate(_as_list(spec.get("fixed"), "sweep.fixed")):
        w = _int_arg(w, f"sweep.fixed[{i}]", 2, 32)
        out.append((f"fixed{w}", "fixed", f"fixed W={w}", *_rule_quant("fixed", w, act, fold_bn)))
    for i, k in enumerate(_as_list(spec.get("khot"), "sweep.khot")):
        k = _int_arg(k, f"sweep.khot[{i}]", 1, act)
        out.append((f"khot{k}", "khot", f"K-hot k={k} ({act}-bit base)", *_rule_quant("khot", k, act, fold_bn)))
    for kind, label, prefix in (("minifloat", "minifloat", "mf"), ("lmul", "L-Mul", "lmul")):
        for i, f in enumerate(_as_list(spec.get(kind), f"sweep.{kind}")):
            f = _minifloat_arg(f, f"sweep.{kind}[{i}]")
            out.append((f"{prefix}_{_safe(f)}", kind, f"{label} {f} weights", *_rule_quant(kind, f, act, fold_bn)))
    return out


def _explicit(items: Any, base: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any], Any, dict[str, Any]]]:
    """``(name, kind, description, quant, None, train overrides)`` for each entry of ``points:``."""
    if not isinstance(items, list):
        raise CliError("points: must be a list of mappings with keys name, quant, train")
    out = []
    for i, item in enumerate(items):
        where = f"points[{i}]"
        _check_keys(item, POINT_KEYS, where)
        name = item.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise CliError(f"{where}: 'name' must be a non-empty string of letters, digits, '_', '.', '-', got {name!r}")
        quant = item.get("quant") or {}
        train = item.get("train") or {}
        for key, value in (("quant", quant), ("train", train)):
            if not isinstance(value, dict):
                raise CliError(f"point {name!r}: '{key}' must be a mapping, got {type(value).__name__}")
        out.append((name, "custom", "custom", _deep_merge(base.get("quant") or {}, quant), None, train))
    return out


def _check_conversion(point: Point) -> None:
    """Convert the untrained model with the point's quant: unknown layer names fail here, not mid-sweep."""
    from .conversion import convert
    from .demo.models import build_model

    cfg = point.config
    try:
        convert(build_model(cfg["model"], seed=0).eval(), cfg["quant"])
    except (ValueError, TypeError) as err:
        raise CliError(f"point {point.name!r}: quant: {err}") from None


def load_sweep(source: "str | Path | dict[str, Any]", *, epochs: "int | None" = None,
               float_epochs: "int | None" = None, seed: "int | None" = None,
               board: "str | None" = None) -> Sweep:
    """Read and validate a sweep config; every point resolved to a validated run config.

    ``epochs`` / ``float_epochs`` / ``seed`` override every point's ``train`` section (the CLI's
    quick-run knobs). Raises :class:`~qfx.cli.CliError` naming the point and field.
    """
    from .boards import get_board
    from .cli import load_run_config

    if isinstance(source, dict):
        raw, path, sweep_dir = copy.deepcopy(source), None, Path.cwd()
    else:
        path = Path(source)
        raw = _load_yaml(path, "sweep config")
        sweep_dir = path.resolve().parent
    _check_keys(raw, SWEEP_KEYS, "the sweep config")
    base = _load_base(raw.get("base"), sweep_dir)
    common_train = raw.get("train") or {}
    if not isinstance(common_train, dict):
        raise CliError("train: must be a mapping of train overrides (see configs/README.md)")
    board_name = board or raw.get("board") or "ultra96"
    try:
        board_name = get_board(board_name).name
    except (ValueError, TypeError) as err:
        raise CliError(f"board: {err}") from None
    rows = [(*g, {}) for g in _generated(raw["sweep"], base)] if raw.get("sweep") is not None else []
    rows += _explicit(raw["points"], base) if raw.get("points") is not None else []
    if not rows:
        raise CliError("the sweep has no points: give 'sweep:' (fixed, khot, minifloat, lmul) and/or 'points:'")
    overrides = {k: v for k, v in (("epochs", epochs), ("float_epochs", float_epochs), ("seed", seed)) if v is not None}
    seen: set[str] = set()
    points = []
    for name, kind, spec, quant, khot, train in rows:
        if name in seen:
            raise CliError(f"point {name!r} appears twice in the sweep; point names must be unique")
        seen.add(name)
        cfg = {**copy.deepcopy(base), "quant": quant}
        cfg["train"] = {**(base.get("train") or {}), **common_train, **train, **overrides}
        try:
            resolved = load_run_config(cfg)
        except CliError as err:
            raise CliError(f"point {name!r}: {err}") from None
        point = Point(name, kind, spec, resolved, khot)
        _check_conversion(point)
        points.append(point)
    desc = raw.get("description") or ""
    return Sweep(points, board_name, path, str(desc), overrides)


# ---------------------------------------------------------------------------
# Cache keys
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 over :data:`_SOURCE_MODULES` and :data:`_SOURCE_OBJECTS` (code changes invalidate cached points)."""
    import importlib
    import importlib.util
    import inspect

    h = hashlib.sha256()
    for name in _SOURCE_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"qfx explore: module {name} not found (source digest)")
        if spec.submodule_search_locations:
            root = Path(next(iter(spec.submodule_search_locations)))
            files = [p for p in root.glob("**/*") if p.suffix in (".py", ".yaml") and p.is_file()]
        else:
            root, files = Path(spec.origin).parent, [Path(spec.origin)]
        for p in sorted(files):
            h.update(f"{name}:{p.relative_to(root).as_posix()}\0".encode())
            h.update(p.read_bytes())
    for ref in _SOURCE_OBJECTS:
        mod, attr = ref.split(":")
        obj = getattr(importlib.import_module(mod), attr)
        text = inspect.getsource(obj) if callable(obj) else repr(obj)
        h.update(f"{ref}\0{text}".encode())
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import numpy
    import torch

    import qfx

    return {"qfx": str(getattr(qfx, "__version__", "unknown")), "torch": torch.__version__, "numpy": numpy.__version__}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def point_key(point: Point) -> str:
    """The cache key of a point: its resolved config, K-hot rule, versions and source digest."""
    return _digest({"config": point.config, "khot": point.khot, "versions": _versions(), "source": source_digest()})


def _float_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """What the float pre-trained model depends on (points sharing these share one float model)."""
    t = cfg["train"]
    return {"model": cfg["model"], "data": cfg["data"],
            **{k: t[k] for k in ("seed", "float_epochs", "float_lr", "optimizer", "weight_decay")}}


# ---------------------------------------------------------------------------
# Running one point
# ---------------------------------------------------------------------------


class PointError(Exception):
    """A point failed at ``stage``; the sweep records it and goes on."""

    def __init__(self, stage: str, err: BaseException) -> None:
        super().__init__(f"{type(err).__name__}: {err}")
        self.stage = stage
        self.error = err


def _write_json(path: Path, obj: Any) -> None:
    """Atomic write (temporary file + rename): a killed sweep never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


class FloatModels:
    """Float pre-trained models shared by the points of a sweep, kept in ``OUT/float/<key>/``.

    Besides the weights it keeps the training loader's generator state after float training, so
    that a point continues exactly as ``qfx train`` would with the same config (same calibration
    batches): a point's ``run/config.yaml`` re-run with ``qfx train`` gives the same model.
    """

    def __init__(self, root: Path, log: Callable[[str], None]) -> None:
        self.root = root
        self.log = log
        self._mem: dict[str, Any] = {}

    def get(self, cfg: dict[str, Any]) -> tuple[Any, "dict[str, Any] | None", "list[Any] | None"]:
        """``(float model in eval mode, float metrics or None, loader generator states or None)``."""
        import torch

        from . import train as qtrain
        from .cli import _loaders, _strip
        from .demo.models import build_model

        settings = _float_settings(cfg)
        key = _digest({"float": settings, "versions": _versions(), "source": source_digest()})
        if key in self._mem:
            state = self._mem[key]
        else:
            folder = self.root / key
            path = folder / "float.pt"
            if path.is_file():
                state = torch.load(path, map_location="cpu", weights_only=False)
            else:
                tc, seed = cfg["train"], cfg["train"]["seed"]
                fmodel = build_model(cfg["model"], seed=seed)
                state = {"state_dict": fmodel.state_dict(), "metrics": None, "loader_rng": None}
                if tc["float_epochs"] > 0:
                    t0 = time.perf_counter()
                    train_loader, val_loader, test_loader = _loaders(cfg, seed)
                    res = qtrain.fit(fmodel, train_loader, val_loader, epochs=tc["float_epochs"], lr=tc["float_lr"],
                                     seed=seed, optimizer=tc["optimizer"], weight_decay=tc["weight_decay"],
                                     progress=False)
                    state = {"state_dict": fmodel.state_dict(),
                             "metrics": {"val": res.final, "test": _strip(qtrain.evaluate(fmodel, test_loader)),
                                         "history": res.history},
                             "loader_rng": [g.get_state() for g in qtrain._loader_generators(train_loader)]}
                    self.log(f"  float pre-training ({tc['float_epochs']} epochs): test accuracy "
                             f"{100 * state['metrics']['test']['accuracy']:.2f} % ({time.perf_counter() - t0:.1f} s)")
                _write_json(folder / "float.json", {"schema": "qfx.explore.float", "settings": settings})
                qtrain._atomic_save(state, path)
            self._mem[key] = state
        fmodel = build_model(cfg["model"], seed=cfg["train"]["seed"])
        fmodel.load_state_dict(state["state_dict"])
        return fmodel.eval(), state["metrics"], state["loader_rng"]


def _train(point: Point, run: Path, floats: FloatModels) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Train the point as ``qfx train`` does; write ``run/`` (readable by :func:`qfx.cli.load_run`).

    Returns ``(frozen model, resolved run config, metrics)``.
    """
    import yaml

    from . import train as qtrain
    from .cli import _formats, _loaders, _strip
    from .conversion import convert
    from .demo.accuracy import khot_config

    cfg = copy.deepcopy(point.config)
    tc, seed = cfg["train"], cfg["train"]["seed"]
    t0 = time.perf_counter()
    fmodel, float_metrics, loader_rng = floats.get(cfg)
    if point.khot is not None:
        k, base_width = point.khot
        fold_bn = cfg["quant"].get("fold_bn", False)
        cfg["quant"] = {**khot_config(fmodel, k=k, base_width=base_width), "fold_bn": fold_bn}
    train_loader, val_loader, test_loader = _loaders(cfg, seed)
    if loader_rng is not None:
        for g, s in zip(qtrain._loader_generators(train_loader), loader_rng):
            g.set_state(s)
    model = convert(fmodel, cfg["quant"])
    qtrain.calibrate(model, train_loader, batches=tc["calibrate_batches"])
    res = qtrain.fit(
        model, train_loader, val_loader, epochs=tc["epochs"], lr=tc["lr"], seed=seed,
        bits_penalty=tc["bits_penalty"], frac_lr=tc["frac_lr"], optimizer=tc["optimizer"],
        weight_decay=tc["weight_decay"], schedule=tc["schedule"], calibrate_batches=tc["calibrate_batches"],
        freeze_bn_stats=tc["freeze_bn_stats"], progress=False,
    )
    test = _strip(qtrain.evaluate(model, test_loader))
    metrics: dict[str, Any] = {"model": cfg["model"], "config": cfg}
    if float_metrics is not None:
        metrics["float"] = float_metrics
    metrics["qfx"] = {"history": res.history, "val": res.final, "test": test, "resumed_from": None}
    metrics["formats"] = _formats(model)
    metrics["seconds"] = time.perf_counter() - t0
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    qtrain._atomic_save(
        {"state_dict": model.state_dict(), "formats": metrics["formats"], "config": cfg, "meta": model.meta.get("qfx")},
        run / "final.pt",
    )
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    return model, cfg, metrics


def _test_split(cfg: dict[str, Any]):
    from .data import digits_splits
    from .demo.models import MODELS

    return digits_splits(cfg["data"]["split_seed"], image=MODELS[cfg["model"]][1]).test


def _export(model: Any, cfg: dict[str, Any], folder: Path) -> Path:
    """Export the manifest into ``folder`` (replacing only a manifest qfx wrote there)."""
    from .export import export
    from .manifest import MANIFEST_FILE, TENSORS_FILE

    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in (MANIFEST_FILE, TENSORS_FILE))
        if foreign:
            raise FileExistsError(f"{folder} holds files qfx did not write ({', '.join(foreign)}); move them away")
    x = _test_split(cfg).tensors[0]
    return export(model, x[:1], folder, force=True)


def reference_accuracy(manifest_dir: "str | Path", cfg: dict[str, Any]) -> dict[str, Any]:
    """Test accuracy of the exported manifest, computed by the integer-only reference (:mod:`qfx.reference`)."""
    import numpy as np

    from . import reference
    from .manifest import load

    test = _test_split(cfg)
    x, y = test.tensors
    man = load(manifest_dir)
    codes = reference.run(man, x.numpy())
    pred = np.asarray(codes[man.output]).reshape(len(y), -1).argmax(axis=1)
    return {"accuracy": float((pred == y.numpy()).mean()), "n": int(len(y))}


def point_cost(manifest_dir: "str | Path", board: str) -> dict[str, Any]:
    """Analytic cost of the point's accelerator on ``board`` (no synthesis; :func:`qfx.cost.report.cost_report`)."""
    from .cost.report import cost_report

    rep = cost_report(manifest_dir, board=board, synth=False)
    r, en, th, fit = rep["resources"], rep["energy"], rep["throughput"], rep["fit"]
    return {
        "board": rep["board"]["name"],
        "lut": r["lut"], "ff": r["ff"], "dsp": r["dsp"], "bram36": r["bram36"],
        "energy_nj": round(en["total_dynamic_pj"] / 1e3, 4),
        "mac_pj": en["mac"]["pj_per_mac"],
        "cycles": th["cycles_per_inference"],
        "latency_us": th["at_clock"]["latency_us"],
        "fits": fit["fits"], "fit_problems": fit["problems"],
        "utilization": {k: v["safe_fraction"] for k, v in fit["utilization"].items()},
    }


def _short(spelling: Any) -> str:
    """A format without its default-looking rounding/overflow modes, for the table."""
    text = str(spelling)
    return re.sub(r",\s*AP_[A-Z_]+", "", text)


def _format_summary(point: Point, cfg: dict[str, Any]) -> dict[str, str]:
    d = cfg["quant"].get("default") or {}
    weight = d.get("weight", "")
    if point.khot is not None:
        weight = f"khot<{point.khot[0]},ap_fixed<{point.khot[1]},I>> (I per layer)"
    return {"weight": _short(weight), "activation": _short(d.get("output", "")), "accum": str(d.get("accum", "auto")),
            "multiply": str(d.get("multiply", "exact"))}


def run_point(point: Point, folder: Path, floats: FloatModels, board: str) -> dict[str, Any]:
    """Train, export, evaluate with the reference and cost one point; raises :class:`PointError`."""
    seconds: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - recorded with its stage; the sweep goes on
            raise PointError(name, err) from err
        finally:
            seconds[name] = round(time.perf_counter() - t0, 3)

    model, cfg, metrics = stage("train", lambda: _train(point, folder / "run", floats))
    manifest = stage("export", lambda: _export(model, cfg, folder / "manifest"))
    ref = stage("reference", lambda: reference_accuracy(manifest, cfg))
    cost = stage("cost", lambda: point_cost(manifest, board))
    out = {
        "status": "ok",
        "formats": _format_summary(point, cfg),
        "accuracy": ref["accuracy"],
        "accuracy_emulation": metrics["qfx"]["test"]["accuracy"],
        "float_accuracy": (metrics.get("float") or {}).get("test", {}).get("accuracy"),
        "test_images": ref["n"],
        **{k: v for k, v in cost.items()},
        "layer_formats": metrics["formats"],
        "seconds": seconds,
    }
    return out


# ---------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------


def _owned(out: Path) -> set[str]:
    """Files under ``points/`` and ``float/`` that belong to point / float folders explore created."""
    owned: set[str] = set()
    for sub, marker, schema in (("points", "point.json", "qfx.explore.point"), ("float", "float.json", "qfx.explore.float")):
        root = out / sub
        if not root.is_dir():
            continue
        for d in root.iterdir():
            try:
                ok = json.loads((d / marker).read_text()).get("schema") == schema
            except (OSError, ValueError, AttributeError):
                ok = False
            if ok:
                owned |= {p.relative_to(out).as_posix() for p in d.rglob("*") if p.is_file()}
    return owned


def check_output(out: Path, force: bool) -> None:
    """Refuse an output folder with files qfx did not write (before anything trains) unless ``force``."""
    from .outdir import foreign_files

    if out.exists() and not out.is_dir():
        raise CliError(f"{str(out)!r} exists and is not a folder; choose another -o")
    if force or not out.is_dir():
        return
    foreign = sorted(set(foreign_files(out)) - _owned(out))
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise CliError(f"{str(out)!r} holds files qfx did not write: {', '.join(foreign[:5])}{more}; choose an empty "
                       "folder or a previous explore output, or pass --force (files qfx did not write are kept)")


def _cached(path: Path, key: str, retry_failed: bool) -> "dict[str, Any] | None":
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(res, dict) or res.get("key") != key:
        return None
    if res.get("status") == "ok" or (res.get("status") == "failed" and not retry_failed):
        return res
    return None


def _describe(res: dict[str, Any]) -> str:
    if res["status"] != "ok":
        return f"FAILED at {res.get('stage')}: {res.get('reason')}"
    return (f"acc {100 * res['accuracy']:.2f} %  LUT {res['lut']}  FF {res['ff']}  DSP {res['dsp']}  "
            f"BRAM36 {res['bram36']:g}  {res['energy_nj']:.1f} nJ  {res['cycles']} cycles  "
            f"{'fits' if res['fits'] else 'DOES NOT FIT'}")


def run_sweep(sweep: Sweep, out: "str | Path", *, force: bool = False, retry_failed: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or reuse from the cache) every point, then write explore.json, explore.md and pareto.png."""
    from .outdir import write_files

    out = Path(out)
    check_output(out, force)
    t_start = time.perf_counter()
    floats = FloatModels(out / "float", log)
    results = []
    n = len(sweep.points)
    for i, point in enumerate(sweep.points, 1):
        t0 = time.perf_counter()
        key = point_key(point)
        folder = out / "points" / f"{point.name}-{key}"
        res = _cached(folder / "result.json", key, retry_failed)
        how = "cached"
        if res is not None and res["status"] == "ok" and res.get("board") != sweep.board:
            res = _recost(res, folder, sweep.board)
            _write_json(folder / "result.json", res)
            how = "cached, cost recomputed"
        if res is None:
            how = "ran"
            (folder / "error.txt").unlink(missing_ok=True)  # a previous failure's traceback (ours)
            _write_json(folder / "point.json", {"schema": "qfx.explore.point", "name": point.name, "key": key,
                                                "kind": point.kind, "spec": point.spec, "khot": point.khot,
                                                "config": point.config, "versions": _versions(),
                                                "source": source_digest()})
            res = _run_one(point, folder, floats, sweep.board)
            res["key"] = key
            _write_json(folder / "result.json", res)
        res = {"name": point.name, "kind": point.kind, "spec": point.spec, **{k: v for k, v in res.items() if k not in
                                                                              ("name", "kind", "spec")},
               "folder": folder.relative_to(out).as_posix()}
        results.append(res)
        log(f"[{i}/{n}] {point.name:<14} {_describe(res)}  ({how}, {time.perf_counter() - t0:.1f} s)")
    summary = summarize(sweep, results, time.perf_counter() - t_start)
    files: dict[str, "str | bytes"] = {
        "explore.json": json.dumps(summary, indent=1, default=str) + "\n",
        "explore.md": to_markdown(summary),
        "pareto.png": plot(summary),
    }
    write_files(out, files, force=force)
    return summary


def _run_one(point: Point, folder: Path, floats: FloatModels, board: str) -> dict[str, Any]:
    try:
        return run_point(point, folder, floats, board)
    except PointError as err:
        (folder / "error.txt").write_text("".join(traceback.format_exception(err.error)))
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err.error).__name__
        return {"status": "failed", "stage": err.stage, "reason": reason[:500]}


def _recost(res: dict[str, Any], folder: Path, board: str) -> dict[str, Any]:
    """A cached point's cost on another board (the manifest is reused; nothing retrains)."""
    try:
        return {**res, **point_cost(folder / "manifest", board)}
    except Exception as err:  # noqa: BLE001 - recorded; the sweep goes on
        return {**res, "status": "failed", "stage": "cost", "reason": f"{type(err).__name__}: {err}"[:500]}


# ---------------------------------------------------------------------------
# Pareto fronts, table, plot
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


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
            raise CliError(f"--{name.replace('_', '-')} must be >= 0, got {v}")
    if args.threads is not None:
        if args.threads < 1:
            raise CliError(f"--threads must be >= 1, got {args.threads}")
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
