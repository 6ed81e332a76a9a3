"""FOCUS's occluded synthetic faces: exact visibility masks, every occluder kind, deterministic held-out split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.appearance import AppearanceSettings
from datamodules.occlusion import (
    OCCLUSION_KINDS,
    OccludedFaceDataset,
    OcclusionDataModule,
    OcclusionSettings,
    collate_focus_samples,
    draw_realistic_occluder,
)
from datamodules.synthetic import SyntheticFaceDataset, SyntheticFaceSettings


def _landmarks(size: int) -> np.ndarray:
    """A plausible 68-point face in a ``size`` crop: the ICT mean face's template spread (rough is enough)."""
    rng = np.random.default_rng(0)
    points = np.zeros((68, 2))
    points[0:17] = np.stack([np.linspace(0.2, 0.8, 17), 0.45 + 0.4 * np.sin(np.linspace(0, np.pi, 17))], 1)
    points[17:27] = np.stack([np.linspace(0.28, 0.72, 10), np.full(10, 0.35)], 1)
    points[27:36] = np.stack([np.full(9, 0.5), np.linspace(0.4, 0.62, 9)], 1)
    points[36:42] = [0.35, 0.43] + rng.normal(0, 0.01, (6, 2))
    points[42:48] = [0.65, 0.43] + rng.normal(0, 0.01, (6, 2))
    points[48:68] = np.stack([np.linspace(0.38, 0.62, 20), np.full(20, 0.75)], 1)
    return points * size


@pytest.mark.parametrize("kind", OCCLUSION_KINDS)
def test_every_kind_covers_part_of_the_face_and_changes_only_covered_pixels(kind):
    size = 64
    image = np.full((size, size, 3), 0.5, np.float32)
    out, coverage = draw_realistic_occluder(image, _landmarks(size), np.random.default_rng(3), kind)
    assert out.shape == image.shape and coverage.shape == (size, size)
    assert 0.0 <= coverage.min() and coverage.max() <= 1.0
    assert 0.005 < (coverage > 0.5).mean() < 0.9
    assert np.array_equal(out[coverage == 0], image[coverage == 0])


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown occluder kind"):
        draw_realistic_occluder(np.zeros((8, 8, 3), np.float32), _landmarks(8), np.random.default_rng(0), "hat")
    with pytest.raises(ValueError, match="unknown occluder kinds"):
        OcclusionSettings(kinds=("hat",))


def _faces(**sizes) -> SyntheticFaceSettings:
    """Clean faces in the face model's own look (fast to render)."""
    return SyntheticFaceSettings(
        **{"occluder_probability": 0.0, "appearance": AppearanceSettings(look="model"), **sizes}
    )


@pytest.fixture(scope="module")
def base(ict_small):
    return SyntheticFaceDataset(ict_small, _faces(n_test=6), "test", image_size=48)


def test_visibility_is_the_face_region_minus_the_occluders(base):
    data = OccludedFaceDataset(base, OcclusionSettings(probability=1.0, max_occluders=2))
    clean = OccludedFaceDataset(base, OcclusionSettings(probability=0.0))
    for i in range(len(data)):
        item, twin = data[i], clean[i]
        region, visible = item["region"][0].bool(), item["visible"][0].bool()
        # Model look: the region is exactly where the face render differs from the background-only picture
        # cannot be checked directly, but it must be a proper part of the crop and contain the visible pixels.
        assert 0.05 < region.float().mean() < 0.9
        assert not (visible & ~region).any()
        assert torch.equal(twin["visible"], twin["region"]) and torch.equal(twin["region"], item["region"])
        changed = (item["image"] - twin["image"]).abs().amax(0) > 1.5 / 255
        hidden = region & ~visible
        # Every hidden face pixel was painted over (the occluder colour dominates there) ...
        assert changed[hidden].float().mean() > 0.9 or hidden.sum() == 0
        # ... and visible face pixels were touched only at the occluders' anti-aliased edges, next to hidden
        # pixels or to the outside of the region (where occluders are not recorded).
        near = torch.nn.functional.max_pool2d((~visible).float()[None, None], 3, stride=1, padding=1)[0, 0] > 0
        assert (changed & visible & ~near).float().mean() < 0.03
    assert sum(data[i]["occluded"] for i in range(len(data))) >= len(data) - 1


def test_occluders_are_deterministic_and_independent_of_dataset_size(base, ict_small):
    a = OccludedFaceDataset(base, OcclusionSettings(probability=1.0))
    b = OccludedFaceDataset(base, OcclusionSettings(probability=1.0))
    smaller = SyntheticFaceDataset(ict_small, _faces(n_test=3), "test", image_size=48)
    c = OccludedFaceDataset(smaller, OcclusionSettings(probability=1.0))
    for i in range(3):
        assert torch.equal(a[i]["visible"], b[i]["visible"]) and torch.equal(a[i]["visible"], c[i]["visible"])
    other = OccludedFaceDataset(base, OcclusionSettings(probability=1.0, seed=1))
    assert any(not torch.equal(a[i]["visible"], other[i]["visible"]) for i in range(len(base)))


def test_refuses_a_base_with_its_own_occluders(ict_small):
    with pytest.raises(ValueError, match="occluder_probability=0"):
        OccludedFaceDataset(
            SyntheticFaceDataset(ict_small, _faces(n_train=2, occluder_probability=0.5), "train", image_size=32)
        )


def test_collate_and_datamodule_split_sizes(ict_small):
    dm = OcclusionDataModule(ict_small, _faces(n_train=4, n_val=2, n_test=3), image_size=32, batch_size=2)
    batch = collate_focus_samples([dm.dataset("test")[i] for i in range(3)])
    assert batch.faces.images.shape == (3, 3, 32, 32) and batch.visible.shape == (3, 1, 32, 32)
    assert batch.occluded.dtype == torch.bool
    assert len(dm.dataset("train")) == 4 and dm.test_settings.probability == 1.0
