"""The `ntkode` command line: one subcommand per study.

Each subcommand lives in its own module with `NAME`, `HELP`, `add_arguments(parser)` and
`run(args) -> int`; register it by adding the module name to `_COMMANDS`.
"""

import argparse
import importlib
import sys

_COMMANDS = [
    "ntkode.studies._compare._cli",
    "ntkode.studies._widths._cli",
    "ntkode.studies._control._cli",
    "ntkode.studies._closure._cli",
    "ntkode.studies._mkl._cli",
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
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError) as err:
        # Bad arguments reach the library's own checks: show their sentence, not a traceback.
        print(f"ntkode {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
