"""Export a qfx model to a manifest (``manifest.yaml`` + ``tensors.npz``; schema in :mod:`qfx.manifest`).

``export(model, example_input, out_dir)``:

1. **Freezes a deep copy.** The caller's model is never modified: export
   deep-copies it, switches the copy to eval mode (BatchNorm uses its running
   statistics) and calls :func:`qfx.nn.freeze` on it, so every learned binary
   point is a concrete format. A learnable binary point that was never
   calibrated (no forward pass yet) is refused: its first forward call would
   still move it, so no format could be exported honestly.
2. **Traces** the copy with ``torch.fx``; every :mod:`qfx.nn` layer is a leaf.
   Supported: ``QLinear``, ``QConv2d``, ``QBatchNorm2d``, ``QReLU``,
   ``QReLU6``, ``QLeakyReLU``, ``QAdd``, ``QMaxPool2d``, ``QAvgPool2d``,
   ``QFlatten``, ``QBatchNorm1d``, ``QGlobalAvgPool2d`` (an ``avgpool2d`` node with
   kernel = stride = H x W, then a ``flatten`` node unless ``keepdim``), ``QCat``
   (``concat``), ``QClamp`` (``clamp``), ``QSub``, ``QMul``, the lookup tables ``QSigmoid`` / ``QTanh`` /
   ``QSiLU`` / ``QGELU`` / ``QHardsigmoid`` / ``QHardswish`` (``table``), ``QConv1d`` / ``QMaxPool1d`` /
   ``QAvgPool1d`` (height-1 ``conv2d`` / ``maxpool2d`` / ``avgpool2d`` nodes; in a model with 1-D layers
   every ``[N, C, L]`` tensor is written as ``[C, 1, L]``), ``QMatMul`` (``matmul``), ``QPermute`` /
   ``QReshape`` (``permute`` / ``reshape``, no cast); ``nn.Identity`` / ``nn.Dropout`` (identity in eval) pass
   through; ``torch.flatten(x, 1)``, ``x.flatten(1)`` and ``x.view(N, -1)`` /
   ``x.reshape(N, -1)`` become flatten nodes. Anything else (a float
   ``nn.Linear``, ``torch.relu``, a plain ``+``) is an error naming it.
   One tensor input, one tensor output.
3. **Builds** the nodes (shapes from a forward pass of ``example_input``,
   formats from ``effective_format``, ``accum: auto`` resolved) and the
   integer arrays (``qfx.to_codes``; K-hot digits from ``qfx.khot_digits``).
   Non-finite weights, biases or BatchNorm statistics are a ``ValueError``
   naming the layer.
4. **Writes atomically**: into a temporary folder next to ``out_dir``, then
   renamed into place, so a partial manifest never exists. An existing
   non-empty ``out_dir`` is refused unless ``force=True``. Both files are
   byte-for-byte deterministic (the npz is written with fixed zip timestamps).

:func:`emulate` runs the same frozen copy and returns every node's output
values (the PyTorch emulation of the manifest, keyed by node name), which is
what the integer reference (:mod:`qfx.reference`) must reproduce.
"""

from __future__ import annotations

import copy
import io
import operator
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch import fx, nn

from ._khot import khot_digits
from .manifest import (
    CONV_ORDER,
    DENSE_ORDER,
    MANIFEST_FILE,
    SCHEMA,
    SCHEMA_VERSION,
    TENSORS_FILE,
    MATMUL_ORDER,
    accum_is_exact,
    infer_output_shape,
    matmul_accum_is_exact,
    sanitize_name,
)
from .nn import (
    QAdd,
    QAvgPool2d,
    QBatchNorm1d,
    QBatchNorm2d,
    QCat,
    QClamp,
    QGlobalAvgPool2d,
    QMul,
    QSub,
    QZeroPad2d,
    QUpsample,
    QMatMul,
    QPermute,
    QReshape,
    QLayerNorm,
    QTable,
    QSoftmax,
    QConv2d,
    QFlatten,
    QLeakyReLU,
    QLinear,
    QMaxPool2d,
    QReLU,
    QReLU6,
    QuantizedModule,
    TensorQuantizer,
    freeze,
)
from .nn.conv1d import QAvgPool1d, QConv1d, QMaxPool1d
from .quant import mx_encode, quantize, to_codes
from .types import FixedType, KHot, MinifloatType, MXType

_ONE_D = (QConv1d, QMaxPool1d, QAvgPool1d)

__all__ = ["export", "emulate", "ExportError", "write_npz", "to_hls4ml", "to_qonnx"]


def to_hls4ml(*args: Any, **kwargs: Any) -> Any:
    """An hls4ml model of a qfx model with qfx's per-layer precisions (:func:`qfx.hls4ml_interop.to_hls4ml`).

    hls4ml is imported only when this is called.
    """
    from .hls4ml_interop import to_hls4ml as convert

    return convert(*args, **kwargs)


def to_qonnx(model: nn.Module, example_input: torch.Tensor, path: "str | os.PathLike", *, force: bool = False) -> Path:
    """The model as a QONNX file (Quant nodes between standard ONNX ops; :func:`qfx.qonnx_export.to_qonnx`).

    onnx is imported only when this is called.
    """
    from .qonnx_export import to_qonnx as convert

    return convert(model, example_input, path, force=force)


class ExportError(ValueError):
    """The model cannot be exported (unsupported module, missing format, ...)."""


_PASS_THROUGH_MODULES = (nn.Identity, nn.Dropout)
_RESHAPE_METHODS = ("view", "reshape", "flatten")


# ---------------------------------------------------------------------------
# Preparing and tracing
# ---------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (QuantizedModule, QFlatten, QZeroPad2d, QUpsample, QPermute, QReshape)):
            return True
        return super().is_leaf_module(m, qualname)


def _prepare(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"export needs a torch.nn.Module, not {type(model).__name__}")
    for path, q in model.named_modules():
        if isinstance(q, TensorQuantizer) and q.learnable and not bool(q.calibrated):
            layer = path.rsplit(".quant.", 1)[0]
            raise ExportError(
                f"layer {layer!r}: the learnable binary point of {q.name!r} was never calibrated; run the "
                f"model forward once (or train it) before exporting, so that its format is settled"
            )
    m = copy.deepcopy(model)
    m.eval()
    freeze(m)
    return m


def _trace(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    if not isinstance(example_input, torch.Tensor) or not example_input.is_floating_point():
        raise TypeError("example_input must be a floating-point torch.Tensor with a batch dimension")
    if example_input.dim() < 2:
        raise ValueError(f"example_input needs a batch dimension, got shape {list(example_input.shape)}")
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # torch.fx reports data-dependent control flow etc.
        raise ExportError(f"torch.fx could not trace the model: {err}") from err
    gm = fx.GraphModule(model, graph, type(model).__name__)
    with torch.no_grad():
        _ShapeRecorder(gm).run(example_input)
    return gm


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once, recording every tensor's shape; a failing layer is named."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.extra_traceback = False  # the error names the layer itself

    def run_node(self, n: fx.Node) -> Any:
        try:
            v = super().run_node(n)
        except Exception as err:
            raise ExportError(f"{_describe(n)} (node {n.name!r}) fails on example_input: {err}") from err
        if isinstance(v, torch.Tensor):
            n.meta["qfx_shape"] = tuple(int(s) for s in v.shape)
        return v


# ---------------------------------------------------------------------------
# The node table
# ---------------------------------------------------------------------------


@dataclass
class _Entry:
    """One manifest node under construction."""

    name: str
    op: str
    source: str
    fx_node: fx.Node
    inputs: list[str]
    input_shapes: list[list[int]]
    output_shape: list[int]
    params: dict[str, Any] = field(default_factory=dict)
    formats: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _shape(n: fx.Node) -> list[int]:
    shape = n.meta.get("qfx_shape")
    if shape is None:
        raise ExportError(f"node {n.name!r} ({_describe(n)}) does not produce a single tensor")
    return list(shape[1:])


def _describe(n: fx.Node) -> str:
    if n.op == "call_module":
        return f"module {n.target!r}"
    if n.op == "call_function":
        return f"function {getattr(n.target, '__module__', '')}.{getattr(n.target, '__name__', n.target)}"
    if n.op == "call_method":
        return f"method .{n.target}()"
    return f"{n.op} {n.target}"


def _fmt_text(fmt: Any) -> Any:
    if isinstance(fmt, tuple):
        return [str(t) for t in fmt]
    return str(fmt)


def _is_reshape_to_flat(n: fx.Node) -> bool:
    if n.op == "call_function" and n.target is torch.flatten:
        return True
    return n.op == "call_method" and n.target in _RESHAPE_METHODS


class _Builder:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.entries: list[_Entry] = []
        self.taken: set[str] = set()
        self.of: dict[fx.Node, _Entry] = {}  # fx node -> the entry whose output it is
        self.skipped: set[fx.Node] = set()
        # a model with 1-D layers (QConv1d, QMaxPool1d, QAvgPool1d): every [N, C, L] tensor is written as the
        # height-1 2-D tensor [C, 1, L] (same element order), the layout of those layers' 2-D nodes
        # (an upsample of an [N, C, L] tensor too: the manifest's upsample is on [C, H, W])
        self.lift_1d = any(isinstance(m, _ONE_D) for m in gm.modules()) or any(
            n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), QUpsample)
            and n.args and isinstance(n.args[0], fx.Node) and len(n.args[0].meta.get("qfx_shape", ())) == 3
            for n in gm.graph.nodes)

    # -- helpers ------------------------------------------------------------
    def module(self, n: fx.Node) -> nn.Module:
        return self.gm.get_submodule(str(n.target))

    def tensor_args(self, n: fx.Node) -> list[fx.Node]:
        if n.kwargs and n.op == "call_module":
            raise ExportError(f"{_describe(n)} is called with keyword arguments {sorted(n.kwargs)}; pass tensors positionally")
        flat: list = []
        for a in n.args:  # QCat([a, b]) passes its tensors as one list
            flat.extend(a if isinstance(a, (list, tuple)) else [a])
        return [a for a in flat if isinstance(a, fx.Node) and a not in self.skipped]

    def producer(self, n: fx.Node, a: fx.Node) -> _Entry:
        if a not in self.of:
            raise ExportError(f"{_describe(n)} consumes {a.name!r}, which is not a quantized tensor of the graph")
        return self.of[a]

    def add(self, n: fx.Node, op: str, source: str, inputs: list[_Entry], **kw: Any) -> _Entry:
        e = _Entry(
            name=sanitize_name(source, self.taken),
            op=op,
            source=source,
            fx_node=n,
            inputs=[i.name for i in inputs],
            input_shapes=[list(i.output_shape) for i in inputs],
            output_shape=self.shape(n) if op != "output" else list(inputs[0].output_shape),
            **kw,
        )
        self.entries.append(e)
        self.of[n] = e
        return e

    def shape(self, n: fx.Node) -> list[int]:
        """The node's manifest shape (without the batch axis): [C, L] -> [C, 1, L] in a model with 1-D layers."""
        s = _shape(n)
        return [s[0], 1, s[1]] if self.lift_1d and len(s) == 2 else s

    def dim_map(self, n: fx.Node, dims: "list[int]") -> "list[int]":
        """Non-batch axes of the torch tensor ``n`` as axes of its manifest shape (see :meth:`shape`)."""
        if self.lift_1d and len(_shape(n)) == 2:
            return [0 if d == 0 else 2 for d in dims]
        return dims

    # -- the model input's format ---------------------------------------------
    def input_format(self, placeholder: fx.Node) -> FixedType:
        """The unique input format of the quantizing layers that consume the model input."""
        found: dict[str, FixedType] = {}
        stack = [placeholder]
        seen: set[fx.Node] = set()
        while stack:
            cur = stack.pop()
            for user in cur.users:
                if user in seen:
                    continue
                seen.add(user)
                if user.op == "call_module":
                    mod = self.module(user)
                    if isinstance(mod, (QFlatten, QZeroPad2d, QUpsample, QPermute, QReshape) + _PASS_THROUGH_MODULES):
                        stack.append(user)
                        continue
                    if isinstance(mod, (QAdd, QSub, QMul, QMatMul)):
                        for pos, a in enumerate(user.args[:2]):
                            if a is cur:
                                t = mod.effective_format("in_a" if pos == 0 else "in_b")
                                found[f"{user.target} ({'in_a' if pos == 0 else 'in_b'})"] = t
                        continue
                    if isinstance(mod, QuantizedModule):
                        t = mod.effective_format("input")
                        if t is None:
                            raise ExportError(
                                f"layer {user.target!r} ({type(mod).__name__}) takes the model input but has no input "
                                f"format, so the input quantization is undefined; give it input='ap_fixed<...>'"
                            )
                        found[str(user.target)] = t
                        continue
                    continue  # unsupported: reported when the node is built
                if _is_reshape_to_flat(user):
                    stack.append(user)
                elif user.op == "output":
                    raise ExportError("the model returns its input unchanged (no quantized layer defines its format)")
        fmts = set(found.values())
        if not fmts:
            raise ExportError("no quantized layer consumes the model input")
        if len(fmts) > 1:
            listing = ", ".join(f"{k}: {v}" for k, v in sorted(found.items()))
            raise ExportError(
                f"the model input feeds layers with different input formats ({listing}); the input node needs one "
                f"format: make them equal"
            )
        return fmts.pop()

    # -- building -------------------------------------------------------------
    def build(self) -> None:
        nodes = list(self.gm.graph.nodes)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ExportError(f"export supports models with one tensor input, found {len(placeholders)} inputs")
        for n in nodes:
            if n.op == "placeholder":
                fmt = self.input_format(n)
                self.add(n, "input", n.name, [], formats={"output": fmt})
            elif n.op == "output":
                out = n.args[0]
                if not isinstance(out, fx.Node):
                    raise ExportError(f"export supports models returning one tensor, not {type(out).__name__}")
                prod = self.producer(n, out)
                self.add(n, "output", "output", [prod], formats={"output": prod.formats["output"]})
            elif n.op == "get_attr":
                raise ExportError(f"the graph reads attribute {n.target!r} directly; only qfx.nn layers may hold tensors")
            elif n.op == "call_module":
                self.call_module(n)
            else:
                self.call_other(n)

    def call_other(self, n: fx.Node) -> None:
        if "qfx_shape" not in n.meta:
            # e.g. x.size(0) feeding a view: no tensor, no node (its users are checked themselves)
            if all(_is_reshape_to_flat(u) or u.op == "call_function" and u.target is operator.getitem for u in n.users):
                self.skipped.add(n)
                return
            raise ExportError(f"unsupported {_describe(n)} (node {n.name!r}); use qfx.nn layers")
        if _is_reshape_to_flat(n):
            (src,) = [a for a in self.tensor_args(n)][:1] or [None]
            if src is None:
                raise ExportError(f"{_describe(n)} (node {n.name!r}) has no tensor operand")
            prod = self.producer(n, src)
            in_shape, out_shape = prod.output_shape, self.shape(n)
            if len(out_shape) != 1 or out_shape[0] != int(np.prod(in_shape)):
                raise ExportError(
                    f"{_describe(n)} (node {n.name!r}) reshapes {in_shape} to {out_shape}; only a flatten that keeps the "
                    f"batch dimension (to [N, -1]) is supported: use QFlatten"
                )
            self.flatten(n, prod, 0, len(in_shape) - 1, n.name)
            return
        raise ExportError(
            f"unsupported {_describe(n)} (node {n.name!r}): only qfx.nn layers (and flatten) are exported; e.g. use "
            f"QReLU instead of torch.relu, QAdd instead of +"
        )

    def flatten(self, n: fx.Node, prod: _Entry, start: int, end: int, source: str) -> None:
        fmt = prod.formats["output"]
        self.add(n, "flatten", source, [prod], params={"start_dim": start, "end_dim": end}, formats={"input": fmt, "output": fmt})

    def call_module(self, n: fx.Node) -> None:
        mod = self.module(n)
        path = str(n.target)
        args = self.tensor_args(n)
        if isinstance(mod, _PASS_THROUGH_MODULES):
            self.of[n] = self.producer(n, args[0])
            return
        handler = _HANDLERS.get(type(mod))
        if handler is None:
            for cls, h in _HANDLERS.items():
                if isinstance(mod, cls):
                    handler = h
                    break
        if handler is None:
            raise ExportError(
                f"unsupported module {path!r} ({type(mod).__module__}.{type(mod).__name__}); export handles the qfx.nn "
                f"layers (QLinear, QConv2d, QBatchNorm2d, QBatchNorm1d, QReLU, QReLU6, QLeakyReLU, QAdd, QSub, QMul, "
                f"QMaxPool2d, QAvgPool2d, QGlobalAvgPool2d, QCat, QClamp, QFlatten, QZeroPad2d, QUpsample, QMatMul, QPermute, QReshape, QSoftmax, QLayerNorm, QTable and its QSigmoid/QTanh/...); convert float layers with qfx.nn.<Layer>.from_float"
            )
        _check_finite(mod, path)
        prods = [self.producer(n, a) for a in args]
        handler(self, n, mod, path, prods)


def _check_finite(mod: nn.Module, path: str) -> None:
    named = list(mod.named_parameters(recurse=False)) + [
        (k, b) for k, b in mod.named_buffers(recurse=False) if k in ("running_mean", "running_var")
    ]
    for k, t in named:
        if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"layer {path!r} ({type(mod).__name__}): {k} holds {bad} NaN/Inf value(s); export needs finite values")


def _in_fmt(mod: QuantizedModule, prod: _Entry, key: str = "input") -> FixedType:
    t = mod.effective_format(key)
    return prod.formats["output"] if t is None else t


def _codes(x: torch.Tensor, fmt: Any, path: str, what: str) -> np.ndarray:
    try:
        if isinstance(fmt, tuple):  # per output channel
            c = torch.stack([to_codes(x[o], t) for o, t in enumerate(fmt)])
        else:
            c = to_codes(x, fmt)
    except ValueError as err:
        raise ValueError(f"layer {path!r}: {what} cannot be encoded: {err}") from None
    return c.cpu().numpy().astype(np.int64).reshape(tuple(x.shape))


def _check_mx_weight(mod: Any, path: str, op: str, fmt: MXType) -> None:
    """What a manifest can hold of MX weights: blocks along the input features (dense) or input
    channels (conv2d), an exact accumulator (the block-shift reduction of qfx.reference; any
    order, same bits)."""
    ndim = mod.weight.dim()
    if fmt.axis % ndim != 1:
        what, spell = ("input features", f"{fmt.name}<block={fmt.block_size}>") if op == "dense" else (
            "input channels", f"{fmt.name}<block={fmt.block_size},axis=1>")
        raise ExportError(f"layer {path!r}: MX weight blocks must run along the {what} (axis 1 of the weight) "
                          f"to be exported, not axis {fmt.axis}; use {spell}")
    if not mod.accum_is_exact():
        raise ExportError(f"layer {path!r}: MX weights need an exact accumulator to be exported (accum 'auto', or "
                          f"one holding {mod.auto_accum_format()}), not {mod.effective_format('accum')}")
    if not bool(torch.isfinite(mod.weight.detach()).all()):
        raise ExportError(f"layer {path!r}: the weights hold inf/NaN, so their MX ({fmt}) blocks are NaN")


def _mac(b: _Builder, n: fx.Node, mod: Any, path: str, prods: list[_Entry], op: str) -> None:
    (prod,) = prods
    formats: dict[str, Any] = {
        "input": _in_fmt(mod, prod),
        "weight": mod.effective_format("weight"),
    }
    if mod.bias is not None:
        formats["bias"] = mod.effective_format("bias")
    formats["accum"] = mod.effective_format("accum")
    formats["output"] = mod.effective_format("output")
    multiply = mod.config.multiply
    if isinstance(formats["weight"], MXType):
        _check_mx_weight(mod, path, op, formats["weight"])
    w = mod.weight.detach()
    if isinstance(formats["weight"], MXType):
        scales, codes = mx_encode(w.double(), formats["weight"], f"layer {path!r}: the weight")
        arrays = {"weight": codes.cpu().numpy().astype(np.int64), "weight_mx_scales": scales.cpu().numpy().astype(np.int64)}
    else:
        arrays = {"weight": _codes(w, formats["weight"], path, "the weight")}
    wfmt = formats["weight"]
    if isinstance(wfmt, MinifloatType):
        vals = quantize(w.double(), wfmt)
        if not bool(torch.isfinite(vals).all()):
            raise ValueError(
                f"layer {path!r}: some weights overflow {wfmt} to inf/NaN; use a saturating minifloat "
                f"(e.g. 'fp8_e4m3fn<saturate=true>') or smaller weights"
            )
    if mod.bias is not None:
        arrays["bias"] = _codes(mod.bias.detach(), formats["bias"], path, "the bias")
    if isinstance(wfmt, KHot):
        shifts, signs = khot_digits(arrays["weight"], wfmt)
        arrays["weight_khot_shifts"] = shifts.astype(np.int64)
        arrays["weight_khot_signs"] = signs.astype(np.int64)
    if op == "dense":
        params: dict[str, Any] = {"in_features": mod.in_features, "out_features": mod.out_features}
        order = DENSE_ORDER
    else:
        params = {
            "in_channels": mod.in_channels,
            "out_channels": mod.out_channels,
            "kernel": list(mod.kernel_size),
            "stride": list(mod.stride),
            "padding": list(mod.padding),
            "dilation": list(mod.dilation),
            "groups": mod.groups,
        }
        order = CONV_ORDER
    params.update(
        bias=mod.bias is not None,
        multiply=multiply,
        accum_order=list(order),
        accum_exact=accum_is_exact(formats, multiply, mod.n_terms, arrays),
    )
    if params["accum_exact"] != mod.accum_is_exact():  # pragma: no cover - the two agree by construction
        raise AssertionError(f"layer {path!r}: accum exactness disagrees with qfx.nn")
    b.add(n, op, path, prods, params=params, formats=formats, arrays=arrays)


def _dense(b: _Builder, n: fx.Node, mod: QLinear, path: str, prods: list[_Entry]) -> None:
    _mac(b, n, mod, path, prods, "dense")


def _conv(b: _Builder, n: fx.Node, mod: QConv2d, path: str, prods: list[_Entry]) -> None:
    if mod.padding_mode != "zeros":
        raise ExportError(f"layer {path!r}: padding_mode {mod.padding_mode!r} is not supported")
    _mac(b, n, mod, path, prods, "conv2d")


def _batchnorm(b: _Builder, n: fx.Node, mod: QBatchNorm2d, path: str, prods: list[_Entry]) -> None:
    if mod.running_mean is None or mod.running_var is None:
        raise ExportError(f"layer {path!r}: QBatchNorm2d without running statistics has no fixed scale/shift to export")
    (prod,) = prods
    formats = {k: mod.effective_format(k) for k in ("input", "scale", "shift", "output")}
    with torch.no_grad():
        scale, shift = mod._float_scale_shift(mod.running_mean, mod.running_var)
    arrays = {
        "scale": _codes(scale, formats["scale"], path, "the BatchNorm scale"),
        "shift": _codes(shift, formats["shift"], path, "the BatchNorm shift"),
    }
    b.add(n, "batchnorm", path, prods, params={"num_features": mod.num_features}, formats=formats, arrays=arrays)


def _elementwise(op: str) -> Callable:
    def handler(b: _Builder, n: fx.Node, mod: Any, path: str, prods: list[_Entry]) -> None:
        (prod,) = prods
        params = {"slope_shift": mod.slope_shift} if op == "leaky_relu" else {}
        formats = {"input": _in_fmt(mod, prod), "output": mod.effective_format("output")}
        b.add(n, op, path, prods, params=params, formats=formats)

    return handler


def _add(b: _Builder, n: fx.Node, mod: QAdd, path: str, prods: list[_Entry]) -> None:
    if len(prods) != 2:
        raise ExportError(f"layer {path!r}: QAdd needs two tensor operands, got {len(prods)}")
    formats = {k: mod.effective_format(k) for k in ("in_a", "in_b", "output")}
    b.add(n, "add", path, prods, formats=formats)


def _maxpool(b: _Builder, n: fx.Node, mod: QMaxPool2d, path: str, prods: list[_Entry]) -> None:
    from torch.nn.modules.utils import _pair

    (prod,) = prods
    if getattr(mod, "return_indices", False):
        raise ExportError(f"layer {path!r}: return_indices is not supported")
    x_fmt = _in_fmt(mod, prod)
    out = mod.effective_format("output")
    params = {
        "kernel": list(_pair(mod.kernel_size)),
        "stride": list(_pair(mod.stride if mod.stride is not None else mod.kernel_size)),
        "padding": list(_pair(mod.padding)),
        "dilation": list(_pair(mod.dilation)),
        "ceil_mode": bool(mod.ceil_mode),
    }
    b.add(n, "maxpool2d", path, prods, params=params, formats={"input": x_fmt, "output": x_fmt if out is None else out})


def _avgpool(b: _Builder, n: fx.Node, mod: QAvgPool2d, path: str, prods: list[_Entry]) -> None:
    from torch.nn.modules.utils import _pair

    formats = {"input": mod.effective_format("input"), "output": mod.effective_format("output")}
    arrays = {}
    if not mod.power_of_two:
        r = mod.quant["reciprocal"].fmt
        formats["reciprocal"] = r
        arrays["reciprocal"] = _codes(torch.tensor(1.0 / mod.divisor, dtype=torch.float64), r, path, "the reciprocal")
    params = {
        "kernel": list(_pair(mod.kernel_size)),
        "stride": list(_pair(mod.stride if mod.stride is not None else mod.kernel_size)),
        "padding": list(_pair(mod.padding)),
        "divisor": int(mod.divisor),
    }
    b.add(n, "avgpool2d", path, prods, params=params, formats=formats, arrays=arrays)


def _flatten(b: _Builder, n: fx.Node, mod: QFlatten, path: str, prods: list[_Entry]) -> None:
    (prod,) = prods
    src = n.args[0]
    rank = len(_shape(src)) + 1 if isinstance(src, fx.Node) else len(prod.output_shape) + 1  # with the batch axis
    start = mod.start_dim % rank
    end = mod.end_dim % rank
    if start == 0:
        raise ExportError(f"layer {path!r}: QFlatten with start_dim=0 merges the batch dimension; use start_dim >= 1")
    start, end = b.dim_map(src, [start - 1, end - 1]) if isinstance(src, fx.Node) else (start - 1, end - 1)
    b.flatten(n, prod, start, end, path)


def _global_avgpool(b: _Builder, n: fx.Node, mod: QGlobalAvgPool2d, path: str, prods: list[_Entry]) -> None:
    (prod,) = prods
    if len(prod.output_shape) != 3:
        raise ExportError(f"layer {path!r}: QGlobalAvgPool2d needs a [C, H, W] input, got {prod.output_shape}")
    c, h, w = prod.output_shape
    divisor = h * w
    formats = {"input": mod.effective_format("input"), "output": mod.effective_format("output")}
    arrays = {}
    if divisor & (divisor - 1):
        r = mod.reciprocal_format()
        if r is None:  # pragma: no cover - the forward pass of the shape recorder refuses it first
            raise ExportError(f"layer {path!r}: {h}x{w} = {divisor} is not a power of two; give a reciprocal format")
        formats["reciprocal"] = r
        arrays["reciprocal"] = _codes(torch.tensor(1.0 / divisor, dtype=torch.float64), r, path, "the reciprocal")
    params = {"kernel": [h, w], "stride": [h, w], "padding": [0, 0], "divisor": divisor}
    if mod.keepdim:
        b.add(n, "avgpool2d", path, prods, params=params, formats=formats, arrays=arrays)
        return
    # [N, C] like mean((2, 3)): the pool on [C, 1, 1], then a flatten node (one fx node, two manifest nodes)
    pool = _Entry(name=sanitize_name(path, b.taken), op="avgpool2d", source=path, fx_node=n, inputs=[prod.name],
                  input_shapes=[list(prod.output_shape)], output_shape=[c, 1, 1], params=params, formats=formats,
                  arrays=arrays)
    b.entries.append(pool)
    b.flatten(n, pool, 0, 2, f"{path}_flatten")


def _cat(b: _Builder, n: fx.Node, mod: QCat, path: str, prods: list[_Entry]) -> None:
    if len(prods) < 2:
        raise ExportError(f"layer {path!r}: QCat needs two or more tensor inputs, got {len(prods)}")
    first = n.args[0][0] if n.args and isinstance(n.args[0], (list, tuple)) else (n.args[0] if n.args else None)
    rank = len(_shape(first)) + 1 if isinstance(first, fx.Node) and "qfx_shape" in first.meta else len(prods[0].output_shape) + 1
    if not -rank <= mod.dim < rank or mod.dim % rank != 1:
        raise ExportError(f"layer {path!r}: QCat along dim {mod.dim} of a rank-{rank} tensor is not supported; only "
                          "dim=1 (channels / features) is")
    b.add(n, "concat", path, prods, params={"axis": 0}, formats={"output": mod.effective_format("output")})


def _clamp(b: _Builder, n: fx.Node, mod: QClamp, path: str, prods: list[_Entry]) -> None:
    (prod,) = prods
    out = mod.effective_format("output")
    lo, hi = mod.bounds()
    params = {"min_code": None if lo is None else int(to_codes(torch.tensor(lo, dtype=torch.float64), out)),
              "max_code": None if hi is None else int(to_codes(torch.tensor(hi, dtype=torch.float64), out))}
    b.add(n, "clamp", path, prods, params=params, formats={"input": _in_fmt(mod, prod), "output": out})


def _table(b: _Builder, n: fx.Node, mod: QTable, path: str, prods: list[_Entry]) -> None:
    spec, xi, out, codes = mod.table_codes()
    params = {"function": mod.function, "size": spec.size, "shift": spec.shift, "lo_code": spec.lo_code}
    b.add(n, "table", path, prods, params=params, formats={"input": xi, "output": out}, arrays={"table": codes})


def _softmax(b: _Builder, n: fx.Node, mod: QSoftmax, path: str, prods: list[_Entry]) -> None:
    from .nn.softmax import softmax_dim

    (prod,) = prods
    rank = len(prod.output_shape)
    dim = softmax_dim(mod.dim, rank + 1)
    if dim is None:  # pragma: no cover - QSoftmax.forward refuses it first
        raise ExportError(f"layer {path!r} (QSoftmax): dim={mod.dim} does not fit input {prod.output_shape}")
    spec, xi, ef, codes = mod.table_codes()
    params = {"size": spec.size, "shift": spec.shift, "lo_code": spec.lo_code}
    if dim - 1 != rank - 1:  # not the last axis (absent: the last, as every manifest before it)
        params["axis"] = dim - 1
    formats = {"input": xi, "exp": ef, "reciprocal": mod.reciprocal_format, "output": mod.effective_format("output")}
    b.add(n, "softmax", path, prods, params=params, formats=formats, arrays={"table": codes})
def _layernorm(b: _Builder, n: fx.Node, mod: QLayerNorm, path: str, prods: list[_Entry]) -> None:
    (prod,) = prods
    f = mod.num_features
    if not prod.output_shape or prod.output_shape[-1] != f:
        raise ExportError(f"layer {path!r} (LayerNorm): normalizes the last axis of {f} features, but its input is "
                          f"{prod.output_shape}")
    formats = {k: mod.effective_format(k) for k in ("input", "mean", "var", "inv_std", "output")}
    arrays: dict[str, np.ndarray] = {}
    if mod.weight is not None:
        formats["scale"] = mod.effective_format("scale")
        arrays["scale"] = _codes(mod.weight.detach(), formats["scale"], path, "the LayerNorm weight (gamma)")
    if mod.bias is not None:
        formats["shift"] = mod.effective_format("shift")
        arrays["shift"] = _codes(mod.bias.detach(), formats["shift"], path, "the LayerNorm bias (beta)")
    if "reciprocal" in mod.quant:
        formats["reciprocal"] = mod.effective_format("reciprocal")
        arrays["reciprocal"] = _codes(torch.tensor(1.0 / f, dtype=torch.float64), formats["reciprocal"], path,
                                      "the reciprocal 1/F")
    params = {"num_features": f, "eps": mod.eps, "eps_code": int(mod.eps_code), "affine": mod.weight is not None,
              "bias": mod.bias is not None}
    b.add(n, "layernorm", path, prods, params=params, formats=formats, arrays=arrays)


def _no_1d(b: _Builder, path: str, kind: str) -> None:
    if b.lift_1d:
        raise ExportError(f"layer {path!r} ({kind}): a model with 1-D layers (Conv1d, pools, 1-D Upsample) writes "
                          f"[N, C, L] tensors as [C, 1, L]; {kind} is not supported in such a model")


def _matmul(b: _Builder, n: fx.Node, mod: QMatMul, path: str, prods: list[_Entry]) -> None:
    _no_1d(b, path, "matmul")
    if len(prods) != 2:
        raise ExportError(f"layer {path!r}: QMatMul needs two tensor operands, got {len(prods)}")
    k = int(prods[0].output_shape[-1])
    formats = {key: mod.effective_format(key) for key in ("in_a", "in_b", "accum", "output")}
    if mod.operand is not None:  # multiply: lmul, both operands rounded to this minifloat
        formats["operand"] = mod.operand
    params = {"multiply": "exact" if mod.operand is None else "lmul", "accum_order": list(MATMUL_ORDER),
              "accum_exact": matmul_accum_is_exact(formats, k)}
    b.add(n, "matmul", path, prods, params=params, formats=formats)


def _permute(b: _Builder, n: fx.Node, mod: QPermute, path: str, prods: list[_Entry]) -> None:
    _no_1d(b, path, "permute")
    (prod,) = prods
    perm = mod.permutation(len(prod.output_shape) + 1)
    fmt = prod.formats["output"]
    b.add(n, "permute", path, prods, params={"dims": [d - 1 for d in perm[1:]]}, formats={"input": fmt, "output": fmt})


def _reshape(b: _Builder, n: fx.Node, mod: QReshape, path: str, prods: list[_Entry]) -> None:
    _no_1d(b, path, "reshape")
    fmt = prods[0].formats["output"]
    b.add(n, "reshape", path, prods, params={"shape": list(b.shape(n))}, formats={"input": fmt, "output": fmt})


def _upsample(b: _Builder, n: fx.Node, mod: QUpsample, path: str, prods: list[_Entry]) -> None:
    (prod,) = prods
    c, h, w = prod.output_shape if len(prod.output_shape) == 3 else (None, None, None)
    out = b.shape(n)
    if c is None or len(out) != 3:
        raise ExportError(f"layer {path!r} (QUpsample): only [N, C, L] and [N, C, H, W] tensors can be exported, "
                          f"got input {prod.output_shape}")
    if out[0] != c or out[1] % h or out[2] % w:  # pragma: no cover - QUpsample.forward checks the factors
        raise AssertionError(f"layer {path!r}: upsample {prod.output_shape} -> {out}")
    fmt = prod.formats["output"]
    b.add(n, "upsample", path, prods, params={"scale": [out[1] // h, out[2] // w]},
          formats={"input": fmt, "output": fmt})


def _binary(op: str) -> Callable:
    def handler(b: _Builder, n: fx.Node, mod: Any, path: str, prods: list[_Entry]) -> None:
        if len(prods) != 2:
            raise ExportError(f"layer {path!r}: {type(mod).__name__} needs two tensor operands, got {len(prods)}")
        formats = {k: mod.effective_format(k) for k in ("in_a", "in_b", "output")}
        b.add(n, op, path, prods, formats=formats)

    return handler


_HANDLERS: dict[type, Callable] = {
    QLinear: _dense,
    QConv2d: _conv,
    QBatchNorm2d: _batchnorm,
    QReLU: _elementwise("relu"),
    QReLU6: _elementwise("relu6"),
    QLeakyReLU: _elementwise("leaky_relu"),
    QAdd: _add,
    QMaxPool2d: _maxpool,
    QAvgPool2d: _avgpool,
    QFlatten: _flatten,
    QBatchNorm1d: _batchnorm,
    QGlobalAvgPool2d: _global_avgpool,
    QCat: _cat,
    QClamp: _clamp,
    QTable: _table,
    QSoftmax: _softmax,
    QSub: _binary("sub"),
    QMul: _binary("mul"),
    QZeroPad2d: lambda b, n, mod, path, prods: b.add(
        n, "pad", path, prods, params={"padding": [int(v) for v in mod.padding]},
        formats={"input": prods[0].formats["output"], "output": prods[0].formats["output"]}),
    QUpsample: _upsample,
    QLayerNorm: _layernorm,
    QMatMul: _matmul,
    QPermute: _permute,
    QReshape: _reshape,
}


def _build(model: nn.Module, example_input: torch.Tensor) -> tuple[fx.GraphModule, _Builder]:
    gm = _trace(model, example_input)
    b = _Builder(gm)
    b.build()
    for e in b.entries:  # export computes the same shapes the loader will check
        if e.op not in ("input",):
            want = list(infer_output_shape(e.op, _norm_params(e.params), e.input_shapes))
            if want != e.output_shape:  # pragma: no cover - a qfx bug, not a user error
                raise AssertionError(f"node {e.name}: shape {e.output_shape} vs inferred {want}")
    return gm, b


def _norm_params(p: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in p.items()}


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style for mappings, flow style for (nested) lists of scalars."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) or (isinstance(v, list) and all(not isinstance(u, (dict, list)) for u in v)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=not data)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(dict, _represent_dict)

_HEADER = f"""\
# qfx manifest, schema {SCHEMA} version {SCHEMA_VERSION} (see qfx/manifest.py).
# Nodes in topological order; shapes without the batch dimension. Arrays live in {TENSORS_FILE}:
# int64 codes, value = code * 2**-frac_bits of the named format; minifloat weights are bit patterns.
"""


def _qfx_version() -> str:
    import qfx  # late: qfx/__init__ may import this module before defining __version__

    return str(getattr(qfx, "__version__", "unknown"))


def _document(model_name: str, entries: list[_Entry]) -> tuple[str, dict[str, np.ndarray]]:
    nodes = []
    arrays: dict[str, np.ndarray] = {}
    for e in entries:
        keys = {}
        for role, a in e.arrays.items():
            key = f"{e.name}.{role}"
            arrays[key] = np.asarray(a, dtype=np.int64, order="C")
            keys[role] = key
        nodes.append(
            {
                "name": e.name,
                "op": e.op,
                "source": e.source,
                "inputs": list(e.inputs),
                "input_shapes": [list(s) for s in e.input_shapes],
                "output_shape": list(e.output_shape),
                "params": dict(e.params),
                "formats": {k: _fmt_text(v) for k, v in e.formats.items()},
                "arrays": keys,
            }
        )
    doc = {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "generator": f"qfx {_qfx_version()}",
        "model": model_name,
        "tensors": TENSORS_FILE,
        "input": next(e.name for e in entries if e.op == "input"),
        "output": next(e.name for e in entries if e.op == "output"),
        "nodes": nodes,
    }
    text = _HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=False)
    return text, arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An ``.npz`` readable by ``np.load``, byte-for-byte deterministic.

    Older ``np.savez`` versions stamp every zip entry with the current time
    (numpy 2.4 writes 1980-01-01); here each entry gets that fixed timestamp,
    fixed permissions and no compression, whatever the numpy version, and the
    keys are written in sorted order.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[key], order="C"), version=(1, 0), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, buf.getvalue())


def _check_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} exists and is not a folder; export writes a folder")
        if any(out_dir.iterdir()) and not force:
            raise FileExistsError(f"{out_dir} exists and is not empty; pass force=True to replace it")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(out_dir: Path, text: str, arrays: dict[str, np.ndarray], force: bool) -> None:
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    old: Path | None = None
    try:
        with open(tmp / MANIFEST_FILE, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        write_npz(tmp / TENSORS_FILE, arrays)
        with open(tmp / TENSORS_FILE, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        _check_target(out_dir, force)  # again: it may have appeared meanwhile
        if out_dir.exists() and any(out_dir.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
            os.replace(out_dir, old / "x")
        os.replace(tmp, out_dir)  # atomic; replaces an empty folder on POSIX
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "x").exists() and not out_dir.exists():
            os.replace(old / "x", out_dir)  # put the previous export back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def export(model: nn.Module, example_input: torch.Tensor, out_dir: "str | os.PathLike", *, force: bool = False) -> Path:
    """Write the manifest of a qfx model to ``out_dir`` (``manifest.yaml`` + ``tensors.npz``).

    Parameters
    ----------
    model : nn.Module
        Built from :mod:`qfx.nn` layers (Sequential or any module torch.fx
        can trace, e.g. a residual block with ``QAdd``). Not modified: a frozen
        deep copy in eval mode is exported.
    example_input : Tensor
        One batch (``[N, ...]``, float): fixes the shapes.
    out_dir : path
        The folder to create. Written atomically (temporary folder + rename).
    force : bool
        Replace an existing non-empty ``out_dir``.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    ExportError (ValueError)
        Unsupported modules or functions (named), ambiguous input format,
        un-calibrated learnable binary points.
    ValueError
        NaN/Inf weights, biases or BatchNorm statistics (the layer named).
    FileExistsError
        ``out_dir`` exists and is not empty, without ``force``.
    """
    out = Path(out_dir)
    _check_target(out, force)
    m = _prepare(model)
    _, b = _build(m, example_input)
    text, arrays = _document(type(model).__name__, b.entries)
    _write_atomic(out, text, arrays, force)
    return out


def emulate(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every manifest node's output in the PyTorch emulation, keyed by the node names export writes.

    Runs the same frozen eval-mode copy that :func:`export` traces, with the
    model input replaced by its quantized values (the first layers cast to
    that format anyway, so nothing downstream changes). Values are float
    tensors holding exact values of each node's ``output`` format.
    """
    m = _prepare(model)
    gm, b = _build(m, x)
    entry_of = {e.fx_node: e for e in b.entries}
    # an fx node that became several manifest nodes (QGlobalAvgPool2d then flatten): the earlier ones
    # hold the same values in their own shapes
    extra: dict[fx.Node, list[_Entry]] = {}
    for e in b.entries:
        if entry_of[e.fx_node] is not e:
            extra.setdefault(e.fx_node, []).append(e)
    out: dict[str, torch.Tensor] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            if n.op == "placeholder":
                e = entry_of[n]
                v = quantize(x, e.formats["output"])
                out[e.name] = v.reshape((v.shape[0], *e.output_shape))
                return v
            v = super().run_node(n)
            for e in extra.get(n, ()):
                out[e.name] = v.reshape((v.shape[0], *e.output_shape))
            if n in entry_of:
                e = entry_of[n]
                # the manifest's shape ([C, L] of a model with 1-D layers is [C, 1, L]: the same elements)
                out[e.name] = v.reshape((v.shape[0], *e.output_shape)) if e.op != "output" else out[e.inputs[0]]
            return v

    with torch.no_grad():
        rec = _Recorder(gm)
        rec.extra_traceback = False
        rec.run(x)
    return out
