"""C-Net (Deng et al. 2019 §5): per-image confidences for aggregating identity over an image set.

C-Net reads two R-Net activations of each image: the feature map after the first residual stage, which is
shallow and still local enough to show occlusion, blur and other damage to parts of the face, and the
globally pooled final feature, which encodes pose and lighting. The shallow map goes through three
stride-2 3x3 convolutions (with batch norm and ReLU) and global average pooling; the result is
concatenated with the deep feature and mapped by FC 512 -> FC n_out -> sigmoid to confidences in (0, 1).

Two heads, selected by ``kind``:

* ``"elementwise"``: n_out = n_id, one confidence per identity coefficient (the paper's S4; S2 and S3
  are computed from it, see `networks.aggregation`);
* ``"global"``: n_out = 1, one scalar per image (the paper's S1).

The last FC layer starts at zero (weights and bias), so every confidence starts at sigmoid(0) = 0.5 and an
untrained C-Net aggregates by plain averaging: training starts from the shape-averaging baseline and can
only move away from it where the loss asks for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from networks.resnet import ResNetFeatures

CNET_KINDS = ("elementwise", "global")


def rnet_feature_channels(backbone: nn.Module) -> tuple[int, int]:
    """(shallow, deep) channel counts that an R-Net backbone gives C-Net: its first stage's output (256 for
    ResNet-50, 64 for ResNet-18/34, 128 for SFace) and its pooled feature (2048 / 512 / 1024 grid^2)."""
    if hasattr(backbone, "shallow_channels"):
        return backbone.shallow_channels, backbone.out_channels
    block = getattr(backbone, "block", None)
    out_channels = getattr(backbone, "out_channels", None)
    if block is None or out_channels is None:
        raise TypeError(f"expected a networks.resnet.ResNet backbone (R-Net's), got {type(backbone).__name__}")
    return 64 * block.expansion, out_channels


class CNet(nn.Module):
    """Confidence network.

    Args:
        n_id: number of identity coefficients (the face model's ``layout.n_id``).
        shallow_channels: channels of R-Net's first-stage feature map (see `rnet_feature_channels`).
        deep_channels: channels of R-Net's pooled feature.
        kind: ``"elementwise"`` (n_id confidences per image) or ``"global"`` (one per image).
        conv_channels: output channels of the three stride-2 convolutions on the shallow map.
        hidden: width of the first fully connected layer (512 in the paper).
    """

    def __init__(
        self,
        n_id: int,
        shallow_channels: int,
        deep_channels: int,
        kind: str = "elementwise",
        conv_channels: Sequence[int] = (128, 256, 256),
        hidden: int = 512,
    ) -> None:
        super().__init__()
        if kind not in CNET_KINDS:
            raise ValueError(
                f"unknown C-Net kind {kind!r}; choose one of {CNET_KINDS} (element-wise = S2/S3/S4, global = S1)"
            )
        if n_id < 1:
            raise ValueError(f"n_id must be >= 1, got {n_id}")
        if len(conv_channels) != 3 or any(c < 1 for c in conv_channels):
            raise ValueError(f"conv_channels must give three positive widths, got {tuple(conv_channels)}")
        self.n_id = n_id
        self.kind = kind
        self.shallow_channels = shallow_channels
        self.deep_channels = deep_channels
        self.n_out = n_id if kind == "elementwise" else 1
        layers: list[nn.Module] = []
        in_channels = shallow_channels
        for out_channels in conv_channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = out_channels
        self.shallow = nn.Sequential(*layers)
        self.fc = nn.Linear(in_channels + deep_channels, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.out = nn.Linear(hidden, self.n_out)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def logits(self, stage1: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """(B, C1, h, w) shallow map and (B, C) pooled feature -> (B, n_out) pre-sigmoid scores."""
        if stage1.ndim != 4 or stage1.shape[1] != self.shallow_channels:
            raise ValueError(
                f"C-Net expects the shallow feature map as (B, {self.shallow_channels}, h, w), got "
                f"{tuple(stage1.shape)}; was it built for this R-Net backbone (rnet_feature_channels)?"
            )
        if pooled.shape != (stage1.shape[0], self.deep_channels):
            raise ValueError(
                f"C-Net expects the pooled feature as ({stage1.shape[0]}, {self.deep_channels}), "
                f"got {tuple(pooled.shape)}"
            )
        shallow = self.shallow(stage1).mean(dim=(2, 3))
        return self.out(self.relu(self.fc(torch.cat([shallow, pooled], dim=1))))

    def forward(self, stage1: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """(B, C1, h, w), (B, C) -> (B, n_out) confidences in (0, 1)."""
        return torch.sigmoid(self.logits(stage1, pooled))

    def from_features(self, features: ResNetFeatures) -> torch.Tensor:
        """Confidences from an `RNetOutput.features` -> (B, n_out)."""
        return self(features.stage1, features.pooled)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, n_id={self.n_id}, n_out={self.n_out}"
