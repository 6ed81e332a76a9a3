"""HRN's own loss terms (Lei et al. 2023); photometric, perceptual, landmark and regularisation terms are shared
with R-Net (`losses.hybrid`).

- `contour_loss`: the rendered face's outline must follow the face's outline in the photo. Per image row, the
  leftmost and rightmost pixel of a face-region mask (skin posterior, a face parser's mask or the landmark
  contour; `mask_row_extents`) are the targets of the mesh's silhouette vertices on that side.
- `tv_loss`: total variation of the deformation map inside the UV charts (smooth mid layer).
- `displacement_regularizer`: mean absolute displacement (the high layer explains only what it must).
- `reflectance_flatness`: de-retouching; the photo's texture in UV divided by the predicted shading (an albedo
  with the light removed) should carry no shading detail: its high-pass part is penalised on visible texels,
  so wrinkles and folds are explained by geometry rather than by the albedo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from losses._shapes import check_shape


@dataclass(frozen=True)
class HRNLossWeights:
    """Weights of HRN's own terms, added to the shared hybrid loss (defaults sized after the paper's balance:
    the contour term about the landmark term's size, the smoothness terms small).

    contour:      `contour_loss`, per squared fraction of the crop side
    tv:           `tv_loss` of the deformation map, per decimetre
    deformation:  squared magnitude of the deformation map, per squared decimetre
    displacement: `displacement_regularizer`, per decimetre
    reflectance:  `reflectance_flatness`
    (contour_max_gap is not a weight: see its docstring)
    """

    contour: float = 1.0
    tv: float = 1.0
    deformation: float = 10.0
    displacement: float = 1.0
    reflectance: float = 0.2
    contour_max_gap: float = 0.08
    """Edge points farther than this fraction of the crop from the target outline are left out."""


def mask_row_extents(mask: torch.Tensor, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left and right edges of a face-region mask in every row.

    Args:
        mask: (B, 1, H, W) or (B, H, W) face-region probability or indicator.

    Returns:
        left, right: (B, H) pixel x of the left edge of the leftmost and the right edge of the rightmost pixel
        above ``threshold`` in each row; valid: (B, H) bool, rows with any such pixel.
    """
    if mask.ndim == 4:
        mask = mask[:, 0]
    inside = mask > threshold
    width = mask.shape[-1]
    columns = torch.arange(width, device=mask.device, dtype=torch.float32)
    big = torch.full_like(mask, float(width), dtype=torch.float32)
    left = torch.where(inside, columns, big).amin(-1)
    right = torch.where(inside, columns + 1.0, -big).amax(-1)
    return left, right, inside.any(-1)


def contour_loss(
    points: torch.Tensor,
    weights: torch.Tensor,
    left: torch.Tensor,
    right: torch.Tensor,
    valid: torch.Tensor,
    centre_x: torch.Tensor,
    image_width: float,
    max_gap: float = float("inf"),
) -> torch.Tensor:
    """Distance of silhouette points to the face outline on their side, in fractions of the crop width; a scalar.

    Args:
        points: (B, N, 2) projected vertices, pixels (x right, y down).
        weights: (B, N) how much each point is a silhouette point (e.g. 1 where its normal is perpendicular to
            the view); 0 leaves a point out.
        left, right, valid: (B, H) row extents of the target region (`mask_row_extents`).
        centre_x: (B,) x that splits left from right silhouette points (e.g. the nose's).
        image_width: crop width in pixels (the distance unit).
        max_gap: points whose target is farther than this (pixels) count 0: a skin posterior leaks into
            skin-coloured backgrounds and loses dark or shadowed skin, and such rows are not the outline.

    Each point is pulled along x to the target's left edge in its row when it lies left of ``centre_x``,
    otherwise to the right edge; points in rows without target, or outside the image, count 0.
    """
    check_shape("points", points, (None, None, 2))
    batch, n_points = points.shape[:2]
    check_shape("weights", weights, (batch, n_points))
    height = left.shape[1]
    row = points[..., 1].detach().floor().long()
    in_image = (row >= 0) & (row < height)
    row = row.clamp(0, height - 1)
    target_left, target_right = left.gather(1, row), right.gather(1, row)
    is_valid = valid.gather(1, row) & in_image
    target = torch.where(points[..., 0].detach() < centre_x[:, None], target_left, target_right)
    near = (points[..., 0].detach() - target).abs() <= max_gap
    w = weights * (is_valid & near).to(weights.dtype)
    distance = F.smooth_l1_loss(points[..., 0], target, reduction="none", beta=1.0) / image_width
    return (w * distance).sum() / w.sum().clamp_min(1.0)


def edge_weights(
    points: torch.Tensor,
    left: torch.Tensor,
    right: torch.Tensor,
    valid: torch.Tensor,
    centre_x: torch.Tensor,
    band: float = 2.0,
) -> torch.Tensor:
    """(B, N) 1 for projected points within ``band`` pixels of the rendered face's own outline on their side of
    ``centre_x`` in their row (the edge vertices the contour loss moves), else 0.

    Args:
        points: (B, N, 2) projected vertices, pixels.
        left, right, valid: (B, H) row extents of the rendered face mask (`mask_row_extents`).
        centre_x: (B,) x that splits left from right.
    """
    height = left.shape[1]
    p = points.detach()
    row = p[..., 1].floor().long()
    in_image = (row >= 0) & (row < height)
    row = row.clamp(0, height - 1)
    on_left = p[..., 0] < centre_x[:, None]
    edge = torch.where(on_left, left.gather(1, row), right.gather(1, row))
    near = (p[..., 0] - edge).abs() <= band
    return (near & in_image & valid.gather(1, row)).to(points.dtype)


def tv_loss(uv_map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring texels of a (B, C, S, S) map, pairs inside the (S, S) charts."""
    valid = mask.to(uv_map.dtype)
    pairs_x = valid[:, 1:] * valid[:, :-1]
    pairs_y = valid[1:, :] * valid[:-1, :]
    dx = (uv_map[..., :, 1:] - uv_map[..., :, :-1]).abs().sum(1) * pairs_x
    dy = (uv_map[..., 1:, :] - uv_map[..., :-1, :]).abs().sum(1) * pairs_y
    count = (pairs_x.sum() + pairs_y.sum()).clamp_min(1.0) * uv_map.shape[0]
    return (dx.sum() + dy.sum()) / count


def deformation_magnitude(deformation: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared offset length of a (B, 3, S, S) deformation map inside the charts."""
    valid = mask.to(deformation.dtype)
    return (deformation.square().sum(1) * valid).sum() / (valid.sum().clamp_min(1.0) * deformation.shape[0])


def displacement_regularizer(displacement: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute displacement of a (B, 1, S, S) map inside the charts."""
    valid = mask.to(displacement.dtype)
    return (displacement.abs()[:, 0] * valid).sum() / (valid.sum().clamp_min(1.0) * displacement.shape[0])


def reflectance_flatness(
    texture: torch.Tensor, shading: torch.Tensor, visibility: torch.Tensor, kernel: int = 5, eps: float = 0.05
) -> torch.Tensor:
    """High-pass energy of the de-lit texture on visible texels; a scalar.

    Args:
        texture: (B, 3, S, S) photo unwrapped into UV.
        shading: (B, 3, S, S) predicted irradiance at each texel (detailed normals, estimated light).
        visibility: (B, 1, S, S) visible texels (`renderers.uv.Unwrapped.visibility`).
        kernel: side of the box filter that defines the low-pass part.
        eps: floor of the shading (dark texels would blow up the ratio).
    """
    check_shape("texture", texture, (None, 3, None, None))
    albedo = texture / shading.clamp_min(eps)
    weight = visibility.detach()
    pad = kernel // 2
    local = F.avg_pool2d(albedo * weight, kernel, stride=1, padding=pad) / F.avg_pool2d(
        weight, kernel, stride=1, padding=pad
    ).clamp_min(1e-6)
    # Only texels whose whole neighbourhood is seen: at the visibility border the local mean is one-sided.
    inner = (F.avg_pool2d(weight, kernel, stride=1, padding=pad) > 0.999).to(texture.dtype) * weight
    return ((albedo - local.detach()).abs().sum(1, keepdim=True) * inner).sum() / inner.sum().clamp_min(1.0)
