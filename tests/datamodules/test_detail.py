"""The synthetic detail ground truth: deterministic, split-separated, detail inside the charts, consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.detail import MM, DetailDataSettings, DetailFaceDataset, collate_detail
from renderers.detail_renderer import deform_vertices

SETTINGS = DetailDataSettings(n_train=3, n_val=2, n_test=3, image_size=48, mid_size=16, high_size=32)


@pytest.fixture(scope="module")
def test_split(ict_small):
    return DetailFaceDataset(ict_small, "test", SETTINGS)


def test_samples_are_deterministic_and_splits_differ(ict_small, test_split):
    again = DetailFaceDataset(ict_small, "test", SETTINGS)
    for key in ("images", "deformation", "displacement", "coefficients"):
        np.testing.assert_array_equal(test_split.arrays[key], again.arrays[key])
    train = DetailFaceDataset(ict_small, "train", SETTINGS)
    assert not np.allclose(train.arrays["deformation"][0], test_split.arrays["deformation"][0])
    assert not np.allclose(train.arrays["coefficients"][0], test_split.arrays["coefficients"][0])


def test_detail_lies_in_the_charts_with_plausible_size(test_split):
    a = test_split.arrays
    mid, high = test_split.layout.mid.mask.numpy(), test_split.layout.high.mask.numpy()
    assert np.abs(a["deformation"][:, :, ~mid]).max() == 0 and np.abs(a["displacement"][:, :, ~high]).max() == 0
    assert 1 * MM < np.abs(a["deformation"]).max() < 15 * MM
    assert 0.1 * MM < np.abs(a["displacement"]).max() < 2 * MM


def test_true_vertices_are_the_3dmm_plus_the_deformation(ict_small, test_split):
    batch = collate_detail([test_split[i] for i in range(3)])
    assert batch.face.images.shape == (3, 3, 48, 48) and batch.displacement.shape == (3, 1, 32, 32)
    coeffs = ict_small.layout.split(batch.face.ground_truth.coefficients)
    expected = deform_vertices(ict_small.shape(coeffs), batch.deformation, test_split.layout)
    torch.testing.assert_close(batch.face.ground_truth.vertices, expected, atol=1e-5, rtol=0)
