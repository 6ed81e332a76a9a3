"""Deep3DFaceRecon_pytorch checkpoints load into RNet and reproduce Deep3D's ReconNetWrapper outputs.

The synthetic checkpoints are assembled the way Deep3D saves them: ``{"net_recon": state_dict, "opt_00":
..., "sched_00": ...}`` with a torchvision-keyed ResNet under ``backbone.`` and seven 1x1 heads under
``final_layers.``; the expected outputs are computed from those tensors directly, as ReconNetWrapper does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from face_model.coefficients import CoeffLayout
from networks.deep3d_import import DEEP3D_LAYOUT, export_deep3d_checkpoint, load_deep3d_checkpoint
from networks.resnet import ResNet, build_resnet
from networks.rnet import RNet

HEADS = (80, 64, 80, 3, 27, 2, 1)


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)


Heads = list[tuple[torch.Tensor, torch.Tensor]]
"""(weight (n, C, 1, 1), bias (n,)) of each 1x1 head."""


def _deep3d_parts(backbone: str, heads: tuple[int, ...] = HEADS) -> tuple[ResNet, Heads]:
    resnet = build_resnet(backbone, num_classes=None).eval()
    _randomise_batchnorm(resnet)
    layers = [(torch.randn(n, resnet.out_channels, 1, 1) * 0.01, torch.randn(n) * 0.1) for n in heads]
    return resnet, layers


def _net_recon(resnet: ResNet, layers: Heads, prefix: str = "") -> dict:
    state = {f"{prefix}backbone.{k}": v for k, v in resnet.state_dict().items()}
    for index, (weight, bias) in enumerate(layers):
        state[f"{prefix}final_layers.{index}.weight"] = weight
        state[f"{prefix}final_layers.{index}.bias"] = bias
    return state


def _checkpoint(net_recon: dict) -> dict:
    """An ``epoch_20.pth``-style dict, with the optimiser and scheduler entries Deep3D writes beside it."""
    return {
        "net_recon": net_recon,
        "opt_00": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0, 1]}]},
        "sched_00": {"step_size": 10, "gamma": 0.2, "base_lrs": [1e-4], "last_epoch": 20},
    }


def _deep3d_forward(resnet: ResNet, layers: Heads, images: torch.Tensor) -> torch.Tensor:
    """ReconNetWrapper: pooled (B, C, 1, 1) features through each 1x1 head, concatenated and flattened."""
    pooled = resnet.forward_features(images).pooled[:, :, None, None]
    outputs = [torch.nn.functional.conv2d(pooled, weight, bias) for weight, bias in layers]
    return torch.cat(outputs, dim=1).flatten(1)


@pytest.fixture(scope="module")
def rnet50() -> RNet:
    return RNet(DEEP3D_LAYOUT, backbone="resnet50").eval()


def test_released_resnet50_layout_loads_and_reproduces_outputs(tmp_path: Path, rnet50: RNet) -> None:
    resnet, layers = _deep3d_parts("resnet50")
    path = tmp_path / "epoch_20.pth"
    torch.save(_checkpoint(_net_recon(resnet, layers)), path)
    load_deep3d_checkpoint(rnet50, path)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = _deep3d_forward(resnet, layers, images)
        out = rnet50(images)
    torch.testing.assert_close(out.flat, expected, rtol=1e-4, atol=1e-5)
    # Deep3D's heads are id, exp, tex, angle, gamma, (tx, ty), tz: the named fields pick them out.
    torch.testing.assert_close(out.coeffs.identity, expected[:, :80], rtol=0, atol=0)
    torch.testing.assert_close(out.coeffs.lighting, expected[:, 227:254], rtol=0, atol=0)
    torch.testing.assert_close(out.coeffs.translation, expected[:, 254:], rtol=0, atol=0)


def test_module_prefix_and_bare_state_dict_load(tmp_path: Path) -> None:
    resnet, layers = _deep3d_parts("resnet18")
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = _deep3d_forward(resnet, layers, images)
    for name, content in [
        ("ddp.pth", _checkpoint(_net_recon(resnet, layers, prefix="module."))),
        ("bare.pth", _net_recon(resnet, layers)),
    ]:
        torch.save(content, tmp_path / name)
        rnet = RNet(DEEP3D_LAYOUT, backbone="resnet18").eval()
        load_deep3d_checkpoint(rnet, tmp_path / name)
        with torch.no_grad():
            torch.testing.assert_close(rnet(images).flat, expected, rtol=1e-4, atol=1e-5)


def test_rnet_with_another_layout_is_rejected(tmp_path: Path) -> None:
    rnet = RNet(CoeffLayout(n_id=10, n_exp=10, n_tex=9, sh_channels=1), backbone="resnet18")
    with pytest.raises(ValueError) as info:
        load_deep3d_checkpoint(rnet, tmp_path / "epoch_20.pth")
    message = str(info.value)
    assert "(80, 64, 80, 3, 27, 2, 1)" in message and "(10, 10, 9, 3, 9, 2, 1)" in message
    assert "size 44" in message and "CoeffLayout(n_id=80, n_exp=64, n_tex=80, sh_channels=3)" in message
    with pytest.raises(ValueError, match="257-dim BFM layout"):
        export_deep3d_checkpoint(rnet, tmp_path / "out.pth")


def test_checkpoint_with_other_heads_is_rejected(tmp_path: Path) -> None:
    resnet, layers = _deep3d_parts("resnet18", heads=(80, 64, 80, 3, 9, 2, 1))
    path = tmp_path / "mono.pth"
    torch.save(_checkpoint(_net_recon(resnet, layers)), path)
    with pytest.raises(ValueError, match=r"sizes \(80, 64, 80, 3, 9, 2, 1\) \(total 239\), expected .* \(total 257\)"):
        load_deep3d_checkpoint(RNet(DEEP3D_LAYOUT, backbone="resnet18"), path)


def test_backbone_mismatch_names_the_right_backbone(tmp_path: Path, rnet50: RNet) -> None:
    resnet, layers = _deep3d_parts("resnet18")
    path = tmp_path / "r18.pth"
    torch.save(_checkpoint(_net_recon(resnet, layers)), path)
    with pytest.raises(ValueError, match=r"resnet18 \(512 feature channels\).*backbone='resnet18'"):
        load_deep3d_checkpoint(rnet50, path)


def test_use_last_fc_checkpoint_is_rejected(tmp_path: Path) -> None:
    resnet = build_resnet("resnet18", num_classes=257)
    path = tmp_path / "last_fc.pth"
    torch.save({"net_recon": {f"backbone.{k}": v for k, v in resnet.state_dict().items()}}, path)
    with pytest.raises(ValueError, match="--use_last_fc"):
        load_deep3d_checkpoint(RNet(DEEP3D_LAYOUT, backbone="resnet18"), path)


def test_key_mismatch_is_listed_and_nothing_loads(tmp_path: Path) -> None:
    resnet, layers = _deep3d_parts("resnet18")
    state = _net_recon(resnet, layers)
    del state["backbone.layer3.1.bn2.weight"]
    state["backbone.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(_checkpoint(state), path)
    rnet = RNet(DEEP3D_LAYOUT, backbone="resnet18")
    with pytest.raises(ValueError) as info:
        load_deep3d_checkpoint(rnet, path)
    assert "backbone.layer3.1.bn2.weight" in str(info.value) and "backbone.extra.weight" in str(info.value)
    assert all(torch.equal(layer.bias, torch.zeros_like(layer.bias)) for layer in rnet.final_layers)


def test_missing_file_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_deep3d_checkpoint(RNet(DEEP3D_LAYOUT, backbone="resnet18"), tmp_path / "epoch_20.pth")
    message = str(info.value)
    assert "epoch_20.pth" in message and "github.com/sicxu/Deep3DFaceRecon_pytorch" in message


def test_not_a_deep3d_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"model": {"conv.weight": torch.zeros(1)}, "epoch": 3}, path)
    with pytest.raises(ValueError, match="'net_recon'.*found top-level keys \\['epoch', 'model'\\]"):
        load_deep3d_checkpoint(RNet(DEEP3D_LAYOUT, backbone="resnet18"), path)


def test_pickled_options_need_weights_only_false(tmp_path: Path) -> None:
    resnet, layers = _deep3d_parts("resnet18")
    content = _checkpoint(_net_recon(resnet, layers))
    content["opt"] = argparse.Namespace(net_recon="resnet18")
    path = tmp_path / "pickled.pth"
    torch.save(content, path)
    rnet = RNet(DEEP3D_LAYOUT, backbone="resnet18")
    with pytest.raises(ValueError, match="weights_only=False"):
        load_deep3d_checkpoint(rnet, path)
    load_deep3d_checkpoint(rnet, path, weights_only=False)
    torch.testing.assert_close(rnet.final_layers[4].bias, layers[4][1], rtol=0, atol=0)


def test_export_round_trip(tmp_path: Path) -> None:
    source = RNet(DEEP3D_LAYOUT, backbone="resnet18").eval()
    _randomise_batchnorm(source)
    with torch.no_grad():
        for layer in source.final_layers:
            layer.weight.normal_(std=0.01)
            layer.bias.normal_(std=0.1)
    path = tmp_path / "export" / "epoch_1.pth"
    export_deep3d_checkpoint(source, path)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert set(saved) == {"net_recon"}
    assert saved["net_recon"]["final_layers.6.weight"].shape == (1, 512, 1, 1)
    assert "backbone.layer4.1.bn2.running_var" in saved["net_recon"]
    target = RNet(DEEP3D_LAYOUT, backbone="resnet18").eval()
    load_deep3d_checkpoint(target, path)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(images).flat, source(images).flat, rtol=0, atol=0)
