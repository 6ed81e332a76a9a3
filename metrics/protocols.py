"""Evaluation protocols built from `surface` and `alignment`: ground truth is a scan (or a mesh in
another topology), the prediction is a mesh, and errors are distances after a similarity alignment.

- `now_scan_to_mesh`: the NoW challenge (Sanyal et al. 2019; github.com/soubhiksanyal/now_evaluation):
  crop the scan around the face centre computed from its 7 landmarks, align the prediction by its
  7 landmarks (Umeyama with scale), refine with scan-to-mesh ICP, report the distance of every cropped
  scan vertex to the prediction's surface.
- `scan_to_mesh`: Genova et al. 2018 as used by Deng et al. 2019 on MICC Florence and BU-3DFE: keep scan
  points within 95 mm of the nose tip, ICP with isotropic scale, point-to-plane (or point-to-surface)
  distances.
- `region_point_to_point`: MoFA-style FaceWarehouse evaluation: vertices of a region of the predicted
  mesh, aligned to the ground-truth mesh by ICP, distance to the nearest ground-truth vertex.

Distances are in the ground truth's units (mm for all these datasets). With ``with_scale=True`` the
prediction's units do not matter; rigid variants need the prediction in the same units as the scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from geometry.points import as_faces, as_points
from geometry.similarity import SimilarityTransform, fit_similarity
from metrics.alignment import centroid_alignment, icp
from metrics.stats import ErrorStats, summarise
from metrics.surface import TriangleMesh, nearest_vertex, point_to_plane, radius_mask

NOW_LANDMARKS_68 = (36, 39, 42, 45, 33, 48, 54)
"""iBUG-68 ids of NoW's 7 landmarks, in NoW's order: outer and inner corner of the eye on the image left,
inner and outer corner of the other eye, the nose point (68-id 33, the bottom of the nose tip, which NoW's
code calls "nose bottom"), mouth corner on the image left, mouth corner on the image right. The same
selection as DECA/MICA's ``landmark_51[[19, 22, 25, 28, 16, 31, 37]]``."""

GENOVA_CROP_RADIUS_MM = 95.0
"""Genova et al. 2018 keep ground-truth scan points within 95 mm of the nose tip."""

ICP_POINTS = 20_000
"""Default cap on the scan points ICP matches per iteration (a fixed random subset): the alignment of a
face is determined long before that, and the reported distances always cover every cropped point."""


@dataclass(frozen=True)
class AlignedErrors:
    """Distances after aligning a prediction to its ground truth.

    distances: (K,) one distance per evaluated point, in ground-truth units (mm)
    transform: maps the prediction's frame onto the ground truth's
    evaluated: (P,) bool, which of the P candidate points were evaluated (the cropped scan vertices for
               scan-to-mesh protocols; the region of the predicted vertices for `region_point_to_point`)
    iterations, converged: of the final ICP
    """

    distances: np.ndarray
    transform: SimilarityTransform
    evaluated: np.ndarray
    iterations: int
    converged: bool

    @property
    def stats(self) -> ErrorStats:
        return summarise(self.distances)


def now_landmarks_from_68(landmarks_68: Any) -> Any:
    """(..., 68, D) iBUG-68 landmarks (array or tensor) -> (..., 7, D) NoW landmarks of the same type."""
    if landmarks_68.shape[-2] != 68:
        raise ValueError(f"expected 68 landmarks on axis -2, got shape {tuple(landmarks_68.shape)}")
    return landmarks_68[..., list(NOW_LANDMARKS_68), :]


def now_face_crop_mask(points: Any, landmarks_7: Any) -> np.ndarray:
    """(N,) bool: scan points inside NoW's face sphere, computed from the scan's (7, 3) landmarks.

    The centre is 30 % of the way from the nose point to the midpoint of the inner eye corners; the
    radius is 1.4 x the mean of the outer-eye-corner distance and the nose-point-to-that-midpoint
    distance (now_evaluation's ``compute_mask``; points exactly on the sphere are kept).
    """
    landmarks = _landmarks_7(landmarks_7, "scan landmarks")
    nose = landmarks[4]
    bridge = (landmarks[1] + landmarks[2]) / 2
    centre = nose + 0.3 * (bridge - nose)
    radius = 1.4 * (np.linalg.norm(landmarks[0] - landmarks[3]) + np.linalg.norm(bridge - nose)) / 2
    return radius_mask(points, centre, float(radius))


def now_scan_to_mesh(
    scan_vertices: Any,
    scan_landmarks: Any,
    mesh_vertices: Any,
    mesh_faces: Any,
    mesh_landmarks: Any,
    *,
    with_scale: bool = True,
    icp_points: int | None = ICP_POINTS,
    max_iterations: int = 100,
    tolerance: float = 1e-6,
) -> AlignedErrors:
    """NoW scan-to-mesh errors of one prediction.

    scan_vertices: (S, 3) ground-truth scan (mm); scan_landmarks: (7, 3) from its ``.pp`` file.
    mesh_vertices, mesh_faces: (V, 3), (F, 3) the prediction, UNCROPPED (the whole model surface: scan
        points beyond a cropped mesh's border are measured to that border and inflate the error).
    mesh_landmarks: (7, 3) the prediction's NoW landmarks (`now_landmarks_from_68`), in its frame.
    with_scale: NoW's standard protocol; ``False`` is the metrical variant (prediction in mm).
    icp_points: at most this many cropped scan points drive ICP (see `ICP_POINTS`); None: all.

    Returns one distance per scan vertex inside NoW's face crop (``evaluated`` over the S scan vertices).
    NoW pools these distances over all images before taking mean, median and std (`ScanToMeshError`).
    Differences from the reference code: the landmark alignment never reflects (the reference's
    Procrustes may), and the refinement is this module's ICP (closest points and Gauss-Newton steps on
    a subset of the cropped scan) instead of chumpy's solver, minimising the same scan-to-mesh distance.
    """
    scan = as_points(scan_vertices, "scan vertices")
    mesh = as_points(mesh_vertices, "mesh vertices")
    faces = as_faces(mesh_faces, len(mesh), "mesh faces")
    mask = now_face_crop_mask(scan, scan_landmarks)
    if mask.sum() < 3:
        raise ValueError(
            f"only {int(mask.sum())} scan vertices inside the NoW face crop: check that the "
            "scan and its landmarks share units and frame"
        )
    init = fit_similarity(
        _landmarks_7(mesh_landmarks, "mesh landmarks"),
        _landmarks_7(scan_landmarks, "scan landmarks"),
        with_scale=with_scale,
    )
    target = scan[mask]
    result = icp(
        mesh,
        _subset(target, icp_points),
        source_faces=faces,
        init=init,
        with_scale=with_scale,
        direction="target_to_source",
        max_iterations=max_iterations,
        tolerance=tolerance,
    )
    distances = _surface_distances(target, mesh, faces, result.transform)
    return AlignedErrors(distances, result.transform, mask, result.iterations, result.converged)


def scan_to_mesh(
    scan_points: Any,
    mesh_vertices: Any,
    mesh_faces: Any,
    *,
    crop_center: Any | None = None,
    mesh_crop_center: Any | None = None,
    crop_radius: float | None = GENOVA_CROP_RADIUS_MM,
    scan_landmarks: Any | None = None,
    mesh_landmarks: Any | None = None,
    init: SimilarityTransform | None = None,
    distance: str = "plane",
    with_scale: bool = True,
    icp_points: int | None = ICP_POINTS,
    max_iterations: int = 100,
    tolerance: float = 1e-6,
) -> AlignedErrors:
    """Genova-style scan-to-mesh error: crop the scan around the nose tip, similarity ICP, distances.

    scan_points: (S, 3) ground-truth scan vertices (mm). mesh_vertices, mesh_faces: the prediction.
    crop_center: (3,) nose tip in the scan frame (e.g. from annotated scan landmarks). Without it,
        ``mesh_crop_center`` (3,), the prediction's nose tip in its own frame, is mapped through the
        current alignment; the crop and ICP are then repeated once with the refined alignment.
    crop_radius: keep scan points within this distance of the nose tip; None keeps all points.
    scan_landmarks, mesh_landmarks: (K, 3) corresponding landmarks for the initial alignment.
    init: initial prediction-to-scan transform (takes precedence over landmarks). Without init or
        landmarks the start is `centroid_alignment`, which assumes both share axes (y up, z forward).
    distance: ``"plane"`` (point-to-plane at the nearest predicted vertex, Genova et al.), ``"surface"``
        (exact closest point on the triangles) or ``"point"`` (nearest predicted vertex). ICP matches
        against the surface for "plane" and "surface", against the vertices for "point".
    icp_points: at most this many cropped scan points drive ICP (see `ICP_POINTS`); None: all.

    Returns one distance per scan point inside the crop (``evaluated`` over the S scan points).
    """
    if distance not in ("plane", "surface", "point"):
        raise ValueError(f"distance must be 'plane', 'surface' or 'point', got {distance!r}")
    scan = as_points(scan_points, "scan points")
    mesh = as_points(mesh_vertices, "mesh vertices")
    faces = as_faces(mesh_faces, len(mesh), "mesh faces")
    if crop_radius is not None and crop_center is None and mesh_crop_center is None:
        raise ValueError(
            "cropping needs crop_center (scan frame) or mesh_crop_center (prediction frame); "
            "pass crop_radius=None to keep the whole scan"
        )
    if init is not None:
        transform = init
    elif scan_landmarks is not None and mesh_landmarks is not None:
        transform = fit_similarity(mesh_landmarks, scan_landmarks, with_scale=with_scale)
    else:
        transform = centroid_alignment(mesh, scan, with_scale=with_scale)

    rounds = 2 if crop_radius is not None and crop_center is None else 1
    for _ in range(rounds):
        if crop_radius is None:
            mask = np.ones(len(scan), dtype=bool)
        else:
            centre = (
                crop_center
                if crop_center is not None
                else transform.apply(as_points(np.reshape(_numpy(mesh_crop_center), (1, 3)), "mesh crop centre"))[0]
            )
            mask = radius_mask(scan, centre, crop_radius)
        if mask.sum() < 3:
            raise ValueError(
                f"only {int(mask.sum())} scan points within {crop_radius} of the crop centre: "
                "check the units (mm) and the initial alignment"
            )
        result = icp(
            mesh,
            _subset(scan[mask], icp_points),
            source_faces=None if distance == "point" else faces,
            init=transform,
            with_scale=with_scale,
            direction="target_to_source",
            max_iterations=max_iterations,
            tolerance=tolerance,
        )
        transform = result.transform
    if distance == "plane":
        distances, _ = point_to_plane(scan[mask], transform.apply(mesh), faces)
    elif distance == "surface":
        distances = _surface_distances(scan[mask], mesh, faces, transform)
    else:
        distances, _ = nearest_vertex(scan[mask], transform.apply(mesh))
    return AlignedErrors(distances, transform, mask, result.iterations, result.converged)


def region_point_to_point(
    pred_vertices: Any,
    gt_vertices: Any,
    region_ids: Any,
    *,
    pred_landmarks: Any | None = None,
    gt_landmarks: Any | None = None,
    init: SimilarityTransform | None = None,
    with_scale: bool = True,
    max_iterations: int = 100,
    tolerance: float = 1e-6,
) -> AlignedErrors:
    """Point-to-point error of a region of the prediction against a ground-truth mesh of any topology.

    pred_vertices: (V, 3); region_ids: (R,) ids into them (e.g. the "small" or "large" face region,
    defined on the predicted topology as in Deng et al.'s FaceWarehouse evaluation); gt_vertices: (G, 3).
    The region is aligned by ICP (each region vertex to its nearest ground-truth vertex) from ``init``,
    from corresponding ``pred_landmarks``/``gt_landmarks``, or from `centroid_alignment` of the whole
    prediction. Returns one distance per region vertex (``evaluated`` over the V predicted vertices).
    """
    pred = as_points(pred_vertices, "predicted vertices")
    gt = as_points(gt_vertices, "ground-truth vertices")
    ids = np.asarray(_numpy(region_ids)).astype(np.int64).ravel()
    if ids.size < 3 or ids.min() < 0 or ids.max() >= len(pred):
        raise ValueError(
            f"region ids must be at least 3 ids in [0, {len(pred)}), got {ids.size} ids "
            f"in [{ids.min() if ids.size else None}, {ids.max() if ids.size else None}]"
        )
    if init is not None:
        transform = init
    elif pred_landmarks is not None and gt_landmarks is not None:
        transform = fit_similarity(pred_landmarks, gt_landmarks, with_scale=with_scale)
    else:
        transform = centroid_alignment(pred, gt, with_scale=with_scale)
    result = icp(
        pred[ids],
        gt,
        init=transform,
        with_scale=with_scale,
        direction="source_to_target",
        max_iterations=max_iterations,
        tolerance=tolerance,
    )
    evaluated = np.zeros(len(pred), dtype=bool)
    evaluated[ids] = True
    return AlignedErrors(result.distances, result.transform, evaluated, result.iterations, result.converged)


def _subset(points: np.ndarray, limit: int | None) -> np.ndarray:
    """At most ``limit`` of the points, a fixed (seeded) random choice so that results are repeatable."""
    if limit is None or len(points) <= limit:
        return points
    if limit < 3:
        raise ValueError(f"icp_points must be at least 3, got {limit}")
    return points[np.sort(np.random.default_rng(0).choice(len(points), size=limit, replace=False))]


def _surface_distances(
    points: np.ndarray, mesh: np.ndarray, faces: np.ndarray, transform: SimilarityTransform
) -> np.ndarray:
    """Distance of target-frame points to the transformed mesh surface, queried in the mesh frame
    (distances scale with the similarity) so the mesh is not re-transformed."""
    query = TriangleMesh(mesh, faces).closest_points(transform.inverse().apply(points))
    return query.distances * transform.scale


def _landmarks_7(x: Any, name: str) -> np.ndarray:
    points = as_points(x, name)
    if len(points) != 7:
        raise ValueError(f"{name} must be NoW's 7 landmarks, got {len(points)}")
    return points


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
