"""UV tools against analytic cases: a flat square whose uvs are its own coordinates."""

from __future__ import annotations

import math

import pytest
import torch

from renderers.camera import PinholeCamera, model_to_camera
from renderers.uv import (
    attribute_map,
    build_uv_atlas,
    displace_mesh,
    displaced_normal_map,
    position_map,
    sample_uv_map,
    subdivide,
    unwrap_image,
)


def grid_plane(n: int = 9, half: float = 0.5, u0: float = 0.0, u1: float = 1.0):
    """(V, 3) square in z = 0 spanning [-half, half]^2, CCW seen from +z, uvs mapped linearly to [u0, u1] x [0, 1]."""
    t = torch.linspace(-half, half, n)
    y, x = torch.meshgrid(t, t, indexing="ij")
    vertices = torch.stack([x.reshape(-1), y.reshape(-1), torch.zeros(n * n)], dim=-1)
    ids = torch.arange(n * n).reshape(n, n)
    a, b, c, d = ids[:-1, :-1].reshape(-1), ids[:-1, 1:].reshape(-1), ids[1:, 1:].reshape(-1), ids[1:, :-1].reshape(-1)
    triangles = torch.cat([torch.stack([a, b, c], 1), torch.stack([a, c, d], 1)])
    s = (vertices[:, :2] + half) / (2 * half)
    uvs = torch.stack([u0 + (u1 - u0) * s[:, 0], s[:, 1]], dim=-1)
    return vertices, triangles, uvs


def texel_uv(size: int) -> torch.Tensor:
    """(S, S, 2) uv of every texel centre."""
    centres = (torch.arange(size) + 0.5) / size
    v, u = torch.meshgrid(1.0 - centres, centres, indexing="ij")
    return torch.stack([u, v], dim=-1)


def test_position_map_of_a_plane_is_its_uv():
    vertices, triangles, uvs = grid_plane()
    atlas = build_uv_atlas(triangles, uvs, triangles, 32)
    positions = position_map(vertices.unsqueeze(0), atlas)[0]
    assert atlas.mask.all()
    expected = texel_uv(32) - 0.5
    torch.testing.assert_close(positions[:2].permute(1, 2, 0), expected, atol=1e-5, rtol=0)
    assert positions[2].abs().max() < 1e-6


def test_attribute_map_is_zero_outside_the_charts():
    vertices, triangles, uvs = grid_plane(u1=0.5)
    atlas = build_uv_atlas(triangles, uvs, triangles, 16)
    values = torch.ones(1, vertices.shape[0], 2)
    out = attribute_map(values, atlas)[0]
    assert atlas.mask[:, :8].all() and not atlas.mask[:, 8:].any()
    assert (out[:, :, 8:] == 0).all() and torch.allclose(out[:, :, :8], torch.ones(2, 16, 8))


def test_sampling_a_linear_map_back_to_vertices_is_exact():
    size = 64
    uv = texel_uv(size)
    field = torch.stack([3.0 * uv[..., 0] - uv[..., 1], 2.0 * uv[..., 1] + 0.5], dim=0).unsqueeze(0)
    vertices, _, uvs = grid_plane(n=7, half=0.3)  # interior uvs, away from the border texels
    uvs = 0.2 + 0.6 * uvs
    sampled = sample_uv_map(field, uvs)[0]
    expected = torch.stack([3.0 * uvs[:, 0] - uvs[:, 1], 2.0 * uvs[:, 1] + 0.5], dim=-1)
    torch.testing.assert_close(sampled, expected, atol=1e-5, rtol=0)


def test_unwrap_reads_the_photo_where_the_plane_is_seen():
    camera = PinholeCamera().resized(64, 64)
    vertices, triangles, uvs = grid_plane()
    atlas = build_uv_atlas(triangles, uvs, triangles, 16)
    cam = model_to_camera(vertices.unsqueeze(0), camera.camera_distance)
    rows, cols = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    image = torch.stack([cols / 64, rows / 64, torch.full_like(rows, 0.5)]).unsqueeze(0)
    out = unwrap_image(image, cam, camera, atlas, backend="torch")
    assert out.visibility.all() and torch.allclose(out.visible_share, torch.ones(1))
    uv = texel_uv(16)
    px = camera.focal * (uv[..., 0] - 0.5) / camera.camera_distance + camera.principal_point[0]
    py = camera.focal * -(uv[..., 1] - 0.5) / camera.camera_distance + camera.principal_point[1]
    torch.testing.assert_close(out.texture[0, 0], px / 64, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.texture[0, 1], py / 64, atol=1e-4, rtol=0)


def test_unwrap_hides_occluded_and_back_facing_surface():
    camera = PinholeCamera().resized(64, 64)
    back, triangles, uv_back = grid_plane(u1=0.5)
    front, _, uv_front = grid_plane(u0=0.5)
    front = front + torch.tensor([0.0, 0.0, 1.0])  # nearer the camera, covering the back plane
    vertices = torch.cat([back, front]).unsqueeze(0)
    all_triangles = torch.cat([triangles, triangles + back.shape[0]])
    atlas = build_uv_atlas(all_triangles, torch.cat([uv_back, uv_front]), all_triangles, 16)
    cam = model_to_camera(vertices, camera.camera_distance)
    image = torch.rand(1, 3, 64, 64)
    out = unwrap_image(image, cam, camera, atlas, backend="torch")
    assert not out.visibility[0, 0, :, :8].any(), "the covered plane must not be seen"
    assert out.visibility[0, 0, :, 8:].all()
    assert out.texture[0, :, :, :8].abs().max() == 0
    assert abs(float(out.visible_share[0]) - 0.5) < 1e-6

    # The plane seen from behind (turned by 180 degrees about y): nothing visible, and no error.
    turned = grid_plane()[0] * torch.tensor([-1.0, 1.0, -1.0])
    atlas = build_uv_atlas(triangles, grid_plane()[2], triangles, 16)
    out = unwrap_image(image, model_to_camera(turned.unsqueeze(0), 10.0), camera, atlas, backend="torch")
    assert not out.visibility.any() and float(out.visible_share[0]) == 0.0


def test_unwrap_rejects_a_camera_of_another_size():
    vertices, triangles, uvs = grid_plane()
    atlas = build_uv_atlas(triangles, uvs, triangles, 8)
    with pytest.raises(ValueError, match="image size"):
        unwrap_image(torch.rand(1, 3, 32, 32), vertices.unsqueeze(0) + 10, PinholeCamera(), atlas)


def test_displaced_normals_of_a_sine_relief_match_the_analytic_normal():
    size, amplitude, waves = 128, 0.01, 3.0
    vertices, triangles, uvs = grid_plane()
    atlas = build_uv_atlas(triangles, uvs, triangles, size)
    positions = position_map(vertices.unsqueeze(0), atlas)
    normals = torch.zeros_like(positions)
    normals[:, 2] = 1.0
    x = positions[:, :1]
    k = 2 * math.pi * waves  # the plane spans 1 unit, so u and x share their scale
    displacement = amplitude * torch.sin(k * x)
    out = displaced_normal_map(positions, normals, displacement, atlas.mask)
    slope = amplitude * k * torch.cos(k * x)
    expected = torch.cat([-slope, torch.zeros_like(slope), torch.ones_like(slope)], dim=1)
    expected = expected / expected.norm(dim=1, keepdim=True)
    angle = torch.rad2deg(torch.acos((out * expected).sum(1).clamp(-1, 1)))
    assert angle.max() < 1.0
    flat = displaced_normal_map(positions, normals, torch.zeros_like(displacement), atlas.mask)
    torch.testing.assert_close(flat, normals, atol=1e-5, rtol=0)


def test_subdivision_and_displacement():
    vertices, triangles, uvs = grid_plane(n=3)
    mesh = subdivide(vertices.unsqueeze(0), triangles, uvs, triangles)
    n_edges = 16  # a 3x3 grid of 8 triangles has 12 sides and 4 diagonals
    assert mesh.vertices.shape == (1, 9 + n_edges, 3) and mesh.triangles.shape == (32, 3)
    a, b = mesh.parents[9:].unbind(1)
    torch.testing.assert_close(mesh.vertices[0, 9:], 0.5 * (vertices[a] + vertices[b]))
    lifted = displace_mesh(mesh, torch.full((1, 1, 8, 8), 0.2), torch.full((1, 3, 8, 8), 0.1))
    torch.testing.assert_close(lifted - mesh.vertices, torch.tensor([0.1, 0.1, 0.3]).expand_as(lifted))
