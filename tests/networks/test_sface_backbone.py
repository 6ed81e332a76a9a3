"""The SFace trunk as an R-Net backbone: same activations as the verified SFace port, freezing, R-Net and
C-Net wiring."""

from __future__ import annotations

import pytest
import torch

from face_model.coefficients import CoeffLayout
from networks.cnet import CNet, rnet_feature_channels
from networks.recognition import l2_normalise
from networks.rnet import RNet, load_pretrained_backbone
from networks.sface import build_sface
from networks.sface_backbone import SFaceBackbone

LAYOUT = CoeffLayout(n_id=6, n_exp=4, n_tex=5, sh_channels=3)


@pytest.fixture(scope="module")
def sface():
    return build_sface().eval()


def test_pretrained_trunk_reproduces_the_sface_embedding(sface):
    backbone = SFaceBackbone.build("bundled", pooled_grid=7).eval()
    images = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = backbone.forward_features(images)
        # SFace's own head reads the same 7x7x1024 map, so the embedding must come out unchanged.
        embedding = l2_normalise(sface.bn_embedding(sface.fc(torch.flatten(features.stage4, 1))))
        torch.testing.assert_close(embedding, sface(images), atol=1e-5, rtol=1e-4)
    assert features.stage1.shape == (3, 128, 56, 56) and features.stage2.shape == (3, 256, 28, 28)
    assert features.stage3.shape == (3, 512, 14, 14) and features.stage4.shape == (3, 1024, 7, 7)
    # A 7x7 grid over a 7x7 map is the map itself.
    torch.testing.assert_close(features.pooled, features.stage4.flatten(1))


def test_grid_pooling_averages_each_cell():
    backbone = SFaceBackbone(pooled_grid=2).eval()
    with torch.no_grad():
        features = backbone.forward_features(torch.rand(1, 3, 64, 64))
    stage4 = features.stage4  # (1, 1024, 4, 4)
    expected = stage4.reshape(1, 1024, 2, 2, 2, 2).mean((3, 5)).flatten(1)
    torch.testing.assert_close(features.pooled, expected)
    assert backbone.out_channels == features.pooled.shape[1] == 4096


def test_frozen_layers_get_no_gradient_while_their_batchnorm_statistics_adapt():
    backbone = SFaceBackbone(pooled_grid=1, frozen_layers=20).train()
    frozen_stats = backbone.body[3].bn.running_mean.clone()
    frozen_weight = backbone.body[3].conv.weight.clone()
    backbone.forward_features(torch.rand(2, 3, 48, 48)).pooled.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in backbone.body[:20].parameters())
    assert all(p.grad is not None for p in backbone.body[20:].parameters())
    assert not torch.equal(backbone.body[3].bn.running_mean, frozen_stats)
    torch.testing.assert_close(backbone.body[3].conv.weight, frozen_weight)
    with pytest.raises(ValueError, match="frozen_layers"):
        SFaceBackbone(frozen_layers=28)


def test_rnet_with_the_sface_backbone_starts_at_the_mean_face_and_feeds_cnet():
    rnet = RNet(LAYOUT, backbone="sface", frozen_layers=5).eval()
    output = rnet(torch.rand(2, 3, 112, 112))
    assert output.flat.shape == (2, LAYOUT.size) and torch.count_nonzero(output.flat) == 0
    shallow, deep = rnet_feature_channels(rnet.backbone)
    assert (shallow, deep) == (128, 4096)
    cnet = CNet(LAYOUT.n_id, shallow, deep)
    confidences = cnet(output.features.stage1, output.features.pooled)
    assert confidences.shape == (2, LAYOUT.n_id)
    with pytest.raises(ValueError, match="sface"):
        RNet(LAYOUT, backbone="resnet18", frozen_layers=3)
    with pytest.raises(ValueError, match="unknown R-Net backbone"):
        RNet(LAYOUT, backbone="mobilenet")


def test_rnet_constructor_reads_no_weights_and_load_pretrained_backbone_does():
    rnet = RNet(LAYOUT, backbone="sface", frozen_layers=5, pooled_grid=1)
    reference = SFaceBackbone.build("bundled", pooled_grid=1)
    probe = "body.10.conv.weight"
    assert not torch.equal(rnet.backbone.state_dict()[probe], reference.state_dict()[probe])
    assert load_pretrained_backbone(rnet, "bundled") is rnet
    for name, value in reference.state_dict().items():
        assert torch.equal(rnet.backbone.state_dict()[name], value), name
    assert all(torch.count_nonzero(layer.weight) == 0 for layer in rnet.final_layers)
