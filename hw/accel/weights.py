"""What a dense / conv2d engine stores in its weight ROM and which product unit reads it."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from amaranth.hdl import Shape, unsigned

from qfx.manifest import Node, weight_envelope
from qfx.types import FixedType, MXType

from ..pe.multiply import multiplier_for, weight_shape, weight_words
from .engines import EngineError, init_codes

__all__ = ["WeightPlan", "plan_weights"]


@dataclasses.dataclass(frozen=True)
class WeightPlan:
    """ROM contents (row-major: output channel, then the accumulation order) and the product unit.

    Attributes
    ----------
    x_fmt : FixedType
        The node's input format (the product unit's ``x``).
    w_fmt : FixedType, KHot or MinifloatType
        The format the product unit multiplies by: the node's weight format, or
        for a per-channel list the envelope on whose grid every row is placed.
    multiply : str
        ``exact`` or ``lmul``.
    words : list[int]
        One ROM word per weight.
    init_codes : list[int]
        Per output channel, ``cast(bias, accum)``.
    """

    x_fmt: FixedType
    w_fmt: Any
    multiply: str
    words: list
    init_codes: list
    mx: Any = None  # MX weights: the engines_mx.MXPlan (w_fmt is then the element format)

    @property
    def word_shape(self) -> Shape:
        shape = Shape.cast(weight_shape(self.w_fmt, self.multiply))
        # Non-numeric layouts (K-hot digits) are stored as plain bit vectors of the same width.
        return shape if isinstance(self.w_fmt, FixedType) else unsigned(shape.width)

    def multiplier(self):
        return multiplier_for(self.x_fmt, self.w_fmt, self.multiply)


def plan_weights(node: Node) -> WeightPlan:
    """The :class:`WeightPlan` of a dense / conv2d node (codes re-gridded for per-channel formats)."""
    f = node.formats
    fmt, multiply = f["weight"], node.params["multiply"]
    arrays = node.arrays
    if isinstance(fmt, MXType):  # the elements in their own product unit; the block scales as shifts
        from .engines_mx import mx_plan

        mx = mx_plan(node)
        w_fmt, raw = fmt.element, np.asarray(arrays["weight"])
    elif isinstance(fmt, tuple):
        env = weight_envelope(fmt)
        w = np.asarray(arrays["weight"])
        shifts = np.array([env.frac_bits - t.frac_bits for t in fmt], dtype=np.int64).reshape((-1,) + (1,) * (w.ndim - 1))
        codes = w.astype(object) << shifts.astype(object)
        w_fmt, raw = env, codes
    else:
        w_fmt, raw = fmt, arrays
    if not isinstance(fmt, MXType):
        mx = None
    try:
        words = weight_words(w_fmt, raw, multiply)
        multiplier_for(f["input"], w_fmt, multiply)._MustUse__silence = True  # built to validate only
    except (TypeError, ValueError) as err:
        raise EngineError(f"node {node.name!r} ({node.op}): weight format {fmt} with multiply={multiply}: {err}") from None
    flat = [int(v) for v in np.asarray(words).reshape(-1)]
    return WeightPlan(x_fmt=f["input"], w_fmt=w_fmt, multiply=multiply, words=flat, init_codes=init_codes(node), mx=mx)

