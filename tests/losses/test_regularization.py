import numpy as np
import pytest
import torch

from losses.regularization import (
    coefficient_regularization,
    lighting_color_regularization,
    texture_flatness,
)


def test_coefficient_regularization_matches_numpy(make_coeffs):
    coeffs = make_coeffs(batch=3)
    i, e, t = (getattr(coeffs, n).detach().double().numpy() for n in ("identity", "expression", "albedo"))
    expected = (1.0 * (i**2).sum() + 0.8 * (e**2).sum() + 1.7e-3 * (t**2).sum()) / 3
    np.testing.assert_allclose(coefficient_regularization(coeffs).detach().numpy(), expected, rtol=1e-5)
    custom = coefficient_regularization(coeffs, w_id=0.0, w_exp=0.0, w_tex=2.0)
    np.testing.assert_allclose(custom.detach().numpy(), 2.0 * (t**2).sum() / 3, rtol=1e-5)


def test_coefficient_regularization_is_zero_at_the_mean_and_has_gradients(make_coeffs):
    coeffs = make_coeffs()
    zero = coeffs.replace(**{n: torch.zeros_like(getattr(coeffs, n)) for n in ("identity", "expression", "albedo")})
    assert coefficient_regularization(zero).item() == 0.0
    coefficient_regularization(coeffs).backward()
    for name in ("identity", "expression", "albedo"):
        assert getattr(coeffs, name).grad.abs().sum() > 0


def test_texture_flatness_matches_numpy():
    generator = torch.Generator().manual_seed(0)
    albedo = torch.rand(2, 7, 3, generator=generator)
    skin = torch.tensor([True, False, True, True, False, True, False])
    a = albedo.numpy().astype(np.float64)[:, skin.numpy()]
    expected = ((a - a.mean(axis=1, keepdims=True)) ** 2).sum(-1).mean()
    np.testing.assert_allclose(texture_flatness(albedo, skin).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(texture_flatness(albedo, skin.float()).numpy(), expected, rtol=1e-5)


def test_texture_flatness_ignores_non_skin_vertices():
    albedo = torch.full((2, 6, 3), 0.4)
    skin = torch.tensor([True, True, True, False, False, False])
    albedo[:, 3:] = torch.rand(2, 3, 3)
    assert texture_flatness(albedo, skin).item() == 0.0
    albedo[0, 0, 1] = 0.9
    assert texture_flatness(albedo, skin).item() > 0.0


def test_texture_flatness_empty_skin_is_finite():
    assert texture_flatness(torch.rand(2, 4, 3), torch.zeros(4, dtype=torch.bool)).item() == 0.0


def test_lighting_color_regularization_matches_numpy():
    generator = torch.Generator().manual_seed(0)
    lighting = torch.randn(2, 27, generator=generator, requires_grad=True)
    gamma = lighting.detach().numpy().astype(np.float64).reshape(2, 3, 9)
    expected = ((gamma - gamma.mean(axis=1, keepdims=True)) ** 2).mean()
    got = lighting_color_regularization(lighting)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-5)
    got.backward()
    assert lighting.grad.abs().sum() > 0


def test_lighting_color_regularization_is_zero_for_white_light():
    grey = torch.randn(2, 9).repeat(1, 3)
    assert lighting_color_regularization(grey).item() == pytest.approx(0.0, abs=1e-12)
    assert lighting_color_regularization(torch.randn(2, 9)).item() == 0.0
    with pytest.raises(ValueError, match="lighting"):
        lighting_color_regularization(torch.randn(2, 10))
