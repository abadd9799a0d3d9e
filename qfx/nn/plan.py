"""The compile plan: every choice a forward pass makes from tensor values, made outside the graph.

A converted model's eager forward reads its learned binary points (``.item()``) to pick the
compute dtype of a layer (float32 where float32 holds every operand and partial sum exactly,
else float64), to size its accumulator and to run its exactness checks. ``torch.compile`` cannot
trace such reads without a graph break. Under compilation the layers instead read a *plan*:
the same decisions, computed by the same eager code from the same values, by
:func:`refresh_compile_plan` before the compiled call. The plan holds only decisions (booleans,
dtypes, formats of frozen quantizers), so the compiled graph is re-traced only when a decision
changes, not when a binary point moves; the binary points themselves enter the graph as 0-d
tensors (``torch.ops.qfx.fixed_cast``).

A stale plan cannot give wrong bits silently: every learnable cast carries the rounded binary
point the plan assumed (a buffer, updated by the refresh) and ``qfx::fixed_cast`` raises
:class:`CompilePlanError` when the binary point in force differs. :func:`qfx.train.fit` with
``compile=True`` and :func:`compile_model` refresh the plan before every call.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

__all__ = ["CompilePlanError", "compiling", "refresh_compile_plan", "compile_model", "compile_options", "plan_of",
           "INDUCTOR_OPTIONS"]

_is_compiling: Callable[[], bool] = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


class CompilePlanError(RuntimeError):
    """A converted model cannot run compiled as it is (or its plan is missing or stale)."""


def compiling() -> bool:
    """Whether torch.compile is tracing the code that calls this (the layers then read their plan)."""
    return _is_compiling()


def plan_of(module: nn.Module) -> Any:
    """``module``'s plan (set by :func:`refresh_compile_plan`); a clear error where there is none."""
    plan = module.__dict__.get("_compile_plan")
    if plan is None:
        raise CompilePlanError(
            f"{type(module).__name__}: no compile plan; call qfx.nn.refresh_compile_plan(model) before "
            "calling the compiled model (qfx.nn.compile_model and qfx.train.fit(compile=True) do it every call)"
        )
    return plan


def set_plan(module: nn.Module, plan: Any) -> None:
    """Store ``plan``, keeping the old object when equal (the compiled graph's guards see the same object)."""
    old = module.__dict__.get("_compile_plan")
    if old is None or old != plan:
        module.__dict__["_compile_plan"] = plan


@torch.no_grad()
def refresh_compile_plan(model: nn.Module) -> nn.Module:
    """Compute, eagerly, the decisions the compiled forward of ``model`` reads; returns ``model``.

    Call it before every call of the compiled model whose learned binary points may have moved
    (after each optimizer step): one read of each binary point, the same checks the eager forward
    makes (a ``ValueError`` naming the layer where a format combination cannot be emulated), and
    :class:`CompilePlanError` for what has no compiled path (overflow tracking, MX weights, L-Mul,
    ``BatchNorm(momentum=None)`` in training).

    The binary points of all quantizers are read in one batch (one device synchronisation, not
    one per tensor), and a quantizer or layer whose inputs to the plan did not change keeps its plan
    (:meth:`~qfx.nn.TensorQuantizer.refresh_plan`, :meth:`~qfx.nn.QuantizedModule.plan_key`).
    """
    from .base import QuantizedModule
    from .quantizer import TensorQuantizer

    mods = list(model.modules())
    quantizers = [m for m in mods if isinstance(m, TensorQuantizer)]
    readings = _read_binary_points(quantizers)
    for q in quantizers:
        q.refresh_plan(readings.get(id(q)))
    for m in mods:
        if isinstance(m, QuantizedModule):
            key = m.plan_key()
            if key is not None and key == m.__dict__.get("_layer_plan_key") and "_compile_plan" in m.__dict__:
                continue
            m.__dict__.pop("_layer_plan_key", None)  # a refresh that raises leaves no key behind
            m.refresh_plan()
            if key is not None:
                m.__dict__["_layer_plan_key"] = key
    return model


def _read_binary_points(quantizers: list) -> "dict[int, tuple[tuple[int, ...], bool]]":
    """Every quantizer's :meth:`~qfx.nn.TensorQuantizer.plan_reading`, by ``id``, from a few
    batched reads (the scalar binary points stacked, the calibration flags stacked, per-channel
    ones each); empty where they do not share one device (each quantizer then reads its own)."""
    with_fb = [q for q in quantizers if q.frac_bits is not None]
    if not with_fb or len({q.frac_bits.device for q in with_fb}) != 1:
        return {}
    scalars = [q for q in with_fb if q.frac_bits.dim() == 0]
    learn = [q for q in with_fb if q.learnable]
    # half to even, as the forward rounds; float32 and float64 binary points round alike
    fracs = dict(zip(map(id, scalars), torch.round(torch.stack([q.frac_bits for q in scalars])).tolist())) if scalars else {}
    flags = dict(zip(map(id, learn), torch.stack([q.calibrated for q in learn]).tolist())) if learn else {}
    out = {}
    for q in with_fb:
        if q.frac_bits.dim() == 0:
            rounded: "tuple[int, ...]" = (int(fracs[id(q)]),)
        else:
            rounded = tuple(int(v) for v in torch.round(q.frac_bits).reshape(-1).tolist())
        out[id(q)] = (rounded, bool(flags.get(id(q), True)))
    return out


class _Compiled(nn.Module):
    """A converted model and its ``torch.compile``-d forward; refreshes the plan before each call."""

    def __init__(self, model: nn.Module, compiled: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self._compiled = compiled

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.backends.nnpack.flags(enabled=False):
            refresh_compile_plan(self.model)
            return self._compiled(*args, **kwargs)


#: Inductor options for a converted model. Inductor's layout optimisation turns convolutions
#: channels-last; the casts around every convolution then run as NHWC tiles of a few channels
#: (masked part-vectors) with layout transposes between them: the demo CNN's compiled step took
#: 14.3 ms of CPU with it and 8.5 ms without (bench/train_step.py, 1 thread, batch 64).
INDUCTOR_OPTIONS: dict[str, Any] = {"layout_optimization": False}


def compile_options(backend: Any = "inductor", **compile_kwargs: Any) -> dict[str, Any]:
    """``compile_kwargs`` for ``torch.compile`` of a converted model: ``fullgraph=True``, and for
    Inductor :data:`INDUCTOR_OPTIONS` unless the caller gave ``mode`` or ``options``."""
    out = {"fullgraph": True, "backend": backend, **compile_kwargs}
    if out["backend"] == "inductor" and "mode" not in out and "options" not in out:
        out["options"] = dict(INDUCTOR_OPTIONS)
    return out


def compile_model(model: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """``torch.compile(model, fullgraph=True, **compile_kwargs)`` wrapped so that every call first
    refreshes the plan (:func:`refresh_compile_plan`) and runs with NNPACK off (Winograd/FFT
    convolutions would round the float32 fast path). Parameters and state are ``model``'s.
    With Inductor (the default backend) :data:`INDUCTOR_OPTIONS` apply unless ``mode`` or
    ``options`` is given (:func:`compile_options`)."""
    return _Compiled(model, torch.compile(model, **compile_options(**compile_kwargs)))
