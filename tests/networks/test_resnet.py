"""The ResNet matches torchvision's parameter layout and loads its ImageNet checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from networks.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    ResNetFeatures,
    build_resnet,
    load_imagenet_weights,
    resnet18,
    resnet50,
)


def _bn(prefix: str, channels: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.{name}", (channels,)) for name in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{prefix}.num_batches_tracked", ())
    ]


def torchvision_resnet50_keys() -> list[tuple[str, tuple[int, ...]]]:
    """torchvision's resnet50().state_dict() as (key, shape), in order, written out from its architecture
    (stem, four stages of v1.5 bottlenecks with a projection shortcut on each first block, fc)."""
    spec = [("conv1.weight", (64, 3, 7, 7))] + _bn("bn1", 64)
    in_channels = 64
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for block in range(blocks):
            p = f"layer{stage}.{block}"
            spec += [(f"{p}.conv1.weight", (width, in_channels, 1, 1))] + _bn(f"{p}.bn1", width)
            spec += [(f"{p}.conv2.weight", (width, width, 3, 3))] + _bn(f"{p}.bn2", width)
            spec += [(f"{p}.conv3.weight", (4 * width, width, 1, 1))] + _bn(f"{p}.bn3", 4 * width)
            if block == 0:
                spec += [(f"{p}.downsample.0.weight", (4 * width, in_channels, 1, 1))]
                spec += _bn(f"{p}.downsample.1", 4 * width)
            in_channels = 4 * width
    return spec + [("fc.weight", (1000, 2048)), ("fc.bias", (1000,))]


@pytest.fixture(scope="module")
def r50() -> ResNet:
    return resnet50().eval()


def test_resnet50_state_dict_matches_torchvision(r50: ResNet) -> None:
    state = r50.state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == torchvision_resnet50_keys()
    assert len(state) == 320
    assert sum(k.endswith("num_batches_tracked") for k in state) == 53
    assert state["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["layer3.5.bn3.running_var"].shape == (1024,)
    assert state["fc.weight"].shape == (1000, 2048)
    # torchvision's published parameter count for resnet50.
    assert sum(p.numel() for p in r50.parameters()) == 25_557_032


def test_resnet50_is_v1_5(r50: ResNet) -> None:
    """torchvision strides the 3x3 convolution of a bottleneck, not the first 1x1 (the weights depend on it)."""
    first = r50.layer2[0]
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)
    assert first.downsample[0].stride == (2, 2)


@pytest.mark.parametrize(("name", "n_keys", "n_params"), [("resnet18", 122, 11_689_512), ("resnet34", 218, 21_797_672)])
def test_basic_block_resnets_match_torchvision_sizes(name: str, n_keys: int, n_params: int) -> None:
    model = build_resnet(name)
    state = model.state_dict()
    assert len(state) == n_keys
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert "layer1.0.conv3.weight" not in state and "layer1.0.downsample.0.weight" not in state
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert state["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert model.block is BasicBlock


def test_forward_features_shapes(r50: ResNet) -> None:
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        features = r50.forward_features(x)
        logits = r50(x[:1])
    assert isinstance(features, ResNetFeatures)
    assert features.stage1.shape == (2, 256, 16, 16)
    assert features.stage2.shape == (2, 512, 8, 8)
    assert features.stage3.shape == (2, 1024, 4, 4)
    assert features.stage4.shape == (2, 2048, 2, 2)
    assert features.pooled.shape == (2, 2048)
    torch.testing.assert_close(features.pooled, features.stage4.mean(dim=(2, 3)))
    torch.testing.assert_close(logits, r50.fc(features.pooled[:1]), rtol=1e-4, atol=1e-4)
    assert r50.block is Bottleneck


def test_without_fc_returns_pooled_features() -> None:
    model = resnet18(num_classes=None).eval()
    assert model.fc is None and not any(k.startswith("fc.") for k in model.state_dict())
    x = torch.rand(1, 3, 64, 48)
    with torch.no_grad():
        out = model(x)
        features = model.forward_features(x)
    assert out.shape == (1, 512)
    assert features.stage1.shape == (1, 64, 16, 12)
    torch.testing.assert_close(out, features.pooled)


def test_channels_last_gives_same_output() -> None:
    model = resnet18().eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        actual = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    """Non-trivial running statistics, so that a load that skipped buffers would be noticed."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)


def test_load_imagenet_weights_round_trip(tmp_path: Path, r50: ResNet) -> None:
    _randomise_batchnorm(r50)
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(r50.state_dict(), path)
    # A blanked copy is much cheaper to make than a second randomly initialised ResNet-50.
    fresh = copy.deepcopy(r50)
    with torch.no_grad():
        for tensor in fresh.state_dict().values():
            tensor.zero_()
    load_imagenet_weights(fresh, path)
    expected = r50.state_dict()
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_load_imagenet_weights_skips_fc_for_a_feature_extractor(tmp_path: Path) -> None:
    source = resnet18().eval()
    _randomise_batchnorm(source)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    backbone = resnet18(num_classes=None).eval()
    load_imagenet_weights(backbone, path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), source.forward_features(x).pooled, rtol=0, atol=0)


def test_pre_0_4_checkpoint_without_batch_counters_loads(tmp_path: Path) -> None:
    """torchvision's old resnet50-19c8e357.pth has no num_batches_tracked entries."""
    source = resnet18()
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    target = resnet18()
    load_imagenet_weights(target, path)
    torch.testing.assert_close(target.layer3[1].bn2.running_var, source.layer3[1].bn2.running_var)


def test_missing_file_names_the_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"resnet50-0676ba61\.pth") as info:
        load_imagenet_weights(resnet50(num_classes=None), tmp_path / "nope.pth")
    assert "nope.pth" in str(info.value) and "download.pytorch.org" in str(info.value)


def test_mismatched_keys_are_listed_and_nothing_loads(tmp_path: Path) -> None:
    source = resnet18()
    state = source.state_dict()
    del state["layer2.1.bn1.running_mean"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    target = resnet18()
    before = target.layer1[0].conv1.weight.clone()
    with pytest.raises(ValueError) as info:
        load_imagenet_weights(target, path)
    message = str(info.value)
    assert "layer2.1.bn1.running_mean" in message and "missing" in message
    assert "layer5.0.conv1.weight" in message and "unexpected" in message
    assert "conv1.weight: file (64, 3, 3, 3) vs model (64, 3, 7, 7)" in message
    torch.testing.assert_close(target.layer1[0].conv1.weight, before, rtol=0, atol=0)


def test_wrong_depth_checkpoint_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), path)
    with pytest.raises(ValueError, match="missing keys"):
        load_imagenet_weights(resnet50(), path)


def test_not_a_state_dict_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match="state_dict"):
        load_imagenet_weights(resnet18(), path)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown ResNet 'resnet101'"):
        build_resnet("resnet101")
    with pytest.raises(ValueError, match="four positive block counts"):
        ResNet(Bottleneck, (3, 4, 6))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        resnet18().forward_features(torch.rand(1, 1, 64, 64))
