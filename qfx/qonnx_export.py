"""A qfx manifest as a QONNX model: standard ONNX ops between QONNX ``Quant`` nodes.

:func:`manifest_to_qonnx` reads a manifest (what :func:`qfx.export.export` writes and ``qfx-gen``
reads) and builds an ONNX graph that computes the manifest's integer reference
(:mod:`qfx.reference`) exactly, in float32 values ``code * 2**-F``:

* every cast of the reference (a node's input format, its output format) is one QONNX ``Quant``
  node: scale ``2**-F``, zero point 0, bit width ``W``, ``signed``, ``narrow`` (1 for a signed
  ``AP_SAT_SYM``, whose range is ``[-max, max]``), ``rounding_mode`` from the qfx quantization mode;
* weights, biases, BatchNorm scales / shifts and pooling reciprocals are float initializers holding
  the exact values of their codes, each behind a ``Quant`` of its format (the identity on those
  values; it states the format, as Brevitas exports do);
* between the casts, the exact integer arithmetic of the reference becomes MatMul / Conv / Add /
  Mul / Sub / Relu / Clip / LeakyRelu / MaxPool / AveragePool / Pad / Resize (nearest, integer
  scales, ``asymmetric`` coordinates with ``floor``: ``y[oy] = x[oy // s]``) / Concat / Reshape. These are
  exact in float32 because every intermediate is an integer multiple of its grid below ``2**24``;
  export checks that bound from the formats and refuses a layer that exceeds it.

Rounding modes (QONNX applies ``numpy`` rounding to ``x / scale``; see
``qonnx/custom_op/general/intquant.py``): AP_TRN -> ``FLOOR``, AP_TRN_ZERO -> ``DOWN``
(``np.fix``), AP_RND_CONV -> ``ROUND`` (``np.round``, half to even), AP_RND_INF -> ``HALF_UP``
(half away from zero), AP_RND_ZERO -> ``HALF_DOWN`` (half toward zero). AP_RND (half toward +inf)
and AP_RND_MIN_INF (half toward -inf) have no QONNX mode; they are lowered exactly as two
``Quant`` nodes and a ``Where`` on the sign (for ``x >= 0`` half toward +inf is half away from
zero, for ``x < 0`` it is half toward zero; the reverse for -inf). A cast that drops no bits
(the source grid is no finer than the destination's) rounds nothing, so its mode is irrelevant.

Overflow: a QONNX ``Quant`` saturates. AP_SAT and AP_SAT_SYM map exactly. Any other overflow mode
(AP_WRAP, AP_WRAP_SM, AP_SAT_ZERO) is exported only where the formats prove that the cast can never
overflow (then every mode is the identity on the range); otherwise the layer is refused, naming the
cast and the reason.

Refused (:class:`QonnxExportError`, naming the node): accumulators that are not exact (``accum``
narrower than ``auto``: a cast per MAC step, which QONNX cannot express), L-Mul, minifloat
weights, formats wider than 24 bits or 1-bit signed formats (QONNX executes 1-bit signed Quant as
bipolar), intermediates beyond float32's exact integers. K-hot weights are lowered exactly as their
base fixed-point format (the values are the same; the at-most-k-digits property is not stated).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .manifest import Manifest, Node, load, mac_auto_accum, mac_product_format
from .types import FixedType, KHot, MinifloatType, MXType, Overflow, Rounding

__all__ = ["manifest_to_qonnx", "write_qonnx", "to_qonnx", "QonnxExportError", "QONNX_DOMAIN", "ROUNDING_TO_QONNX"]

#: The ONNX domain of QONNX's custom ops.
QONNX_DOMAIN = "qonnx.custom_op.general"
#: ONNX opset of the exported graph (QONNX's preferred one).
ONNX_OPSET = 11

#: qfx quantization modes with a QONNX ``rounding_mode`` of exactly the same rule.
ROUNDING_TO_QONNX: dict[Rounding, str] = {
    Rounding.AP_TRN: "FLOOR",
    Rounding.AP_TRN_ZERO: "DOWN",
    Rounding.AP_RND_CONV: "ROUND",
    Rounding.AP_RND_INF: "HALF_UP",
    Rounding.AP_RND_ZERO: "HALF_DOWN",
}
#: Modes lowered as Where(x < 0, Quant(mode for x < 0), Quant(mode for x >= 0)).
_SPLIT_ROUNDING: dict[Rounding, tuple[str, str]] = {
    Rounding.AP_RND: ("HALF_DOWN", "HALF_UP"),
    Rounding.AP_RND_MIN_INF: ("HALF_UP", "HALF_DOWN"),
}

_F32_EXACT = 1 << 24  # every integer of magnitude <= 2**24 is a float32


class QonnxExportError(ValueError):
    """A manifest node that QONNX cannot express exactly (the node and the reason named)."""


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - installed with the qonnx extra
        raise ImportError("QONNX export needs the onnx package: pip install 'qfx[qonnx]'") from err
    return onnx


@dataclass(frozen=True)
class _T:
    """A graph tensor: ONNX name, shape with batch, integer code bounds on the grid ``frac``.

    ``fmt`` is the format whose cast produced it (None for an exact intermediate).
    """

    name: str
    shape: tuple[int, ...]
    lo: int
    hi: int
    frac: int
    fmt: "FixedType | None" = None


class _Graph:
    def __init__(self, batch: int) -> None:
        self.onnx = _onnx()
        self.batch = batch
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.value_info: list[Any] = []
        self.names: set[str] = set()

    def fresh(self, base: str) -> str:
        name, i = base, 2
        while name in self.names:
            name = f"{base}_{i}"
            i += 1
        self.names.add(name)
        return name

    def const(self, base: str, value: Any, dtype: Any = np.float32) -> str:
        name = self.fresh(base)
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: list[str], base: str, shape: tuple[int, ...], domain: str = "", **attrs: Any) -> str:
        out = self.fresh(base)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=out, domain=domain, **attrs))
        self.value_info.append(self.onnx.helper.make_tensor_value_info(out, self.onnx.TensorProto.FLOAT, list(shape)))
        return out

    # -- tensors with code bounds -----------------------------------------------
    def exact(self, where: str, what: str, name: str, shape: tuple[int, ...], lo: int, hi: int, frac: int,
              check: bool = True) -> _T:
        """An intermediate of the exact arithmetic; refused if float32 cannot hold all its values."""
        if check and max(-lo, hi) > _F32_EXACT:
            mag = max(-lo, hi)
            raise QonnxExportError(
                f"node {where!r}: {what} reaches integers of magnitude {mag} (about 2**{mag.bit_length() - 1}) on "
                f"its grid; float32 ONNX tensors hold integers "
                f"up to 2**24 exactly, so QONNX execution would round: use narrower formats or fewer terms"
            )
        return _T(name, shape, lo, hi, frac)

    def quant(self, x: str, fmt: FixedType, rounding: str, narrow: bool, base: str, shape: tuple[int, ...],
              scale_shape: "tuple[int, ...] | None" = None, fracs: "list[int] | None" = None) -> str:
        if fracs is None:
            scale = self.const(f"{base}_scale", np.float32(2.0 ** -fmt.frac_bits))
        else:
            scale = self.const(f"{base}_scale", np.array([2.0 ** -f for f in fracs], np.float32).reshape(scale_shape))
        zero = self.const(f"{base}_zeropt", np.float32(0.0))
        bits = self.const(f"{base}_bitwidth", np.float32(fmt.width))
        return self.node("Quant", [x, scale, zero, bits], base, shape, domain=QONNX_DOMAIN,
                         signed=int(fmt.signed), narrow=int(narrow), rounding_mode=rounding)

    def cast(self, t: _T, fmt: FixedType, where: str, role: str) -> _T:
        """The reference's ``cast_codes(t, t.frac, fmt)`` as Quant node(s)."""
        if t.fmt == fmt:
            return t
        _check_format(fmt, where, role)
        s = t.frac - fmt.frac_bits
        lo, hi = (t.lo >> s, -((-t.hi) >> s)) if s > 0 else (t.lo << -s, t.hi << -s)  # floor / ceil
        sym = fmt.signed and fmt.overflow is Overflow.AP_SAT_SYM
        min_code = -fmt.max_code if sym else fmt.min_code
        overflows = lo < min_code or hi > fmt.max_code
        if overflows and fmt.overflow not in (Overflow.AP_SAT, Overflow.AP_SAT_SYM):
            raise QonnxExportError(
                f"node {where!r}: the cast to the {role} format {fmt} can overflow (codes {lo}..{hi} against "
                f"{min_code}..{fmt.max_code}) and {fmt.overflow} has no QONNX equivalent (a QONNX Quant saturates): "
                f"use AP_SAT / AP_SAT_SYM there, or a format that holds the range"
            )
        base = f"{where}_{role}_quant"
        out_lo, out_hi = max(lo, min_code), min(hi, fmt.max_code)
        if s <= 0:  # nothing below the lsb: every rounding mode is the identity
            name = self.quant(t.name, fmt, ROUNDING_TO_QONNX.get(fmt.rounding, "ROUND"), sym, base, t.shape)
        elif fmt.rounding in ROUNDING_TO_QONNX:
            name = self.quant(t.name, fmt, ROUNDING_TO_QONNX[fmt.rounding], sym, base, t.shape)
        else:
            neg_mode, pos_mode = _SPLIT_ROUNDING[fmt.rounding]
            qn = self.quant(t.name, fmt, neg_mode, sym, f"{base}_neg", t.shape)
            qp = self.quant(t.name, fmt, pos_mode, sym, f"{base}_pos", t.shape)
            zero = self.const(f"{base}_zero", np.float32(0.0))
            is_neg = self.fresh(f"{base}_is_neg")
            self.nodes.append(self.onnx.helper.make_node("Less", [t.name, zero], [is_neg], name=is_neg))
            self.value_info.append(self.onnx.helper.make_tensor_value_info(is_neg, self.onnx.TensorProto.BOOL, list(t.shape)))
            name = self.node("Where", [is_neg, qn, qp], base, t.shape)
        return _T(name, t.shape, out_lo, out_hi, fmt.frac_bits, fmt)

    def constant(self, where: str, role: str, codes: np.ndarray, fmt: "FixedType | tuple[FixedType, ...]",
                 axis_shape: tuple[int, ...], transpose: bool = False) -> str:
        """Codes of a stored array as float values behind a Quant of their format (per-channel: per-row scales)."""
        codes = np.asarray(codes, dtype=np.int64)
        if isinstance(fmt, tuple):
            widths = {(t.width, t.signed) for t in fmt}
            if len(widths) != 1:
                raise QonnxExportError(f"node {where!r}: the per-channel {role} formats differ in width or sign; a QONNX "
                                       f"Quant has one bit width")
            for t in fmt:
                _check_format(t, where, role)
            fracs = [t.frac_bits for t in fmt]
            vals = codes * np.array([2.0 ** -f for f in fracs]).reshape((-1,) + (1,) * (codes.ndim - 1))
            first = fmt[0]
            sym = first.signed and all(t.overflow is Overflow.AP_SAT_SYM for t in fmt) and codes.min() > first.min_code
        else:
            _check_format(fmt, where, role)
            fracs, first = None, fmt
            vals = codes * 2.0 ** -fmt.frac_bits
            sym = fmt.signed and fmt.overflow is Overflow.AP_SAT_SYM
        if transpose:
            vals = vals.T
        vals32 = vals.astype(np.float32)
        assert np.array_equal(vals32.astype(np.float64), vals)  # exact: widths <= 24 bits, checked above
        raw = self.const(f"{where}_{role}_value", vals32)
        base = f"{where}_{role}_quant"
        return self.quant(raw, first, "ROUND", sym, base, vals32.shape, scale_shape=axis_shape, fracs=fracs)


def _check_format(fmt: Any, where: str, role: str) -> None:
    if not isinstance(fmt, FixedType):
        raise QonnxExportError(f"node {where!r}: the {role} format {fmt} is not fixed-point; the QONNX export "
                               f"writes integer Quant nodes only")
    if fmt.width > 24:
        raise QonnxExportError(f"node {where!r}: the {role} format {fmt} is {fmt.width} bits wide; QONNX execution is "
                               f"float32, exact up to 24 bits")
    if fmt.width == 1 and fmt.signed:
        raise QonnxExportError(f"node {where!r}: the {role} format {fmt} is a 1-bit signed type; QONNX executes a "
                               f"1-bit signed Quant as bipolar (+-1), not as {{-1, 0}}")


def _fmt_t(fmt: FixedType, name: str, shape: tuple[int, ...]) -> _T:
    return _T(name, shape, fmt.min_code, fmt.max_code, fmt.frac_bits, fmt)


def _shl(v: int, s: int) -> int:
    return v << s if s >= 0 else v >> -s


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------


def _mac(g: _Graph, node: Node, x: _T) -> _T:
    f, p, name = node.formats, node.params, node.name
    if p["multiply"] != "exact":
        raise QonnxExportError(f"node {name!r}: L-Mul (multiply: {p['multiply']}) is an approximate multiply that "
                               f"QONNX cannot express")
    wfmt = f["weight"]
    if isinstance(wfmt, MinifloatType):
        raise QonnxExportError(f"node {name!r}: minifloat weights ({wfmt}) are not exported to QONNX (only integer "
                               f"Quant nodes are written)")
    if isinstance(wfmt, MXType):
        raise QonnxExportError(f"node {name!r}: MX block-scaled weights ({wfmt}) are not exported to QONNX (a shared "
                               f"per-block scale has no QONNX Quant form; only integer Quant nodes are written)")
    if not p["accum_exact"]:
        raise QonnxExportError(
            f"node {name!r}: the accumulator {f['accum']} can round or overflow inside the MAC loop (one cast per "
            f"step); QONNX has no per-step cast: use accum: auto (or one that holds every partial sum)"
        )
    xq = g.cast(x, f["input"], name, "input")
    bias_fmt = f.get("bias")
    n_terms = p["in_features"] if node.op == "dense" else p["in_channels"] // p["groups"] * p["kernel"][0] * p["kernel"][1]
    prod = mac_product_format(f["input"], wfmt, "exact")
    acc = mac_auto_accum(prod, n_terms, bias_fmt)
    w_codes = node.arrays["weight"]
    if isinstance(wfmt, KHot):  # the same values on the base grid (exact)
        sh, sg = node.arrays["weight_khot_shifts"], node.arrays["weight_khot_signs"]
        w_codes = (sg * (np.ones_like(sh) << sh)).sum(axis=-1)
        wfmt = wfmt.base
    out_shape = (g.batch, *node.output_shape)
    if node.op == "dense":
        o = p["out_features"]
        axis_shape = (1, o)
        w = g.constant(name, "weight", w_codes, wfmt, axis_shape, transpose=True)
        mm = g.node("MatMul", [xq.name, w], f"{name}_matmul", out_shape)
        cur = mm
        if bias_fmt is not None:
            b = g.constant(name, "bias", node.arrays["bias"], bias_fmt, (o,))
            cur = g.node("Add", [mm, b], f"{name}_bias_add", out_shape)
    else:
        o = p["out_channels"]
        w = g.constant(name, "weight", w_codes, wfmt, (o, 1, 1, 1))
        ins = [xq.name, w]
        if bias_fmt is not None:
            ins.append(g.constant(name, "bias", node.arrays["bias"], bias_fmt, (o,)))
        (ph, pw), (kh, kw) = p["padding"], p["kernel"]
        cur = g.node("Conv", ins, f"{name}_conv", out_shape, kernel_shape=[kh, kw], pads=[ph, pw, ph, pw],
                     strides=list(p["stride"]), dilations=list(p["dilation"]), group=int(p["groups"]))
    # float32 exactness holds per output channel (each channel's terms lie on its own grid); the
    # envelope accumulator only bounds the output cast
    per_channel = wfmt if isinstance(wfmt, tuple) else (wfmt,)
    for c in per_channel:
        a = mac_auto_accum(mac_product_format(f["input"], c, "exact"), n_terms, bias_fmt)
        g.exact(name, f"the exact accumulator {a}", cur, out_shape, a.min_code, a.max_code, a.frac_bits)
    t = g.exact(name, "", cur, out_shape, acc.min_code, acc.max_code, acc.frac_bits, check=False)
    return g.cast(t, f["output"], name, "output")


def _bn_shape(node: Node) -> tuple[int, ...]:
    c = node.params["num_features"]
    return (c,) + (1,) * (len(node.output_shape) - 1)


def _batchnorm(g: _Graph, node: Node, x: _T) -> _T:
    f, name = node.formats, node.name
    xq = g.cast(x, f["input"], name, "input")
    shape = _bn_shape(node)
    sc = g.constant(name, "scale", node.arrays["scale"].reshape(shape), f["scale"], shape)
    sh = g.constant(name, "shift", node.arrays["shift"].reshape(shape), f["shift"], shape)
    mul = g.node("Mul", [xq.name, sc], f"{name}_scale_mul", xq.shape)
    add = g.node("Add", [mul, sh], f"{name}_shift_add", xq.shape)
    bound = f["input"] * f["scale"] + f["shift"]
    t = g.exact(name, f"x * scale + shift ({bound})", add, xq.shape, bound.min_code, bound.max_code, bound.frac_bits)
    return g.cast(t, f["output"], name, "output")


def _activation(g: _Graph, node: Node, x: _T) -> _T:
    f, name = node.formats, node.name
    xq = g.cast(x, f["input"], name, "input")
    fx = xq.frac
    if node.op == "relu":
        y = g.node("Relu", [xq.name], f"{name}_relu", xq.shape)
        t = g.exact(name, "relu", y, xq.shape, max(xq.lo, 0), max(xq.hi, 0), fx)
    elif node.op == "relu6":
        frac = max(fx, -1)
        six = 3 << (frac + 1)
        lo_c, hi_c = g.const(f"{name}_min", np.float32(0.0)), g.const(f"{name}_max", np.float32(6.0))
        y = g.node("Clip", [xq.name, lo_c, hi_c], f"{name}_relu6", xq.shape)
        lo, hi = _shl(xq.lo, frac - fx), _shl(xq.hi, frac - fx)
        t = g.exact(name, "relu6", y, xq.shape, min(max(lo, 0), six), min(max(hi, 0), six), frac)
    else:  # leaky_relu: x >= 0: x; x < 0: x * 2**-s, on the grid F + s
        s = int(node.params["slope_shift"])
        y = g.node("LeakyRelu", [xq.name], f"{name}_leaky_relu", xq.shape, alpha=float(2.0 ** -s))
        t = g.exact(name, "leaky_relu", y, xq.shape, min(xq.lo, 0), max(xq.hi, 0) << s, fx + s)
    return g.cast(t, f["output"], name, "output")


def _binary(g: _Graph, node: Node, a: _T, b: _T) -> _T:
    f, name = node.formats, node.name
    aq, bq = g.cast(a, f["in_a"], name, "in_a"), g.cast(b, f["in_b"], name, "in_b")
    shape = (g.batch, *node.output_shape)
    if node.op == "mul":
        y = g.node("Mul", [aq.name, bq.name], f"{name}_mul", shape)
        ends = [u * v for u in (aq.lo, aq.hi) for v in (bq.lo, bq.hi)]
        t = g.exact(name, "the product", y, shape, min(ends), max(ends), aq.frac + bq.frac)
    else:
        frac = max(aq.frac, bq.frac)
        al, ah = _shl(aq.lo, frac - aq.frac), _shl(aq.hi, frac - aq.frac)
        bl, bh = _shl(bq.lo, frac - bq.frac), _shl(bq.hi, frac - bq.frac)
        if node.op == "add":
            y = g.node("Add", [aq.name, bq.name], f"{name}_add", shape)
            t = g.exact(name, "the sum", y, shape, al + bl, ah + bh, frac)
        else:
            y = g.node("Sub", [aq.name, bq.name], f"{name}_sub", shape)
            t = g.exact(name, "the difference", y, shape, al - bh, ah - bl, frac)
    return g.cast(t, f["output"], name, "output")


def _maxpool(g: _Graph, node: Node, x: _T) -> _T:
    f, p, name = node.formats, node.params, node.name
    xq = g.cast(x, f["input"], name, "input")
    (ph, pw) = p["padding"]
    shape = (g.batch, *node.output_shape)
    y = g.node("MaxPool", [xq.name], f"{name}_maxpool", shape, kernel_shape=list(p["kernel"]), strides=list(p["stride"]),
               pads=[ph, pw, ph, pw], dilations=list(p["dilation"]), ceil_mode=int(p["ceil_mode"]))
    return g.cast(_T(y, shape, xq.lo, xq.hi, xq.frac), f["output"], name, "output")


def _avgpool(g: _Graph, node: Node, x: _T) -> _T:
    f, p, name = node.formats, node.params, node.name
    xq = g.cast(x, f["input"], name, "input")
    (kh, kw), (ph, pw), n_div = p["kernel"], p["padding"], int(p["divisor"])
    k = kh * kw
    shape = (g.batch, *node.output_shape)
    s_lo, s_hi = min(xq.lo * k, 0), max(xq.hi * k, 0)  # zero padding counts
    attrs = dict(kernel_shape=[kh, kw], strides=list(p["stride"]), pads=[ph, pw, ph, pw])
    if "reciprocal" not in f and n_div == k:  # sum / 2**j: AveragePool (including padding) is exact
        y = g.node("AveragePool", [xq.name], f"{name}_avgpool", shape, count_include_pad=1, **attrs)
        t = g.exact(name, "the window sum", y, shape, s_lo, s_hi, xq.frac + (k.bit_length() - 1))
    else:  # the window sum as a depthwise convolution with ones, then times the reciprocal (or 2**-j)
        c = node.input_shapes[0][0]
        ones = g.const(f"{name}_ones", np.ones((c, 1, kh, kw), np.float32))
        ssum = g.node("Conv", [xq.name, ones], f"{name}_window_sum", shape, group=c, **attrs)
        g.exact(name, "the window sum", ssum, shape, s_lo, s_hi, xq.frac)
        if "reciprocal" in f:
            r = f["reciprocal"]
            rc = int(np.asarray(node.arrays["reciprocal"]).reshape(()))
            mult = g.constant(name, "reciprocal", np.asarray(rc), r, ())
            ends = (s_lo * rc, s_hi * rc)
            frac = xq.frac + r.frac_bits
        else:
            mult = g.const(f"{name}_inv_divisor", np.float32(2.0 ** -(n_div.bit_length() - 1)))
            ends, frac = (s_lo, s_hi), xq.frac + n_div.bit_length() - 1
        y = g.node("Mul", [ssum, mult], f"{name}_avg", shape)
        t = g.exact(name, "the scaled window sum", y, shape, min(ends), max(ends), frac)
    return g.cast(t, f["output"], name, "output")


def _reshape(g: _Graph, node: Node, x: _T) -> _T:
    xq = g.cast(x, node.formats["input"], node.name, "input")
    shape = (g.batch, *node.output_shape)
    target = g.const(f"{node.name}_shape", np.array(shape, np.int64), dtype=np.int64)
    y = g.node("Reshape", [xq.name, target], f"{node.name}_reshape", shape)
    return _T(y, shape, xq.lo, xq.hi, xq.frac, xq.fmt)


def _permute(g: _Graph, node: Node, x: _T) -> _T:
    """permute as an ONNX Transpose (the batch axis stays first); no cast (the format passes through)."""
    xq = g.cast(x, node.formats["input"], node.name, "input")
    shape = (g.batch, *node.output_shape)
    y = g.node("Transpose", [xq.name], f"{node.name}_transpose", shape,
               perm=[0] + [int(d) + 1 for d in node.params["dims"]])
    return _T(y, shape, xq.lo, xq.hi, xq.frac, xq.fmt)


def _concat(g: _Graph, node: Node, xs: list[_T]) -> _T:
    out = node.formats["output"]
    parts = [g.cast(x, out, node.name, f"input{i}") for i, x in enumerate(xs)]
    shape = (g.batch, *node.output_shape)
    y = g.node("Concat", [t.name for t in parts], f"{node.name}_concat", shape, axis=int(node.params["axis"]) + 1)
    return _fmt_t(out, y, shape)


def _clamp(g: _Graph, node: Node, x: _T) -> _T:
    f, p, name = node.formats, node.params, node.name
    y = g.cast(g.cast(x, f["input"], name, "input"), f["output"], name, "output")
    lsb = 2.0 ** -f["output"].frac_bits
    lo = g.const(f"{name}_min", np.float32(p["min_code"] * lsb)) if p["min_code"] is not None else ""
    hi = g.const(f"{name}_max", np.float32(p["max_code"] * lsb)) if p["max_code"] is not None else ""
    c = g.node("Clip", [y.name, lo, hi], f"{name}_clip", y.shape)
    new_lo = max(y.lo, p["min_code"]) if p["min_code"] is not None else y.lo
    new_hi = min(y.hi, p["max_code"]) if p["max_code"] is not None else y.hi
    return _T(c, y.shape, new_lo, new_hi, y.frac, None)


def _pad(g: _Graph, node: Node, x: _T) -> _T:
    left, right, top, bottom = (int(v) for v in node.params["padding"])
    pads = g.const(f"{node.name}_pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64), dtype=np.int64)
    shape = (g.batch, *node.output_shape)
    y = g.node("Pad", [x.name, pads], f"{node.name}_pad", shape, mode="constant")
    return _T(y, shape, min(x.lo, 0), max(x.hi, 0), x.frac, x.fmt)


def _upsample(g: _Graph, node: Node, x: _T) -> _T:
    sh, sw = (int(v) for v in node.params["scale"])
    roi = g.const(f"{node.name}_roi", np.zeros(0, np.float32))
    scales = g.const(f"{node.name}_scales", np.array([1, 1, sh, sw], np.float32))
    shape = (g.batch, *node.output_shape)
    y = g.node("Resize", [x.name, roi, scales], f"{node.name}_resize", shape, mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return _T(y, shape, x.lo, x.hi, x.frac, x.fmt)


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def manifest_to_qonnx(manifest: "Manifest | str | os.PathLike", *, batch: int = 1) -> Any:
    """The QONNX model (``onnx.ModelProto``) computing the manifest's integer reference exactly.

    Parameters
    ----------
    manifest : Manifest or path
        A loaded manifest, or a folder / ``manifest.yaml``.
    batch : int
        The batch size of the graph's input (QONNX's executor needs fixed shapes).

    Raises
    ------
    QonnxExportError (ValueError)
        A node QONNX cannot express exactly (node, cast and reason named); see the module docstring.
    """
    m = manifest if isinstance(manifest, Manifest) else load(manifest)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    onnx = _onnx()
    g = _Graph(batch)
    tensors: dict[str, _T] = {}
    graph_in = g.fresh("global_in")
    in_node = m.input_node
    in_shape = (batch, *in_node.output_shape)
    out_t: "_T | None" = None
    for node in m.nodes:
        srcs = [tensors[s] for s in node.inputs]
        op = node.op
        if op == "input":
            fmt = node.output_format
            _check_format(fmt, node.name, "output")
            if fmt.overflow not in (Overflow.AP_SAT, Overflow.AP_SAT_SYM):
                _refuse_input(node, fmt)
            # the float input: any value, as if on a grid finer than every format's (so its rounding applies)
            t = g.cast(_T(graph_in, in_shape, -(1 << 62), 1 << 62, 1 << 10), fmt, node.name, "output")
        elif op in ("dense", "conv2d"):
            t = _mac(g, node, srcs[0])
        elif op == "batchnorm":
            t = _batchnorm(g, node, srcs[0])
        elif op in ("relu", "relu6", "leaky_relu"):
            t = _activation(g, node, srcs[0])
        elif op in ("add", "sub", "mul"):
            t = _binary(g, node, srcs[0], srcs[1])
        elif op == "maxpool2d":
            t = _maxpool(g, node, srcs[0])
        elif op == "avgpool2d":
            t = _avgpool(g, node, srcs[0])
        elif op in ("flatten", "reshape"):
            t = _reshape(g, node, srcs[0])
        elif op == "permute":
            t = _permute(g, node, srcs[0])
        elif op == "matmul":
            raise QonnxExportError(
                f"node {node.name!r} (matmul, source {node.source!r}): the matmul of two activations has no QONNX "
                "export (an accumulator cast per step has no ONNX equivalent); generate RTL / HLS with qfx-gen instead")
        elif op == "concat":
            t = _concat(g, node, srcs)
        elif op == "clamp":
            t = _clamp(g, node, srcs[0])
        elif op == "pad":
            t = _pad(g, node, srcs[0])
        elif op == "upsample":
            t = _upsample(g, node, srcs[0])
        elif op == "softmax":
            raise QonnxExportError(
                f"node {node.name!r} (softmax, source {node.source!r}): a softmax has no exact QONNX lowering (its exp "
                "table of max - x, the exact integer sum and the exactly divided reciprocal are not expressible as "
                "ONNX Softmax plus Quant nodes); export the model with drop_final_softmax: true for a final softmax, "
                "or use the manifest / qfx-gen outputs")
        elif op == "layernorm":
            raise QonnxExportError(
                f"node {node.name!r} (layer {node.source!r}, LayerNorm): layernorm has no QONNX export; its integer "
                "statistics (exact sums, mean and var casts, the floor inverse square root, qfx.layernorm) have no "
                "QONNX/ONNX equivalent that gives the same bits. Generate RTL / HLS with qfx-gen instead")
        elif op == "output":
            t = srcs[0]
            out_t = t
        else:  # pragma: no cover - load rejects unknown ops
            raise QonnxExportError(f"node {node.name!r}: op {op!r} has no QONNX export")
        tensors[node.name] = t
    assert out_t is not None
    out_name = g.fresh("global_out")
    g.nodes.append(onnx.helper.make_node("Identity", [out_t.name], [out_name], name=out_name))
    inputs = [onnx.helper.make_tensor_value_info(graph_in, onnx.TensorProto.FLOAT, list(in_shape))]
    outputs = [onnx.helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, list(out_t.shape))]
    graph = onnx.helper.make_graph(g.nodes, _graph_name(m.model), inputs, outputs, initializer=g.inits,
                                   value_info=g.value_info)
    model = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", ONNX_OPSET), onnx.helper.make_opsetid(QONNX_DOMAIN, 1)],
        producer_name="qfx",
        producer_version=_version(),
    )
    model.ir_version = min(model.ir_version, 8)  # readable by older onnxruntime / FINN toolchains
    onnx.checker.check_model(model)
    return model


def _refuse_input(node: Node, fmt: FixedType) -> None:
    raise QonnxExportError(
        f"node {node.name!r}: the model input format {fmt} uses {fmt.overflow}, and a float input can overflow it; "
        f"a QONNX Quant saturates: use AP_SAT or AP_SAT_SYM for the input format"
    )


def _graph_name(text: str) -> str:
    return text or "qfx_model"


def _version() -> str:
    import qfx

    return str(getattr(qfx, "__version__", "unknown"))


def write_qonnx(manifest: "Manifest | str | os.PathLike", path: "str | os.PathLike", *, batch: int = 1,
                force: bool = False) -> Path:
    """Convert a manifest (:func:`manifest_to_qonnx`) and write it to ``path`` atomically (nothing on error)."""
    out = Path(path)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass force=True to replace it")
    if out.exists() and out.is_dir():
        raise FileExistsError(f"{out} is a folder; give a file name such as model.onnx")
    data = manifest_to_qonnx(manifest, batch=batch).SerializeToString(deterministic=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def to_qonnx(model: Any, example: Any, path: "str | os.PathLike", *, force: bool = False) -> Path:
    """Export a qfx model (:func:`qfx.export.export`) and write it as a QONNX model to ``path``.

    The graph's batch size is ``example``'s. Raises what :func:`qfx.export.export` raises, and
    :class:`QonnxExportError` for layers QONNX cannot express; nothing is written then.
    """
    from .export import export

    out = Path(path)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass force=True to replace it")
    with tempfile.TemporaryDirectory(prefix="qfx-qonnx-") as tmp:
        manifest = load(export(model, example, Path(tmp) / "manifest"))
        return write_qonnx(manifest, out, batch=int(example.shape[0]), force=force)
