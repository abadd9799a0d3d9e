"""Baselines (the denominators of the ratios) and timed reference rows."""

from __future__ import annotations

import torch

from .formats import AP_FIXED_8_3, FixedFormat
from .harness import BASELINE, INFO, REFERENCE, Contender
from .inputs import reference_fixed, reference_minifloat


def _fake_quant(fmt: FixedFormat, role: str, compare: bool, note: str = "") -> Contender:
    s, lo, hi = fmt.scale, fmt.code_min, fmt.code_max

    def fn(x):
        return torch.clamp(torch.round(x * s), lo, hi) / s

    return Contender(
        name="bare torch fake-quant" + ("" if compare else f" (ap_fixed<{fmt.width},{fmt.int_bits}>)"),
        role=role,
        api=f"torch.clamp(torch.round(x * {s:g}), {lo}, {hi}) / {s:g}",
        fn=fn,
        note=note,
        compare=compare,
    )


def baseline(fmt) -> Contender:
    if fmt.kind == "fixed":
        return _fake_quant(fmt, BASELINE, compare=True)
    dt = fmt.torch_dtype

    def fn(x):
        return x.to(dt).to(torch.float32)

    return Contender(
        name=f"torch cast ({str(dt).removeprefix('torch.')})",
        role=BASELINE,
        api=f"x.to({dt}).to(torch.float32)",
        fn=fn,
    )


def extra_rows(fmt) -> list[Contender]:
    """Rows timed for reference only: the NumPy/ml_dtypes reference itself and,
    for minifloats, the fixed-point fake-quant of format A."""
    rows = []
    if fmt.kind == "fixed":

        def ref_fn(x, fmt=fmt):
            return reference_fixed(x.numpy(), fmt)

        rows.append(
            Contender(
                name="reference (NumPy float64)",
                role=REFERENCE,
                api=f"np.clip(np.round(x.numpy().astype(np.float64) * {fmt.scale:g}), "
                f"{fmt.code_min}, {fmt.code_max}) / {fmt.scale:g}",
                fn=ref_fn,
                note="NumPy in, float64 out; the definition of bit-exact",
            )
        )
    else:

        def ref_fn(x, fmt=fmt):
            return reference_minifloat(x.numpy(), fmt)

        rows.append(
            Contender(
                name="reference (ml_dtypes)",
                role=REFERENCE,
                api=f"x.numpy().astype(ml_dtypes.{fmt.np_dtype.__name__}).astype(np.float32)",
                fn=ref_fn,
                note="NumPy in/out; the definition of bit-exact",
            )
        )
        rows.append(
            _fake_quant(AP_FIXED_8_3, INFO, compare=False, note="timing only: the format-A baseline, for scale")
        )
    return rows
