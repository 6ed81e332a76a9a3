"""The ``face3d`` command. Each subcommand lives in `experiments.commands.<name>` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``; heavy imports happen
inside ``func`` so ``face3d --help`` stays fast.

A `errors.UserError` (a bad config, a missing file, an argument out of range) is printed as one line naming the
problem and the fix, and the command exits with status 2; ``--debug`` (before or after the command) shows its
traceback too.
Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from errors import UserError

COMMANDS = (
    "train",
    "train_aggregate",
    "prepare",
    "reconstruct",
    "reconstruct_set",
    "sweep",
    "preview",
    "prepare_bfm",
    "benchmark",
    "export_onnx",
    "export_weights",
)
DEBUG_HELP = "print the traceback of user errors too (bad config, missing file)"
USER_ERROR_EXIT = 2
"""The exit status of a user error, as argparse's for a bad command line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="face3d",
        description="Weakly-supervised 3D face reconstruction (Deng et al. 2019) with PyTorch Lightning.",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"experiments.commands.{name}").register(subparsers)
    for command in subparsers.choices.values():
        # Also after the command (`face3d train ... --debug`); SUPPRESS keeps the subparser from resetting a
        # `face3d --debug train` to False.
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        if args.debug:
            traceback.print_exc()
        print(f"face3d {args.command}: error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
