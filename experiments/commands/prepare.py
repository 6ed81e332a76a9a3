"""``face3d prepare``: detect, landmark, align and skin-mask a folder of photos for training (cached)."""

from __future__ import annotations

import argparse
from pathlib import Path

from errors import InvalidInputError, MissingFileError
from experiments.commands.common import add_detector_argument, optional_packages


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="align a folder of face photos to 224 crops with 68 landmarks and skin masks",
        description=(
            "Detect the largest face in every image under --images, predict its 68 landmarks, align the eye "
            "centres, nose tip and mouth corners onto the face model's projected 5 points (scale and "
            "translation only, as Deep3D), and write crops, landmarks, skin masks and manifest.jsonl under "
            "--out. Re-runs process only new or changed images."
        ),
    )
    parser.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder of photos (recursive)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    add_detector_argument(parser)
    parser.add_argument(
        "--upsample",
        type=int,
        default=None,
        help="dlib upsampling steps (default 1 for dlib-hog and the cascade's HOG stage, 0 for dlib-mmod)",
    )
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument(
        "--face-model",
        default="ict",
        metavar="NAME|PATH",
        help="face model whose projected 5 points are the alignment template: 'ict', or a "
        "face model file (.npz / BFM_model_front.mat)",
    )
    parser.add_argument(
        "--template",
        type=Path,
        default=None,
        metavar="NPY",
        help="(5, 2) template in crop pixels instead of --face-model",
    )
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--skin-prior", type=float, default=0.5, help="P(skin) prior of the skin classifier")
    parser.add_argument("--device", default="cpu", help="device for fan / insightface (cpu, cuda)")
    parser.add_argument(
        "--weights-dir",
        default=None,
        metavar="DIR",
        help="weights folder for fan (torch hub checkpoints) or insightface (root of models/)",
    )
    parser.add_argument(
        "--rehash", action="store_true", help="hash every file even when its size and mtime are unchanged"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that `face3d --help` does not load torch, OpenCV and dlib.
    from preprocessing.config import PrepareConfig
    from preprocessing.image import OK
    from preprocessing.pipeline import prepare

    if not args.images.is_dir():
        raise MissingFileError(f"--images {args.images} does not exist or is not a folder")
    if args.template is not None and args.template.suffix != ".npy":
        raise InvalidInputError(f"--template {args.template} must be a .npy file holding a (5, 2) array in crop pixels")
    config = PrepareConfig(
        detector=args.detector,
        upsample=args.upsample,
        crop_size=args.crop_size,
        template_source=str(args.template) if args.template is not None else args.face_model,
        skin_prior=args.skin_prior,
        workers=args.workers,
        device=args.device,
        weights_dir=args.weights_dir,
    )
    with optional_packages():
        summary = prepare(args.images, args.out, config, progress=not args.no_progress, rehash=args.rehash)
    print(
        f"{summary.n_images} images in {args.images}: {summary.n_processed} processed, {summary.n_cached} cached"
        + (f", {summary.n_ignored} non-image files skipped" if summary.n_ignored else "")
        + f" ({summary.seconds:.1f} s)"
    )
    print("status: " + ", ".join(f"{status} {count}" for status, count in summary.status_counts.items()))
    if summary.n_failed:
        print(f"not ok: {summary.n_failed}; by reason:")
        for reason, count in summary.failed_reasons.items():
            print(f"  {count:6d}  {reason}")
    print(f"manifest: {summary.manifest_path} (config {summary.config_hash})")
    return 0 if summary.status_counts.get(OK, 0) or not summary.n_images else 1
