"""How the commands (``qfx``, ``qfx-gen``) turn an exception into ``PROG: error: ...`` (issue 15).

Every error reaches the user as one ``PROG: error: ...`` message and exit status 2, never as a
Python traceback: the errors qfx raises for bad input (``ValueError`` / ``TypeError``
subclasses), files that cannot be read or written (``OSError``), tools that fail
(``RuntimeError`` subclasses: Yosys, Verilator, the HLS compiler), and -- as a last resort --
anything else, which is a bug in qfx and is said to be one (``QFX_TRACEBACK=1`` shows where).
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

__all__ = ["report_errors", "error_status"]


def report_errors(prog: str, fn: Callable[[], "int | None"]) -> int:
    """Run ``fn`` and return its exit status; an exception becomes ``PROG: error: ...`` and 2
    (130 for Ctrl-C), see :func:`error_status`."""
    try:
        return int(fn() or 0)
    except SystemExit:
        raise
    except BaseException as err:  # noqa: BLE001 - each kind is handled in error_status
        return error_status(prog, err)


def error_status(prog: str, err: BaseException) -> int:
    """Print ``err`` as ``PROG: error: ...`` (no traceback unless ``QFX_TRACEBACK`` is set) and return
    the exit status: 130 for Ctrl-C, 2 otherwise; re-raises ``SystemExit`` and ``GeneratorExit``."""
    if isinstance(err, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    if isinstance(err, (SystemExit, GeneratorExit)):
        raise err
    if os.environ.get("QFX_TRACEBACK"):
        traceback.print_exception(err)
    if isinstance(err, (ValueError, TypeError, OSError, RuntimeError)):
        text = str(err).strip() or type(err).__name__
        if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
            text = f"{err.filename}: {text}"
        print(f"{prog}: error: {text}", file=sys.stderr)
    elif isinstance(err, MemoryError):
        print(f"{prog}: error: out of memory; close other programs, or use a smaller model or design",
              file=sys.stderr)
    else:  # a bug in qfx: still one line, and how to see more
        print(f"{prog}: error: internal error ({type(err).__name__}: {err}); this is a bug in qfx, please report "
              "it (QFX_TRACEBACK=1 shows where it happened)", file=sys.stderr)
    return 2
