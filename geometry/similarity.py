"""Similarity transforms (scale, rotation, translation) and their least-squares fit from correspondences.

`umeyama` is the one implementation of Umeyama's (1991) closed form: batched torch, any dimension, optional
per-point weights, never a reflection. `procrustes` applies it to torch point batches (the training metric's
alignment); `fit_similarity` wraps it for NumPy point sets and returns a `SimilarityTransform` (the scan
protocols' alignment).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from geometry.points import as_points


@dataclass(frozen=True)
class SimilarityTransform:
    """``x -> scale * rotation @ x + translation``.

    scale: positive float; rotation: (3, 3) proper rotation; translation: (3,)
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    @staticmethod
    def identity() -> SimilarityTransform:
        return SimilarityTransform(1.0, np.eye(3), np.zeros(3))

    def apply(self, points: Any) -> np.ndarray:
        """(N, 3) -> (N, 3) transformed points."""
        return self.scale * as_points(points) @ self.rotation.T + self.translation

    def inverse(self) -> SimilarityTransform:
        rotation = self.rotation.T
        return SimilarityTransform(1.0 / self.scale, rotation, -(rotation @ self.translation) / self.scale)

    def compose(self, first: SimilarityTransform) -> SimilarityTransform:
        """The transform that applies ``first`` and then ``self``."""
        return SimilarityTransform(
            self.scale * first.scale,
            self.rotation @ first.rotation,
            self.scale * self.rotation @ first.translation + self.translation,
        )

    def matrix(self) -> np.ndarray:
        """(4, 4) homogeneous matrix."""
        out = np.eye(4)
        out[:3, :3] = self.scale * self.rotation
        out[:3, 3] = self.translation
        return out


def rotation_from_vector(omega: np.ndarray) -> np.ndarray:
    """(3,) rotation vector (axis times angle in radians) -> (3, 3) rotation matrix (Rodrigues' formula)."""
    angle = float(np.linalg.norm(omega))
    if angle < 1e-15:
        return np.eye(3)
    k = omega / angle
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * cross @ cross


def umeyama(
    source: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None, with_scale: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares similarity mapping (B, N, D) ``source`` onto corresponding ``target`` points.

    weights: None (all points alike) or (B, N) / (N,) non-negative weights with a positive sum per batch.
    Returns scale (B,) (ones unless ``with_scale``), rotation (B, D, D) (proper: the weakest axis is flipped
    when the best orthogonal fit is a reflection) and translation (B, D), with
    ``target ~ scale * source @ rotation^T + translation``. No checks and no host synchronisation: callers
    that take user input validate it (see `fit_similarity`).
    """
    n_points = source.shape[1]
    if weights is None:
        mu_s, mu_t = source.mean(1, keepdim=True), target.mean(1, keepdim=True)
        s, t = source - mu_s, target - mu_t
        cov = t.transpose(1, 2) @ s / n_points
        var_s = (s**2).sum((1, 2)) / n_points
    else:
        w = (weights / weights.sum(-1, keepdim=True)).expand(source.shape[0], n_points).unsqueeze(-1)
        mu_s, mu_t = (w * source).sum(1, keepdim=True), (w * target).sum(1, keepdim=True)
        s, t = source - mu_s, target - mu_t
        cov = (t * w).transpose(1, 2) @ s
        var_s = (w * s * s).sum((1, 2))
    u, sigma, vh = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(u @ vh))
    # A zero determinant (rank-deficient points) has no preferred handedness: keep the axis.
    d = torch.where(d == 0, torch.ones_like(d), d)
    fix = torch.ones_like(sigma)
    fix[:, -1] = d
    rotation = u @ torch.diag_embed(fix) @ vh
    scale = (sigma * fix).sum(1) / var_s if with_scale else torch.ones_like(var_s)
    translation = mu_t[:, 0] - scale[:, None] * (mu_s @ rotation.transpose(1, 2))[:, 0]
    return scale, rotation, translation


def procrustes(source: torch.Tensor, target: torch.Tensor, scale: bool = False) -> torch.Tensor:
    """Align (B, N, 3) ``source`` to corresponding ``target`` points by the least-squares rotation and
    translation (and isotropic scale when ``scale``), `umeyama`; returns the aligned source."""
    factor, rotation, _ = umeyama(source, target, with_scale=scale)
    mu_s, mu_t = source.mean(1, keepdim=True), target.mean(1, keepdim=True)
    return factor.view(-1, 1, 1) * (source - mu_s) @ rotation.transpose(1, 2) + mu_t


def fit_similarity(
    source: Any, target: Any, with_scale: bool = True, weights: Any | None = None
) -> SimilarityTransform:
    """Least-squares transform mapping (N, 3) ``source`` onto corresponding ``target`` points
    (`umeyama`), optionally weighted by (N,) non-negative ``weights``; rigid when not ``with_scale``."""
    source, target = as_points(source, "source"), as_points(target, "target")
    if source.shape != target.shape:
        raise ValueError(f"source {source.shape} and target {target.shape} points do not correspond")
    w = np.ones(len(source)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(source),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be (N,) non-negative with a positive sum")
    centred = source - (w / w.sum()) @ source
    if (w > 0).sum() < 3 or float(w @ (centred * centred).sum(1)) <= 0:
        raise ValueError("a similarity transform needs at least 3 distinct, non-coincident points")
    scale, rotation, translation = umeyama(
        torch.from_numpy(source)[None],
        torch.from_numpy(target)[None],
        None if weights is None else torch.from_numpy(w),
        with_scale,
    )
    if not scale.item() > 0:
        raise ValueError("degenerate correspondences: the fitted scale is not positive")
    return SimilarityTransform(float(scale.item()), rotation[0].numpy(), translation[0].numpy())
