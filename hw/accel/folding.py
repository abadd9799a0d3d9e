"""Folding of the dataflow accelerator's MAC engines: the one definition of a layer's parallelism.

A dense or conv2d node computes ``O`` output channels at ``P`` output positions, each the sum of
``K`` terms (``K = in_channels / groups * kernel_h * kernel_w``; for dense ``K = in_features`` and
``P`` the number of rows). Its engine is *folded* (FINN's word; hls4ml's reuse factor is
``K / simd`` seen from the other side) by

* ``pe``: output channels computed in the same cycle (``pe`` divides ``O / groups``), and
* ``simd``: terms of one output consumed per cycle (``simd`` divides ``K``),

so it issues ``O/pe * P * K/simd`` cycles of compute per inference. Folding changes when a term
is computed, never which casts happen in which order: with a declared (non-``auto``)
accumulator the ``simd`` terms of a cycle are added one after another in the documented order,
each add followed by its cast, exactly as the one-term-per-cycle loop does.

Engines exchange single elements per stream beat, so a buffered engine also needs ``n_in``
cycles to take its input and ``n_out`` to emit its output; with double buffering these overlap
the compute of the neighbouring inferences and the engine's initiation interval is the largest
of the three. The planner (:func:`plan`), the RTL engines, the HLS pragmas and the cost model all
read the numbers from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from qfx.manifest import Node

__all__ = ["Folding", "FoldingError", "MAC_OPS", "mac_dims", "valid_pe", "valid_simd", "check_folding",
           "folded_cycles", "parse_foldings"]

#: Manifest ops whose engines fold.
MAC_OPS = ("dense", "conv2d")


class FoldingError(ValueError):
    """A folding that does not fit its layer (names the layer, the value and the valid values)."""


@dataclass(frozen=True)
class Folding:
    """Parallelism of one MAC engine: ``pe`` output channels x ``simd`` terms per cycle."""

    pe: int = 1
    simd: int = 1

    def __post_init__(self) -> None:
        for name in ("pe", "simd"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"Folding.{name} must be an int, not {type(v).__name__}")
            if v < 1:
                raise ValueError(f"Folding.{name} must be >= 1, not {v}")

    @property
    def macs_per_cycle(self) -> int:
        return self.pe * self.simd

    def as_dict(self) -> dict[str, int]:
        return {"pe": self.pe, "simd": self.simd}


def mac_dims(node: Node) -> tuple[int, int, int]:
    """``(O, P, K)`` of a dense / conv2d node: output channels, output positions, terms per output."""
    if node.op == "dense":
        shape = tuple(node.input_shapes[0])
        return int(node.params["out_features"]), math.prod(shape[:-1]), int(shape[-1])
    if node.op == "conv2d":
        c = int(node.input_shapes[0][0])
        o, ho, wo = (int(v) for v in node.output_shape)
        kh, kw = (int(v) for v in node.params["kernel"])
        groups = int(node.params.get("groups", 1))
        return o, ho * wo, c // groups * kh * kw
    raise FoldingError(f"node {node.name!r}: op {node.op!r} does not fold (only {', '.join(MAC_OPS)})")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _groups(node: Node) -> int:
    return int(node.params.get("groups", 1)) if node.op == "conv2d" else 1


def valid_pe(node: Node) -> list[int]:
    """The ``pe`` values that divide the node's output channels per group, ascending (the ``pe``
    channels of a cycle share their input window, so they lie in one group)."""
    return _divisors(mac_dims(node)[0] // _groups(node))


def valid_simd(node: Node) -> list[int]:
    """The ``simd`` values that divide the node's terms per output, ascending."""
    return _divisors(mac_dims(node)[2])


def check_folding(node: Node, folding: Folding) -> Folding:
    """``folding`` if it divides ``node``; a :class:`FoldingError` naming the valid values otherwise."""
    o, _, k = mac_dims(node)
    groups = _groups(node)
    if (o // groups) % folding.pe:
        what = f"{o} output channels" if groups == 1 else f"{o // groups} output channels per group"
        raise FoldingError(f"layer {node.name!r}: pe={folding.pe} does not divide its {what}; "
                           f"valid pe: {', '.join(map(str, valid_pe(node)))}")
    if k % folding.simd:
        raise FoldingError(f"layer {node.name!r}: simd={folding.simd} does not divide its {k} terms per "
                           f"output; valid simd: {', '.join(map(str, valid_simd(node)))}")
    return folding


def folded_cycles(node: Node, folding: Folding = Folding()) -> dict[str, int]:
    """Cycles of a folded MAC engine per inference: ``load`` (input beats), ``compute`` (issue
    cycles) and ``outputs`` (output beats); its steady-state initiation interval is their maximum."""
    check_folding(node, folding)
    o, p, k = mac_dims(node)
    n_in = math.prod(node.input_shapes[0])
    n_out = math.prod(node.output_shape)
    return {"load": n_in, "compute": (o // folding.pe) * p * (k // folding.simd), "outputs": n_out}


def parse_foldings(nodes: Mapping[str, Node], spec: Mapping[str, object]) -> dict[str, Folding]:
    """``{layer: {pe: P, simd: S}}`` (from a ``--folding`` YAML file) as checked Foldings."""
    out: dict[str, Folding] = {}
    for name, entry in spec.items():
        if name not in nodes:
            macs = [n for n, node in nodes.items() if node.op in MAC_OPS]
            raise FoldingError(f"folding names layer {name!r}, which the manifest does not have; its "
                               f"dense/conv2d layers: {', '.join(macs) or '(none)'}")
        if not isinstance(entry, Mapping) or set(entry) - {"pe", "simd"}:
            raise FoldingError(f"folding of layer {name!r} must be a mapping with keys pe and/or simd, "
                               f"not {entry!r}")
        try:
            f = Folding(**{k: entry[k] for k in ("pe", "simd") if k in entry})  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise FoldingError(f"folding of layer {name!r}: {exc}") from None
        out[name] = check_folding(nodes[name], f)
    return out
