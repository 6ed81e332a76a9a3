"""``face3d reconstruct-set``: one identity from a folder of pictures of a person or from a video."""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import replace
from pathlib import Path

from errors import InvalidInputError, MissingFileError
from experiments.commands.common import add_detector_argument, default_cnet_checkpoint, default_rnet_checkpoint

STRATEGY_CHOICES = ("s4", "s3", "s2", "s1", "mean")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reconstruct-set",
        help="reconstruct one face identity from several pictures (a folder or a video) with C-Net aggregation",
        description="Detect and align the face in every picture of DIR (recursive) or every k-th frame of a video "
        "(pictures without a face are skipped), run R-Net on each, weight the identities by C-Net's "
        "confidences and write the aggregated identity mesh, per-picture meshes and overlays, and the "
        "confidences (CSV + PNG) under --out. Without a C-Net checkpoint the identities are averaged.",
    )
    p.add_argument("source", type=Path, metavar="DIR_OR_VIDEO", help="folder of pictures of one person, or a video")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--cnet-ckpt",
        default=None,
        metavar="PATH",
        help="C-Net checkpoint of `face3d train-aggregate` (it holds its R-Net); default: the latest "
        "outputs/train-aggregate/s4 checkpoint when there is one",
    )
    p.add_argument(
        "--rnet-ckpt",
        default=None,
        metavar="PATH",
        help="R-Net checkpoint for shape averaging without a C-Net (default: the latest "
        "outputs/train-single checkpoint)",
    )
    p.add_argument(
        "--strategy",
        choices=STRATEGY_CHOICES,
        default=None,
        help="aggregation (default: s4 for an element-wise C-Net, s1 for a global one, mean without)",
    )
    p.add_argument("--every", type=int, default=10, metavar="K", help="video: keep every K-th frame (default 10)")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="video: keep at most N frames")
    add_detector_argument(p)
    p.add_argument("--units", choices=("mm", "dm"), default="mm", help="mesh units (default mm)")
    p.add_argument(
        "--outputs-dir",
        default="outputs",
        metavar="DIR",
        help="where the default checkpoints are looked for (default: outputs)",
    )
    p.set_defaults(func=run)


def load_models(cnet_ckpt: str | None, rnet_ckpt: str | None, outputs_dir: str = "outputs"):
    """(module with rnet + renderer, C-Net or None, config, description) from the checkpoint options."""
    from experiments.build import load_cnet_checkpoint, load_rnet_checkpoint

    if cnet_ckpt and rnet_ckpt:
        raise InvalidInputError(
            "pass --cnet-ckpt or --rnet-ckpt, not both: a C-Net checkpoint holds the R-Net it was "
            "trained on, and its confidences mean nothing for another R-Net"
        )
    if not rnet_ckpt:
        cnet_path = Path(cnet_ckpt) if cnet_ckpt else default_cnet_checkpoint(outputs_dir)
        if cnet_path is not None:
            module, cfg = load_cnet_checkpoint(cnet_path)
            return module, module.cnet, cfg, f"C-Net {cnet_path}"
    if rnet_ckpt is None:
        found = default_rnet_checkpoint(outputs_dir)
        if found is None:
            raise MissingFileError(
                f"no checkpoint found under {outputs_dir}/: train one with `make train-single` "
                "(and `face3d train-aggregate` for C-Net), or pass --cnet-ckpt / --rnet-ckpt"
            )
        rnet_ckpt = str(found)
    module, cfg = load_rnet_checkpoint(rnet_ckpt)
    return module, None, cfg, f"R-Net {rnet_ckpt} (no C-Net: shape averaging)"


def run(args: argparse.Namespace) -> int:
    # Heavy imports here, so `face3d --help` stays fast.
    from preprocessing.config import PrepareConfig
    from preprocessing.detect import make_detector
    from preprocessing.templates import resolve_template
    from reconstruction.sets import (
        align_pictures,
        fit_set,
        frames_from_folder,
        frames_from_video,
        is_video,
        reconstruct_set,
    )

    if args.every < 1:
        raise InvalidInputError(f"--every must be >= 1, got {args.every}")
    fitter = getattr(args, "fitter", None)
    if fitter is None:
        module, cnet, cfg, description = load_models(args.cnet_ckpt, args.rnet_ckpt, args.outputs_dir)
        template_source = cfg.face_model.path if cfg.face_model.name == "bfm" else cfg.face_model.name
        crop_size = 224
    else:
        face_model = fitter.renderer.face_model
        template_source = None
        crop_size = int(fitter.renderer.camera.image_size[0])
        description = (
            f"fitting ({face_model.name} model, {crop_size}-pixel crops): one identity and albedo shared "
            "by every picture"
        )
    print(f"model: {description}")
    if args.source.is_file() and is_video(args.source):
        sources = frames_from_video(args.source, args.every, args.max_frames)
    else:
        sources = frames_from_folder(args.source)
    config = PrepareConfig(detector=args.detector, workers=0, crop_size=crop_size)
    if fitter is None:
        config = replace(config, template_source=template_source)
        template = resolve_template(config.template_source, config.crop_size)
    else:
        from preprocessing.align import template_from_face_model

        template = template_from_face_model(fitter.renderer.face_model, fitter.renderer.camera)
    aligned = align_pictures(sources, make_detector(args.detector, config.resolved_upsample), template, config)
    for name, reason in aligned.skipped:
        print(f"skipped {name}: {reason}")
    stages = Counter(picture.detected_by for picture in aligned.pictures if picture.detected_by)
    if stages:
        print("faces found by " + ", ".join(f"{stage} {count}" for stage, count in sorted(stages.items())))
    if not aligned.pictures:
        raise InvalidInputError(f"no face found in any picture of {args.source} ({len(aligned.skipped)} tried)")
    if fitter is not None:
        result = fit_set(aligned.pictures, fitter, args.out, units=args.units)
        print(f"{len(aligned.pictures)} pictures fitted together with one identity ({len(aligned.skipped)} skipped)")
    else:
        result = reconstruct_set(aligned.pictures, module, cnet, args.out, strategy=args.strategy, units=args.units)
        print(
            f"{len(aligned.pictures)} pictures aggregated with {result.strategy.upper()} "
            f"({len(aligned.skipped)} skipped); share of each picture in the identity:"
        )
        for name, share in sorted(zip(result.names, result.share.tolist()), key=lambda item: -item[1]):
            print(f"  {100 * share:5.1f}%  {name}")
    print(f"identity mesh: {result.files['identity_obj']}")
    print(
        f"confidences:   {result.files['confidences_csv']}"
        + (f" and {result.files['confidences_png']}" if "confidences_png" in result.files else "")
    )
    return 0
