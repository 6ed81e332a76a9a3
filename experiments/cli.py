"""The ``face3d`` command. Each subcommand lives in `experiments.commands.<name>` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``; heavy imports happen
inside ``func`` so ``face3d --help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="face3d",
        description="Weakly-supervised 3D face reconstruction (Deng et al. 2019) with PyTorch Lightning.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"experiments.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        # Known user errors (missing model file, bad shapes, unknown backend) get one clear line, not a trace.
        print(f"face3d {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
