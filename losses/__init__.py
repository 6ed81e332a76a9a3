"""Loss terms of the hybrid weakly-supervised objective (plain PyTorch)."""

from losses.hybrid import TERMS, HybridLoss, LossWeights
from losses.landmark import (
    DEEP3D_CROP_SIZE,
    DEEP3D_NOSE_68,
    INNER_MOUTH_68,
    NOSE_68,
    landmark_loss,
    landmark_weights,
)
from losses.perceptual import composite, identity_loss, perceptual_loss, similarity_transform, warp_affine
from losses.photometric import SKIN_THRESHOLD, photometric_loss, skin_attention
from losses.regularization import (
    DEEP3D_W_TEX,
    PAPER_W_TEX,
    coefficient_regularization,
    lighting_color_regularization,
    texture_flatness,
)

__all__ = [
    "DEEP3D_CROP_SIZE",
    "DEEP3D_NOSE_68",
    "DEEP3D_W_TEX",
    "INNER_MOUTH_68",
    "NOSE_68",
    "PAPER_W_TEX",
    "SKIN_THRESHOLD",
    "TERMS",
    "HybridLoss",
    "LossWeights",
    "coefficient_regularization",
    "composite",
    "identity_loss",
    "landmark_loss",
    "landmark_weights",
    "lighting_color_regularization",
    "perceptual_loss",
    "photometric_loss",
    "similarity_transform",
    "skin_attention",
    "texture_flatness",
    "warp_affine",
]
