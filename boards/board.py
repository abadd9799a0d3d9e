"""Board descriptions: the frozen :class:`Board` record and its loader from ``boards/*.yaml``.

Every YAML file is validated on load; a missing or malformed field raises ``ValueError``
naming the file and the key, so a broken board file fails loudly at first use instead of
producing a wrong TCL script or a wrong fit verdict later.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

__all__ = ["Board", "Led", "PinClock", "RESOURCE_KEYS", "board_names", "get_board", "load_board"]

#: The resources every board lists, in report order.
RESOURCE_KEYS: tuple[str, ...] = ("lut", "ff", "dsp", "bram36", "uram")

_FAMILIES = {"xcup": "ultrascale_plus", "xc7": "series7"}
_PS_KINDS = {"zynq_ultrascale_plus", "zynq7"}
_DATA_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Led:
    """One user LED on a PL pin."""

    name: str
    index: int
    loc: str
    iostandard: str


@dataclass(frozen=True)
class PinClock:
    """A single-ended oscillator on a PL pin."""

    name: str
    loc: str
    iostandard: str
    mhz: float


@dataclass(frozen=True)
class Board:
    """One FPGA board: part, resources, clocks, memory, power, PS IP and PL pins.

    ``resources`` and ``safe_utilization`` are read-only mappings keyed by
    :data:`RESOURCE_KEYS`. ``clock_source`` is ``"ps"`` when the fabric clock of the generated
    block design comes from the processing system (``ps_clock``, e.g. ``pl_clk0``).
    """

    name: str
    title: str
    aliases: tuple[str, ...]
    part: str
    device: str
    package: str
    speed: str
    family: str
    dsp_primitive: str
    vivado_board_part: str | None
    resources: Mapping[str, int]
    safe_utilization: Mapping[str, float]
    clock_source: str
    ps_clock: str
    default_clock_mhz: float
    max_clock_mhz: float
    achieved_clock_mhz: tuple[float, ...]
    pin_clock: PinClock | None
    memory_type: str
    memory_bus_bits: int
    memory_peak_gb_per_s: float
    memory_source: str
    power_board_typical_w: float
    power_pl_static_w: float
    power_verified: bool
    power_source: str
    ps_ip: str
    ps_kind: str
    leds: tuple[Led, ...]
    leds_note: str
    source_file: str = field(compare=False)

    def safe_limit(self, resource: str) -> float:
        """How much of ``resource`` a design may use and still close timing comfortably."""
        if resource not in self.resources:
            raise ValueError(f"unknown resource {resource!r}; use one of {', '.join(RESOURCE_KEYS)}")
        return self.resources[resource] * self.safe_utilization[resource]

    @property
    def is_ultrascale_plus(self) -> bool:
        """True for Zynq UltraScale+ parts (Yosys family ``xcup``)."""
        return self.family == "xcup"


class _Reader:
    """Typed access to one YAML mapping with errors that name the file and the key path."""

    def __init__(self, data: Any, file: str, prefix: str = "") -> None:
        if not isinstance(data, Mapping):
            where = f"key {prefix!r}" if prefix else "the top level"
            raise ValueError(f"{file}: {where} must be a mapping, got {type(data).__name__}")
        self.data, self.file, self.prefix = data, file, prefix

    def _path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def raw(self, key: str) -> Any:
        if key not in self.data:
            raise ValueError(f"{self.file}: missing key {self._path(key)!r}; add it to the board file")
        return self.data[key]

    def text(self, key: str, *, optional: bool = False) -> str | None:
        value = self.data.get(key) if optional else self.raw(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{self.file}: key {self._path(key)!r} must be a non-empty string, got {value!r}")
        return value.strip()

    def number(self, key: str, *, integer: bool = False, low: float | None = None,
               high: float | None = None) -> float:
        value = self.raw(key)
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            kind = "an integer" if integer else "a number"
            raise ValueError(f"{self.file}: key {self._path(key)!r} must be {kind}, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"{self.file}: key {self._path(key)!r} = {value!r} is outside [{low}, {high}]")
        return value

    def sub(self, key: str) -> "_Reader":
        return _Reader(self.raw(key), self.file, self._path(key))

    def seq(self, key: str) -> list:
        value = self.raw(key)
        if not isinstance(value, list):
            raise ValueError(f"{self.file}: key {self._path(key)!r} must be a list, got {value!r}")
        return value


def load_board(path: str | Path) -> Board:
    """Read and validate one board YAML file."""
    path = Path(path)
    file = path.name
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{file}: not valid YAML: {exc}") from exc
    r = _Reader(data, file)

    name = r.text("name")
    aliases = r.seq("aliases")
    if not all(isinstance(a, str) and a for a in aliases):
        raise ValueError(f"{file}: key 'aliases' must be a list of non-empty strings, got {aliases!r}")

    am = r.sub("amaranth")
    device, package, speed = am.text("device"), am.text("package"), str(am.raw("speed"))
    family = r.text("family")
    if family not in _FAMILIES:
        raise ValueError(f"{file}: key 'family' = {family!r} is not a Yosys synth_xilinx family "
                         f"this flow supports; use one of {sorted(_FAMILIES)}")
    part = r.text("part")
    joined = f"{device}-{package}-{speed}" if family == "xcup" else f"{device}{package}-{speed}"
    if joined != part:
        raise ValueError(f"{file}: key 'part' = {part!r} disagrees with amaranth device/package/speed, "
                         f"which spell {joined!r}; make them agree")

    res = r.sub("resources")
    resources = {k: int(res.number(k, integer=True, low=0)) for k in RESOURCE_KEYS}
    safe = r.sub("safe_utilization")
    safe_utilization = {k: float(safe.number(k, low=0.0, high=1.0)) for k in RESOURCE_KEYS}

    clk = r.sub("clocks")
    source = clk.text("source")
    if source not in ("ps", "pin"):
        raise ValueError(f"{file}: key 'clocks.source' must be 'ps' or 'pin', got {source!r}")
    default_mhz = float(clk.number("default_mhz", low=1.0))
    max_mhz = float(clk.number("max_mhz", low=default_mhz))
    achieved = clk.seq("achieved_mhz")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in achieved):
        raise ValueError(f"{file}: key 'clocks.achieved_mhz' must be a list of numbers, got {achieved!r}")
    pin_clock = None
    if clk.raw("pin") is not None:
        p = clk.sub("pin")
        pin_clock = PinClock(p.text("name"), p.text("loc"), p.text("iostandard"), float(p.number("mhz", low=1.0)))
    if source == "pin" and pin_clock is None:
        raise ValueError(f"{file}: 'clocks.source' is 'pin' but 'clocks.pin' is null; describe the pin")

    mem = r.sub("memory")
    pw = r.sub("power")
    verified = pw.raw("verified")
    if not isinstance(verified, bool):
        raise ValueError(f"{file}: key 'power.verified' must be true or false, got {verified!r}")
    ps = r.sub("ps")
    ps_kind = ps.text("kind")
    if ps_kind not in _PS_KINDS:
        raise ValueError(f"{file}: key 'ps.kind' = {ps_kind!r}; use one of {sorted(_PS_KINDS)}")

    leds = []
    for i, entry in enumerate(r.seq("leds")):
        e = _Reader(entry, file, f"leds[{i}]")
        leds.append(Led(e.text("name"), int(e.number("index", integer=True, low=0)), e.text("loc"),
                        e.text("iostandard")))
    leds_note = r.text("leds_note")

    return Board(
        name=name, title=r.text("title"), aliases=tuple(aliases), part=part, device=device,
        package=package, speed=speed, family=family, dsp_primitive=r.text("dsp_primitive"),
        vivado_board_part=r.text("vivado_board_part", optional=True),
        resources=MappingProxyType(resources), safe_utilization=MappingProxyType(safe_utilization),
        clock_source=source, ps_clock=clk.text("ps_clock"), default_clock_mhz=default_mhz,
        max_clock_mhz=max_mhz, achieved_clock_mhz=tuple(float(x) for x in achieved),
        pin_clock=pin_clock, memory_type=mem.text("type"),
        memory_bus_bits=int(mem.number("bus_bits", integer=True, low=1)),
        memory_peak_gb_per_s=float(mem.number("peak_gb_per_s", low=0.0)), memory_source=mem.text("source"),
        power_board_typical_w=float(pw.number("board_typical_w", low=0.0)),
        power_pl_static_w=float(pw.number("pl_static_w", low=0.0)), power_verified=verified,
        power_source=pw.text("source"), ps_ip=ps.text("ip"), ps_kind=ps_kind, leds=tuple(leds),
        leds_note=leds_note, source_file=str(path),
    )


@functools.lru_cache(maxsize=None)
def _registry() -> dict[str, Board]:
    boards: dict[str, Board] = {}
    for path in sorted(_DATA_DIR.glob("*.yaml")):
        board = load_board(path)
        if board.name in boards:
            raise ValueError(f"{path.name}: board name {board.name!r} is already used by "
                             f"{Path(boards[board.name].source_file).name}; names must be unique")
        boards[board.name] = board
    return boards


@functools.lru_cache(maxsize=None)
def _lookup() -> dict[str, str]:
    table: dict[str, str] = {}
    for board in _registry().values():
        for key in (board.name, *board.aliases):
            key = key.lower()
            if table.get(key, board.name) != board.name:
                raise ValueError(f"alias {key!r} names both {table[key]!r} and {board.name!r}")
            table[key] = board.name
    return table


def board_names() -> list[str]:
    """The canonical names of all boards, sorted (e.g. ``["pynq-z2", "ultra96", "zcu104"]``)."""
    return sorted(_registry())


def get_board(name: str | Board) -> Board:
    """The board called ``name`` (canonical name or alias, case-insensitive).

    Raises ``TypeError`` for a non-string and ``ValueError`` for an unknown name; the message
    lists the valid boards and suggests the closest name.
    """
    if isinstance(name, Board):
        return name
    if not isinstance(name, str):
        raise TypeError(f"board name must be a string such as 'ultra96', got {type(name).__name__}")
    key = name.strip().lower()
    table = _lookup()
    if key in table:
        return _registry()[table[key]]
    close = difflib.get_close_matches(key, list(table), n=1, cutoff=0.5)
    hint = f" Did you mean {table[close[0]]!r}?" if close else ""
    raise ValueError(f"unknown board {name!r}; valid boards: {', '.join(board_names())}.{hint}")
