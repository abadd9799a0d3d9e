"""Transformer pieces (issue 14): the matmul of two activations and the ops that only reorder codes.

:class:`QMatMul` (``a @ b``, ``torch.matmul``, ``torch.bmm``) casts both operands, multiplies
exactly (or, with ``multiply: lmul``, rounds both to the minifloat ``operand`` and takes their exact
L-Mul product) and accumulates over the inner dim as dense does (manifest op ``matmul``).
:class:`QPermute` (``transpose`` / ``permute`` / ``.mT``) and :class:`QReshape` (``reshape`` /
``view`` that keep the batch dim) move codes and cast nothing (manifest ops ``permute`` and
``reshape``): the output format is the producer's.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .._lmul import _operand_format as _lmul_operand_format
from .._lmul import lmul
from ..arith import auto_accumulator, holds_all_values, lmul_product_type, product_type
from ..quant import quantize
from ..types import FixedType, MinifloatType
from .accumulate import check_float64_exact
from .base import QuantizedModule
from .config import ConfigLike, as_config

__all__ = ["QMatMul", "QPermute", "QReshape", "matmul_problem"]


def matmul_problem(a_shape: Sequence[int], b_shape: Sequence[int]) -> "str | None":
    """Why ``a @ b`` of these torch shapes (batch included) has no qfx version (None: it has one).

    Supported: both of rank >= 3 (batch, .., T, K) and (batch, .., K, S) with equal leading dims
    (no broadcasting) and equal inner dims."""
    a, b = list(a_shape), list(b_shape)
    if len(a) < 3 or len(b) < 3:
        return (f"operands {a} and {b}: only [N, .., T, K] @ [N, .., K, S] with the batch dim on both is "
                "supported (rank >= 3 each)")
    if len(a) != len(b) or a[:-2] != b[:-2]:
        return (f"operands {a} and {b} have different leading dims; only equal leading dims (batch, heads) are "
                "supported, no broadcasting: expand or reshape the operands first")
    if a[-1] != b[-2]:
        return f"inner dims differ: a {a} has K = {a[-1]}, b {b} has K = {b[-2]}"
    return None


class QMatMul(QuantizedModule, nn.Module):
    """``y = a @ b`` of two activations, with dense's casts::

        qa = cast(a, in_a); qb = cast(b, in_b)                  # [N, .., T, K], [N, .., K, S]
        acc = 0
        for k in 0 .. K-1:  acc = cast(acc + qa[.., t, k] * qb[.., k, s], accum)   # exact product
        y[.., t, s] = cast(acc, output)

    ``accum: auto`` (the default) is the exact accumulator ``(in_a * in_b).accumulator(K)``: no
    step can round or overflow, so the order is free and the layer runs one float64 matmul (exact:
    every product and partial sum is a multiple of the product lsb below 2**53, checked). An
    explicit accum that can round is emulated step by step in the order above (k ascending), the
    order of the integer reference, the HLS loop and the RTL engine.

    ``multiply: lmul``: ``qa`` and ``qb`` are rounded (nearest even, the format's overflow rule;
    an overflow of a non-saturating format is an error) to the minifloat ``operand`` and the product
    ``qa * qb`` above is replaced by the exact L-Mul value ``qfx.lmul(qa, qb, operand, exact=True)``,
    as dense's L-Mul products enter its accumulator; the product type is
    :func:`qfx.nn.lmul_product_type` ``(operand)``. Gradients pass straight through (those of the
    exact product).

    Parameters
    ----------
    config : LayerConfig or dict, optional
        Uses ``in_a`` / ``in_b`` (each defaulting to ``input``), ``accum``, ``output`` (required),
        ``learn_binary_point``, ``track_overflow``, ``multiply`` (``exact``, or ``lmul`` with the
        minifloat ``operand`` format, e.g. ``fp8_e4m3fn``).
    name : str, optional
        The layer's name for error messages (:func:`qfx.convert` sets it).
    """

    def __init__(self, *, config: ConfigLike = None, name: "str | None" = None, **overrides: Any) -> None:
        cfg = as_config(config, **overrides)
        cfg = cfg.updated(in_a=cfg.in_a or cfg.input, in_b=cfg.in_b or cfg.input)
        super().__init__()
        self.layer = name
        label = f"layer {name!r} (matmul)" if name else "QMatMul"
        #: the L-Mul operand format (``multiply: lmul``), else None
        self.operand: "MinifloatType | None" = None
        if cfg.multiply == "lmul":
            if cfg.operand is None:
                raise ValueError(f"{label}: multiply='lmul' needs the minifloat operand format both operands are "
                                 "rounded to: give operand, e.g. operand: fp8_e4m3fn")
            if not isinstance(cfg.operand, MinifloatType):
                raise ValueError(f"{label}: multiply='lmul' needs a minifloat operand format (e.g. fp8_e4m3fn), "
                                 f"not {cfg.operand}")
            try:
                self.operand = _lmul_operand_format(cfg.operand)
            except ValueError as err:
                raise ValueError(f"{label}: operand {cfg.operand}: {err}") from None
        elif cfg.multiply != "exact":
            raise ValueError(f"{label}: multiply={cfg.multiply!r} is not supported for matmul; "
                             "use 'exact' or 'lmul' (with operand)")
        self._require(cfg, "QMatMul", "in_a", "in_b", "output")
        for key in ("in_a", "in_b", "output"):
            if not isinstance(getattr(cfg, key), FixedType):
                raise ValueError(f"QMatMul: format {key} must be fixed point (ap_fixed / ap_ufixed), "
                                 f"not {getattr(cfg, key)}")
        self._setup_quantizers(cfg, {"in_a": (cfg.in_a, ()), "in_b": (cfg.in_b, ()),
                                     "accum": (None if cfg.accum_is_auto else cfg.accum, ()),
                                     "output": (cfg.output, ())})
        self.n_terms: "int | None" = None  # K, known at the first forward pass

    def _label(self) -> str:
        return f"layer {self.layer!r} (matmul)" if self.layer else "QMatMul"

    def auto_accum_format(self, n_terms: "int | None" = None) -> FixedType:
        """The exact accumulator for ``n_terms`` (default: the K of the last forward pass) products."""
        k = n_terms if n_terms is not None else self.n_terms
        if k is None:
            raise ValueError(f"{self._label()}: the inner dim is known only after a forward pass")
        try:
            return auto_accumulator(self.product_format(), int(k), None)
        except ValueError as err:
            raise ValueError(f"{self._label()}: {err}") from None

    def product_format(self) -> FixedType:
        """The type holding every product exactly: ``in_a * in_b``, or the L-Mul product type of ``operand``."""
        if self.operand is not None:
            return lmul_product_type(self.operand)
        ta, tb = self.quant["in_a"].effective_format(), self.quant["in_b"].effective_format()
        return product_type(ta, tb, "exact")

    def _lmul_operand(self, q: torch.Tensor, which: str) -> torch.Tensor:
        """``q`` rounded to ``operand`` (nearest even); an overflow to inf / NaN is an error naming the layer."""
        assert self.operand is not None
        qm = quantize(q, self.operand)
        if not bool(torch.isfinite(qm).all()):
            raise ValueError(f"{self._label()}: L-Mul: some values of operand {which} overflow the operand format "
                             f"{self.operand} to inf/NaN when cast to it; use a saturating minifloat "
                             "(saturate=true) or a narrower in_{which} format")
        return qm.double()

    def effective_format(self, name: str):  # type: ignore[override]
        if name == "operand":
            return self.operand
        if name == "accum" and "accum" not in self.quant:
            return self.auto_accum_format()
        return super().effective_format(name)

    def accum_is_exact(self, n_terms: "int | None" = None) -> bool:
        """Whether the accumulator can neither round nor overflow (auto, or wide enough)."""
        if "accum" not in self.quant:
            return True
        return holds_all_values(self.quant["accum"].effective_format(), self.auto_accum_format(n_terms))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        for label, t in (("a", a), ("b", b)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise TypeError(f"{self._label()} expects floating-point tensors, got "
                                f"{getattr(t, 'dtype', type(t).__name__)} for {label}")
        why = matmul_problem(a.shape, b.shape)
        if why:
            raise ValueError(f"{self._label()}: {why}")
        k = int(a.shape[-1])
        self.n_terms = k
        qa, qb = self.quant["in_a"](a).double(), self.quant["in_b"](b).double()
        fmt = self.operand
        if fmt is not None:
            qa, qb = self._lmul_operand(qa, "a"), self._lmul_operand(qb, "b")

            def mul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return lmul(x, y, fmt, exact=True)
        else:
            mul = torch.mul
        auto = self.auto_accum_format(k)
        if self.accum_is_exact(k):
            check_float64_exact(auto, f"{self._label()}'s exact accumulator")
            if fmt is None:
                acc = torch.matmul(qa, qb)
            else:  # every exact L-Mul product [.., T, K, S], summed over K (exact in the auto type)
                acc = mul(qa[..., :, :, None], qb[..., None, :, :]).sum(dim=-2)
        else:
            acc_fmt = self.quant["accum"].effective_format()
            try:
                step = acc_fmt + self.product_format()
            except ValueError as err:
                raise ValueError(f"{self._label()}: {err}") from None
            check_float64_exact(step, f"{self._label()}'s step acc + a*b")
            acc = torch.zeros(qa.shape[:-1] + (qb.shape[-1],), dtype=torch.float64, device=qa.device)
            for i in range(k):  # the documented order: k ascending, the accum cast after every product
                acc = self.quant["accum"](acc + mul(qa[..., :, i:i + 1], qb[..., i:i + 1, :]))
        return self._result(self.quant["output"](acc), torch.promote_types(a.dtype, b.dtype))


class QPermute(nn.Module):
    """``transpose`` / ``permute`` / ``.mT`` in a quantized model: the codes reordered, no cast.

    Give either ``dims`` (a permutation of all axes, batch included, as :meth:`torch.Tensor.permute`)
    or ``transpose`` (two axes, as :meth:`torch.Tensor.transpose`; ``(-2, -1)`` for ``.mT``).
    The batch axis must stay first. The manifest op is ``permute`` with ``dims`` counted without
    the batch axis.
    """

    def __init__(self, dims: "Sequence[int] | None" = None, transpose: "Sequence[int] | None" = None, *,
                 name: "str | None" = None) -> None:
        super().__init__()
        self.layer = name
        if (dims is None) == (transpose is None):
            raise ValueError(f"{self._label()}: give exactly one of dims and transpose")
        for v in (dims, transpose):
            if v is not None and not all(isinstance(d, int) and not isinstance(d, bool) for d in v):
                raise ValueError(f"{self._label()}: dims must be constant ints, got {list(v)}")
        if transpose is not None and len(transpose) != 2:
            raise ValueError(f"{self._label()}: transpose takes two dims, got {list(transpose)}")
        self.dims = None if dims is None else tuple(int(d) for d in dims)
        self.transpose = None if transpose is None else tuple(int(d) for d in transpose)

    def _label(self) -> str:
        return f"layer {self.layer!r} (permute)" if self.layer else "QPermute"

    def extra_repr(self) -> str:
        return f"dims={self.dims}" if self.dims is not None else f"transpose={self.transpose}"

    def permutation(self, rank: int) -> tuple[int, ...]:
        """The permutation of all ``rank`` axes (batch included); ValueError if it moves the batch axis."""
        if self.dims is not None:
            if len(self.dims) != rank:
                raise ValueError(f"{self._label()}: dims {list(self.dims)} for a tensor of rank {rank}")
            perm = [d % rank if -rank <= d < rank else None for d in self.dims]
        else:
            perm = list(range(rank))
            i, j = (d % rank if -rank <= d < rank else None for d in self.transpose)
            if i is None or j is None:
                raise ValueError(f"{self._label()}: transpose dims {list(self.transpose)} out of range for rank {rank}")
            perm[i], perm[j] = perm[j], perm[i]
        if None in perm or sorted(perm) != list(range(rank)):
            raise ValueError(f"{self._label()}: {list(self.dims or self.transpose)} is not a permutation of the "
                             f"{rank} axes")
        if perm[0] != 0:
            raise ValueError(f"{self._label()}: the batch dim (0) must stay first, got the permutation {perm}; only "
                             "the non-batch axes can be reordered")
        return tuple(perm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.permutation(x.dim()))


class QReshape(nn.Module):
    """``reshape`` / ``view`` that keep the batch dim, in a quantized model: C order kept, no cast.

    ``shape`` is the torch target shape with the batch dim first, given as ``-1``
    (``x.reshape(-1, T, H, D)``); one more ``-1`` among the other dims is inferred. The manifest
    op is ``reshape`` with the output shape without the batch dim.
    """

    def __init__(self, shape: Sequence[int], *, name: "str | None" = None) -> None:
        super().__init__()
        self.layer = name
        shape = tuple(shape)
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise ValueError(f"{self._label()}: the target shape must be constant ints, got {list(shape)}")
        if shape[0] != -1:
            raise ValueError(f"{self._label()}: the target shape {list(shape)} must keep the batch dim, given as -1 "
                             "first (e.g. x.reshape(-1, T, F)); merging or splitting the batch dim is not supported")
        if any(d == 0 or d < -1 for d in shape) or list(shape[1:]).count(-1) > 1:
            raise ValueError(f"{self._label()}: invalid target shape {list(shape)}")
        self.shape = shape

    def _label(self) -> str:
        return f"layer {self.layer!r} (reshape)" if self.layer else "QReshape"

    def extra_repr(self) -> str:
        return f"shape={self.shape}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return x.reshape(x.shape[0], *self.shape[1:])
        except RuntimeError as err:
            raise ValueError(f"{self._label()}: cannot reshape {list(x.shape)} to {list(self.shape)} keeping the "
                             f"batch dim: {err}") from None
