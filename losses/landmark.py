"""Weighted 2D landmark loss (Deng et al. 2019, §4.1.2).

``L_lan = 1 / (B * 68) * sum_b sum_n w_n * ||q_bn - q'_bn||^2`` between the detected landmarks ``q`` and
the projected model landmarks ``q'``, in pixels of the crop. The paper raises the weight of the nose and
inner-mouth points to 20 and keeps 1 elsewhere.

Index sets: the paper names "the nose and inner mouth"; `NOSE_68` and `INNER_MOUTH_68` are those iBUG-68
regions (27-35 and 60-67). Both Deep3D code bases weight the inner mouth the same way but only the
three lower nose-bridge points 28-30 (`DEEP3D_NOSE_68`); pass ``nose=DEEP3D_NOSE_68`` to
`landmark_weights` to match their training exactly.

Scale: Deep3D compares raw pixel coordinates of its 224 x 224 crop and divides by ``B * 68`` only
(neither the TensorFlow nor the PyTorch release divides by the image size), so its weight 1.6e-3
is "per squared pixel of a 224-pixel crop". `landmark_loss` rescales squared distances by
``(reference_size / image_size)^2`` so that the weight keeps that meaning at any crop size;
``reference_size=1`` gives the loss in coordinates normalised by the image size instead.
"""

from __future__ import annotations

import torch

from losses._shapes import check_shape

N_LANDMARKS = 68

NOSE_68 = tuple(range(27, 36))
"""iBUG-68 nose: bridge 27-30 and lower nose 31-35."""

INNER_MOUTH_68 = tuple(range(60, 68))
"""iBUG-68 inner lip contour 60-67."""

DEEP3D_NOSE_68 = (28, 29, 30)
"""The nose points Deep3D's released code actually up-weights (``weight[28:31] = 20``)."""

DEEP3D_CROP_SIZE = 224.0
"""Side of the crop, in pixels, that Deep3D's landmark weight 1.6e-3 was tuned for."""


def landmark_weights(
    nose_inner_mouth_weight: float = 20.0,
    *,
    nose: tuple[int, ...] = NOSE_68,
    inner_mouth: tuple[int, ...] = INNER_MOUTH_68,
) -> torch.Tensor:
    """(68,) float32 weights: ``nose_inner_mouth_weight`` on ``nose`` and ``inner_mouth``, 1 elsewhere."""
    ids = tuple(nose) + tuple(inner_mouth)
    bad = [i for i in ids if not 0 <= i < N_LANDMARKS]
    if bad:
        raise ValueError(f"landmark indices must lie in [0, {N_LANDMARKS}), got {bad}")
    if nose_inner_mouth_weight < 0:
        raise ValueError(f"nose_inner_mouth_weight must be >= 0, got {nose_inner_mouth_weight}")
    weights = torch.ones(N_LANDMARKS, dtype=torch.float32)
    weights[list(ids)] = nose_inner_mouth_weight
    return weights


def landmark_loss(
    predicted: torch.Tensor,
    target: torch.Tensor,
    point_weights: torch.Tensor,
    *,
    image_size: float = DEEP3D_CROP_SIZE,
    reference_size: float = DEEP3D_CROP_SIZE,
) -> torch.Tensor:
    """Weighted mean squared landmark distance; a scalar.

    Args:
        predicted: (B, 68, 2) projected model landmarks, pixels.
        target: (B, 68, 2) detected landmarks, same pixel convention.
        point_weights: (68,) or (B, 68) weights, e.g. `landmark_weights`.
        image_size: side of the crop the coordinates are measured in, pixels.
        reference_size: crop side the loss is expressed in; squared distances are multiplied by
            ``(reference_size / image_size)^2``. Equal to ``image_size`` (both 224 by default) gives
            Deep3D's raw squared pixels.

    The weighted sum is divided by ``B * 68`` (not by the sum of weights), as Deep3D does.
    """
    check_shape("predicted", predicted, (None, N_LANDMARKS, 2))
    check_shape("target", target, tuple(predicted.shape))
    if point_weights.shape not in ((N_LANDMARKS,), (predicted.shape[0], N_LANDMARKS)):
        raise ValueError(
            f"point_weights must have shape ({N_LANDMARKS},) or ({predicted.shape[0]}, {N_LANDMARKS}), "
            f"got {tuple(point_weights.shape)}"
        )
    if image_size <= 0 or reference_size <= 0:
        raise ValueError(f"image_size and reference_size must be positive, got {image_size} and {reference_size}")
    squared = (predicted - target).square().sum(dim=-1)
    scale = (reference_size / image_size) ** 2
    return scale * (squared * point_weights.to(squared.dtype)).mean()
