"""The `ntkode` command line: one subcommand per study.

Each subcommand lives in its own module with `NAME`, `HELP`, `add_arguments(parser)` and
`run(args) -> int`; register it by adding the module name to `_COMMANDS`. `main` checks the
`--out` folder first, runs the study so that Ctrl-C stops it at once (keeping what is
finished), and prints errors as one line; studies record and resume their parts with
`ntkode/studies/_run.py`.
"""

import argparse
import importlib
import os
import sys

_COMMANDS = [
    "ntkode.studies._compare._cli",
    "ntkode.studies._widths._cli",
    "ntkode.studies._control._cli",
    "ntkode.studies._closure._cli",
    "ntkode.studies._mkl._cli",
    "ntkode.studies._floor._cli",
    "ntkode.studies._certificate",
]


def _modules():
    return [importlib.import_module(name) for name in _COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntkode",
        description="Neural-network training as an ODE: true flows vs kernel surrogates.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from ._run import prepare_out, run_interruptibly

    # Studies write figures to files (from a worker thread): never an interactive backend.
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        # Every study writes into --out: a folder that cannot be used is found before any work.
        prepare_out(vars(args).get("out"))
        # Ctrl-C stops within a fraction of a second and keeps what is finished (see _run.py).
        return run_interruptibly(args.command, lambda: args._run(args))
    except (ValueError, TypeError, OSError) as err:
        # Bad arguments reach the library's own checks: show their sentence, not a traceback.
        print(f"ntkode {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
