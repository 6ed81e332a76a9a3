"""Skin-attention photometric loss (Deng et al. 2019, §4.1.1).

``L_photo = sum_i A_i * M_i * ||I_i - I'_i||_2 / sum_i A_i * M_i`` over the pixels ``i`` of an image, where
``I`` is the input, ``I'`` the render, ``M`` the rendered face mask and ``A`` the skin attention. The norm
is the Euclidean distance over RGB, not its square, which the paper chose for robustness to outliers.
"""

from __future__ import annotations

import torch

from losses._shapes import check_shape

SKIN_THRESHOLD = 0.5
"""Pixels whose skin posterior exceeds this count as skin with full weight (paper §4.1.1)."""


def skin_attention(posterior: torch.Tensor) -> torch.Tensor:
    """Skin attention ``A = 1 if P > 0.5 else P`` from a skin posterior ``P`` in [0, 1] of any shape.

    Confident skin gets full weight while likely occluders (hair, glasses, hands) keep their small
    posterior as weight, so the render is not pulled towards them.
    """
    return torch.where(posterior > SKIN_THRESHOLD, torch.ones_like(posterior), posterior)


def photometric_loss(
    images: torch.Tensor,
    rendered: torch.Tensor,
    mask: torch.Tensor,
    attention: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Attention-weighted mean RGB distance over the face region; a scalar.

    Args:
        images: (B, 3, H, W) input images.
        rendered: (B, 3, H, W) rendered faces, in the same value range as ``images``.
        mask: (B, 1, H, W) rendered face mask in [0, 1] (pixels outside it do not count).
        attention: (B, 1, H, W) skin attention ``A`` (see `skin_attention`).
        eps: floor on an image's total weight, so that an image with an empty mask contributes 0
            instead of 0 / 0.

    Each image is normalised by its own total weight ``sum(mask * A)`` and the batch mean of those
    per-image values is returned, so every image counts equally whatever the size of its face.
    Deep3DFaceRecon instead pools all pixels of the batch under one normaliser (and floors it at 1),
    which weighs images by face area; the two agree when all images have the same total weight.
    """
    check_shape("images", images, (None, 3, None, None))
    batch, _, height, width = images.shape
    check_shape("rendered", rendered, (batch, 3, height, width))
    check_shape("mask", mask, (batch, 1, height, width))
    check_shape("attention", attention, (batch, 1, height, width))
    # The weights are data: letting gradients reach a (soft) mask would let the network shrink the
    # face to lower the loss, so they are held fixed, as in Deep3D.
    weights = (mask * attention).detach()
    # vector_norm's backward is defined as 0 where the distance is 0, so identical pixels give
    # finite gradients without the sqrt(x + eps) bias Deep3D needs.
    distance = torch.linalg.vector_norm(images - rendered, dim=1, keepdim=True)
    per_image = (distance * weights).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3)).clamp_min(eps)
    return per_image.mean()
