"""Augmentation: labels follow the pixels, the flip permutation mirrors the 68 landmarks."""

from __future__ import annotations

import math

import pytest
import torch

from datamodules.augment import (
    FLIP_PERMUTATION_68,
    Augmentation,
    AugmentSettings,
    apply_augmentation,
    augment_sample,
    sample_augmentation,
    similarity_matrix,
    transform_landmarks,
    warp_images,
)
from renderers.camera import PinholeCamera
from renderers.mesh_renderer import MeshRenderer

SIZE = 64


def dot_image(x: float, y: float, sigma: float = 1.5) -> torch.Tensor:
    """(1, SIZE, SIZE) Gaussian dot centred at (x, y) in pixel-centre coordinates."""
    centres = torch.arange(SIZE, dtype=torch.float64) + 0.5
    gy, gx = torch.meshgrid(centres, centres, indexing="ij")
    return torch.exp(-((gx - x) ** 2 + (gy - y) ** 2) / (2 * sigma**2)).unsqueeze(0)


def centroid(image: torch.Tensor) -> torch.Tensor:
    centres = torch.arange(SIZE, dtype=torch.float64) + 0.5
    weight = image[0].double()
    return torch.stack([(weight.sum(0) * centres).sum(), (weight.sum(1) * centres).sum()]) / weight.sum()


def test_flip_permutation_is_an_involution_of_68_points():
    perm = torch.tensor(FLIP_PERMUTATION_68)
    assert sorted(FLIP_PERMUTATION_68) == list(range(68))
    assert torch.equal(perm[perm], torch.arange(68))
    pairs = {
        0: 16,
        17: 26,
        21: 22,
        31: 35,
        36: 45,
        37: 44,
        38: 43,
        39: 42,
        40: 47,
        41: 46,
        48: 54,
        49: 53,
        50: 52,
        55: 59,
        56: 58,
        60: 64,
        61: 63,
        65: 67,
    }
    for a, b in pairs.items():
        assert FLIP_PERMUTATION_68[a] == b and FLIP_PERMUTATION_68[b] == a
    for centre in (8, 27, 28, 29, 30, 33, 51, 57, 62, 66):
        assert FLIP_PERMUTATION_68[centre] == centre


def test_flip_maps_left_points_onto_right_points(ict_small):
    # The ICT mean face is mirror-symmetric: its frontal landmarks, flipped and re-ordered, are themselves.
    renderer = MeshRenderer(ict_small, PinholeCamera().resized(SIZE, SIZE))
    with torch.no_grad():
        landmarks = renderer.project_landmarks(ict_small.layout.zeros(1))[0]
    flip = Augmentation(similarity_matrix(SIZE, SIZE, flip=True), flipped=True)
    assert torch.allclose(transform_landmarks(landmarks, flip), landmarks, atol=0.01)
    # Without the re-ordering, the subject's right eye corner would sit where the left one is.
    assert (landmarks[36] - landmarks[45]).norm() > 10.0


@pytest.mark.parametrize("flip", [False, True])
def test_landmarks_follow_the_image(flip):
    landmarks = torch.rand(68, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 24 + 20
    k = 37
    image = dot_image(*landmarks[k].tolist()).float().expand(3, SIZE, SIZE)
    skin = dot_image(*landmarks[k].tolist()).float()
    augmentation = Augmentation(
        similarity_matrix(SIZE, SIZE, shift=(3.5, -2.0), scale=1.08, rotation_deg=9.0, flip=flip), flipped=flip
    )
    out_image, out_landmarks, out_skin = apply_augmentation(image, landmarks.float(), skin, augmentation)
    moved_k = FLIP_PERMUTATION_68[k] if flip else k
    assert torch.allclose(centroid(out_image[:1]), out_landmarks[moved_k].double(), atol=0.05)
    assert torch.allclose(out_image[0], out_skin[0])
    assert out_image.shape == image.shape and out_landmarks.shape == (68, 2) and out_skin.shape == skin.shape


def test_identity_and_pure_flip_resample_exactly():
    image = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(warp_images(image, similarity_matrix(SIZE, SIZE)), image, atol=1e-5)
    assert torch.allclose(warp_images(image, similarity_matrix(SIZE, SIZE, flip=True)), image.flip(-1), atol=1e-5)
    shifted = warp_images(image, similarity_matrix(SIZE, SIZE, shift=(2.0, 0.0)))
    assert torch.allclose(shifted[..., 2:], image[..., :-2], atol=1e-5)
    assert shifted[..., :2].abs().max() == 0  # outside the input is black


def test_sampled_transforms_stay_in_range():
    generator = torch.Generator().manual_seed(0)
    centre = torch.tensor([SIZE / 2.0, SIZE / 2.0], dtype=torch.float64)
    flips = 0
    for _ in range(200):
        augmentation = sample_augmentation(SIZE, SIZE, generator, AugmentSettings())
        linear, offset = augmentation.matrix[:, :2], augmentation.matrix[:, 2]
        scale = math.sqrt(abs(float(torch.linalg.det(linear))))
        assert 0.9 - 1e-9 <= scale <= 1.1 + 1e-9
        unflipped = (
            linear @ torch.diag(torch.tensor([-1.0, 1.0], dtype=torch.float64)) if augmentation.flipped else linear
        )
        assert abs(math.degrees(math.atan2(float(unflipped[0, 1]), float(unflipped[0, 0])))) <= 10.0 + 1e-9
        shift = offset - (centre - linear @ centre)
        assert shift.abs().max() <= 10.0 + 1e-9
        assert (float(torch.linalg.det(linear)) < 0) == augmentation.flipped
        flips += augmentation.flipped
    assert 70 < flips < 130


def test_augment_settings_refuse_bad_ranges_and_scale_the_shift_with_the_crop():
    assert AugmentSettings() == AugmentSettings(10.0, 0.1, 10.0, 0.5)  # Deep3D's ranges
    assert AugmentSettings().for_width(112).max_shift_px == 5.0
    with pytest.raises(ValueError, match="flip_probability"):
        AugmentSettings(flip_probability=1.5)
    with pytest.raises(ValueError, match="max_scale"):
        AugmentSettings(max_scale=1.0)


def test_augment_sample_is_reproducible_with_a_generator():
    image = torch.rand(3, SIZE, SIZE)
    skin = torch.rand(1, SIZE, SIZE)
    landmarks = torch.rand(68, 2) * SIZE
    first = augment_sample(image, landmarks, skin, torch.Generator().manual_seed(4))
    second = augment_sample(image, landmarks, skin, torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], image)
