"""Ground-truth oracle for Xilinx ``ap_fixed`` / ``ap_int`` semantics.

Every answer is computed by compiling C++ against the real ``ap_types`` headers
(shipped by hls4ml under ``hls4ml/templates/vivado/ap_types``) with g++ and
running the program once over all inputs.  Nothing here re-implements the
ap_fixed rules in Python: the Python side only moves raw bits around.

Public API
----------
``include_dir()``
    Path of the ap_types headers (located via importlib, never hard-coded).
``FixedConfig(width, int_bits, signed, rounding, overflow)``
    One ``ap_fixed<W,I,Q,O>`` (signed) / ``ap_ufixed<W,I,Q,O>`` (unsigned) type.
``cast_from_double(configs, values)``
    ``T y = (double)v;`` for every config and value -> integer codes.
``cast_fixed(src, dsts, src_codes)``
    ``D y = x;`` with ``x`` of type ``src`` built from raw bits -> codes.
``cast_int_from_double(width, signed, values)``
    ``ap_int<W> y = (double)v;`` / ``ap_uint<W>`` -> integer values.
``result_types(pairs)``
    ``decltype(a+b)``, ``decltype(a-b)``, ``decltype(a*b)`` as
    ``{'+': (w, i, signed), '-': ..., '*': ...}``.

Code convention: a result ``c`` means the fixed-point value is exactly
``c * 2**-(W-I)``; ``0 <= c < 2**W`` for unsigned types and
``-2**(W-1) <= c < 2**(W-1)`` for signed ones (raw bits, sign-extended).

The cast functions return an :class:`OracleResult` (a ``dict`` subclass) that
also carries everything the C++ program printed on stderr (``.stderr``) and the
warnings attributed to the exact (config, value index) that produced them
(``.warnings``), e.g. ap_types' "assign NaN to fixed point value".  When an
``assert`` inside ap_types aborts a conversion (it does for some
fixed-to-fixed casts), the call raises :class:`OracleRunError`, or with
``on_abort="record"`` lists the config in ``.aborted`` and returns the rest.

Behaviours of the headers worth knowing (hls4ml 1.3.0 copy; pinned by
tests/test_oracle_selfcheck.py):
* ``ap_fixed(double)``: NaN/Inf are read as +-(1.mantissa) * 2**1024 (so SAT
  modes saturate, WRAP modes usually give 0) and NaN prints a warning;
  -0.0 -> 0; subnormals are read as if they had exponent -1023 and a leading 1
  (visible only when the LSB is below ~2**-1022).
* AP_WRAP_SM decides its sign-magnitude flip with bit W of the truncated
  (pre-rounding) value; signed W=1 AP_SAT_SYM behaves like AP_SAT.
* Fixed-to-fixed casts with a rounding mode (not AP_TRN, and not AP_TRN_ZERO
  from an unsigned source) whose destination LSB lies above the source MSB
  (I_dst - W_dst > I_src) abort in ap_private::get_bit's assert.
* ``ap_int<W>(double)`` truncates the magnitude toward zero, then wraps;
  -0.5 < v < 0 gives bit pattern 1, NaN/Inf give 0, and its NaN check is
  broken (warns for 1 < |v| < 2, never for NaN).

Engineering notes
-----------------
* One translation unit holds a dispatch table of all template instantiations
  a call needs (configs sorted by signedness/width/int_bits so that shared
  instantiations are compiled once).  It is split into balanced parts only
  to use the cores (calls with >= 64 configs on 2 cores) or to cap g++
  memory at ~500 instantiations per TU; the parts compile in parallel.
* Executables are cached under ``$QFX_CACHE_DIR`` (default
  ``~/.cache/qfx/ap_oracle``), keyed by a hash of the generated source, the
  compiler identity, the flags and the content of the ap_types headers.
  Entries are written to a temporary name and renamed into place; builds of the
  same key are serialised with ``flock`` so parallel pytest-xdist workers do not
  compile the same thing twice.
* A precompiled header of ap_fixed.h/ap_int.h (~1.5 s of parsing per TU) is
  built once per cache key and used for every TU (``QFX_ORACLE_NO_PCH=1``
  disables it).
* Environment knobs: ``QFX_CACHE_DIR``, ``QFX_CXX`` (compiler, default g++),
  ``QFX_ORACLE_JOBS`` (TUs per large call, default: usable cores; they are
  compiled concurrently unless pytest-xdist workers already use the cores),
  ``QFX_AP_TYPES_INCLUDE`` (use another ap_types folder, e.g. a Vitis install),
  ``QFX_ORACLE_NO_PCH``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import warnings
from fractions import Fraction
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from qfx._toolchain import ap_types_dir, compiler, headers_fingerprint, locked

__all__ = [
    "ROUNDING_MODES",
    "OVERFLOW_MODES",
    "MAX_WIDTH",
    "FixedConfig",
    "OracleResult",
    "OracleList",
    "OracleCompileError",
    "OracleRunError",
    "include_dir",
    "cache_dir",
    "cast_from_double",
    "cast_fixed",
    "cast_int_from_double",
    "result_types",
    "code_to_fraction",
]

ROUNDING_MODES = (
    "AP_RND",
    "AP_RND_ZERO",
    "AP_RND_MIN_INF",
    "AP_RND_INF",
    "AP_RND_CONV",
    "AP_TRN",
    "AP_TRN_ZERO",
)
OVERFLOW_MODES = ("AP_SAT", "AP_SAT_ZERO", "AP_SAT_SYM", "AP_WRAP", "AP_WRAP_SM")
MAX_WIDTH = 64  # raw bits travel as uint64

# Bump when the generated program's protocol changes (part of every cache key).
_FORMAT_VERSION = "ap_oracle-v1"

# -O0: measured ~1.3-1.4x cheaper to compile than -O1 per instantiation
# (100 configs: 10.0-10.6 s vs 12.9-14.0 s CPU); the -O0 program is ~5x slower
# per conversion (2.1 us vs 0.4 us), which -O1 only wins back beyond ~17k
# values per config.
_CXX_FLAGS = (
    "-std=c++14",
    "-O0",
    "-fno-exceptions",
    "-fno-rtti",
    "-fno-asynchronous-unwind-tables",
)
# Translation units: split a call only when each part gets >= _MIN_PER_TU
# instantiations (fixed cost of a TU with the PCH: ~1 s; one instantiation:
# ~50-90 ms CPU) and never put more than _MAX_PER_TU in one (g++ memory).
_MIN_PER_TU = 32
_MAX_PER_TU = 500
_ERROR_LINES = 30


class OracleCompileError(RuntimeError):
    """g++ rejected the generated program (message holds the relevant lines)."""


class OracleRunError(RuntimeError):
    """The generated program failed at run time."""


# --------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------


class FixedConfig(NamedTuple):
    """``ap_fixed<width, int_bits, rounding, overflow>`` (or ``ap_ufixed``)."""

    width: int
    int_bits: int
    signed: bool
    rounding: str = "AP_TRN"
    overflow: str = "AP_WRAP"

    @property
    def frac_bits(self) -> int:
        return self.width - self.int_bits

    def cpp_type(self) -> str:
        name = "ap_fixed" if self.signed else "ap_ufixed"
        return f"{name}<{self.width},{self.int_bits},{self.rounding},{self.overflow}>"

    def code_range(self) -> tuple[int, int]:
        """Inclusive range of codes."""
        if self.signed:
            return -(1 << (self.width - 1)), (1 << (self.width - 1)) - 1
        return 0, (1 << self.width) - 1


def _as_int(x, what: str) -> int:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {x!r}")
    return int(x)


def _check_config(cfg) -> FixedConfig:
    if not isinstance(cfg, FixedConfig):
        cfg = FixedConfig(*cfg)
    w = _as_int(cfg.width, "width")
    i = _as_int(cfg.int_bits, "int_bits")
    if not isinstance(cfg.signed, (bool, np.bool_)):
        raise TypeError(f"signed must be a bool, got {cfg.signed!r}")
    if not 1 <= w <= MAX_WIDTH:
        raise ValueError(f"width must be in 1..{MAX_WIDTH}, got {w} ({cfg})")
    if cfg.rounding not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding mode {cfg.rounding!r}; one of {ROUNDING_MODES}")
    if cfg.overflow not in OVERFLOW_MODES:
        raise ValueError(f"unknown overflow mode {cfg.overflow!r}; one of {OVERFLOW_MODES}")
    if not cfg.signed and cfg.overflow == "AP_WRAP_SM":
        # ap_fixed_base::report() prints "ap_ufxied<...> cannot support
        # AP_WRAP_SM." and calls exit(1) at run time.
        raise ValueError(f"ap_ufixed does not support AP_WRAP_SM ({cfg})")
    return FixedConfig(w, i, bool(cfg.signed), cfg.rounding, cfg.overflow)


def code_to_fraction(cfg: FixedConfig, code: int) -> Fraction:
    """Exact value represented by ``code`` in type ``cfg``."""
    return Fraction(code) * Fraction(2) ** cfg.int_bits / Fraction(2) ** cfg.width


class OracleResult(dict):
    """``dict[key, list[int]]`` plus the program's stderr.

    ``warnings[key]`` is a list of ``(value_index, message)`` for every
    conversion that wrote to stderr (e.g. NaN inputs).  ``aborted[key]`` is
    ``(value_index, message)`` for configs whose conversion hit an ap_types
    ``assert`` (only with ``on_abort="record"``; such keys are not in the dict).
    """

    stderr: str
    warnings: dict
    aborted: dict

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stderr = ""
        self.warnings = {}
        self.aborted = {}


class OracleList(list):
    """``list[int]`` plus stderr / per-index warnings (see :class:`OracleResult`)."""

    stderr: str
    warnings: list

    def __init__(self, *args):
        super().__init__(*args)
        self.stderr = ""
        self.warnings = []


# --------------------------------------------------------------------------
# Toolchain / cache
# --------------------------------------------------------------------------


def include_dir() -> pathlib.Path:
    """Folder holding ``ap_fixed.h`` & co. from the installed hls4ml package (or $QFX_AP_TYPES_INCLUDE)."""
    return ap_types_dir(("ap_fixed.h", "ap_int.h"), "the ap_types oracle")


def cache_dir() -> pathlib.Path:
    env = os.environ.get("QFX_CACHE_DIR")
    d = pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "qfx" / "ap_oracle"
    d.mkdir(parents=True, exist_ok=True)
    return d


# The compiler and the header fingerprint come from qfx._toolchain, shared with qfx.hls.
_compiler = compiler
_headers_fingerprint = headers_fingerprint


def _key(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0\1\0")
    return h.hexdigest()[:32]


def _base_key_parts() -> tuple[str, ...]:
    inc = str(include_dir())
    return (_FORMAT_VERSION, _compiler()[1], " ".join(_CXX_FLAGS), _headers_fingerprint(inc))


def _locked(name: str):
    return locked(cache_dir(), name)


def _error_excerpt(log: str) -> str:
    lines = log.splitlines()
    first = next((k for k, ln in enumerate(lines) if "error:" in ln), 0)
    # keep the "In instantiation of ..." context lines just before the error
    start = max(0, first - 3)
    excerpt = lines[start : start + _ERROR_LINES]
    more = len(lines) - (start + len(excerpt))
    if more > 0:
        excerpt.append(f"... ({more} more lines)")
    return "\n".join(excerpt)


def _run_compiler(cmd: list[str], log_key: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    log = (r.stdout or "") + (r.stderr or "")
    if r.returncode != 0:
        log_path = cache_dir() / f"failed-{log_key}.log"
        try:
            tmp = log_path.with_name(log_path.name + f".{os.getpid()}.tmp")
            tmp.write_text(" ".join(cmd) + "\n\n" + log)
            os.replace(tmp, log_path)
        except OSError:
            log_path = None
        raise OracleCompileError(
            f"g++ failed (exit {r.returncode}) compiling the ap_types oracle program\n"
            f"command: {' '.join(cmd)}\n"
            f"full log: {log_path}\n" + _error_excerpt(log)
        )
    return log


_PCH_HEADER = """\
#include <ap_fixed.h>
#include <ap_int.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>
#include <csignal>
#include <unistd.h>
"""


def _pch() -> pathlib.Path | None:
    """Path of the precompiled oracle_pch.h (its .gch sits next to it)."""
    if os.environ.get("QFX_ORACLE_NO_PCH"):
        return None
    key = _key(*_base_key_parts(), _PCH_HEADER)
    final = cache_dir() / f"pch-{key}"
    hdr = final / "oracle_pch.h"
    if (final / "oracle_pch.h.gch").is_file():
        return hdr
    with _locked(f"pch-{key}"):
        if (final / "oracle_pch.h.gch").is_file():
            return hdr
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="tmp-pch-", dir=cache_dir()))
        try:
            (tmp / "oracle_pch.h").write_text(_PCH_HEADER)
            cxx = _compiler()[0]
            cmd = [cxx, *_CXX_FLAGS, "-I", str(include_dir()), "-x", "c++-header",
                   str(tmp / "oracle_pch.h"), "-o", str(tmp / "oracle_pch.h.gch")]
            _run_compiler(cmd, f"pch-{key}")
            os.chmod(tmp, 0o755)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return hdr


def _compile(src: str) -> pathlib.Path:
    """Compile ``src`` to an executable in the cache (or reuse it)."""
    key = _key(*_base_key_parts(), src)
    exe = cache_dir() / f"apo-{key}"
    if exe.is_file():
        return exe
    with _locked(f"apo-{key}"):
        if exe.is_file():
            return exe
        pch = _pch()
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="tmp-apo-", dir=cache_dir()))
        try:
            cpp = tmp / "oracle.cpp"
            cpp.write_text(src)
            cmd = [_compiler()[0], *_CXX_FLAGS, "-I", str(include_dir())]
            if pch is not None:
                cmd += ["-include", str(pch), "-Winvalid-pch"]
            cmd += [str(cpp), "-o", str(tmp / "oracle")]
            log = _run_compiler(cmd, f"apo-{key}")
            if pch is not None and ".gch" in log:
                warnings.warn(f"ap_types oracle: precompiled header not used:\n{log[:2000]}")
            os.replace(cpp, exe.with_name(exe.name + ".cpp"))  # kept for debugging
            os.replace(tmp / "oracle", exe)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return exe


def _cores() -> int:
    """Number of translation units a large call is split into
    ($QFX_ORACLE_JOBS, else the usable cores).  Deliberately independent of
    pytest-xdist, so serial and parallel test runs share cache entries."""
    env = os.environ.get("QFX_ORACLE_JOBS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _jobs() -> int:
    """Concurrent compiles: the cores not already taken by other xdist workers."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    return max(1, _cores() // max(1, workers))


# --------------------------------------------------------------------------
# Generated program
# --------------------------------------------------------------------------

_PRELUDE = r"""
#include <ap_fixed.h>
#include <ap_int.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>
#include <csignal>
#include <unistd.h>

static inline uint64_t oracle_mask(int w) { return w >= 64 ? ~0ULL : ((1ULL << w) - 1ULL); }

typedef uint64_t (*oracle_fn)(uint64_t);

// T y = (double)v;   input: IEEE-754 bits of v
template <class T> static uint64_t conv_d(uint64_t bits) {
  double d;
  std::memcpy(&d, &bits, sizeof d);
  T y = d;
  return y.bits_to_uint64() & oracle_mask(T::width);
}

// D y = x;   x of type S built from its raw bits (no double involved)
template <class S, class D> static uint64_t conv_f(uint64_t bits) {
  S x;
  x.setBits(bits);
  if ((x.bits_to_uint64() & oracle_mask(S::width)) != bits) {
    std::fprintf(stderr, "ORACLE-FATAL: setBits round trip failed for %llx\n",
                 (unsigned long long)bits);
    std::exit(3);
  }
  D y = x;
  return y.bits_to_uint64() & oracle_mask(D::width);
}

// ap_int<W> y = (double)v;
template <class T> static uint64_t conv_i(uint64_t bits) {
  double d;
  std::memcpy(&d, &bits, sizeof d);
  T y = d;
  return y.to_uint64() & oracle_mask(T::width);
}
"""

_MAIN = r"""
static volatile size_t oracle_cur_k = 0;
static volatile uint64_t oracle_cur_i = 0;

static int oracle_utoa(char* buf, unsigned long long v) {
  char tmp[24];
  int n = 0;
  do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
  for (int j = 0; j < n; ++j) buf[j] = tmp[n - 1 - j];
  return n;
}

// An assert() inside ap_types aborts the program: report which config/value.
static void oracle_on_signal(int sig) {
  char buf[128];
  int n = 0;
  const char* head = "\nORACLE-CRASH ";
  while (*head) buf[n++] = *head++;
  n += oracle_utoa(buf + n, (unsigned long long)sig);
  buf[n++] = ' ';
  n += oracle_utoa(buf + n, (unsigned long long)oracle_cur_k);
  buf[n++] = ' ';
  n += oracle_utoa(buf + n, (unsigned long long)oracle_cur_i);
  buf[n++] = '\n';
  if (write(2, buf, n) < 0) {}
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

// usage: prog in.bin out.bin [first_config]
// out.bin receives one row of n codes per config, flushed after each config,
// so that the rows before an aborting config survive.
int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) { std::fprintf(stderr, "usage: %s in.bin out.bin [k0]\n", argv[0]); return 2; }
  std::signal(SIGABRT, oracle_on_signal);
  std::signal(SIGSEGV, oracle_on_signal);
  std::signal(SIGFPE, oracle_on_signal);
  std::signal(SIGBUS, oracle_on_signal);
  const size_t k0 = argc == 4 ? (size_t)std::strtoull(argv[3], 0, 10) : 0;
  FILE* f = std::fopen(argv[1], "rb");
  if (!f) { std::perror(argv[1]); return 2; }
  uint64_t n = 0;
  if (std::fread(&n, 8, 1, f) != 1) { std::fprintf(stderr, "ORACLE-FATAL: short input\n"); return 2; }
  std::vector<uint64_t> in(n + 1), row(n + 1);
  if (n && std::fread(in.data(), 8, n, f) != n) { std::fprintf(stderr, "ORACLE-FATAL: short input\n"); return 2; }
  std::fclose(f);
  FILE* o = std::fopen(argv[2], "wb");
  if (!o) { std::perror(argv[2]); return 2; }
  const size_t K = sizeof(oracle_table) / sizeof(oracle_table[0]);
  // stderr is a regular file: a moving position attributes a warning to (k, i).
  long pos = std::ftell(stderr);
  for (size_t k = k0; k < K; ++k) {
    oracle_cur_k = k;
    for (uint64_t i = 0; i < n; ++i) {
      oracle_cur_i = i;
      row[i] = oracle_table[k](in[i]);
      if (pos >= 0) {
        long p = std::ftell(stderr);
        if (p != pos) {
          std::printf("W %zu %llu %ld %ld\n", k, (unsigned long long)i, pos, p);
          pos = p;
        }
      }
    }
    if (n && std::fwrite(row.data(), 8, n, o) != n) { std::perror("write"); return 2; }
    if (std::fflush(o) != 0) { std::perror("flush"); return 2; }
    std::fflush(stdout);
  }
  if (std::fclose(o) != 0) { std::perror("close"); return 2; }
  return 0;
}
"""


def _table_source(exprs: Sequence[str]) -> str:
    body = "".join(f"  {e},\n" for e in exprs)
    return f"{_PRELUDE}\nstatic const oracle_fn oracle_table[] = {{\n{body}}};\n{_MAIN}"


def _chunks(n: int) -> list[list[int]]:
    """Split n (sorted) table entries into balanced translation units.

    Measured (400 random configs, g++ 12 -O0, PCH): one TU 19.7 s CPU, two TUs
    21.5 s, four 25.6 s, eight 29.2 s -- configs sorted by (signed, W, I) share
    many instantiations (ap_private<W>, ap_int_base<W>, ...), so splitting
    costs CPU.  Split only to use the cores (``_cores()``) and to bound g++
    memory (~3 MB per instantiation).
    """
    parts = max(1, min(_cores(), n // _MIN_PER_TU), -(-n // _MAX_PER_TU))
    bounds = [round(k * n / parts) for k in range(parts + 1)]
    return [list(range(lo, hi)) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


_WARN_RE = re.compile(r"^W (\d+) (\d+) (-?\d+) (-?\d+)$")
_CRASH_RE = re.compile(r"ORACLE-CRASH (\d+) (\d+) (\d+)")


class _TableRun(NamedTuple):
    raw: dict  # key -> uint64 array of codes (masked to the width)
    warnings: dict  # key -> [(value index, message)]
    stderr: str
    aborted: dict  # key -> (value index, message) for configs whose conversion aborted


def _run_table(keys: list, exprs: list[str], inputs: np.ndarray) -> _TableRun:
    """Compile and run the dispatch table(s) over all inputs."""
    inputs = np.ascontiguousarray(inputs, dtype=np.uint64)
    n = inputs.size
    groups = _chunks(len(exprs))
    with tempfile.TemporaryDirectory(prefix="qfx-apo-") as td:
        tdp = pathlib.Path(td)
        inp = tdp / "in.bin"
        with open(inp, "wb") as fh:
            fh.write(np.uint64(n).tobytes())
            fh.write(inputs.tobytes())

        def work(ci: int):
            idxs = groups[ci]
            K = len(idxs)
            exe = _compile(_table_source([exprs[j] for j in idxs]))
            rows: list[np.ndarray] = []
            warn: list[tuple[int, int, str]] = []
            errs: list[str] = []
            aborted: dict[int, tuple[int, str]] = {}
            k0, seg = 0, 0
            while k0 < K:
                outp = tdp / f"out{ci}_{seg}.bin"
                errp = tdp / f"err{ci}_{seg}.txt"
                seg += 1
                with open(errp, "wb") as eh:
                    r = subprocess.run([str(exe), str(inp), str(outp), str(k0)],
                                       stdout=subprocess.PIPE, stderr=eh)
                err = errp.read_bytes()
                arr = np.fromfile(outp, dtype=np.uint64) if outp.exists() else np.zeros(0, np.uint64)
                done = arr.size // n
                rows.append(arr[: done * n].reshape(done, n))
                for line in r.stdout.decode(errors="replace").splitlines():
                    m = _WARN_RE.match(line.strip())
                    if m:
                        k, i, a, b = (int(g) for g in m.groups())
                        warn.append((k, i, err[a:b].decode(errors="replace").strip()))
                text = err.decode(errors="replace")
                if r.returncode == 0:
                    if k0 + done != K:
                        raise OracleRunError(f"oracle program {exe} wrote {done} rows, expected {K - k0}")
                    errs.append(text)
                    break
                m = _CRASH_RE.search(text)
                if m is None or int(m.group(2)) != k0 + done:
                    raise OracleRunError(
                        f"oracle program {exe} exited with {r.returncode}; stderr:\n{text[-4000:]}"
                    )
                k_bad, i_bad = int(m.group(2)), int(m.group(3))
                msg = [re.sub(r"^\S*apo-[0-9a-f]+: ", "", ln) for ln in text[: m.start()].strip().splitlines()]
                aborted[k_bad] = (i_bad, "\n".join(msg[-3:]) + f"\n(signal {m.group(1)})")
                errs.append(text)
                rows.append(np.zeros((1, n), dtype=np.uint64))  # placeholder, dropped below
                k0 = k_bad + 1
            table = np.concatenate(rows, axis=0) if rows else np.zeros((0, n), np.uint64)
            return ci, table, warn, "".join(errs), aborted

        jobs = min(_jobs(), len(groups))
        if jobs <= 1:
            results = [work(ci) for ci in range(len(groups))]
        else:
            with concurrent.futures.ThreadPoolExecutor(jobs) as ex:
                results = list(ex.map(work, range(len(groups))))

    out = _TableRun({}, {}, "", {})
    errs = []
    for ci, table, warn, err, aborted in results:
        idxs = groups[ci]
        for row, j in enumerate(idxs):
            if row in aborted:
                out.aborted[keys[j]] = aborted[row]
            else:
                out.raw[keys[j]] = table[row]
        for k, i, msg in warn:
            out.warnings.setdefault(keys[idxs[k]], []).append((i, msg))
        errs.append(err)
    return out._replace(stderr="".join(errs))


def _check_on_abort(on_abort: str) -> None:
    if on_abort not in ("raise", "record"):
        raise ValueError(f"on_abort must be 'raise' or 'record', got {on_abort!r}")


def _check_aborts(run: _TableRun, on_abort: str, describe) -> None:
    if run.aborted and on_abort == "raise":
        lines = [f"  {describe(k)} (value index {i}): {msg}" for k, (i, msg) in list(run.aborted.items())[:10]]
        more = len(run.aborted) - len(lines)
        raise OracleRunError(
            f"ap_types aborted (assert) for {len(run.aborted)} conversion(s); pass on_abort='record' "
            "to get the other results and the list in .aborted:\n" + "\n".join(lines)
            + (f"\n  ... and {more} more" if more > 0 else "")
        )


def _to_codes(arr: np.ndarray, width: int, signed: bool) -> list[int]:
    arr = np.asarray(arr, dtype=np.uint64)
    if signed:
        s = 64 - width
        return (np.left_shift(arr, np.uint64(s)).view(np.int64) >> np.int64(s)).tolist()
    return arr.tolist()


def _double_bits(values) -> np.ndarray:
    v = np.asarray(values)
    if v.dtype != np.float64:
        if v.dtype.kind not in "fiub":
            raise TypeError(f"values must be float64, got dtype {v.dtype}")
        conv = v.astype(np.float64)
        if v.dtype.kind in "iu" and not np.array_equal(conv.astype(v.dtype), v):
            raise ValueError("integer values not exactly representable as float64")
        v = conv
    return np.ascontiguousarray(v.ravel()).view(np.uint64)


def _unique(seq: Iterable) -> list:
    return list(dict.fromkeys(seq))


def _sort_key(c: FixedConfig):
    return (c.signed, c.width, c.int_bits, c.rounding, c.overflow)


# --------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------


def cast_from_double(configs: Sequence[FixedConfig], values, *, on_abort: str = "raise") -> OracleResult:
    """``T y = (double)v;`` for each config ``T`` and value ``v`` (row order of ``values``).

    ``on_abort``: if an ap_types ``assert`` aborts a conversion, ``"raise"``
    (default) raises :class:`OracleRunError`; ``"record"`` leaves that config
    out of the result and lists it in ``result.aborted``.
    """
    _check_on_abort(on_abort)
    cfgs = sorted(_unique(_check_config(c) for c in configs), key=_sort_key)
    bits = _double_bits(values)
    res = OracleResult()
    if not cfgs:
        return res
    if bits.size == 0:
        res.update({c: [] for c in cfgs})
        return res
    exprs = [f"&conv_d< {c.cpp_type()} >" for c in cfgs]
    run = _run_table(cfgs, exprs, bits)
    _check_aborts(run, on_abort, lambda c: c.cpp_type())
    for c in cfgs:
        if c in run.raw:
            res[c] = _to_codes(run.raw[c], c.width, c.signed)
    res.warnings, res.stderr, res.aborted = run.warnings, run.stderr, run.aborted
    return res


def cast_fixed(src: FixedConfig, dsts: Sequence[FixedConfig], src_codes: Sequence[int],
               *, on_abort: str = "raise") -> OracleResult:
    """``D y = x;`` where ``x`` is an ``src`` whose raw bits are ``src_codes``.

    Codes must be in ``src.code_range()``.  ``on_abort`` as in
    :func:`cast_from_double` (ap_types asserts in some fixed-to-fixed casts).
    """
    _check_on_abort(on_abort)
    src = _check_config(src)
    dst_list = sorted(_unique(_check_config(c) for c in dsts), key=_sort_key)
    lo, hi = src.code_range()
    mask = (1 << src.width) - 1
    codes = []
    for c in src_codes:
        c = _as_int(c, "src code")
        if not lo <= c <= hi:
            raise ValueError(f"code {c} out of range [{lo}, {hi}] for {src.cpp_type()}")
        codes.append(c & mask)
    res = OracleResult()
    if not dst_list:
        return res
    if not codes:
        res.update({c: [] for c in dst_list})
        return res
    exprs = [f"&conv_f< {src.cpp_type()}, {d.cpp_type()} >" for d in dst_list]
    run = _run_table(dst_list, exprs, np.array(codes, dtype=np.uint64))
    _check_aborts(run, on_abort, lambda d: f"{d.cpp_type()} y = ({src.cpp_type()})x")
    for d in dst_list:
        if d in run.raw:
            res[d] = _to_codes(run.raw[d], d.width, d.signed)
    res.warnings, res.stderr, res.aborted = run.warnings, run.stderr, run.aborted
    return res


def cast_int_from_double(width: int, signed: bool, values) -> OracleList:
    """``ap_int<W> y = (double)v;`` (``ap_uint<W>`` if not signed) -> integer values."""
    w = _as_int(width, "width")
    if not 1 <= w <= MAX_WIDTH:
        raise ValueError(f"width must be in 1..{MAX_WIDTH}, got {w}")
    signed = bool(signed)
    bits = _double_bits(values)
    out = OracleList()
    if bits.size == 0:
        return out
    key = (w, signed)
    t = f"ap_int<{w}>" if signed else f"ap_uint<{w}>"
    run = _run_table([key], [f"&conv_i< {t} >"], bits)
    _check_aborts(run, "raise", lambda k: t)
    out.extend(_to_codes(run.raw[key], w, signed))
    out.warnings = run.warnings.get(key, [])
    out.stderr = run.stderr
    return out


_RT_PRELUDE = r"""
#include <ap_fixed.h>
#include <cstdio>
#include <type_traits>
#include <utility>

template <int W, int I, bool S, ap_q_mode Q, ap_o_mode O, int N>
constexpr int oracle_signed_of(const ap_fixed_base<W, I, S, Q, O, N>*) { return S ? 1 : 0; }

template <class A, class B> static void oracle_rt(int k) {
  typedef typename std::decay<decltype(std::declval<A&>() + std::declval<B&>())>::type P;
  typedef typename std::decay<decltype(std::declval<A&>() - std::declval<B&>())>::type M;
  typedef typename std::decay<decltype(std::declval<A&>() * std::declval<B&>())>::type X;
  std::printf("%d %d %d %d %d %d %d %d %d %d\n", k,
              (int)P::width, (int)P::iwidth, oracle_signed_of((P*)0),
              (int)M::width, (int)M::iwidth, oracle_signed_of((M*)0),
              (int)X::width, (int)X::iwidth, oracle_signed_of((X*)0));
}

int main() {
"""


def _operand(t) -> tuple[int, int, bool]:
    if isinstance(t, FixedConfig):
        t = (t.width, t.int_bits, t.signed)
    w, i, s = t
    w, i = _as_int(w, "width"), _as_int(i, "int_bits")
    if not 1 <= w <= MAX_WIDTH:
        raise ValueError(f"width must be in 1..{MAX_WIDTH}, got {w}")
    return w, i, bool(s)


def result_types(pairs) -> list[dict]:
    """C++ result types of ``a+b``, ``a-b``, ``a*b`` for operand type pairs.

    ``pairs``: iterable of ``((w1, i1, signed1), (w2, i2, signed2))`` (FixedConfig
    accepted too; modes do not influence result types).  Returns one dict per
    pair: ``{'+': (w, i, signed), '-': (...), '*': (...)}`` read from
    ``decltype(a OP b)::width / ::iwidth`` and the ``ap_fixed_base`` signedness
    parameter the compiler deduced.
    """
    ops = [(_operand(a), _operand(b)) for a, b in pairs]
    if not ops:
        return []

    def t(o):
        w, i, s = o
        return f"ap_fixed<{w},{i}>" if s else f"ap_ufixed<{w},{i}>"

    body = "".join(f"  oracle_rt< {t(a)}, {t(b)} >({k});\n" for k, (a, b) in enumerate(ops))
    src = _RT_PRELUDE + body + "  return 0;\n}\n"
    exe = _compile(src)
    r = subprocess.run([str(exe)], capture_output=True, text=True)
    if r.returncode != 0:
        raise OracleRunError(f"{exe} exited with {r.returncode}: {r.stderr[-4000:]}")
    out: list = [None] * len(ops)
    for line in r.stdout.splitlines():
        f = [int(x) for x in line.split()]
        k, rest = f[0], f[1:]
        out[k] = {
            op: (rest[3 * j], rest[3 * j + 1], bool(rest[3 * j + 2]))
            for j, op in enumerate(("+", "-", "*"))
        }
    if any(o is None for o in out):
        raise OracleRunError(f"{exe} printed incomplete output:\n{r.stdout[:2000]}")
    return out
