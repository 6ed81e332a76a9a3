"""Visibility from PyTorch3D's C++/CUDA rasterizer (optional dependency, imported lazily).

Only ``pix_to_face`` is taken from PyTorch3D; barycentrics and depth are recomputed by the shared
`barycentrics_and_depth`, so gradients are identical to the portable backend's.

PyTorch3D's rasterizer works in its NDC: +X left, +Y up, and the shorter image side spans [-1, 1]
(the longer one [-L/S, L/S]), with pixel centres at the usual half-pixel offsets. Our pixel
coordinates map to it by ``ndc_x = (W - 2 u) / S`` and ``ndc_y = (H - 2 v) / S`` with
``S = min(H, W)``: pixel centre (j + 0.5, i + 0.5) lands on PyTorch3D's centre of pixel (i, j), and
its output rows and columns are then already ours (row 0 at the top).
"""

from __future__ import annotations

import functools

import torch

from renderers.rasterizer.triangles import (
    corner_differences,
    corner_tables,
    drawable_faces,
    planar_corners,
    sort_corners,
)

# Where faces that must not be drawn are collapsed to: one point, zero area, far outside the image.
_PARKED = -1.0e4


@functools.lru_cache(maxsize=1)
def is_available() -> bool:
    """True when ``pytorch3d`` (with its compiled rasterizer) can be imported."""
    try:
        _import()
    except ImportError:
        return False
    return True


def _import():
    from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
    from pytorch3d.structures import Meshes

    return rasterize_meshes, Meshes


def visible_faces(
    screen_vertices: torch.Tensor,
    faces: torch.Tensor,
    image_size: tuple[int, int],
    near: float,
    cull_backfaces: bool,
) -> torch.Tensor:
    """Same contract as `torch_backend.visible_faces` (without chunking): (B, H, W) long, -1 background."""
    try:
        rasterize_meshes, Meshes = _import()
    except ImportError as error:
        raise ImportError(
            "rasterizer backend 'pytorch3d' needs PyTorch3D, which is not importable here "
            f"({error}); install it (pip extra 'pytorch3d', built from source, see README) or use "
            "backend='torch', the portable default"
        ) from error
    height, width = image_size
    batch, n_faces = screen_vertices.shape[0], faces.shape[0]
    device = screen_vertices.device
    if batch * n_faces == 0:
        return torch.full((batch, height, width), -1, dtype=torch.long, device=device)
    shorter = min(height, width)
    with torch.no_grad():
        # The same culling as the portable backend, decided in the input precision.
        sorted_faces, flipped = sort_corners(faces)
        # Pixel-centre-relative corners (x - 0.5, y - 0.5), exactly as the portable backend sees them.
        x, y, z = planar_corners(corner_tables(screen_vertices.detach(), 0.5), sorted_faces, batch)
        keep, _ = drawable_faces(corner_differences(x, y), z, flipped, near, cull_backfaces)
        ndc = torch.stack([(width - 1 - 2 * x) / shorter, (height - 1 - 2 * y) / shorter, z], dim=-1)
        # Unshared vertices (three per face) let each image drop its own culled faces while face ids
        # stay aligned with ours; PyTorch3D skips zero-area faces.
        ndc = torch.where(keep.unsqueeze(-1), ndc, _PARKED).float().permute(1, 2, 0, 3)  # (B, F, corner, xyz)
        corner_ids = torch.arange(3 * n_faces, device=device).view(1, n_faces, 3).expand(batch, -1, -1)
        meshes = Meshes(verts=ndc.reshape(batch, 3 * n_faces, 3), faces=corner_ids)
        packed, _, _, _ = rasterize_meshes(
            meshes,
            image_size=(height, width),
            blur_radius=0.0,
            faces_per_pixel=1,
            perspective_correct=True,
            cull_backfaces=False,
        )
    packed = packed[..., 0]
    # PyTorch3D numbers faces across the packed batch: image b's faces start at b * F.
    offsets = (torch.arange(batch, device=device) * n_faces).view(-1, 1, 1)
    return torch.where(packed >= 0, packed - offsets, -1)
