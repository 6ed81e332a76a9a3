import numpy as np
import pytest
import torch
import trimesh

from geometry.normals import vertex_normals
from metrics import (
    TriangleMesh,
    closest_points_on_triangles,
    crop_mesh,
    nearest_vertex,
    point_to_plane,
    point_to_surface,
    radius_mask,
)


def brute_force_trimesh(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Independent reference: trimesh's point-triangle closest point for every pair, minimum per point."""
    triangles = vertices[faces]
    best = np.full(len(points), np.inf)
    for i, p in enumerate(points):
        closest = trimesh.triangles.closest_point(triangles, np.repeat(p[None], len(triangles), 0))
        best[i] = np.linalg.norm(closest - p, axis=1).min()
    return best


def test_closest_points_agree_with_trimesh_on_random_triangles():
    rng = np.random.default_rng(1)
    n = 4000
    a, b, c = (rng.normal(size=(n, 3)) for _ in range(3))
    points = rng.normal(size=(n, 3)) * 2
    ours = closest_points_on_triangles(points, a, b, c)
    reference = trimesh.triangles.closest_point(np.stack([a, b, c], axis=1), points)
    np.testing.assert_allclose(ours, reference, atol=1e-9)


def test_degenerate_triangles_fall_back_to_their_edges():
    a = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    b = np.array([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # collinear; then a single point
    c = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    points = np.array([[1.5, 2.0, 0.0], [0.0, 0.0, 0.0]])
    closest = closest_points_on_triangles(points, a, b, c)
    np.testing.assert_allclose(closest, [[1.5, 0.0, 0.0], [1.0, 1.0, 1.0]])


def test_point_to_surface_matches_trimesh_brute_force(bumpy_sphere):
    vertices, faces = bumpy_sphere
    rng = np.random.default_rng(2)
    # Near the surface, far outside, and deep inside (the hardest case for the search pruning).
    directions = rng.normal(size=(60, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    points = np.concatenate(
        [
            vertices[rng.choice(len(vertices), 60)] + rng.normal(scale=2.0, size=(60, 3)),
            directions * 120.0,
            rng.normal(scale=5.0, size=(20, 3)),
        ]
    )
    query = point_to_surface(points, vertices, faces)
    np.testing.assert_allclose(query.distances, brute_force_trimesh(points, vertices, faces), atol=1e-9)
    # The reported closest point lies on the reported triangle.
    corners = vertices[faces[query.triangle]]
    on_triangle = closest_points_on_triangles(query.closest, corners[:, 0], corners[:, 1], corners[:, 2])
    np.testing.assert_allclose(on_triangle, query.closest, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(points - query.closest, axis=1), query.distances, atol=1e-12)


def test_point_to_surface_matches_trimesh_proximity(bumpy_sphere):
    pytest.importorskip("rtree", reason="trimesh.proximity needs rtree")
    vertices, faces = bumpy_sphere
    points = np.random.default_rng(3).normal(scale=60.0, size=(300, 3))
    _, distance, _ = trimesh.proximity.closest_point(trimesh.Trimesh(vertices, faces, process=False), points)
    np.testing.assert_allclose(point_to_surface(points, vertices, faces).distances, distance, atol=1e-9)


def test_distances_to_a_plane_are_exact(make_grid):
    grid_mesh, _ = make_grid
    vertices, faces = grid_mesh(11, 50.0, lambda x, y: 0.0 * x)
    rng = np.random.default_rng(4)
    points = np.column_stack([rng.uniform(-40, 40, (500, 2)), rng.uniform(-20, 20, 500)])
    np.testing.assert_allclose(point_to_surface(points, vertices, faces).distances, np.abs(points[:, 2]), atol=1e-12)
    np.testing.assert_allclose(point_to_plane(points, vertices, faces)[0], np.abs(points[:, 2]), atol=1e-12)
    # Beyond the border the surface distance includes the horizontal gap; the plane distance does not.
    outside = np.array([[53.0, 0.0, 4.0]])
    np.testing.assert_allclose(point_to_surface(outside, vertices, faces).distances, [5.0])
    np.testing.assert_allclose(point_to_plane(outside, vertices, faces)[0], [4.0])


def test_distance_to_a_sphere_mesh_within_tessellation_error():
    radius = 40.0
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    vertices, faces = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    # Flat facets lie inside the sphere by at most the sagitta: the largest gap between a facet's plane
    # and the sphere (the facet planes are closest to the centre at the facet centroids).
    normals = vertex_normals(torch.from_numpy(vertices)[None], torch.from_numpy(faces), area_weighted=True)[0].numpy()
    centroids = vertices[faces].mean(1)
    sagitta = radius - np.linalg.norm(centroids, axis=1).min()
    assert 0 < sagitta < 0.1
    rng = np.random.default_rng(5)
    directions = rng.normal(size=(400, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    points = directions * rng.uniform(20.0, 60.0, size=(400, 1))
    analytic = np.abs(np.linalg.norm(points, axis=1) - radius)
    assert np.abs(point_to_surface(points, vertices, faces).distances - analytic).max() <= sagitta + 1e-9
    # The tangent plane at the nearest vertex (angle theta away) misses by |p| (1 - cos theta), and
    # 1 - cos theta is at most sagitta / radius (theta at most a facet's angular circumradius; 5 % slack
    # for the facets' centroids not being exactly their circumcentres).
    plane_error = np.abs(point_to_plane(points, vertices, normals=normals)[0] - analytic)
    assert (plane_error <= 1.05 * sagitta * np.linalg.norm(points, axis=1) / radius).all()
    # Vertex normals of a sphere point radially.
    np.testing.assert_allclose(normals, vertices / radius, atol=0.01)


def test_nearest_vertex_accepts_tensors_and_matches_brute_force():
    rng = np.random.default_rng(6)
    vertices, points = rng.normal(size=(200, 3)), rng.normal(size=(50, 3))
    distances, ids = nearest_vertex(torch.from_numpy(points), torch.from_numpy(vertices))
    all_pairs = np.linalg.norm(points[:, None] - vertices[None], axis=2)
    np.testing.assert_allclose(distances, all_pairs.min(1))
    np.testing.assert_array_equal(ids, all_pairs.argmin(1))


def test_triangle_mesh_is_reusable_and_validates_input(bumpy_sphere):
    vertices, faces = bumpy_sphere
    mesh = TriangleMesh(vertices, faces)
    np.testing.assert_allclose(mesh.closest_points(vertices[:10]).distances, 0.0, atol=1e-12)
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        mesh.closest_points(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="vertex ids"):
        TriangleMesh(vertices, faces + len(vertices))
    with pytest.raises(ValueError, match="NaN"):
        point_to_surface(np.full((1, 3), np.nan), vertices, faces)


def test_radius_crop_is_inclusive_and_exact():
    nose = np.array([10.0, -20.0, 30.0])
    direction = np.array([2.0, -1.0, 2.0]) / 3.0
    points = nose + np.outer([0.0, 50.0, 94.9, 95.0, 95.1, 200.0], direction)
    np.testing.assert_array_equal(radius_mask(points, nose, 95.0), [True, True, True, True, False, False])
    with pytest.raises(ValueError, match="positive"):
        radius_mask(points, nose, 0.0)


def test_crop_mesh_keeps_faces_inside_and_reindexes(make_grid):
    grid_mesh, _ = make_grid
    vertices, faces = grid_mesh(5, 2.0, lambda x, y: 0.0 * x)
    keep = vertices[:, 0] <= 0.0
    cropped, cropped_faces = crop_mesh(vertices, faces, keep)
    assert len(cropped) == 15 and cropped_faces.max() < 15
    assert len(cropped_faces) == 2 * 4 * 2  # 4 rows of 2 quads
    np.testing.assert_allclose(cropped[cropped_faces], vertices[faces[keep[faces].all(1)]])
