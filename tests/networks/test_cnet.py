"""C-Net: shapes, zero-initialised start (confidence 0.5 everywhere, so plain averaging), the S1 head, and
gradients that reach C-Net through the aggregation but never R-Net."""

import pytest
import torch

from face_model.coefficients import CoeffLayout
from networks.aggregation import mean_aggregate, s1_aggregate, s4_aggregate
from networks.cnet import CNet, rnet_feature_channels
from networks.rnet import RNet

LAYOUT = CoeffLayout(n_id=6, n_exp=4, n_tex=5)
SIZE = 32


@pytest.fixture(scope="module")
def rnet():
    torch.manual_seed(0)
    net = RNet(LAYOUT, backbone="resnet18")
    # R-Net's heads start at zero too; random heads give distinct identities per picture.
    for layer in net.final_layers:
        torch.nn.init.normal_(layer.weight, std=0.05)
    return net.eval()


def make_cnet(rnet, kind="elementwise"):
    return CNet(LAYOUT.n_id, *rnet_feature_channels(rnet.backbone), kind=kind, conv_channels=(8, 8, 8), hidden=16)


def test_feature_channels_of_each_backbone():
    assert rnet_feature_channels(RNet(LAYOUT, backbone="resnet18").backbone) == (64, 512)
    assert rnet_feature_channels(RNet(LAYOUT, backbone="resnet50").backbone) == (256, 2048)
    with pytest.raises(TypeError, match="ResNet"):
        rnet_feature_channels(torch.nn.Linear(2, 2))


def test_shapes_and_range(rnet):
    features = rnet(torch.rand(3, 3, SIZE, SIZE)).features
    for kind, width in (("elementwise", LAYOUT.n_id), ("global", 1)):
        cnet = make_cnet(rnet, kind)
        torch.nn.init.normal_(cnet.out.weight, std=10.0)
        confidence = cnet.from_features(features)
        assert confidence.shape == (3, width)
        assert ((confidence > 0) & (confidence < 1)).all()


def test_zero_initialised_start_is_exactly_plain_averaging(rnet):
    images = torch.rand(2 * 4, 3, SIZE, SIZE)
    out = rnet(images)
    identity = out.coeffs.identity.reshape(2, 4, -1)
    valid = torch.ones(2, 4, dtype=torch.bool)
    for kind in ("elementwise", "global"):
        confidence = make_cnet(rnet, kind).train().from_features(out.features)
        assert torch.equal(confidence, torch.full_like(confidence, 0.5))
        aggregate = s4_aggregate if kind == "elementwise" else s1_aggregate
        torch.testing.assert_close(
            aggregate(identity, confidence.reshape(2, 4, -1), valid), mean_aggregate(identity, valid), rtol=0, atol=1e-7
        )


def test_gradients_reach_cnet_through_the_aggregation_and_not_rnet(rnet):
    cnet = make_cnet(rnet)
    images = torch.rand(2 * 3, 3, SIZE, SIZE)
    with torch.no_grad():
        out = rnet(images)
    identity = out.coeffs.identity.reshape(2, 3, -1)
    target = torch.randn(2, LAYOUT.n_id)
    aggregated = s4_aggregate(
        identity, cnet.from_features(out.features).reshape(2, 3, -1), torch.ones(2, 3, dtype=torch.bool)
    )
    (aggregated - target).square().sum().backward()
    # At the zero start only the last layer gets a gradient (the earlier ones are multiplied by its zeros).
    assert cnet.out.weight.grad.abs().sum() > 0 and cnet.out.bias.grad.abs().sum() > 0
    assert all(p.grad is None for p in rnet.parameters())


def test_wrong_feature_shapes_name_the_problem(rnet):
    cnet = make_cnet(rnet)
    with pytest.raises(ValueError, match="shallow feature map"):
        cnet(torch.rand(2, 32, 8, 8), torch.rand(2, 512))
    with pytest.raises(ValueError, match="pooled feature"):
        cnet(torch.rand(2, 64, 8, 8), torch.rand(2, 256))
    with pytest.raises(ValueError, match="unknown C-Net kind"):
        CNet(4, 64, 512, kind="vector")
