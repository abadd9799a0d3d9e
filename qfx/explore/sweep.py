"""Loading and validating a sweep config: its points, resolved to run configs (see :mod:`qfx.explore`)."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..runs import ConfigError, read_yaml
from ..runs import suggest as _suggest

SWEEP_KEYS = ("base", "train", "board", "sweep", "points", "description")
POINT_KEYS = ("name", "quant", "train")
GENERATOR_KEYS = ("activations", "fixed", "khot", "minifloat", "lmul")
#: Cost axes of the Pareto fronts: (result field, label).
COST_AXES = (("lut", "LUT"), ("dsp", "DSP"), ("energy_nj", "energy (nJ)"))
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
@dataclass(frozen=True)
class Point:
    """One point of a sweep, fully resolved.

    ``config`` is the validated run config (:func:`qfx.runs.load_run_config`), ``khot`` is
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




def _check_keys(mapping: Any, valid: Sequence[str], where: str) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where} must be a mapping with keys {', '.join(valid)}, got {type(mapping).__name__}")
    for key in mapping:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {key!r}{_suggest(str(key), valid)}; valid: {', '.join(valid)}")
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


def _load_base(value: Any, sweep_dir: Path) -> dict[str, Any]:
    """The base run config as written (a path relative to the sweep file, or inline), validated."""
    from ..runs import load_run_config

    if isinstance(value, str):
        p = Path(value)
        path = p if p.is_absolute() else sweep_dir / p
        raw = read_yaml(path, "base run config")
    elif isinstance(value, dict):
        raw = copy.deepcopy(value)
    else:
        raise ConfigError("the sweep needs 'base:': a run config path (relative to the sweep file) or an inline mapping")
    try:
        load_run_config(raw)
    except ConfigError as err:
        raise ConfigError(f"base: {err}") from None
    return raw


def _as_list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(f"{where} is an empty list; give at least one value or remove the key")
    return items


def _int_arg(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where} must be an integer from {low} to {high}, got {value!r}")
    return value


def _minifloat_arg(value: Any, where: str) -> str:
    from ..types import MinifloatType, parse_type

    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a minifloat spelling such as 'e4m3' or 'fp8_e5m2', got {value!r}")
    try:
        fmt = parse_type(value)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    if not isinstance(fmt, MinifloatType):
        raise ConfigError(f"{where}: {value!r} is not a minifloat format (e.g. 'e4m3', 'e2m3', 'fp8_e5m2')")
    return value


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _rule_quant(kind: str, arg: Any, act: int, fold_bn: bool) -> tuple[dict[str, Any], "tuple[int, int] | None"]:
    """The quant section of a generated point (see the module docstring for the rules)."""
    from ..demo.accuracy import word_length_config

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
        raise ConfigError("points: must be a list of mappings with keys name, quant, train")
    out = []
    for i, item in enumerate(items):
        where = f"points[{i}]"
        _check_keys(item, POINT_KEYS, where)
        name = item.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ConfigError(f"{where}: 'name' must be a non-empty string of letters, digits, '_', '.', '-', got {name!r}")
        quant = item.get("quant") or {}
        train = item.get("train") or {}
        for key, value in (("quant", quant), ("train", train)):
            if not isinstance(value, dict):
                raise ConfigError(f"point {name!r}: '{key}' must be a mapping, got {type(value).__name__}")
        out.append((name, "custom", "custom", _deep_merge(base.get("quant") or {}, quant), None, train))
    return out


def _check_conversion(point: Point) -> None:
    """Convert the untrained model with the point's quant: unknown layer names fail here, not mid-sweep."""
    from ..conversion import convert
    from ..demo.models import build_model

    cfg = point.config
    try:
        convert(build_model(cfg["model"], seed=0).eval(), cfg["quant"])
    except (ValueError, TypeError) as err:
        raise ConfigError(f"point {point.name!r}: quant: {err}") from None


def load_sweep(source: "str | Path | dict[str, Any]", *, epochs: "int | None" = None,
               float_epochs: "int | None" = None, seed: "int | None" = None,
               board: "str | None" = None) -> Sweep:
    """Read and validate a sweep config; every point resolved to a validated run config.

    ``epochs`` / ``float_epochs`` / ``seed`` override every point's ``train`` section (the CLI's
    quick-run knobs). Raises :class:`~qfx.runs.ConfigError` naming the point and field.
    """
    from ..boards import get_board
    from ..runs import load_run_config

    if isinstance(source, dict):
        raw, path, sweep_dir = copy.deepcopy(source), None, Path.cwd()
    else:
        path = Path(source)
        raw = read_yaml(path, "sweep config")
        sweep_dir = path.resolve().parent
    _check_keys(raw, SWEEP_KEYS, "the sweep config")
    base = _load_base(raw.get("base"), sweep_dir)
    common_train = raw.get("train") or {}
    if not isinstance(common_train, dict):
        raise ConfigError("train: must be a mapping of train overrides (see configs/README.md)")
    board_name = board or raw.get("board") or "ultra96"
    try:
        board_name = get_board(board_name).name
    except (ValueError, TypeError) as err:
        raise ConfigError(f"board: {err}") from None
    rows = [(*g, {}) for g in _generated(raw["sweep"], base)] if raw.get("sweep") is not None else []
    rows += _explicit(raw["points"], base) if raw.get("points") is not None else []
    if not rows:
        raise ConfigError("the sweep has no points: give 'sweep:' (fixed, khot, minifloat, lmul) and/or 'points:'")
    overrides = {k: v for k, v in (("epochs", epochs), ("float_epochs", float_epochs), ("seed", seed)) if v is not None}
    seen: set[str] = set()
    points = []
    for name, kind, spec, quant, khot, train in rows:
        if name in seen:
            raise ConfigError(f"point {name!r} appears twice in the sweep; point names must be unique")
        seen.add(name)
        cfg = {**copy.deepcopy(base), "quant": quant}
        cfg["train"] = {**(base.get("train") or {}), **common_train, **train, **overrides}
        try:
            resolved = load_run_config(cfg)
        except ConfigError as err:
            raise ConfigError(f"point {name!r}: {err}") from None
        point = Point(name, kind, spec, resolved, khot)
        _check_conversion(point)
        points.append(point)
    desc = raw.get("description") or ""
    return Sweep(points, board_name, path, str(desc), overrides)
