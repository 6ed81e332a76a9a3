"""``face3d export-onnx``: a trained R-Net as an ONNX model for onnxruntime (`reconstruction.onnx_export`).

The file holds the network and, in its metadata, the coefficient layout, the face model (name and the sha256 of
its file), the camera and the crop size, so that ``face3d reconstruct --onnx FILE`` needs nothing else. After
writing, the command runs the file with onnxruntime on a few rendered faces and prints how far its
coefficients are from PyTorch's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from errors import ExistingOutputError, InvalidInputError

EPILOG = """\
examples:
  face3d export-onnx --out r_net.onnx       (the bundled R-Net)
  face3d export-onnx --ckpt outputs/train-single/checkpoints/last.ckpt --out r_net.onnx
  face3d export-onnx --ckpt CKPT --out r_net_int8.onnx --quantize int8
  face3d reconstruct --images photos/ --out recon/ --onnx r_net.onnx"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-onnx",
        help="export a trained R-Net to ONNX (metadata: layout, face model, crop size) for onnxruntime",
        description="Export an R-Net checkpoint to ONNX (opset 17, dynamic batch axis) with the coefficient\n"
        "layout, the face model's name and file digest and the crop size in its metadata, then\n"
        "run it with onnxruntime on a few rendered faces and print how far it is from PyTorch.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--ckpt",
        type=Path,
        default=None,
        metavar="CKPT",
        help="R-Net checkpoint written by `face3d train`, or an export-weights folder (default: the bundled R-Net)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("r_net.onnx"),
        metavar="FILE",
        help="the ONNX file to write (default r_net.onnx)",
    )
    parser.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="int8: dynamic int8 weights (onnxruntime.quantization), a quarter of the size, "
        "slightly different coefficients (printed)",
    )
    parser.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset (>= 17; default 17)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument(
        "--check-faces",
        type=int,
        default=4,
        metavar="N",
        help="rendered faces to compare ONNX and PyTorch on after export (0 skips; default 4)",
    )
    parser.set_defaults(func=run)


def default_checkpoint() -> str:
    """The R-Net exported when --ckpt is not given: the one that ships in networks/weights/ (its loader names the
    missing file and how to restore it when it is absent)."""
    from experiments.build import BUNDLED

    return BUNDLED


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ExistingOutputError(f"{out} exists; pass --force to overwrite it or choose another --out")
    if out.suffix != ".onnx":
        raise InvalidInputError(f"--out {out} should end in .onnx")
    if args.opset < 17:
        raise InvalidInputError(f"--opset {args.opset}: the export needs opset 17 or newer")
    if args.check_faces < 0:
        raise InvalidInputError(f"--check-faces must be >= 0, got {args.check_faces}")
    checkpoint = args.ckpt if args.ckpt is not None else default_checkpoint()
    # Imported here so that `face3d --help` does not load torch.
    import torch

    from experiments.build import load_rnet_checkpoint
    from reconstruction.onnx_export import FaceModelSource, export_rnet_onnx, rnet_metadata
    from reconstruction.onnx_predictor import OnnxRNet, check_crops, compare_with_pytorch

    torch.set_num_threads(1)
    module, cfg = load_rnet_checkpoint(checkpoint)
    face_model = module.face_model
    metadata = rnet_metadata(
        face_model,
        FaceModelSource(cfg.face_model.name, cfg.face_model.path),
        cfg.renderer.image_size,
        name=Path(checkpoint).name,
    )
    export_rnet_onnx(module.rnet, metadata, out, opset=args.opset, quantize=args.quantize)
    net = OnnxRNet(out)
    size_mb = out.stat().st_size / 1e6
    print(
        f"wrote {out} ({size_mb:.1f} MB, opset {args.opset}, {net.metadata.precision}): "
        f"{metadata.face_model_name} face model ({metadata.face_model_file}, sha256 "
        f"{metadata.face_model_digest[:12]}...), {metadata.layout.size} coefficients, "
        f"{metadata.crop_size}x{metadata.crop_size} crops, dynamic batch"
    )
    if args.check_faces:
        crops = check_crops(module.renderer, args.check_faces)
        deviation = compare_with_pytorch(module.rnet, net, face_model, crops)
        print(
            f"onnxruntime vs PyTorch on {args.check_faces} rendered faces: largest coefficient difference "
            f"{deviation['max_abs']:.2e}, RMS difference {deviation['rel_rms']:.2e} of the coefficients' spread, "
            f"mean vertex distance {deviation['shape_mm']:.3g} mm"
        )
    print(f"use it with: face3d reconstruct --images PATH... --out DIR --onnx {out}")
    return 0
