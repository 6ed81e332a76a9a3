"""The hybrid weakly-supervised objective of Deng et al. 2019 (§4): weighted sum of the loss terms.

``L = w_photo L_photo + w_lan L_lan + w_per L_per + w_reg L_reg + w_tex L_tex (+ w_gamma L_gamma)``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch import nn

from face_model.coefficients import Coefficients
from face_model.model import five_points_from_68
from losses._shapes import check_shape
from losses.landmark import DEEP3D_CROP_SIZE, N_LANDMARKS, landmark_loss, landmark_weights
from losses.perceptual import perceptual_loss
from losses.photometric import photometric_loss
from losses.regularization import (
    PAPER_W_TEX,
    coefficient_regularization,
    lighting_color_regularization,
    texture_flatness,
)

if TYPE_CHECKING:
    # Only the fields of a render are read; importing the renderer would pull in its rasterizer backend.
    from renderers.mesh_renderer import RenderOutput

TERMS = ("photometric", "landmark", "perceptual", "regularization", "texture", "gamma")
"""Names of the weighted terms, in the order they are summed."""


@dataclass(frozen=True)
class LossWeights:
    """Weights of the hybrid loss (defaults as in Deng et al. 2019 / Deep3D's code unless noted).

    photometric:    skin-attention photometric loss (1.92)
    landmark:       weighted landmark loss, per squared pixel of a 224-pixel crop (1.6e-3)
    perceptual:     identity loss (0.2)
    regularization: coefficient prior (3e-4)
    texture:        skin albedo flatness (1.0 here; both Deep3D code bases train with 5.0)
    gamma:          lighting-colour prior, off by default (Deep3D's code uses 10; not one of the paper's
                    terms, and zero anyway for monochrome lighting)
    reg_id, reg_exp, reg_tex: relative weights inside the coefficient prior (paper 1.0, 0.8, 1.7e-3;
                    Deep3D's code uses reg_tex = 1.7e-2)
    nose_mouth_landmark_weight: per-landmark weight of the nose and inner-mouth points (20)
    """

    photometric: float = 1.92
    landmark: float = 1.6e-3
    perceptual: float = 0.2
    regularization: float = 3e-4
    texture: float = 1.0
    gamma: float = 0.0
    reg_id: float = 1.0
    reg_exp: float = 0.8
    reg_tex: float = PAPER_W_TEX
    nose_mouth_landmark_weight: float = 20.0

    def __post_init__(self) -> None:
        # fields(LossWeights), not fields(self): the experiment config's loss section extends this class.
        negative = {f.name: getattr(self, f.name) for f in fields(LossWeights) if getattr(self, f.name) < 0}
        if negative:
            raise ValueError(f"loss weights must be >= 0, got {negative}")


class HybridLoss(nn.Module):
    """All terms of the hybrid loss for a batch, as a dict of scalars.

    Args:
        weights: term weights.
        skin_mask: (V,) bool skin vertices of the face model (``FaceModel.skin_mask``), for the
            texture-flatness term.
        recognition: frozen face-recognition network for the perceptual term (see
            `losses.perceptual.perceptual_loss` for the interface), or None to skip that term. It is
            frozen in place (``requires_grad_(False)``) and kept in eval mode even when this module is
            put in training mode, so its BatchNorm statistics never move. As a submodule it follows
            ``.to(device)`` and appears in ``state_dict()``.
        landmark_point_weights: (68,) per-landmark weights overriding
            ``landmark_weights(weights.nose_mouth_landmark_weight)``, e.g. built with Deep3D's nose set.
        landmark_reference_size: crop side, in pixels, the landmark loss is expressed in (see
            `losses.landmark.landmark_loss`); the default keeps the weight 1.6e-3 meaning what it means
            for Deep3D's 224-pixel crops whatever the image size (the crop side is taken as
            ``sqrt(H * W)`` of ``images``, i.e. the side of a square crop).

    A term whose weight is 0 (or the perceptual term without a network) is neither computed nor
    reported. Weighted terms are under their names, their sum under "total" and the unweighted values
    under "raw/<name>", all as 0-dim tensors (nothing is moved to the host).
    """

    skin_mask: torch.Tensor
    landmark_point_weights: torch.Tensor

    def __init__(
        self,
        weights: LossWeights,
        skin_mask: torch.Tensor,
        recognition: nn.Module | None = None,
        *,
        landmark_point_weights: torch.Tensor | None = None,
        landmark_reference_size: float = DEEP3D_CROP_SIZE,
    ) -> None:
        super().__init__()
        check_shape("skin_mask", skin_mask, (None,))
        if landmark_point_weights is None:
            landmark_point_weights = landmark_weights(weights.nose_mouth_landmark_weight)
        check_shape("landmark_point_weights", landmark_point_weights, (N_LANDMARKS,))
        if landmark_reference_size <= 0:
            raise ValueError(f"landmark_reference_size must be positive, got {landmark_reference_size}")
        if recognition is not None:
            missing = [a for a in ("input_size", "template") if not hasattr(recognition, a)]
            if missing:
                raise TypeError(
                    f"the recognition network lacks {missing}: it needs input_size (h, w) and template "
                    "(5, 2) pixel coordinates in its input (see losses.perceptual.perceptual_loss)"
                )
            recognition.requires_grad_(False)
            recognition.eval()
        self.weights = weights
        self.landmark_reference_size = float(landmark_reference_size)
        self.recognition = recognition
        self.register_buffer("skin_mask", skin_mask.to(torch.bool))
        self.register_buffer("landmark_point_weights", landmark_point_weights.to(torch.float32))

    def train(self, mode: bool = True) -> HybridLoss:
        super().train(mode)
        if self.recognition is not None:
            self.recognition.eval()
        return self

    def forward(
        self,
        *,
        images: torch.Tensor,
        render: RenderOutput,
        target_landmarks: torch.Tensor,
        skin_attention: torch.Tensor,
        coeffs: Coefficients,
        five_points: torch.Tensor | None = None,
        landmark_scale: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the enabled terms.

        Args:
            images: (B, 3, H, W) input images, RGB in [0, 1].
            render: the renderer's output for ``coeffs`` (image, mask, landmarks, albedo are used).
            target_landmarks: (B, 68, 2) detected landmarks, pixels.
            skin_attention: (B, 1, H, W) attention weights A (apply
                `losses.photometric.skin_attention` to a skin posterior first).
            coeffs: the predicted coefficients.
            five_points: (B, 5, 2) alignment points for the perceptual term; default: derived from
                ``target_landmarks`` (eye centres, nose tip, mouth corners).
            landmark_scale: (B,) factor on each image's landmark term (how far its detected landmarks are
                trusted, e.g. less at large yaw); default 1 for every image.
        """
        w = self.weights
        raw: dict[str, torch.Tensor] = {}
        if w.photometric:
            raw["photometric"] = photometric_loss(images, render.image, render.mask, skin_attention)
        if w.landmark:
            height, width = images.shape[-2:]
            point_weights = self.landmark_point_weights
            if landmark_scale is not None:
                check_shape("landmark_scale", landmark_scale, (images.shape[0],))
                point_weights = landmark_scale[:, None] * point_weights
            raw["landmark"] = landmark_loss(
                render.landmarks,
                target_landmarks,
                point_weights,
                image_size=float(height * width) ** 0.5,
                reference_size=self.landmark_reference_size,
            )
        if w.perceptual and self.recognition is not None:
            if five_points is None:
                check_shape("target_landmarks", target_landmarks, (images.shape[0], N_LANDMARKS, 2))
                five_points = five_points_from_68(target_landmarks)
            raw["perceptual"] = perceptual_loss(images, render.image, render.mask, five_points, self.recognition)
        if w.regularization:
            raw["regularization"] = coefficient_regularization(coeffs, w_id=w.reg_id, w_exp=w.reg_exp, w_tex=w.reg_tex)
        if w.texture:
            raw["texture"] = texture_flatness(render.albedo, self.skin_mask)
        if w.gamma:
            raw["gamma"] = lighting_color_regularization(coeffs.lighting)

        out = {name: getattr(w, name) * value for name, value in raw.items()}
        out["total"] = sum(out.values(), images.new_zeros(()))
        out.update({f"raw/{name}": value for name, value in raw.items()})
        return out
