"""The face model's ceiling on a ground-truth mesh: the best identity + expression the linear model can reach,
fitted to the mesh in 3D, to read every reconstruction's error between the mean face and this ceiling.

`fit_model_to_mesh` starts from the similarity that maps the model's landmark vertices onto the target's
landmarks (`geometry.similarity.fit_similarity`, Umeyama) and then alternates, for a handful of iterations:

1. correspondences, both ways, inside the scored crop (target points within ``crop_radius`` of the crop
   centre, the nose tip for the Genova protocol):
   - every cropped target point with its closest point on the current model surface: a fixed barycentric
     combination of three model vertices, so the scored scan-to-mesh distance itself, linear in the
     coefficients;
   - every model vertex that falls inside the crop with its closest point on the target surface, pairs
     farther than ``trim_mm`` dropped (holes and the crop border), which keeps the model from drifting where
     the target is sparse;
2. a regularised linear least-squares solve for identity and expression (the model is linear in them) together
   with a small similarity update applied after the current one: one Gauss-Newton step on the point-to-surface
   distances of the pairs, linearised along each pair's residual direction as `metrics.icp` does
   (point-to-plane; closest-point pairs alone would make the shape slide and converge slowly), with
   ``regularization`` times the squared coefficient norm.

Both correspondence sets enter as means, so the target's sampling density does not weigh against the
model's. The cost is a few closest-point queries per iteration (SciPy, CPU): seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from face_model.coefficients import Coefficients
from face_model.model import NOSE_TIP_68
from geometry.points import as_faces, as_points
from geometry.similarity import SimilarityTransform, fit_similarity, rotation_from_vector
from metrics import TriangleMesh, centroid_alignment, radius_mask
from metrics.alignment import residual_directions
from metrics.protocols import GENOVA_CROP_RADIUS_MM

INNER_LANDMARKS = tuple(range(17, 68))
"""Brows, nose, eyes and mouth: the iBUG-68 landmarks on the same anatomy on a scan and on a face model, used for
initial similarities (the jaw contour is left out: on a model it is a fixed vertex set, on a scan the visible
jaw line)."""


@dataclass(frozen=True)
class CeilingSettings:
    """How `fit_model_to_mesh` fits.

    iterations:     alternations of correspondences, coefficient solve and similarity re-fit.
    expression:     fit the expression coefficients too (the ceiling of identity + expression); False fits
                    identity alone.
    crop_radius:    target units; only target points within it of the crop centre are fitted (None: all).
    regularization: weight of the squared coefficient norm (coefficients in prior standard deviations) against
                    the mean squared distances (target units squared). 0.01 mm^2 lets a coefficient of one
                    standard deviation cost what 0.1 mm of distance does: on a real scan (benchmarks/assets/james)
                    it keeps every coefficient within about 3.5 standard deviations, where 1e-4 reaches 12 (an
                    implausible face that fits the scan's noise) for 0.17 mm less error; on a face the model
                    represents exactly it costs a few hundredths of a millimetre.
    trim_mm:        model-to-target pairs farther apart than this are not fitted (target units).
    max_points:     at most this many cropped target points per iteration (a fixed random subset).
    with_scale:     similarity (True) or rigid alignment.
    """

    iterations: int = 8
    expression: bool = True
    crop_radius: float | None = GENOVA_CROP_RADIUS_MM
    regularization: float = 0.01
    trim_mm: float = 10.0
    max_points: int = 5000
    with_scale: bool = True

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"CeilingSettings.iterations must be >= 1, got {self.iterations}")
        if self.regularization < 0 or self.trim_mm <= 0 or self.max_points < 3:
            raise ValueError(f"CeilingSettings needs regularization >= 0, trim_mm > 0, max_points >= 3: {self}")
        if self.crop_radius is not None and self.crop_radius <= 0:
            raise ValueError(f"CeilingSettings.crop_radius must be positive or None, got {self.crop_radius}")


@dataclass(frozen=True)
class CeilingFit:
    """What `fit_model_to_mesh` found.

    coeffs:          `Coefficients` (batch 1, float32): the fitted identity and expression, zeros elsewhere
    vertices_model:  (V, 3) float64 fitted shape in the model's frame and units
    transform:       model frame -> target frame (similarity)
    vertices:        (V, 3) float64 fitted shape in the target's frame and units (``transform`` applied)
    rms:             root mean squared target-to-model distance of the cropped target points fitted in the
                     last iteration, target units
    history:         (iterations + 1,) that quantity before each iteration and at the end
    """

    coeffs: Coefficients
    vertices_model: np.ndarray
    transform: SimilarityTransform
    vertices: np.ndarray
    rms: float
    history: np.ndarray


def _barycentrics(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """(N, 3) points on (N, 3 corners, 3) triangles -> (N, 3) barycentric weights (clamped to the triangle)."""
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    e1, e2, d = b - a, c - a, points - a
    d11, d12, d22 = (e1 * e1).sum(1), (e1 * e2).sum(1), (e2 * e2).sum(1)
    r1, r2 = (d * e1).sum(1), (d * e2).sum(1)
    det = d11 * d22 - d12 * d12
    ok = det > 1e-12 * np.maximum(d11 * d22, np.finfo(np.float64).tiny)
    safe = np.where(ok, det, 1.0)
    s = np.where(ok, (d22 * r1 - d12 * r2) / safe, 0.0)
    t = np.where(ok, (d11 * r2 - d12 * r1) / safe, 0.0)
    weights = np.clip(np.stack([1.0 - s - t, s, t], axis=1), 0.0, None)
    total = weights.sum(1, keepdims=True)
    return np.divide(weights, total, out=np.full_like(weights, 1.0 / 3.0), where=total > 0)


def _subset(count: int, limit: int) -> np.ndarray:
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, size=limit, replace=False))


def fit_model_to_mesh(
    face_model,
    target_vertices: Any,
    target_faces: Any,
    target_landmarks: Any | None = None,
    *,
    crop_center: Any | None = None,
    init: SimilarityTransform | None = None,
    settings: CeilingSettings = CeilingSettings(),
) -> CeilingFit:
    """Fit the face model's identity (and expression) and a similarity to a target mesh (module docstring).

    face_model: a `face_model.model.FaceModel`.
    target_vertices, target_faces: (S, 3), (F, 3) the ground truth, in its own frame and units (mm for scans).
    target_landmarks: (68, 3) iBUG landmarks on the target for the initial similarity (the inner 51 are
        used) and, without ``crop_center``, the crop centre (the nose tip, 68-id 30); or (K, 3) landmarks
        matching ``face_model.landmark_ids[:K]``. Without landmarks the start is ``init`` or, failing that,
        `centroid_alignment` (both frames must then share axes).
    crop_center: (3,) centre of the fitted crop in the target frame.
    """
    target = as_points(target_vertices, "target vertices")
    faces_t = as_faces(target_faces, len(target), "target faces")
    n_id, n_exp = face_model.layout.n_id, face_model.layout.n_exp
    mean = face_model.mean_shape.detach().double().cpu().numpy()  # (V, 3)
    bases = [face_model.id_basis]
    if settings.expression:
        bases.append(face_model.exp_basis)
    basis = torch.cat(bases).detach().double().cpu().numpy().transpose(1, 2, 0)  # (V, 3, K)
    n_coeffs = basis.shape[2]
    model_faces = face_model.triangles.detach().cpu().numpy().astype(np.int64)
    landmark_ids = face_model.landmark_ids.detach().cpu().numpy()

    landmarks = None if target_landmarks is None else as_points(target_landmarks, "target landmarks")
    if crop_center is None and landmarks is not None and len(landmarks) == 68:
        crop_center = landmarks[NOSE_TIP_68]
    if settings.crop_radius is not None and crop_center is None:
        raise ValueError(
            "the ceiling fit crops the target around a centre: pass 68 target landmarks (their nose "
            "tip is the centre), crop_center, or CeilingSettings(crop_radius=None) for the whole mesh"
        )
    if init is not None:
        transform = init
    elif landmarks is not None:
        ids = list(INNER_LANDMARKS) if len(landmarks) == 68 else list(range(len(landmarks)))
        if len(landmarks) > len(landmark_ids):
            raise ValueError(f"{len(landmarks)} target landmarks but the model has {len(landmark_ids)}")
        transform = fit_similarity(mean[landmark_ids[ids]], landmarks[ids], with_scale=settings.with_scale)
    else:
        transform = centroid_alignment(mean, target, with_scale=settings.with_scale)

    if settings.crop_radius is None:
        cropped = target
    else:
        cropped = target[radius_mask(target, np.asarray(crop_center, np.float64), settings.crop_radius)]
    if len(cropped) < 3:
        raise ValueError(
            f"only {len(cropped)} target vertices within {settings.crop_radius} of the crop centre: "
            "check the units and the landmarks"
        )
    cropped = cropped[_subset(len(cropped), settings.max_points)]
    target_mesh = TriangleMesh(target, faces_t)
    coeffs = np.zeros(n_coeffs)
    history = []
    centre = np.asarray(crop_center, np.float64) if crop_center is not None else None

    def correspondences(shape: np.ndarray, current: SimilarityTransform):
        """Pairs of both directions: model-side (N, 3, K) basis rows and (N, 3) mean rows (the model point is
        ``means + rows @ coeffs`` in the model frame), (N, 3) target points, (N, 3) target-frame unit normals
        of the surface the point was matched on, (N,) weights; and the RMS target-to-model distance."""
        # Target -> model surface, queried in the model frame; distances scale back to target units.
        model_mesh = TriangleMesh(shape, model_faces)
        query = model_mesh.closest_points(current.inverse().apply(cropped))
        tri = model_faces[query.triangle]  # (N, 3)
        weights = _barycentrics(query.closest, shape[tri])
        rms = float(np.sqrt(np.mean(query.distances**2))) * current.scale
        rows_a = sum(weights[:, k, None, None] * basis[tri[:, k]] for k in range(3))
        mean_a = sum(weights[:, k, None] * mean[tri[:, k]] for k in range(3))
        normals_a = model_mesh.face_normals[query.triangle] @ current.rotation.T
        # Model vertices inside the crop -> target surface.
        posed = current.apply(shape)
        inside = np.ones(len(shape), bool) if centre is None else radius_mask(posed, centre, settings.crop_radius)
        hit = target_mesh.closest_points(posed[inside])
        near = hit.distances <= settings.trim_mm
        keep = np.flatnonzero(inside)[near]
        rows = np.concatenate([rows_a, basis[keep]])
        means = np.concatenate([mean_a, mean[keep]])
        points = np.concatenate([cropped, hit.closest[near]])
        normals = np.concatenate([normals_a, target_mesh.face_normals[hit.triangle[near]]])
        w = np.concatenate([np.full(len(cropped), 1.0 / len(cropped)), np.full(len(keep), 1.0 / max(len(keep), 1))])
        return rows, means, points, normals, w, rms

    n_pose = 7 if settings.with_scale else 6
    prior = np.zeros(n_coeffs + n_pose)
    prior[:n_coeffs] = settings.regularization
    for _ in range(settings.iterations):
        shape = mean + basis @ coeffs
        rows, means, points, normals, w, rms = correspondences(shape, transform)
        history.append(rms)
        # One Gauss-Newton step on the point-to-surface distances (linearised along each pair's residual
        # direction, as `metrics.icp` does) jointly in the coefficients, which enter linearly, and a
        # small similarity applied after the current one, parametrised like ICP's point-to-plane step.
        moved = transform.apply(means + rows @ coeffs)
        directions = residual_directions(moved, points, normals)
        pivot = w @ moved / w.sum()
        lever = moved - pivot
        # d/dc of s R (means + rows c) + t along the direction: s (R^T d) . rows.
        jac_coeffs = transform.scale * np.einsum("nd,ndk->nk", directions @ transform.rotation, rows)
        jac_pose = [np.cross(lever, directions), directions]
        if settings.with_scale:
            jac_pose.insert(0, np.einsum("nd,nd->n", lever, directions)[:, None])
        jac = np.concatenate([jac_coeffs, *jac_pose], axis=1)
        residual = np.einsum("nd,nd->n", moved - points, directions)
        weighted = jac * w[:, None]
        normal = weighted.T @ jac + np.diag(prior)
        rhs = -(weighted.T @ residual) - prior * np.concatenate([coeffs, np.zeros(n_pose)])
        step = np.linalg.solve(normal, rhs)
        coeffs = coeffs + step[:n_coeffs]
        sigma = step[n_coeffs] if settings.with_scale else 0.0
        omega, tau = step[-6:-3], step[-3:]
        rotation = rotation_from_vector(omega)
        delta = SimilarityTransform(float(1.0 + sigma), rotation, pivot + tau - (1.0 + sigma) * rotation @ pivot)
        transform = delta.compose(transform)

    shape = mean + basis @ coeffs
    *_, rms = correspondences(shape, transform)
    history.append(rms)
    layout = face_model.layout
    zeros = layout.zeros(1)
    identity = torch.as_tensor(coeffs[:n_id], dtype=torch.float32)[None]
    expression = (
        torch.as_tensor(coeffs[n_id : n_id + n_exp], dtype=torch.float32)[None]
        if settings.expression
        else zeros.expression
    )
    return CeilingFit(
        zeros.replace(identity=identity, expression=expression),
        shape,
        transform,
        transform.apply(shape),
        rms,
        np.asarray(history),
    )


def share_of_gain(mean_face: float, method: float, ceiling: float) -> float | None:
    """(mean face - method) / (mean face - ceiling): 0 at the mean face, 1 at the model's ceiling, negative when
    worse than the mean face. None when the ceiling is no better than the mean face (nothing to gain)."""
    gap = mean_face - ceiling
    if not gap > 0:
        return None
    return (mean_face - method) / gap
