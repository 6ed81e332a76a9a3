import math

import numpy as np
import pytest
import torch
from scipy.special import sph_harm_y

from renderers.lighting import DEFAULT_AMBIENT, irradiance, lighting_to_rgb, sh_basis, shade

# (l, m) of each of the nine basis entries, and the Lambertian factor per band as Deep3DFaceRecon uses.
ORDER = [(0, 0), (1, -1), (1, 0), (1, 1), (2, -2), (2, -1), (2, 0), (2, 1), (2, 2)]
BAND_FACTOR = [math.pi, 2 * math.pi / math.sqrt(3), 2 * math.pi / math.sqrt(8)]


def real_sh_numpy(normals: np.ndarray) -> np.ndarray:
    """Real spherical harmonics from SciPy's complex ones (no Condon-Shortley phase in the result)."""
    theta = np.arccos(np.clip(normals[:, 2], -1, 1))
    phi = np.arctan2(normals[:, 1], normals[:, 0])
    out = []
    for l, m in ORDER:
        y = sph_harm_y(l, abs(m), theta, phi)
        if m > 0:
            out.append(math.sqrt(2) * (-1) ** m * y.real)
        elif m < 0:
            out.append(math.sqrt(2) * (-1) ** m * y.imag)
        else:
            out.append(y.real)
    return np.stack(out, axis=1)


def random_normals(n: int) -> torch.Tensor:
    v = torch.randn(n, 3, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def test_basis_against_scipy_real_spherical_harmonics():
    normals = random_normals(50)
    ref = real_sh_numpy(normals.numpy())
    # Deep3D's basis: each real SH times its band factor, with sign (-1)^m.
    expected = ref * np.array([BAND_FACTOR[l] * (-1) ** m for l, m in ORDER])
    np.testing.assert_allclose(sh_basis(normals).numpy(), expected, atol=1e-12)


def test_irradiance_against_numpy_reference():
    normals = random_normals(30).reshape(2, 15, 3)
    lighting = torch.randn(2, 27, dtype=torch.float64) * 0.3
    gamma = lighting.numpy().reshape(2, 3, 9).copy()
    gamma[:, :, 0] += DEFAULT_AMBIENT
    basis = (
        real_sh_numpy(normals.reshape(-1, 3).numpy()) * np.array([BAND_FACTOR[l] * (-1) ** m for l, m in ORDER])
    ).reshape(2, 15, 9)
    ref = np.einsum("bnk,bck->bnc", basis, gamma)
    np.testing.assert_allclose(irradiance(normals, lighting).numpy(), ref, atol=1e-12)


def test_zero_lighting_is_uniform_ambient():
    e = irradiance(random_normals(8).unsqueeze(0).float(), torch.zeros(1, 27))
    torch.testing.assert_close(e, torch.full_like(e, DEFAULT_AMBIENT * math.sqrt(math.pi) / 2))


def test_monochrome_equals_rgb_with_equal_channels():
    normals = random_normals(10).unsqueeze(0)
    mono = torch.randn(1, 9, dtype=torch.float64)
    rgb = mono.repeat(1, 3)
    torch.testing.assert_close(irradiance(normals, mono), irradiance(normals, rgb))
    e = irradiance(normals, mono)
    torch.testing.assert_close(e[..., 0], e[..., 2])


def test_light_from_the_front_brightens_front_facing_normals():
    lighting = torch.zeros(1, 9)
    lighting[0, 2] = 0.5
    e = irradiance(torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]]), lighting)
    assert float(e[0, 0, 0]) > float(e[0, 1, 0])


def test_bad_lighting_size():
    with pytest.raises(ValueError, match="9 .* or 27"):
        lighting_to_rgb(torch.zeros(1, 10))


def test_gradcheck_shading():
    normals = random_normals(6).reshape(1, 6, 3).requires_grad_()
    albedo = torch.rand(1, 6, 3, dtype=torch.float64, requires_grad=True)
    lighting = torch.randn(1, 27, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(shade, (albedo, normals, lighting))
