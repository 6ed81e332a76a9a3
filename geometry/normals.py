"""Face and vertex normals of triangle meshes (torch, batched, differentiable)."""

from __future__ import annotations

import torch


def face_normals(vertices: torch.Tensor, faces: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(B, V, 3) vertices, (F, 3) counter-clockwise faces -> (B, F, 3) unit face normals."""
    v0, v1, v2 = (vertices[:, faces[:, k]] for k in range(3))
    n = torch.cross(v1 - v0, v2 - v0, dim=-1)
    return n / n.norm(dim=-1, keepdim=True).clamp_min(eps)


def vertex_normals(
    vertices: torch.Tensor, faces: torch.Tensor, eps: float = 1e-12, area_weighted: bool = False
) -> torch.Tensor:
    """(B, V, 3) vertices, (F, 3) faces -> (B, V, 3) unit vertex normals (zero for unused vertices).

    By default each vertex takes the normalised sum of the unit normals of its faces (not area weighted),
    which is what Deep3DFaceRecon computes through its ``point_buf`` table, so that lighting fitted there
    transfers. ``area_weighted`` sums the unnormalised cross products instead (twice each face's area), the
    usual choice for scans whose triangles vary in size (the point-to-plane distance of the metrics).
    """
    if area_weighted:
        v0, v1, v2 = (vertices[:, faces[:, k]] for k in range(3))
        fn = torch.cross(v1 - v0, v2 - v0, dim=-1)
    else:
        fn = face_normals(vertices, faces, eps)
    batch, n_vertices = vertices.shape[:2]
    acc = torch.zeros(batch, n_vertices, 3, dtype=vertices.dtype, device=vertices.device)
    for k in range(3):
        acc = acc.index_add(1, faces[:, k], fn)
    return acc / acc.norm(dim=-1, keepdim=True).clamp_min(eps)
