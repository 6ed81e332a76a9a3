from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from preprocessing.skin import DEFAULT_MODEL_PATH, SkinModel, skin_posterior


def scipy_posterior(rgb: np.ndarray, prior: float) -> np.ndarray:
    """Independent reference: densities summed component by component with scipy.stats."""
    model = SkinModel.default()

    def density(gmm) -> np.ndarray:
        return sum(
            w * stats.multivariate_normal(mean=m, cov=np.diag(v)).pdf(rgb)
            for m, v, w in zip(gmm.mean, gmm.var, gmm.weight)
        )

    skin, nonskin = density(model.skin) * prior, density(model.nonskin) * (1 - prior)
    return skin / (skin + nonskin)


def test_asset_ships_with_the_package():
    assert DEFAULT_MODEL_PATH.is_file()
    assert (DEFAULT_MODEL_PATH.parent / "README.md").is_file()
    model = SkinModel.from_file(DEFAULT_MODEL_PATH)
    assert model.skin.mean.shape == (16, 3) and model.nonskin.var.shape == (16, 3)


def test_readme_sanity_numbers():
    values = skin_posterior(np.array([[[200, 150, 120], [30, 30, 30]]], dtype=np.uint8))
    assert values[0, 0] == pytest.approx(0.98, abs=0.01)
    assert values[0, 1] == pytest.approx(0.03, abs=0.01)


@pytest.mark.parametrize("prior", [0.5, 0.2])
def test_matches_scipy(prior):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(300, 3)).astype(np.float64)
    ours = skin_posterior(torch.from_numpy(rgb.T.reshape(3, 300, 1)) / 255.0, prior=prior).numpy().ravel()
    np.testing.assert_allclose(ours, scipy_posterior(rgb, prior), atol=1e-6)


def test_layouts_and_dtypes_agree():
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    from_uint8 = skin_posterior(batch)
    assert from_uint8.shape == (2, 5, 7) and from_uint8.dtype == np.float32
    np.testing.assert_allclose(skin_posterior(batch.astype(np.float32) / 255.0), from_uint8, atol=1e-5)
    np.testing.assert_allclose(skin_posterior(batch[1]), from_uint8[1], atol=1e-6)
    channels_first = torch.from_numpy(batch).permute(0, 3, 1, 2)
    np.testing.assert_allclose(skin_posterior(channels_first).numpy(), from_uint8, atol=1e-6)
    np.testing.assert_allclose(skin_posterior(channels_first[0]).numpy(), from_uint8[0], atol=1e-6)


def test_prior_shifts_the_posterior_and_extremes_stay_finite():
    colours = np.array([[[0, 0, 0], [255, 255, 255], [0, 255, 0], [200, 150, 120]]], dtype=np.uint8)
    low, high = skin_posterior(colours, prior=0.1), skin_posterior(colours, prior=0.9)
    assert np.isfinite(low).all() and np.isfinite(high).all()
    assert (high >= low).all() and ((0 <= low) & (high <= 1)).all()
    assert skin_posterior(colours)[0, 2] < 0.01  # saturated green is not skin


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        skin_posterior(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        skin_posterior(torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError):
        skin_posterior(np.zeros((4, 4, 3), np.uint8), prior=1.0)
    with pytest.raises(ValueError):
        skin_posterior(np.full((4, 4, 3), 1000, np.int32))
