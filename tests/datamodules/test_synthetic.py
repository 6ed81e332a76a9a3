"""The synthetic default data: determinism, labels consistent with the ground truth, cache, occluders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from datamodules.appearance import AppearanceSettings
from datamodules.backgrounds import OCCLUDER_KINDS, draw_occluder, random_background
from datamodules.batch import FaceBatch
from datamodules.synthetic import (
    SyntheticFaceDataModule,
    SyntheticFaceDataset,
    SyntheticFaceSettings,
    aligned_translation,
    coefficient_prior_std,
    sample_rng,
    soft_composite,
)
from face_model.model import five_points_from_68
from face_model.sampling import CoefficientPrior, sample_coefficients
from preprocessing.align import fit_scale_translation, template_from_face_model
from preprocessing.skin import skin_posterior_torch
from renderers.camera import PinholeCamera
from renderers.mesh_renderer import MeshRenderer

SIZE = 64
# With this seed and occluder probability 0.5 the twelve samples include occluded and clean faces.
SEED = 3
NOISE_PX = 1.0


RUNTIME = ("split", "image_size", "cache_dir", "prior", "device", "backend")


def make_dataset(face_model, n_samples: int = 12, **overrides) -> SyntheticFaceDataset:
    """A dataset of ``n_samples`` faces in its split; ``overrides`` are settings fields or runtime arguments."""
    runtime = {"split": "train", "image_size": SIZE, **{k: v for k, v in overrides.items() if k in RUNTIME}}
    settings = dict(
        n_train=n_samples,
        n_val=n_samples,
        n_test=n_samples,
        seed=SEED,
        occluder_probability=0.5,
        landmark_noise_px=NOISE_PX,
        render_batch_size=8,
        # The dataset's pose ranges before the settings held every default (the tests' thresholds assume them).
        max_pitch_deg=20.0,
        max_roll_deg=10.0,
    )
    settings.update({k: v for k, v in overrides.items() if k not in RUNTIME})
    return SyntheticFaceDataset(face_model, SyntheticFaceSettings(**settings), **runtime)


@pytest.fixture(scope="module")
def synthetic_train(ict_small) -> SyntheticFaceDataset:
    """Twelve rendered faces shared by the tests (rendering is the slow part)."""
    dataset = make_dataset(ict_small)
    dataset.materialise()
    return dataset


def test_same_seed_gives_identical_samples(ict_small, synthetic_train):
    again = make_dataset(ict_small)
    a, b = synthetic_train.arrays, again.arrays
    for name in ("images", "skin", "landmarks", "clean_landmarks", "coefficients", "occluder", "occlusion"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for key in ("image", "landmarks", "skin", "coefficients", "vertices"):
        assert torch.equal(synthetic_train[4][key], again[4][key]), key
    # Each sample's draws depend on its index alone, so a smaller dataset starts with the same faces.
    first = synthetic_train.sample_coefficients(range(12)).identity
    assert torch.equal(make_dataset(ict_small, n_samples=5).sample_coefficients(range(5)).identity, first[:5])


def test_splits_and_seeds_never_share_identities(ict_small, synthetic_train):
    train = synthetic_train.sample_coefficients(range(12)).identity
    for other in (
        make_dataset(ict_small, split="val"),
        make_dataset(ict_small, split="test"),
        make_dataset(ict_small, seed=SEED + 1),
    ):
        identities = other.sample_coefficients(range(12)).identity
        assert torch.cdist(train, identities).min() > 0.5


def test_sample_shapes_and_dtypes(ict_small, synthetic_train):
    sample = synthetic_train[0]
    n_vertices = ict_small.n_vertices
    assert sample["image"].shape == (3, SIZE, SIZE) and sample["image"].dtype == torch.float32
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert sample["landmarks"].shape == (68, 2) and sample["landmarks"].dtype == torch.float32
    assert sample["skin"].shape == (1, SIZE, SIZE) and sample["skin"].dtype == torch.float32
    assert sample["coefficients"].shape == (ict_small.layout.size,)
    assert sample["vertices"].shape == (n_vertices, 3)
    assert synthetic_train.arrays.images.dtype == np.uint8 and synthetic_train.arrays.skin.dtype == np.float16


def test_datamodule_yields_face_batches_with_ground_truth(ict_small):
    settings = SyntheticFaceSettings(n_train=6, n_val=3, n_test=2, seed=SEED, render_batch_size=8)
    dm = SyntheticFaceDataModule(ict_small, settings, image_size=SIZE, batch_size=4, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, FaceBatch) and batch.batch_size == 4
    assert batch.images.shape == (4, 3, SIZE, SIZE) and batch.images.dtype == torch.float32
    assert batch.landmarks.shape == (4, 68, 2) and batch.skin.shape == (4, 1, SIZE, SIZE)
    assert batch.index.dtype == torch.long
    gt = batch.ground_truth
    assert gt is not None and gt.coefficients.shape == (4, ict_small.layout.size)
    assert gt.vertices.shape == (4, ict_small.n_vertices, 3)
    # The shuffle is seeded: a second loader gives the same order.
    assert torch.equal(next(iter(dm.train_dataloader())).index, batch.index)
    assert [len(b.index) for b in dm.train_dataloader()] == [4]  # the remainder of a shuffled epoch is dropped
    assert [len(b.index) for b in dm.val_dataloader()] == [3]
    assert "test" not in dm.datasets  # fit does not generate the test split
    std = dm.coefficient_std
    assert std.shape == (ict_small.layout.size,)
    assert float(std[ict_small.layout.slices["angles"]][1]) == pytest.approx(math.radians(80.0) / math.sqrt(3))


def test_ground_truth_agrees_with_labels(ict_small, synthetic_train):
    arrays = synthetic_train.arrays
    coeffs = ict_small.layout.split(torch.from_numpy(arrays.coefficients))
    renderer = MeshRenderer(ict_small, PinholeCamera().resized(SIZE, SIZE))
    # Each picture has its own focal length; its landmarks are the face seen through that camera, from
    # the stored translation scaled by the focal scale.
    scales = torch.from_numpy(arrays.focal_scale)
    assert float(scales.min()) < 0.9 and float(scales.max()) > 1.1
    with torch.no_grad():
        projected = torch.cat(
            [
                renderer.project_landmarks(
                    coeffs.index(slice(i, i + 1)).replace(translation=coeffs.translation[i : i + 1] * scales[i]),
                    synthetic_train.picture_camera(i),
                )
                for i in range(len(synthetic_train))
            ]
        )
        vertices = ict_small.shape(coeffs)
        # Under the crop's camera the stored coefficients put the face at about the same place and size (only
        # the perspective differs: near parts grow more through a short focal length).
        default = renderer.project_landmarks(coeffs)
    assert torch.allclose(projected, torch.from_numpy(arrays.clean_landmarks), atol=1e-3)
    centre = lambda points: points.mean(1)  # noqa: E731
    spread = lambda points: (points - points.mean(1, keepdim=True)).norm(dim=-1).mean(1)  # noqa: E731
    assert torch.allclose(centre(default), centre(projected), atol=0.03 * SIZE)
    assert torch.allclose(spread(default), spread(projected), rtol=0.05)
    assert not torch.allclose(default, projected, atol=0.1)
    noise = arrays.landmarks - arrays.clean_landmarks
    assert abs(noise.mean()) < 0.15 and noise.std() == pytest.approx(NOISE_PX, rel=0.1)
    assert torch.allclose(torch.stack([synthetic_train[i]["vertices"] for i in range(3)]), vertices[:3], atol=1e-5)
    # The skin channel is the project's skin model applied to the stored picture.
    skin = skin_posterior_torch(torch.from_numpy(arrays.images[:3]))
    assert torch.allclose(torch.from_numpy(arrays.skin[:3].astype(np.float32)), skin, atol=1e-3)
    # In the model look every picture is taken with the crop's camera.
    model_look = make_dataset(ict_small, n_samples=2, appearance=AppearanceSettings(look="model"))
    assert np.all(model_look.arrays.focal_scale == 1.0)


def test_faces_sit_where_alignment_puts_them(ict_small):
    camera = PinholeCamera().resized(SIZE, SIZE)
    template = template_from_face_model(ict_small, camera)
    dataset = make_dataset(ict_small, prior=CoefficientPrior(translation_std=0.0))
    coeffs = dataset.sample_coefficients(range(16))
    coeffs = coeffs.replace(translation=aligned_translation(ict_small, coeffs, camera, template))
    with torch.no_grad():
        five = five_points_from_68(MeshRenderer(ict_small, camera).project_landmarks(coeffs)).numpy()
    for points in five:
        scale, shift = fit_scale_translation(points, template)
        assert scale == pytest.approx(1.0, abs=2e-3)
        assert np.abs(shift).max() < 0.1
    # The mean face at zero pose barely moves (the template projects 3D eye centres, prepare averages the
    # projected eye points: they differ by a hair).
    zero = ict_small.layout.zeros(1)
    assert aligned_translation(ict_small, zero, camera, template).abs().max() < 2e-3


def test_pose_ranges_are_respected(ict_small):
    dataset = make_dataset(ict_small, max_yaw_deg=30.0, max_pitch_deg=5.0, max_roll_deg=2.0)
    degrees = torch.rad2deg(dataset.sample_coefficients(range(300)).angles)
    pitch, yaw, roll = degrees.abs().amax(0).tolist()
    assert 27.0 < yaw <= 30.0 and 4.0 < pitch <= 5.0 and 1.5 < roll <= 2.0
    wide = torch.rad2deg(make_dataset(ict_small).sample_coefficients(range(300)).angles[:, 1]).abs()
    assert 75.0 < float(wide.max()) <= 80.0


def test_prior_std_matches_the_sampler(ict_small):
    layout = ict_small.layout
    prior = CoefficientPrior(yaw_deg=70.0)
    flat = layout.join(sample_coefficients(layout, 4000, prior, torch.Generator().manual_seed(0)))
    predicted = coefficient_prior_std(layout, prior)
    checked = [layout.slices[name] for name in ("identity", "expression", "albedo", "angles", "translation")]
    for part in checked:
        assert torch.allclose(flat[:, part].std(0), predicted[part], rtol=0.08)


def test_cache_round_trip(ict_small, tmp_path, monkeypatch):
    first = make_dataset(ict_small, n_samples=3, cache_dir=tmp_path)
    first.materialise()
    assert first.cache_path.is_file() and first.generation_seconds is not None

    def no_rendering(self):
        raise AssertionError("the second dataset must read the cache, not render")

    monkeypatch.setattr(SyntheticFaceDataset, "generate", no_rendering)
    second = make_dataset(ict_small, n_samples=3, cache_dir=tmp_path)
    assert second.cache_path == first.cache_path
    second.materialise()
    assert second.generation_seconds is None
    for key in ("image", "landmarks", "skin", "coefficients"):
        assert torch.equal(first[2][key], second[2][key])
    # A torn or foreign file is regenerated (with a warning), not trusted.
    monkeypatch.undo()
    first.cache_path.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="unreadable"):
        regenerated = make_dataset(ict_small, n_samples=3, cache_dir=tmp_path)
        regenerated.materialise()
    assert np.array_equal(regenerated.arrays.images, first.arrays.images)
    # Any generation parameter changes the key.
    for change in (
        {"landmark_noise_px": 2.0},
        {"split": "val"},
        {"max_yaw_deg": 60.0},
        {"n_samples": 4},
        {"appearance": AppearanceSettings(look="model")},
        {"appearance": AppearanceSettings(jpeg_probability=0)},
    ):
        args = {"n_samples": 3, "cache_dir": tmp_path, **change}
        assert make_dataset(ict_small, **args).cache_path != first.cache_path, change


def test_occluders_change_only_the_pixels_they_cover(ict_small):
    # Blur and JPEG blocks would spread an occluder's pixels to its neighbours; without them nothing spreads.
    sharp = AppearanceSettings(blur_probability=0.0, jpeg_probability=0.0)
    clean = make_dataset(ict_small, occluder_probability=0.0, appearance=sharp)
    synthetic_train = make_dataset(ict_small, appearance=sharp)
    occluded = synthetic_train.arrays
    assert (occluded.occluder >= 0).any() and (occluded.occluder < 0).any()
    assert np.array_equal(clean.arrays.coefficients, occluded.coefficients)
    assert np.array_equal(clean.arrays.landmarks, occluded.landmarks)
    for i in range(len(clean)):
        covered = synthetic_train.occlusion_mask(i)
        assert covered.any() == (occluded.occluder[i] >= 0)
        assert np.array_equal(clean.arrays.images[i][:, ~covered], occluded.images[i][:, ~covered])
        if covered.any():
            assert not np.array_equal(clean.arrays.images[i][:, covered], occluded.images[i][:, covered])


@pytest.mark.parametrize("kind", OCCLUDER_KINDS)
def test_each_occluder_kind_is_drawn_on_the_face(kind, synthetic_train):
    image = synthetic_train[0]["image"].permute(1, 2, 0).numpy().copy()
    landmarks = synthetic_train.arrays.clean_landmarks[0]
    out, coverage = draw_occluder(image, landmarks, np.random.default_rng(1), kind)
    assert coverage.shape == image.shape[:2] and 0.0 <= coverage.min() and coverage.max() <= 1.0
    assert np.array_equal(out[coverage == 0], image[coverage == 0])
    x, y = np.clip(landmarks.round().astype(int), 0, SIZE - 1).T
    assert coverage[y, x].max() > 0.5, "the occluder must cover part of the face"


def test_backgrounds_are_deterministic_and_varied():
    first = random_background(np.random.default_rng(5), 32, 48)
    assert first.shape == (32, 48, 3) and first.dtype == np.float32
    assert 0.0 <= first.min() and first.max() <= 1.0
    assert np.array_equal(first, random_background(np.random.default_rng(5), 32, 48))
    others = [random_background(np.random.default_rng(seed), 32, 48) for seed in range(6)]
    assert min(np.abs(a - b).mean() for i, a in enumerate(others) for b in others[i + 1 :]) > 0.01


def test_bad_arguments_are_named(ict_small):
    with pytest.raises(ValueError, match="split"):
        make_dataset(ict_small, split="training")
    with pytest.raises(ValueError, match="occluder_probability"):
        make_dataset(ict_small, occluder_probability=1.5)


def test_model_look_is_the_face_models_own_render(ict_small):
    dataset = make_dataset(
        ict_small,
        n_samples=3,
        occluder_probability=0.0,
        pixel_noise_std=0.0,
        appearance=AppearanceSettings(look="model"),
    )
    camera = PinholeCamera().resized(SIZE, SIZE)
    coeffs = ict_small.layout.split(torch.from_numpy(dataset.arrays.coefficients))
    with torch.no_grad():
        out = MeshRenderer(ict_small, camera)(coeffs)
    background = np.stack([random_background(sample_rng(SEED, "train", i, "background"), SIZE, SIZE) for i in range(3)])
    expected = soft_composite(out.image.clamp(0, 1), out.mask, torch.from_numpy(background).permute(0, 3, 1, 2))
    expected = np.clip(np.rint(expected.numpy() * 255.0), 0, 255)
    assert np.abs(dataset.arrays.images.astype(float) - expected).max() <= 1.0


def test_looks_share_the_ground_truth_and_labels(ict_small, synthetic_train):
    # The look changes the pictures only: coefficients and landmarks come from the same streams (and with the
    # crop's focal length, the same placement).
    model_look = make_dataset(ict_small, n_samples=3, appearance=AppearanceSettings(look="model"))
    fixed_focal = make_dataset(ict_small, n_samples=3, appearance=AppearanceSettings(focal_scale=(1.0, 1.0)))
    photo = fixed_focal.arrays
    assert np.allclose(model_look.arrays.coefficients, photo.coefficients, atol=1e-6)
    assert np.allclose(model_look.arrays.landmarks, photo.landmarks, atol=1e-4)
    assert np.abs(model_look.arrays.images.astype(float) - photo.images).mean() > 10.0
    layout = ict_small.layout
    varied = layout.split(torch.from_numpy(synthetic_train.arrays.coefficients[:3]))
    same = layout.split(torch.from_numpy(photo.coefficients))
    for name in ("identity", "expression", "angles", "albedo", "lighting"):
        assert torch.allclose(getattr(varied, name), getattr(same, name), atol=1e-6), name
