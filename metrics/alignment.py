"""ICP with isotropic scale, and a coarse centroid start, for scans without correspondences.

Transforms are `geometry.similarity.SimilarityTransform` (``x -> scale * R x + t`` with a proper rotation R:
a mirrored face is a different face), fitted from correspondences by `geometry.similarity.fit_similarity`. ICP alternates closest-point correspondences (SciPy cKDTree on
vertices, or exact closest points on triangles) and an update: a point-to-plane Gauss-Newton step
against a mesh, the closed-form fit between point sets.

With ``direction="target_to_source"`` every *target* point (a ground-truth scan, possibly partial) is
matched to the closest point on the moving *source* (a predicted mesh): the minimised quantity is the
scan-to-mesh distance of NoW and Genova et al. Scan points beyond the prediction's border are matched to
the border, which is why the scan is cropped first and why predictions must not be cropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from geometry.points import as_points
from geometry.similarity import SimilarityTransform, fit_similarity, rotation_from_vector
from metrics.surface import TriangleMesh


def centroid_alignment(source: Any, target: Any, with_scale: bool = True) -> SimilarityTransform:
    """Coarse start without correspondences: same centroid and (when ``with_scale``) the same RMS radius,
    no rotation. Only valid when both point sets share an orientation convention."""
    source, target = as_points(source, "source"), as_points(target, "target")
    mu_s, mu_t = source.mean(0), target.mean(0)
    scale = 1.0
    if with_scale:
        rms_s = np.sqrt(((source - mu_s) ** 2).sum(1).mean())
        rms_t = np.sqrt(((target - mu_t) ** 2).sum(1).mean())
        if rms_s <= 0 or rms_t <= 0:
            raise ValueError("cannot match the spread of a point set collapsed to one point")
        scale = float(rms_t / rms_s)
    return SimilarityTransform(scale, np.eye(3), mu_t - scale * mu_s)


@dataclass(frozen=True)
class ICPResult:
    """Outcome of `icp`.

    transform:  maps the source frame onto the target frame
    distances:  (M,) final closest-point distances in target units: per target point for
                ``direction="target_to_source"`` (M = N_target), per source point otherwise
    iterations: update steps taken
    converged:  whether the relative change of the mean squared distance fell within the tolerance
    rmse:       root mean squared closest-point distance of the pairs used, at the final transform
    """

    transform: SimilarityTransform
    distances: np.ndarray
    iterations: int
    converged: bool
    rmse: float


class _ClosestPoints:
    """Closest point on a static point set (nearest vertex) or triangle mesh (closest surface point,
    with the unit normal of its triangle)."""

    def __init__(self, vertices: np.ndarray, faces: Any | None) -> None:
        self._vertices = vertices
        self._mesh = None if faces is None else TriangleMesh(vertices, faces)
        self._tree = cKDTree(vertices) if faces is None else None

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if self._mesh is not None:
            query = self._mesh.closest_points(points)
            return query.closest, query.distances, self._mesh.face_normals[query.triangle]
        distances, ids = self._tree.query(points)
        return self._vertices[ids], distances, None


def _plane_step(moved: np.ndarray, fixed: np.ndarray, normals: np.ndarray, with_scale: bool) -> SimilarityTransform:
    """One Gauss-Newton step of point-to-plane ICP with scale: the small transform ``delta`` that
    minimises sum(((delta(moved) - fixed) . normal)^2) to first order, in the target frame.

    delta(x) = (1 + sigma) exp([omega]x) (x - c) + c + tau with c the centroid of ``moved`` (centring
    keeps the scale and rotation columns well conditioned against the translation).
    """
    centre = moved.mean(0)
    x = moved - centre
    columns = [np.cross(x, normals), normals]
    if with_scale:
        columns.insert(0, np.einsum("ij,ij->i", x, normals)[:, None])
    a = np.concatenate(columns, axis=1)
    b = -np.einsum("ij,ij->i", moved - fixed, normals)
    solution, *_ = np.linalg.lstsq(a, b, rcond=None)
    sigma = solution[0] if with_scale else 0.0
    omega, tau = solution[-6:-3], solution[-3:]
    if 1.0 + sigma <= 0:
        raise ValueError("point-to-plane ICP step collapsed the scale: the start is too far off")
    rotation = rotation_from_vector(omega)
    scale = 1.0 + sigma
    return SimilarityTransform(float(scale), rotation, centre + tau - scale * rotation @ centre)


def residual_directions(moved: np.ndarray, fixed: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Unit directions of the residuals, the gradient of the point-to-surface distance.

    For a closest point inside a triangle this is the face normal (up to sign, which the squared
    residual ignores); for one on a border edge or vertex the face normal would ignore the tangential
    gap, so the residual's own direction is used. Zero residuals keep the face normal.
    """
    residual = fixed - moved
    length = np.linalg.norm(residual, axis=1, keepdims=True)
    scale = np.abs(fixed).max() + np.abs(moved).max()
    tiny = length[:, 0] <= 1e-12 * scale
    return np.where(tiny[:, None], normals, residual / np.where(tiny[:, None], 1.0, length))


def icp(
    source: Any,
    target: Any,
    *,
    source_faces: Any | None = None,
    target_faces: Any | None = None,
    init: SimilarityTransform | None = None,
    with_scale: bool = True,
    direction: str = "target_to_source",
    max_iterations: int = 100,
    tolerance: float = 1e-6,
    max_correspondence_distance: float | None = None,
) -> ICPResult:
    """Iterative closest point with an isotropic scale, moving ``source`` (N, 3) onto ``target`` (M, 3).

    direction: ``"target_to_source"`` matches every target point to the closest point of the
        transformed source (its surface when ``source_faces`` is given: scan-to-mesh), which tolerates
        a target covering only part of the source; ``"source_to_target"`` matches every source point
        to the target (its surface when ``target_faces`` is given), for a source covering part of the
        target.
    Update: when the matched side is a mesh, a Gauss-Newton step on the point-to-surface distances
        (point-to-plane linearisation: fast convergence, no sliding along the surface); between point
        sets, the closed-form point-to-point fit.
    init: starting transform (e.g. `fit_similarity` on landmarks); the identity when omitted.
    with_scale: estimate the isotropic scale (similarity ICP) or keep it fixed (rigid ICP).
    tolerance: converged when the mean squared closest-point distance changes by at most this fraction
        between iterations (or is at rounding level).
    max_correspondence_distance: pairs farther apart (target units) are left out of the update (they
        are still reported in ``distances``).
    """
    if direction not in ("target_to_source", "source_to_target"):
        raise ValueError(f"direction must be 'target_to_source' or 'source_to_target', got {direction!r}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1, got {max_iterations}")
    source, target = as_points(source, "source"), as_points(target, "target")
    transform = SimilarityTransform.identity() if init is None else init
    if not with_scale and abs(transform.scale - 1.0) > 1e-12:
        raise ValueError("rigid ICP (with_scale=False) cannot start from a scaled transform")
    reverse = direction == "target_to_source"
    # The search structure is built once, in the frame where its points do not move: the source frame
    # for target-to-source (target points are mapped back through the inverse transform) and the target
    # frame otherwise. Distances measured in the source frame are scaled back to target units.
    lookup = _ClosestPoints(source, source_faces) if reverse else _ClosestPoints(target, target_faces)

    def correspondences(current: SimilarityTransform) -> tuple[np.ndarray, ...]:
        """Source-frame points, their target-frame partners, target-unit distances, target-frame normals
        of the mesh side (None between point sets)."""
        if reverse:
            closest, dist, normals = lookup(current.inverse().apply(target))
            if normals is not None:
                normals = normals @ current.rotation.T
            return closest, target, dist * current.scale, normals
        closest, dist, normals = lookup(current.apply(source))
        return source, closest, dist, normals

    # Distances at this level are rounding noise: relative changes of them mean nothing.
    floor = (1e-9 * np.sqrt(((target - target.mean(0)) ** 2).sum(1).mean())) ** 2
    previous = np.inf
    converged = False
    steps = 0
    while True:
        moving, fixed, dist, normals = correspondences(transform)
        use = np.ones(len(dist), dtype=bool)
        if max_correspondence_distance is not None:
            use = dist <= max_correspondence_distance
            if use.sum() < 3:
                raise ValueError(
                    f"only {int(use.sum())} correspondences within "
                    f"{max_correspondence_distance}: the start is too far off"
                )
        mse = float(np.mean(dist[use] ** 2))
        if mse <= floor or (np.isfinite(previous) and abs(previous - mse) <= tolerance * previous):
            converged = True
            break
        if steps == max_iterations:
            break
        if normals is not None:
            moved = transform.apply(moving[use])
            delta = _plane_step(moved, fixed[use], residual_directions(moved, fixed[use], normals[use]), with_scale)
            transform = delta.compose(transform)
        else:
            transform = fit_similarity(moving[use], fixed[use], with_scale=with_scale)
        previous = mse
        steps += 1
    return ICPResult(transform, dist, steps, converged, float(np.sqrt(mse)))
