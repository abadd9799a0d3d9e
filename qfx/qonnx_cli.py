"""``qfx export --qonnx`` and ``qfx import``: the QONNX interchange on the command line.

``qfx export MANIFEST --qonnx OUT.onnx [--batch N] [--force]``
    A manifest folder (what :func:`qfx.export.export` writes, what ``qfx-gen`` reads) as a QONNX
    model (:func:`qfx.qonnx_export.write_qonnx`).
``qfx import MODEL.onnx -o MANIFEST [--force]``
    A QONNX model with power-of-two scales as a manifest folder (:func:`qfx.from_qonnx`), ready
    for ``qfx-gen``.

Bad input (a layer QONNX cannot express, a node qfx cannot import) is ``qfx: error: ...``, exit 2,
with nothing written.
"""

from __future__ import annotations

import argparse

__all__ = ["add_export_command", "add_import_command"]


def _export(args: argparse.Namespace) -> int:
    from .qonnx_export import write_qonnx

    out = write_qonnx(args.manifest, args.qonnx, batch=args.batch, force=args.force)
    print(f"wrote {out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from .qonnx_import import from_qonnx

    out = from_qonnx(args.model, args.output, force=args.force)
    print(f"wrote {out}")
    return 0


def add_export_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="convert a manifest to an interchange format (QONNX)",
                       description="Write a qfx manifest as a QONNX model: Quant nodes at every cast, standard ONNX "
                                   "ops between them (see qfx.qonnx_export).")
    p.add_argument("manifest", help="manifest folder (or its manifest.yaml)")
    p.add_argument("--qonnx", required=True, metavar="OUT.onnx", help="the QONNX file to write")
    p.add_argument("--batch", type=int, default=1, help="batch size of the graph input (default 1)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT.onnx")
    p.set_defaults(func=_export)


def add_import_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="import a QONNX model (power-of-two scales) as a manifest",
                       description="Turn a QONNX model (e.g. a Brevitas export with power-of-two scales) into a qfx "
                                   "manifest for qfx-gen (see qfx.qonnx_import).")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("-o", "--output", required=True, help="manifest folder to create")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty folder")
    p.set_defaults(func=_import)
