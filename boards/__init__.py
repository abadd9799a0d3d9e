"""qfx.boards: one description per FPGA board (part, resources, clocks, pins, PS IP) and the
files a user needs to build the accelerator on it with Vivado.

Public API::

    board_names() -> list[str]                       # ["pynq-z2", "ultra96", "zcu104"]
    get_board(name) -> Board                         # aliases, case-insensitive
    check_fit(board, usage) -> list[str]             # problems over the SAFE utilization
    utilization(board, usage) -> dict
    platform.make_platform(board, clock_mhz=None) -> XilinxPlatform  # Amaranth platform (Vivado build plan)
    render_board_files(board, design) -> dict[str, str]  # create_project.tcl, constraints.xdc, ...

Board data lives in ``boards/<name>.yaml``; the Vivado scripts are Jinja2 templates in
``boards/templates``. The layers: :mod:`.board` (the data) <- :mod:`.fit`, :mod:`.vivado`,
:mod:`.platform` (Amaranth; import it as ``qfx.boards.platform``); nothing imports upwards.
"""

from .board import RESOURCE_KEYS, Board, Led, PinClock, board_names, get_board, load_board
from .fit import check_fit, utilization
from .vivado import ACCELERATOR_PORTS, render_board_files, validate_design

__all__ = [
    "ACCELERATOR_PORTS", "RESOURCE_KEYS", "Board", "Led", "PinClock", "board_names", "check_fit",
    "get_board", "load_board", "render_board_files", "utilization", "validate_design",
]
