"""``face3d benchmark`` (``make benchmark``): the accuracy and speed report of an R-Net checkpoint
(`benchmarks.suite`)."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from errors import InvalidInputError, MissingFileError
from experiments.commands.common import default_cnet_checkpoint, default_rnet_checkpoint

REPORTS_DIR = Path("benchmarks") / "reports"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "benchmark",
        help="accuracy and speed report of an R-Net checkpoint (synthetic 20-pose protocol, licensed "
        "datasets when configured, timings)",
        description="Score an R-Net checkpoint on the synthetic 20-pose protocol (held-out synthetic identities at "
        "4 pitches x 5 yaws: mean face, R-Net per picture, shape averaging, C-Net S4 when a C-Net "
        "checkpoint exists, fitting on a few pictures), on every licensed dataset that is configured "
        "(FACE3D_DATA_<NAME>; the others are noted as skipped), and time preprocessing, R-Net and "
        "rendering, and run the real-photo protocol on the shipped james scan (its photographs and "
        "renders against the scan, between the mean face and the model's ceiling). Writes report.md, "
        "metrics.json and plots into --out and logs them to an offline W&B run (WANDB_MODE=online to "
        "upload).",
    )
    p.add_argument(
        "--ckpt",
        type=Path,
        default=None,
        metavar="PATH",
        help="R-Net checkpoint of `face3d train`, a `face3d export-weights` folder, or `bundled` (the "
        "R-Net in networks/weights/). Default: the latest `make train-single` checkpoint "
        "(outputs/train-single/checkpoints/best-*.ckpt, else last.ckpt), else the bundled R-Net",
    )
    p.add_argument(
        "--cnet-ckpt",
        type=Path,
        default=None,
        metavar="PATH",
        help="C-Net checkpoint of `face3d train-aggregate` for the S4 row (default: the latest "
        "outputs/train-aggregate/s4 checkpoint; the row is skipped with a note without one)",
    )
    p.add_argument(
        "--fit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fitting rows (analysis-by-synthesis on --fit-images pictures; default on)",
    )
    p.add_argument(
        "--fit-images",
        type=int,
        default=40,
        metavar="N",
        help="pictures to fit (default 40: eight identities at every yaw at the pitch nearest frontal; "
        "each identity's pictures are also fitted together with one shared identity)",
    )
    p.add_argument(
        "--fit-iterations",
        type=int,
        default=None,
        metavar="N",
        help="full-loss steps per fit (default: as `face3d reconstruct --fit`)",
    )
    p.add_argument(
        "--appearance-gap",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the pose grid in the look the fit does not assume (whole head, eyes, plain skin "
        "albedo, non-SH lights with shadows), beside the matched one (default on)",
    )
    p.add_argument(
        "--identities",
        type=int,
        default=8,
        metavar="N",
        help="held-out synthetic identities, 20 pictures each (default 8: a few minutes on 2 CPU cores)",
    )
    p.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="output folder (default benchmarks/reports/<timestamp>/)"
    )
    p.add_argument("--seed", type=int, default=0, help="benchmark seed (default 0)")
    p.add_argument("--no-speed", dest="speed", action="store_false", help="skip the timings")
    p.add_argument("--no-wandb", dest="wandb", action="store_false", help="do not log a W&B run")
    p.add_argument(
        "--datasets",
        default=",".join(("micc", "facewarehouse", "bu3dfe", "now")),
        metavar="LIST",
        help="licensed datasets to try, comma-separated (default: all four; each runs only when "
        "configured, see README 'Evaluation datasets')",
    )
    p.add_argument(
        "--dataset-limit",
        type=int,
        default=None,
        metavar="N",
        help="evaluate at most N samples per licensed dataset (default: all)",
    )
    p.add_argument(
        "--real-photo",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the real-photo protocol on the shipped james scan: its two photographs and renders of it at "
        "a pose grid, scored against the scan with the mean face and the model's ceiling (default "
        "on; about 3-4 minutes on 2 CPU cores)",
    )
    p.add_argument(
        "--real-photo-pitches",
        default="-10,5,20",
        metavar="LIST",
        help="render pitches in degrees, comma-separated (default -10,5,20; empty: no renders)",
    )
    p.add_argument(
        "--real-photo-yaws",
        default="-60,-30,0,30,60",
        metavar="LIST",
        help="render yaws in degrees, comma-separated (default -60,-30,0,30,60)",
    )
    p.add_argument(
        "--real-photo-lights",
        default="key,coloured,flat",
        metavar="LIST",
        help="render lights, comma-separated, of key, coloured, flat (default all three, taken in turn "
        "along the pose grid; --real-photo-all-lights renders every pose under each)",
    )
    p.add_argument(
        "--real-photo-all-lights",
        action="store_true",
        help="render every pose under every light (x the number of lights pictures)",
    )
    p.add_argument(
        "--real-photo-fit",
        type=int,
        default=1,
        metavar="N",
        help="renders to fit, at the pitch nearest 0, yaws spread over the grid (default 1: the frontal "
        "one; a fit takes 10-40 s on a CPU); the two "
        "photographs are fitted unless --no-fit",
    )
    p.add_argument(
        "--real-photo-size", type=int, default=512, metavar="PX", help="render resolution in pixels (default 512)"
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument(
        "--outputs-dir",
        type=Path,
        default=Path("outputs"),
        metavar="DIR",
        help="where the default checkpoints are looked for (default: outputs)",
    )
    p.set_defaults(func=run)


def default_out_dir(root: Path = REPORTS_DIR) -> Path:
    """``root/<YYYYmmdd-HHMMSS>``, with a suffix when a report of that second exists."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, n = root / stamp, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{stamp}-{n}"
    return candidate


def _degrees(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InvalidInputError(f"{flag} must be comma-separated degrees such as -30,0,30, got {text!r}") from None


def real_photo_settings(args: argparse.Namespace):
    """`benchmarks.real_photo.RealPhotoSettings` from the command line, or None with --no-real-photo."""
    from benchmarks.real_photo import RealPhotoSettings
    from benchmarks.scan_render import ScanRenderSettings

    if not args.real_photo:
        return None
    if args.real_photo_fit < 0:
        raise InvalidInputError(f"--real-photo-fit must be >= 0, got {args.real_photo_fit}")
    if args.real_photo_size < 64:
        raise InvalidInputError(f"--real-photo-size must be at least 64 pixels, got {args.real_photo_size}")
    default = ScanRenderSettings()
    # The focal length scales with the picture so that the head keeps its share of the frame.
    render = ScanRenderSettings(
        image_size=args.real_photo_size, focal=default.focal * args.real_photo_size / default.image_size
    )
    return RealPhotoSettings(
        pitches_deg=_degrees(args.real_photo_pitches, "--real-photo-pitches"),
        yaws_deg=_degrees(args.real_photo_yaws, "--real-photo-yaws"),
        lights=tuple(part.strip() for part in args.real_photo_lights.split(",") if part.strip()),
        all_lights=args.real_photo_all_lights,
        render=render,
        fit_photos=args.fit,
        fit_renders=args.real_photo_fit if args.fit else 0,
    )


def run(args: argparse.Namespace) -> int:
    from benchmarks.licensed import DatasetSettings
    from benchmarks.suite import BenchmarkSettings, ModelLoaders, run_benchmark
    from experiments.build import build_cnet_module, load_cnet_checkpoint, load_rnet_checkpoint

    for name in ("identities", "fit_images", "fit_iterations"):
        if getattr(args, name) is not None and getattr(args, name) < (1 if name == "identities" else 0):
            raise InvalidInputError(
                f"--{name.replace('_', '-')} must be >= {1 if name == 'identities' else 0}, got {getattr(args, name)}"
            )
    from experiments.build import BUNDLED
    from networks.bundled_weights import BUNDLED_DIR, WEIGHTS_NAME

    default_rnet, default_cnet = default_rnet_checkpoint(args.outputs_dir), default_cnet_checkpoint(args.outputs_dir)
    bundled = BUNDLED_DIR / WEIGHTS_NAME
    # A user's own train-single run is what they want scored; a fresh clone scores the R-Net that ships with it.
    checkpoint = (
        bundled if str(args.ckpt) == BUNDLED else args.ckpt or default_rnet or (bundled if bundled.is_file() else None)
    )
    if checkpoint is None:
        raise MissingFileError(
            f"no R-Net checkpoint under {args.outputs_dir / 'train-single' / 'checkpoints'} and no "
            f"bundled R-Net ({bundled}): run `make train-single` first, or pass --ckpt PATH (a "
            "checkpoint written by `face3d train`)"
        )
    if Path(checkpoint).is_dir():
        checkpoint = Path(checkpoint) / WEIGHTS_NAME
    if args.ckpt is None:
        print(
            f"scoring {checkpoint}"
            + (
                f" (the bundled R-Net: no `make train-single` checkpoint under {args.outputs_dir})"
                if checkpoint == bundled
                else ""
            ),
            flush=True,
        )
    if not Path(checkpoint).is_file():
        raise MissingFileError(
            f"R-Net checkpoint {checkpoint} not found; pass a checkpoint written by `face3d "
            "train` (outputs/<run>/checkpoints/*.ckpt), or leave --ckpt out for the latest "
            "`make train-single` one"
        )
    if args.cnet_ckpt is not None and not args.cnet_ckpt.is_file():
        raise MissingFileError(
            f"C-Net checkpoint {args.cnet_ckpt} not found; pass one written by `face3d "
            "train-aggregate` (outputs/train-aggregate/s4/checkpoints/*.ckpt), or leave "
            "--cnet-ckpt out"
        )
    cnet_checkpoint, cnet_note = args.cnet_ckpt or default_cnet, None
    if cnet_checkpoint is None:
        cnet_note = (
            f"C-Net S4 row skipped: no C-Net checkpoint under "
            f"{args.outputs_dir / 'train-aggregate' / 's4' / 'checkpoints'} (run `make train-aggregate`, "
            "or pass --cnet-ckpt PATH)"
        )
    names = tuple(name.strip() for name in args.datasets.split(",") if name.strip())
    settings = BenchmarkSettings(
        checkpoint=Path(checkpoint),
        out_dir=args.out or default_out_dir(),
        cnet_checkpoint=cnet_checkpoint,
        cnet_note=cnet_note,
        identities=args.identities,
        seed=args.seed,
        fit_images=args.fit_images if args.fit else 0,
        fit_iterations=args.fit_iterations,
        speed=args.speed,
        wandb=args.wandb,
        datasets=DatasetSettings(names=names, limit=args.dataset_limit),
        real_photo=real_photo_settings(args),
        appearance_gap=args.appearance_gap,
        device=args.device,
    )
    result = run_benchmark(settings, ModelLoaders(load_rnet_checkpoint, load_cnet_checkpoint, build_cnet_module))
    print("\n" + result.summary())
    return 0
