"""The multiply-accumulate layer machinery behind QLinear and QConv2d (see :mod:`qfx.nn.accumulate`)."""

from __future__ import annotations

from typing import Callable

import torch

from .. import _fixed
from .._lmul import _operand_format as _lmul_operand_format
from .._lmul import lmul
from ..quant import quantize
from ..types import MX_SCALE_BIAS, FixedType, KHot, MinifloatType, MXType
from ..arith import mx_element_grid, weight_hull
from ..arith import mx_value_hull as arith_mx_value_hull
from ..quant import mx_encode
from .accumulate import (
    accumulate_steps,
    auto_accumulator,
    check_float64_exact,
    holds_all_values,
    lmul_columns,
    product_type,
)
from .base import QuantizedModule
from .config import LayerConfig
from .plan import CompilePlanError, compiling, plan_of, set_plan

__all__ = ["MACLayer", "mx_value_hull"]


def _split_bias(bias: object, overrides: dict) -> tuple[bool, dict]:
    """``bias`` is torch's flag, or a bias format (which implies ``bias=True``)."""
    if isinstance(bias, bool):
        return bias, overrides
    if isinstance(bias, (str, FixedType, MinifloatType, KHot, MXType)):
        return True, {**overrides, "bias": bias}
    raise TypeError(f"bias must be a bool or a bias format (e.g. 'ap_fixed<16,6>'), not {bias!r}")


def _precision_ok(obj: object) -> bool:
    return getattr(obj, "fp32_precision", "none") in ("none", "ieee")


def float32_kernels_exact() -> bool:
    """Whether torch's CPU float32 matmul and convolution run in full IEEE float32.

    False when a global setting lets them drop to bfloat16/TF32 internally
    (``torch.set_float32_matmul_precision``, ``torch.backends.mkldnn.*.fp32_precision``).
    """
    mk = torch.backends.mkldnn
    return (
        torch.get_float32_matmul_precision() == "highest"
        and _precision_ok(torch.backends)
        and _precision_ok(mk)
        and _precision_ok(getattr(mk, "conv", None))
        and _precision_ok(getattr(mk, "matmul", None))
    )


def mx_value_hull(values: torch.Tensor, fmt: MXType, layer: str = "the layer") -> FixedType:
    """:func:`qfx.arith.mx_value_hull` of MX weight values (a tensor of MX values of ``fmt``).

    The products, ``accum="auto"`` and the exactness checks of a layer with MX weights are
    sized from the values its quantized weights hold now (an MX format's scales span
    2**-127..2**127). ValueError naming ``layer`` for inf/NaN (NaN blocks) or a span beyond 64 bits.
    """
    v = values.detach().double()
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{layer}: some weights are inf/NaN, so their MX ({fmt}) blocks are NaN; "
                         "the weights must be finite")
    scales, _ = mx_encode(v, fmt)
    s = scales - MX_SCALE_BIAS
    axis = fmt.axis % v.dim()
    f_e = mx_element_grid(fmt).frac_bits
    # element values on their grid: v * 2**(F_e - s), exact (a power-of-two scaling)
    grid = torch.ldexp(v, (f_e - s).repeat_interleave(fmt.block_size, dim=axis)).to(torch.int64)
    try:
        return arith_mx_value_hull(scales.cpu().numpy() - MX_SCALE_BIAS, grid.cpu().numpy(), fmt)
    except ValueError as err:
        raise ValueError(f"{layer}: {err}") from None


class MACLayer(QuantizedModule):
    """Shared by the layers that reduce products ``x[k] * w[k]`` into an accumulator.

    Subclasses set ``n_terms`` (products per output) and call :meth:`_setup_mac`
    after the torch layer's ``__init__``.
    """

    n_terms: int
    weight: torch.nn.Parameter
    bias: "torch.nn.Parameter | None"

    def _setup_mac(self, config: LayerConfig, layer: str, weight_frac_shape: tuple[int, ...], has_bias: bool) -> None:
        self._require(config, layer, "input", "weight", "output")
        if has_bias:
            self._require(config, layer + " with bias=True", "bias")
        if config.multiply == "lmul":
            if not isinstance(config.weight, MinifloatType):
                raise ValueError(
                    f"{layer}: multiply='lmul' needs a minifloat weight format (e.g. fp8_e4m3fn), "
                    f"not {config.weight}"
                )
            _lmul_operand_format(config.weight)  # raises for formats L-Mul emulation does not cover
        if isinstance(config.weight, MXType):
            try:
                config.weight.block_axis(tuple(self.weight.shape), "the weight")
            except ValueError as err:
                hint = ""
                if self.weight.dim() == 4:
                    hint = (f" (QConv2d weights are [out, in/groups, kh, kw]: blocks along the input "
                            f"channels are {config.weight.name}<block={config.weight.block_size},axis=1>)")
                raise ValueError(f"{layer}: weight format {config.weight}: {err}{hint}") from None
        if config.weight_per_channel and config.learns("weight"):
            frac_shape = weight_frac_shape
        else:
            frac_shape = ()
        self._setup_quantizers(
            config,
            {
                "input": (config.input, ()),
                "weight": (config.weight, frac_shape),
                "bias": (config.bias if has_bias else None, ()),
                "accum": (None if config.accum_is_auto else config.accum, ()),
                "output": (config.output, ()),
            },
        )

    def _copy_float_params(self, module: "torch.nn.Module") -> "MACLayer":
        """Take the float weight (and bias) of the torch layer this one was built from."""
        with torch.no_grad():
            self.weight.copy_(module.weight)
            if module.bias is not None:
                self.bias.copy_(module.bias)
        return self

    # -- formats ----------------------------------------------------------------
    def _mac_plan(self) -> "tuple[FixedType, bool, bool]":
        """``(auto accumulator, accum_is_exact, formats fit float32)`` for the current formats.

        Cached per combination of effective formats (they change only when a learned binary
        point crosses a rounding boundary).
        """
        x_fmt = self.quant["input"].effective_format()
        w_env = self._weight_envelope()
        b_fmt = self.quant["bias"].effective_format() if "bias" in self.quant else None
        a_fmt = self.quant["accum"].effective_format() if "accum" in self.quant else None
        key = (x_fmt, w_env, b_fmt, a_fmt, self.config.multiply, self.n_terms)
        cache = self.__dict__.setdefault("_mac_plans", {})
        plan = cache.get(key)
        if plan is None:
            auto = auto_accumulator(product_type(x_fmt, w_env, self.config.multiply), self.n_terms, b_fmt)
            exact = a_fmt is None or holds_all_values(a_fmt, auto)
            fmts = [x_fmt, weight_hull(w_env), auto] + ([] if b_fmt is None else [weight_hull(b_fmt)])
            fits = isinstance(x_fmt, FixedType) and all(
                isinstance(f, FixedType) and _fixed.holds_exactly(f, torch.float32) for f in fmts
            )
            if len(cache) >= 64:
                cache.clear()
            cache[key] = plan = (auto, exact, fits)
        return plan

    def _weight_envelope(self):
        """The weight format that sizes the products: the quantizer's envelope, or for an MX
        weight the :func:`mx_value_hull` of the current quantized weights (cached per weight version)."""
        wq = self.quant["weight"]
        if not isinstance(wq.fmt, MXType):
            return wq.envelope_format()
        key = (self.weight.data_ptr(), self.weight._version, wq.fmt)
        cached = self.__dict__.get("_mx_hull")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                values = wq(self.weight.detach())
            self.__dict__["_mx_hull"] = cached = (key, mx_value_hull(values, wq.fmt, type(self).__name__))
        return cached[1]

    def product_format(self) -> FixedType:
        """The type holding every product ``x[k] * w[k]`` exactly (with the current formats)."""
        x_fmt = self.quant["input"].effective_format()
        return product_type(x_fmt, self._weight_envelope(), self.config.multiply)

    def auto_accum_format(self) -> FixedType:
        """What ``accum='auto'`` is with the current formats (the bias included)."""
        return self._mac_plan()[0]

    def effective_format(self, name: str):  # type: ignore[override]
        if name == "accum" and "accum" not in self.quant:
            return self.auto_accum_format()
        return super().effective_format(name)

    def accum_is_exact(self) -> bool:
        """Whether the accumulator can neither round nor overflow (auto, or wide enough)."""
        if compiling():
            return plan_of(self)[0]
        return self._mac_plan()[1]

    #: The compiled float32 fast path also needs NNPACK off (QConv2d: Winograd/FFT would round).
    _f32_needs_nnpack_off = False

    def plan_key(self):
        """The quantizers' keys and the global float32 / NNPACK settings the plan reads; None (refresh
        every time) for minifloat weights (their check reads the weights), MX and L-Mul."""
        wq = self.quant["weight"]
        if self.config.multiply == "lmul" or isinstance(wq.fmt, (MXType, MinifloatType)):
            return None
        keys = self._quantizer_keys()
        if keys is None:
            return None
        nnpack = torch.backends.nnpack.is_available() and torch._C._get_nnpack_enabled()
        return (keys, self.n_terms, float32_kernels_exact(), nnpack)

    @torch.no_grad()
    def refresh_plan(self) -> None:
        """``(accum_is_exact, float32 fast path on CPU)`` for the compiled forward, after the eager
        forward's checks (:meth:`_check_accumulator`; finite minifloat weights)."""
        layer = type(self).__name__
        if self.config.multiply == "lmul":
            raise CompilePlanError(f"{layer}: multiply='lmul' has no compiled path (its checks read activations); train eagerly")
        wq = self.quant["weight"]
        if isinstance(wq.fmt, MXType):
            raise CompilePlanError(f"{layer}: MX weights ({wq.fmt}) have no compiled path; train this model eagerly")
        _, exact, fits = self._mac_plan()
        self._check_accumulator(exact)
        if isinstance(wq.fmt, MinifloatType):
            self._check_minifloat_weights(wq(self.weight.detach()))
        f32 = exact and fits and float32_kernels_exact()
        if f32 and self._f32_needs_nnpack_off and torch.backends.nnpack.is_available() and torch._C._get_nnpack_enabled():
            f32 = False  # the compiled conv cannot switch NNPACK off itself (qfx.nn.compile_model does)
        set_plan(self, (exact, f32))

    def float32_exact(self, device: torch.device) -> bool:
        """Whether the fast path may multiply and accumulate in float32 (else float64).

        Every product and every partial sum, in any order, lies in the auto
        accumulator type (see :mod:`qfx.nn.accumulate`); when float32 holds
        every value of that type, of the input, the weight and the bias, a
        float32 GEMM or direct convolution (sums of exact products, by adds or
        fused multiply-adds) never rounds, whatever its order or blocking.
        CPU only (cuDNN may pick FFT/Winograd algorithms or TF32), full float32
        precision only (:func:`float32_kernels_exact`), and ``F.conv2d`` is
        called with NNPACK (Winograd/FFT) off.
        """
        if compiling():
            return device.type == "cpu" and plan_of(self)[1]
        if device.type != "cpu" or self.config.multiply == "lmul" or isinstance(self.quant["weight"].fmt, MXType):
            return False
        _, exact, fits = self._mac_plan()
        return exact and fits and float32_kernels_exact()

    # -- forward pieces ------------------------------------------------------------
    def _quantized_params(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = self.quant["weight"](self.weight).to(dtype)
        if isinstance(self.quant["weight"].fmt, MXType):
            key = (self.weight.data_ptr(), self.weight._version, self.quant["weight"].fmt)
            self.__dict__["_mx_hull"] = (key, mx_value_hull(w.detach(), self.quant["weight"].fmt, type(self).__name__))
        if isinstance(self.quant["weight"].fmt, MinifloatType) and not compiling():  # compiled: checked by the plan
            self._check_minifloat_weights(w)
        b = self.quant["bias"](self.bias).to(dtype) if self.bias is not None else None
        return w, b

    def _check_minifloat_weights(self, w: torch.Tensor) -> None:
        if not bool(torch.isfinite(w).all()):
            raise ValueError(
                f"some weights overflow {self.quant['weight'].fmt} to inf/NaN; use a saturating "
                f"minifloat (option saturate=true, e.g. 'fp8_e4m3fn<saturate=true>') or smaller weights"
            )

    def _check_accumulator(self, exact: bool) -> None:
        """The eager forward's emulation checks: float64 holds the exact accumulator, or every
        step ``acc + x*w`` of a narrow one (ValueError naming the layer otherwise)."""
        if exact:
            check_float64_exact(self.auto_accum_format(), f"{type(self).__name__}'s exact accumulator")
            return
        accum_fmt = self.quant["accum"].effective_format()
        try:
            step = accum_fmt + self.product_format()
        except ValueError:
            step = None
        if step is None or step.width > 53:
            raise ValueError(
                f"{type(self).__name__}: a step acc + x*w with accum {accum_fmt} and products of type "
                f"{self.product_format()} needs more than float64's 53 bits; qfx cannot emulate it "
                f"bit-exactly. Use a narrower accum (fewer fractional bits) or narrower formats"
            )

    def _lmul_operand(self, xq: torch.Tensor) -> torch.Tensor:
        fmt = self.quant["weight"].fmt
        xm = quantize(xq, fmt)
        if not bool(torch.isfinite(xm).all()):
            raise ValueError(
                f"L-Mul: some activations overflow the weight format {fmt} to inf/NaN when cast to it; "
                f"use a saturating minifloat (saturate=true) or a narrower input format"
            )
        return xm.double()

    def _accumulate(
        self,
        xq: torch.Tensor,
        wq: torch.Tensor,
        bq: torch.Tensor | None,
        *,
        fast: Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor],
        to_columns: Callable[[torch.Tensor], torch.Tensor],
        w_rows: torch.Tensor,
        from_columns: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """The accumulator after the whole reduction (float64, exact), in the layer's layout."""
        lmul_mode = self.config.multiply == "lmul"
        if lmul_mode:
            xq = self._lmul_operand(xq)
        groups, per_group = w_rows.shape[0], w_rows.shape[1]
        b_rows = bq.reshape(groups, per_group) if bq is not None else None
        exact = self.accum_is_exact()
        if not compiling():  # compiled: the plan ran the same checks (refresh_plan)
            self._check_accumulator(exact)
        if exact:
            if not lmul_mode:
                return fast(xq, wq, bq)
            wfmt = self.quant["weight"].fmt
            acc = lmul_columns(to_columns(xq), w_rows, wfmt)
            if b_rows is not None:
                acc = acc + b_rows[None, :, :, None]
            return from_columns(acc)
        if lmul_mode:
            wfmt = self.quant["weight"].fmt

            def multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                return lmul(a, b, wfmt, exact=True)

        else:
            multiply = torch.mul
        acc = accumulate_steps(to_columns(xq), w_rows, b_rows, self.quant["accum"], multiply)
        return from_columns(acc)
