"""Priors on the regressed coefficients (Deng et al. 2019, §4.2) and Deep3D's lighting-colour prior."""

from __future__ import annotations

import torch

from face_model.coefficients import SH_BANDS, Coefficients
from losses._shapes import check_shape

PAPER_W_TEX = 1.7e-3
"""Albedo-coefficient weight in the paper; Deep3D's released code (TF and PyTorch) uses `DEEP3D_W_TEX`."""

DEEP3D_W_TEX = 1.7e-2


def coefficient_regularization(
    coeffs: Coefficients,
    *,
    w_id: float = 1.0,
    w_exp: float = 0.8,
    w_tex: float = PAPER_W_TEX,
) -> torch.Tensor:
    """``w_id ||alpha||^2 + w_exp ||beta||^2 + w_tex ||delta||^2`` averaged over the batch; a scalar.

    alpha, beta, delta are ``coeffs.identity`` (B, n_id), ``coeffs.expression`` (B, n_exp) and
    ``coeffs.albedo`` (B, n_tex); the squared norms are sums over coefficients (the N(0, 1) prior's
    negative log-likelihood up to a factor), then the batch mean is taken, as Deep3D.
    """
    batch = coeffs.identity.shape[0]
    for name in ("identity", "expression", "albedo"):
        check_shape(f"coeffs.{name}", getattr(coeffs, name), (batch, None))
    return (
        w_id * coeffs.identity.square().sum()
        + w_exp * coeffs.expression.square().sum()
        + w_tex * coeffs.albedo.square().sum()
    ) / batch


def texture_flatness(albedo: torch.Tensor, skin_mask: torch.Tensor) -> torch.Tensor:
    """Albedo variance over the skin region; a scalar.

    Args:
        albedo: (B, V, 3) per-vertex reflectance.
        skin_mask: (V,) bool or {0, 1} mask of the skin vertices.

    The squared RGB distance of every skin vertex's albedo from that image's mean skin albedo, averaged
    over skin vertices and the batch (Deep3D's reflectance loss). It discourages baking shading or
    occluders into the albedo.
    """
    check_shape("albedo", albedo, (None, None, 3))
    check_shape("skin_mask", skin_mask, (albedo.shape[1],))
    # A float weight instead of boolean indexing: indexing by a mask would sync to count its entries.
    weight = skin_mask.to(albedo.dtype).reshape(1, -1, 1)
    count = weight.sum().clamp_min(1.0)
    mean = (albedo * weight).sum(dim=1, keepdim=True) / count
    return ((albedo - mean) * weight).square().sum() / (albedo.shape[0] * count)


def lighting_color_regularization(lighting: torch.Tensor) -> torch.Tensor:
    """Spread of the SH lighting across colour channels; a scalar (Deep3D's "gamma" loss).

    Args:
        lighting: (B, 27) channel-major RGB or (B, 9) monochrome SH coefficients.

    For RGB, the mean over (B, 3, 9) of the squared difference between each channel's coefficient and
    the mean of the three channels, which pushes towards near-white light so that skin colour is
    explained by albedo. Monochrome lighting is white by construction, so the value is 0.
    """
    check_shape("lighting", lighting, (None, None))
    if lighting.shape[1] == SH_BANDS:
        return lighting.new_zeros(())
    if lighting.shape[1] != 3 * SH_BANDS:
        raise ValueError(f"lighting must have {SH_BANDS} or {3 * SH_BANDS} coefficients, got {lighting.shape[1]}")
    gamma = lighting.reshape(-1, 3, SH_BANDS)
    return (gamma - gamma.mean(dim=1, keepdim=True)).square().mean()
