"""FOCUS loss terms against hand-computed tiny examples and independent (loop) formulations."""

from __future__ import annotations

import math

import pytest
import torch

from losses.focus import (
    FocusLossWeights,
    apply_misfit_prior,
    area_loss,
    binary_loss,
    dist_loss,
    estimate_misfit_prior,
    masked_photometric_loss,
    neighbour_loss,
    preserve_loss,
    robust_photometric_loss,
    segmentation_losses,
)


def _pixel_images(distances: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """1 x 3 x 1 x N images whose pixel n differs by distances[n] along red."""
    n = len(distances)
    images = torch.full((1, 3, 1, n), 0.5)
    rendered = images.clone()
    rendered[0, 0, 0] += torch.tensor(distances)
    return images, rendered


def test_robust_loss_is_the_truncated_quadratic_by_hand():
    sigma, k = 0.1, 2.0
    images, rendered = _pixel_images([0.0, 0.1, 0.3, 0.05])
    face = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(1, 1, 1, 4)
    loss, inlier = robust_photometric_loss(images, rendered, face, sigma=sigma, threshold_sigmas=k)
    # Face pixels: d = 0 -> 0; d = 0.1 -> 0.5; d = 0.3 beyond 0.2 -> capped at 0.5 * 4 = 2; mean over 3 pixels.
    assert loss.item() == pytest.approx((0.0 + 0.5 + 2.0) / 3, rel=1e-5)
    assert inlier.flatten().tolist() == [1.0, 1.0, 0.0, 0.0]


def test_robust_loss_matches_focus_likelihood_comparison():
    """Independent formulation: pixel is inlier iff the Gaussian log-likelihood beats the uniform one."""
    sigma, k = 0.043, 3.0
    torch.manual_seed(0)
    images, rendered = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 6, 6) * 0.3 + 0.35
    rendered = images + (rendered - images) * torch.rand(2, 1, 6, 6) * 0.4
    face = (torch.rand(2, 1, 6, 6) > 0.2).float()
    _, inlier = robust_photometric_loss(images, rendered, face, sigma=sigma, threshold_sigmas=k)
    normaliser = -1.5 * math.log(2 * math.pi) - 3 * math.log(sigma)
    fg = -0.5 * ((images - rendered) ** 2).sum(1, keepdim=True) / sigma**2 + normaliser
    bg = -0.5 * k**2 + normaliser
    assert torch.equal(inlier, face * (fg > bg).float())
    assert 0 < inlier.sum() < face.sum()


def test_robust_loss_gives_no_gradient_to_outliers():
    images, rendered = _pixel_images([0.01, 0.5])
    rendered.requires_grad_(True)
    loss, _ = robust_photometric_loss(images, rendered, torch.ones(1, 1, 1, 2))
    loss.backward()
    assert rendered.grad[0, 0, 0, 0] != 0 and rendered.grad[0, 0, 0, 1] == 0


def test_misfit_prior_widens_the_inlier_test():
    images, rendered = _pixel_images([0.2, 0.2])
    misfit = torch.tensor([0.0, 0.15]).view(1, 1, 1, 2)
    _, inlier = robust_photometric_loss(images, rendered, torch.ones(1, 1, 1, 2), 0.05, 3.0, misfit=misfit)
    assert inlier.flatten().tolist() == [0.0, 1.0]
    assert apply_misfit_prior(torch.tensor([[[[0.2, 0.1]]]]), torch.tensor([[[[0.15, 0.15]]]])).flatten()[
        1
    ].item() == pytest.approx(0.0)


def test_masked_photometric_and_area_by_hand():
    images, rendered = _pixel_images([0.3, 0.6, 0.9])
    face = torch.tensor([1.0, 1.0, 0.0]).view(1, 1, 1, 3)
    seg = torch.tensor([1.0, 0.5, 1.0]).view(1, 1, 1, 3)
    # (1 * 0.3 + 0.5 * 0.6) / 1.5; the third pixel is not face.
    assert masked_photometric_loss(images, rendered, face, seg).item() == pytest.approx(0.4, rel=1e-5)
    assert area_loss(face, seg).item() == pytest.approx(0.25)


def test_binary_loss_by_hand():
    face = torch.ones(1, 1, 1, 4)
    seg = torch.tensor([0.0, 1.0, 0.5, 0.8]).view(1, 1, 1, 4)
    assert binary_loss(face, seg).item() == pytest.approx((0 + 0 + 0.5 + 0.2) / 4)


def _neighbour_reference(images, rendered, valid, window):
    """Loop over pixels and offsets."""
    m = window // 2
    _, _, h, w = images.shape
    total, count = 0.0, 0
    for b in range(images.shape[0]):
        for i in range(m, h - m):
            for j in range(m, w - m):
                best = min(
                    float(
                        torch.linalg.vector_norm(
                            rendered[b, :, i, j] * valid[b, 0, i, j]
                            - images[b, :, i + di, j + dj] * valid[b, 0, i + di, j + dj]
                        )
                    )
                    for di in range(-m, m + 1)
                    for dj in range(-m, m + 1)
                )
                total += best
                count += 1
    return total / count


def test_neighbour_loss_matches_a_loop():
    torch.manual_seed(1)
    images, rendered, valid = torch.rand(2, 3, 7, 6), torch.rand(2, 3, 7, 6), torch.rand(2, 1, 7, 6)
    assert neighbour_loss(images, rendered, valid, 3).item() == pytest.approx(
        _neighbour_reference(images, rendered, valid, 3), rel=1e-5
    )


def test_neighbour_loss_forgives_a_one_pixel_shift_and_pushes_outliers_out():
    torch.manual_seed(2)
    images = torch.rand(1, 3, 9, 9)
    shifted = torch.roll(images, shifts=1, dims=3)
    valid = torch.ones(1, 1, 9, 9)
    assert neighbour_loss(images, shifted, valid, 3).item() < 1e-6
    other = torch.rand(1, 3, 9, 9)
    seg = torch.full((1, 1, 9, 9), 0.9, requires_grad=True)
    neighbour_loss(images, other, seg, 3).backward()
    assert seg.grad.mean() > 0  # lowering S lowers the loss


def test_neighbour_loss_rejects_bad_window():
    with pytest.raises(ValueError, match="odd"):
        neighbour_loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), torch.ones(1, 1, 8, 8), 4)


def test_preserve_and_dist_with_identity_features():
    flat = lambda x: x.flatten(1)  # noqa: E731
    images = torch.rand(2, 3, 4, 4) + 0.1
    full = torch.ones(2, 1, 4, 4)
    assert preserve_loss(images, full, flat).item() == pytest.approx(0.0, abs=1e-6)
    assert dist_loss(images, images.clone(), full, flat).item() == pytest.approx(0.0, abs=1e-6)
    # Masking half of a constant image: cos = sqrt(1/2).
    const = torch.ones(1, 3, 2, 2)
    half = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 2)
    assert preserve_loss(const, half, flat).item() == pytest.approx(1 - math.sqrt(0.5), rel=1e-5)
    assert dist_loss(const, -const, torch.ones(1, 1, 2, 2), flat).item() == pytest.approx(2.0, rel=1e-5)


def test_segmentation_losses_weights_and_total():
    torch.manual_seed(3)
    images, rendered = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 12, 12)
    face, seg = torch.ones(2, 1, 12, 12), torch.rand(2, 1, 12, 12)
    w = FocusLossWeights()
    out = segmentation_losses(images, rendered, face, seg, w, features=lambda x: x.flatten(1))
    assert set(out) >= {"neighbour", "area", "binary", "preserve", "dist", "total"}
    assert out["neighbour"].item() == pytest.approx(15.0 * out["raw/neighbour"].item())
    assert out["total"].item() == pytest.approx(
        sum(out[k].item() for k in ("neighbour", "area", "binary", "preserve", "dist"))
    )
    assert "dist" not in segmentation_losses(images, rendered, face, seg, w)


def test_focus_weights_are_the_published_ones_and_validated():
    w = FocusLossWeights()
    assert (w.neighbour, w.dist, w.area, w.preserve, w.binary) == (15.0, 3.0, 0.5, 0.25, 10.0)
    with pytest.raises(ValueError, match=">= 0"):
        FocusLossWeights(area=-1.0)


def test_misfit_prior_is_the_median_over_face_pixels():
    residuals = torch.tensor([0.1, 0.2, 0.9, 5.0]).view(4, 1, 1, 1).expand(4, 1, 2, 2).clone()
    masks = torch.ones(4, 1, 2, 2)
    masks[3] = 0.0  # the 5.0 picture is not face there: ignored
    prior = estimate_misfit_prior(residuals, masks, min_count=2, smooth=1)
    assert torch.allclose(prior, torch.full((1, 1, 2, 2), 0.2))
    masks[:, :, 0, 0] = 0.0
    masks[0, :, 0, 0] = 1.0  # one observation only: falls back to the median of all face pixels
    prior = estimate_misfit_prior(residuals, masks, min_count=2, smooth=1)
    assert prior[0, 0, 0, 0].item() == pytest.approx(residuals[masks > 0.5].median().item())


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="face_mask"):
        robust_photometric_loss(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4), torch.ones(1, 4, 4))


def test_pseudo_mask_loss_balances_the_classes_inside_the_region():
    from losses.focus import pseudo_mask_loss

    target = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 5)
    region = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]).view(1, 1, 1, 5)
    logits = torch.tensor([2.0, 0.0, -1.0, 1.0, 5.0]).view(1, 1, 1, 5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten()
    # Inliers share half the weight (3 pixels), the one outlier inside the region the other half.
    expected = 0.5 * bce[:3].mean() + 0.5 * bce[3]
    assert pseudo_mask_loss(logits, target, region).item() == pytest.approx(expected.item(), rel=1e-6)
