"""The hardware half reads manifests only: importing it must not import PyTorch (DESIGN.md)."""

from __future__ import annotations

import subprocess
import sys


def test_generators_and_manifest_do_not_import_torch():
    code = (
        "import sys, qfx, qfx.types, qfx.arith, qfx.manifest, qfx.hls, qfx.hw; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lazy_public_api():
    code = (
        "import qfx; from qfx import quantize, to_codes, convert, lmul; "
        "assert callable(qfx.convert) and callable(quantize); import qfx.nn, qfx.train"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_convert_stays_the_function_after_submodules_import_it():
    code = (
        "import qfx.demo.accuracy, qfx.cli, qfx.nn, qfx.reference, qfx; "
        "assert callable(qfx.convert), qfx.convert; from qfx import convert; assert callable(convert); "
        "assert callable(qfx.lmul), qfx.lmul; assert callable(qfx.quantize)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
