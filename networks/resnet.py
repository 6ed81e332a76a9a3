"""ResNet-18/34/50 with torchvision's parameter names, so its ImageNet checkpoints load unchanged.

torchvision itself does not import alongside the pinned torch, so the architecture is rebuilt here.
The state_dict keys (``conv1``, ``bn1``, ``layer{1..4}.{i}.conv{1,2,3}``/``bn{1,2,3}``,
``layer{k}.0.downsample.{0,1}``, ``fc``) and the block design (ResNet v1.5: the stride of a bottleneck
sits on its 3x3 convolution) match torchvision, so ``resnet50-0676ba61.pth`` and
``resnet50-19c8e357.pth`` load with ``strict=True``. `forward_features` also returns the intermediate
stages, which the C-Net reads.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from errors import InvalidInputError, MissingFileError

IMAGENET_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}
"""torchvision's ImageNet weights; for ResNet-50 the older ``resnet50-19c8e357.pth`` loads too."""


@dataclass(frozen=True)
class ResNetFeatures:
    """Intermediate activations of a ResNet for (B, 3, H, W) input; C = 4 for ResNet-50, 1 for 18/34.

    stage1: (B, 64 C, H/4, W/4)   output of layer1 (256 channels for ResNet-50), read by the C-Net
    stage2: (B, 128 C, H/8, W/8)  output of layer2
    stage3: (B, 256 C, H/16, W/16) output of layer3
    stage4: (B, 512 C, H/32, W/32) output of layer4 (2048 channels for ResNet-50)
    pooled: (B, 512 C)            global average of stage4, the input of the classifier / R-Net heads

    Spatial sizes round up (each stride-2 step maps n to ceil(n / 2)).
    """

    stage1: torch.Tensor
    stage2: torch.Tensor
    stage3: torch.Tensor
    stage4: torch.Tensor
    pooled: torch.Tensor


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, as torchvision's v1.5), 1x1 expand by 4, with a residual connection."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """A ResNet whose state_dict matches torchvision's model of the same depth.

    Args:
        block: `BasicBlock` (ResNet-18/34) or `Bottleneck` (ResNet-50).
        layers: number of blocks in each of the four stages, e.g. (3, 4, 6, 3) for ResNet-50.
        num_classes: outputs of the final linear layer ``fc``; None builds no ``fc`` (a feature
            extractor whose `forward` returns the pooled features, as Deep3D's R-Net backbone).
    """

    def __init__(
        self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int], num_classes: int | None = 1000
    ):
        super().__init__()
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"layers must give four positive block counts, e.g. (3, 4, 6, 3); got {layers}")
        self.block = block
        self.layers = tuple(layers)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        stages = []
        for index, (width, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stage, in_channels = self._make_stage(block, in_channels, width, blocks, stride=1 if index == 0 else 2)
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = in_channels
        self.fc = nn.Linear(in_channels, num_classes) if num_classes is not None else None

        # He initialisation as torchvision (fan_out), so from-scratch training behaves like it.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def _make_stage(
        block: type[BasicBlock] | type[Bottleneck], in_channels: int, width: int, blocks: int, stride: int
    ) -> tuple[nn.Sequential, int]:
        out_channels = width * block.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            # Module indices 0 and 1 give torchvision's ``downsample.0`` / ``downsample.1`` keys.
            downsample = nn.Sequential(_conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
        modules = [block(in_channels, width, stride, downsample)]
        modules += [block(out_channels, width) for _ in range(1, blocks)]
        return nn.Sequential(*modules), out_channels

    def forward_features(self, x: torch.Tensor) -> ResNetFeatures:
        """(B, 3, H, W) image -> every stage's activations and the pooled feature (no ``fc``)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNet expects images of shape (B, 3, H, W), got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stage1 = self.layer1(x)
        stage2 = self.layer2(stage1)
        stage3 = self.layer3(stage2)
        stage4 = self.layer4(stage3)
        pooled = stage4.mean(dim=(2, 3))
        return ResNetFeatures(stage1=stage1, stage2=stage2, stage3=stage3, stage4=stage4, pooled=pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes) logits as torchvision, or (B, out_channels) without ``fc``."""
        pooled = self.forward_features(x).pooled
        return pooled if self.fc is None else self.fc(pooled)


_ARCHITECTURES: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}
RESNET_NAMES = tuple(_ARCHITECTURES)


def build_resnet(name: str, num_classes: int | None = 1000) -> ResNet:
    """A randomly initialised ResNet by torchvision name ("resnet18", "resnet34", "resnet50")."""
    if name not in _ARCHITECTURES:
        raise InvalidInputError(f"unknown ResNet {name!r}; choose one of {list(RESNET_NAMES)}")
    block, layers = _ARCHITECTURES[name]
    return ResNet(block, layers, num_classes=num_classes)


def resnet18(num_classes: int | None = 1000) -> ResNet:
    return build_resnet("resnet18", num_classes)


def resnet34(num_classes: int | None = 1000) -> ResNet:
    return build_resnet("resnet34", num_classes)


def resnet50(num_classes: int | None = 1000) -> ResNet:
    return build_resnet("resnet50", num_classes)


def _architecture_name(model: ResNet) -> str | None:
    for name, (block, layers) in _ARCHITECTURES.items():
        if model.block is block and model.layers == layers:
            return name
    return None


def load_state_dict_checked(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(state_dict, strict=True)``, but a mismatch raises one ValueError naming
    every missing, unexpected and wrongly shaped key, and nothing is loaded unless everything fits.

    BatchNorm ``num_batches_tracked`` counters may be absent (checkpoints from before PyTorch 0.4, such
    as torchvision's ``resnet50-19c8e357.pth``, lack them); they are then reset to zero.
    """
    expected = module.state_dict()
    state = dict(state_dict)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise InvalidInputError(
            f"{source} does not match the {type(module).__name__}: "
            f"{len(missing)} missing keys {_preview(missing)}, "
            f"{len(unexpected)} unexpected keys {_preview(unexpected)}, "
            f"{len(mismatched)} shape mismatches {_preview(mismatched)}"
        )
    module.load_state_dict(state, strict=True)


def _preview(items: list[str], limit: int = 12) -> str:
    if len(items) <= limit:
        return str(items)
    return f"{items[:limit]} (and {len(items) - limit} more)"


def load_torch_file(path: str | Path, what: str, where_to_get_it: str, weights_only: bool = True) -> object:
    """`torch.load` on CPU with a FileNotFoundError that says where the file comes from.

    ``weights_only=True`` refuses arbitrary pickled objects; pass False only for a file you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} not found at {path}; {where_to_get_it}")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as error:
        if weights_only:
            raise InvalidInputError(
                f"torch.load(weights_only=True) could not read {path}: {error}. If it is a checkpoint you trust "
                "that pickles objects other than tensors, load it with weights_only=False"
            ) from error
        raise


def load_imagenet_weights(model: ResNet, path: str | Path) -> None:
    """Load a torchvision ImageNet checkpoint (e.g. ``resnet50-0676ba61.pth``) into ``model``, in place.

    A model built without ``fc`` (``num_classes=None``) skips the file's classifier, as Deep3D does when
    it initialises its R-Net backbone. Raises FileNotFoundError when the file is absent and ValueError
    when its keys or shapes do not match the model.
    """
    name = _architecture_name(model) or "resnet50"
    state = load_torch_file(
        path,
        "ImageNet ResNet weights",
        f"download torchvision's {name} checkpoint from {IMAGENET_URLS[name]}"
        + (" (or the older https://download.pytorch.org/models/resnet50-19c8e357.pth)" if name == "resnet50" else ""),
    )
    if not isinstance(state, Mapping):
        raise InvalidInputError(
            f"{path} should hold a torchvision state_dict (a dict of tensors), got {type(state).__name__}"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if model.fc is None:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    load_state_dict_checked(model, state, f"ImageNet checkpoint {path}")
