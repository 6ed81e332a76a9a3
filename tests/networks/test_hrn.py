"""HRN's detail networks: shapes, bounds, zero start, gradients through the whole hierarchy."""

from __future__ import annotations

import pytest
import torch

from datamodules.detail import detail_layout
from networks.hrn import HRNDetail, HRNSettings, SmallUNet
from renderers.camera import PinholeCamera


def test_small_unet_starts_at_zero_and_stays_bounded():
    net = SmallUNet(7, 3, (4, 8, 8), scale=0.1)
    x = torch.randn(2, 7, 16, 16)
    assert net(x).shape == (2, 3, 16, 16) and net(x).abs().max() == 0
    torch.nn.init.normal_(net.out.weight, std=10.0)
    out = net(x)
    assert out.abs().max() <= 0.1 and out.abs().max() > 0.05
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 7, 18, 18))


def test_hierarchy_forward_and_gradients(ict_small):
    camera = PinholeCamera().resized(64, 64)
    layout = detail_layout(ict_small, 16, 32)
    detail = HRNDetail(ict_small, layout, camera, HRNSettings(widths=(4, 8)))
    coeffs = ict_small.layout.zeros(2)
    images = torch.rand(2, 3, 64, 64)
    out = detail(images, coeffs, backend="torch")
    assert out.deformation.shape == (2, 3, 16, 16) and out.displacement.shape == (2, 1, 32, 32)
    assert out.deformation.abs().max() == 0 and torch.equal(out.deformed, out.vertices)
    # A frontal mean face sees about half of its UV charts or more.
    assert (out.mid_input.visible_share > 0.3).all() and (out.high_input.visible_share > 0.3).all()
    (out.deformation.sum() + out.displacement.sum()).backward()
    assert detail.deformation_net.out.weight.grad.abs().sum() > 0
    assert detail.displacement_net.out.weight.grad.abs().sum() > 0


def test_a_face_out_of_view_gets_no_texture_and_no_error(ict_small):
    camera = PinholeCamera().resized(64, 64)
    detail = HRNDetail(ict_small, detail_layout(ict_small, 16, 32), camera, HRNSettings(widths=(4, 8)))
    coeffs = ict_small.layout.zeros(1)
    away = coeffs.replace(translation=torch.tensor([[20.0, 0.0, 0.0]]))  # two metres to the side
    out = detail(torch.rand(1, 3, 64, 64), away, backend="torch")
    assert float(out.mid_input.visible_share[0]) == 0 and out.high_input.texture.abs().max() == 0
    assert torch.isfinite(out.deformation).all() and torch.isfinite(out.displacement).all()
