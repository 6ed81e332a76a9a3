"""``face3d reconstruct``: photos -> 3D faces, with the bundled R-Net (the default), a trained R-Net (``--ckpt``),
an exported one run by onnxruntime (``--onnx``) or by fitting (``--fit``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from errors import InvalidInputError, MissingFileError
from experiments.commands.common import add_detector_argument, check_device, optional_packages, torch_threads
from experiments.commands.reconstruct_video import EPILOG as VIDEO_EPILOG

EPILOG = """\
outputs, one folder per image under --out (named after the image file, extension kept):
  mesh.obj, mesh.ply                model space before pose (x right, y up, z to the viewer), albedo colours
  mesh_camera.obj, mesh_camera.ply  posed, OpenCV camera space (camera at the origin, y down, z = depth),
                                    shaded colours; pose.json's intrinsics project it onto the crop / photo
  mesh.glb, mesh_textured.glb       binary glTF of mesh.obj / mesh_textured.obj for 3D viewers (metres, glTF's unit)
  mesh_textured.obj/.mtl, albedo.png  model space with UVs and the baked albedo (ICT model only)
  coeffs.npz                        coefficients per field + flat vector + layout (coeffs.mat: Deep3D's
                                    layout, BFM only)
  landmarks.txt                     68 landmarks, crop and source-image pixels
  pose.json                         angles (deg), translation, camera, intrinsics, alignment
  overlay.png                       four 512 px panels: input | reconstruction over input | grey geometry |
                                    detected (red) and projected (green) landmarks
plus report.jsonl (one line per image, written as it goes: status, reason, the detector stage that found the
face, checks) and summary.json. A prediction that diverged (non-finite values, landmarks far from the
detected ones, coefficients far outside their prior) is reported as "diverged" and writes nothing; an image's
folder appears only once all its files are complete.
With --set DIR_OR_VIDEO (instead of --images) the pictures are one person: see `face3d reconstruct-set --help`
for its outputs (aggregated identity mesh, per-picture meshes, confidences CSV + PNG).
Meshes are in millimetres (--units mm, default) or the models' decimetres (--units dm, as Deep3D)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reconstruct",
        help="reconstruct 3D faces from photos (the bundled R-Net, a trained checkpoint or ONNX export, or fitting)",
        description=(
            "Detect the largest face in every image, align it to the face model's crop, predict its\n"
            "coefficients with the R-Net that ships in networks/weights/ (the default), a trained R-Net\n"
            "(--ckpt, or --onnx for one exported by `face3d export-onnx`) or fit them to the photo with the\n"
            "hybrid loss (--fit), and write meshes, texture, coefficients, landmarks, pose and an overlay per image.\n"
            "Images without a usable face are reported and skipped; the run goes on."
        ),
        epilog=EPILOG + "\n\n" + VIDEO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--images",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="image files and/or folders (searched recursively), each reconstructed on its own",
    )
    source.add_argument(
        "--set",
        type=Path,
        metavar="DIR_OR_VIDEO",
        dest="set_source",
        help="one person's pictures (a folder) or a video: one identity aggregated over all of "
        "them with C-Net (--cnet-ckpt, default the latest `make train-aggregate` one) or by "
        "averaging with --ckpt; same as `face3d reconstruct-set`",
    )
    source.add_argument(
        "--video",
        "--frames",
        type=Path,
        metavar="FILE_OR_DIR",
        dest="video",
        help="a video file or a folder of frames: every frame tracked and reconstructed, one identity "
        "over the clip, smoothed pose and expression, overlay.mp4 (see the end of this help)",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--ckpt",
        type=Path,
        default=None,
        metavar="CKPT",
        help="R-Net checkpoint written by `face3d train`, or a `face3d export-weights` folder (its "
        "config sets face model and crop size); default: the bundled R-Net (networks/weights/, "
        "see its MODEL_CARD.md)",
    )
    parser.add_argument(
        "--onnx",
        type=Path,
        default=None,
        metavar="MODEL",
        help="R-Net exported by `face3d export-onnx`, run with onnxruntime on the CPU (its metadata "
        "sets face model and crop size; a BFM network also needs --bfm-path)",
    )
    parser.add_argument(
        "--fit",
        action="store_true",
        help="fit coefficients per image, refining the bundled R-Net's answer (--fit-start mean: from the "
        "mean face; a few seconds an image on a 2-core CPU at the defaults; README 'Fitting' says what the "
        "objective is and why)",
    )
    parser.add_argument(
        "--face-model",
        choices=("ict", "bfm"),
        default=None,
        help="face model for --fit (default ict; a checkpoint brings its own)",
    )
    parser.add_argument(
        "--bfm-path",
        type=Path,
        default=None,
        metavar="P",
        help="BFM_model_front.mat for --face-model bfm or a BFM --onnx model (built by `face3d prepare-bfm`)",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        metavar="N",
        help="--fit: steps under the full hybrid loss (default 100; the landmark-only pose and "
        "shape stages before them are cheap and keep their defaults)",
    )
    parser.add_argument(
        "--fit-start",
        choices=("rnet", "mean"),
        default=None,
        help="--fit: start from the bundled R-Net's prediction and refine it (rnet, the default for the ICT "
        "model; the fit then uses the R-Net's face model) or from the mean face (mean)",
    )
    parser.add_argument(
        "--crop-size",
        type=int,
        default=None,
        metavar="S",
        help="--fit: crop side in pixels to fit at (default 224, as Deep3D)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="CPU threads for torch (default 1: one image's small tensors gain little from more "
        "and a busy machine makes threads wait on each other)",
    )
    parser.add_argument(
        "--units",
        choices=("mm", "dm"),
        default="mm",
        help="length unit of the mesh files and pose.json (default mm; dm = model units)",
    )
    add_detector_argument(parser)
    parser.add_argument(
        "--texture-size",
        type=int,
        default=1024,
        metavar="PX",
        help="side of the baked albedo texture (ICT model; default 1024)",
    )
    parser.add_argument("--ply-ascii", action="store_true", help="write ASCII PLY instead of binary")
    parser.add_argument("--meshes", action="store_true", help="--video: also write every frame's OBJ and PLY")
    parser.add_argument(
        "--cnet-ckpt",
        type=Path,
        default=None,
        metavar="PATH",
        help="--set: C-Net checkpoint of `face3d train-aggregate` (it holds its R-Net)",
    )
    parser.add_argument(
        "--strategy",
        choices=("s4", "s3", "s2", "s1", "mean"),
        default=None,
        help="--set: aggregation (default s4 with an element-wise C-Net, mean without one); with --set --fit "
        "the pictures are fitted together with one identity and albedo instead",
    )
    parser.set_defaults(func=run)


def run_set(args: argparse.Namespace) -> int:
    """``--set``: hand over to ``face3d reconstruct-set`` with the options that mean the same there."""
    from experiments.commands import reconstruct_set

    if args.fit:
        unsupported = [
            name
            for name, value in (
                ("--ckpt", args.ckpt),
                ("--onnx", args.onnx),
                ("--cnet-ckpt", args.cnet_ckpt),
                ("--strategy", args.strategy),
            )
            if value
        ]
        if unsupported:
            raise InvalidInputError(
                f"{', '.join(unsupported)} do not apply to --set --fit: the set is fitted with one shared "
                "identity and albedo, no network (drop them, or drop --fit)"
            )
        check_predictor_args(args)
    else:
        unsupported = [
            name
            for name, value in (
                ("--onnx", args.onnx),
                ("--face-model", args.face_model),
                ("--bfm-path", args.bfm_path),
                ("--iterations", args.iterations),
                ("--crop-size", args.crop_size),
            )
            if value
        ]
        if unsupported:
            raise InvalidInputError(
                f"{', '.join(unsupported)} do not apply to --set: a set is reconstructed with a trained "
                "R-Net (--ckpt) or C-Net (--cnet-ckpt), the latest ones under outputs/, or by fitting "
                "(--fit)"
            )
    set_args = argparse.Namespace(
        source=args.set_source,
        out=args.out,
        cnet_ckpt=str(args.cnet_ckpt) if args.cnet_ckpt else None,
        rnet_ckpt=str(args.ckpt) if args.ckpt else None,
        strategy=args.strategy,
        every=10,
        max_frames=None,
        detector=args.detector,
        units=args.units,
        outputs_dir="outputs",
        fitter=build_predictor(args) if args.fit else None,
    )
    return reconstruct_set.run(set_args)


def check_predictor_args(args: argparse.Namespace) -> None:
    """Reject argument combinations that have no meaning, naming the fix."""
    if (args.ckpt is not None) + (args.onnx is not None) + bool(args.fit) > 1:
        raise InvalidInputError(
            "choose one predictor: --ckpt CKPT (a trained R-Net from `face3d train`), --onnx MODEL (one "
            "exported by `face3d export-onnx`), --fit (fit each photo with the hybrid loss, started from the bundled R-Net's answer), "
            "or none of them for the bundled R-Net"
        )
    if args.onnx is not None:
        given = [
            name
            for name, value in (
                ("--face-model", args.face_model),
                ("--iterations", args.iterations),
                ("--crop-size", args.crop_size),
            )
            if value is not None
        ]
        if given:
            raise InvalidInputError(
                f"{', '.join(given)} only apply to --fit; an ONNX model brings its own face model and "
                "crop size (drop them, or use --fit)"
            )
        if args.device != "cpu":
            raise InvalidInputError(
                "--onnx runs on onnxruntime's CPU provider; drop --device cuda (or use --ckpt on the GPU)"
            )
    elif not args.fit:
        given = [
            name
            for name, value in (
                ("--face-model", args.face_model),
                ("--bfm-path", args.bfm_path),
                ("--iterations", args.iterations),
                ("--crop-size", args.crop_size),
                ("--fit-start", getattr(args, "fit_start", None)),
            )
            if value is not None
        ]
        if given:
            raise InvalidInputError(
                f"{', '.join(given)} only apply to --fit; an R-Net (--ckpt or the bundled one) brings "
                "its own face model and crop size (drop them, or use --fit)"
            )
    if args.iterations is not None and args.iterations < 0:
        raise InvalidInputError(f"--iterations must be >= 0, got {args.iterations}")
    if args.crop_size is not None and args.crop_size < 32:
        raise InvalidInputError(f"--crop-size must be at least 32 pixels, got {args.crop_size}")
    if args.threads < 1:
        raise InvalidInputError(f"--threads must be >= 1, got {args.threads}")


def build_predictor(args: argparse.Namespace):
    """The `reconstruction.pipeline` predictor the arguments ask for."""
    from reconstruction.pipeline import FittingPredictor, RNetPredictor

    if args.onnx is not None:
        from reconstruction.onnx_predictor import OnnxRNetPredictor

        return OnnxRNetPredictor(args.onnx, face_model_path=args.bfm_path, threads=args.threads)
    if not args.fit:
        from experiments.build import BUNDLED, load_rnet_checkpoint

        path = args.ckpt if args.ckpt is not None else BUNDLED
        return RNetPredictor.from_checkpoint(path, load_rnet_checkpoint, device=args.device)
    from face_model import load_face_model
    from reconstruction.fit import FitSettings

    settings = FitSettings() if args.iterations is None else FitSettings(iterations=args.iterations)
    start = getattr(args, "fit_start", None) or ("mean" if args.face_model == "bfm" else "rnet")
    if start == "rnet":
        if args.face_model == "bfm":
            raise InvalidInputError("the bundled R-Net predicts ICT coefficients; fit BFM with --fit-start mean")
        from experiments.build import BUNDLED, load_rnet_checkpoint

        init = RNetPredictor.from_checkpoint(BUNDLED, load_rnet_checkpoint, device=args.device)
        return FittingPredictor.build(
            init.renderer.face_model, settings, crop_size=args.crop_size or 224, device=args.device, init=init
        )
    face_model = load_face_model(args.face_model or "ict", path=args.bfm_path)
    return FittingPredictor.build(
        face_model.to(args.device), settings, crop_size=args.crop_size or 224, device=args.device
    )


def announced_predictor(args: argparse.Namespace, what: str):
    """`build_predictor`, then one line saying what is reconstructed with which network, model and crop size."""
    predictor = build_predictor(args)
    print(
        f"reconstructing {what} with {predictor.name} ({predictor.renderer.face_model.name} model, "
        f"{predictor.renderer.camera.image_size[0]}-pixel crops, {args.device})",
        flush=True,
    )
    return predictor


def format_record(record: dict) -> str:
    """One line per image: status, source, and where the outputs went or why there are none."""
    status = record["status"]
    line = f"[{status}] {record['source']}"
    if status == "ok":
        details = record.get("details", {})
        extra = [f"{record['seconds']:.1f} s", f"landmark error {record['landmark_error_px']:.2f} px"]
        if record.get("detected_by"):
            extra.append(f"face found by {record['detected_by']}")
        if "loss/total" in details:
            extra.append(f"loss {details['loss/total']:.4f}")
        return f"{line} -> {record['output_dir']}/ ({', '.join(extra)})"
    return f"{line}: {record['reason']}"


def run(args: argparse.Namespace) -> int:
    if args.set_source is not None:
        return run_set(args)
    if getattr(args, "video", None) is not None:
        from experiments.commands import reconstruct_video

        return reconstruct_video.run(args)
    if getattr(args, "meshes", False):
        raise InvalidInputError("--meshes applies to --video (photos always get their meshes)")
    if args.cnet_ckpt is not None or args.strategy is not None:
        raise InvalidInputError("--cnet-ckpt and --strategy only apply to --set (one person's pictures aggregated)")
    check_predictor_args(args)
    # Imported here so that `face3d --help` does not load torch, OpenCV and dlib.

    from preprocessing.image import OK
    from reconstruction.export import ExportOptions
    from reconstruction.pipeline import collect_images, reconstruct_images

    check_device(args.device)
    jobs = collect_images(args.images, exclude=args.out)
    if not jobs:
        raise MissingFileError(f"no image files found in {' '.join(map(str, args.images))}")
    options = ExportOptions(units=args.units, ply_binary=not args.ply_ascii, texture_size=args.texture_size)
    with torch_threads(args.threads), optional_packages():
        predictor = announced_predictor(args, f"{len(jobs)} image(s)")
        summary = reconstruct_images(
            args.images,
            args.out,
            predictor,
            detector=args.detector,
            options=options,
            on_record=lambda record: print(format_record(record), flush=True),
        )
    print(f"done in {summary.seconds:.1f} s: " + ", ".join(f"{s} {n}" for s, n in summary.status_counts.items()))
    print(f"outputs: {summary.out_dir}/<image>/ (meshes in {args.units}); report: {summary.out_dir}/report.jsonl")
    return 0 if summary.status_counts.get(OK, 0) else 1
