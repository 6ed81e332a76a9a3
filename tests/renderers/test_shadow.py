"""Shadow mapping: a square above a plane shadows exactly the plane's vertices below it."""

from __future__ import annotations

import math

import pytest
import torch

from renderers.shadow import light_frame, shadow_visibility


def grid_plane(n: int = 21, half: float = 2.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n * n, 3) vertices of the z = 0 plane over [-half, half]^2, its triangles, and the 1D coordinates."""
    xs = torch.linspace(-half, half, n, dtype=torch.float64)
    x, y = torch.meshgrid(xs, xs, indexing="xy")
    vertices = torch.stack([x.reshape(-1), y.reshape(-1), torch.zeros(n * n, dtype=torch.float64)], 1)
    triangles = []
    for i in range(n - 1):
        for j in range(n - 1):
            a = i * n + j
            triangles += [[a, a + 1, a + n], [a + 1, a + n + 1, a + n]]
    return vertices, torch.tensor(triangles), xs


def scene_with_square(height: float = 1.0, size: float = 0.5):
    plane, triangles, xs = grid_plane()
    square = torch.tensor(
        [[-size, -size, height], [size, -size, height], [size, size, height], [-size, size, height]],
        dtype=torch.float64,
    )
    vertices = torch.cat([plane, square]).unsqueeze(0)
    n = plane.shape[0]
    faces = torch.cat([triangles, torch.tensor([[0, 1, 2], [0, 2, 3]]) + n])
    return vertices, faces, plane, n


def test_light_frame_is_a_rotation_with_the_light_as_third_axis():
    directions = torch.randn(16, 3, dtype=torch.float64)
    directions[0] = torch.tensor([0.0, 1.0, 0.0])  # the helper-axis switch
    frame = light_frame(directions)
    eye = torch.eye(3, dtype=torch.float64).expand(16, 3, 3)
    assert torch.allclose(frame @ frame.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(frame), torch.ones(16, dtype=torch.float64))
    assert torch.allclose(frame[:, 2], directions / directions.norm(dim=1, keepdim=True))


def test_square_over_a_plane_shadows_the_vertices_below_it():
    vertices, faces, plane, n = scene_with_square()
    lit = shadow_visibility(vertices, faces, torch.tensor([[0.0, 0.0, 1.0]]), map_size=64, filter_radius=0)[0]
    below = (plane[:, 0].abs() < 0.5) & (plane[:, 1].abs() < 0.5)
    assert below.sum() == 25
    assert torch.equal(lit[:n] == 0, below)
    assert torch.all(lit[n:] == 1)  # the occluder itself is lit
    # Light from below: the plane is between the light and the square, so nothing on the plane is shadowed
    # and the square is shadowed by the plane.
    lit = shadow_visibility(vertices, faces, torch.tensor([[0.0, 0.0, -1.0]]), map_size=64, filter_radius=0)[0]
    assert torch.all(lit[:n] == 1) and torch.all(lit[n:] == 0)


def test_oblique_light_moves_the_shadow_by_the_occluder_height():
    height = 1.0
    vertices, faces, plane, n = scene_with_square(height=height)
    angle = math.radians(45.0)
    # Light towards +x: the shadow is cast towards -x, shifted by height * tan(angle) = 1.
    direction = torch.tensor([[math.sin(angle), 0.0, math.cos(angle)]])
    lit = shadow_visibility(vertices, faces, direction, map_size=96, filter_radius=0)[0, :n]
    shifted = ((plane[:, 0] + height).abs() < 0.5) & (plane[:, 1].abs() < 0.5)
    assert torch.equal(lit == 0, shifted)


def test_filtering_softens_only_the_shadow_edge():
    # The square's edge passes 0.02 from the vertices at +-0.4, under a texel: the 3x3 filter straddles it.
    vertices, faces, plane, n = scene_with_square(size=0.42)
    lit = shadow_visibility(vertices, faces, torch.tensor([[0.0, 0.0, 1.0]]), map_size=64, filter_radius=1)[0, :n]
    hard = shadow_visibility(vertices, faces, torch.tensor([[0.0, 0.0, 1.0]]), map_size=64, filter_radius=0)[0, :n]
    partial = (lit > 0) & (lit < 1)
    edge = (plane[:, :2].abs().amax(1) - 0.4).abs() < 1e-9
    assert partial.any() and torch.all(edge[partial])
    assert torch.equal(lit[~edge], hard[~edge])


@pytest.mark.parametrize("map_size", [32, 96])
def test_a_convex_body_does_not_shadow_its_lit_side(map_size):
    # An octahedron: every face towards the light is lit, the opposite vertex is shadowed.
    vertices = torch.tensor(
        [[[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]], dtype=torch.float64
    )
    faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    lit = shadow_visibility(vertices, faces, torch.tensor([[0.0, 0.0, 1.0]]), map_size=map_size, filter_radius=0)[0]
    assert lit[4] == 1 and lit[5] == 0


def test_ambient_occlusion_is_one_in_the_open_and_lower_under_a_cover():
    from renderers.shadow import ambient_occlusion, sphere_directions

    directions = sphere_directions(200)
    assert torch.allclose(directions.norm(dim=1), torch.ones(200, dtype=torch.float64))
    assert directions.mean(0).abs().max() < 0.01  # evenly spread
    vertices, faces, plane, n = scene_with_square(height=0.3, size=0.8)
    normals = torch.zeros_like(vertices[0])
    normals[:, 2] = 1.0
    ao = ambient_occlusion(vertices[0], faces, normals, n_directions=64, map_size=64)
    far = (plane[:, :2].abs() > 1.5).any(1)
    centre = (plane[:, :2].abs() < 0.1).all(1)
    assert torch.all(ao[:n][far] > 0.9)
    # Under a disc of radius R at height h the open cosine-weighted sky is h^2 / (h^2 + R^2): 0.12 for the
    # disc inside the 1.6-wide square (R = 0.8), 0.066 for the disc around it (R = 0.8 sqrt 2).
    assert torch.all((ao[:n][centre] > 0.04) & (ao[:n][centre] < 0.2))
    assert torch.all(ao[n:] > 0.95)  # the cover's top is open
