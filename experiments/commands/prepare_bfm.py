"""``face3d prepare-bfm``: build Deep3D's ``BFM_model_front.mat`` from the user's BFM09 downloads."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare-bfm",
        help="build BFM_model_front.mat (the paper's face model) from the raw BFM09 files",
        description=(
            "Convert the Basel Face Model 2009 and Guo et al.'s expression basis into Deep3DFaceRecon's "
            "cropped BFM_model_front.mat. DIR must hold 01_MorphableModel.mat (BFM09, "
            "https://faces.dmi.unibas.ch/bfm/main.php?nav=1-2&id=downloads), Exp_Pca.bin "
            "(https://github.com/Juyong/3DFace, 'CoarseData') and std_exp.txt, BFM_front_idx.mat, "
            "BFM_exp_idx.mat, facemodel_info.mat (BFM/ folder of "
            "https://github.com/sicxu/Deep3DFaceRecon_pytorch)."
        ),
    )
    parser.add_argument(
        "--bfm-dir", type=Path, required=True, metavar="DIR", help="folder with the raw BFM09 and Deep3D index files"
    )
    parser.add_argument(
        "--out", type=Path, default=None, metavar="PATH", help="output file (default: DIR/BFM_model_front.mat)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the output is newer than every input")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that `face3d --help` does not load torch and scipy.
    from face_model.bfm import load_bfm, prepare_bfm

    out_path = prepare_bfm(args.bfm_dir, args.out, force=args.force)
    # Loading the result checks it end to end (keys, shapes, index ranges) before anyone trains on it.
    model = load_bfm(out_path)
    print(
        f"BFM09 front model ready at {out_path}: {model.n_vertices} vertices, "
        f"{model.triangles.shape[0]} triangles, {model.layout}"
    )
    return 0
