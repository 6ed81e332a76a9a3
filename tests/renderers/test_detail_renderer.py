"""The detail renderer against cases with known answers (ICT mesh, frontal pose)."""

from __future__ import annotations

import pytest
import torch

from datamodules.detail import detail_layout
from renderers.camera import PinholeCamera
from renderers.detail_renderer import render_detailed


@pytest.fixture(scope="module")
def scene(ict_small):
    layout = detail_layout(ict_small, 16, 64)
    camera = PinholeCamera().resized(64, 64)
    coeffs = ict_small.layout.zeros(1)
    return ict_small, layout, camera, coeffs


def test_zero_maps_render_the_3dmm(scene):
    model, layout, camera, coeffs = scene
    plain = render_detailed(model, coeffs, camera, layout, backend="torch")
    zero = render_detailed(
        model, coeffs, camera, layout, torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 64, 64), backend="torch"
    )
    torch.testing.assert_close(zero.image, plain.image, atol=1e-5, rtol=0)
    torch.testing.assert_close(zero.depth, plain.depth)
    assert plain.mask.sum() > 500


def test_constant_deformation_moves_the_face(scene):
    model, layout, camera, coeffs = scene
    plain = render_detailed(model, coeffs, camera, layout, backend="torch")
    towards_camera = torch.zeros(1, 3, 16, 16)
    towards_camera[:, 2] = 0.1  # model +z is towards the camera
    moved = render_detailed(model, coeffs, camera, layout, towards_camera, backend="torch")
    torch.testing.assert_close(moved.vertices - plain.vertices, torch.tensor([0.0, 0.0, 0.1]).expand_as(moved.vertices))
    # The nearest surface point (the nose tip) comes 0.1 nearer; other pixels see slightly other points, as the
    # projection grows.
    nearest = lambda r: r.depth[0, 0][r.mask[0, 0] > 0].min()  # noqa: E731
    assert abs(float(nearest(plain) - nearest(moved)) - 0.1) < 2e-3


def test_displacement_shades_through_per_pixel_normals(scene):
    model, layout, camera, coeffs = scene
    coeffs = coeffs.replace(lighting=torch.zeros_like(coeffs.lighting).index_fill(1, torch.tensor([3]), 0.5))
    plain = render_detailed(model, coeffs, camera, layout, backend="torch")
    # A constant lift hardly tilts the normals but brings the surface nearer the camera.
    lifted = render_detailed(model, coeffs, camera, layout, None, torch.full((1, 1, 64, 64), 0.01), backend="torch")
    inner = (plain.mask[0, 0] > 0) & (plain.normals[0, 2] > 0.8)
    cos = (lifted.normals * plain.normals).sum(1)[0][inner]
    assert float(cos.mean()) > 0.995
    assert abs(float((plain.depth - lifted.depth)[0, 0][inner].median()) - 0.01 * 0.9) < 0.002
    # Ripples in UV change the shading of the face's pixels.
    u = torch.linspace(0, 1, 64)
    ripples = (0.005 * torch.sin(60 * u)).view(1, 1, 1, 64).expand(1, 1, 64, 64)
    rippled = render_detailed(model, coeffs, camera, layout, None, ripples, backend="torch")
    assert float((rippled.image - plain.image).abs()[0][:, inner].mean()) > 0.01
