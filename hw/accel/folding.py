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
from dataclasses import dataclass, field
from typing import Any, Mapping

from qfx.manifest import Manifest, Node
from qfx.types import KHot

__all__ = ["Folding", "FoldingError", "MAC_OPS", "mac_dims", "valid_pe", "valid_simd", "check_folding",
           "folded_cycles", "parse_foldings", "FoldingPlan", "plan", "layer_cycles", "folded_resources",
           "folded_estimate"]

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


# ---------------------------------------------------------------------------
# The automatic folding planner
# ---------------------------------------------------------------------------

#: Nodes that are wiring, not engines (no cycles, no resources of their own).
_WIRING = ("input", "flatten", "reshape", "output")
_RESOURCES = ("lut", "ff", "dsp", "bram36")


def layer_cycles(node: Node, folding: "Folding | None" = None) -> dict[str, int]:
    """``load`` / ``compute`` / ``outputs`` cycles of any engine: :func:`folded_cycles` for a MAC
    engine, :func:`qfx.hw.accel.engines.engine_cycles` (the one definition) for the others, whose
    cycles no folding changes: they are the floor of the design's initiation interval."""
    if node.op in MAC_OPS:
        return folded_cycles(node, folding or Folding())
    from .engines import engine_cycles

    return engine_cycles(node)


def _product_unit(manifest: Manifest, node: Node, base: Mapping[str, float]) -> dict[str, float]:
    """Resources one more product unit (multiplier + its adder and cast) of ``node`` adds."""
    from qfx.cost.estimate import FF_COEF, LUT_COEF, engine_features

    f = engine_features(manifest)[node.name]
    acc = node.formats["accum"]
    mul_lut = sum(f[k] * LUT_COEF[k] for k in ("mul_fixed_lut", "mul_khot", "mul_minifloat", "mul_lmul"))
    if f["mul_fixed_lut"] and not LUT_COEF["mul_fixed_lut"]:
        # the calibration set has no LUT-mapped fixed multiplier; count one LUT per partial-product bit
        mul_lut = f["mul_fixed_lut"]
    # adder of the term into the running sum, its cast (rounding / saturation logic) and the
    # product register of the pipelined tree
    lut = mul_lut + acc.width + f["cast_logic_bits"] * LUT_COEF["cast_logic_bits"]
    ff = acc.width + f["cast_logic_bits"] * FF_COEF["cast_logic_bits"]
    return {"lut": lut, "ff": ff, "dsp": float(base.get("dsp", 0))}


def pipeline_register_bits(node: Node, folding: Folding) -> int:
    """FFs the pipelined MAC engine adds over the unpipelined one it was calibrated on.

    Counted from the structure (hw/pe/dsp_pipe.product_stage and MACEngine), first order: per
    product unit the operand (A/B) register and one more product register (M / P: the old
    engine had one), the adder tree's registers (``MACEngine._tree_stages``, each holding the
    partial sums of its level), a conv's registered window addresses, and the final sum's and
    output cast's registers per channel.
    """
    from .engines import MACEngine
    from .weights import plan_weights

    x, acc, out = node.formats["input"], node.formats["accum"], node.formats["output"]
    w = plan_weights(node).word_shape.width
    prod = x.width + w
    bits = folding.pe * folding.simd * (x.width + w + prod)
    sums, width = folding.simd, prod
    for _ in range(MACEngine._tree_stages(node, folding)):  # a register after every second level
        sums, width = -(-sums // 4), width + 2
        bits += folding.pe * sums * width
    return int(bits + window_register_bits(node, folding) + folding.pe * (acc.width + out.width))


def window_register_bits(node: Node, folding: Folding) -> int:
    """FFs of a conv engine's registered window addresses (``MACEngine._window_stages``): per
    ``simd`` lane its buffer address (two slots) and pad flag, plus the ROM address and control
    delayed beside them; 0 for dense."""
    from .engines import MACEngine

    stages = MACEngine._window_stages(node)
    if not stages:
        return 0
    n_in = math.prod(node.input_shapes[0])
    return stages * (folding.simd * ((2 * n_in).bit_length() + 1) + 16)


def folded_resources(manifest: Manifest, node: Node, folding: Folding,
                     base: "Mapping[str, float] | None" = None, *, family: str = "xcup") -> dict[str, float]:
    """Estimated LUT / FF / DSP / BRAM36 of ``node``'s engine at ``folding``.

    What is estimated (first order, not calibrated on folded designs, which do not exist yet):

    * the engine at folding 1 is :func:`qfx.cost.estimate.estimate`'s per-layer figure (LUT / FF
      from the Yosys-calibrated model, DSP / BRAM from the structure, :mod:`hw.accel.resources`);
    * every further product unit (``pe * simd - 1`` of them) adds its multiplier (a DSP MAC: the
      DSPs of the folding-1 multiplier, no LUT; K-hot, minifloat, L-Mul, LUT-mapped fixed: the
      calibrated LUT cost of that product unit, 0 DSP), an accumulation adder of the accumulator's
      width with its cast logic (LUT) and a pipeline register (FF);
    * the weight ROM is split into ``pe * simd`` banks read in parallel and the input buffer
      (two slots: double buffering) into ``simd`` read lanes, partitioned for a dense row and
      replicated for conv windows (as the engine builds them); each goes to block RAM or LUTs by
      :func:`hw.accel.resources.memory_map`, so a highly folded layer can leave block RAM for LUTs;
    * where the engine packs (``pe >= 2``, int8-class fixed-point operands: WP486), each pair of
      output channels shares one DSP multiply per term: ``ceil(pe / 2) * simd`` DSP multiplies
      on a DSP48E2 ``family`` (``xcup``); a DSP48E1 (``xc7``) needs two for the 27 x 18 multiply,
      so there the count stays ``pe * simd``.
    """
    from qfx.cost.estimate import LUT_COEF
    from .resources import memory_map, rom_width
    from .weights import plan_weights

    check_folding(node, folding)
    if base is None:
        from qfx.cost.estimate import estimate

        base = estimate(manifest)["per_layer"][node.name]
    units = folding.pe * folding.simd
    if units == 1:
        return {k: float(base[k]) for k in _RESOURCES}
    pipe_ff = pipeline_register_bits(node, folding) - pipeline_register_bits(node, Folding())
    unit = _product_unit(manifest, node, base)
    wplan = plan_weights(node)
    x = node.formats["input"]
    n_in = math.prod(node.input_shapes[0])
    # memories at folding 1 (what `base` holds) and banked
    w_width = rom_width(wplan.words, wplan.word_shape.width)
    one_w = memory_map("rom", len(wplan.words), w_width)
    # the input buffer: 2 slots (double buffering); ``simd`` read lanes, each its own memory,
    # partitioned for a dense row (n_in / simd words a lane), replicated for conv windows
    one_x = memory_map("ram", 2 * n_in, x.width)
    lane_words = n_in // folding.simd if node.op == "dense" else n_in
    bank_w = memory_map("rom", max(len(wplan.words) // units, 1), w_width)
    bank_x = memory_map("ram", 2 * max(lane_words, 1), x.width)
    ramb18 = (units * bank_w["ramb18"] + folding.simd * bank_x["ramb18"]
              - one_w["ramb18"] - one_x["ramb18"])
    mem_lut = ((units * bank_w["rom_luts"] - one_w["rom_luts"]) * LUT_COEF["rom_luts"]
               + (folding.simd * bank_x["lutram_luts"] - one_x["lutram_luts"]) * LUT_COEF["lutram_luts"])
    extra = units - 1
    if wplan.mx is not None:  # MX: pe x lane-group shifters at this folding, one at folding 1 (engines_mx)
        from .engines_mx import mx_shifter_cost

        mem_lut += (mx_shifter_cost(node, folding.pe, folding.simd)["shifter_luts"]
                    - mx_shifter_cost(node)["shifter_luts"]) * LUT_COEF["mx_shift_luts"]
    # WP486: output-channel pairs share one DSP multiply per term (MACEngine._packs); the
    # unpacking add of every pair's high product is fabric logic
    from .engines import MACEngine

    dsp = float(base["dsp"] + extra * unit["dsp"])
    unpack_lut = 0.0
    if family == "xcup" and MACEngine._packs(node, folding):  # a DSP48E2's 27 x 18 (DSP48E1: 25 x 18)
        pairs = folding.pe // 2
        dsp -= pairs * folding.simd * unit["dsp"]
        unpack_lut = pairs * folding.simd * (node.formats["input"] * plan_weights(node).w_fmt).width
    from .khot_wired import hardwired, hardwired_cost

    if hardwired(node, folding):
        # the weight ROM is gone; the input buffer's simd lanes stay
        x_mem = {"lut": (folding.simd * bank_x["lutram_luts"] - one_x["lutram_luts"]) * LUT_COEF["lutram_luts"],
                 "ramb18": folding.simd * bank_x["ramb18"] - one_x["ramb18"] - one_w["ramb18"]}
        return _hardwired_resources(manifest, node, folding, base, unit, hardwired_cost(node), one_w, x_mem)
    return {
        "lut": float(round(base["lut"] + extra * unit["lut"] + max(mem_lut, 0.0) + unpack_lut)),
        "ff": float(round(base["ff"] + extra * unit["ff"] + pipe_ff)),
        "dsp": dsp,
        "bram36": float(base["bram36"]) + max(ramb18, 0.0) / 2,
    }


#: Yosys maps the hard-wired constant adds into fewer LUTs than their bit ranges (one LUT per
#: result bit) count: 0.72 on fc1 and 0.88 on fc2 of the digits K-hot MLP (bench/khot_unroll.py).
#: Fitted on those two, checked on three more designs (tests/test_khot_unroll.py).
HARDWIRED_ADDER_FIT = 0.8


def _hardwired_resources(manifest: Manifest, node: Node, folding: Folding, base: Mapping[str, float],
                         unit: Mapping[str, float], wired: Mapping[str, float],
                         one_w: Mapping[str, float], x_mem: Mapping[str, float]) -> dict[str, float]:
    """:func:`folded_resources` of a fully unrolled K-hot node (hw/accel/khot_wired.py): the
    folding-1 engine without its weight ROM and its one K-hot multiplier (barrel shifters), plus
    the constant products and the exact adder tree counted on bit ranges from the weights'
    digits (:func:`~qfx.hw.accel.khot_wired.hardwired_cost`), or for a declared accumulator an
    add and cast per product (a LUT per accumulator bit, first order), the input
    buffer's lanes and (conv) their registered window addresses, the lanes' delay registers in place of the product units' operand
    and product registers, and per output channel its accumulator, final-sum and output cast.
    The adds are scaled by :data:`HARDWIRED_ADDER_FIT` (fitted on Yosys); checked against Yosys in
    tests/test_khot_unroll.py and bench/khot_unroll.py."""
    from qfx.cost.estimate import FF_COEF, LUT_COEF, engine_features

    f = engine_features(manifest)[node.name]
    units, pe, simd = folding.pe * folding.simd, folding.pe, folding.simd
    x, acc, out = node.formats["input"], node.formats["accum"], node.formats["output"]
    mul_lut, mul_ff = f["mul_khot"] * LUT_COEF["mul_khot"], f["mul_khot"] * FF_COEF["mul_khot"]
    # per extra output channel: its accumulator add, the final-sum, accumulator and output registers;
    # per extra input lane (conv: replicated buffers): its read register and window address arithmetic
    lut = (base["lut"] - mul_lut - one_w["rom_luts"] * LUT_COEF["rom_luts"] + max(x_mem["lut"], 0.0)
           + HARDWIRED_ADDER_FIT * wired["adder_luts"] + wired["negator_luts"] + wired["delay_luts"]
           + (pe - 1) * (acc.width + out.width)
           + (simd - 1) * f["addr_bits"] * LUT_COEF["addr_bits"])
    ff = (base["ff"] - mul_ff + wired["delay_ffs"] + (pe - 1) * (2 * acc.width + out.width)
          + (0 if node.op == "dense" else (simd - 1) * x.width) + window_register_bits(node, folding))
    if node.params.get("accum_exact", False):  # the exact tree, counted on the products' bit ranges
        lut += HARDWIRED_ADDER_FIT * wired["tree_luts"]
        ff += wired["tree_ffs"]
    else:  # declared accumulator: per product an add of acc + p and its cast, chained, combinational
        lut += (units - pe) * acc.width  # Yosys folds the cast's rounding into the add's carry chain
    return {"lut": float(round(lut)), "ff": float(round(max(ff, 0.0))), "dsp": 0.0,
            "bram36": max(float(base["bram36"]) + x_mem["ramb18"] / 2, 0.0)}


def folded_estimate(manifest: Manifest, foldings: "Mapping[str, Folding]") -> dict[str, Any]:
    """:func:`qfx.cost.estimate.estimate` of the accelerator at ``foldings``: the same keys, each
    folded dense / conv2d layer's figure from :func:`folded_resources`, the others unchanged."""
    from qfx.cost.estimate import TOP_FF, TOP_LUT, estimate

    est = estimate(manifest)
    per: dict[str, dict[str, float]] = {}
    for name, base in est["per_layer"].items():
        f = foldings.get(name)
        if f is not None and f.pe * f.simd > 1:
            per[name] = {**base, **folded_resources(manifest, manifest.node(name), f, base)}
        else:
            per[name] = dict(base)
    tot = {k: sum(float(v[k]) for v in per.values()) for k in _RESOURCES}
    return {**est, "lut": int(round(tot["lut"] + round(TOP_LUT))), "ff": int(round(tot["ff"] + round(TOP_FF))),
            "dsp": int(round(tot["dsp"])), "bram36": tot["bram36"],
            "basis": f"{est['basis']}; folded engines per qfx.hw.accel.folding.folded_resources",
            "per_layer": per}


@dataclass(frozen=True)
class FoldingPlan:
    """The folding the planner chose and what it predicts.

    Attributes
    ----------
    foldings : dict[str, Folding]
        Per dense / conv2d layer, in manifest order.
    layers : dict[str, dict]
        Per engine: ``cycles`` (load / compute / outputs), ``ii`` (their maximum), ``folding``
        (MAC engines) and ``resources`` (estimated, see :func:`folded_resources`).
    ii : int
        Initiation interval of the design: the slowest engine's.
    clock_mhz : float
    resources : dict[str, float]
        Whole-design estimate (engines + the top-level stream glue).
    limit : str
        Why the planner stopped (target met, a non-MAC floor, or the resource that blocked the next step).
    khot_unrolled : tuple[str, ...]
        With ``khot_unroll``: the K-hot layers fully unrolled into hard-wired shift-add products.
    khot_kept : dict[str, str]
        With ``khot_unroll``: the K-hot layers left rolled, each with the reason.
    """

    board: str
    foldings: dict
    layers: dict
    ii: int
    clock_mhz: float
    resources: dict
    limit: str
    khot_unrolled: tuple = ()
    khot_kept: dict = field(default_factory=dict)

    @property
    def inferences_per_s(self) -> float:
        return self.clock_mhz * 1e6 / self.ii

    @property
    def bottleneck(self) -> str:
        return max(self.layers, key=lambda n: self.layers[n]["ii"])

    def as_dict(self) -> dict[str, Any]:
        return {"board": self.board, "ii": self.ii, "clock_mhz": self.clock_mhz,
                "inferences_per_s": round(self.inferences_per_s, 3), "bottleneck": self.bottleneck,
                "limit": self.limit, "resources": dict(self.resources),
                "foldings": {n: f.as_dict() for n, f in self.foldings.items()},
                **({"khot_unroll": {"unrolled": list(self.khot_unrolled), "kept": dict(self.khot_kept)}}
                   if self.khot_unrolled or self.khot_kept else {})}


def _next(values: list[int], v: int) -> "int | None":
    bigger = [d for d in values if d > v]
    return bigger[0] if bigger else None


def plan(manifest: Manifest, board: Any, *, target_ii: "int | None" = None, fps: "float | None" = None,
         clock_mhz: "float | None" = None, overrides: "Mapping[str, Folding] | None" = None,
         khot_unroll: bool = False) -> FoldingPlan:
    """Choose each dense / conv2d layer's folding for ``board``.

    Greedy and deterministic: start at folding 1 (or the ``overrides``, which stay fixed); while
    the slowest engine is a MAC engine limited by its compute, raise its folding one valid step
    (the cheaper of the next ``simd`` and the next ``pe`` in product units, ``simd`` first on a
    tie; the other if the cheaper one does not fit) as long as the whole design fits the board's
    safe utilization (:func:`qfx.boards.check_fit` on :func:`folded_resources`). It stops at the
    first design meeting ``target_ii`` (or ``fps`` at ``clock_mhz``, default the board's clock)
    -- the smallest such design the greedy order reaches -- or, without a target, when the
    bottleneck is a non-MAC floor (an engine's load / output beats, a pool / add / element-wise
    engine) or no step fits. Then, where WP486 packing applies once ``pe`` is even, an odd ``pe``
    trades a factor 2 of ``simd`` for ``pe`` (same cycles, half the DSP multiplies) if that fits.

    ``khot_unroll``: after balancing, each K-hot layer (not overridden) that can be hard-wired
    (:func:`~qfx.hw.accel.khot_wired.hardwired`) is fully unrolled where that needs fewer LUTs
    than its rolled folding and the design still fits: its products become constant shift-add
    trees with no DSP, no weight ROM and no barrel shifter, which the rolled K-hot engine pays for
    on every product unit. A full unroll is never slower, but it builds every MAC: it pays where
    the rolled folding must already be wide (a conv with few input channels, a tight target).
    The plan lists the layers unrolled and, for the others, why not (``khot_unrolled`` /
    ``khot_kept``).

    Raises
    ------
    FoldingError
        An override that does not divide its layer, a bad target, or a target the board cannot
        reach (the best reachable II / fps and what limits it).
    """
    from qfx.boards import check_fit, get_board
    from qfx.cost.estimate import TOP_FF, TOP_LUT, estimate

    b = get_board(board)
    clock = float(clock_mhz) if clock_mhz is not None else float(b.default_clock_mhz)
    if not math.isfinite(clock):
        raise FoldingError(f"clock_mhz must be finite, got {clock_mhz!r}")
    if not clock > 0:
        raise FoldingError(f"clock_mhz must be > 0, not {clock_mhz!r}")
    if target_ii is not None and fps is not None:
        raise FoldingError("give a target II or a target fps, not both")
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
            raise FoldingError(f"target fps must be a number > 0, not {fps!r}")
        target_ii = max(int(math.floor(clock * 1e6 / fps)), 0)
        if target_ii < 1:
            raise FoldingError(f"{fps:g} inferences/s needs under one cycle per inference at {clock:g} MHz")
    elif target_ii is not None and (isinstance(target_ii, bool) or not isinstance(target_ii, int) or target_ii < 1):
        raise FoldingError(f"target II must be an int >= 1 cycles, not {target_ii!r}")
    nodes = {n.name: n for n in manifest}
    fixed = dict(overrides or {})
    for name, f in fixed.items():
        if name not in nodes or nodes[name].op not in MAC_OPS:
            macs = [n for n, node in nodes.items() if node.op in MAC_OPS]
            raise FoldingError(f"folding names layer {name!r}, which is not a dense/conv2d layer of the manifest; "
                               f"its dense/conv2d layers: {', '.join(macs) or '(none)'}")
        check_folding(nodes[name], f)
    base = estimate(manifest)["per_layer"]
    engines = [n for n in manifest if n.op not in _WIRING]
    fold = {n.name: fixed.get(n.name, Folding()) for n in engines if n.op in MAC_OPS}
    static = {n.name: layer_cycles(n) for n in engines if n.op not in MAC_OPS}
    res_cache: dict[tuple[str, Folding], dict[str, float]] = {}

    def res(name: str, f: "Folding | None") -> dict[str, float]:
        if f is None:
            return {k: float(base[name][k]) for k in _RESOURCES}
        key = (name, f)
        if key not in res_cache:
            res_cache[key] = folded_resources(manifest, nodes[name], f, base[name], family=b.family)
        return res_cache[key]

    def totals(fd: Mapping[str, Folding]) -> dict[str, float]:
        t = {"lut": float(round(TOP_LUT)), "ff": float(round(TOP_FF)), "dsp": 0.0, "bram36": 0.0}
        for n in engines:
            r = res(n.name, fd.get(n.name))
            for k in _RESOURCES:
                t[k] += r[k]
        return t

    def cycles(name: str, fd: Mapping[str, Folding]) -> dict[str, int]:
        return folded_cycles(nodes[name], fd[name]) if name in fd else static[name]

    def ii_of(fd: Mapping[str, Folding]) -> tuple[int, str]:
        worst, who = 0, ""
        for n in engines:  # manifest order: the first of equals is the bottleneck (deterministic)
            c = max(cycles(n.name, fd).values())
            if c > worst:
                worst, who = c, n.name
        return worst, who

    start = totals(fold)
    over = check_fit(b, start)
    if over:
        raise FoldingError(f"the design does not fit {b.name} even at the requested folding: " + "; ".join(over))
    limit = ""
    while True:
        ii, who = ii_of(fold)
        if target_ii is not None and ii <= target_ii:
            limit = f"target II {target_ii} met"
            break
        c = cycles(who, fold)
        if who not in fold or who in fixed or c["compute"] <= max(c["load"], c["outputs"]):
            if who not in fold:
                limit = f"non-MAC floor: {nodes[who].op} engine {who!r} needs {ii} cycles"
            elif who in fixed:
                limit = f"layer {who!r} is held at its --folding override {fixed[who].as_dict()}"
            else:
                limit = (f"stream floor: engine {who!r} needs {ii} cycles to "
                         f"{'take its input' if c['load'] >= c['outputs'] else 'emit its output'} one element per beat")
            break
        f = fold[who]
        node = nodes[who]
        steps = []
        s_next, p_next = _next(valid_simd(node), f.simd), _next(valid_pe(node), f.pe)
        if s_next is not None:
            steps.append(Folding(f.pe, s_next))
        if p_next is not None:
            steps.append(Folding(p_next, f.simd))
        steps.sort(key=lambda g: g.pe * g.simd)  # stable: simd first on a tie
        blocked: list[str] = []
        for g in steps:
            trial = {**fold, who: g}
            problems = check_fit(b, totals(trial))
            if not problems:
                fold = trial
                break
            blocked.append(f"pe={g.pe}, simd={g.simd} would need " + "; ".join(problems))
        else:
            limit = f"resources: the next folding of the bottleneck {who!r} does not fit ({' | '.join(blocked)})"
            break
    # WP486 packing pairs output channels: where a layer packs once its pe is even, trade simd
    # for pe at the same cycles (pe x 2, simd / 2) when that is valid and fits (fewer DSPs)
    for name in list(fold):
        f, node = fold[name], nodes[name]
        if b.family != "xcup" or name in fixed or f.pe % 2 == 0 or f.simd % 2 or (f.pe * 2) not in valid_pe(node):
            continue
        g = Folding(f.pe * 2, f.simd // 2)
        from .engines import MACEngine

        if MACEngine._packs(node, g):
            trial = {**fold, name: g}
            if not check_fit(b, totals(trial)):
                fold = trial
    # K-hot layers: a full unroll hard-wires every product (constant shift-adds, no ROM, no barrel
    # shifter, 0 DSP), several times cheaper per MAC than the rolled engine but with every MAC
    # built; it replaces the balanced rolled folding where it costs fewer LUTs (never slower).
    unrolled: list[str] = []
    kept: dict[str, str] = {}
    if khot_unroll:
        from .khot_wired import hardwired

        for name in list(fold):
            node = nodes[name]
            o, _p, k_terms = mac_dims(node)
            full = Folding(o, k_terms)
            if not hardwired(node, full):
                if isinstance(node.formats.get("weight"), KHot):
                    kept[name] = ("grouped convolution" if _groups(node) != 1 else
                                  f"multiply: {node.params.get('multiply')} (hard-wiring needs exact)")
                continue
            f = fold[name]
            if f == full:
                unrolled.append(name)
                continue
            if name in fixed:
                kept[name] = f"held at its --folding override {f.as_dict()}"
                continue
            rolled_lut, full_lut = res(name, f)["lut"], res(name, full)["lut"]
            if full_lut > rolled_lut:
                kept[name] = (f"rolled pe={f.pe}, simd={f.simd} meets the II with {rolled_lut:,.0f} LUT; the full "
                              f"unroll would need {full_lut:,.0f} LUT")
                continue
            problems = check_fit(b, totals({**fold, name: full}))
            if problems:
                kept[name] = f"full unroll pe={full.pe}, simd={full.simd} would need " + "; ".join(problems)
                continue
            fold[name] = full
            unrolled.append(name)
    ii, _ = ii_of(fold)
    if target_ii is not None and ii > target_ii:
        best_fps = clock * 1e6 / ii
        want = f"{fps:g} inferences/s (II {target_ii} cycles at {clock:g} MHz)" if fps is not None \
            else f"II {target_ii} cycles"
        raise FoldingError(f"{want} is not reachable on {b.name}: the best reachable II is {ii} cycles "
                           f"= {best_fps:,.1f} inferences/s at {clock:g} MHz; limited by {limit}")
    layers: dict[str, dict[str, Any]] = {}
    for n in engines:
        c = cycles(n.name, fold)
        entry: dict[str, Any] = {"cycles": c, "ii": max(c.values())}
        if n.name in fold:
            entry["folding"] = fold[n.name].as_dict()
        entry["resources"] = res(n.name, fold.get(n.name))
        layers[n.name] = entry
    return FoldingPlan(board=b.name, foldings=dict(fold), layers=layers, ii=ii, clock_mhz=clock,
                       resources=totals(fold), limit=limit, khot_unrolled=tuple(unrolled), khot_kept=kept)
