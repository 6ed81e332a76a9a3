"""Correspondence-based shape and landmark errors as pure torch functions (batched, no host synchronisation).

The scan-based protocols (ICP, point-to-surface distances, crops, NoW) are NumPy/SciPy code in `surface`,
`alignment` and `protocols`; the package's ``__init__`` is the one namespace for all of them.
"""

from __future__ import annotations

import torch

from geometry.similarity import procrustes

DM_TO_MM = 100.0
"""Model units are decimetres (Deep3D's convention)."""


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
