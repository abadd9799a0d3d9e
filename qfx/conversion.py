"""Float model -> qfx model: trace with torch.fx and swap every layer for its qfx.nn version.

``qfx.convert(model, config)`` traces a float ``nn.Module`` (an ``nn.Sequential``,
or any module whose ``forward`` torch.fx can trace, residual adds written as
``a + b`` or ``torch.add(a, b)``) and returns a ``torch.fx.GraphModule`` in which

==============================================  ==============================================
float                                           qfx
==============================================  ==============================================
``nn.Linear``                                   :class:`qfx.nn.QLinear`
``nn.Conv2d``                                   :class:`qfx.nn.QConv2d`
``nn.BatchNorm2d``                              :class:`qfx.nn.QBatchNorm2d`, or folded into
                                                the preceding conv (``fold_bn: true``)
``nn.ReLU`` / ``F.relu`` / ``torch.relu``       :class:`qfx.nn.QReLU`
``nn.ReLU6``                                    :class:`qfx.nn.QReLU6`
``nn.LeakyReLU`` (slope ``2**-s``)              :class:`qfx.nn.QLeakyReLU`
``a + b`` / ``torch.add`` / ``a.add(b)``        :class:`qfx.nn.QAdd` (a new module)
``nn.MaxPool2d`` / ``nn.AvgPool2d``             :class:`qfx.nn.QMaxPool2d` / :class:`qfx.nn.QAvgPool2d`
``nn.Flatten`` / ``torch.flatten`` / ``.flatten``  :class:`qfx.nn.QFlatten`
``nn.BatchNorm1d`` ([N, C] or [N, C, L])         :class:`qfx.nn.QBatchNorm1d`
``nn.AdaptiveAvgPool2d(1)`` / ``x.mean((2, 3))``  :class:`qfx.nn.QGlobalAvgPool2d`
``torch.cat`` / ``torch.concat`` (dim=1)          :class:`qfx.nn.QCat`
``nn.Hardtanh`` / ``F.hardtanh``                  :class:`qfx.nn.QClamp`
``torch.clamp`` / ``x.clamp`` / ``torch.clip``    :class:`qfx.nn.QClamp` (constant bounds)
``a - b`` / ``torch.sub`` / ``a.sub(b)``          :class:`qfx.nn.QSub` (two tensors)
``a * b`` / ``torch.mul`` / ``a.mul(b)``          :class:`qfx.nn.QMul` (two tensors)
``nn.ZeroPad2d``                                  :class:`qfx.nn.QZeroPad2d` (no formats)
``nn.Upsample`` / ``F.interpolate``               :class:`qfx.nn.QUpsample` (no formats; ``mode='nearest'``,
(``nn.UpsamplingNearest2d``)                      integer scale factors)
``nn.Sigmoid`` / ``nn.Tanh`` / ``nn.SiLU`` /      :class:`qfx.nn.QSigmoid` / ``QTanh`` / ``QSiLU`` /
``nn.GELU`` / ``nn.Hardsigmoid`` /                ``QGELU`` / ``QHardsigmoid`` / ``QHardswish``
``nn.Hardswish`` (and their functions)            (lookup tables, :mod:`qfx.nn.table`)
``nn.Conv1d``                                     :class:`qfx.nn.QConv1d` (exported as a height-1 conv2d)
``nn.MaxPool1d`` / ``nn.AvgPool1d``               :class:`qfx.nn.QMaxPool1d` / :class:`qfx.nn.QAvgPool1d`
``nn.Softmax`` / ``F.softmax`` / ``x.softmax``    :class:`qfx.nn.QSoftmax` (one non-batch dim: ``[N, F]``,
                                                  the last dim of ``[N, T, S]``, the channels of ``[N, C, H, W]``;
                                                  exp table, exact sum and reciprocal, :mod:`qfx.nn.softmax`)
``a @ b`` / ``torch.matmul`` / ``torch.bmm`` /   :class:`qfx.nn.QMatMul` (two activations, equal leading
``a.matmul(b)`` / ``a.bmm(b)``                    dims; dense's accum / output casts)
``x.transpose`` / ``x.permute`` / ``x.mT`` /      :class:`qfx.nn.QPermute` (no formats; the batch dim stays)
``torch.transpose`` / ``torch.permute``
``x.reshape`` / ``x.view`` / ``torch.reshape``    :class:`qfx.nn.QReshape` (no formats; the batch dim given as -1)
``nn.MultiheadAttention`` (self-attention,      :class:`qfx.attention.MultiheadSelfAttention`: per-head
``batch_first=True``, no masks)                   Linear / matmul / softmax pieces, converted as above
``nn.Identity``, ``nn.Dropout*``                removed (the value passes through)
==============================================  ==============================================

Weights, biases and BatchNorm statistics are copied from the float model (the
float model itself is not modified). Anything else (other modules, functions,
methods, constants in additions) is an error naming each offending node and
listing what is supported.

Config (a YAML file path or a dict; DESIGN.md "Config")::

    fold_bn: false                 # optional: fold each BatchNorm2d into the conv feeding it
    drop_final_softmax: false      # optional: remove a Softmax that produces the model output
    default:                       # every key of qfx.nn.LayerConfig; a layer uses the keys it needs
      input:  ap_fixed<8,3,AP_RND,AP_SAT>
      weight: ap_fixed<8,1,AP_RND_CONV,AP_SAT>
      bias:   ap_fixed<16,6>
      accum:  auto
      output: ap_fixed<8,3,AP_RND,AP_SAT>
      learn_binary_point: true
    types:                         # optional: per layer kind (see KINDS), over default
      ReLU: {output: ap_ufixed<8,3,AP_RND,AP_SAT>}
    layers:                        # per layer, over types and default
      fc1: {weight: "khot<2,ap_fixed<8,1>>"}
      add: {output: ap_fixed<8,4,AP_RND,AP_SAT>}

Layer names are the module names of ``model.named_modules()`` (``fc1``,
``block.conv1``; for an ``nn.Sequential`` without names, ``0``, ``1``, ...).
Layers created from functions and operators take the torch.fx node name:
the first ``a + b`` is ``add``, the next ``add_1``, ``add_2``, ... in
execution order; likewise ``flatten``, ``relu``. :func:`layer_names` lists
the names (and kinds) of a model before converting it. A name in ``layers:``
that is not a layer of the model is a ``ValueError`` listing close names.

How the keys are used, per kind:

- ``Linear``, ``Conv2d``: ``input``, ``weight``, ``bias`` (if the layer has
  one), ``accum``, ``output`` and the options.
- ``BatchNorm2d``: ``input``, ``scale``, ``shift``, ``output``. Without a
  ``scale`` (``shift``) the ``weight`` (``bias``) format is used.
- ``add``: ``in_a`` and ``in_b`` (each defaulting to ``input``), ``output``.
- ``ReLU``, ``ReLU6``, ``LeakyReLU``: ``output``; an ``input`` cast only if it
  is given in ``types:`` or ``layers:`` (the ``default`` input is meant for
  the layers that read a new tensor; an activation takes the previous layer's
  output as it is).
- ``MaxPool2d``: no cast unless ``input``/``output`` are given in ``types:``
  or ``layers:`` (the maximum of quantized values is one of them).
- ``AvgPool2d``: ``input``, ``output``; ``reciprocal`` when the divisor is
  not a power of two.
- ``Flatten``: no formats.
- ``ZeroPad2d``, ``Upsample``: no formats (values pass unchanged). ``Upsample`` is ``nn.Upsample`` /
  ``nn.UpsamplingNearest2d`` / ``F.interpolate`` with ``mode='nearest'`` and an integer
  ``scale_factor`` (an int or a tuple of ints) or a ``size`` that is an integer multiple of the
  input's (checked at the first forward pass); anything else is an error naming the layer and
  the argument.
- ``BatchNorm1d``: as ``BatchNorm2d`` (never folded).
- ``LayerNorm`` (over the last dim): ``input``, ``mean``, ``var`` (unsigned), ``inv_std``
  (unsigned, ``AP_TRN``, ``AP_SAT``), ``output``; ``scale`` (gamma) with
  ``elementwise_affine``, ``shift`` (beta) with a bias (as ``BatchNorm2d``, falling back to
  ``weight`` / ``bias``); ``reciprocal`` when ``F`` is not a power of two. The integer rule is
  :mod:`qfx.layernorm`'s. ``normalized_shape`` over more than the last dim, ``eps <= 0`` are
  errors naming the layer.
- ``GlobalAvgPool2d``: ``input``, ``output``; ``reciprocal`` when ``H * W`` is
  not a power of two (known at the first forward pass; export names the layer).
- ``cat``: ``output``; every input is cast to it.
- ``matmul``: ``in_a``, ``in_b`` (each defaulting to ``input``), ``accum`` (``auto``: exact),
  ``output``; operands ``[N, .., T, K]`` and ``[N, .., K, S]`` with equal leading dims (checked at
  the first forward pass, naming the layer). ``multiply: lmul`` needs ``operand``, a minifloat
  (both operands are rounded to it, then multiplied by L-Mul).
- ``permute``, ``reshape``: no formats (codes move, nothing is cast). The batch dim must stay
  first (``permute``) / be given as ``-1`` (``reshape(-1, T, F)``).
- ``Hardtanh``, ``clamp``: ``output`` (the bounds are cast to it); an ``input``
  cast only from ``types:`` / ``layers:``, as for ``ReLU``.
- ``sub``, ``mul``: ``in_a``, ``in_b`` (each defaulting to ``input``), ``output``.
- ``Sigmoid``, ``Tanh``, ``SiLU``, ``GELU``, ``Hardsigmoid``, ``Hardswish`` (lookup
  tables): ``input`` (the ``default`` one too: the table is indexed by its codes),
  ``output``, ``table_size``, ``table_range``; their formats are never learned. A
  ``table_range`` the input format cannot cover is an error here, naming the layer.

- ``Softmax``: ``input`` (the ``default`` one too), ``output``, ``exp`` and ``reciprocal``
  (unsigned; only from ``types:`` / ``layers:``, else :data:`qfx.tables.SOFTMAX_EXP_DEFAULT` /
  ``SOFTMAX_RECIPROCAL_DEFAULT``: a ``default:`` reciprocal is the pools'), ``table_size``,
  ``table_range`` (of ``max - x``: ``R`` is ``[0, R)``); formats never learned. Over one
  non-batch ``dim`` (``-1``: the last dim of ``[N, F]`` / ``[N, T, S]`` / ``[N, H, T, S]``; ``1``:
  the features of ``[N, F]``, the channels of ``[N, C, H, W]``; the rank is checked at the
  first forward pass); a softmax over the batch dim (0), without a dim or with ``dtype=`` is
  an error naming the layer. Semantics: :mod:`qfx.nn.softmax`.

With ``drop_final_softmax: true`` a ``nn.Softmax`` / ``F.softmax`` / ``torch.softmax`` /
``x.softmax`` whose result is the model's output (and only that) is removed: the qfx
model (and the hardware) output the logits, whose argmax along the softmax dim is the
float model's (softmax is strictly increasing along its dim). ``meta["qfx"]
["dropped_softmax"]`` names it. Without the option (or for a softmax inside the model) it
becomes a :class:`qfx.nn.QSoftmax` layer.
- ``Conv1d``, ``MaxPool1d``, ``AvgPool1d``: as ``Conv2d``, ``MaxPool2d``, ``AvgPool2d``
  (the 1-D layers are those 2-D layers on ``[N, C, 1, L]``).

With ``fold_bn: true`` each ``BatchNorm2d`` fed by a ``Conv2d`` (and only by
it) is folded into that conv before quantization (:func:`qfx.nn.fold_batchnorm`,
running statistics); the folded conv gets a bias in the conv's ``bias``
format. The BN's name stays a valid ``layers:`` key but its entry has no
effect. BatchNorms not preceded by a conv stay :class:`qfx.nn.QBatchNorm2d`.

The result's ``meta["qfx"]`` records, per layer, its kind and the resolved
config (``LayerConfig.to_dict()``), and the folded BatchNorms.
"""

from __future__ import annotations

import copy
import difflib
import operator
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from . import nn as qnn
from .nn.config import FORMAT_KEYS, OPTION_KEYS, LayerConfig
from .types import FixedType, parse_type

__all__ = ["convert", "load_config", "layer_names", "KINDS", "DEFAULT_CONFIG", "ConversionError"]

#: The DESIGN.md example config, used by ``convert(model)`` without a config.
DEFAULT_CONFIG: dict[str, Any] = {
    "default": {
        "input": "ap_fixed<8,3,AP_RND,AP_SAT>",
        "weight": "ap_fixed<8,1,AP_RND_CONV,AP_SAT>",
        "bias": "ap_fixed<16,6>",
        "accum": "auto",
        "output": "ap_fixed<8,3,AP_RND,AP_SAT>",
        "learn_binary_point": True,
    }
}

#: Layer kinds (keys of a config's ``types:`` section) and what they come from.
KINDS: dict[str, str] = {
    "Linear": "nn.Linear",
    "Conv2d": "nn.Conv2d",
    "BatchNorm2d": "nn.BatchNorm2d",
    "ReLU": "nn.ReLU, F.relu, torch.relu, x.relu()",
    "ReLU6": "nn.ReLU6",
    "LeakyReLU": "nn.LeakyReLU with a power-of-two negative_slope",
    "add": "a + b, torch.add(a, b), a.add(b) on two tensors",
    "MaxPool2d": "nn.MaxPool2d",
    "AvgPool2d": "nn.AvgPool2d",
    "Flatten": "nn.Flatten, torch.flatten, x.flatten()",
    "BatchNorm1d": "nn.BatchNorm1d on [N, C] or [N, C, L]",
    "GlobalAvgPool2d": "nn.AdaptiveAvgPool2d(1) / ((1, 1)), x.mean((2, 3)) / mean(dim=(-2, -1)) on [N, C, H, W]",
    "cat": "torch.cat / torch.concat / torch.concatenate of two or more tensors along dim=1 (channels)",
    "Hardtanh": "nn.Hardtanh, F.hardtanh",
    "clamp": "torch.clamp, torch.clip, x.clamp(), x.clip() with constant min/max",
    "sub": "a - b, torch.sub(a, b), a.sub(b) on two tensors of the same shape",
    "mul": "a * b, torch.mul(a, b), a.mul(b) on two tensors of the same shape",
    "ZeroPad2d": "nn.ZeroPad2d (amounts >= 0)",
    "Upsample": "nn.Upsample, nn.UpsamplingNearest2d, F.interpolate with mode='nearest' and integer scale factors",
    "Sigmoid": "nn.Sigmoid, torch.sigmoid, F.sigmoid, x.sigmoid() (lookup table)",
    "Tanh": "nn.Tanh, torch.tanh, F.tanh, x.tanh() (lookup table)",
    "SiLU": "nn.SiLU, F.silu (lookup table)",
    "GELU": "nn.GELU, F.gelu with approximate='none' (lookup table)",
    "Hardsigmoid": "nn.Hardsigmoid, F.hardsigmoid (lookup table)",
    "Hardswish": "nn.Hardswish, F.hardswish (lookup table)",
    "Conv1d": "nn.Conv1d (padding_mode='zeros')",
    "MaxPool1d": "nn.MaxPool1d (return_indices=False)",
    "AvgPool1d": "nn.AvgPool1d (ceil_mode=False)",
    "Softmax": "nn.Softmax, F.softmax, torch.softmax, x.softmax() over one non-batch dim (dim=-1 of [N, F] / [N, T, S], dim=1 over the channels of [N, C, H, W]; exp table + exact reciprocal)",
    "LayerNorm": "nn.LayerNorm over the last dim (normalized_shape=(F,), eps > 0, elementwise_affine and bias True or False)",
    "matmul": "a @ b, torch.matmul, torch.bmm, a.matmul(b), a.bmm(b) of two activations [N, .., T, K] @ [N, .., K, S]",
    "permute": "x.transpose(i, j), x.permute(...), x.mT, torch.transpose, torch.permute keeping the batch dim first",
    "reshape": "x.reshape(-1, ...), x.view(-1, ...), torch.reshape(x, (-1, ...)) keeping the batch dim",
}
#: Lookup-table kinds -> their qfx.tables function.
_TABLE_KINDS = {"Sigmoid": "sigmoid", "Tanh": "tanh", "SiLU": "silu", "GELU": "gelu",
                "Hardsigmoid": "hardsigmoid", "Hardswish": "hardswish"}

_REMOVED = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_MODULE_KINDS: tuple[tuple[type, str], ...] = (
    (nn.Linear, "Linear"),
    (nn.Conv2d, "Conv2d"),
    (nn.BatchNorm2d, "BatchNorm2d"),
    (nn.ReLU, "ReLU"),
    (nn.ReLU6, "ReLU6"),
    (nn.LeakyReLU, "LeakyReLU"),
    (nn.MaxPool2d, "MaxPool2d"),
    (nn.AvgPool2d, "AvgPool2d"),
    (nn.Flatten, "Flatten"),
    (nn.BatchNorm1d, "BatchNorm1d"),
    (nn.AdaptiveAvgPool2d, "GlobalAvgPool2d"),
    (nn.Hardtanh, "Hardtanh"),  # after nn.ReLU6, a subclass of it
    (nn.ZeroPad2d, "ZeroPad2d"),
    (nn.Upsample, "Upsample"),  # nn.UpsamplingNearest2d too (a subclass; UpsamplingBilinear2d is refused by mode)
    (nn.Sigmoid, "Sigmoid"),
    (nn.Tanh, "Tanh"),
    (nn.SiLU, "SiLU"),
    (nn.GELU, "GELU"),
    (nn.Hardsigmoid, "Hardsigmoid"),
    (nn.Hardswish, "Hardswish"),
    (nn.Conv1d, "Conv1d"),
    (nn.MaxPool1d, "MaxPool1d"),
    (nn.AvgPool1d, "AvgPool1d"),
    (nn.LayerNorm, "LayerNorm"),
)
_FUNCTION_KINDS = {
    operator.add: "add",
    operator.iadd: "add",
    torch.add: "add",
    torch.flatten: "Flatten",
    torch.relu: "ReLU",
    F.relu: "ReLU",
    operator.sub: "sub",
    torch.sub: "sub",
    operator.mul: "mul",
    torch.mul: "mul",
    torch.cat: "cat",
    torch.concat: "cat",
    torch.concatenate: "cat",
    torch.mean: "GlobalAvgPool2d",
    torch.clamp: "clamp",
    torch.clip: "clamp",
    F.hardtanh: "Hardtanh",
    torch.sigmoid: "Sigmoid",
    F.sigmoid: "Sigmoid",
    torch.tanh: "Tanh",
    F.tanh: "Tanh",
    F.silu: "SiLU",
    F.gelu: "GELU",
    F.hardsigmoid: "Hardsigmoid",
    F.hardswish: "Hardswish",
    F.interpolate: "Upsample",
    operator.matmul: "matmul",
    torch.matmul: "matmul",
    torch.bmm: "matmul",
    torch.transpose: "permute",
    torch.permute: "permute",
    torch.reshape: "reshape",
    getattr: "permute",  # x.mT (other attributes are refused in _check_call)
}
_METHOD_KINDS = {"add": "add", "add_": "add", "flatten": "Flatten", "relu": "ReLU", "relu_": "ReLU",
                 "sub": "sub", "mul": "mul", "mean": "GlobalAvgPool2d", "clamp": "clamp", "clip": "clamp",
                 "sigmoid": "Sigmoid", "tanh": "Tanh", "matmul": "matmul", "bmm": "matmul", "transpose": "permute",
                 "permute": "permute", "reshape": "reshape", "view": "reshape"}
#: Kinds whose input (and, for max pooling, output) cast comes only from types:/layers:.
_PASS_THROUGH_INPUT = ("ReLU", "ReLU6", "LeakyReLU", "MaxPool2d", "MaxPool1d", "Hardtanh", "clamp")
_TOP_KEYS = ("default", "types", "layers", "fold_bn", "drop_final_softmax")
_SOFTMAX_FUNCTIONS = (F.softmax, torch.softmax)


class ConversionError(ValueError):
    """A model or config qfx cannot convert (a ``ValueError``)."""


def _supported_text() -> str:
    rows = [f"  {kind:<16} {src}" for kind, src in KINDS.items()]
    rows.append("  (removed)        nn.Identity, nn.Dropout, nn.Dropout1d/2d/3d, nn.AlphaDropout")
    return "supported:\n" + "\n".join(rows)


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


def load_config(config: "str | Path | Mapping[str, Any] | None") -> dict[str, Any]:
    """Read and check the top level of a quantization config (path to YAML, or mapping).

    Returns a dict with ``default``, ``types``, ``layers`` (dicts) and
    ``fold_bn`` (bool). A mapping with a ``quant:`` section and no
    ``default:`` (a whole ``qfx train`` run config) is accepted: its
    ``quant`` section is used. ``None`` gives :data:`DEFAULT_CONFIG`.
    """
    if config is None:
        raw: Any = copy.deepcopy(DEFAULT_CONFIG)
    elif isinstance(config, (str, Path)):
        import yaml

        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConversionError(f"config file {str(path)!r} is not valid YAML: {err}") from None
        if raw is None:
            raw = {}
    elif isinstance(config, Mapping):
        raw = copy.deepcopy(dict(config))
    else:
        raise TypeError(f"config must be a YAML path, a dict or None, not {type(config).__name__}")
    if not isinstance(raw, Mapping):
        raise ConversionError(f"a config must be a mapping with {', '.join(_TOP_KEYS)}; got {type(raw).__name__}")
    if "quant" in raw and "default" not in raw:
        raw = raw["quant"]
        if not isinstance(raw, Mapping):
            raise ConversionError("the config's 'quant' section must be a mapping")
    unknown = sorted(str(k) for k in raw if k not in _TOP_KEYS)
    if unknown:
        hints = [
            f"{k!r} (did you mean {difflib.get_close_matches(k, _TOP_KEYS, n=1)[0]!r}?)"
            if difflib.get_close_matches(k, _TOP_KEYS, n=1)
            else repr(k)
            for k in unknown
        ]
        raise ConversionError(
            f"unknown top-level config keys {', '.join(hints)}; valid: {', '.join(_TOP_KEYS)}"
            " (layer formats go under 'default:' or 'layers:')"
        )
    out: dict[str, Any] = {"default": {}, "types": {}, "layers": {}, "fold_bn": False, "drop_final_softmax": False}
    for key in ("default", "types", "layers"):
        section = raw.get(key) or {}
        if not isinstance(section, Mapping):
            raise ConversionError(f"config section {key!r} must be a mapping, not {type(section).__name__}")
        out[key] = {str(k): v for k, v in section.items()}
    fold = raw.get("fold_bn", False)
    if not isinstance(fold, bool):
        raise ConversionError(f"fold_bn must be true or false, not {fold!r}")
    out["fold_bn"] = fold
    drop = raw.get("drop_final_softmax", False)
    if not isinstance(drop, bool):
        raise ConversionError(f"drop_final_softmax must be true or false, not {drop!r}")
    out["drop_final_softmax"] = drop
    _check_keys("default", out["default"])
    for kind, entry in out["types"].items():
        if kind not in KINDS:
            close = difflib.get_close_matches(kind, KINDS, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConversionError(f"unknown layer kind {kind!r} in 'types'{hint}; kinds: {', '.join(KINDS)}")
        _check_keys(f"types.{kind}", entry)
    for name, entry in out["layers"].items():
        _check_keys(f"layers.{name}", entry)
    return out


def _check_keys(where: str, entry: Any) -> None:
    if entry is None:
        return
    if not isinstance(entry, Mapping):
        raise ConversionError(f"config entry {where!r} must be a mapping of layer config keys, not {entry!r}")
    valid = FORMAT_KEYS + OPTION_KEYS
    bad = [str(k) for k in entry if k not in valid]
    if bad:
        hints = []
        for k in bad:
            close = difflib.get_close_matches(k, valid, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConversionError(f"config entry {where!r}: unknown keys {', '.join(hints)}; valid keys: {', '.join(valid)}")
    try:
        LayerConfig.from_dict(entry)  # parses every format once, so errors name the section
    except (ValueError, TypeError) as err:
        raise ConversionError(f"config entry {where!r}: {err}") from None


def _resolve(cfg: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    """The merged layer config dict: default < types[kind] < layers[name], with the kind's rules."""
    explicit = {**(cfg["types"].get(kind) or {}), **(cfg["layers"].get(name) or {})}
    merged = {**cfg["default"], **explicit}
    if kind in _PASS_THROUGH_INPUT and "input" not in explicit:
        merged.pop("input", None)
    if kind in ("MaxPool2d", "MaxPool1d") and "output" not in explicit:
        merged.pop("output", None)
    if kind == "Softmax":  # its own exp / reciprocal formats (a default reciprocal is the pools')
        for key in ("exp", "reciprocal"):
            if key not in explicit:
                merged.pop(key, None)
    if kind in ("BatchNorm2d", "BatchNorm1d", "LayerNorm"):
        for key, fallback in (("scale", "weight"), ("shift", "bias")):
            if merged.get(key) is None and merged.get(fallback) is not None:
                fmt = merged[fallback]
                fmt_obj = parse_type(fmt) if isinstance(fmt, str) else fmt
                if not isinstance(fmt_obj, FixedType):
                    raise ConversionError(
                        f"layer {name!r} ({kind}) has no {key!r} format and its {fallback!r} format "
                        f"{fmt} is not fixed point; give one, e.g. types: {{{kind}: {{{key}: 'ap_fixed<8,2,AP_RND,AP_SAT>'}}}}"
                    )
                merged[key] = fmt
    return merged


# ---------------------------------------------------------------------------
# Tracing and classification
# ---------------------------------------------------------------------------


def _trace(model: nn.Module) -> fx.GraphModule:
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert needs a torch.nn.Module, not {type(model).__name__}")
    quantized = [n or type(model).__name__ for n, m in model.named_modules() if isinstance(m, qnn.QuantizedModule)]
    if quantized:
        raise ConversionError(
            f"the model already contains qfx layers ({', '.join(quantized[:5])}); convert takes a float model"
        )
    root = copy.deepcopy(model)
    # nn.MultiheadAttention is opaque to torch.fx: the qfx attention block computes it from
    # linear / matmul / softmax pieces that are quantized one by one (qfx.attention)
    from qfx.attention import AttentionError, expand_multihead_attention

    try:
        expand_multihead_attention(root)
    except AttentionError as err:
        raise ConversionError(str(err)) from None
    try:
        graph = fx.Tracer().trace(root)
    except AttentionError as err:  # a call of the attention block it cannot express (masks, cross-attention)
        raise ConversionError(str(err)) from None
    except Exception as err:  # torch.fx raises many types (TraceError, TypeError, ...)
        raise ConversionError(
            f"torch.fx could not trace {type(model).__name__}.forward: {type(err).__name__}: {err}. "
            "qfx.convert needs a forward without data-dependent control flow"
        ) from err
    return fx.GraphModule(root, graph, class_name=f"Q{type(model).__name__}")


def _module_kind(m: nn.Module) -> "str | None":
    if isinstance(m, _REMOVED):
        return "removed"
    for cls, kind in _MODULE_KINDS:
        if isinstance(m, cls):
            return kind
    return None


def _fn_name(target: Any) -> str:
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    return f"{mod}.{name}" if mod else name


def _softmax_problem(gm: fx.GraphModule, node: fx.Node) -> "str | None":
    """None: not a softmax; "": a softmax producing the model output (droppable); else the problem."""
    if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Softmax):
        dim, label = gm.get_submodule(node.target).dim, f"module {node.target!r} (Softmax)"
    elif node.op == "call_function" and node.target in _SOFTMAX_FUNCTIONS:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        label = f"{_fn_name(node.target)} (node {node.name!r})"
    elif node.op == "call_method" and node.target == "softmax":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        label = f"method .softmax() (node {node.name!r})"
    else:
        return None
    if isinstance(dim, bool) or not isinstance(dim, int) or dim == 0:
        from .nn.softmax import DIM_RULE

        return f"{label}: argument dim={dim!r} is not supported; {DIM_RULE}"
    extra = {k: v for k, v in node.kwargs.items() if k not in ("dim", "_stacklevel", "dtype") or
             (k == "dtype" and v is not None)}
    if len(node.args) > 2 or extra:
        return f"{label}: unsupported arguments {sorted(extra) or list(node.args[2:])}; supported: dim (an int, not 0)"
    return ""


def _classify(gm: fx.GraphModule) -> tuple[dict[fx.Node, str], dict[str, str]]:
    """``({node: kind}, {layer name: kind})``; raises for anything unsupported (all at once)."""
    node_kind: dict[fx.Node, str] = {}
    names: dict[str, str] = {}
    problems: list[str] = []
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        why = _softmax_problem(gm, node)
        if why is not None:
            if why:
                problems.append(why)
            else:
                final = all(u.op == "output" for u in node.users)
                node_kind[node] = "final_softmax" if final else "Softmax"
                label = node.target if node.op == "call_module" else node.name
                names[label] = "Softmax"
            continue
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            kind = _module_kind(m)
            if kind is None:
                problems.append(f"module {node.target!r} ({type(m).__module__}.{type(m).__name__})")
                continue
            calls[node.target] = calls.get(node.target, 0) + 1
            if kind in ("Linear", "Conv2d", "Conv1d", "BatchNorm2d", "BatchNorm1d") and calls[node.target] > 1:
                problems.append(
                    f"module {node.target!r} ({kind}) is called more than once; qfx needs one call per "
                    "layer with weights (each call is a hardware instance): use separate modules"
                )
                continue
            if kind in ("MaxPool2d", "MaxPool1d") and m.return_indices:
                problems.append(f"module {node.target!r} ({kind} with return_indices=True)")
                continue
            if kind == "GELU" and m.approximate != "none":
                problems.append(f"module {node.target!r} (GELU): approximate={m.approximate!r} is not supported; "
                                "only approximate='none' (the table is of the exact erf GELU)")
                continue
            if kind == "GlobalAvgPool2d" and m.output_size not in (1, (1, 1), [1, 1]):
                problems.append(f"module {node.target!r} (AdaptiveAvgPool2d): output_size {m.output_size!r} is not "
                                "supported; only 1 or (1, 1) (global average pooling)")
                continue
            if kind == "LayerNorm":
                why = qnn.layernorm_problem(m.normalized_shape, m.eps, m.elementwise_affine)
                if why:
                    problems.append(f"module {node.target!r} (LayerNorm): {why}")
                    continue
                if calls[node.target] > 1:
                    problems.append(f"module {node.target!r} (LayerNorm) is called more than once; qfx needs one call "
                                    "per layer with weights (each call is a hardware instance): use separate modules")
                    continue
            if kind == "Upsample":
                why = qnn.upsample_problem(m.size, m.scale_factor, m.mode, m.align_corners)
                if why:
                    problems.append(f"module {node.target!r} (Upsample): {why}")
                    continue
            node_kind[node] = kind
            if kind != "removed":
                names[node.target] = kind
            continue
        if node.op in ("call_function", "call_method"):
            table = _FUNCTION_KINDS if node.op == "call_function" else _METHOD_KINDS
            kind = table.get(node.target)
            label = _fn_name(node.target) if node.op == "call_function" else f"method .{node.target}()"
            if kind is None:
                problems.append(f"{label} (node {node.name!r})")
                continue
            why = _check_call(node, kind)
            if why:
                problems.append(f"{label} (node {node.name!r}): {why}")
                continue
            node_kind[node] = kind
            names[node.name] = kind
            continue
        # get_attr: a parameter or buffer used directly in forward
        problems.append(f"{node.op} {node.target!r} (node {node.name!r}): parameters used outside a supported layer")
    if problems:
        raise ConversionError(
            "qfx.convert cannot convert:\n  - " + "\n  - ".join(problems) + "\n" + _supported_text()
        )
    return node_kind, names


_SPATIAL_DIMS = ({2, 3}, {-2, -1})


def _mean_args(node: fx.Node) -> "tuple[object, object, dict]":
    args, kwargs = list(node.args), dict(node.kwargs)
    dim = args[1] if len(args) > 1 else kwargs.pop("dim", None)
    keepdim = args[2] if len(args) > 2 else kwargs.pop("keepdim", False)
    kwargs.pop("dim", None)
    kwargs.pop("keepdim", None)
    return dim, keepdim, kwargs


def _clamp_args(node: fx.Node, kind: str) -> "tuple[object, object, dict]":
    args, kwargs = list(node.args), dict(node.kwargs)
    lo_key, hi_key, lo0, hi0 = ("min_val", "max_val", -1.0, 1.0) if kind == "Hardtanh" else ("min", "max", None, None)
    lo = args[1] if len(args) > 1 else kwargs.pop(lo_key, lo0)
    hi = args[2] if len(args) > 2 else kwargs.pop(hi_key, hi0)
    kwargs.pop(lo_key, None)
    kwargs.pop(hi_key, None)
    if kind == "Hardtanh":
        if len(args) > 3:
            kwargs["inplace"] = args[3]
        kwargs.pop("inplace", None)
    return lo, hi, kwargs


def _cat_args(node: fx.Node) -> "tuple[object, object, dict]":
    args, kwargs = list(node.args), dict(node.kwargs)
    tensors = args[0] if args else kwargs.pop("tensors", None)
    dim = args[1] if len(args) > 1 else kwargs.pop("dim", kwargs.pop("axis", 0))
    kwargs.pop("dim", None)
    return tensors, dim, kwargs


_INTERPOLATE_ARGS = ("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias")
_INTERPOLATE_DEFAULTS = {"size": None, "scale_factor": None, "mode": "nearest", "align_corners": None,
                         "recompute_scale_factor": None, "antialias": False}


def _interpolate_args(node: fx.Node) -> dict:
    """F.interpolate's arguments by name (defaults filled in); unknown keywords under their own names."""
    out = dict(_INTERPOLATE_DEFAULTS)
    for key, v in zip(_INTERPOLATE_ARGS, node.args):
        out[key] = v
    out.update(node.kwargs)
    return out


def _shape_args(node: fx.Node, kind: str) -> "tuple[tuple | None, str | None]":
    """``(ints, None)``: the constant dims of a permute / transpose / reshape call (for ``.mT``,
    ``(-2, -1)`` as a transpose); ``(None, why)`` when they are not constants."""
    args, kwargs = list(node.args), dict(node.kwargs)
    if node.target is getattr:
        if len(args) == 2 and args[1] == "mT":
            return (-2, -1), None
        return None, (f"attribute .{args[1] if len(args) > 1 else '?'} is not supported (of tensor attributes only .mT, "
                      "a transpose of the last two dims; a shape computed in forward is not supported)")
    rest = args[1:]
    key = {"permute": "dims", "reshape": "shape"}.get(kind)
    if kind == "permute" and node.target in ("transpose", torch.transpose):
        rest = rest + [kwargs.pop(k) for k in ("dim0", "dim1") if k in kwargs]
    elif not rest and kwargs:
        rest = [kwargs.pop(key if key in kwargs else "size", None)]
    if kwargs:
        return None, f"unsupported arguments {sorted(kwargs)}"
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = list(rest[0])
    if not rest or any(isinstance(v, bool) or not isinstance(v, int) for v in rest):
        return None, (f"the dims {rest!r} must be constant ints (a shape computed in forward, e.g. x.size(0), is not "
                      "supported; give the batch dim as -1)")
    return tuple(rest), None


def _check_call(node: fx.Node, kind: str) -> "str | None":
    args, kwargs = list(node.args), dict(node.kwargs)
    if kind in ("permute", "reshape"):
        dims, why = _shape_args(node, kind)
        if why:
            return why
        if not (args and isinstance(args[0], fx.Node)):
            return "needs a tensor argument"
        if kind == "permute" and node.target in ("transpose", torch.transpose) and len(dims) != 2:
            return f"transpose takes two dims, got {list(dims)}"
        if kind == "reshape":
            try:
                qnn.QReshape(dims)
            except ValueError as err:
                return str(err).split(": ", 1)[1]
        return None
    if kind == "matmul":
        if kwargs or len(args) != 2 or not all(isinstance(a, fx.Node) for a in args):
            return "only the product of two tensors is supported (no out= or other arguments)"
        return None
    if kind == "Upsample":
        a = _interpolate_args(node)
        extra = sorted(k for k in a if k not in _INTERPOLATE_ARGS)
        if extra:
            return f"unsupported arguments {extra}; supported: size, scale_factor, mode='nearest'"
        if not isinstance(a.get("input"), fx.Node):
            return "needs a tensor argument"
        for key in ("size", "scale_factor"):
            v = a[key]
            if isinstance(v, fx.Node) or (isinstance(v, (tuple, list)) and any(isinstance(u, fx.Node) for u in v)):
                return (f"argument {key} is computed in forward; only constants are supported (integer scale factors, "
                        "or a size that is an integer multiple of the input)")
        return qnn.upsample_problem(a["size"], a["scale_factor"], a["mode"], a["align_corners"], a["antialias"])
    if kind in _TABLE_KINDS:
        if kind == "GELU":
            approx = args[1] if len(args) > 1 else kwargs.pop("approximate", "none")
            kwargs.pop("approximate", None)
            if approx != "none":
                return f"argument approximate={approx!r} is not supported; only 'none' (the table is of the exact erf GELU)"
        elif kind in ("SiLU", "Hardsigmoid", "Hardswish"):
            if len(args) > 1:
                kwargs["inplace"] = args[1]
            kwargs.pop("inplace", None)
        if kwargs or len(args) > 2 or (len(args) == 2 and kind in ("Sigmoid", "Tanh")):
            return f"unsupported arguments {sorted(kwargs) or args[1:]}; supported: one tensor"
        if not (args and isinstance(args[0], fx.Node)):
            return "needs a tensor argument"
        return None
    if kind in ("sub", "mul"):
        alpha = kwargs.pop("alpha", 1)
        if kind == "sub" and len(args) > 2:
            alpha = args[2]
        if alpha != 1:
            return "alpha != 1 is not supported"
        other = args[1] if len(args) > 1 else kwargs.pop("other", None)
        kwargs.pop("other", None)
        if kwargs:
            return f"unsupported keyword arguments {sorted(kwargs)}; supported: two tensor operands"
        if not (isinstance(args[0], fx.Node) and isinstance(other, fx.Node)):
            return (f"argument 'other' is a constant; only the {'difference' if kind == 'sub' else 'product'} of two "
                    "tensors of the same shape is supported")
        return None
    if kind == "GlobalAvgPool2d":
        dim, keepdim, rest = _mean_args(node)
        if rest:
            return f"unsupported arguments {sorted(rest)}; supported: dim=(2, 3) or (-2, -1), keepdim"
        dims = set(dim) if isinstance(dim, (tuple, list)) and all(isinstance(d, int) for d in dim) else None
        if dims is None or len(dims) != len(dim) or dims not in _SPATIAL_DIMS:
            return (f"argument dim={dim!r} is not supported; only the mean over the spatial dims of [N, C, H, W]: "
                    "dim=(2, 3) or (-2, -1) (global average pooling)")
        if not isinstance(keepdim, bool):
            return f"argument keepdim={keepdim!r} must be a constant True or False"
        return None
    if kind in ("clamp", "Hardtanh"):
        lo, hi, rest = _clamp_args(node, kind)
        if rest:
            return f"unsupported arguments {sorted(rest)}; supported: constant min / max"
        for label, v in (("min", lo), ("max", hi)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                return f"argument {label}={v!r} is not supported; only constant numbers (or None) as bounds"
        if lo is None and hi is None:
            return "needs a min or a max bound"
        return None
    if kind == "cat":
        tensors, dim, rest = _cat_args(node)
        if rest:
            return f"unsupported arguments {sorted(rest)}; supported: a list of tensors and dim=1"
        if not isinstance(tensors, (list, tuple)) or len(tensors) < 2 or not all(isinstance(t, fx.Node) for t in tensors):
            return "argument tensors must be a list of two or more tensors"
        if isinstance(dim, bool) or not isinstance(dim, int) or dim == 0 or dim > 1:
            return (f"argument dim={dim!r} is not supported; only the channel dim, dim=1 (a negative dim is checked "
                    "to be the channel dim at export)")
        return None
    if kind == "add":
        alpha = kwargs.pop("alpha", 1)
        if len(args) > 2:
            alpha = args[2]
        if alpha != 1:
            return "alpha != 1 is not supported"
        other = args[1] if len(args) > 1 else kwargs.pop("other", None)
        kwargs.pop("other", None)
        if kwargs:
            return f"unsupported keyword arguments {sorted(kwargs)}"
        if not (isinstance(args[0], fx.Node) and isinstance(other, fx.Node)):
            return "only the sum of two tensors is supported (not a constant)"
        if args[0] is other:
            return None
        return None
    if kind == "ReLU":
        inplace = kwargs.pop("inplace", False)
        if kwargs or len(args) > 2 or (len(args) == 2 and not isinstance(args[1], bool)):
            return "unsupported arguments"
        del inplace
        return None
    if kind == "Flatten":
        dims = args[1:] + [kwargs.pop("start_dim", None), kwargs.pop("end_dim", None)]
        if kwargs or any(isinstance(d, fx.Node) for d in dims) or len(args) > 3:
            return "start_dim and end_dim must be constants"
        return None
    return None


def _flatten_dims(node: fx.Node) -> tuple[int, int]:
    args, kwargs = list(node.args), dict(node.kwargs)
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
    return int(start), int(end)


def layer_names(model: nn.Module) -> dict[str, str]:
    """``{layer name: kind}`` of the layers :func:`convert` would create (config ``layers:`` keys).

    Identity and Dropout modules, which are removed, are not listed.
    """
    _, names = _classify(_trace(model))
    return names


# ---------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------


def _build(kind: str, float_module: "nn.Module | None", node: fx.Node, cfg: LayerConfig) -> nn.Module:
    m = float_module
    if kind == "Linear":
        return qnn.QLinear.from_float(m, config=cfg)
    if kind == "Conv2d":
        return qnn.QConv2d.from_float(m, config=cfg)
    if kind == "BatchNorm2d":
        return qnn.QBatchNorm2d.from_float(m, config=cfg)
    if kind == "ReLU":
        return qnn.QReLU(config=cfg)
    if kind == "ReLU6":
        return qnn.QReLU6(config=cfg)
    if kind == "LeakyReLU":
        return qnn.QLeakyReLU(m.negative_slope, config=cfg)
    if kind == "MaxPool2d":
        return qnn.QMaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, config=cfg)
    if kind == "AvgPool2d":
        return qnn.QAvgPool2d(
            m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override, config=cfg
        )
    if kind == "Flatten":
        if m is not None:
            return qnn.QFlatten(m.start_dim, m.end_dim)
        return qnn.QFlatten(*_flatten_dims(node))
    if kind == "add":
        return qnn.QAdd(config=cfg)
    if kind == "sub":
        return qnn.QSub(config=cfg)
    if kind == "mul":
        return qnn.QMul(config=cfg)
    if kind == "BatchNorm1d":
        return qnn.QBatchNorm1d.from_float(m, config=cfg)
    if kind == "LayerNorm":
        return qnn.QLayerNorm.from_float(m, config=cfg)
    if kind == "GlobalAvgPool2d":
        keepdim = True if m is not None else _mean_args(node)[1]
        return qnn.QGlobalAvgPool2d(bool(keepdim), config=cfg)
    if kind in ("Hardtanh", "clamp"):
        lo, hi = (m.min_val, m.max_val) if m is not None else _clamp_args(node, kind)[:2]
        return qnn.QClamp(lo, hi, config=cfg)
    if kind == "cat":
        return qnn.QCat(int(_cat_args(node)[1]), config=cfg)
    if kind == "ZeroPad2d":
        return qnn.QZeroPad2d(tuple(m.padding))
    if kind == "Upsample":
        if m is not None:
            return qnn.QUpsample(m.size, m.scale_factor, m.mode, m.align_corners, name=str(node.target))
        a = _interpolate_args(node)
        return qnn.QUpsample(a["size"], a["scale_factor"], a["mode"], a["align_corners"], name=node.name)
    if kind == "matmul":
        return qnn.QMatMul(config=cfg, name=node.name)
    if kind == "permute":
        dims, _ = _shape_args(node, kind)
        if node.target is getattr or node.target in ("transpose", torch.transpose):
            return qnn.QPermute(transpose=dims, name=node.name)
        return qnn.QPermute(dims, name=node.name)
    if kind == "reshape":
        return qnn.QReshape(_shape_args(node, kind)[0], name=node.name)
    if kind == "Conv1d":
        return qnn.QConv1d.from_float(m, config=cfg)
    if kind == "MaxPool1d":
        return qnn.QMaxPool1d(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, config=cfg)
    if kind == "AvgPool1d":
        return qnn.QAvgPool1d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, config=cfg)
    if kind in _TABLE_KINDS:
        return getattr(qnn, "Q" + kind)(config=cfg)  # QSigmoid, QTanh, ..., qfx.nn.table
    if kind == "Softmax":
        if m is not None:
            return qnn.QSoftmax(m.dim, config=cfg, name=str(node.target))
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return qnn.QSoftmax(dim, config=cfg, name=node.name)
    raise AssertionError(kind)  # pragma: no cover


def convert(
    model: nn.Module,
    config: "str | Path | Mapping[str, Any] | None" = None,
    *,
    fold_bn: "bool | None" = None,
    drop_final_softmax: "bool | None" = None,
) -> fx.GraphModule:
    """A qfx model computing ``model`` with the formats of ``config`` (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        The float model (left unchanged). Its train/eval mode is kept.
    config : str, Path, dict or None
        The quantization config (YAML path or mapping); ``None`` uses
        :data:`DEFAULT_CONFIG`.
    fold_bn : bool, optional
        Overrides the config's ``fold_bn``.
    drop_final_softmax : bool, optional
        Overrides the config's ``drop_final_softmax``.

    Returns
    -------
    torch.fx.GraphModule
        Submodules at the float model's module names (``add``-style names for
        function calls); ``meta["qfx"]`` holds the resolved per-layer configs.

    Raises
    ------
    ValueError (:class:`ConversionError`)
        Unsupported modules or functions (all listed), unknown layer names
        or kinds in the config (with close matches), invalid formats (with
        the layer name).
    """
    cfg = load_config(config)
    if fold_bn is not None:
        cfg["fold_bn"] = bool(fold_bn)
    if drop_final_softmax is not None:
        cfg["drop_final_softmax"] = bool(drop_final_softmax)
    gm = _trace(model)
    node_kind, names = _classify(gm)
    unknown = [n for n in cfg["layers"] if n not in names]
    if unknown:
        lines = []
        for n in unknown:
            close = difflib.get_close_matches(n, names, n=3, cutoff=0.5)
            lines.append(f"{n!r}" + (f" (close: {', '.join(close)})" if close else ""))
        raise ConversionError(
            f"config 'layers' names {len(unknown)} layer(s) the model does not have: {'; '.join(lines)}. "
            f"Layers of {type(model).__name__}: {', '.join(names)}"
        )

    graph = gm.graph
    folded: dict[str, str] = {}
    if cfg["fold_bn"]:
        for node in list(graph.nodes):
            if node_kind.get(node) != "BatchNorm2d":
                continue
            src = node.args[0]
            if isinstance(src, fx.Node) and node_kind.get(src) == "Conv2d" and len(src.users) == 1:
                folded[node.target] = src.target

    layers_meta: dict[str, dict[str, Any]] = {}
    dropped: list[str] = []

    def layer_config(kind: str, name: str) -> LayerConfig:
        try:
            return LayerConfig.from_dict(_resolve(cfg, kind, name))
        except (ValueError, TypeError) as err:
            raise ConversionError(f"layer {name!r} ({kind}): {err}") from None

    conv_for_bn = {conv: bn for bn, conv in folded.items()}
    device = next((t.device for t in list(model.parameters()) + list(model.buffers())), None)
    for node in list(graph.nodes):
        kind = node_kind.get(node)
        if kind is None:
            continue
        if kind == "removed":
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            continue
        if kind == "final_softmax" and cfg["drop_final_softmax"]:
            label = node.target if node.op == "call_module" else node.name
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            dropped.append(label)
            continue
        if kind == "final_softmax":
            kind = "Softmax"
        if node.op == "call_module":
            name = node.target
            if kind == "BatchNorm2d" and name in folded:
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
                continue
            float_m = gm.get_submodule(name)
            lcfg = layer_config(kind, name)
            try:
                if kind == "Conv2d" and name in conv_for_bn:
                    bn = gm.get_submodule(conv_for_bn[name])
                    q = qnn.fold_batchnorm(qnn.QConv2d.from_float(float_m, config=lcfg), bn)
                    q.train(float_m.training)
                else:
                    q = _build(kind, float_m, node, lcfg)
            except (ValueError, TypeError) as err:
                raise ConversionError(f"layer {name!r} ({kind}): {err}") from None
            if kind == "LayerNorm":
                q.layer = name  # its forward / export errors name the layer
            q.train(float_m.training)
            gm.add_submodule(name, q.to(device) if device is not None else q)
        else:
            name = node.name
            if hasattr(gm, name):
                raise ConversionError(
                    f"the model has an attribute {name!r}, the name torch.fx gives the {kind} node "
                    f"{node.format_node()}; rename that attribute"
                )
            lcfg = layer_config(kind, name)
            try:
                q = _build(kind, None, node, lcfg)
            except (ValueError, TypeError) as err:
                raise ConversionError(f"layer {name!r} ({kind}): {err}") from None
            q.train(model.training)
            gm.add_submodule(name, q.to(device) if device is not None else q)
            x = node.args[0] if node.args else None
            if kind in ("add", "sub", "mul"):
                other = node.args[1] if len(node.args) > 1 else node.kwargs["other"]
                node.args = (x, other)
            elif kind == "matmul":
                node.args = (node.args[0], node.args[1])
            elif kind == "cat":
                node.args = tuple(_cat_args(node)[0])
            elif kind == "Upsample":
                node.args = (_interpolate_args(node)["input"],)
            else:
                node.args = (x,)
            node.kwargs = {}
            node.op = "call_module"
            node.target = name
        layers_meta[name] = {"kind": kind, "config": lcfg.to_dict()}
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.train(model.training)
    gm.meta["qfx"] = {
        "layers": layers_meta,
        "folded_batchnorms": dict(folded),
        "fold_bn": cfg["fold_bn"],
        "dropped_softmax": dropped,
        "config": {k: cfg[k] for k in ("default", "types", "layers")},
    }
    return gm
