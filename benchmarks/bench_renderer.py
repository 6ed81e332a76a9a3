"""Rasterizer benchmark: forward and forward+backward time of rasterize + interpolate.

Two meshes at Deep3D's framing (focal 1015 px, principal point at the crop centre, camera 10 dm away):
the bundled ICT face (9.4K vertices, 18.5K triangles) and a synthetic BFM-sized mesh (35.7K vertices,
70.7K triangles: a displaced 189 x 189 grid with the footprint of a face). Each image of the batch
gets a slightly different head pose. The timed step rasterizes, interpolates per-vertex RGB colours,
and for forward+backward back-propagates an L2 loss on the image to the screen vertices and colours.

    python benchmarks/bench_renderer.py --batch 8 --size 224 --repeats 10 --device cpu

Prints a markdown table of medians over the repeats (after warm-up runs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from renderers.camera import PinholeCamera, euler_to_rotation, model_to_camera, rigid_transform, to_screen
from renderers.rasterizer import available_backends, interpolate, rasterize

ICT_NPZ = Path(__file__).resolve().parents[1] / "face_model" / "assets" / "ict" / "ict_face.npz"
DEFAULT_CAMERA = PinholeCamera()


def ict_mesh() -> tuple[torch.Tensor, torch.Tensor]:
    """(V, 3) centred model-space vertices in decimetres and (F, 3) long triangles of the ICT face."""
    try:
        from face_model import load_face_model

        model = load_face_model("ict")
        return model.mean_shape.detach().clone(), model.triangles.clone()
    except Exception as error:  # the face model package may be mid-change; the raw asset suffices here
        print(f"note: face_model.load_face_model('ict') unavailable ({error}); reading {ICT_NPZ.name}", file=sys.stderr)
    data = np.load(ICT_NPZ)
    vertices = torch.from_numpy(data["mean"].astype(np.float32)) / 10.0  # cm -> dm
    vertices = vertices - vertices.mean(0)
    return vertices, torch.from_numpy(data["tri"].astype(np.int64))


def bfm_sized_mesh(n: int = 189) -> tuple[torch.Tensor, torch.Tensor]:
    """A face-like height field on an n x n grid: n^2 vertices, 2 (n - 1)^2 counter-clockwise triangles."""
    lin_x = torch.linspace(-0.8, 0.8, n)
    lin_y = torch.linspace(-1.0, 1.0, n)
    y, x = torch.meshgrid(lin_y, lin_x, indexing="ij")
    # An ellipsoidal dome with a nose-like ridge, so faces overlap in depth near the silhouette.
    dome = (1 - (x / 0.85) ** 2 - (y / 1.05) ** 2).clamp(min=0).sqrt()
    nose = 0.25 * torch.exp(-((x / 0.12) ** 2) - ((y + 0.05) / 0.35) ** 2)
    z = 0.9 * dome + nose - 0.5
    vertices = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
    ids = torch.arange(n * n).view(n, n)
    a, b, c, d = ids[:-1, :-1], ids[:-1, 1:], ids[1:, :-1], ids[1:, 1:]  # y grows upwards along rows
    faces = torch.cat([torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c], -1).reshape(-1, 3)])
    return vertices, faces


def posed_screen(vertices: torch.Tensor, batch: int, camera: PinholeCamera) -> torch.Tensor:
    """(V, 3) model vertices -> (batch, V, 3) screen vertices, each image with a small yaw/pitch."""
    k = torch.arange(batch, dtype=torch.float32)
    angles = torch.stack([0.05 * torch.sin(k), 0.25 * torch.sin(1.7 * k), 0.03 * torch.cos(k)], dim=-1)
    posed = rigid_transform(vertices.expand(batch, -1, -1), euler_to_rotation(angles), torch.zeros(batch, 3))
    return to_screen(model_to_camera(posed, camera.camera_distance), camera)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_backend(
    screen: torch.Tensor,
    faces: torch.Tensor,
    colors: torch.Tensor,
    size: tuple[int, int],
    backend: str,
    warmup: int,
    repeats: int,
) -> tuple[float, float, float]:
    """Median forward ms, median forward+backward ms, and covered-pixel fraction."""
    screen = screen.detach().requires_grad_(True)
    colors = colors.detach().requires_grad_(True)
    target = torch.full((screen.shape[0], *size, 3), 0.5, device=screen.device)

    def forward() -> torch.Tensor:
        fragments = rasterize(screen, faces, size, backend=backend)
        return interpolate(colors, faces, fragments), fragments

    forward_ms, total_ms = [], []
    for step in range(warmup + repeats):
        _sync(screen.device)
        start = time.perf_counter()
        image, fragments = forward()
        _sync(screen.device)
        mid = time.perf_counter()
        loss = (image - target).square().mean()
        loss.backward()
        _sync(screen.device)
        end = time.perf_counter()
        screen.grad = colors.grad = None
        if step >= warmup:
            forward_ms.append(1e3 * (mid - start))
            total_ms.append(1e3 * (end - start))
    coverage = fragments.mask.float().mean().item()
    return statistics.median(forward_ms), statistics.median(total_ms), coverage


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224, help="square image side in pixels")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--backends",
        default=None,
        help="comma-separated subset of the installed backends; default: all of them, except "
        "pytorch3d on CPU (its CPU rasterizer takes over a minute per step here)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    present = available_backends()
    if args.backends is None:
        backends = [b for b in present if not (b == "pytorch3d" and device.type == "cpu")]
    else:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        missing = [b for b in backends if b not in present]
        if missing:
            parser.error(f"backends {missing} are not available here (available: {present})")

    camera = DEFAULT_CAMERA.resized(args.size, args.size)
    meshes = {"ICT face": ict_mesh(), "BFM-sized synthetic": bfm_sized_mesh()}
    print(
        f"device {device}, batch {args.batch}, {args.size}x{args.size}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} after {args.warmup} warm-up runs\n"
    )
    print("| mesh | vertices | triangles | backend | forward ms | forward+backward ms | coverage |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for name, (vertices, faces) in meshes.items():
        screen = posed_screen(vertices, args.batch, camera).to(device)
        faces = faces.to(device)
        gen = torch.Generator().manual_seed(0)
        colors = torch.rand(args.batch, vertices.shape[0], 3, generator=gen).to(device)
        for backend in backends:
            fwd, total, coverage = time_backend(
                screen, faces, colors, (args.size, args.size), backend, args.warmup, args.repeats
            )
            print(
                f"| {name} | {vertices.shape[0]} | {faces.shape[0]} | {backend} | {fwd:.1f} | {total:.1f} "
                f"| {coverage:.0%} |",
                flush=True,
            )
    if device.type == "cpu" and "pytorch3d" in present and args.backends is None:
        print("\npytorch3d skipped on CPU; pass --backends torch,pytorch3d to time it anyway")


if __name__ == "__main__":
    main()
