"""One quantized tensor of a layer: its format, learnable binary point, calibration, overflow count."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from .. import _fixed
from ..quant import _fast_plan, _int_frac, overflow_mask, quantize
from ..arith import envelope
from ..types import FixedType, Format, KHot, MinifloatType, MXType
from .plan import CompilePlanError, compiling, plan_of, set_plan

__all__ = ["TensorQuantizer", "envelope"]

#: Calibrated fractional-bit counts are clamped to +-this (far inside qfx's limits).
_FRAC_LIMIT = 256


@functools.lru_cache(maxsize=4096)
def _with_frac(fmt: FixedType, frac: int) -> FixedType:
    return fmt.with_int_bits(fmt.width - frac)


class TensorQuantizer(nn.Module):
    """Casts a tensor to a qfx format: ``y = cast(x, fmt)``; optionally learns the binary point.

    Parameters
    ----------
    fmt : FixedType, KHot, MinifloatType or MXType
        The format. With a learnable binary point its word length, signedness
        and rounding/overflow modes stay fixed and its binary point is the
        initial value.
    name : str
        Tensor name within the layer (``"input"``, ``"weight"``, ...), for messages.
    learnable : bool
        Own a float parameter ``frac_bits`` passed to
        ``qfx.quantize(x, fmt, frac_bits=...)``. Fixed point only.
    frac_shape : tuple of int
        Shape of ``frac_bits``: ``()`` for one binary point, e.g. ``(C, 1)`` or
        ``(C, 1, 1, 1)`` for one per output channel of a weight.
    track_overflow : bool
        Count the elements that saturate or wrap (``overflow_count``).

    Attributes
    ----------
    frac_bits : nn.Parameter or Tensor or None
        Learnable fractional bits (a Parameter); after :meth:`freeze` a buffer
        holding the rounded values; ``None`` for a fixed format.
    calibrated : Tensor (bool buffer)
        Learnable only: whether ``frac_bits`` was initialised from data. The
        first forward call with ``calibrated == False`` sets ``frac_bits`` so
        that the largest magnitude seen fits (see :meth:`calibrate`).
    max_abs : Tensor (float64 buffer)
        Learnable only: largest magnitude seen by :meth:`calibrate` (per channel).
    overflow_count : Tensor (int64 buffer)
        Elements counted by ``track_overflow`` since the last reset (not in
        the state_dict: a diagnostic, not model state).
    """

    frac_bits: "torch.Tensor | None"

    def __init__(
        self,
        fmt: Format,
        *,
        name: str = "tensor",
        learnable: bool = False,
        frac_shape: tuple[int, ...] = (),
        track_overflow: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(fmt, (FixedType, KHot, MinifloatType, MXType)):
            raise TypeError(f"{name}: expected a qfx format, not {type(fmt).__name__}")
        if learnable and not isinstance(fmt, FixedType):
            raise ValueError(
                f"{name}: a learnable binary point needs a fixed-point format, not {fmt} "
                f"(K-hot, minifloat and MX formats have no movable binary point)"
            )
        self.fmt = fmt
        self.name = name
        self.track_overflow = bool(track_overflow)
        self._frozen = False
        self.register_buffer("overflow_count", torch.zeros((), dtype=torch.int64), persistent=False)
        if learnable:
            shape = tuple(int(s) for s in frac_shape)
            self.frac_bits = nn.Parameter(torch.full(shape, float(fmt.frac_bits)))
            self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
            self.register_buffer("max_abs", torch.zeros(shape, dtype=torch.float64))
        else:
            self.register_parameter("frac_bits", None)

    # -- formats --------------------------------------------------------------
    @property
    def learnable(self) -> bool:
        """Whether the binary point is trained (a Parameter that is not frozen)."""
        return isinstance(self.frac_bits, nn.Parameter)

    @property
    def per_channel(self) -> bool:
        return self.frac_bits is not None and self.frac_bits.dim() > 0

    def _rounded_frac(self) -> list[int]:
        fb = self.frac_bits
        assert fb is not None
        if fb.numel() == 1:
            return [int(round(fb.item()))]  # half to even, as torch.round
        return [int(v) for v in torch.round(fb.detach()).reshape(-1).tolist()]

    def effective_format(self) -> "Format | tuple[FixedType, ...]":
        """The format in force now: the binary point rounded from ``frac_bits`` where learned.

        A tuple of FixedTypes (one per channel) for a per-channel binary point.
        """
        fb = self.frac_bits
        if fb is None:
            return self.fmt
        assert isinstance(self.fmt, FixedType)
        fmts = tuple(_with_frac(self.fmt, f) for f in self._rounded_frac())
        return fmts if fb.dim() > 0 else fmts[0]

    def envelope_format(self) -> Format:
        """:meth:`effective_format`, per-channel formats merged by :func:`envelope`."""
        return envelope(self.effective_format())

    # -- calibration ----------------------------------------------------------
    def _reduce_max_abs(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.nan_to_num(x.detach().double().abs(), nan=0.0, posinf=0.0, neginf=0.0)
        shape = tuple(self.frac_bits.shape)  # type: ignore[union-attr]
        if not shape:
            return a.max() if a.numel() else torch.zeros((), dtype=torch.float64, device=a.device)
        full = (1,) * (a.dim() - len(shape)) + shape
        dims = tuple(i for i, (s, xs) in enumerate(zip(full, a.shape)) if s == 1 and xs != 1)
        m = a.amax(dim=dims, keepdim=True) if dims else a
        return m.reshape(shape)

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Fold ``max|x|`` into ``max_abs`` and set ``frac_bits`` so that it fits.

        Picks the largest fractional-bit count ``F`` (the finest lsb) with
        ``max_abs <= max_code * 2**-F``; channels that saw only zeros keep
        their binary point. Marks the quantizer calibrated.
        """
        if not self.learnable:
            raise RuntimeError(f"{self.name}: only a learnable binary point is calibrated")
        assert isinstance(self.fmt, FixedType)
        m = torch.maximum(self.max_abs, self._reduce_max_abs(x).to(self.max_abs.device))
        self.max_abs.copy_(m)
        top = math.log2(self.fmt.max_code) if self.fmt.max_code > 0 else 0.0
        safe = torch.where(m > 0, m, torch.ones_like(m))
        f = torch.floor(top - torch.log2(safe)).clamp(-_FRAC_LIMIT, _FRAC_LIMIT)
        # log2 may be off by an ulp at exact powers of two: step back where the max does not fit.
        too_big = m > float(self.fmt.max_code) * torch.exp2(-f)
        f = torch.where(too_big, f - 1, f)
        new = torch.where(m > 0, f, self.frac_bits.detach().double())  # type: ignore[union-attr]
        self.frac_bits.copy_(new.to(self.frac_bits.dtype))  # type: ignore[union-attr]
        self.calibrated.fill_(True)

    def reset_calibration(self) -> None:
        """Forget the calibration: the next forward call calibrates again."""
        if self.learnable:
            self.calibrated.fill_(False)
            self.max_abs.zero_()

    # -- freezing -------------------------------------------------------------
    @torch.no_grad()
    def freeze(self) -> None:
        """Round the learned binary point and stop learning it.

        ``frac_bits`` becomes a buffer of rounded values (the same state_dict
        key); a scalar binary point is written into :attr:`fmt`, so that
        ``fmt`` is exactly the format evaluated from now on.
        """
        if not self.learnable:
            return
        rounded = torch.round(self.frac_bits.detach())  # type: ignore[union-attr]
        del self.frac_bits
        self.register_buffer("frac_bits", rounded)
        if not self.per_channel:
            self.fmt = self.effective_format()
        self._frozen = True

    # -- compile plan ---------------------------------------------------------
    def plan_reading(self) -> "tuple[tuple[int, ...], bool]":
        """What the compile plan reads from this quantizer's values: its binary points rounded
        (half to even, as the forward rounds them; empty without ``frac_bits``) and whether it is
        calibrated. :func:`qfx.nn.refresh_compile_plan` reads every quantizer of a model at once."""
        fb = self.frac_bits
        if fb is None:
            return (), True
        return tuple(self._rounded_frac()), not self.learnable or bool(self.calibrated)

    def refresh_plan(self, reading: "tuple[tuple[int, ...], bool] | None" = None) -> None:
        """Record what the compiled forward needs from values (see :mod:`qfx.nn.plan`): whether
        it is calibrated, the format of a frozen scalar binary point, the dtypes that hold the
        effective format exactly, and (a buffer) the rounded binary point the plan assumes.

        ``reading``: :meth:`plan_reading`, where the caller read it already. The plan is a function
        of the reading and of the quantizer's format and kind, so an unchanged reading keeps the
        plan (and the buffer) without recomputing them: the common case of a step in which no
        binary point crossed a rounding boundary."""
        if self.track_overflow:
            raise CompilePlanError(
                f"{self.name}: overflow counting reads values in Python and has no compiled path; "
                "switch it off (qfx.nn.set_track_overflow(model, False)) to compile"
            )
        if isinstance(self.fmt, MXType):
            raise CompilePlanError(f"{self.name}: MX formats ({self.fmt}) have no compiled path; train this model eagerly")
        fb = self.frac_bits
        rounded, calibrated = self.plan_reading() if reading is None else reading
        key = (self.fmt, self.learnable, calibrated, rounded,
               None if fb is None else (tuple(fb.shape), fb.device, isinstance(fb, nn.Parameter)))
        if key == self.__dict__.get("_plan_key") and "_compile_plan" in self.__dict__:
            return
        with torch.no_grad():
            self._compute_plan(fb, rounded, calibrated)
        self.__dict__["_plan_key"] = key

    def _compute_plan(self, fb: "torch.Tensor | None", rounded: "tuple[int, ...]", calibrated: bool) -> None:
        if self.learnable and calibrated:
            planned_now = torch.tensor(rounded, dtype=torch.int64, device=fb.device).reshape(fb.shape)  # type: ignore[union-attr]
            planned = self.__dict__["_buffers"].get("_planned_frac")
            if planned is None or planned.shape != planned_now.shape or planned.device != planned_now.device:
                self.register_buffer("_planned_frac", planned_now, persistent=False)
            else:
                planned.copy_(planned_now)
        fmt = self.effective_format() if calibrated else self.fmt
        env = envelope(fmt)
        holds = frozenset(
            d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
            if isinstance(env, FixedType) and _fixed.holds_exactly(env, d)
        )
        frozen = fmt if (fb is not None and fb.dim() == 0 and not isinstance(fb, nn.Parameter)) else None
        # the eager forward's fast casts (_FixedSTEFast, _FixedSTEFused64) apply: compiled, their torch-op twin
        fast = (self.learnable and calibrated and fb.numel() == 1 and fb.dim() == 0  # type: ignore[union-attr]
                and _fast_plan(self.fmt, _int_frac(fb, self.fmt)) is not None)  # type: ignore[arg-type]
        set_plan(self, (calibrated, frozen, holds, fast))

    def _compiled_forward(self, x: torch.Tensor) -> torch.Tensor:
        calibrated, frozen, _, fast = plan_of(self)
        fb = self.frac_bits
        if fb is None:
            return quantize(x, self.fmt)
        if frozen is not None:
            return quantize(x, frozen)
        if not isinstance(fb, nn.Parameter):  # frozen per-channel binary point: constant values
            return quantize(x, self.fmt, frac_bits=fb)
        if not calibrated:
            raise CompilePlanError(
                f"{self.name}: the learnable binary point is not calibrated; calibrate before compiling "
                "(qfx.train.calibrate(model, batches), or one eager forward call)"
            )
        from .._compiled import fast_fixed_cast, fixed_cast_ste

        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return quantize(x, self.fmt, frac_bits=fb)  # quantize's own error
        if fast and x.dtype in (torch.float32, torch.float64):
            return fast_fixed_cast(x, fb, self.fmt, self._planned_frac)
        return fixed_cast_ste(x, fb, self.fmt, self._planned_frac)

    # -- forward --------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if compiling():
            return self._compiled_forward(x)
        fb = self.frac_bits
        if fb is None:
            q = quantize(x, self.fmt, what=f"the {self.name} tensor") if isinstance(self.fmt, MXType) else quantize(x, self.fmt)
        elif fb.dim() == 0 and not isinstance(fb, nn.Parameter):
            q = quantize(x, self.effective_format())
        else:
            if isinstance(fb, nn.Parameter) and not bool(self.calibrated):
                self.calibrate(x)
                fb = self.frac_bits
            q = quantize(x, self.fmt, frac_bits=fb)
        if self.track_overflow:
            self.overflow_count += self.count_overflow(x)
        return q

    def scalar_fixed_cast(self) -> "tuple[FixedType, int, torch.Tensor | None] | None":
        """``(format, fractional bits, learnable binary point or None)`` the next :meth:`forward`
        casts with, where that is one fixed-point cast with a single binary point and nothing
        else (no overflow count, no calibration pending); else None. For fused kernels that
        replace the call (``qfx.nn._bn_fused``)."""
        fb = self.frac_bits
        if self.track_overflow or not isinstance(self.fmt, FixedType):
            return None
        if fb is None:
            return self.fmt, self.fmt.frac_bits, None
        if fb.numel() != 1:
            return None
        if isinstance(fb, nn.Parameter):
            if not bool(self.calibrated):  # the first call calibrates through forward()
                return None
            return self.fmt, _int_frac(fb, self.fmt), fb
        t = self.effective_format()  # frozen: the rounded binary point
        return t, t.frac_bits, None

    @torch.no_grad()
    def count_overflow(self, x: torch.Tensor) -> int:
        """How many elements of ``x`` saturate or wrap in the effective format."""
        fmts = self.effective_format()
        if not isinstance(fmts, tuple):
            return int(overflow_mask(x, fmts).sum())
        per = x.detach().reshape(len(fmts), -1) if x.dim() else x.detach().reshape(1, 1)
        return sum(int(overflow_mask(per[c], t).sum()) for c, t in enumerate(fmts))

    def result_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """``dtype`` if it holds every value of the effective format exactly, else float64."""
        if compiling():
            return dtype if dtype in plan_of(self)[2] else torch.float64
        fmt = self.envelope_format()
        if isinstance(fmt, FixedType) and _fixed.holds_exactly(fmt, dtype):
            return dtype
        return torch.float64

    def extra_repr(self) -> str:
        fmt = self.effective_format()
        text = ", ".join(map(str, fmt)) if isinstance(fmt, tuple) else str(fmt)
        if self.learnable:
            text += ", learnable"
        return f"{self.name}: {text}"
