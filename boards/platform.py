"""Amaranth platforms for the boards: ``make_platform(board)`` -> ``XilinxPlatform`` subclass instance.

* A board with an oscillator on a PL pin (PYNQ-Z2: 125 MHz on H16) gets it as the default clock
  resource ``clk``; Amaranth's own ``sync`` domain logic (BUFGCTRL gated by STARTUPE2 EOS) is used.
* A board whose fabric clock comes from the processing system (Ultra96 v2, ZCU104: no PL
  oscillator is used) gets a ``sync`` domain driven by PS clock 0 through the PS hard block:
  ``PS8.PLCLK[0] -> BUFG_PS`` on Zynq UltraScale+, ``PS7.FCLKCLK[0] -> BUFG`` on Zynq-7000, with a
  clock constraint at the requested frequency and a reset held until configuration ends (EOS of
  STARTUPE3/STARTUPE2). The PS must be programmed by the boot firmware (FSBL / psu_init) to run
  that clock at the same frequency; the bitstream cannot set it.
* LEDs on PL pins become ``led`` resources (numbered as on the board).

``platform.prepare(elaboratable)`` writes the Vivado build plan (``top.tcl``, ``top.xdc``,
``top.v``, ``build_top.sh``) without running Vivado.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amaranth.build import Attrs, Clock, Pins, Resource
from amaranth.hdl import ClockDomain, ClockSignal, Instance, Module, Signal
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.vendor import XilinxPlatform

if TYPE_CHECKING:
    from .board import Board

__all__ = ["BoardPlatform", "make_platform"]


class BoardPlatform(XilinxPlatform):
    """Base class of the per-board platforms; ``board`` and ``ps_clock_mhz`` are set per instance."""

    board: "Board"
    ps_clock_mhz: float

    def create_missing_domain(self, name):
        if name != "sync" or self.default_clk is not None:
            return super().create_missing_domain(name)
        return self._ps_clock_domain()

    def _ps_clock_domain(self) -> Module:
        m = Module()
        clk = Signal(name="ps_pl_clk0")
        eos = Signal(name="config_eos")
        m.domains += ClockDomain("sync")
        if self.board.ps_kind == "zynq_ultrascale_plus":
            plclk = Signal(4, name="ps_plclk")
            m.submodules.ps = Instance("PS8", o_PLCLK=plclk)
            m.submodules.ps_clk_buf = Instance("BUFG_PS", i_I=plclk[0], o_O=clk)
            m.submodules.startup = Instance("STARTUPE3", o_EOS=eos)
        else:
            fclk = Signal(4, name="ps_fclk")
            m.submodules.ps = Instance("PS7", o_FCLKCLK=fclk)
            m.submodules.ps_clk_buf = Instance("BUFG", i_I=fclk[0], o_O=clk)
            m.submodules.startup = Instance("STARTUPE2", o_EOS=eos)
        m.d.comb += ClockSignal("sync").eq(clk)
        m.submodules.reset_sync = ResetSynchronizer(~eos, domain="sync")
        self.add_clock_constraint(clk, self.ps_clock_mhz * 1e6)
        return m


def _resources(board: "Board") -> list[Resource]:
    res: list[Resource] = []
    if board.pin_clock is not None:
        pc = board.pin_clock
        res.append(Resource("clk", 0, Pins(pc.loc, dir="i"), Clock(pc.mhz * 1e6),
                            Attrs(IOSTANDARD=pc.iostandard)))
    for led in board.leds:
        res.append(Resource(led.name, led.index, Pins(led.loc, dir="o"), Attrs(IOSTANDARD=led.iostandard)))
    return res


def make_platform(board: "Board", *, clock_mhz: float | None = None, toolchain: str = "Vivado") -> BoardPlatform:
    """A fresh platform instance for ``board`` (one per build: Amaranth platforms prepare once).

    ``clock_mhz`` sets the PS fabric clock of PS-clocked boards (default: the board's default);
    it is rejected on boards whose platform clock is a fixed oscillator pin.
    """
    if clock_mhz is not None:
        if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, (int, float)):
            raise TypeError(f"clock_mhz must be a number in MHz, got {type(clock_mhz).__name__}")
        if board.pin_clock is not None:
            raise ValueError(f"clock_mhz: {board.name}'s platform clock is the fixed "
                             f"{board.pin_clock.mhz:g} MHz oscillator on {board.pin_clock.loc}; "
                             f"leave clock_mhz unset (derive other clocks with an MMCM/PLL)")
        if not 0 < clock_mhz <= board.max_clock_mhz:
            raise ValueError(f"clock_mhz = {clock_mhz!r} is outside (0, {board.max_clock_mhz:g}] MHz "
                             f"for {board.name}; choose a frequency in that range")
    attrs = {
        "device": board.device,
        "package": board.package,
        "speed": board.speed,
        "resources": _resources(board),
        "connectors": [],
        "default_clk": "clk" if board.pin_clock is not None else None,
        "__doc__": f"Amaranth platform for the {board.title} ({board.part}).",
    }
    cls_name = "".join(part.capitalize() for part in board.name.replace("-", "_").split("_")) + "Platform"
    cls = type(cls_name, (BoardPlatform,), attrs)
    platform = cls(toolchain=toolchain)
    platform.board = board
    platform.ps_clock_mhz = float(clock_mhz if clock_mhz is not None else board.default_clock_mhz)
    return platform
