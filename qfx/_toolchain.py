"""The C++ toolchain behind every g++ check: the Xilinx ap_types headers, the compiler,
content fingerprints for build caches, and cross-process build locks.

Shared by the HLS C simulation (:mod:`qfx.hls`) and the test oracle
(``tests/oracles/ap_types_oracle.py``), so both find the same headers and compiler
and key their caches the same way. No PyTorch here.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

__all__ = ["ap_types_dir", "compiler", "headers_fingerprint", "locked"]


def ap_types_dir(required: tuple[str, ...], purpose: str) -> Path:
    """The ap_types headers: ``$QFX_AP_TYPES_INCLUDE``, or the copy inside the hls4ml wheel.

    ``required``: header names the folder must hold; ``purpose``: who needs them, for
    the error message (e.g. ``"the HLS C simulation"``).
    """
    override = os.environ.get("QFX_AP_TYPES_INCLUDE")
    if override:
        p = Path(override)
        if not (p / "ap_fixed.h").is_file():
            raise RuntimeError(f"QFX_AP_TYPES_INCLUDE={override!r} has no ap_fixed.h")
        return p
    try:
        spec = importlib.util.find_spec("hls4ml")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        p = Path(loc) / "templates" / "vivado" / "ap_types"
        if all((p / name).is_file() for name in required):
            return p
    if spec is None:
        raise RuntimeError(
            f"{purpose} needs the Xilinx ap_types headers shipped by hls4ml, but hls4ml is not "
            "installed: pip install hls4ml (or pip install -e '.[test]', or set QFX_AP_TYPES_INCLUDE "
            f"to a folder holding {', '.join(required)})"
        )
    raise RuntimeError(
        f"hls4ml is installed at {locations} but templates/vivado/ap_types/ lacks one of "
        f"{', '.join(required)}; reinstall with: pip install --force-reinstall hls4ml"
    )


def compiler_path() -> str:
    """Absolute path of the C++ compiler, ``$QFX_CXX`` or g++ (RuntimeError when not on PATH)."""
    name = os.environ.get("QFX_CXX", "g++")
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"C++ compiler {name!r} not found on PATH (install g++ or set QFX_CXX)")
    return path


@functools.lru_cache(maxsize=None)
def compiler() -> tuple[str, str]:
    """(absolute path, identity string) of the C++ compiler: ``$QFX_CXX`` or g++."""
    path = compiler_path()
    return path, compiler_identity(path)


@functools.lru_cache(maxsize=None)
def compiler_identity(path: str) -> str:
    """``realpath|first line of --version|-dumpmachine`` of the C++ compiler at ``path``: the part
    of build-cache keys that says which compiler built an object. OSError if it cannot run."""
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=False, timeout=60)
    machine = subprocess.run([path, "-dumpmachine"], capture_output=True, text=True, check=False, timeout=60)
    first = version.stdout.splitlines()[0] if version.stdout else ""
    return f"{os.path.realpath(path)}|{first}|{machine.stdout.strip()}"


@functools.lru_cache(maxsize=None)
def headers_fingerprint(inc: str) -> str:
    """SHA-256 over every file (name and content) below the header folder ``inc``."""
    h = hashlib.sha256()
    root = Path(inc)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(b"\0")
            h.update(p.read_bytes())
            h.update(b"\0")
    return h.hexdigest()


@contextlib.contextmanager
def locked(folder: Path, name: str) -> Iterator[None]:
    """An exclusive lock ``folder/locks/name.lock``: parallel workers (pytest-xdist) build
    one cache entry once."""
    locks = folder / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
