"""Validation of point and triangle arrays given as NumPy arrays or (CPU or GPU) torch tensors."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_points(x: Any, name: str = "points") -> np.ndarray:
    """Array-like or torch tensor of shape (N, 3) -> C-contiguous float64 (N, 3) array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    array = np.ascontiguousarray(x, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    return array


def as_faces(x: Any, n_vertices: int, name: str = "faces") -> np.ndarray:
    """Array-like or torch tensor of shape (F, 3) vertex ids -> int64 (F, 3) array, range-checked."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    faces = np.ascontiguousarray(x)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
        raise ValueError(f"{name} must have shape (F, 3) with F > 0, got {faces.shape}")
    if not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"{name} must hold integer vertex ids, got dtype {faces.dtype}")
    faces = faces.astype(np.int64)
    if faces.min() < 0 or faces.max() >= n_vertices:
        raise ValueError(
            f"{name} refer to vertex ids in [{faces.min()}, {faces.max()}] but there are {n_vertices} vertices"
        )
    return faces
