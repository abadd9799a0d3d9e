"""A QONNX model (e.g. a Brevitas export) with power-of-two scales as a qfx manifest.

:func:`from_qonnx` reads an ONNX file with QONNX ``Quant`` nodes, cleans it with QONNX's own
``cleanup_model`` (shape inference, constant folding that keeps the Quant nodes, unique names) and
writes the manifest :func:`qfx.export.export` would write (``manifest.yaml`` + ``tensors.npz``, the
input of ``qfx-gen``), whose formats are the ones the Quant nodes define:

* ``Quant(scale = 2**-F, zero point 0, bit width W, signed, narrow, rounding_mode)`` is
  ``ap_[u]fixed<W, W - F, Q, O>`` with ``O`` = AP_SAT (AP_SAT_SYM for a signed narrow range,
  ``[-max, max]``) and ``Q`` from the rounding mode: ``ROUND`` / ``HALF_EVEN`` -> AP_RND_CONV,
  ``FLOOR`` -> AP_TRN, ``DOWN`` -> AP_TRN_ZERO, ``HALF_UP`` -> AP_RND_INF, ``HALF_DOWN`` ->
  AP_RND_ZERO (the same rules; see :data:`qfx.qonnx_export.ROUNDING_TO_QONNX`). ``CEIL`` and
  ``UP`` have no ap_fixed mode and are refused on activations.
* A ``Quant`` of a constant (weights, biases) is evaluated: the codes are stored, the format is
  the Quant's (a per-channel scale gives a per-channel weight format).
* ``Gemm`` / ``MatMul`` (+ ``Add`` of a quantized constant) -> ``dense``; ``Conv`` -> ``conv2d``
  (an exact accumulator: ``accum`` = the ``auto`` type); ``Relu``, ``Add`` of two activations,
  ``MaxPool``, ``AveragePool`` over a power-of-two window (``avgpool2d``), ``Flatten`` / ``Reshape``
  to ``[N, -1]``, ``Identity``; ``Trunc`` (v2, Brevitas' ``TruncAvgPool2d``) is a cast like a Quant
  (to its output scale and bit width) when its input is on its input scale's grid. A Quant right after a layer
  whose result nothing else reads becomes that layer's output format (the layer's one cast); a
  layer result with no Quant after it keeps an exact format (every value held, nothing rounded);
  any other Quant of an activation becomes a ``clamp`` node without bounds (a pure cast), dropped
  again when its one reader casts its input to that format anyway (dense, conv2d, relu, maxpool2d,
  add, clamp).

Refused (:class:`QonnxImportError` naming the ONNX node): files that are not ONNX models, ops
outside the list above, scales that are not powers of two, non-zero zero points, 1-bit signed
(bipolar) quantizers, unsigned narrow ranges, asymmetric padding, ``Gemm`` with alpha / beta != 1.
Nothing is written then.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .manifest import CONV_ORDER, DENSE_ORDER, load, mac_auto_accum, mac_product_format, sanitize_name
from .arith import envelope
from .types import FixedType, Overflow, Rounding

__all__ = ["from_qonnx", "QonnxImportError", "QONNX_TO_ROUNDING"]

#: QONNX rounding modes -> the ap_fixed quantization mode of the same rule.
QONNX_TO_ROUNDING: dict[str, Rounding] = {
    "ROUND": Rounding.AP_RND_CONV,
    "HALF_EVEN": Rounding.AP_RND_CONV,
    "FLOOR": Rounding.AP_TRN,
    "DOWN": Rounding.AP_TRN_ZERO,
    "HALF_UP": Rounding.AP_RND_INF,
    "HALF_DOWN": Rounding.AP_RND_ZERO,
}

#: ops whose reference casts each input to a format of its own (the format key of each input, in order)
_CAST_SLOTS: dict[str, tuple[str, ...]] = {"dense": ("input",), "conv2d": ("input",), "relu": ("input",),
                                           "maxpool2d": ("input",), "avgpool2d": ("input",), "add": ("in_a", "in_b"),
                                           "clamp": ("input",)}

_SUPPORTED = ("Quant", "Trunc", "Gemm", "MatMul", "Conv", "Add", "Relu", "MaxPool", "AveragePool", "Flatten", "Reshape",
              "Identity")


class QonnxImportError(ValueError):
    """A QONNX model qfx cannot import (the ONNX node and the reason named)."""


@dataclass
class _Entry:
    """One manifest node under construction (the fields of a manifest node)."""

    name: str
    op: str
    source: str
    inputs: list[str]
    input_shapes: list[list[int]]
    output_shape: list[int]
    params: dict[str, Any] = field(default_factory=dict)
    formats: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    #: the output format is exact (no Quant after it yet): a Quant read only here may replace it
    pending: bool = False


@dataclass(frozen=True)
class _QConst:
    codes: np.ndarray
    fmt: Any  # FixedType or tuple of them (per channel)


class _Importer:
    def __init__(self, mw: Any) -> None:
        self.mw = mw
        self.graph = mw.graph
        self.entries: list[_Entry] = []
        self.taken: set[str] = set()
        self.act: dict[str, _Entry] = {}  # ONNX tensor -> the entry whose output it is
        self.qconst: dict[str, _QConst] = {}
        self.consumers: dict[str, int] = {}
        for n in self.graph.node:
            for i in n.input:
                self.consumers[i] = self.consumers.get(i, 0) + 1
        for o in self.graph.output:
            self.consumers[o.name] = self.consumers.get(o.name, 0) + 1

    # -- helpers ----------------------------------------------------------------
    def shape(self, tensor: str) -> list[int]:
        s = self.mw.get_tensor_shape(tensor)
        if s is None:
            raise QonnxImportError(f"tensor {tensor!r}: no shape after QONNX shape inference")
        return [int(v) for v in s[1:]]

    def init(self, n: Any, tensor: str, what: str) -> np.ndarray:
        v = self.mw.get_initializer(tensor)
        if v is None:
            raise QonnxImportError(f"node {n.name!r} ({n.op_type}): its {what} ({tensor!r}) is not a constant")
        return np.asarray(v)

    def source(self, n: Any, tensor: str) -> _Entry:
        if tensor in self.act:
            return self.act[tensor]
        if self.mw.get_initializer(tensor) is not None:
            raise QonnxImportError(f"node {n.name!r} ({n.op_type}): input {tensor!r} is a constant without a Quant")
        raise QonnxImportError(
            f"node {n.name!r} ({n.op_type}): input {tensor!r} is not a quantized tensor (qfx needs a Quant node "
            f"on the model input and on every weight)")

    def const(self, n: Any, tensor: str, what: str) -> _QConst:
        if tensor not in self.qconst:
            raise QonnxImportError(f"node {n.name!r} ({n.op_type}): the {what} ({tensor!r}) is not a Quant of a constant")
        return self.qconst[tensor]

    def add(self, n: Any, op: str, srcs: list[_Entry], out_tensor: str, **kw: Any) -> _Entry:
        e = _Entry(name=sanitize_name(n.name if n is not None else op, self.taken), op=op,
                   source=n.name if n is not None else op, inputs=[s.name for s in srcs],
                   input_shapes=[list(s.output_shape) for s in srcs], output_shape=self.shape(out_tensor), **kw)
        self.entries.append(e)
        self.act[out_tensor] = e
        return e

    # -- Quant --------------------------------------------------------------------
    def quant_format(self, n: Any, per_channel_ok: bool, slots: tuple[int, int, int] = (1, 2, 3)) -> "tuple[Any, np.ndarray]":
        """The format of a Quant (or of a Trunc's output: ``slots`` = its output scale, zero point, output bit width)."""
        attrs = {a.name: a for a in n.attribute}
        signed = bool(attrs["signed"].i) if "signed" in attrs else True
        narrow = bool(attrs["narrow"].i) if "narrow" in attrs else False
        mode = attrs["rounding_mode"].s.decode().upper() if "rounding_mode" in attrs else "ROUND"
        scale = self.init(n, n.input[slots[0]], "scale").astype(np.float64)
        zero = self.init(n, n.input[slots[1]], "zero point")
        bits = self.init(n, n.input[slots[2]], "bit width")
        if np.any(zero != 0):
            raise QonnxImportError(f"node {n.name!r} ({n.op_type}): zero point {zero.ravel()[:4].tolist()} is not 0; qfx "
                                   f"formats are symmetric around 0")
        if bits.size != 1 or float(bits) != int(bits) or int(bits) < 1:
            raise QonnxImportError(f"node {n.name!r} ({n.op_type}): bit width {bits.ravel().tolist()} is not one positive "
                                   f"integer")
        width = int(bits)
        if width == 1 and signed:
            raise QonnxImportError(f"node {n.name!r} ({n.op_type}): a 1-bit signed Quant is bipolar (+-1) in QONNX; no "
                                   f"ap_fixed format holds exactly -1 and +1")
        if narrow and not signed:
            raise QonnxImportError(f"node {n.name!r} ({n.op_type}): an unsigned narrow range [0, 2**W - 2] has no ap_fixed "
                                   f"overflow mode")
        if width > 64:
            raise QonnxImportError(f"node {n.name!r} ({n.op_type}): bit width {width} is above qfx's 64")
        if scale.size > 1 and not per_channel_ok:
            raise QonnxImportError(f"node {n.name!r} ({n.op_type}): a per-channel scale on an activation is not supported")
        fracs = []
        for s in scale.ravel():
            m, e = math.frexp(float(s))  # s = m * 2**e, m in [0.5, 1)
            if not (s > 0 and m == 0.5):
                raise QonnxImportError(
                    f"node {n.name!r} ({n.op_type}): scale {float(s)!r} is not a power of two; qfx formats need scale "
                    f"2**-F (re-train / re-export with power-of-two scales, e.g. Brevitas' *FixedPoint quantizers)")
            fracs.append(1 - e)
        rounding = QONNX_TO_ROUNDING.get(mode)
        if rounding is None:
            if mode in ("CEIL", "UP"):
                rounding = Rounding.AP_TRN if per_channel_ok else None  # constants: no rounding is ever applied
            if rounding is None:
                raise QonnxImportError(f"node {n.name!r} ({n.op_type}): rounding_mode {mode!r} has no ap_fixed quantization "
                                       f"mode (supported: {', '.join(sorted(QONNX_TO_ROUNDING))})")
        overflow = Overflow.AP_SAT_SYM if narrow else Overflow.AP_SAT
        fmts = tuple(FixedType(width, width - f, signed, rounding, overflow) for f in fracs)
        return (fmts[0] if len(fmts) == 1 else fmts), scale

    def quant(self, n: Any) -> None:
        x = n.input[0]
        value = self.mw.get_initializer(x)
        if value is not None:  # a quantized constant: evaluate it (QONNX's own rule), keep the codes
            from qonnx.custom_op.general.intquant import int_quant

            fmt, scale = self.quant_format(n, per_channel_ok=True)
            attrs = {a.name: a for a in n.attribute}
            v = int_quant(np.asarray(value, np.float64), scale, np.float64(0.0), self.init(n, n.input[3], "bit width").astype(np.float64),
                          attrs["signed"].i if "signed" in attrs else 1, attrs["narrow"].i if "narrow" in attrs else 0,
                          attrs["rounding_mode"].s.decode() if "rounding_mode" in attrs else "ROUND")
            codes = v / scale
            if not np.array_equal(codes, np.round(codes)):  # pragma: no cover - scales are powers of two
                raise QonnxImportError(f"node {n.name!r} (Quant): quantized constant off its grid")
            self.qconst[n.output[0]] = _QConst(np.round(codes).astype(np.int64), fmt)
            return
        fmt, _ = self.quant_format(n, per_channel_ok=False)
        graph_in = self.graph.input[0].name
        if x == graph_in:
            if any(e.op == "input" for e in self.entries):
                raise QonnxImportError(f"node {n.name!r} (Quant): the model input is quantized twice; qfx has one input "
                                       f"format")
            self.add(None, "input", [], n.output[0], formats={"output": fmt})
            return
        self.cast_to(n, self.source(n, x), fmt)

    def trunc(self, n: Any) -> None:
        """QONNX Trunc (v2, Brevitas' average pooling): round(x / scale) -- the identity when x is on that grid --,
        then the cast to (output scale, output bit width) with the rounding mode: a cast like a Quant's."""
        if len(n.input) != 6:
            raise QonnxImportError(f"node {n.name!r} (Trunc): only Trunc v2 (6 inputs) is imported")
        src = self.source(n, n.input[0])
        in_scale = self.init(n, n.input[1], "input scale").astype(np.float64)
        grid = src.formats["output"].frac_bits
        steps = 2.0**-grid / float(in_scale.ravel()[0]) if in_scale.size == 1 and float(in_scale.ravel()[0]) > 0 else 0.5
        if steps != round(steps) or steps < 1:  # x / scale must be an integer for every x on the input's grid
            raise QonnxImportError(f"node {n.name!r} (Trunc): its input scale {float(in_scale.ravel()[0])!r} is not a "
                                   f"step of the input's grid 2**-{grid}: the first rounding would not be exact")
        fmt, _ = self.quant_format(n, per_channel_ok=False, slots=(4, 2, 5))
        self.cast_to(n, src, fmt)

    def cast_to(self, n: Any, src: _Entry, fmt: FixedType) -> None:
        """The cast of ``src`` (tensor ``n.input[0]``) to ``fmt``: the layer's own output cast, or a clamp."""
        x = n.input[0]
        if src.pending and self.consumers.get(x, 0) == 1 and x not in {o.name for o in self.graph.output}:
            src.formats["output"] = fmt  # the layer's own output cast
            src.pending = False
            self.act[n.output[0]] = src
            return
        self.add(n, "clamp", [src], n.output[0], params={"min_code": None, "max_code": None},
                 formats={"input": src.formats["output"], "output": fmt})

    def avgpool(self, n: Any) -> None:
        attrs = {a.name: a for a in n.attribute}
        src = self.source(n, n.input[0])
        pads = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
        if pads[:2] != pads[2:] or ("auto_pad" in attrs and attrs["auto_pad"].s.decode() not in ("NOTSET", "")):
            raise QonnxImportError(f"node {n.name!r} (AveragePool): asymmetric or automatic pads are not supported")
        if any(pads) and not ("count_include_pad" in attrs and attrs["count_include_pad"].i):
            raise QonnxImportError(f"node {n.name!r} (AveragePool): padding without count_include_pad=1 divides edge "
                                   f"windows by fewer elements; qfx's divisor is fixed")
        if "ceil_mode" in attrs and attrs["ceil_mode"].i:
            raise QonnxImportError(f"node {n.name!r} (AveragePool): ceil_mode is not supported")
        kh, kw = attrs["kernel_shape"].ints
        k = kh * kw
        if k & (k - 1):
            raise QonnxImportError(f"node {n.name!r} (AveragePool): a {kh}x{kw} window divides by {k}, not a power of "
                                   f"two; only power-of-two windows are exact")
        x = src.formats["output"]
        s = x.accumulator(k)  # the exact window sum; read 2**j finer it is the average
        j = k.bit_length() - 1
        exact = FixedType(s.width, s.int_bits - j, s.signed)
        params = {"kernel": [kh, kw], "stride": list(attrs["strides"].ints) if "strides" in attrs else [1, 1],
                  "padding": pads[:2], "divisor": k}
        self.add(n, "avgpool2d", [src], n.output[0], params=params, formats={"input": x, "output": exact}, pending=True)

    # -- layers ---------------------------------------------------------------------
    def mac(self, n: Any, op: str, x: _Entry, w: _QConst, bias: "_QConst | None", params: dict) -> None:
        in_fmt = x.formats["output"]
        wfmt = w.fmt
        formats: dict[str, Any] = {"input": in_fmt, "weight": wfmt}
        arrays = {"weight": w.codes}
        n_terms = int(np.prod(w.codes.shape[1:]))
        if bias is not None:
            bias = _one_bias_format(n, bias)
            formats["bias"] = bias.fmt
            arrays["bias"] = bias.codes.reshape(-1)
        try:
            acc = mac_auto_accum(mac_product_format(in_fmt, wfmt, "exact"), n_terms, formats.get("bias"))
        except ValueError as err:
            raise QonnxImportError(f"node {n.name!r} ({n.op_type}): {err}") from None
        formats["accum"] = acc
        formats["output"] = acc
        params.update(bias=bias is not None, multiply="exact",
                      accum_order=list(DENSE_ORDER if op == "dense" else CONV_ORDER), accum_exact=True)
        self.add(n, op, [x], n.output[0], params=params, formats=formats, arrays=arrays, pending=True)

    def gemm(self, n: Any) -> None:
        attrs = {a.name: a for a in n.attribute}
        alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
        beta = attrs["beta"].f if "beta" in attrs else 1.0
        if alpha != 1.0 or beta != 1.0 or ("transA" in attrs and attrs["transA"].i):
            raise QonnxImportError(f"node {n.name!r} (Gemm): only alpha = beta = 1 without transA is imported")
        x = self.source(n, n.input[0])
        w = self.const(n, n.input[1], "weight")
        trans_b = bool(attrs["transB"].i) if "transB" in attrs else False
        if not trans_b:
            w = _QConst(w.codes.T, w.fmt)
        if isinstance(w.fmt, tuple):
            self._check_per_channel(n, w, axis=1 if not trans_b else 0)
        bias = self.const(n, n.input[2], "bias") if len(n.input) > 2 and n.input[2] else None
        o, k = w.codes.shape
        self.mac(n, "dense", x, w, bias, {"in_features": k, "out_features": o})

    def matmul(self, n: Any) -> None:
        x = self.source(n, n.input[0])
        w = self.const(n, n.input[1], "weight")
        if w.codes.ndim != 2:
            raise QonnxImportError(f"node {n.name!r} (MatMul): the weight must be a [K, O] matrix")
        if isinstance(w.fmt, tuple):
            raise QonnxImportError(f"node {n.name!r} (MatMul): a per-channel weight scale on MatMul is not supported")
        k, o = w.codes.shape
        self.mac(n, "dense", x, _QConst(w.codes.T.copy(), w.fmt), None, {"in_features": k, "out_features": o})

    def _check_per_channel(self, n: Any, w: _QConst, axis: int) -> None:
        if len(w.fmt) != w.codes.shape[axis]:
            raise QonnxImportError(f"node {n.name!r} ({n.op_type}): the weight scale is per input, not per output channel")

    def conv(self, n: Any) -> None:
        attrs = {a.name: a for a in n.attribute}
        x = self.source(n, n.input[0])
        w = self.const(n, n.input[1], "weight")
        if w.codes.ndim != 4:
            raise QonnxImportError(f"node {n.name!r} (Conv): only 2-d convolutions are imported")
        if isinstance(w.fmt, tuple):
            self._check_per_channel(n, w, axis=0)
        bias = self.const(n, n.input[2], "bias") if len(n.input) > 2 and n.input[2] else None
        if "auto_pad" in attrs and attrs["auto_pad"].s.decode() not in ("NOTSET", ""):
            raise QonnxImportError(f"node {n.name!r} (Conv): auto_pad is not supported; give explicit pads")
        pads = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
        if pads[:2] != pads[2:]:
            raise QonnxImportError(f"node {n.name!r} (Conv): asymmetric pads {pads} are not supported")
        o, cg, kh, kw = w.codes.shape
        groups = attrs["group"].i if "group" in attrs else 1
        params = {"in_channels": cg * groups, "out_channels": o, "kernel": [kh, kw],
                  "stride": list(attrs["strides"].ints) if "strides" in attrs else [1, 1],
                  "padding": pads[:2], "dilation": list(attrs["dilations"].ints) if "dilations" in attrs else [1, 1],
                  "groups": groups}
        self.mac(n, "conv2d", x, w, bias, params)

    def add_op(self, n: Any) -> None:
        a, b = n.input
        consts = [t for t in (a, b) if t in self.qconst]
        if consts:  # MatMul + Add(bias): the dense layer's bias
            other = b if consts[0] == a else a
            src = self.source(n, other)
            bias = self.qconst[consts[0]]
            if not (src.op == "dense" and src.pending and "bias" not in src.formats and self.consumers.get(other) == 1):
                raise QonnxImportError(f"node {n.name!r} (Add): a constant is added to something other than a MatMul "
                                       f"result; only the bias of a dense layer is imported")
            bias = _one_bias_format(n, bias)
            if bias.codes.size != src.params["out_features"]:
                raise QonnxImportError(f"node {n.name!r} (Add): the bias must be one quantized value per output")
            src.formats["bias"] = bias.fmt
            src.arrays["bias"] = bias.codes.reshape(-1)
            fmts = {k: src.formats[k] for k in ("input", "weight", "bias")}
            acc = mac_auto_accum(mac_product_format(fmts["input"], fmts["weight"], "exact"), src.params["in_features"],
                                 fmts["bias"])
            src.formats = {**fmts, "accum": acc, "output": acc}
            src.params["bias"] = True
            self.act[n.output[0]] = src
            return
        sa, sb = self.source(n, a), self.source(n, b)
        ta, tb = sa.formats["output"], sb.formats["output"]
        try:
            exact = ta + tb
        except ValueError as err:
            raise QonnxImportError(f"node {n.name!r} (Add): {err}") from None
        self.add(n, "add", [sa, sb], n.output[0], formats={"in_a": ta, "in_b": tb, "output": exact}, pending=True)

    def relu(self, n: Any) -> None:
        src = self.source(n, n.input[0])
        t = src.formats["output"]
        self.add(n, "relu", [src], n.output[0], formats={"input": t, "output": t}, pending=True)

    def maxpool(self, n: Any) -> None:
        attrs = {a.name: a for a in n.attribute}
        src = self.source(n, n.input[0])
        pads = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
        if pads[:2] != pads[2:] or ("auto_pad" in attrs and attrs["auto_pad"].s.decode() not in ("NOTSET", "")):
            raise QonnxImportError(f"node {n.name!r} (MaxPool): asymmetric or automatic pads are not supported")
        if len(n.output) > 1 and n.output[1]:
            raise QonnxImportError(f"node {n.name!r} (MaxPool): the indices output is not supported")
        kernel = list(attrs["kernel_shape"].ints)
        params = {"kernel": kernel, "stride": list(attrs["strides"].ints) if "strides" in attrs else [1, 1],
                  "padding": pads[:2], "dilation": list(attrs["dilations"].ints) if "dilations" in attrs else [1, 1],
                  "ceil_mode": bool(attrs["ceil_mode"].i) if "ceil_mode" in attrs else False}
        t = src.formats["output"]
        self.add(n, "maxpool2d", [src], n.output[0], params=params, formats={"input": t, "output": t}, pending=True)

    def flatten(self, n: Any) -> None:
        src = self.source(n, n.input[0])
        out_shape = self.shape(n.output[0])
        if len(out_shape) != 1 or out_shape[0] != int(np.prod(src.output_shape)):
            raise QonnxImportError(f"node {n.name!r} ({n.op_type}): only a flatten to [N, -1] is imported, not to "
                                   f"[N, {', '.join(map(str, out_shape))}]")
        if len(src.output_shape) == 1:  # already flat: nothing to do
            self.act[n.output[0]] = src
            return
        t = src.formats["output"]
        self.add(n, "flatten", [src], n.output[0], params={"start_dim": 0, "end_dim": len(src.output_shape) - 1},
                 formats={"input": t, "output": t})

    def run(self) -> None:
        if len(self.graph.input) != 1 or len(self.graph.output) != 1:
            raise QonnxImportError(f"qfx imports models with one input and one output, this one has "
                                   f"{len(self.graph.input)} and {len(self.graph.output)}")
        for n in self.graph.node:
            op = n.op_type
            if op not in _SUPPORTED:
                raise QonnxImportError(f"node {n.name!r}: op {op} (domain {n.domain or 'ai.onnx'!r}) is not imported; "
                                       f"supported: {', '.join(_SUPPORTED)}")
            if op == "Quant":
                self.quant(n)
            elif op == "Gemm":
                self.gemm(n)
            elif op == "MatMul":
                self.matmul(n)
            elif op == "Conv":
                self.conv(n)
            elif op == "Add":
                self.add_op(n)
            elif op == "Relu":
                self.relu(n)
            elif op == "MaxPool":
                self.maxpool(n)
            elif op == "AveragePool":
                self.avgpool(n)
            elif op == "Trunc":
                self.trunc(n)
            elif op in ("Flatten", "Reshape"):
                self.flatten(n)
            else:  # Identity
                if n.input[0] in self.qconst:
                    self.qconst[n.output[0]] = self.qconst[n.input[0]]
                else:
                    self.act[n.output[0]] = self.source(n, n.input[0])
        if not any(e.op == "input" for e in self.entries):
            raise QonnxImportError("the model input feeds no Quant node; qfx needs the input quantized (its format)")
        out = self.graph.output[0].name
        src = self.act.get(out)
        if src is None:
            raise QonnxImportError(f"the graph output {out!r} is not a quantized tensor")
        e = _Entry(name=sanitize_name("output", self.taken), op="output", source="output", inputs=[src.name],
                   input_shapes=[list(src.output_shape)], output_shape=list(src.output_shape),
                   formats={"output": src.formats["output"]})
        self.entries.append(e)
        self.fold_casts()

    def fold_casts(self) -> None:
        """Drop a bound-less clamp (a pure cast) read by one layer that casts its input to the same format anyway."""
        readers: dict[str, list[_Entry]] = {}
        for e in self.entries:
            for i in e.inputs:
                readers.setdefault(i, []).append(e)
        keep = []
        for c in self.entries:
            users = readers.get(c.name, [])
            if c.op == "clamp" and c.params == {"min_code": None, "max_code": None} and len(users) == 1:
                user = users[0]
                slots = [k for k, i in zip(_CAST_SLOTS.get(user.op, ()), user.inputs) if i == c.name]
                if len(slots) == 1 and user.inputs.count(c.name) == 1 and user.formats[slots[0]] == c.formats["output"]:
                    user.inputs = [c.inputs[0] if i == c.name else i for i in user.inputs]
                    readers[c.inputs[0]] = [r for r in readers[c.inputs[0]] if r is not c] + [user]
                    continue
            keep.append(c)
        self.entries = keep


def _one_bias_format(n: Any, bias: _QConst) -> _QConst:
    """A per-channel bias (Brevitas: input scale x per-channel weight scale) on one grid, the finest: exact."""
    if not isinstance(bias.fmt, tuple):
        return bias
    codes = bias.codes.reshape(-1)
    if len(bias.fmt) != codes.size:
        raise QonnxImportError(f"node {n.name!r} ({n.op_type}): {len(bias.fmt)} bias scales for {codes.size} biases")
    f_max = max(t.frac_bits for t in bias.fmt)
    env = envelope(bias.fmt)  # every channel's values on the grid 2**-f_max
    if env.width > 64:
        raise QonnxImportError(f"node {n.name!r} ({n.op_type}): the per-channel bias scales span more than 64 bits")
    shifts = np.array([f_max - t.frac_bits for t in bias.fmt], dtype=np.int64)
    return _QConst(codes << shifts, env)


def _read(path: Path) -> Any:
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # DecodeError and friends: not a model
        raise QonnxImportError(f"{path}: not an ONNX model ({type(err).__name__}: {err})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as err:
        raise QonnxImportError(f"{path}: malformed ONNX model: {err}") from None
    for n in model.graph.node:
        if n.op_type not in _SUPPORTED:
            raise QonnxImportError(f"node {n.name!r}: op {n.op_type} (domain {n.domain or 'ai.onnx'!r}) is not "
                                   f"imported; supported: {', '.join(_SUPPORTED)}")
    raw = ModelWrapper(model)
    probe = _Importer(raw)
    for n in model.graph.node:  # the Quant parameters, checked under the file's own node names
        if n.op_type == "Quant" and all(raw.get_initializer(t) is not None for t in n.input[1:4]):
            probe.quant_format(n, per_channel_ok=raw.get_initializer(n.input[0]) is not None)
        if n.op_type == "Trunc" and len(n.input) == 6 and all(raw.get_initializer(n.input[i]) is not None for i in (2, 4, 5)):
            probe.quant_format(n, per_channel_ok=False, slots=(4, 2, 5))
    try:
        return cleanup_model(ModelWrapper(model))
    except Exception as err:
        raise QonnxImportError(f"{path}: QONNX could not clean up the model ({type(err).__name__}: {err})") from None


def from_qonnx(path: "str | os.PathLike", out_dir: "str | os.PathLike", *, force: bool = False) -> Path:
    """Import a QONNX model file as a qfx manifest folder (``manifest.yaml`` + ``tensors.npz``).

    Parameters
    ----------
    path : path
        The ``.onnx`` file (QONNX ``Quant`` nodes with power-of-two scales, e.g. a Brevitas export with
        ``*FixedPoint`` quantizers).
    out_dir : path
        The manifest folder to create; written atomically and validated with :func:`qfx.manifest.load`.
    force : bool
        Replace an existing non-empty ``out_dir``.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    QonnxImportError (ValueError)
        Not an ONNX model, an op qfx does not import, a non-power-of-two scale, ...: the node named;
        nothing is written.
    """
    from .export import _check_target, _document, _write_atomic

    src, out = Path(path), Path(out_dir)
    _check_target(out, force)
    mw = _read(src)
    imp = _Importer(mw)
    imp.run()
    text, arrays = _document(f"QONNX {src.name}", imp.entries)  # type: ignore[arg-type]  # export's entry fields
    tmp = Path(tempfile.mkdtemp(prefix=".qfx-qonnx-import-"))
    try:
        _write_atomic(tmp / "m", text, arrays, False)
        load(tmp / "m")  # the schema check before anything appears at out_dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write_atomic(out, text, arrays, force)
    return out
