"""Entry points: `rasterize` screen-space triangles into `Fragments`, `interpolate` vertex attributes."""

from __future__ import annotations

import contextlib
import weakref

import torch

from errors import InvalidInputError
from renderers.rasterizer import pytorch3d_backend, torch_backend
from renderers.rasterizer.fragments import Fragments
from renderers.rasterizer.triangles import barycentrics_and_depth, covered_pixels, gather_planar, pixel_corner_ids

BACKENDS = ("auto", "torch", "pytorch3d")
DEFAULT_NEAR = 1e-3
"""Depth below which faces are dropped (model units; our faces sit about 10 dm from the camera)."""
DEFAULT_MAX_PAIRS = 1 << 18
"""Candidate (face, pixel) pairs per chunk of the portable backend (about 100 bytes of temporaries each)."""
DEFAULT_PAIR_BUDGET_PER_PIXEL = 4
"""Sync-free schedule: pairs past each box's first 4 pixels that are evaluated, per output pixel. A
face crop's boxes rarely hold more than 4 pixels, so this is ample for face meshes at any crop size."""


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
    sync_free: bool | None = None,
    pair_budget: int | None = None,
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
        sync_free: never wait for the device (no host sync), for training steps on CUDA: the portable
            backend runs its fixed schedule (`torch_backend.visible_faces_sync_free`) and
            barycentrics are computed at every pixel. None (default): on for CUDA tensors, off on the
            CPU, where the data-sized schedule is 3-4x faster. Same results either way unless
            ``pair_budget`` runs out (then ``Fragments.dropped_pairs`` > 0).
        pair_budget: sync-free schedule only: candidate pairs past each box's first 4 pixels that are
            evaluated; default `DEFAULT_PAIR_BUDGET_PER_PIXEL` per output pixel (B * H * W of them).

    Returns:
        `Fragments`; ``bary`` and ``depth`` carry gradients to ``screen_vertices``.

    Validating face indices reads their min and max on the host (one sync); a bad index on CUDA would
    otherwise be a device-side assert that kills the process. With ``sync_free`` a face tensor is
    checked once and remembered until it is modified or freed, so steps that reuse the model's face
    list do not sync.
    """
    sync_free = _sync_free_by_default(screen_vertices) if sync_free is None else bool(sync_free)
    faces = _check_inputs(screen_vertices, faces, image_size, near, max_pairs, remember=sync_free)
    size = (int(image_size[0]), int(image_size[1]))
    name = _resolve_backend(backend, screen_vertices)
    dropped = None
    if name == "pytorch3d":
        pix_to_face = pytorch3d_backend.visible_faces(screen_vertices, faces, size, near, cull_backfaces)
    elif sync_free:
        if pair_budget is None:
            pair_budget = DEFAULT_PAIR_BUDGET_PER_PIXEL * screen_vertices.shape[0] * size[0] * size[1]
        if int(pair_budget) != pair_budget or pair_budget < 0:
            raise ValueError(f"pair_budget must be an integer >= 0, got {pair_budget}")
        pix_to_face, dropped = torch_backend.visible_faces_sync_free(
            screen_vertices, faces, size, near, cull_backfaces, max_pairs, int(pair_budget)
        )
    else:
        pix_to_face = torch_backend.visible_faces(screen_vertices, faces, size, near, cull_backfaces, max_pairs)
    bary, depth, covered = barycentrics_and_depth(screen_vertices, faces, pix_to_face, dense=sync_free)
    return Fragments(pix_to_face=pix_to_face, bary=bary, depth=depth, covered=covered, dropped_pairs=dropped)


def _sync_free_by_default(screen_vertices: torch.Tensor) -> bool:
    """What ``sync_free=None`` means: the sync-free path where syncs stall the device (CUDA), or everywhere
    inside `sync_free_everywhere`."""
    return _SYNC_FREE_EVERYWHERE[0] or screen_vertices.is_cuda


_SYNC_FREE_EVERYWHERE = [False]


@contextlib.contextmanager
def sync_free_everywhere():
    """Within this block ``rasterize(sync_free=None)`` takes the sync-free path on every device, so that the
    CUDA training path (which reaches `rasterize` through `MeshRenderer`) can be run and checked on a CPU.
    Not thread-safe: it changes a module-wide default for the block's duration."""
    previous = _SYNC_FREE_EVERYWHERE[0]
    _SYNC_FREE_EVERYWHERE[0] = True
    try:
        yield
    finally:
        _SYNC_FREE_EVERYWHERE[0] = previous


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
        raise InvalidInputError(f"unknown rasterizer backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "pytorch3d" if screen_vertices.is_cuda and pytorch3d_backend.is_available() else "torch"
    return backend


def _check_inputs(
    screen_vertices: torch.Tensor,
    faces: torch.Tensor,
    image_size: tuple[int, int],
    near: float,
    max_pairs: int,
    remember: bool = False,
) -> torch.Tensor:
    """Validate `rasterize`'s arguments; returns ``faces`` as long. ``remember``: skip the index range
    check (a host sync) for a face tensor already checked against as many vertices and unmodified."""
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
    if (
        not isinstance(image_size, (tuple, list, torch.Size))
        or len(image_size) != 2
        or any(int(s) != s or s <= 0 for s in image_size)
    ):
        raise ValueError(f"image_size must be (height, width), two positive integers, got {image_size!r}")
    if not near >= 0:
        raise ValueError(f"near must be a depth >= 0, got {near}")
    if int(max_pairs) != max_pairs or max_pairs < 1:
        raise ValueError(f"max_pairs must be a positive integer, got {max_pairs}")
    n_vertices = screen_vertices.shape[1]
    stamp = (faces._version, faces.data_ptr(), tuple(faces.shape), n_vertices)
    known = _CHECKED_FACES.get(id(faces))
    checked = remember and known is not None and known[0]() is faces and known[1] == stamp
    faces_long = faces.long()
    if faces.numel() and not checked:
        low, high = torch.stack([faces_long.min(), faces_long.max()]).tolist()
        if low < 0 or high >= n_vertices:
            raise ValueError(f"faces index vertices in [{low}, {high}] but screen_vertices has V = {n_vertices}")
        if remember:
            key = id(faces)
            _CHECKED_FACES[key] = (weakref.ref(faces, lambda _, key=key: _CHECKED_FACES.pop(key, None)), stamp)
    return faces_long


_CHECKED_FACES: dict[int, tuple[weakref.ref, tuple]] = {}
"""Face tensors whose index range `_check_inputs` verified: id -> (weak reference, version stamp)."""
