"""``qfx sim OUT``: the bit-exact verdict of a qfx-gen design (RTL under Verilator, HLS C sim, reference).

``qfx sim OUT [--inputs X.npy] [--outputs Y.npy] [--vectors N] [--waves [FILE]] [--seed S] [--manifest M]``

reads ``OUT/design.json`` and the manifest it records, simulates ``OUT/rtl/<top>.v`` under
Verilator (harness-driven streaming, clocked by a C++ driver linked to the cocotb model; see
:mod:`qfx.sim.accel`) on the float inputs of ``X.npy`` (``[N,
*input_shape]``, quantized to the input format exactly as the reference does) or on N vectors
of corner and random input codes, runs the HLS C simulation when ``OUT/hls`` exists, compares
both with the integer reference (:func:`qfx.reference.run`) and prints a verdict table. On a
mismatch it names the first failing layer (engine output streams probed and compared with the
reference node by node), the vector and element index, expected and actual codes and real
values and the formats, and writes a VCD of the failing vector. Exit status: 0 bit-exact, 1
mismatch, 2 bad input (not a qfx-gen folder, wrong input shape or dtype, no Verilator).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_sim_command", "cmd_sim"]


def _err(msg: str) -> int:
    print(f"qfx: error: {msg}", file=sys.stderr)
    return 2


def cmd_sim(args: argparse.Namespace) -> int:
    import numpy as np

    from .accel import DesignError
    from .check import verify
    from .verilator import VerilatorBuildError, VerilatorNotFound, find_verilator

    try:
        find_verilator()
    except VerilatorNotFound as err:
        return _err(str(err))
    x = None
    if args.inputs:
        p = Path(args.inputs)
        if not p.is_file():
            return _err(f"--inputs {p}: no such file (a .npy of float inputs [N, *input_shape])")
        with open(p, "rb") as fh:
            magic = fh.read(6)
        if magic != b"\x93NUMPY":
            return _err(f"--inputs {p}: not a .npy file (save the float inputs with numpy.save)")
        try:
            x = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as err:
            return _err(f"--inputs {p}: not a readable .npy file ({err})")
    if args.vectors < 1:
        return _err(f"--vectors {args.vectors}: give at least 1")
    waves = args.waves if args.waves else False
    model = None
    if getattr(args, "run", None):
        from qfx.runs import load_run

        try:
            model = load_run(args.run)
        except (OSError, ValueError) as err:  # qfx.runs.ConfigError, qfx.train.CheckpointError are ValueErrors
            return _err(f"--run {args.run}: {err}")
    try:
        rep = verify(args.out, x, vectors=args.vectors, seed=args.seed, manifest=args.manifest, waves=waves,
                     hls=not args.no_hls, model=model)
    except (DesignError, ValueError, TypeError, FileNotFoundError) as err:
        return _err(str(err))
    except VerilatorBuildError as err:
        return _err(str(err))
    d = rep.design
    print(f"qfx sim: {d.info.get('model') or d.top} ({d.out_dir}); manifest {rep.manifest_path}")
    print(f"  inputs: {rep.source}; in {d.info['interface']['s_axis']['format']}, "
          f"out {d.info['interface']['m_axis']['format']}")
    if rep.rtl is not None and rep.rtl.sim_seconds > 0:
        print(f"  RTL: {rep.rtl.cycles} cycles, {len(rep.inputs) / rep.rtl.sim_seconds:.1f} inferences/s simulated "
              f"(build {'cached' if rep.rtl.build_seconds < 2 else f'{rep.rtl.build_seconds:.0f} s'})")
    print(rep.table())
    if args.outputs and rep.rtl_outputs is not None:
        out_shape = tuple(d.info["interface"]["m_axis"]["shape"])
        np.save(args.outputs, rep.rtl_outputs.reshape((len(rep.rtl_outputs),) + out_shape))
        print(f"  RTL output codes written to {args.outputs} (int64, {d.info['interface']['m_axis']['format']})")
    if rep.localized is not None:
        print(f"  localized: {rep.localized.describe()}")
    elif not rep.ok and rep.rtl is not None and any(not c.ok for c in rep.checks[1:2]):
        print("  localization: every probed layer matched the reference on the failing vector; "
              "the difference is at the output interface")
    if rep.waves is not None:
        print(f"  waves: {rep.waves}")
    print(f"verdict: {'BIT-EXACT' if rep.ok else 'MISMATCH'}")
    return 0 if rep.ok else 1


def add_sim_command(sub: argparse._SubParsersAction) -> None:
    """Register ``qfx sim`` on the ``qfx`` command's subparsers."""
    p = sub.add_parser("sim", help="bit-exact check of a qfx-gen design: RTL (Verilator) and HLS C sim vs reference",
                       description=__doc__.split("\n\n")[0] + " See qfx.sim.cli.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output folder of qfx-gen (holds design.json and rtl/)")
    p.add_argument("--inputs", help=".npy of float inputs [N, *input_shape] (default: random + corner codes)")
    p.add_argument("--outputs", help="write the RTL output codes here (.npy, int64, [N, *output_shape])")
    p.add_argument("--vectors", type=int, default=100, help="random vectors when no --inputs (default: 100)")
    p.add_argument("--waves", nargs="?", const=True, default=False, metavar="FILE",
                   help="record a VCD of the RTL run (default file OUT/sim/waves.vcd) and print its path")
    p.add_argument("--seed", type=int, default=0, help="seed of the random vectors (default: 0)")
    p.add_argument("--manifest", help="the manifest folder (default: the one recorded in design.json)")
    p.add_argument("--no-hls", action="store_true", help="skip the HLS C simulation even when OUT/hls exists")
    p.add_argument("--run", help="a finished `qfx train` run folder: also compare its PyTorch emulation, layer by layer")
    p.set_defaults(func=cmd_sim)


def main(argv=None) -> int:  # ``python -m qfx.sim.cli OUT ...``
    parser = argparse.ArgumentParser(prog="qfx")
    sub = parser.add_subparsers(dest="command", required=True)
    add_sim_command(sub)
    args = parser.parse_args(["sim", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
