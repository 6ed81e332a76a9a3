"""Shape and landmark errors as pure functions (batched, differentiable where it makes sense).

Correspondence-based errors (`procrustes`, `vertex_error`, `landmark_error`) are torch code; the
scan-based protocols (ICP, point-to-surface distances, crops, NoW) are NumPy/SciPy code in `surface`,
`alignment` and `protocols`, re-exported here so that this module is the one functional namespace.
"""

from __future__ import annotations

import torch

from benchmarks.metrics.alignment import ICPResult, SimilarityTransform, centroid_alignment, fit_similarity, icp
from benchmarks.metrics.protocols import (
    NOW_LANDMARKS_68,
    AlignedErrors,
    now_face_crop_mask,
    now_landmarks_from_68,
    now_scan_to_mesh,
    region_point_to_point,
    scan_to_mesh,
)
from benchmarks.metrics.stats import ErrorStats, summarise
from benchmarks.metrics.surface import (
    SurfaceQuery,
    TriangleMesh,
    closest_points_on_triangles,
    crop_mesh,
    nearest_vertex,
    point_to_plane,
    point_to_surface,
    radius_mask,
    vertex_normals,
)

__all__ = [
    "DM_TO_MM",
    "NOW_LANDMARKS_68",
    "AlignedErrors",
    "ErrorStats",
    "ICPResult",
    "SimilarityTransform",
    "SurfaceQuery",
    "TriangleMesh",
    "centroid_alignment",
    "closest_points_on_triangles",
    "crop_mesh",
    "fit_similarity",
    "icp",
    "landmark_error",
    "nearest_vertex",
    "now_face_crop_mask",
    "now_landmarks_from_68",
    "now_scan_to_mesh",
    "point_to_plane",
    "point_to_surface",
    "procrustes",
    "radius_mask",
    "region_point_to_point",
    "scan_to_mesh",
    "summarise",
    "vertex_error",
    "vertex_normals",
]

DM_TO_MM = 100.0
"""Model units are decimetres (Deep3D's convention)."""


def procrustes(source: torch.Tensor, target: torch.Tensor, scale: bool = False) -> torch.Tensor:
    """Align (B, N, 3) ``source`` to corresponding ``target`` points by the least-squares rotation and
    translation (and isotropic scale when ``scale``), Umeyama 1991; returns the aligned source."""
    mu_s, mu_t = source.mean(1, keepdim=True), target.mean(1, keepdim=True)
    s, t = source - mu_s, target - mu_t
    cov = t.transpose(1, 2) @ s / source.shape[1]
    u, sigma, vh = torch.linalg.svd(cov)
    # A reflection would fit better for mirrored shapes but is not a rigid motion: flip the last axis.
    d = torch.sign(torch.linalg.det(u @ vh))
    fix = torch.ones_like(sigma)
    fix[:, -1] = d
    rotation = u @ torch.diag_embed(fix) @ vh
    factor = torch.ones(source.shape[0], 1, 1, dtype=source.dtype, device=source.device)
    if scale:
        var_s = (s**2).sum((1, 2)) / source.shape[1]
        factor = ((sigma * fix).sum(1) / var_s).view(-1, 1, 1)
    return factor * s @ rotation.transpose(1, 2) + mu_t


def vertex_error(
    predicted: torch.Tensor, target: torch.Tensor, align: str = "rigid", unit_scale: float = DM_TO_MM
) -> torch.Tensor:
    """(B, N, 3) predicted and ground-truth vertices in correspondence -> (B,) mean per-vertex Euclidean
    distance after alignment ('none', 'rigid' or 'similarity'), in mm for decimetre inputs."""
    if align not in ("none", "rigid", "similarity"):
        raise ValueError(f"align must be 'none', 'rigid' or 'similarity', got {align!r}")
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} vertices differ")
    # Sub-millimetre differences on decimetre coordinates need float32 (bf16 keeps ~3 digits), and the SVD
    # of the alignment has no half-precision kernels.
    if predicted.dtype in (torch.float16, torch.bfloat16) or target.dtype in (torch.float16, torch.bfloat16):
        predicted, target = predicted.float(), target.float()
    if align != "none":
        predicted = procrustes(predicted, target, scale=align == "similarity")
    return (predicted - target).norm(dim=-1).mean(-1) * unit_scale


def landmark_error(predicted: torch.Tensor, target: torch.Tensor, normalise: str = "none") -> torch.Tensor:
    """(B, 68, 2) landmarks -> (B,) mean point distance, in pixels or divided by the outer-eye-corner
    distance of the target ('interocular')."""
    err = (predicted - target).norm(dim=-1).mean(-1)
    if normalise == "interocular":
        return err / (target[:, 36] - target[:, 45]).norm(dim=-1).clamp_min(1e-6)
    if normalise != "none":
        raise ValueError(f"normalise must be 'none' or 'interocular', got {normalise!r}")
    return err
