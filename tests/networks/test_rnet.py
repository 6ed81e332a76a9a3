"""R-Net: zero-initialised heads over a torchvision-layout ResNet, laid out as Deep3D's ReconNetWrapper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from face_model.coefficients import Coefficients, CoeffLayout
from networks.resnet import ResNetFeatures, resnet18
from networks.rnet import RNet, RNetOutput, head_sizes, load_pretrained_backbone

BFM = CoeffLayout(n_id=80, n_exp=64, n_tex=80, sh_channels=3)
SMALL = CoeffLayout(n_id=10, n_exp=10, n_tex=9, sh_channels=1)


@pytest.fixture(scope="module")
def rnet50() -> RNet:
    return RNet(BFM, backbone="resnet50").eval()


def test_head_sizes_follow_deep3d() -> None:
    assert head_sizes(BFM) == (80, 64, 80, 3, 27, 2, 1)
    assert sum(head_sizes(BFM)) == BFM.size == 257
    assert head_sizes(SMALL) == (10, 10, 9, 3, 9, 2, 1)
    assert head_sizes(CoeffLayout(n_id=5, n_exp=0, n_tex=0)) == (5, 3, 27, 2, 1)


def test_untrained_rnet_predicts_the_mean_face(rnet50: RNet) -> None:
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = rnet50(images)
    assert isinstance(out, RNetOutput) and isinstance(out.coeffs, Coefficients)
    assert out.flat.shape == (2, 257)
    assert torch.equal(out.flat, torch.zeros(2, 257))
    for name, size in BFM.sizes.items():
        assert getattr(out.coeffs, name).shape == (2, size)
    torch.testing.assert_close(BFM.join(out.coeffs), out.flat, rtol=0, atol=0)
    # The features the C-Net reads.
    assert isinstance(out.features, ResNetFeatures)
    assert out.features.stage1.shape == (2, 256, 16, 16)
    assert out.features.pooled.shape == (2, 2048)


def test_state_dict_is_deep3d_reconnetwrapper(rnet50: RNet) -> None:
    """Keys are ``backbone.<torchvision key without fc>`` and ``final_layers.{0..6}``, as Deep3D saves them."""
    state = rnet50.state_dict()
    backbone = [k for k in state if k.startswith("backbone.")]
    heads = [k for k in state if k.startswith("final_layers.")]
    assert len(backbone) == 318 and len(heads) == 14 and len(state) == 332
    assert not any(k.startswith("backbone.fc.") for k in state)
    assert state["backbone.layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    for index, size in enumerate((80, 64, 80, 3, 27, 2, 1)):
        assert state[f"final_layers.{index}.weight"].shape == (size, 2048, 1, 1)
        assert state[f"final_layers.{index}.bias"].shape == (size,)


def test_heads_are_zero_so_backbone_gets_no_gradient_until_they_move() -> None:
    rnet = RNet(SMALL, backbone="resnet18").train()
    images = torch.rand(2, 3, 64, 64)
    rnet(images).flat.square().add(rnet(images).flat).sum().backward()
    head_grad = sum(layer.weight.grad.abs().sum() for layer in rnet.final_layers)
    assert head_grad > 0
    assert rnet.backbone.conv1.weight.grad.abs().max() == 0

    rnet.zero_grad()
    with torch.no_grad():
        for layer in rnet.final_layers:
            layer.weight.normal_(std=0.01)
    out = rnet(images)
    assert out.flat.abs().max() > 0
    out.flat.sum().backward()
    assert rnet.backbone.conv1.weight.grad.abs().max() > 0
    assert rnet.backbone.layer4[1].conv2.weight.grad.abs().max() > 0


def test_small_layout_with_an_empty_group() -> None:
    layout = CoeffLayout(n_id=4, n_exp=0, n_tex=2, sh_channels=1)
    rnet = RNet(layout, backbone="resnet18").eval()
    with torch.no_grad():
        for layer in rnet.final_layers:
            layer.bias.fill_(1.0)
        out = rnet(torch.rand(3, 3, 64, 64))
    assert out.flat.shape == (3, layout.size)
    assert out.coeffs.expression.shape == (3, 0)
    assert torch.equal(out.flat, torch.ones(3, layout.size))


def test_pretrained_backbone_loads_imagenet_weights(tmp_path: Path) -> None:
    imagenet = resnet18()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(imagenet.state_dict(), path)
    rnet = load_pretrained_backbone(RNet(SMALL, backbone="resnet18"), path)
    torch.testing.assert_close(rnet.backbone.layer3[0].conv2.weight, imagenet.layer3[0].conv2.weight, rtol=0, atol=0)
    assert all(torch.equal(layer.weight, torch.zeros_like(layer.weight)) for layer in rnet.final_layers)


def test_missing_pretrained_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="resnet18-f37072fd.pth"):
        load_pretrained_backbone(RNet(SMALL, backbone="resnet18"), tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="'bundled' weights exist for the 'sface' backbone only"):
        load_pretrained_backbone(RNet(SMALL, backbone="resnet18"), "bundled")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown R-Net backbone 'vgg16'"):
        RNet(SMALL, backbone="vgg16")
    rnet = RNet(SMALL, backbone="resnet18")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        rnet(torch.rand(3, 64, 64))


def test_head_lookup_follows_the_layout() -> None:
    layout = CoeffLayout(n_id=5, n_exp=0, n_tex=4, sh_channels=1)
    rnet = RNet(layout, backbone="resnet18")
    assert rnet.head("identity").out_channels == 5 and rnet.head("albedo").out_channels == 4
    assert rnet.head("expression") is None
    assert rnet.head("translation_z").out_channels == 1
    with pytest.raises(ValueError, match="unknown head 'shape'"):
        rnet.head("shape")


def test_landmark_features_separate_shape_from_placement() -> None:
    from networks.rnet import LANDMARK_FEATURES, landmark_features

    points = torch.rand(2, 68, 2) * 40 + 10
    features = landmark_features(points, 64)
    assert features.shape == (2, LANDMARK_FEATURES)
    # Independent reference in numpy: centre on the centroid, divide by the RMS distance to it.
    p = points.double().numpy()
    centred = p - p.mean(axis=1, keepdims=True)
    rms = np.sqrt((centred**2).sum(-1).mean(-1))
    np.testing.assert_allclose(features[:, :136].numpy(), (centred / rms[:, None, None]).reshape(2, -1), atol=1e-5)
    np.testing.assert_allclose(features[:, 136:138].numpy(), p.mean(axis=1) / 64 - 0.5, atol=1e-6)
    np.testing.assert_allclose(features[:, 138].numpy(), np.log(rms / 64), atol=1e-5)
    # Moving and scaling the face about its centroid changes only the placement entries.
    moved = (points - points.mean(1, keepdim=True)) * 1.7 + points.mean(1, keepdim=True) + torch.tensor([3.0, -5.0])
    torch.testing.assert_close(landmark_features(moved, 64)[:, :136], features[:, :136], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"\(B, 68, 2\)"):
        landmark_features(torch.rand(2, 5, 2), 64)


@pytest.mark.parametrize("hidden", [0, 16])
def test_landmark_input_heads_read_the_landmarks(hidden: int) -> None:
    rnet = RNet(SMALL, backbone="resnet18", landmark_input=True, landmark_hidden=hidden).train()
    images, landmarks = torch.rand(2, 3, 64, 64), torch.rand(2, 68, 2) * 64
    out = rnet(images, landmarks)
    # Zero heads: still the mean face at the start.
    assert torch.equal(out.flat, torch.zeros(2, SMALL.size))
    assert rnet.head("identity").in_channels == 512 + (hidden or 139)
    with torch.no_grad():
        rnet.head("identity").weight.normal_(std=0.1)
    a = rnet(images, landmarks).coeffs.identity
    b = rnet(images, landmarks + torch.randn(2, 68, 2)).coeffs.identity
    assert not torch.allclose(a, b)
    a.sum().backward()
    assert rnet.head("identity").weight.grad[:, 512:].abs().sum() > 0
    with pytest.raises(ValueError, match="landmark_input=true"):
        rnet(images)
    # Without landmark input the landmarks are ignored, so callers may always pass them.
    plain = RNet(SMALL, backbone="resnet18").eval()
    torch.testing.assert_close(plain(images, landmarks).flat, plain(images).flat)
