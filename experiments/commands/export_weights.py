"""``face3d export-weights``: a ``face3d train`` checkpoint -> R-Net weights folder with model card and checksum."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export-weights",
        help="turn a `face3d train` checkpoint into a weights folder (rnet.pt, model card, SHA-256)",
        description="Write R-Net's weights (float16 by default), the training config and a model card (data, steps, "
        "wall time, hardware, test metrics next to the mean face, licences, SHA-256) into --out. With "
        "--out networks/weights the result is the bundled R-Net that `face3d reconstruct` and "
        "`face3d benchmark` use by default and `network.init=bundled` fine-tunes; commit the folder.",
    )
    p.add_argument(
        "--ckpt",
        type=Path,
        required=True,
        metavar="CKPT",
        help="checkpoint written by `face3d train` (outputs/<run>/checkpoints/best-*.ckpt)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="weights folder to write")
    p.add_argument(
        "--dtype",
        choices=("float16", "float32"),
        default="float16",
        help="storage precision of the weights (default float16: half the size)",
    )
    p.add_argument(
        "--no-evaluate",
        dest="evaluate",
        action="store_false",
        help="skip scoring the weights on the run's synthetic test faces",
    )
    p.add_argument("--notes", default="", help="text appended to the card's limitations")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("outputs") / "cache",
        metavar="DIR",
        help="where the synthetic test faces are cached (default outputs/cache, as training)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from experiments.export_weights import export_weights

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    export_weights(
        args.ckpt,
        args.out,
        dtype=getattr(torch, args.dtype),
        evaluate=args.evaluate,
        cache_dir=args.cache_dir,
        notes=args.notes,
    )
    return 0
