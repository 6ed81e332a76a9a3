"""What several ``face3d`` commands share: the arguments of a training run, the default checkpoints that
``make train-single`` and ``make train-aggregate`` leave under ``outputs/``, and the device and thread set-up of
the reconstruction commands. Nothing heavy is imported at module level, so ``face3d --help`` stays fast."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from errors import InvalidInputError, UserError

DETECTOR_CHOICES = ("dlib-cascade", "dlib-hog", "dlib-mmod", "fan", "insightface")
"""`preprocessing.detect.DETECTORS`, written out so that building the parser does not import the detectors."""
TRAIN_SINGLE_RUN = "train-single"
"""The run directory of ``make train-single`` (the default R-Net of the other commands)."""
TRAIN_AGGREGATE_RUN = "train-aggregate"
"""The run directory of ``make train-aggregate``; its S4 C-Net is the default C-Net."""


def add_run_arguments(
    parser: argparse.ArgumentParser,
    *,
    config_help: str,
    resume_help: str,
    fast_dev_run_help: str,
    print_config_help: str = "print the merged config and exit",
) -> None:
    """``--config`` (repeatable), ``--resume``, ``--fast-dev-run``, ``--print-config`` and the ``KEY=VALUE``
    overrides of a training command."""
    parser.add_argument("--config", action="append", default=[], metavar="NAME_OR_PATH", help=config_help)
    parser.add_argument("--resume", action="store_true", help=resume_help)
    parser.add_argument("--fast-dev-run", action="store_true", help=fast_dev_run_help)
    parser.add_argument("--print-config", action="store_true", help=print_config_help)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")


def add_detector_argument(parser: argparse.ArgumentParser) -> None:
    """``--detector``: the face detector and 68-point landmarker of every command that reads photos."""
    parser.add_argument(
        "--detector",
        choices=DETECTOR_CHOICES,
        default="dlib-cascade",
        help="face detector + 68 landmarks (default dlib-cascade: dlib HOG, then dlib MMOD on images where HOG "
        "finds no face; fan and insightface need their packages and downloaded weights)",
    )


def print_config_if_asked(args: argparse.Namespace, files: Sequence[str]) -> bool:
    """With ``--print-config``: print the config merged from ``files`` and the overrides, and return True."""
    if not args.print_config:
        return False
    from experiments.config import load_config, to_yaml

    print(to_yaml(load_config(list(files), args.overrides)))
    return True


def default_rnet_checkpoint(outputs_dir: str | Path) -> Path | None:
    """The latest checkpoint of ``make train-single`` under ``outputs_dir``, None when there is none."""
    from experiments.trainer import latest_checkpoint

    return latest_checkpoint(Path(outputs_dir) / TRAIN_SINGLE_RUN / "checkpoints")


def default_cnet_checkpoint(outputs_dir: str | Path) -> Path | None:
    """The latest S4 C-Net checkpoint of ``make train-aggregate`` under ``outputs_dir``, None when there is none."""
    from experiments.trainer import latest_checkpoint

    return latest_checkpoint(Path(outputs_dir) / TRAIN_AGGREGATE_RUN / "s4" / "checkpoints")


def check_device(device: str) -> None:
    """Refuse ``--device cuda`` where torch sees no CUDA device."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("--device cuda but torch sees no CUDA device here; use --device cpu")


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads. Called in-process (tests, notebooks), a command must not
    leave its thread setting behind, so the previous one is restored."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def optional_packages() -> Iterator[None]:
    """A missing optional package (a paper detector's, a renderer's) is the user's to install: its ImportError
    becomes a `UserError`, one line naming the package."""
    try:
        yield
    except ImportError as err:
        raise UserError(str(err)) from err
