"""``face3d reconstruct --video FILE_OR_DIR --out DIR``: a video (or a folder of frames) -> per-frame coefficients
with one identity and smoothed motion, an overlay video, meshes on request (`reconstruction.video`)."""

from __future__ import annotations

import argparse

from errors import InvalidInputError, MissingFileError
from experiments.commands.common import check_device, optional_packages, torch_threads

EPILOG = """\
with --video (a video file, or a folder of frames sorted by name), under --out:
  frames.jsonl        one line per frame as it is done: status (detected / tracked / lost / diverged) and reason
  coefficients.npz    frames, raw and smoothed coefficients (one identity and albedo over the clip; pose and
                      expression one-euro filtered), landmarks (frame pixels), status of every frame, fps
  overlay.mp4         input | reconstruction over the input | grey geometry (mp4v)
  meshes/             with --meshes: frame_NNNNNN.obj / .ply, posed (smoothed), in --units
  report.json         counts, which frames were detected / tracked / lost (ranges), lost stretches, timings
The detector runs on the first frame and where tracking fails; in between the previous frame's landmarks give
the box for the 68-point model. --detector dlib-hog avoids the cascade's slow CNN stage on faceless frames."""


def check_video_args(args: argparse.Namespace) -> None:
    """What --video cannot be combined with, naming the fix."""
    if args.fit:
        raise InvalidInputError(
            "--video reconstructs every frame with an R-Net (the bundled one, --ckpt or --onnx); to fit "
            "one identity to a video's frames use --set VIDEO --fit"
        )
    if args.cnet_ckpt is not None or args.strategy is not None:
        raise InvalidInputError(
            "--cnet-ckpt and --strategy apply to --set; --video averages the frames' identities (use "
            "--set VIDEO for a C-Net aggregate)"
        )


def run(args: argparse.Namespace) -> int:
    from experiments.commands.reconstruct import announced_predictor, check_predictor_args

    check_video_args(args)
    check_predictor_args(args)
    if not args.video.exists():
        raise MissingFileError(f"{args.video} not found (give a video file or a folder of frames)")
    from reconstruction.video import VideoSettings, reconstruct_video

    check_device(args.device)
    with torch_threads(args.threads), optional_packages():
        predictor = announced_predictor(args, f"the frames of {args.video}")
        settings = VideoSettings(detector=args.detector, meshes=args.meshes, units=args.units)
        result = reconstruct_video(args.video, args.out, predictor, settings)
    report = result.report
    counts = ", ".join(f"{status} {n}" for status, n in report["counts"].items() if n)
    print(
        f"{report['n_frames']} frames ({counts}): {report['frames_per_second_wall']} frames/s, "
        f"{report['cpu_ms_per_frame']} ms CPU a frame"
    )
    for stretch in report["lost_stretches"]:
        print(f"warning: no face in frames {stretch['first']}-{stretch['last']} ({stretch['n_frames']} frames)")
    for problem in report["problems"][:10]:
        print(f"  frame {problem['frame']}: {problem['status']}: {problem['reason']}")
    if len(report["problems"]) > 10:
        print(f"  ... {len(report['problems']) - 10} more in {args.out}/frames.jsonl")
    print("outputs: " + ", ".join(str(path) for path in result.files.values()))
    return 0
