"""Geometry shared by every backend: which faces may be drawn, and the differentiable pixel weights.

Backends only decide visibility (``pix_to_face``); barycentrics and depth are recomputed here from the
screen vertices with autograd, so every backend yields the same values and the same gradients.

Per-pixel and per-face quantities are laid out planar, one contiguous row per coordinate and corner,
because CPU kernels gather and scatter-add 1-D rows several times faster than rows of 3 floats.
"""

from __future__ import annotations

import torch

from renderers.rasterizer.fragments import CoveredPixels


def sort_corners(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, 3) long faces -> the same faces with corners in ascending vertex id, and (F,) bool ``flipped``.

    ``flipped`` marks faces whose sorting reversed the winding (an odd permutation of the corners).
    Sorting lets the two faces sharing an edge evaluate it from the same endpoint (see torch_backend).
    """
    sorted_faces, order = faces.sort(dim=1)
    o0, o1, o2 = order.unbind(1)
    inversions = (o0 > o1).int() + (o0 > o2).int() + (o1 > o2).int()
    return sorted_faces, inversions % 2 == 1


def corner_tables(screen_vertices: torch.Tensor, xy_offset: float = 0.0) -> tuple[torch.Tensor, ...]:
    """(B, V, 3) screen vertices -> (x - xy_offset, y - xy_offset, z), each (B*V,).

    With ``xy_offset = 0.5`` pixel centres fall on integers. Shifting once per vertex (not per face)
    keeps the corners that faces share bit-identical.
    """
    flat = screen_vertices.reshape(-1, 3)
    return flat[:, 0] - xy_offset, flat[:, 1] - xy_offset, flat[:, 2]


def planar_corners(tables: tuple[torch.Tensor, ...], faces: torch.Tensor, batch: int) -> torch.Tensor:
    """`corner_tables` of B meshes, (F, 3) long faces -> (3 coords, 3 corners, B, F), contiguous."""
    n_vertices = tables[0].numel() // batch
    # int32 ids gather about twice as fast as int64 ones on CPU (half the index traffic).
    id_dtype = torch.int32 if batch * n_vertices < 2**31 else torch.int64
    offsets = (torch.arange(batch, device=faces.device, dtype=id_dtype) * n_vertices).view(1, batch, 1)
    ids = (faces.t().to(id_dtype).contiguous().unsqueeze(1) + offsets).view(-1)
    corners = tables[0].new_empty(3, ids.numel())
    for coord, table in enumerate(tables):
        torch.index_select(table, 0, ids, out=corners[coord])
    return corners.view(3, 3, batch, faces.shape[0])


def corner_differences(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(3 corners, B, F) x and y -> (x1 - x0, y1 - y0, x2 - x0, y2 - y0), each (B, F)."""
    return x[1] - x[0], y[1] - y[0], x[2] - x[0], y[2] - y[0]


def drawable_faces(
    differences: tuple[torch.Tensor, ...],
    z: torch.Tensor,
    flipped: torch.Tensor,
    near: float,
    cull_backfaces: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which faces the rasterizer may draw.

    Args:
        differences: `corner_differences` of the corners in `sort_corners` order.
        z: (3 corners, B, F) depths.
        flipped: (F,) bool from `sort_corners`.

    Returns:
        keep: (B, F) bool.
        cross: (B, F) ``(x1 - x0) (y2 - y0) - (x2 - x0) (y1 - y0)`` of the sorted corners (twice the
            signed area).

    A face is dropped when

    * any corner has depth <= ``near``: the face reaches the camera plane or behind it, where the
      projection is unbounded or mirrored. There is no clipping; the whole face goes, which suits
      meshes kept well in front of the camera, as faces are here;
    * its screen area is zero or not finite (nothing to cover, and barycentrics would divide by 0);
    * ``cull_backfaces`` is set and it is seen from behind. Front faces are counter-clockwise as seen
      in the image, i.e. have negative ``cross`` in their own corner order in pixel coordinates
      (y down). Faces counter-clockwise seen from +z in model space (the face models' convention) are
      front faces under our camera.
    """
    dx01, dy01, dx02, dy02 = differences
    cross = dx01 * dy02 - dx02 * dy01
    keep = (z[0] > near) & (z[1] > near) & (z[2] > near) & (cross != 0) & cross.isfinite()
    if cull_backfaces:
        keep &= (cross < 0) != flipped
    return keep, cross


class _GatherPlanar(torch.autograd.Function):
    """(M, C) table, (K, N) int ids -> (C, K, N) ``table[ids, c]``, one 1-D gather per channel.

    CPU kernels gather and scatter-add 1-D columns several times faster than rows of C floats, and
    the result comes out planar (one contiguous row per channel and corner) for the arithmetic that
    follows. The backward scatter-adds each channel with ``index_add_``: deterministic on CPU,
    atomics on CUDA.
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        ctx.save_for_backward(flat)
        ctx.n_rows = table.shape[0]
        out = table.new_empty(table.shape[1], flat.numel())
        for channel in range(table.shape[1]):
            torch.index_select(table[:, channel], 0, flat, out=out[channel])
        return out.view(table.shape[1], *ids.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (flat,) = ctx.saved_tensors
        grad_table = grad.new_zeros(ctx.n_rows, grad.shape[0])
        for channel in range(grad.shape[0]):
            grad_table[:, channel].index_add_(0, flat, grad[channel].reshape(-1))
        return grad_table, None


def gather_planar(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(M, C) table, (K, N) int32/int64 ids -> (C, K, N), differentiable in ``table``."""
    return _GatherPlanar.apply(table, ids)


def covered_pixels(pix_to_face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) long -> (N,) flat indices of the covered pixels and (N,) their faces.

    Host sync: the number of covered pixels sizes everything computed per pixel. Working on covered
    pixels only (a face crop covers about half the image) roughly halves the differentiable passes.
    """
    flat = pix_to_face.reshape(-1)
    index = (flat >= 0).nonzero().squeeze(1)
    return index, flat.index_select(0, index)


def pixel_corner_ids(
    faces: torch.Tensor,
    pixel_index: torch.Tensor,
    pixel_face: torch.Tensor,
    image_size: tuple[int, int],
    batch: int,
    n_vertices: int,
) -> torch.Tensor:
    """(3 corners, N) ids of the pixels' face corners into the batch-flattened (B*V) vertices.

    int32 when B*V allows: gathers with int32 ids run about twice as fast on CPU.
    """
    id_dtype = torch.int32 if batch * n_vertices < 2**31 else torch.int64
    corner_table = faces.t().to(id_dtype).contiguous()  # (3, F)
    ids = torch.empty(3, pixel_face.numel(), dtype=id_dtype, device=faces.device)
    for corner in range(3):
        torch.index_select(corner_table[corner], 0, pixel_face, out=ids[corner])
    image_of = torch.div(pixel_index, image_size[0] * image_size[1], rounding_mode="floor")
    return ids.add_((image_of * n_vertices).to(id_dtype))


def barycentrics_and_depth(
    screen_vertices: torch.Tensor, faces: torch.Tensor, pix_to_face: torch.Tensor, dense: bool = False
) -> tuple[torch.Tensor, torch.Tensor, CoveredPixels]:
    """Perspective-correct barycentrics and depth at pixel centres, differentiable in the vertices.

    Args:
        screen_vertices: (B, V, 3) pixel x, pixel y, depth.
        faces: (F, 3) long.
        pix_to_face: (B, H, W) long, -1 on background.
        dense: compute at every pixel and zero the background with ``torch.where`` instead of
            collecting the covered pixels first: about twice the work, but no host sync. Covered
            pixels get bit-identical values either way.

    Returns:
        bary: (B, H, W, 3), ``b_i = (e_i / z_i) / sum_j (e_j / z_j)`` where ``e_i`` is the signed
            screen area of the sub-triangle opposite corner ``i``; 0 on background.
        depth: (B, H, W), ``sum_j e_j / sum_j (e_j / z_j)`` (1/z is linear in screen space); 0 on
            background.
        covered: the same for the covered pixels only (`CoveredPixels`).
    """
    batch, height, width = pix_to_face.shape
    dtype = screen_vertices.dtype
    n_pixels = batch * height * width
    if dense:
        flat = pix_to_face.reshape(-1)
        index, face, covered = torch.arange(n_pixels, device=flat.device), flat.clamp(min=0), flat >= 0
    else:
        index, face = covered_pixels(pix_to_face)
    ids = pixel_corner_ids(faces, index, face, (height, width), batch, screen_vertices.shape[1])
    # unbind (not indexing) so that autograd collects the nine gradients with one stack.
    x0, x1, x2, y0, y1, y2, z0, z1, z2 = gather_planar(screen_vertices.reshape(-1, 3), ids).view(9, -1).unbind(0)
    if dense:
        # Background pixels read face 0, which may be degenerate or behind the camera: give them a
        # harmless unit depth so that no inf or NaN reaches the gradients through the masked branch.
        z0, z1, z2 = (torch.where(covered, z, 1) for z in (z0, z1, z2))

    # Corners relative to the pixel centre keep the sub-triangle areas accurate.
    row_major = index.remainder(height * width)
    px = (row_major.remainder(width) + 0.5).to(dtype)
    py = (torch.div(row_major, width, rounding_mode="floor") + 0.5).to(dtype)
    dx0, dx1, dx2 = x0 - px, x1 - px, x2 - px
    dy0, dy1, dy2 = y0 - py, y1 - py, y2 - py
    e0 = dx1 * dy2 - dx2 * dy1
    e1 = dx2 * dy0 - dx0 * dy2
    e2 = dx0 * dy1 - dx1 * dy0
    q0, q1, q2 = e0 / z0, e1 / z1, e2 / z2
    total = q0 + q1 + q2
    if dense:
        total = torch.where(covered, total, 1)
    inv_total = 1 / total
    bary = torch.stack([q0, q1, q2]) * inv_total  # (3, N)
    depth = (e0 + e1 + e2) * inv_total
    if dense:
        bary, depth = torch.where(covered, bary, 0), torch.where(covered, depth, 0)
        full_bary = bary.t().reshape(batch, height, width, 3)
        full_depth = depth.view(batch, height, width)
        return full_bary, full_depth, CoveredPixels(index, ids, bary, screen_vertices.shape[1], pix_to_face, full_bary)
    # In-place into fresh zeros: the out-of-place index_copy would clone the zeros first.
    full_bary = bary.new_zeros(n_pixels, 3).index_copy_(0, index, bary.t()).view(batch, height, width, 3)
    full_depth = depth.new_zeros(n_pixels).index_copy_(0, index, depth).view(batch, height, width)
    return full_bary, full_depth, CoveredPixels(index, ids, bary, screen_vertices.shape[1], pix_to_face, full_bary)
