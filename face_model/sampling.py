"""Random coefficients drawn from the model priors (preview, synthetic data, tests)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from face_model.coefficients import DEFAULT_AMBIENT, SH_BANDS, Coefficients, CoeffLayout


@dataclass(frozen=True)
class CoefficientPrior:
    """Standard deviations / ranges for sampling. Identity, expression and albedo coefficients are
    N(0, std^2) in prior units (std 1 = the model's own prior); angles are uniform in degrees."""

    identity_std: float = 1.0
    expression_std: float = 0.7
    albedo_std: float = 1.0
    yaw_deg: float = 60.0
    pitch_deg: float = 20.0
    roll_deg: float = 10.0
    translation_std: float = 0.05
    """Model units (decimetres): 5 mm, small against the ~15 cm face."""
    ambient_std: float = 0.1
    """Spread of the constant SH band around the default ambient light."""
    directional_std: float = 0.15
    """Spread of the first-order SH bands (light direction)."""
    higher_order_std: float = 0.05
    colour_jitter: float = 0.08
    """Relative spread of the RGB light colour around white."""


def uniform(shape: tuple[int, ...], limit: float, generator: torch.Generator | None) -> torch.Tensor:
    return (torch.rand(shape, generator=generator) * 2.0 - 1.0) * limit


def sample_lighting(
    batch: int, sh_channels: int, prior: CoefficientPrior, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, 9 * sh_channels) SH offsets: a white light of random strength and direction, tinted."""
    band_std = torch.tensor([prior.ambient_std] + [prior.directional_std] * 3 + [prior.higher_order_std] * 5)
    mono = torch.randn(batch, SH_BANDS, generator=generator) * band_std
    if sh_channels == 1:
        return mono
    tint = 1.0 + prior.colour_jitter * torch.randn(batch, 3, 1, generator=generator).clamp(-2, 2)
    # Tinting the full light (ambient included) keeps the channels consistent in direction.
    ambient = torch.zeros(SH_BANDS)
    ambient[0] = DEFAULT_AMBIENT
    rgb = (mono.unsqueeze(1) + ambient) * tint - ambient
    return rgb.reshape(batch, 3 * SH_BANDS)


def sample_coefficients(
    layout: CoeffLayout,
    batch: int,
    prior: CoefficientPrior = CoefficientPrior(),
    generator: torch.Generator | None = None,
) -> Coefficients:
    """Draw a batch of `Coefficients` from the prior (on the CPU; move them with ``.to``)."""
    deg = math.pi / 180.0
    angles = torch.stack(
        [
            uniform((batch,), prior.pitch_deg * deg, generator),
            uniform((batch,), prior.yaw_deg * deg, generator),
            uniform((batch,), prior.roll_deg * deg, generator),
        ],
        dim=1,
    )
    return Coefficients(
        identity=torch.randn(batch, layout.n_id, generator=generator) * prior.identity_std,
        expression=torch.randn(batch, layout.n_exp, generator=generator) * prior.expression_std,
        albedo=torch.randn(batch, layout.n_tex, generator=generator) * prior.albedo_std,
        angles=angles,
        lighting=sample_lighting(batch, layout.sh_channels, prior, generator),
        translation=torch.randn(batch, 3, generator=generator) * prior.translation_std,
    )
