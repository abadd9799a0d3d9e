"""Running the points of a sweep: cache keys, the shared float pre-training, train -> export ->
reference accuracy -> analytic cost per point, failures recorded (see :mod:`qfx.explore`)."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from ..runs import ConfigError
from .report import plot, summarize, to_markdown
from .sweep import Point, Sweep

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
    "qfx.runs:load_run_config", "qfx.runs:run_loaders", "qfx.runs:layer_formats", "qfx.runs:without_n",
    "qfx.runs:TRAIN_KEYS", "qfx.runs:DATA_KEYS", "qfx.demo.accuracy:word_length_config", "qfx.demo.accuracy:khot_config",
    "qfx.demo.accuracy:_khot_int_bits",
)

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
        from .. import train as qtrain
        from ..runs import run_loaders as _loaders
        from ..runs import without_n as _strip
        from ..demo.models import build_model

        settings = _float_settings(cfg)
        key = _digest({"float": settings, "versions": _versions(), "source": source_digest()})
        if key in self._mem:
            state = self._mem[key]
        else:
            folder = self.root / key
            path = folder / "float.pt"
            if path.is_file():
                state = qtrain.load_checkpoint(path)
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
    """Train the point as ``qfx train`` does; write ``run/`` (readable by :func:`qfx.runs.load_run`).

    Returns ``(frozen model, resolved run config, metrics)``.
    """
    import yaml

    from .. import train as qtrain
    from ..runs import layer_formats as _formats
    from ..runs import run_loaders as _loaders
    from ..runs import without_n as _strip
    from ..conversion import convert
    from ..demo.accuracy import khot_config

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
    from ..data import digits_splits
    from ..demo.models import MODELS

    return digits_splits(cfg["data"]["split_seed"], image=MODELS[cfg["model"]][1]).test


def _export(model: Any, cfg: dict[str, Any], folder: Path) -> Path:
    """Export the manifest into ``folder`` (replacing only a manifest qfx wrote there)."""
    from ..export import export
    from ..manifest import MANIFEST_FILE, TENSORS_FILE

    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in (MANIFEST_FILE, TENSORS_FILE))
        if foreign:
            raise FileExistsError(f"{folder} holds files qfx did not write ({', '.join(foreign)}); move them away")
    x = _test_split(cfg).tensors[0]
    return export(model, x[:1], folder, force=True)


def reference_accuracy(manifest_dir: "str | Path", cfg: dict[str, Any]) -> dict[str, Any]:
    """Test accuracy of the exported manifest, computed by the integer-only reference (:mod:`qfx.reference`)."""
    import numpy as np

    from .. import reference
    from ..manifest import load

    test = _test_split(cfg)
    x, y = test.tensors
    man = load(manifest_dir)
    codes = reference.run(man, x.numpy())
    pred = np.asarray(codes[man.output]).reshape(len(y), -1).argmax(axis=1)
    return {"accuracy": float((pred == y.numpy()).mean()), "n": int(len(y))}


def point_cost(manifest_dir: "str | Path", board: str) -> dict[str, Any]:
    """Analytic cost of the point's accelerator on ``board`` (no synthesis; :func:`qfx.cost.report.cost_report`)."""
    from ..cost.report import cost_report

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
    from ..outdir import foreign_files

    if out.exists() and not out.is_dir():
        raise ConfigError(f"{str(out)!r} exists and is not a folder; choose another -o")
    if force or not out.is_dir():
        return
    foreign = sorted(set(foreign_files(out)) - _owned(out))
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise ConfigError(f"{str(out)!r} holds files qfx did not write: {', '.join(foreign[:5])}{more}; choose an empty "
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
    from ..outdir import write_files

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
