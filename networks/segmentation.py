"""FOCUS's outlier-segmentation network: a small U-Net deciding, per pixel, whether the face model should
explain it (face) or treat it as an outlier (occluder, hair, glasses, beard, make-up, extreme shadow).

Input: the photo crop I, the face model's render I' and their difference I - I' (9 channels); output: the
(B, 1, H, W) probability of "face". FOCUS's U-Net (64 to 1,024 channels over five levels, photo and render
only) is about 250 times larger than needed on a CPU; this one keeps its shape (double 3x3 convolutions with
batch norm, max-pool down, upsample and concatenate up) at 8 to 64 channels over four levels, and feeds
the difference as well, which the network would otherwise have to learn to compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def _check_crops(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")


@dataclass(frozen=True)
class UNetSettings:
    """base_channels: channels of the first level, doubled at each level down; depth: number of poolings
    (the crop side must be divisible by ``2**depth``); with_difference: feed ``I - I'`` as three more channels."""

    base_channels: int = 8
    depth: int = 3
    with_difference: bool = True

    def __post_init__(self) -> None:
        if self.base_channels < 1 or self.depth < 1:
            raise ValueError(f"base_channels and depth must be >= 1, got {self.base_channels} and {self.depth}")

    @property
    def in_channels(self) -> int:
        return 9 if self.with_difference else 6


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SegmentationUNet(nn.Module):
    """(B, 3, H, W) photo and (B, 3, H, W) render, both in [0, 1] -> (B, 1, H, W) logits of "face".

    `probability` applies the sigmoid. H and W must be multiples of ``2**settings.depth``.
    """

    def __init__(self, settings: UNetSettings = UNetSettings()) -> None:
        super().__init__()
        self.settings = settings
        widths = [settings.base_channels * 2**k for k in range(settings.depth + 1)]
        self.down = nn.ModuleList([_double_conv(settings.in_channels, widths[0])])
        self.down.extend(_double_conv(widths[k - 1], widths[k]) for k in range(1, len(widths)))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[k], widths[k - 1], 2, stride=2) for k in range(len(widths) - 1, 0, -1)
        )
        self.merge = nn.ModuleList(
            _double_conv(2 * widths[k - 1], widths[k - 1]) for k in range(len(widths) - 1, 0, -1)
        )
        self.head = nn.Conv2d(widths[0], 1, 1)
        # Start out calling most pixels face (sigmoid(2) = 0.88), as the pre-trained encoder explains most of them.
        nn.init.constant_(self.head.bias, 2.0)

    def inputs(self, images: torch.Tensor, rendered: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) network input."""
        _check_crops(images)
        if rendered.shape != images.shape:
            raise ValueError(f"rendered must have the images' shape {tuple(images.shape)}, got {tuple(rendered.shape)}")
        parts = [images, rendered] + ([images - rendered] if self.settings.with_difference else [])
        return torch.cat(parts, dim=1)

    def forward(self, images: torch.Tensor, rendered: torch.Tensor) -> torch.Tensor:
        x = self.inputs(images, rendered)
        step = 2**self.settings.depth
        if x.shape[-2] % step or x.shape[-1] % step:
            raise ValueError(
                f"the U-Net needs crop sides divisible by {step} (depth {self.settings.depth}), got "
                f"{tuple(x.shape[-2:])}; resize the crops or lower UNetSettings.depth"
            )
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)

    def probability(self, images: torch.Tensor, rendered: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) probability that each pixel is face (the model should explain it)."""
        return torch.sigmoid(self(images, rendered))


class ShallowFeatures(nn.Module):
    """Frozen early layers of a face-recognition network, for FOCUS's preserve and dist terms: (B, 3, H, W) RGB
    in [0, 1] -> (B, C, h, w) feature maps.

    FOCUS compares shallow ArcFace features of masked pictures; here the first ``layers`` blocks of SFace (the
    recognition network that ships offline) on crops resized to ``size`` pixels, which keeps three passes per
    step affordable on a CPU (about 0.3 s for 16 crops at 56 pixels, 5 layers).
    """

    def __init__(self, body: nn.Module, pixel_mean: float, pixel_scale: float, size: int = 56) -> None:
        super().__init__()
        self.body = body
        self.size = size
        self.pixel_mean = float(pixel_mean)
        self.pixel_scale = float(pixel_scale)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_sface(cls, layers: int = 5, size: int = 56, weights=None) -> ShallowFeatures:
        from networks.sface import build_sface

        sface = build_sface(weights)
        if not 1 <= layers <= len(sface.body):
            raise ValueError(f"layers must be in [1, {len(sface.body)}], got {layers}")
        return cls(sface.body[:layers], float(sface.pixel_mean), float(sface.pixel_scale), size)

    def train(self, mode: bool = True) -> ShallowFeatures:
        # Frozen: its batch-norm statistics must never move, whatever mode the owner is put in.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_crops(images)
        if images.shape[-2:] != (self.size, self.size):
            images = nn.functional.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True)
        return self.body((images * 255.0 - self.pixel_mean) * self.pixel_scale)
