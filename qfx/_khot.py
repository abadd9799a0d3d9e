"""Nearest-value projection onto a K-hot set, and its digit decomposition."""

from __future__ import annotations

import numpy as np
import torch

from .types import KHot, khot_slots

#: Widest K-hot base word: codes and midpoints stay exact in float64.
KHOT_MAX_WIDTH = 48


def _check(t: KHot) -> None:
    if t.base.width > KHOT_MAX_WIDTH:
        raise ValueError(
            f"{t}: K-hot bases wider than {KHOT_MAX_WIDTH} bits are not supported "
            "(K-hot weights are meant for narrow shift-add multipliers); e.g. khot<2,ap_fixed<8,1>>"
        )


def khot_codes(x: torch.Tensor, t: KHot) -> torch.Tensor:
    """Nearest K-hot code (float64 integer values) for each element; NaN stays NaN.

    Ties between two neighbours go toward zero; beyond the range, the extreme codes.
    """
    _check(t)
    table = torch.from_numpy(t.codes().astype(np.float64)).to(x.device)
    s = x.double() * (2.0 ** t.base.frac_bits)
    idx = torch.searchsorted(table, s.clamp(table[0], table[-1]).contiguous())
    hi = table[idx.clamp(max=len(table) - 1)]
    lo = table[(idx - 1).clamp(min=0)]
    # 2s vs lo+hi are exact (|codes| < 2**48), so the nearest neighbour and ties are exact.
    twice, mid = 2.0 * s, lo + hi
    take_hi = (twice > mid) | ((twice == mid) & (s < 0))
    q = torch.where(take_hi, hi, lo)
    q = torch.where(s >= table[-1], table[-1], torch.where(s <= table[0], table[0], q))
    return torch.where(torch.isnan(s), s, q)


def khot_digits(codes: np.ndarray | torch.Tensor, t: KHot) -> tuple[np.ndarray, np.ndarray]:
    """Digit decomposition of K-hot codes, as hardware uses it.

    Returns ``(shifts, signs)``, each of shape ``codes.shape + (k,)``: code =
    ``sum(signs[..., j] << shifts[..., j])``; value = code * 2**-frac_bits.
    Digits are the canonical signed-digit (non-adjacent) form, most significant
    first; unused slots have sign 0 and shift 0.
    """
    _check(t)
    c = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if not np.issubdtype(c.dtype, np.integer):
        if not np.all(np.isfinite(c)) or not np.all(c == np.round(c)):
            raise ValueError("khot_digits needs integer codes (use qfx.to_codes first)")
    return khot_slots(c.astype(np.int64), t, dtype=np.int8)
