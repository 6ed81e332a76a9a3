"""Perception-level identity loss (Deng et al. 2019, §4.1.3) and the differentiable face alignment it needs.

``L_per = 1 - <f(I), f(I')> / (||f(I)|| ||f(I')||)`` with ``f`` a frozen face-recognition network, ``I`` the
input and ``I'`` the composite of the render over the input. Both images are warped to the network's
input template by one similarity transform, estimated from the input's five alignment points, so the
comparison sees the same crop of both.

Pixel convention (the project's, see `renderers.camera`): continuous coordinates with the origin at the
top-left corner of the image, x right, y down, and pixel (row i, col j) centred at (j + 0.5, i + 0.5).
Points in the integer-centre convention (OpenCV ``warpAffine``, skimage; e.g. ArcFace's published
112 x 112 template) need 0.5 added to both coordinates first.

Deep3DFaceRecon differs in two respects: it feeds the bare render (black background) rather than the
composite, and warps the render with a transform estimated from the predicted landmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from losses._shapes import check_shape


def similarity_transform(src_points: torch.Tensor, dst_points: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (scale, rotation, translation) mapping ``src_points`` onto ``dst_points``.

    Args:
        src_points: (B, N, 2) points per image, N >= 2, not all coincident.
        dst_points: (N, 2) or (B, N, 2) target points.

    Returns:
        (B, 2, 3) matrices ``[s R | t]`` with ``dst ~ s R src + t``.

    This is Umeyama's solution restricted to proper rotations. In 2D it has a closed form: with the
    points as complex numbers and centred, ``s R`` is the complex least-squares ratio
    ``c = sum(conj(x) y) / sum(|x|^2)``, so no SVD (and none of its gradient instabilities) is needed.
    """
    check_shape("src_points", src_points, (None, None, 2))
    batch, n_points, _ = src_points.shape
    if n_points < 2:
        raise ValueError(f"a similarity transform needs at least 2 points, got {n_points}")
    if dst_points.ndim == 2:
        dst_points = dst_points.unsqueeze(0).expand(batch, -1, -1)
    check_shape("dst_points", dst_points, (batch, n_points, 2))
    dst_points = dst_points.to(src_points.dtype)

    src_mean = src_points.mean(dim=1, keepdim=True)
    dst_mean = dst_points.mean(dim=1, keepdim=True)
    x, y = (src_points - src_mean).unbind(-1)
    u, v = (dst_points - dst_mean).unbind(-1)
    # The floor only keeps a degenerate (all points coincident) input finite.
    norm = (x.square() + y.square()).sum(dim=1).clamp_min(torch.finfo(src_points.dtype).tiny)
    a = (x * u + y * v).sum(dim=1) / norm
    b = (x * v - y * u).sum(dim=1) / norm
    linear = torch.stack([torch.stack([a, -b], dim=-1), torch.stack([b, a], dim=-1)], dim=-2)
    translation = dst_mean.transpose(1, 2) - linear @ src_mean.transpose(1, 2)
    return torch.cat([linear, translation], dim=2)


def warp_affine(images: torch.Tensor, matrix: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Resample images under a forward affine map, differentiably in the images (and the matrix).

    Args:
        images: (B, C, H, W).
        matrix: (B, 2, 3) map from input pixel coordinates to output pixel coordinates (as OpenCV's
            ``warpAffine`` matrix, but in this module's pixel-centre convention); must be invertible.
        out_size: (h, w) of the output.

    Returns:
        (B, C, h, w): output pixel centre p takes the bilinear sample of the input at ``matrix^-1 p``;
        samples outside the input are 0.
    """
    check_shape("images", images, (None, None, None, None))
    batch, _, height, width = images.shape
    check_shape("matrix", matrix, (batch, 2, 3))
    out_h, out_w = (int(s) for s in out_size)
    matrix = matrix.to(images.dtype)

    a, b, c, d = matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 1, 0], matrix[:, 1, 1]
    tx, ty = matrix[:, 0, 2], matrix[:, 1, 2]
    det = a * d - b * c
    # Inverse map, output pixel -> input pixel: p_in = L p_out + m.
    la, lb, lc, ld = d / det, -b / det, -c / det, a / det
    mx, my = -(la * tx + lb * ty), -(lc * tx + ld * ty)
    # affine_grid wants output -> input in grid_sample's [-1, 1] coordinates (align_corners=False, so
    # -1 is the outer edge of the first pixel): p = (n + 1) * size / 2. Composing with the pixel map
    # written out by hand keeps every constant a Python scalar (no host-to-device copies).
    theta = torch.stack(
        [
            torch.stack(
                [la * out_w / width, lb * out_h / width, (la * out_w / 2 + lb * out_h / 2 + mx) * 2 / width - 1], dim=-1
            ),
            torch.stack(
                [lc * out_w / height, ld * out_h / height, (lc * out_w / 2 + ld * out_h / 2 + my) * 2 / height - 1],
                dim=-1,
            ),
        ],
        dim=-2,
    )
    grid = F.affine_grid(theta, [batch, images.shape[1], out_h, out_w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def composite(rendered: torch.Tensor, mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) render pasted over the input: ``mask * rendered + (1 - mask) * images``."""
    return mask * rendered + (1.0 - mask) * images


def identity_loss(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``1 - cos(features, reference)`` for (B, D) embeddings; a scalar."""
    check_shape("features", features, (None, None))
    check_shape("reference", reference, tuple(features.shape))
    return (1.0 - F.cosine_similarity(features, reference, dim=-1)).mean()


def perceptual_loss(
    images: torch.Tensor,
    rendered: torch.Tensor,
    mask: torch.Tensor,
    five_points: torch.Tensor,
    recognition: nn.Module,
) -> torch.Tensor:
    """Identity loss between the input and the render-over-input composite; a scalar.

    Args:
        images: (B, 3, H, W) input images, RGB in [0, 1].
        rendered: (B, 3, H, W) rendered faces, RGB in [0, 1].
        mask: (B, 1, H, W) rendered face mask.
        five_points: (B, 5, 2) alignment points of the input in pixels: image-left eye centre,
            image-right eye centre, nose tip, image-left and image-right mouth corners.
        recognition: frozen network with ``input_size`` (h, w), ``template`` (5, 2) pixel coordinates in
            its input (same point order), and ``forward((B, 3, h, w) RGB in [0, 1]) -> (B, D)``.

    Gradients reach ``rendered`` through the composite and the warp; freezing the network's
    parameters (and eval mode) is the caller's job, see `losses.hybrid.HybridLoss`.
    """
    check_shape("images", images, (None, 3, None, None))
    check_shape("rendered", rendered, tuple(images.shape))
    check_shape("mask", mask, (images.shape[0], 1, *images.shape[2:]))
    check_shape("five_points", five_points, (images.shape[0], 5, 2))
    template = torch.as_tensor(recognition.template)
    check_shape("recognition.template", template, (5, 2))
    template = template.to(device=images.device, dtype=images.dtype)

    matrix = similarity_transform(five_points.to(images.dtype), template)
    out_size = tuple(recognition.input_size)
    # The input's embedding is a constant target: no graph is needed for it.
    with torch.no_grad():
        reference = recognition(warp_affine(images, matrix, out_size))
    features = recognition(warp_affine(composite(rendered, mask, images), matrix, out_size))
    return identity_loss(features, reference)
