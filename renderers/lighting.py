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

from face_model.coefficients import DEFAULT_AMBIENT, SH_BANDS

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
    # Adding the ambient term to band 0 alone: writing it into a zero offset (offset[0] = ambient) would
    # copy a host scalar to the device, a sync on CUDA in every training step.
    return torch.cat([gamma[..., :1] + ambient, gamma[..., 1:]], dim=-1)


def irradiance(normals: torch.Tensor, lighting: torch.Tensor, ambient: float = DEFAULT_AMBIENT) -> torch.Tensor:
    """(B, N, 3) unit normals, (B, 9|27) lighting -> (B, N, 3) RGB irradiance."""
    return sh_basis(normals) @ lighting_to_rgb(lighting, ambient).transpose(1, 2)


def shade(
    albedo: torch.Tensor, normals: torch.Tensor, lighting: torch.Tensor, ambient: float = DEFAULT_AMBIENT
) -> torch.Tensor:
    """(B, N, 3) albedo in [0, 1], (B, N, 3) unit normals, lighting -> (B, N, 3) Lambertian colour."""
    return albedo * irradiance(normals, lighting, ambient)


# ------------------------------------------------------------------------ directional lights (not SH)


def lambert(normals: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) unit normals, (B, L, 3) unit directions towards L distant lights -> (B, N, L) clamped cosine
    ``max(n . l, 0)``: the irradiance of a Lambertian surface from each light of unit intensity, zero for
    surfaces facing away (unlike a second-order SH light, which cannot be zero over a hemisphere)."""
    return (normals @ directions.transpose(1, 2)).clamp_min(0.0)


def hemisphere_ambient(
    normals: torch.Tensor, sky: torch.Tensor, ground: torch.Tensor, up: tuple[float, float, float] = (0.0, 1.0, 0.0)
) -> torch.Tensor:
    """(B, N, 3) unit normals, (B, 3) sky and ground RGB -> (B, N, 3) ambient irradiance that blends from the
    ground colour (normals pointing down) to the sky colour (pointing ``up``), linearly in ``n . up``."""
    t = 0.5 + 0.5 * (normals @ normals.new_tensor(up)).unsqueeze(-1)
    return ground.unsqueeze(1) + t * (sky - ground).unsqueeze(1)


def blinn_phong(
    normals: torch.Tensor, directions: torch.Tensor, view: torch.Tensor, shininess: torch.Tensor
) -> torch.Tensor:
    """(B, N, 3) unit normals, (B, L, 3) unit light directions, (B, N, 3) unit directions to the viewer,
    (B,) exponents -> (B, N, L) Blinn-Phong highlight ``max(n . h, 0) ** shininess``, zero where the light is
    behind the surface."""
    half = directions.unsqueeze(1) + view.unsqueeze(2)  # (B, N, L, 3)
    half = half / half.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos = (normals.unsqueeze(2) * half).sum(-1).clamp_min(0.0)
    facing = (normals @ directions.transpose(1, 2)) > 0
    return torch.where(facing, cos ** shininess.view(-1, 1, 1), torch.zeros_like(cos))
