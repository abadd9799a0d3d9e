"""qfx as a contender: exactly ``qfx.quantize(x, qfx.parse_type(spelling))``.

If qfx cannot be imported, lacks the API, or cannot parse the format, the row
is skipped with the reason, so the rest of the benchmark still runs.
"""

from __future__ import annotations

from .harness import QFX, Contender


def qfx_contender(fmt) -> Contender:
    api = f'qfx.quantize(x, qfx.parse_type("{fmt.spelling}"))'
    name = "qfx"

    def skip(reason: str) -> Contender:
        return Contender(name=name, role=QFX, api=api, skip_reason=reason)

    try:
        import qfx
    except Exception as e:  # ImportError, or anything qfx's import raises
        return skip(f"import qfx failed: {type(e).__name__}: {e}")
    missing = [a for a in ("parse_type", "quantize") if not hasattr(qfx, a)]
    if missing:
        return skip(f"qfx has no {', '.join('qfx.' + a for a in missing)} yet")
    try:
        t = qfx.parse_type(fmt.spelling)
    except Exception as e:
        return skip(f"qfx.parse_type({fmt.spelling!r}) failed: {type(e).__name__}: {e}")

    quantize = qfx.quantize

    def fn(x):
        return quantize(x, t)

    return Contender(name=name, role=QFX, api=api, fn=fn, note="torch in, torch out")
