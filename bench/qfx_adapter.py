"""qfx as a contender: ``qfx.quantize(x, qfx.parse_type(spelling))``, eager and compiled.

The compiled row turns on qfx's opt-in fused kernels (``qfx.quant.set_compile`` /
``QFX_COMPILE=1``); its first call compiles with torch.compile and is part of the
untimed warm-up.
"""

from __future__ import annotations

import qfx
from qfx import quant

from .harness import QFX, Contender


def qfx_contenders(fmt) -> list[Contender]:
    t = qfx.parse_type(fmt.spelling)

    def eager(x):
        return qfx.quantize(x, t)

    def compiled(x):
        quant.set_compile(True)
        try:
            return qfx.quantize(x, t)
        finally:
            quant.set_compile(False)

    api = f'qfx.quantize(x, qfx.parse_type("{fmt.spelling}"))'
    return [
        Contender(name="qfx", role=QFX, api=api, fn=eager, note="torch in, torch out; eager torch ops"),
        Contender(
            name="qfx (QFX_COMPILE=1)",
            role=QFX,
            api="qfx.quant.set_compile(True); " + api,
            fn=compiled,
            note="torch.compile'd kernel (compiled during warm-up)",
        ),
    ]
