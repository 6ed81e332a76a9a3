import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from geometry.similarity import SimilarityTransform
from metrics import (
    NOW_LANDMARKS_68,
    ErrorSummary,
    ScanToMeshError,
    crop_mesh,
    now_face_crop_mask,
    now_landmarks_from_68,
    now_scan_to_mesh,
    point_to_surface,
    radius_mask,
    region_point_to_point,
    scan_to_mesh,
    summarise,
)

# The prediction lives in its own frame and unit: decimetres, rotated and shifted, as a model output would.
TO_PREDICTION = SimilarityTransform(
    0.01, Rotation.from_euler("xyz", [5.0, 20.0, -10.0], degrees=True).as_matrix(), np.array([0.3, -0.2, 10.0])
)


def resampled_scan(make_grid, noise: float, seed: int = 0, n: int = 97) -> np.ndarray:
    """Ground truth in mm: the same relief sampled on another grid (no shared vertices), noisy."""
    grid_mesh, height = make_grid
    vertices, _ = grid_mesh(n, 87.3, height)
    return vertices + np.random.default_rng(seed).normal(scale=noise, size=vertices.shape)


def test_now_landmark_selection():
    landmarks = torch.arange(68 * 3, dtype=torch.float64).reshape(1, 68, 3)
    selected = now_landmarks_from_68(landmarks)
    assert selected.shape == (1, 7, 3)
    torch.testing.assert_close(selected[0, :, 0], torch.tensor(NOW_LANDMARKS_68, dtype=torch.float64) * 3)
    assert NOW_LANDMARKS_68 == (36, 39, 42, 45, 33, 48, 54)
    with pytest.raises(ValueError, match="68"):
        now_landmarks_from_68(np.zeros((5, 3)))


def test_now_crop_sphere_follows_the_reference_rule():
    # Nose point at the origin, eye corners 30 mm above: bridge (0, 30, 0), centre 30 % up = (0, 9, 0),
    # radius 1.4 * (outer-eye distance 90 + nose-bridge distance 30) / 2 = 84 mm.
    landmarks = np.array(
        [[-45.0, 30, 0], [-15, 30, 0], [15, 30, 0], [45, 30, 0], [0, 0, 0], [-25, -30, 0], [25, -30, 0]]
    )
    direction = np.array([0.0, 0.6, 0.8])
    points = np.array([0.0, 9.0, 0.0]) + np.outer([0.0, 83.9, 84.0, 84.1], direction)
    np.testing.assert_array_equal(now_face_crop_mask(points, landmarks), [True, True, True, False])


def test_now_protocol_on_a_resampled_noisy_scan(face_surface, face_landmarks, make_grid):
    vertices, faces = face_surface
    scan = resampled_scan(make_grid, noise=0.05)
    scan_landmarks = face_landmarks + np.random.default_rng(1).normal(scale=1.0, size=(7, 3))
    result = now_scan_to_mesh(
        scan, scan_landmarks, TO_PREDICTION.apply(vertices), faces, TO_PREDICTION.apply(face_landmarks)
    )
    assert result.converged
    np.testing.assert_array_equal(result.evaluated, now_face_crop_mask(scan, scan_landmarks))
    assert result.distances.shape == (result.evaluated.sum(),)
    # Noise (0.05 mm per axis) plus the 3 mm grid's deviation from the smooth relief.
    stats = result.stats
    assert stats.mean < 0.1 and stats.median < 0.1
    # The alignment undoes the prediction's frame and unit (1 dm = 100 mm).
    recovered = result.transform.compose(TO_PREDICTION)
    assert recovered.scale == pytest.approx(1.0, abs=2e-3)
    np.testing.assert_allclose(recovered.apply(vertices), vertices, atol=0.5)
    # Same distances when ICP uses every point rather than a subset.
    full = now_scan_to_mesh(
        scan, scan_landmarks, TO_PREDICTION.apply(vertices), faces, TO_PREDICTION.apply(face_landmarks), icp_points=None
    )
    assert abs(full.stats.mean - stats.mean) < 0.005


def test_now_errors_grow_with_a_cropped_prediction(face_surface, face_landmarks, make_grid):
    """The NoW pitfall: scan points beyond a cropped mesh's border are measured to that border."""
    vertices, faces = face_surface
    scan = resampled_scan(make_grid, noise=0.0, n=51)
    full = now_scan_to_mesh(scan, face_landmarks, vertices, faces, face_landmarks)
    inner, inner_faces = crop_mesh(vertices, faces, radius_mask(vertices, face_landmarks[4], 55.0))
    cropped = now_scan_to_mesh(scan, face_landmarks, inner, inner_faces, face_landmarks)
    assert full.stats.mean < 0.05
    assert cropped.stats.mean > full.stats.mean + 1.0


def test_now_protocol_validates_its_inputs(face_surface, face_landmarks):
    vertices, faces = face_surface
    with pytest.raises(ValueError, match="7 landmarks"):
        now_scan_to_mesh(vertices, face_landmarks[:5], vertices, faces, face_landmarks)
    with pytest.raises(ValueError, match="face crop"):
        now_scan_to_mesh(vertices + 1e4, face_landmarks, vertices, faces, face_landmarks)


def test_genova_protocol_crops_at_the_nose_tip_and_aligns(face_surface, face_landmarks, make_grid):
    vertices, faces = face_surface
    scan = resampled_scan(make_grid, noise=0.05, seed=2)
    nose_tip = face_landmarks[4]
    prediction = TO_PREDICTION.apply(vertices)
    by_scan_nose = scan_to_mesh(
        scan,
        prediction,
        faces,
        crop_center=nose_tip,
        scan_landmarks=face_landmarks,
        mesh_landmarks=TO_PREDICTION.apply(face_landmarks),
        distance="plane",
    )
    np.testing.assert_array_equal(by_scan_nose.evaluated, radius_mask(scan, nose_tip, 95.0))
    assert by_scan_nose.stats.mean < 0.1
    # The crop centre can come from the prediction's nose tip instead (mapped by the alignment).
    by_mesh_nose = scan_to_mesh(
        scan,
        prediction,
        faces,
        mesh_crop_center=TO_PREDICTION.apply(nose_tip[None])[0],
        scan_landmarks=face_landmarks,
        mesh_landmarks=TO_PREDICTION.apply(face_landmarks),
        distance="surface",
    )
    assert np.mean(by_mesh_nose.evaluated != by_scan_nose.evaluated) < 0.01
    assert by_mesh_nose.stats.mean < 0.1
    # Point-to-point error is bounded below by the vertex spacing, so it exceeds the surface distances.
    by_vertex = scan_to_mesh(
        scan,
        prediction,
        faces,
        crop_center=nose_tip,
        scan_landmarks=face_landmarks,
        mesh_landmarks=TO_PREDICTION.apply(face_landmarks),
        distance="point",
    )
    assert by_vertex.stats.mean > 2 * by_scan_nose.stats.mean
    # Without any crop centre the crop is impossible.
    with pytest.raises(ValueError, match="crop_center"):
        scan_to_mesh(scan, prediction, faces)
    with pytest.raises(ValueError, match="distance"):
        scan_to_mesh(scan, prediction, faces, crop_radius=None, distance="chamfer")


def test_genova_protocol_without_landmarks_starts_from_centroids(face_surface, make_grid):
    vertices, faces = face_surface
    scan = resampled_scan(make_grid, noise=0.0)
    # Same axes, other unit and position: the centroid start suffices.
    shifted = SimilarityTransform(0.01, np.eye(3), np.array([1.0, 2.0, 3.0]))
    result = scan_to_mesh(scan, shifted.apply(vertices), faces, crop_radius=None, distance="surface")
    assert result.evaluated.all() and result.stats.mean < 0.05


def test_region_point_to_point_matches_an_independent_nearest_vertex_search(face_surface, face_landmarks, make_grid):
    vertices, _ = face_surface
    grid_mesh, height = make_grid
    ground_truth, gt_faces = grid_mesh(91, 90.0, height)
    region = np.flatnonzero(np.linalg.norm(vertices[:, :2], axis=1) < 40.0)
    result = region_point_to_point(
        TO_PREDICTION.apply(vertices),
        ground_truth,
        region,
        pred_landmarks=TO_PREDICTION.apply(face_landmarks),
        gt_landmarks=face_landmarks,
    )
    assert result.evaluated.sum() == len(region) and result.distances.shape == (len(region),)
    aligned = result.transform.apply(TO_PREDICTION.apply(vertices)[region])
    brute = np.linalg.norm(aligned[:, None] - ground_truth[None], axis=2).min(1)
    np.testing.assert_allclose(result.distances, brute, atol=1e-9)
    # Both grids sample the same relief: a point on it is within the longest ground-truth edge of a
    # ground-truth vertex (the steep nose stretches the 2 mm cells).
    corners = ground_truth[gt_faces]
    longest_edge = np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=2).max()
    assert result.distances.max() < longest_edge and result.distances.mean() < 1.0
    with pytest.raises(ValueError, match="region ids"):
        region_point_to_point(vertices, ground_truth, [0, 1, len(vertices)])


def test_summarise_reports_population_std_and_midpoint_median():
    stats = summarise(torch.tensor([[1.0, 2.0], [3.0, 10.0]]))
    assert (stats.mean, stats.median, stats.count) == (4.0, 2.5, 4)
    assert stats.std == pytest.approx(np.std([1.0, 2.0, 3.0, 10.0]))
    assert "4.000 ± " in str(stats)
    with pytest.raises(ValueError, match="empty"):
        summarise([])
    with pytest.raises(ValueError, match="NaN"):
        summarise([1.0, np.nan])


def test_metric_modules_pool_points_or_summarise_samples():
    first, second = torch.tensor([1.0, 1.0, 1.0, 1.0]), np.array([3.0, 5.0])
    pooled = ScanToMeshError(reduction="points")
    per_sample = ScanToMeshError(reduction="samples")
    for metric in (pooled, per_sample):
        metric.update(first)
        metric.update(second)
    points = pooled.compute()
    assert points["mean"].item() == pytest.approx(2.0) and points["median"].item() == pytest.approx(1.0)
    assert points["std"].item() == pytest.approx(np.std([1, 1, 1, 1, 3, 5]))
    samples = per_sample.compute()  # sample means 1 and 4
    assert samples["mean"].item() == pytest.approx(2.5) and samples["std"].item() == pytest.approx(1.5)
    assert samples["median"].item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="reduction"):
        ScanToMeshError(reduction="faces")
    with pytest.raises(ValueError, match="no scan-to-mesh"):
        pooled.update(torch.zeros(0))

    summary = ErrorSummary()
    summary.update(torch.tensor([2.0, 4.0]))
    summary.update(torch.tensor(9.0))
    result = summary.compute()
    assert result["mean"].item() == pytest.approx(5.0) and result["median"].item() == pytest.approx(4.0)
    summary.reset()
    summary.update(torch.tensor([7.0]))
    assert summary.compute()["mean"].item() == pytest.approx(7.0)


def test_metric_surface_distance_agrees_with_protocol(face_surface, face_landmarks, make_grid):
    """Wrapper + protocol end to end: the metric's pooled mean is the mean of the protocol's distances."""
    vertices, faces = face_surface
    scan = resampled_scan(make_grid, noise=0.05, seed=3)
    result = now_scan_to_mesh(scan, face_landmarks, vertices, faces, face_landmarks)
    metric = ScanToMeshError()
    metric.update(result.distances)
    assert metric.compute()["mean"].item() == pytest.approx(result.stats.mean, rel=1e-6)
    aligned = result.transform.apply(vertices)
    direct = point_to_surface(scan[result.evaluated], aligned, faces).distances
    np.testing.assert_allclose(direct, result.distances, atol=1e-9)
