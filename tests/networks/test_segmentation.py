"""The FOCUS segmentation U-Net: shapes, size, input check, and that it can learn a mask."""

from __future__ import annotations

import pytest
import torch

from networks.segmentation import SegmentationUNet, UNetSettings


def test_shapes_and_probability_range():
    net = SegmentationUNet(UNetSettings(base_channels=4, depth=2)).eval()
    images, rendered = torch.rand(2, 3, 16, 20), torch.rand(2, 3, 16, 20)
    logits = net(images, rendered)
    assert logits.shape == (2, 1, 16, 20)
    p = net.probability(images, rendered)
    assert ((p > 0) & (p < 1)).all()


def test_default_is_small_enough_for_a_cpu():
    params = sum(p.numel() for p in SegmentationUNet().parameters())
    assert 50_000 < params < 1_500_000


def test_rejects_sides_not_divisible_and_mismatched_inputs():
    net = SegmentationUNet(UNetSettings(base_channels=4, depth=3))
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.rand(1, 3, 12, 12), torch.rand(1, 3, 12, 12))
    with pytest.raises(ValueError, match="rendered"):
        net(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 8, 8))


@pytest.mark.slow
def test_learns_where_photo_and_render_disagree():
    """A few steps of BCE on 'outlier where the difference is large' must beat chance clearly."""
    torch.manual_seed(0)
    net = SegmentationUNet(UNetSettings(base_channels=8, depth=2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    images = torch.rand(4, 3, 16, 16)
    outlier = torch.rand(4, 1, 16, 16) > 0.7
    rendered = torch.where(outlier, torch.rand(4, 3, 16, 16), images)
    target = (~outlier).float()
    for _ in range(40):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(images, rendered), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    accuracy = ((net.probability(images, rendered) > 0.5).float() == target).float().mean()
    assert accuracy > 0.85


def test_shallow_features_are_frozen_and_resize():
    from networks.segmentation import ShallowFeatures

    body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
    features = ShallowFeatures(body, 127.5, 1 / 128, size=8)
    features.train()
    assert not features.body.training and not any(p.requires_grad for p in features.parameters())
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    out = features(images)
    assert out.shape == (2, 4, 8, 8)
    out.sum().backward()
    assert images.grad is not None  # differentiable in its input, as the masked terms need
