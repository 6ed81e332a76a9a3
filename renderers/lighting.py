"""Second-order spherical-harmonics (SH) shading of a Lambertian surface, as pure functions.

Irradiance at a surface with unit normal n is ``E(n) = sum_k Y_k(n) * gamma_k`` where ``Y_k`` are the nine
real SH basis functions already multiplied by the cosine-lobe convolution factors, and the colour is
``albedo * E``. Basis order, signs and constants follow Deep3DFaceRecon so that its predicted lighting
coefficients mean the same here; normals are taken in the posed model frame (y up, z towards the
camera), as there.

Lighting coefficients are offsets from a default ambient light of 0.8 on the constant band, so zero
coefficients give a uniformly lit face.
"""

from __future__ import annotations

import math

import torch

from face_model.coefficients import SH_BANDS

DEFAULT_AMBIENT = 0.8
"""Added to the constant band of every colour channel, so lighting coefficients start at zero."""

# Per band: (SH normalisation) x (Deep3D's convolution factors pi, 2pi/sqrt(3), 2pi/sqrt(8)).
_BAND0 = math.sqrt(math.pi) / 2.0
_BAND1 = math.sqrt(math.pi)
_BAND2 = math.sqrt(15.0 * math.pi / 8.0)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit normals -> (..., 9) convolved SH basis values."""
    x, y, z = normals.unbind(-1)
    return torch.stack(
        [
            torch.full_like(x, _BAND0),
            -_BAND1 * y,
            _BAND1 * z,
            -_BAND1 * x,
            _BAND2 * x * y,
            -_BAND2 * y * z,
            _BAND2 / (2.0 * math.sqrt(3.0)) * (3.0 * z * z - 1.0),
            -_BAND2 * x * z,
            _BAND2 / 2.0 * (x * x - y * y),
        ],
        dim=-1,
    )


def lighting_to_rgb(lighting: torch.Tensor, ambient: float = DEFAULT_AMBIENT) -> torch.Tensor:
    """(B, 9) monochrome or (B, 27) channel-major RGB coefficients -> (B, 3, 9) absolute SH per channel."""
    batch, n = lighting.shape
    if n == SH_BANDS:
        gamma = lighting.unsqueeze(1).expand(batch, 3, SH_BANDS)
    elif n == 3 * SH_BANDS:
        gamma = lighting.reshape(batch, 3, SH_BANDS)
    else:
        raise ValueError(f"lighting must have 9 (monochrome) or 27 (RGB) coefficients, got {n}")
    offset = torch.zeros(SH_BANDS, dtype=lighting.dtype, device=lighting.device)
    offset[0] = ambient
    return gamma + offset


def irradiance(normals: torch.Tensor, lighting: torch.Tensor, ambient: float = DEFAULT_AMBIENT) -> torch.Tensor:
    """(B, N, 3) unit normals, (B, 9|27) lighting -> (B, N, 3) RGB irradiance."""
    return sh_basis(normals) @ lighting_to_rgb(lighting, ambient).transpose(1, 2)


def shade(albedo: torch.Tensor, normals: torch.Tensor, lighting: torch.Tensor,
          ambient: float = DEFAULT_AMBIENT) -> torch.Tensor:
    """(B, N, 3) albedo in [0, 1], (B, N, 3) unit normals, lighting -> (B, N, 3) Lambertian colour."""
    return albedo * irradiance(normals, lighting, ambient)
