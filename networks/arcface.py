"""ArcFace IResNet-50/100 (insightface ``arcface_torch`` layout), the recognition network of Deng et al. 2019.

The module's parameter names match the ``backbone.pth`` files written by insightface's
``recognition/arcface_torch`` training code (``conv1``, ``bn1``, ``prelu``, ``layer1..4``
of ``IBasicBlock`` with ``bn1, conv1, bn2, prelu, conv2, bn3, downsample``, then ``bn2``,
``dropout``, ``fc``, ``features``), so those files load with strict key matching.

Weights are not shipped: download e.g. ``ms1mv3_arcface_r50_fp16/backbone.pth`` (or the
r100 one) from the arcface_torch model zoo linked in
https://github.com/deepinsight/insightface/tree/master/recognition/arcface_torch and pass its
path. insightface's code is MIT, but its pretrained models are released for non-commercial
research use only; check the terms of the checkpoint you download.

Input: 112x112 RGB aligned to the ArcFace five-point template, normalised as
``(x - 0.5) / 0.5`` for ``x`` in ``[0, 1]`` (arcface_torch's ``(img / 255 - 0.5) / 0.5``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from errors import InvalidInputError, MissingFileError
from networks.recognition import ARCFACE_TEMPLATE_112, RecognitionNet, l2_normalise

ARCFACE_LAYERS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}
ARCFACE_WEIGHTS_HINT = (
    "download backbone.pth of an arcface_torch model (e.g. ms1mv3_arcface_r50_fp16 for r50, "
    "ms1mv3_arcface_r100_fp16 for r100) from the insightface model zoo linked at "
    "https://github.com/deepinsight/insightface/tree/master/recognition/arcface_torch "
    "and pass its path as weights"
)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block of IResNet: BN-conv-BN-PReLU-conv(stride)-BN + shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = _conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-5)
        self.prelu = nn.PReLU(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels, eps=1e-5)
        # Only the first block of a stage changes resolution/width and needs a projection;
        # an attribute that is None adds no state_dict keys, as in the upstream checkpoints.
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(channels, eps=1e-5),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(RecognitionNet):
    """IResNet backbone producing 512-D ArcFace embeddings from 112x112 crops."""

    def __init__(self, layers: tuple[int, int, int, int], embedding_dim: int = 512) -> None:
        super().__init__((112, 112), torch.tensor(ARCFACE_TEMPLATE_112))
        self.embedding_dim = embedding_dim
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        widths = (64, 128, 256, 512)
        in_channels = 64
        for index, (width, blocks) in enumerate(zip(widths, layers), start=1):
            stage = [IBasicBlock(in_channels, width, stride=2)]
            stage += [IBasicBlock(width, width, stride=1) for _ in range(blocks - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*stage))
            in_channels = width
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        # arcface_torch trains with dropout 0; kept so the module tree mirrors the checkpoint's.
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(512 * 7 * 7, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.check_input(images)
        x = (images - 0.5) / 0.5
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return l2_normalise(self.features(self.fc(x)))


def load_arcface_weights(model: IResNet, weights: str | Path) -> IResNet:
    """Load an arcface_torch ``backbone.pth`` (fp16 or fp32) into ``model`` with strict key matching."""
    path = Path(weights)
    if not path.is_file():
        raise MissingFileError(f"ArcFace weights not found at {path}: {ARCFACE_WEIGHTS_HINT}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    # Checkpoints saved from DataParallel/DistributedDataParallel prefix every key.
    state = {key.removeprefix("module."): value for key, value in state.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise InvalidInputError(
            f"{path} does not match IResNet with layers {[len(getattr(model, f'layer{i}')) for i in range(1, 5)]}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} "
            "(an r100 checkpoint needs arcface_r100, an r50 one arcface_r50)"
        )
    mismatched = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if mismatched:
        raise InvalidInputError(f"{path}: shape mismatch for {mismatched[:5]} (is this an arcface_torch backbone.pth?)")
    # load_state_dict casts fp16 checkpoints to the module's fp32.
    model.load_state_dict(state, strict=True)
    return model


def build_arcface(depth: int, weights: str | Path | None) -> IResNet:
    if depth not in ARCFACE_LAYERS:
        raise InvalidInputError(f"unsupported IResNet depth {depth}; choose one of {sorted(ARCFACE_LAYERS)}")
    if weights is None:
        raise MissingFileError(f"arcface_r{depth} needs weights (backbone.pth): {ARCFACE_WEIGHTS_HINT}")
    # Checked before building: an IResNet-100 takes seconds to initialise.
    if not Path(weights).is_file():
        raise MissingFileError(f"ArcFace weights not found at {weights}: {ARCFACE_WEIGHTS_HINT}")
    return load_arcface_weights(IResNet(ARCFACE_LAYERS[depth]), weights)
