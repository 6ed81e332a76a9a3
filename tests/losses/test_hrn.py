"""HRN's loss terms against hand-computed cases."""

from __future__ import annotations

import torch

from losses.hrn import (
    contour_loss,
    deformation_magnitude,
    displacement_regularizer,
    edge_weights,
    mask_row_extents,
    reflectance_flatness,
    tv_loss,
)


def test_mask_row_extents():
    mask = torch.zeros(1, 1, 4, 10)
    mask[0, 0, 1, 2:7] = 1.0
    mask[0, 0, 2, 4] = 1.0
    left, right, valid = mask_row_extents(mask)
    assert valid.tolist() == [[False, True, True, False]]
    assert left[0, 1] == 2 and right[0, 1] == 7
    assert left[0, 2] == 4 and right[0, 2] == 5


def test_contour_loss_pulls_edge_points_to_their_side_of_the_outline():
    height, width = 8, 20
    left = torch.full((1, height), 5.0)
    right = torch.full((1, height), 15.0)
    valid = torch.ones(1, height, dtype=torch.bool)
    centre = torch.tensor([10.0])
    # One point 3 px inside the left outline, one 2 px outside the right one, one in a row without target.
    points = torch.tensor([[[8.0, 2.5], [17.0, 3.5], [3.0, 6.5]]], requires_grad=True)
    valid[0, 6] = False
    weights = torch.ones(1, 3)
    loss = contour_loss(points, weights, left, right, valid, centre, float(width))
    # smooth L1 with beta 1 is |d| - 0.5 for |d| >= 1; the point in a row without target counts nowhere.
    expected = ((3.0 - 0.5) + (2.0 - 0.5)) / 2 / width
    torch.testing.assert_close(loss, torch.tensor(expected))
    loss.backward()
    # Descent moves the left point out to x = 5 and the right one back in to x = 15: both towards smaller x.
    assert points.grad[0, 0, 0] > 0 and points.grad[0, 1, 0] > 0
    assert points.grad[0, 2].abs().sum() == 0 and points.grad[..., 1].abs().sum() == 0
    # A target far beyond max_gap (a mask that leaked into the background) is ignored.
    far = contour_loss(points, weights, left, right, valid, centre, float(width), max_gap=2.5)
    torch.testing.assert_close(far, torch.tensor((2.0 - 0.5) / width))


def test_edge_weights_select_points_on_the_rendered_outline():
    left, right = torch.full((1, 4), 3.0), torch.full((1, 4), 12.0)
    valid = torch.ones(1, 4, dtype=torch.bool)
    points = torch.tensor([[[3.5, 1.2], [7.0, 1.2], [11.0, 2.0], [2.0, 9.0]]])
    w = edge_weights(points, left, right, valid, torch.tensor([7.5]), band=2.0)
    assert w.tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_tv_of_a_ramp_and_of_a_constant():
    mask = torch.ones(4, 4, dtype=torch.bool)
    ramp = torch.arange(4.0).expand(4, 4).reshape(1, 1, 4, 4)
    # 12 horizontal pairs differ by 1, 12 vertical pairs by 0.
    torch.testing.assert_close(tv_loss(ramp, mask), torch.tensor(0.5))
    assert tv_loss(torch.full((2, 3, 4, 4), 7.0), mask) == 0
    # Pairs reaching outside the charts do not count.
    mask[:, 2:] = False
    # 4 horizontal pairs (columns 0-1) differ by 1, 6 vertical pairs by 0.
    torch.testing.assert_close(tv_loss(ramp, mask), torch.tensor(4 / 10))


def test_regularisers_inside_the_charts():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2] = True
    deformation = torch.zeros(1, 3, 4, 4)
    deformation[:, 0] = 3.0
    deformation[:, 1] = 4.0
    deformation[:, :, 2:] = 100.0  # outside the charts
    torch.testing.assert_close(deformation_magnitude(deformation, mask), torch.tensor(25.0))
    displacement = torch.full((2, 1, 4, 4), -0.5)
    displacement[:, :, 2:] = 9.0
    torch.testing.assert_close(displacement_regularizer(displacement, mask), torch.tensor(0.5))


def test_reflectance_flatness_is_zero_when_shading_explains_the_texture():
    torch.manual_seed(0)
    shading = 0.5 + torch.rand(1, 3, 16, 16)
    albedo = torch.tensor([0.6, 0.4, 0.3]).view(1, 3, 1, 1)
    texture = albedo * shading
    visibility = torch.ones(1, 1, 16, 16)
    assert reflectance_flatness(texture, shading, visibility) < 1e-6
    # Flat shading leaves the texture's relief in the albedo.
    assert reflectance_flatness(texture, torch.ones_like(shading), visibility) > 0.05
    # Invisible texels do not count.
    assert reflectance_flatness(texture, torch.ones_like(shading), torch.zeros_like(visibility)) == 0
