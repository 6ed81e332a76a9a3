"""``face3d preview``: render the face model under varied coefficients into one PNG grid, with the
projected landmarks on top, so a person can see that model, camera, lighting and rasterizer agree."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "preview",
        help="render the face model into a PNG grid (mean, identities, expressions, lights, poses) with landmarks",
    )
    p.add_argument("--out", type=Path, default=Path("face.png"), help="output PNG (default: face.png)")
    p.add_argument("--face-model", choices=("ict", "bfm"), default="ict")
    p.add_argument("--bfm-path", type=Path, help="BFM_model_front.mat when --face-model bfm")
    p.add_argument("--size", type=int, default=224, help="tile size in pixels (default 224)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", help="rasterizer backend: auto, torch or pytorch3d")
    p.set_defaults(func=run)


def studio_light(sh_channels: int, batch: int):
    """(B, 9 * sh_channels) SH offsets of a soft key light from above, in front and image left, so the
    shape reads in the preview (zero lighting is a flat ambient light)."""
    import torch

    # Band 1 is -y (negative lights from above), band 2 is +z (front), band 3 is -x (image left).
    mono = torch.tensor([0.0, -0.15, 0.25, 0.15, 0.0, 0.0, 0.0, 0.0, 0.0])
    return mono.repeat(sh_channels).expand(batch, -1).clone()


def preview_rows(layout, seed: int):
    """Four rows of four coefficient sets with captions: poses of the mean face, identities,
    expressions, and everything random (albedo, light, pose)."""
    import torch

    from face_model.sampling import CoefficientPrior, sample_coefficients

    g = torch.Generator().manual_seed(seed)
    deg = math.pi / 180.0
    n = 4
    base = layout.zeros(n).replace(lighting=studio_light(layout.sh_channels, n))
    poses = base.replace(
        angles=torch.tensor([[0.0, 0.0, 0.0], [0.0, -45.0, 0.0], [0.0, 60.0, 0.0], [-20.0, 20.0, 10.0]]) * deg
    )
    random = sample_coefficients(layout, n, CoefficientPrior(), g)
    identities = base.replace(identity=random.identity, angles=torch.tensor([[0.0, 15.0, 0.0]] * n) * deg)
    expressions = base.replace(
        expression=sample_coefficients(layout, n, CoefficientPrior(expression_std=1.2), g).expression
    )
    return [
        (poses, ["mean, frontal", "mean, yaw -45", "mean, yaw 60", "pitch/yaw/roll"]),
        (identities, [f"identity {i + 1}" for i in range(n)]),
        (expressions, [f"expression {i + 1}" for i in range(n)]),
        (random, [f"random {i + 1}" for i in range(n)]),
    ]


def run(args: argparse.Namespace) -> int:
    import torch

    from face_model import load_face_model
    from face_model.coefficients import Coefficients
    from renderers.camera import PinholeCamera
    from renderers.mesh_renderer import MeshRenderer
    from renderers.visualize import composite, draw_landmarks, image_grid, label, save_png, to_uint8

    model = load_face_model(args.face_model, path=args.bfm_path)
    camera = PinholeCamera().resized(args.size, args.size)
    renderer = MeshRenderer(model, camera, backend=args.backend)
    rows = preview_rows(model.layout, args.seed)
    coeffs = Coefficients.cat([c for c, _ in rows])
    captions = [t for _, texts in rows for t in texts]
    with torch.no_grad():
        out = renderer(coeffs)
    images = composite(out.image, out.mask, 0.35)
    tiles = [
        label(draw_landmarks(to_uint8(img), lms.numpy()), text)
        for img, lms, text in zip(images, out.landmarks, captions)
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_png(args.out, image_grid(tiles, n_cols=4))
    print(
        f"wrote {args.out} ({len(tiles)} renders of the {model.name} model, {model.n_vertices} vertices, "
        f"{model.triangles.shape[0]} triangles, {args.size}x{args.size} each)"
    )
    return 0
