"""ArcFace IResNet: insightface arcface_torch state_dict layout and checkpoint loading (no real weights needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from networks.arcface import ARCFACE_LAYERS, IResNet, load_arcface_weights
from networks.recognition import build_recognition_net

# Keys of an arcface_torch backbone.pth, one per kind of layer.
EXPECTED_KEYS = (
    "conv1.weight",
    "bn1.running_var",
    "prelu.weight",
    "layer1.0.bn1.weight",
    "layer1.0.conv1.weight",
    "layer1.0.bn2.bias",
    "layer1.0.prelu.weight",
    "layer1.0.conv2.weight",
    "layer1.0.bn3.running_mean",
    "layer1.0.downsample.0.weight",
    "layer1.0.downsample.1.weight",
    "layer4.2.bn3.weight",
    "bn2.weight",
    "fc.weight",
    "fc.bias",
    "features.weight",
    "features.running_var",
)


def _meta_iresnet(depth: int) -> IResNet:
    # Built on the meta device: names and shapes without allocating 65M parameters.
    with torch.device("meta"):
        return IResNet(ARCFACE_LAYERS[depth])


@pytest.mark.parametrize(
    ("depth", "n_parameters", "last_blocks"),
    [(50, 43_590_848, (2, 3, 13, 2)), (100, 65_156_160, (2, 12, 29, 2))],
)
def test_state_dict_layout(depth: int, n_parameters: int, last_blocks: tuple[int, ...]) -> None:
    model = _meta_iresnet(depth)
    state = model.state_dict()
    assert set(EXPECTED_KEYS) <= set(state)
    assert sum(p.numel() for p in model.parameters()) == n_parameters
    for stage, last in enumerate(last_blocks, start=1):
        assert f"layer{stage}.{last}.conv2.weight" in state
        assert f"layer{stage}.{last + 1}.conv2.weight" not in state
        assert f"layer{stage}.1.downsample.0.weight" not in state
    assert state["fc.weight"].shape == (512, 512 * 7 * 7)
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert "template" not in state  # keeps strict loading of upstream checkpoints possible


@pytest.mark.slow
def test_r50_checkpoint_round_trip(tmp_path: Path) -> None:
    """Save like arcface_torch (fp16, DDP prefix), load through the factory, embed an image."""
    source = IResNet(ARCFACE_LAYERS[50])
    with torch.no_grad():
        source.features.running_mean.uniform_(-0.1, 0.1)
        source.layer3[5].prelu.weight.uniform_(0.1, 0.3)
    path = tmp_path / "backbone.pth"
    state = {"module." + k: (v.half() if v.is_floating_point() else v) for k, v in source.state_dict().items()}
    torch.save(state, path)

    model = build_recognition_net("arcface_r50", weights=path)
    loaded = model.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value.half().float() if value.is_floating_point() else value), key
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        embeddings = model(torch.rand(1, 3, 112, 112))
    assert embeddings.shape == (1, 512)
    assert torch.isfinite(embeddings).all()
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(1), atol=1e-5)


def test_checkpoint_of_another_depth_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "backbone.pth"
    torch.save(IResNet((1, 1, 2, 1)).state_dict(), path)
    with pytest.raises(ValueError, match="layer3.1"):
        load_arcface_weights(IResNet((1, 1, 1, 1)), path)
