"""FOCUS losses (Li et al., CVPR 2023, "Robust Model-based Face Reconstruction through Weakly-Supervised
Outlier Segmentation"): the face encoder and an outlier-segmentation network trained against each other.

Notation (all images RGB in [0, 1], pixel layout of `renderers.camera`):

- ``images`` I: (B, 3, H, W) input crops; ``rendered`` I': (B, 3, H, W) the face model's render of them;
- ``face_mask`` R: (B, 1, H, W) the rendered face region (1 where the model covers the pixel);
- ``segmentation`` S: (B, 1, H, W) the segmentation network's probability that a pixel is face, i.e. that
  the face model should explain it (1) rather than treat it as an outlier (0);
- the **valid mask** ``R * S``: face pixels the model is asked to explain.

Terms:

- `robust_photometric_loss`: the pre-training loss. Each face pixel is either explained by the face model
  (Gaussian colour noise of std ``sigma``) or by an outlier process of constant likelihood, set equal to
  the Gaussian's at ``threshold`` standard deviations; the pixel takes the likelier explanation. Its
  negative log-likelihood is the truncated quadratic ``0.5 min(d², (k sigma)²) / sigma²`` of the RGB
  distance d, and the inlier indicator is the pseudo-mask the segmentation network is pre-trained on.
- `masked_photometric_loss`: the encoder's photometric term, R * S weighted (the skin-attention term with
  the segmentation in place of the skin posterior).
- `area_loss`: the share of the face region labelled outlier, ``sum R (1 - S) / sum R``, which keeps the
  segmentation from discarding the whole face (used by both networks).
- `neighbour_loss`: per valid pixel, the smallest RGB distance between the masked render and the masked
  input anywhere in a small window, so that pixels the model explains up to a small misalignment are kept
  and pixels no nearby colour explains are pushed to outlier.
- `binary_loss`: ``0.5 - |R S - 0.5|``, zero for a binary mask, pushing the probabilities to 0 or 1.
- `preserve_loss`: ``1 - cos(f(I), f(R S I))``: what is masked out must not change the input's features.
- `dist_loss`: ``1 - cos(f(R S I'), f(R S I))``: the render and the input agree where the mask keeps them.
  ``f`` is a frozen feature network (FOCUS: shallow ArcFace features; here: shallow SFace layers).

The **misfit prior** (`estimate_misfit_prior`, `apply_misfit_prior`). The face model cannot explain every
face pixel even with the right coefficients: eyes, brows, lips, the nostrils, beards and the hairline leave
a residual the model's colour space does not reach. FOCUS's neighbour and robust terms see only the
residual, so they label such model misfit as occlusion, and the mask eats the eyes and mouth. The prior
is an image-space map of the residual the model is *expected* to leave at each pixel of the aligned crop,
estimated without any labels as the per-pixel median of the residual over the training pictures where the
pixel is face (an occluder covers a given pixel in a minority of pictures, so the median is the model's
misfit, not the occluders'). Only the residual beyond it counts as evidence of an outlier: the robust
loss's inlier test becomes ``d < k sigma + m`` and the neighbour term uses ``max(d - m, 0)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from losses._shapes import check_shape
from losses.photometric import photometric_loss

FOCUS_SIGMA = 0.043
"""Std of the colour noise of the robust pre-training loss, colours in [0, 1] (FOCUS's reference code)."""
FOCUS_THRESHOLD_SIGMAS = 3.0
"""The outlier likelihood equals the Gaussian's at this many standard deviations (FOCUS's reference code)."""


@dataclass(frozen=True)
class FocusLossWeights:
    """Weights of FOCUS's terms; defaults are the published ones (reference code, EM stage).

    Segmentation network (``dist_weight`` of the reference): neighbour 15, dist 3, area 0.5, preserve 0.25,
    binary 10. Encoder: masked photometric 0.5, perceptual 0.25, area 0.06 (plus landmark and coefficient
    prior, which this project takes from its own `losses.hybrid.LossWeights`, tuned for its face model).
    ``neighbour_window`` is the side of the neighbourhood (5 pixels at 224; scale it with the crop).
    """

    neighbour: float = 15.0
    dist: float = 3.0
    area: float = 0.5
    preserve: float = 0.25
    binary: float = 10.0
    encoder_photometric: float = 0.5
    encoder_perceptual: float = 0.25
    encoder_area: float = 0.06
    neighbour_window: int = 5
    sigma: float = FOCUS_SIGMA
    threshold_sigmas: float = FOCUS_THRESHOLD_SIGMAS

    def __post_init__(self) -> None:
        negative = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) < 0}
        if negative:
            raise ValueError(f"FOCUS loss weights must be >= 0, got {negative}")
        if self.neighbour_window < 1 or self.neighbour_window % 2 == 0:
            raise ValueError(f"neighbour_window must be a positive odd number, got {self.neighbour_window}")
        if self.sigma <= 0 or self.threshold_sigmas <= 0:
            raise ValueError("sigma and threshold_sigmas must be positive")


def _check_images(images: torch.Tensor, rendered: torch.Tensor, face_mask: torch.Tensor) -> None:
    check_shape("images", images, (None, 3, None, None))
    batch, _, height, width = images.shape
    check_shape("rendered", rendered, (batch, 3, height, width))
    check_shape("face_mask", face_mask, (batch, 1, height, width))


def _check_map(name: str, value: torch.Tensor, like: torch.Tensor) -> None:
    check_shape(name, value, (like.shape[0], 1, *like.shape[2:]))


def residual(images: torch.Tensor, rendered: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) RGB distance ``||I - I'||`` of (B, 3, H, W) images (0 gradient where they agree)."""
    return torch.linalg.vector_norm(images - rendered, dim=1, keepdim=True)


def apply_misfit_prior(distance: torch.Tensor, misfit: torch.Tensor | None) -> torch.Tensor:
    """The residual beyond the expected model misfit: ``max(d - m, 0)``.

    distance: (B, 1, H, W); misfit: (1 or B, 1, H, W) expected residual (`estimate_misfit_prior`) or None (no
    prior: ``distance`` unchanged).
    """
    if misfit is None:
        return distance
    check_shape("misfit", misfit, (None, 1, *distance.shape[2:]))
    return (distance - misfit).clamp_min(0.0)


def robust_photometric_loss(
    images: torch.Tensor,
    rendered: torch.Tensor,
    face_mask: torch.Tensor,
    sigma: float = FOCUS_SIGMA,
    threshold_sigmas: float = FOCUS_THRESHOLD_SIGMAS,
    misfit: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FOCUS's outlier-robust photometric loss with a fixed threshold, and the inlier mask it implies.

    Args:
        images, rendered: (B, 3, H, W); face_mask: (B, 1, H, W) rendered face region.
        sigma: colour-noise std; threshold_sigmas: k, the outlier threshold in standard deviations.
        misfit: optional (1 or B, 1, H, W) expected model residual (the misfit prior); the inlier test becomes
            ``d < k sigma + m``.

    Returns:
        the loss, a scalar: per image the mean over its face pixels of ``0.5 min(d², (k sigma)²) / sigma²``
        (the negative log-likelihood of the likelier explanation, up to a constant), averaged over the batch;
        and the (B, 1, H, W) float inlier mask (face pixels the model explains), detached.

    Every face pixel counts, outliers at the constant cost of the threshold, so the encoder cannot lower the
    loss by calling pixels outliers once they are beyond the threshold, and gets no gradient from them.
    """
    _check_images(images, rendered, face_mask)
    distance = residual(images, rendered)
    limit = threshold_sigmas * sigma
    inlier = (apply_misfit_prior(distance, misfit) < limit).to(images.dtype) * face_mask
    # The misfit prior widens the inlier test, not the quadratic: a pixel within its expected misfit keeps its
    # Gaussian cost (capped at the threshold's), so the encoder still fits what it can of it.
    nll = 0.5 * distance.square().clamp_max(limit**2) / sigma**2
    weights = face_mask.detach()
    per_image = (nll * weights).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3)).clamp_min(eps)
    return per_image.mean(), inlier.detach()


def masked_photometric_loss(
    images: torch.Tensor, rendered: torch.Tensor, face_mask: torch.Tensor, segmentation: torch.Tensor
) -> torch.Tensor:
    """The encoder's photometric term, ``sum R S ||I - I'|| / sum R S`` per image, batch mean; a scalar.

    The weights are detached (`losses.photometric.photometric_loss`): FOCUS lets the encoder's gradient reach
    the frozen segmentation network's input here, which rewards renders that make it mask more out; the area
    term already carries the encoder's influence on the mask.
    """
    _check_images(images, rendered, face_mask)
    _check_map("segmentation", segmentation, images)
    return photometric_loss(images, rendered, face_mask, segmentation)


def area_loss(face_mask: torch.Tensor, segmentation: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Share of the face region labelled outlier, ``sum R (1 - S) / max(sum R, eps)`` per image, batch mean.

    face_mask, segmentation: (B, 1, H, W). Gradients reach ``segmentation`` only.
    """
    check_shape("face_mask", face_mask, (None, 1, None, None))
    _check_map("segmentation", segmentation, face_mask)
    region = face_mask.detach()
    return ((region * (1.0 - segmentation)).sum(dim=(1, 2, 3)) / region.sum(dim=(1, 2, 3)).clamp_min(eps)).mean()


def neighbour_loss(
    images: torch.Tensor,
    rendered: torch.Tensor,
    valid: torch.Tensor,
    window: int = 5,
    misfit: torch.Tensor | None = None,
) -> torch.Tensor:
    """FOCUS's neighbour term: mean over pixels p of ``min_o || V(p) I'(p) - V(p+o) I(p+o) ||``; a scalar.

    Args:
        images, rendered: (B, 3, H, W); valid: (B, 1, H, W) the valid mask R S (differentiable in S).
        window: side of the square neighbourhood of offsets o (odd); the mean runs over the pixels whose whole
            window lies in the image.
        misfit: optional (1 or B, 1, H, W) expected residual at p, subtracted from each distance (floored at 0).

    Where the masked render and the masked input agree at a nearby pixel the term is small whatever the mask;
    where they do not, the only way down is ``S -> 0`` at p (and around it).
    """
    check_shape("images", images, (None, 3, None, None))
    check_shape("rendered", rendered, tuple(images.shape))
    _check_map("valid", valid, images)
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    margin = window // 2
    height, width = images.shape[-2:]
    if height <= 2 * margin or width <= 2 * margin:
        raise ValueError(f"images of {height}x{width} are too small for a {window}-pixel window")
    source = (rendered * valid)[..., margin : height - margin, margin : width - margin]
    target = images * valid
    prior = None
    if misfit is not None:
        check_shape("misfit", misfit, (None, 1, height, width))
        prior = misfit[..., margin : height - margin, margin : width - margin]
    best = None
    for dy in range(-margin, margin + 1):
        for dx in range(-margin, margin + 1):
            shifted = target[..., margin + dy : height - margin + dy, margin + dx : width - margin + dx]
            distance = apply_misfit_prior(residual(source, shifted), prior)
            best = distance if best is None else torch.minimum(best, distance)
    return best.mean()


def binary_loss(face_mask: torch.Tensor, segmentation: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean over face pixels of ``0.5 - |S - 0.5|`` (0 for a binary mask, 0.5 at S = 0.5), batch mean.

    face_mask, segmentation: (B, 1, H, W). FOCUS averages over the whole crop, where the background's
    ``R S = 0`` adds a constant; averaging over the face region keeps the weight independent of face size.
    """
    check_shape("face_mask", face_mask, (None, 1, None, None))
    _check_map("segmentation", segmentation, face_mask)
    region = face_mask.detach()
    margin = 0.5 - (segmentation - 0.5).abs()
    return ((region * margin).sum(dim=(1, 2, 3)) / region.sum(dim=(1, 2, 3)).clamp_min(eps)).mean()


FeatureFn = Callable[[torch.Tensor], torch.Tensor]
"""A frozen feature network: (B, 3, H, W) images in [0, 1] -> (B, ...) features (flattened per image)."""


def _cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-6)).mean()


def preserve_loss(images: torch.Tensor, valid: torch.Tensor, features: FeatureFn) -> torch.Tensor:
    """``1 - cos(f(I), f(V I))``, batch mean; a scalar. images: (B, 3, H, W); valid: (B, 1, H, W)."""
    check_shape("images", images, (None, 3, None, None))
    _check_map("valid", valid, images)
    with torch.no_grad():
        reference = features(images)
    return _cosine_distance(reference, features(images * valid))


def dist_loss(images: torch.Tensor, rendered: torch.Tensor, valid: torch.Tensor, features: FeatureFn) -> torch.Tensor:
    """FOCUS's masked perceptual term ``1 - cos(f(V I'), f(V I))``, batch mean; a scalar.

    images, rendered: (B, 3, H, W); valid: (B, 1, H, W). Also the encoder's masked perceptual term.
    """
    check_shape("images", images, (None, 3, None, None))
    check_shape("rendered", rendered, tuple(images.shape))
    _check_map("valid", valid, images)
    return _cosine_distance(features(rendered * valid), features(images * valid))


def segmentation_losses(
    images: torch.Tensor,
    rendered: torch.Tensor,
    face_mask: torch.Tensor,
    segmentation: torch.Tensor,
    weights: FocusLossWeights = FocusLossWeights(),
    features: FeatureFn | None = None,
    misfit: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """All terms of the segmentation network's loss for a batch, weighted, with their sum under "total" and
    the unweighted values under "raw/<name>" (0-dim tensors; nothing moves to the host).

    images, rendered: (B, 3, H, W), the render detached by the caller (the encoder is frozen in this step);
    face_mask, segmentation: (B, 1, H, W). ``features`` None skips the preserve and dist terms; a term of
    weight 0 is not computed.
    """
    _check_images(images, rendered, face_mask)
    _check_map("segmentation", segmentation, images)
    valid = face_mask * segmentation
    w = weights
    raw: dict[str, torch.Tensor] = {}
    if w.neighbour:
        raw["neighbour"] = neighbour_loss(images, rendered, valid, w.neighbour_window, misfit)
    if w.area:
        raw["area"] = area_loss(face_mask, segmentation)
    if w.binary:
        raw["binary"] = binary_loss(face_mask, segmentation)
    if features is not None and w.preserve:
        raw["preserve"] = preserve_loss(images, valid, features)
    if features is not None and w.dist:
        raw["dist"] = dist_loss(images, rendered, valid, features)
    out = {name: getattr(w, name) * value for name, value in raw.items()}
    out["total"] = sum(out.values(), images.new_zeros(()))
    out.update({f"raw/{name}": value for name, value in raw.items()})
    return out


def pseudo_mask_loss(logits: torch.Tensor, target: torch.Tensor, face_mask: torch.Tensor) -> torch.Tensor:
    """Class-balanced binary cross-entropy of the segmentation logits against pseudo-masks, inside the face
    region; a scalar (FOCUS's U-Net pre-training, step 3).

    logits, target, face_mask: (B, 1, H, W); ``target`` 1 for inliers. Only ``R S`` is ever used, so pixels
    outside the rendered region carry no information; inside it, outliers are a minority (a fifth or less), and
    plain cross-entropy settles on "all face". Each class therefore gets half the weight, pooled over the batch.
    """
    check_shape("logits", logits, (None, 1, None, None))
    _check_map("target", target, logits)
    _check_map("face_mask", face_mask, logits)
    region = face_mask.detach()
    target = target.detach()
    inliers = (target * region).sum()
    outliers = ((1.0 - target) * region).sum()
    weights = region * torch.where(target > 0.5, 0.5 / inliers.clamp_min(1.0), 0.5 / outliers.clamp_min(1.0))
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weights).sum()


def estimate_misfit_prior(
    residuals: torch.Tensor, face_masks: torch.Tensor, min_count: int = 3, smooth: int = 3
) -> torch.Tensor:
    """The misfit prior: (1, 1, H, W) expected model residual per pixel of the aligned crop.

    Args:
        residuals: (N, 1, H, W) ``||I - I'||`` of N training pictures under the pre-trained encoder.
        face_masks: (N, 1, H, W) their rendered face regions.
        min_count: pixels that are face in fewer pictures take the median over all face pixels instead.
        smooth: side of the box filter applied to the map (1: none), as the crop alignment is not exact.

    The per-pixel median over the pictures where the pixel is face: an occluder covers a given pixel in a
    minority of pictures, so the median follows the model's systematic misfit, not the occluders.
    """
    check_shape("residuals", residuals, (None, 1, None, None))
    check_shape("face_masks", face_masks, tuple(residuals.shape))
    if residuals.shape[0] == 0:
        raise ValueError("the misfit prior needs at least one picture")
    face = face_masks > 0.5
    observed = torch.where(face, residuals, torch.full_like(residuals, float("nan")))
    per_pixel = observed.nanmedian(dim=0, keepdim=True).values
    count = face.sum(dim=0, keepdim=True)
    overall = residuals[face].median() if bool(face.any()) else residuals.new_zeros(())
    prior = torch.where(count >= min_count, per_pixel, overall.expand_as(per_pixel))
    if smooth > 1:
        prior = F.avg_pool2d(prior, smooth, stride=1, padding=smooth // 2, count_include_pad=False)
    return prior.nan_to_num(0.0)
