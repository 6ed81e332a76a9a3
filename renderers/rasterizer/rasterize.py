"""Entry points: `rasterize` screen-space triangles into `Fragments`, `interpolate` vertex attributes."""

from __future__ import annotations

import torch

from renderers.rasterizer import pytorch3d_backend, torch_backend
from renderers.rasterizer.fragments import Fragments
from renderers.rasterizer.triangles import barycentrics_and_depth, covered_pixels, gather_planar, pixel_corner_ids

BACKENDS = ("auto", "torch", "pytorch3d")
DEFAULT_NEAR = 1e-3
"""Depth below which faces are dropped (model units; our faces sit about 10 dm from the camera)."""
DEFAULT_MAX_PAIRS = 1 << 18
"""Candidate (face, pixel) pairs per chunk of the portable backend (about 100 bytes of temporaries each)."""


def available_backends() -> list[str]:
    """Backend names usable here, portable first: always ``"torch"``, plus ``"pytorch3d"`` if importable."""
    return ["torch", "pytorch3d"] if pytorch3d_backend.is_available() else ["torch"]


def rasterize(
    screen_vertices: torch.Tensor,
    faces: torch.Tensor,
    image_size: tuple[int, int],
    backend: str = "auto",
    near: float = DEFAULT_NEAR,
    cull_backfaces: bool = False,
    max_pairs: int = DEFAULT_MAX_PAIRS,
) -> Fragments:
    """Rasterize a batch of triangle meshes sharing one face list.

    Args:
        screen_vertices: (B, V, 3) float32/float64 (pixel x right, pixel y down, camera depth), as
            `renderers.camera.to_screen` returns; pixel (row i, col j) is centred at (j + .5, i + .5).
        faces: (F, 3) int32/int64 vertex indices in [0, V).
        image_size: (H, W) in pixels.
        backend: ``"torch"`` (portable, deterministic), ``"pytorch3d"`` (needs PyTorch3D) or
            ``"auto"``: PyTorch3D for CUDA tensors when it is installed, else the portable backend.
        near: faces with any corner at depth <= near are not drawn (no clipping).
        cull_backfaces: skip faces seen from behind (front = counter-clockwise in the image).
        max_pairs: memory bound of the portable backend (candidate pairs per chunk); results do not
            depend on it.

    Returns:
        `Fragments`; ``bary`` and ``depth`` carry gradients to ``screen_vertices``.

    Validating face indices reads their min and max on the host (one sync); a bad index on CUDA would
    otherwise be a device-side assert that kills the process.
    """
    faces = _check_inputs(screen_vertices, faces, image_size, near, max_pairs)
    size = (int(image_size[0]), int(image_size[1]))
    name = _resolve_backend(backend, screen_vertices)
    if name == "pytorch3d":
        pix_to_face = pytorch3d_backend.visible_faces(screen_vertices, faces, size, near, cull_backfaces)
    else:
        pix_to_face = torch_backend.visible_faces(screen_vertices, faces, size, near, cull_backfaces, max_pairs)
    bary, depth, covered = barycentrics_and_depth(screen_vertices, faces, pix_to_face)
    return Fragments(pix_to_face=pix_to_face, bary=bary, depth=depth, covered=covered)


def interpolate(attributes: torch.Tensor, faces: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """Blend per-vertex attributes at every pixel with the fragments' barycentrics.

    Args:
        attributes: (B, V, C) float, e.g. per-vertex colours or normals.
        faces: (F, 3) the faces given to `rasterize`.
        fragments: `rasterize`'s result.

    Returns:
        (B, H, W, C), 0 on background. Differentiable with respect to ``attributes`` and, through
        ``fragments.bary``, the screen vertices.
    """
    pix_to_face = fragments.pix_to_face
    batch = pix_to_face.shape[0]
    if attributes.ndim != 3 or attributes.shape[0] != batch:
        raise ValueError(
            f"attributes must be (B, V, C) with B = {batch} like the fragments, got shape "
            f"{tuple(attributes.shape)}; expand a shared (V, C) table with attributes.expand(B, -1, -1)"
        )
    if not attributes.is_floating_point():
        raise TypeError(f"attributes must be a floating-point tensor, got {attributes.dtype}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be (F, 3), got shape {tuple(faces.shape)}")
    n_vertices, channels = attributes.shape[1], attributes.shape[2]
    _, height, width = pix_to_face.shape
    covered = fragments.covered_pixels()
    if covered is not None:
        if covered.n_vertices != n_vertices:
            raise ValueError(
                f"attributes have V = {n_vertices} vertices but the fragments were rasterized from "
                f"V = {covered.n_vertices}; give one attribute row per screen vertex"
            )
        index, ids = covered.index, covered.corner_ids
        b0, b1, b2 = covered.bary
    else:
        index, face = covered_pixels(pix_to_face)
        ids = pixel_corner_ids(faces.long(), index, face, (height, width), batch, n_vertices)
        b0, b1, b2 = (b.index_select(0, index) for b in fragments.bary.reshape(-1, 3).unbind(1))
    c0, c1, c2 = gather_planar(attributes.reshape(-1, channels), ids).unbind(1)  # each (C, N)
    blended = c0 * b0 + c1 * b1 + c2 * b2  # (C, N)
    image = blended.new_zeros(batch * height * width, channels).index_copy_(0, index, blended.t())
    return image.view(batch, height, width, channels)


def _resolve_backend(backend: str, screen_vertices: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown rasterizer backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "pytorch3d" if screen_vertices.is_cuda and pytorch3d_backend.is_available() else "torch"
    return backend


def _check_inputs(
    screen_vertices: torch.Tensor,
    faces: torch.Tensor,
    image_size: tuple[int, int],
    near: float,
    max_pairs: int,
) -> torch.Tensor:
    """Validate `rasterize`'s arguments; returns ``faces`` as long."""
    is_tensor = isinstance(screen_vertices, torch.Tensor)
    if not is_tensor or screen_vertices.ndim != 3 or screen_vertices.shape[-1] != 3:
        shape = tuple(screen_vertices.shape) if is_tensor else type(screen_vertices)
        raise ValueError(
            f"screen_vertices must be a (B, V, 3) tensor of (pixel x, pixel y, depth), got {shape}; "
            "add a batch dimension with .unsqueeze(0) for a single mesh"
        )
    if screen_vertices.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"screen_vertices must be float32 or float64, got {screen_vertices.dtype}; convert with .float()"
        )
    if not isinstance(faces, torch.Tensor) or faces.ndim != 2 or faces.shape[1] != 3:
        shape = tuple(faces.shape) if isinstance(faces, torch.Tensor) else type(faces)
        raise ValueError(f"faces must be an (F, 3) tensor of vertex indices shared by the batch, got {shape}")
    if faces.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"faces must hold int32 or int64 vertex indices, got {faces.dtype}")
    if faces.device != screen_vertices.device:
        raise ValueError(
            f"faces are on {faces.device} but screen_vertices on {screen_vertices.device}; move both to one device"
        )
    if (not isinstance(image_size, (tuple, list, torch.Size)) or len(image_size) != 2
            or any(int(s) != s or s <= 0 for s in image_size)):
        raise ValueError(f"image_size must be (height, width), two positive integers, got {image_size!r}")
    if not near >= 0:
        raise ValueError(f"near must be a depth >= 0, got {near}")
    if int(max_pairs) != max_pairs or max_pairs < 1:
        raise ValueError(f"max_pairs must be a positive integer, got {max_pairs}")
    faces = faces.long()
    if faces.numel():
        low, high = torch.stack([faces.min(), faces.max()]).tolist()
        n_vertices = screen_vertices.shape[1]
        if low < 0 or high >= n_vertices:
            raise ValueError(f"faces index vertices in [{low}, {high}] but screen_vertices has V = {n_vertices}")
    return faces
