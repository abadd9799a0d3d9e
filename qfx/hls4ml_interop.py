"""Build an hls4ml model from a frozen qfx model, with the qfx formats as hls4ml precisions.

:func:`to_hls4ml` covers the MLP subset: an ``nn.Sequential`` of
:class:`qfx.nn.QLinear` and :class:`qfx.nn.QReLU` with fixed-point formats.
It builds an equivalent float64 ``torch.nn.Sequential`` whose weights and
biases are the qfx-quantized values, asks hls4ml for a per-layer config
(``config_from_pytorch_model(..., granularity='name')``), writes the qfx
formats into it and converts with ``convert_from_pytorch_model``.

What hls4ml's C++ computes (``io_parallel``, ``Latency`` strategy,
``nnet_dense_latency.h`` and ``nnet_activation.h``), next to qfx:

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
order         ascending input index                    ascending input index
result        ``(result_t) acc``                       ``cast(acc, output)``
ReLU          ``res = x > 0 ? x : 0`` in ``result_t``  ``cast(max(x, 0), output)``
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

Other layer-boundary limits: hls4ml has no input cast on a dense layer or an
activation, its input is simply the previous layer's ``result_t``; so a
layer's ``input`` format must hold every value of the previous layer's
output format (the cast is then the identity), else :func:`to_hls4ml` refuses.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arith import holds_all_values
from .nn import QLinear, QReLU
from .types import FixedType, Overflow

__all__ = ["to_hls4ml", "hls4ml_precision", "Hls4mlInteropError"]

_BACKENDS = ("Vitis", "Vivado")


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


def _layers(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, (QLinear, QReLU)):
        return [model]
    if not isinstance(model, nn.Sequential):
        raise Hls4mlInteropError(f"to_hls4ml needs an nn.Sequential of QLinear/QReLU, not {type(model).__name__}")
    out: list[nn.Module] = []
    for m in model:
        if isinstance(m, nn.Sequential):
            out.extend(_layers(m))
        elif isinstance(m, (QLinear, QReLU)):
            out.append(m)
        elif isinstance(m, nn.Identity):
            continue
        else:
            raise Hls4mlInteropError(
                f"to_hls4ml supports QLinear and QReLU (the MLP subset), not {type(m).__name__}"
            )
    if not out:
        raise Hls4mlInteropError("to_hls4ml: the model has no layers")
    return out


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
        A frozen ``nn.Sequential`` (nested Sequentials allowed) of
        :class:`qfx.nn.QLinear` and :class:`qfx.nn.QReLU`, all formats fixed
        point; the first layer carries the input format.
    example_input : torch.Tensor
        A tensor of shape ``[batch, in_features]`` (or ``[in_features]``); only its
        feature size is used (checked against the first layer).
    output_dir : str or Path
        The hls4ml project directory.
    backend : {"Vitis", "Vivado"}
    project_name, part, io_type
        Passed to hls4ml (``io_parallel`` is the mode whose semantics are checked).

    Returns
    -------
    hls4ml.model.ModelGraph
        Not compiled yet; call ``.compile()`` then ``.predict(x)`` with a float64
        ``[batch, in_features]`` numpy array.

    Raises
    ------
    Hls4mlInteropError
        For layers, formats or accumulators hls4ml cannot reproduce exactly
        (see the module docstring).
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    layers = _layers(model)
    for m in layers:
        if not m.frozen:
            raise Hls4mlInteropError("freeze the model first (qfx.nn.freeze(model))")
    if not isinstance(layers[0], QLinear):
        raise Hls4mlInteropError("the first layer must be a QLinear (it carries the input format)")
    n_in = layers[0].in_features
    if not isinstance(example_input, torch.Tensor) or example_input.shape[-1] != n_in:
        raise ValueError(f"example_input must be a tensor of shape [..., {n_in}]")

    import hls4ml  # slow import, and optional for the rest of qfx

    # 1. the equivalent float64 torch model (quantized weights) and each layer's precisions
    modules: "collections.OrderedDict[str, nn.Module]" = collections.OrderedDict()
    precisions: dict[str, dict[str, str]] = {}
    current: FixedType | None = None
    input_fmt: FixedType | None = None
    for i, m in enumerate(layers):
        where = f"layer {i} ({type(m).__name__})"
        current = _check_input(m, current, where)
        if input_fmt is None:
            input_fmt = current
        if isinstance(m, QLinear):
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
            with torch.no_grad():
                wq, bq = m._quantized_params()
            lin = nn.Linear(m.in_features, m.out_features, bias=True, dtype=torch.float64)
            with torch.no_grad():
                lin.weight.copy_(wq)
                lin.bias.copy_(bq if bq is not None else torch.zeros(m.out_features, dtype=torch.float64))
            name = f"dense{i}"
            modules[name] = lin
            bfmt = _fmt(m, "bias", where) if bq is not None else afmt  # zeros: any type holds them
            precisions[name] = {
                "weight": hls4ml_precision(wfmt),
                "bias": hls4ml_precision(bfmt),
                "accum": hls4ml_precision(afmt),
                "result": hls4ml_precision(ofmt),
            }
            current = ofmt
        else:  # QReLU
            ofmt = _fmt(m, "output", where)
            name = f"relu{i}"
            modules[name] = nn.ReLU()
            precisions[name] = {"result": hls4ml_precision(ofmt)}
            current = ofmt
    torch_model = nn.Sequential(modules).double().eval()

    # 2. hls4ml's per-name config, with the qfx formats written in
    cfg = hls4ml.utils.config_from_pytorch_model(
        torch_model, (n_in,), granularity="name", backend=backend, default_precision="ap_fixed<16,6>"
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
