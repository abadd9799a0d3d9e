"""Build an hls4ml model from a frozen qfx model, with the qfx formats as hls4ml precisions.

:func:`to_hls4ml` covers an ``nn.Sequential`` of :class:`qfx.nn.QLinear`,
:class:`qfx.nn.QConv2d`, :class:`qfx.nn.QReLU`, :class:`qfx.nn.QMaxPool2d`
and :class:`qfx.nn.QFlatten` with fixed-point formats (an MLP, or a CNN such
as conv -> ReLU -> pool -> flatten -> dense), or a ``qfx.convert`` result (a
``torch.fx.GraphModule``) whose nodes form a straight chain of those layers
(possibly nested in Sequentials): the graph is walked in order, and a branch,
a join, a function or method node or an unsupported module is refused naming
the node. QClamp (Hardtanh / clamp) is refused: hls4ml 1.3's PyTorch
converter has no ``nn.Hardtanh``, and its C++ ``hard_tanh`` (for Keras) is
``2 * clip(slope * x + shift, 0, 1) - 1`` with fixed bounds -1 and 1 and
slope / shift in their own types, not a clamp to bounds on the output grid.
It builds an equivalent float64
``torch.nn.Sequential`` whose weights and biases are the qfx-quantized values,
asks hls4ml for a per-layer config (``config_from_pytorch_model(...,
granularity='name')``), writes the qfx formats into it and converts with
``convert_from_pytorch_model``.

What hls4ml's C++ computes (``io_parallel``, ``Latency`` strategy;
``nnet_dense_latency.h``, ``nnet_conv2d_latency.h`` with the im2col
``fill_buffer`` that ``FPGABackend.generate_conv2d_line_buffer_fn`` writes,
``nnet_pooling.h``, ``nnet_activation.h``), next to qfx:

============  =======================================  ===============================
tensor        hls4ml                                   qfx
============  =======================================  ===============================
input         ``input_t`` = first layer's ``input``    ``cast(x, input)``
weight        ``weight_t`` = ``weight``; written as    ``cast(w, weight)`` (we pass the
              ``{:.Nf}`` text (N = fractional bits),   already-cast values, so hls4ml's
              exact for on-grid values                 cast is the identity)
bias          ``bias_t`` = ``bias``, then              ``cast(b, bias)``, then
              ``acc = (accum_t) bias``                 ``acc = cast(b, accum)``
product       ``mult = (accum_t)(x * w)``              exact ``x * w``
step          ``acc += mult`` (cast to ``accum_t``)    ``acc = cast(acc + x*w, accum)``
order         dense: ascending input index;            dense: ascending input index;
              conv: (kernel row, kernel column,        conv: (channel, kernel row,
              channel), channels last                  kernel column)
padding       conv: im2col writes ``0``                zero taps (exact zero products)
result        ``(result_t) acc``                       ``cast(acc, output)``
ReLU          ``res = x > 0 ? x : 0`` in ``result_t``  ``cast(max(x, 0), output)``
max pool      ``(result_t)(accum_t) max(window)``      ``cast(max(window), output)``
============  =======================================  ===============================

The one semantic difference: hls4ml casts every *product* to ``accum_t``
before adding it, qfx (like the project's HLS templates) adds the exact
product and casts the sum once. Both are the same whenever ``accum`` holds
every value of the product type (then the product cast is the identity); so
:func:`to_hls4ml` accepts ``accum='auto'``, any wide accumulator, and narrow
accumulators that still hold every product, and refuses the rest (where
hls4ml would round or saturate each product first, a double rounding qfx does
not do). Measured on a 16-8-4 MLP with accum ``ap_fixed<12,4,AP_RND_CONV,AP_SAT>``
(products ``ap_fixed<16,4>``): 218 of 1600 outputs differ from qfx, and all
equal a product-first emulation. (Modes whose rounding commutes with adding an
on-grid accumulator, AP_TRN / AP_RND, without product overflow, happen to agree;
the refusal is kept conservative.)

Summation order. hls4ml keeps tensors channels last: a convolution sums its
products in (kernel row, kernel column, channel) order, and a dense layer
after a flatten of ``[C, H, W]`` sums in (row, column, channel) order (hls4ml
drops the transpose before the flatten and permutes the dense weights). qfx
sums in (channel, row, column) order. With an accumulator holding every
product, no step rounds; the order matters only when a step overflows and the
accumulator saturates (``AP_SAT``, ``AP_SAT_ZERO``, ``AP_SAT_SYM``: the
result depends on which partial sums hit the limit). A wrapping accumulator
(``AP_WRAP``) computes the sum modulo its range whatever the order, and an
accumulator holding every partial sum never overflows. So a saturating
accumulator narrower than the partial sums is refused where the two orders
differ (more than one channel and more than one kernel tap or pixel).
Measured with the refusal bypassed, on random, corner and out-of-range inputs: a
2->3 channel 3x3 conv with accum ``ap_fixed<15,3,AP_TRN,AP_SAT>``, 4411 of
24192 outputs differ from qfx and none from a channels-last-order emulation; a
dense layer after the flatten of a ``[3, 6, 6]`` map with accum
``ap_fixed<20,6,AP_TRN,AP_SAT>``, 4 of 448 (again none from the channels-last
emulation).

Other layer-boundary limits: hls4ml has no input cast on a dense or conv
layer, an activation or a pooling layer; its input is simply the previous
layer's ``result_t``; so a layer's ``input`` format must hold every value of
the previous output format (the cast is then the identity), else
:func:`to_hls4ml` refuses. hls4ml's PyTorch converter ignores ``groups`` and
drops ``dilation`` when it writes the im2col code, so both are refused unless
1; max pooling is supported without padding, dilation or ``ceil_mode``.

Layout. The hls4ml model takes the input in PyTorch's order
(``[N, C, H, W]``, or flattened per sample): its converter inserts a
transpose to channels last (``ChannelsLastConversion='full'``, a pure
reordering in the input type) and, for a model ending in a feature map, one
back (``TransposeOutputs``), so ``predict`` returns the order ``model(x)``
has, flattened per sample.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import torch
import torch.fx
from torch import nn

from .arith import holds_all_values
from .nn import QClamp, QConv2d, QFlatten, QLinear, QMaxPool2d, QReLU
from .types import FixedType, Overflow

__all__ = ["to_hls4ml", "hls4ml_precision", "Hls4mlInteropError"]

_BACKENDS = ("Vitis", "Vivado")
_SUPPORTED = (QLinear, QConv2d, QReLU, QMaxPool2d, QFlatten)
_SUPPORTED_NAMES = "QLinear, QConv2d, QReLU, QMaxPool2d and QFlatten"


class Hls4mlInteropError(ValueError):
    """The qfx model uses something :func:`to_hls4ml` cannot express exactly in hls4ml."""


def hls4ml_precision(fmt: object) -> str:
    """The hls4ml precision string of a qfx FixedType, e.g. ``ap_fixed<8,3,AP_RND,AP_SAT>``.

    Always the ``ap_fixed``/``ap_ufixed`` spelling with both modes, so hls4ml
    parses it into a FixedPrecisionType (never an IntegerPrecisionType, whose
    2-bit signed case hls4ml multiplies with its ternary shortcut).
    """
    if not isinstance(fmt, FixedType):
        raise Hls4mlInteropError(f"hls4ml interop supports fixed-point formats only, not {fmt}")
    if fmt.overflow is Overflow.AP_WRAP_SM:
        raise Hls4mlInteropError(f"hls4ml has no AP_WRAP_SM overflow mode ({fmt})")
    name = "ap_fixed" if fmt.signed else "ap_ufixed"
    return f"{name}<{fmt.width},{fmt.int_bits},{fmt.rounding.value},{fmt.overflow.value}>"


def _fmt(layer: Any, name: str, where: str) -> FixedType:
    f = layer.effective_format(name)
    if not isinstance(f, FixedType):
        raise Hls4mlInteropError(
            f"{where}: the {name} format {f} is not a single fixed-point format "
            f"(per-channel binary points, minifloat and K-hot formats are not supported)"
        )
    return f


def _check_input(layer: Any, current: FixedType | None, where: str) -> FixedType:
    """The format flowing out of ``layer``'s input cast (which hls4ml cannot express unless it is the identity)."""
    fin = layer.effective_format("input")
    if fin is None:
        if current is None:
            raise Hls4mlInteropError(f"{where}: the first layer needs an input format")
        return current
    fin = _fmt(layer, "input", where)
    if current is not None and not holds_all_values(fin, current):
        raise Hls4mlInteropError(
            f"{where}: input format {fin} does not hold every value of the previous output format "
            f"{current}; hls4ml has no input cast on this layer, so the result would differ"
        )
    return fin if current is None else current


_CLAMP_REASON = (
    "hls4ml cannot express QClamp (Hardtanh / clamp) exactly: hls4ml 1.3's PyTorch converter has no "
    "handler for nn.Hardtanh (its activations are Softmax, ReLU, LeakyReLU, Threshold, ELU, PReLU, "
    "Sigmoid, Tanh), and its C++ hard_tanh (nnet_activation.h) computes 2 * clip(slope * x + shift, 0, 1) "
    "- 1 with slope / shift in their own types, fixed bounds -1 and 1, not a clamp to the bounds cast to "
    "the output format; end the model in a layer hls4ml supports"
)


def _unsupported(m: nn.Module, where: str) -> Hls4mlInteropError:
    prefix = f"{where}: " if where else ""
    if isinstance(m, QClamp):
        return Hls4mlInteropError(f"{prefix}{_CLAMP_REASON}")
    return Hls4mlInteropError(f"{prefix}to_hls4ml supports {_SUPPORTED_NAMES}, not {type(m).__name__}")


def _layers(model: nn.Module, where: str = "") -> list[tuple[nn.Module, str]]:
    """The chain of supported layers of ``model``, in order (nested Sequentials flattened, Identity
    dropped), each with its label for error messages (the fx node for a GraphModule, else empty)."""
    if isinstance(model, torch.fx.GraphModule):
        return _graph_layers(model)
    if isinstance(model, _SUPPORTED):
        return [(model, where)]
    if not isinstance(model, nn.Sequential):
        if where or isinstance(model, QClamp):  # a graph node's module
            raise _unsupported(model, where)
        raise Hls4mlInteropError(
            f"to_hls4ml needs an nn.Sequential of {_SUPPORTED_NAMES} "
            f"(or a qfx.convert GraphModule whose nodes form a chain of them), not {type(model).__name__}"
        )
    out: list[tuple[nn.Module, str]] = []
    for k, m in model.named_children():
        sub = f"{where}.{k}" if where else ""
        if isinstance(m, nn.Sequential):
            out.extend(_layers(m, sub))
        elif isinstance(m, _SUPPORTED):
            out.append((m, sub))
        elif isinstance(m, nn.Identity):
            continue
        else:
            raise _unsupported(m, sub)
    if not out and not where:
        raise Hls4mlInteropError("to_hls4ml: the model has no layers")
    return out


def _graph_layers(gm: "torch.fx.GraphModule") -> list[tuple[nn.Module, str]]:
    """The layers of a ``qfx.convert`` GraphModule whose nodes form one straight chain.

    Walks the graph in order: one placeholder, then ``call_module`` nodes each
    taking exactly the previous node as its only argument and being its only
    user, then the output returning the last one. Anything else (a branch, a
    join such as ``cat`` or ``add``, a function or method call, a second input)
    is refused with the node's name: hls4ml's converter is given a Sequential.
    """
    out: list[tuple[nn.Module, str]] = []
    prev: "torch.fx.Node | None" = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                raise Hls4mlInteropError(f"node '{node.name}': to_hls4ml needs a model with one input")
        elif node.op == "output":
            if prev is None or node.args != (prev,):
                raise Hls4mlInteropError(
                    f"node '{node.name}': the output must be the last layer of the chain, got {node.args}"
                )
            break
        elif node.op == "call_module":
            if prev is None or node.args != (prev,) or node.kwargs:
                raise Hls4mlInteropError(
                    f"node '{node.name}' ({node.target}): its input is {node.args}, not the single previous "
                    f"node '{prev.name if prev is not None else None}'; to_hls4ml needs a straight chain"
                )
            out.extend(_layers(gm.get_submodule(str(node.target)), f"node '{node.name}' ({node.target})"))
        else:
            raise Hls4mlInteropError(
                f"node '{node.name}' ({node.op} {getattr(node.target, '__name__', node.target)}): to_hls4ml "
                f"supports a chain of {_SUPPORTED_NAMES} modules only"
            )
        if len(node.users) != 1:
            users = ", ".join(f"'{u.name}'" for u in node.users)
            raise Hls4mlInteropError(
                f"node '{node.name}' feeds {len(node.users)} nodes ({users}); to_hls4ml needs a straight "
                f"chain of {_SUPPORTED_NAMES} (no branches or joins)"
            )
        prev = node
    if not out:
        raise Hls4mlInteropError("to_hls4ml: the model has no layers")
    return out


def _mac_precisions(m: Any, where: str, order_differs: str | None) -> tuple[dict[str, str], FixedType]:
    """The hls4ml precisions of a QLinear/QConv2d, and its output format.

    ``order_differs`` says why hls4ml sums this layer's products in another
    order than qfx (None when the orders are the same).
    """
    if m.config.multiply != "exact":
        raise Hls4mlInteropError(f"{where}: multiply={m.config.multiply!r} is not supported")
    wfmt = _fmt(m, "weight", where)
    afmt = _fmt(m, "accum", where)
    ofmt = _fmt(m, "output", where)
    prod = m.product_format()
    if not holds_all_values(afmt, prod):
        raise Hls4mlInteropError(
            f"{where}: accum {afmt} does not hold every product of type {prod}. hls4ml "
            f"casts each product to accum_t before adding it (mult[i] = (accum_t)(x*w); "
            f"acc += mult[i]), qfx adds the exact product and casts the sum once, so the "
            f"results would differ. Use accum='auto' or an accum holding the product type"
        )
    if order_differs is not None and afmt.overflow is not Overflow.AP_WRAP and not m.accum_is_exact():
        raise Hls4mlInteropError(
            f"{where}: {order_differs}; with the saturating accum {afmt}, which does not hold every "
            f"partial sum, the order changes which partial sums saturate, so the results would "
            f"differ. Use accum='auto', an accum holding every partial sum "
            f"({m.auto_accum_format()}), or AP_WRAP overflow"
        )
    bfmt = _fmt(m, "bias", where) if m.bias is not None else afmt  # zeros: any type holds them
    prec = {
        "weight": hls4ml_precision(wfmt),
        "bias": hls4ml_precision(bfmt),
        "accum": hls4ml_precision(afmt),
        "result": hls4ml_precision(ofmt),
    }
    return prec, ofmt


def _float_copy(m: Any, torch_layer: nn.Module) -> nn.Module:
    """``torch_layer`` (float64, with a bias) holding ``m``'s quantized weight and bias (zeros without one)."""
    with torch.no_grad():
        wq, bq = m._quantized_params()
        torch_layer.weight.copy_(wq)
        torch_layer.bias.copy_(bq if bq is not None else torch.zeros_like(torch_layer.bias))
    return torch_layer


def _input_shape(first: nn.Module, example_input: torch.Tensor) -> tuple[int, ...]:
    """The per-sample input shape: ``(in_features,)`` or ``(C, H, W)``."""
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, not {type(example_input).__name__}")
    if isinstance(first, QLinear):
        n_in = first.in_features
        if example_input.dim() not in (1, 2) or example_input.shape[-1] != n_in:
            raise ValueError(f"example_input must be a tensor of shape [batch, {n_in}] or [{n_in}]")
        return (n_in,)
    if isinstance(first, QConv2d):
        c = first.in_channels
        if example_input.dim() not in (3, 4) or example_input.shape[-3] != c:
            raise ValueError(f"example_input must be a tensor of shape [batch, {c}, H, W] or [{c}, H, W]")
        return tuple(int(v) for v in example_input.shape[-3:])
    raise Hls4mlInteropError("the first layer must be a QLinear or a QConv2d (it carries the input format)")


def to_hls4ml(
    model: nn.Module,
    example_input: torch.Tensor,
    output_dir: "str | Path",
    *,
    backend: str = "Vitis",
    project_name: str = "qfx_model",
    part: str | None = None,
    io_type: str = "io_parallel",
) -> Any:
    """An hls4ml ModelGraph computing what the frozen qfx ``model`` computes, bit for bit.

    Parameters
    ----------
    model : nn.Module
        A frozen ``nn.Sequential`` (nested Sequentials allowed), or a frozen
        ``qfx.convert`` GraphModule whose nodes form a straight chain, of
        :class:`qfx.nn.QLinear`, :class:`qfx.nn.QConv2d`,
        :class:`qfx.nn.QReLU`, :class:`qfx.nn.QMaxPool2d` and
        :class:`qfx.nn.QFlatten`, all formats fixed point; the first layer (a
        QLinear or a QConv2d) carries the input format. A QLinear after a
        feature map needs a QFlatten before it.
    example_input : torch.Tensor
        ``[batch, in_features]`` (or ``[in_features]``) for an MLP,
        ``[batch, C, H, W]`` (or ``[C, H, W]``) for a CNN; only its per-sample
        shape is used.
    output_dir : str or Path
        The hls4ml project directory.
    backend : {"Vitis", "Vivado"}
    project_name, part, io_type
        Passed to hls4ml (``io_parallel`` is the mode whose semantics are checked).

    Returns
    -------
    hls4ml.model.ModelGraph
        Not compiled yet; call ``.compile()`` then ``.predict(x)`` with a
        float64 numpy array in PyTorch's layout (``[batch, in_features]``, or
        ``[batch, C, H, W]`` flattened per sample); the outputs come flattened
        per sample in PyTorch's order.

    Raises
    ------
    Hls4mlInteropError
        For layers, formats, geometries or accumulators hls4ml cannot reproduce
        exactly (see the module docstring); nothing is written then.
    ValueError
        For an unknown backend or an ``example_input`` of the wrong shape.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    labeled = _layers(model)
    layers = [m for m, _ in labeled]
    for m in layers:
        if not isinstance(m, QFlatten) and not m.frozen:
            raise Hls4mlInteropError("freeze the model first (qfx.nn.freeze(model))")
    in_shape = _input_shape(layers[0], example_input)

    # 1. the equivalent float64 torch model (quantized weights) and each layer's precisions
    modules: "collections.OrderedDict[str, nn.Module]" = collections.OrderedDict()
    precisions: dict[str, dict[str, str]] = {}
    current: FixedType | None = None
    input_fmt: FixedType | None = None
    shape: tuple[int, ...] = in_shape
    # why the next dense layer after a flatten sums in another order than qfx (None: same order).
    # Conservative: hls4ml only permutes when the dense follows the flatten directly.
    flatten_order: str | None = None
    for i, (m, label) in enumerate(labeled):
        where = f"layer {i} ({type(m).__name__}{', ' + label if label else ''})"
        if isinstance(m, QFlatten):
            if (m.start_dim, m.end_dim) != (1, -1):
                raise Hls4mlInteropError(
                    f"{where}: only a flatten of every non-batch dimension (start_dim=1, end_dim=-1) "
                    f"is supported, not start_dim={m.start_dim}, end_dim={m.end_dim}"
                )
            if len(shape) == 3:
                c, h, w = shape
                if c > 1 and h * w > 1:
                    flatten_order = (
                        f"after the flatten of a [{c}, {h}, {w}] feature map hls4ml sums the products in "
                        f"(row, column, channel) order (channels last), qfx in (channel, row, column) order"
                    )
                shape = (c * h * w,)
                name = f"flatten{i}"
                modules[name] = nn.Flatten()
                precisions[name] = {"result": hls4ml_precision(current)}
            continue  # a flatten of a vector changes nothing: no hls4ml layer
        current = _check_input(m, current, where)
        if input_fmt is None:
            input_fmt = current
        if isinstance(m, QLinear):
            if len(shape) != 1:
                raise Hls4mlInteropError(
                    f"{where}: the input is a {list(shape)} feature map; put a QFlatten before the QLinear"
                )
            if shape[0] != m.in_features:
                raise Hls4mlInteropError(f"{where}: expects {m.in_features} features, gets {shape[0]}")
            prec, current = _mac_precisions(m, where, flatten_order)
            flatten_order = None
            name = f"dense{i}"
            modules[name] = _float_copy(m, nn.Linear(m.in_features, m.out_features, bias=True, dtype=torch.float64))
            precisions[name] = prec
            shape = (m.out_features,)
        elif isinstance(m, QConv2d):
            if len(shape) != 3 or shape[0] != m.in_channels:
                raise Hls4mlInteropError(f"{where}: expects a [{m.in_channels}, H, W] feature map, gets {list(shape)}")
            if m.groups != 1:
                raise Hls4mlInteropError(
                    f"{where}: groups={m.groups}; hls4ml's PyTorch converter ignores groups (it would "
                    f"build a dense convolution), only groups=1 is supported"
                )
            if tuple(m.dilation) != (1, 1):
                raise Hls4mlInteropError(
                    f"{where}: dilation={tuple(m.dilation)}; hls4ml's io_parallel im2col code is "
                    f"written without dilation, only dilation 1 is supported"
                )
            kh, kw = m.kernel_size
            order = None
            if m.in_channels > 1 and kh * kw > 1:
                order = (
                    "hls4ml sums a convolution's products in (kernel row, kernel column, channel) "
                    "order (channels last), qfx in (channel, kernel row, kernel column) order"
                )
            prec, current = _mac_precisions(m, where, order)
            name = f"conv{i}"
            conv = nn.Conv2d(
                m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=True, dtype=torch.float64
            )
            modules[name] = _float_copy(m, conv)
            precisions[name] = prec
            (sh, sw), (ph, pw) = m.stride, m.padding
            shape = (m.out_channels, (shape[1] + 2 * ph - kh) // sh + 1, (shape[2] + 2 * pw - kw) // sw + 1)
        elif isinstance(m, QMaxPool2d):
            if len(shape) != 3:
                raise Hls4mlInteropError(f"{where}: needs a [C, H, W] feature map, gets {list(shape)}")
            kh, kw = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
            sh, sw = m.stride if isinstance(m.stride, tuple) else (m.stride,) * 2
            for attr, value, ok in (("padding", m.padding, (0, 0)), ("dilation", m.dilation, (1, 1))):
                pair = value if isinstance(value, tuple) else (value, value)
                if tuple(pair) != ok:
                    raise Hls4mlInteropError(f"{where}: {attr}={value} is not supported (only {ok[0]})")
            if m.ceil_mode:
                raise Hls4mlInteropError(f"{where}: ceil_mode=True is not supported")
            # the max is one of the inputs: exact in the input type (accum_t), then one cast to result_t
            ofmt = _fmt(m, "output", where) if m.effective_format("output") is not None else current
            name = f"pool{i}"
            modules[name] = nn.MaxPool2d((kh, kw), (sh, sw))
            precisions[name] = {"accum": hls4ml_precision(current), "result": hls4ml_precision(ofmt)}
            current = ofmt
            shape = (shape[0], (shape[1] - kh) // sh + 1, (shape[2] - kw) // sw + 1)
        else:  # QReLU
            ofmt = _fmt(m, "output", where)
            name = f"relu{i}"
            modules[name] = nn.ReLU()
            precisions[name] = {"result": hls4ml_precision(ofmt)}
            current = ofmt
    torch_model = nn.Sequential(modules).double().eval()

    import hls4ml  # slow import, and optional for the rest of qfx

    # 2. hls4ml's per-name config, with the qfx formats written in
    cfg = hls4ml.utils.config_from_pytorch_model(
        torch_model,
        in_shape,
        granularity="name",
        backend=backend,
        default_precision="ap_fixed<16,6>",
        channels_last_conversion="full",
        transpose_outputs=True,
    )
    names = cfg["LayerName"]
    missing = [n for n in precisions if n not in names]
    if missing:
        raise RuntimeError(f"hls4ml named the layers {list(names)}, expected {list(precisions)}")
    inputs = [n for n in names if n not in precisions]
    if len(inputs) != 1:
        raise RuntimeError(f"expected one hls4ml input layer besides {list(precisions)}, got {inputs}")
    assert input_fmt is not None
    names[inputs[0]]["Precision"] = {"result": hls4ml_precision(input_fmt)}
    for name, prec in precisions.items():
        names[name]["Precision"] = dict(names[name].get("Precision", {}), **prec)
    cfg["Model"]["Strategy"] = "Latency"

    kwargs: dict[str, Any] = {}
    if part is not None:
        kwargs["part"] = part
    return hls4ml.converters.convert_from_pytorch_model(
        torch_model,
        hls_config=cfg,
        output_dir=str(output_dir),
        project_name=project_name,
        backend=backend,
        io_type=io_type,
        **kwargs,
    )
