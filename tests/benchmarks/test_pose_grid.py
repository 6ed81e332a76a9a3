"""The pose grid's two looks: the matched render and the appearance gap, on the same faces."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.pose_grid import POSE_GRID_LOOKS, PoseGridDataset
from datamodules.appearance import APPEARANCE_GAP

SIZE = 32


@pytest.fixture(scope="module")
def grids(ict_small):
    return {look: PoseGridDataset(ict_small, 1, seed=0, image_size=SIZE, look=look) for look in POSE_GRID_LOOKS}


def test_both_looks_show_the_same_faces_in_the_same_poses(grids):
    matched, gap = grids["matched"].arrays, grids["appearance_gap"].arrays
    np.testing.assert_allclose(matched.coefficients, gap.coefficients, atol=1e-5)
    np.testing.assert_allclose(matched.landmarks, gap.landmarks, atol=1e-3)
    assert np.abs(matched.images.astype(float) - gap.images).mean() > 10.0


def test_the_matched_look_is_the_face_models_own_render(grids):
    assert grids["matched"].appearance.look == "model"
    gap = grids["appearance_gap"]
    assert gap.appearance == APPEARANCE_GAP and gap.appearance.sh_probability == 0.0
    assert gap.appearance.lip_strength == (0.0, 0.0)
    for look, dataset in grids.items():
        assert dataset.describe()["look"] == look


def test_unknown_look_is_named(ict_small):
    with pytest.raises(ValueError, match="appearance_gap"):
        PoseGridDataset(ict_small, 1, look="photos")
