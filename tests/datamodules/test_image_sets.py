"""Image sets: one identity per set, stratified yaws, degradations, determinism and cache, padding of
variable set sizes, and sets of prepared photos grouped by folder."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from datamodules.image_sets import (
    DEGRADATIONS,
    ImageSetDataModule,
    ImageSetSettings,
    PreparedImageSetDataset,
    SyntheticImageSetDataset,
    collate_image_sets,
    group_by_identity,
    identity_of,
    split_identities,
)
from datamodules.prepared import read_prepared

SIZE = 48


RUNTIME = ("split", "image_size", "cache_dir", "prior", "device", "backend")


def make_sets(face_model, n_sets=4, **overrides):
    """``n_sets`` sets in their split; ``overrides`` are `ImageSetSettings` fields or runtime arguments."""
    runtime = {"split": "train", "image_size": SIZE, **{k: v for k, v in overrides.items() if k in RUNTIME}}
    settings = dict(
        n_train=n_sets,
        n_val=n_sets,
        n_test=n_sets,
        set_size=5,
        seed=5,
        degrade_probability=0.6,
        render_batch_size=16,
        # The dataset's landmark noise before the settings held every default.
        landmark_noise_px=2.0,
    )
    settings.update({k: v for k, v in overrides.items() if k not in RUNTIME})
    return SyntheticImageSetDataset(face_model, ImageSetSettings(**settings), **runtime)


@pytest.fixture(scope="module")
def sets(ict_small):
    dataset = make_sets(ict_small)
    dataset.materialise()
    return dataset


def test_one_identity_per_set_with_its_own_expression_pose_and_light(sets):
    layout = sets.layout
    for i in range(len(sets)):
        rows = slice(int(sets.arrays.offsets[i]), int(sets.arrays.offsets[i + 1]))
        coeffs = layout.split(torch.from_numpy(sets.arrays.coefficients[rows]))
        assert torch.equal(coeffs.identity, coeffs.identity[:1].expand_as(coeffs.identity))
        for name in ("expression", "angles", "lighting"):
            assert torch.cdist(getattr(coeffs, name), getattr(coeffs, name)).triu(1)[0, 1:].min() > 0, name
        # Albedo: the identity's plus a small per-picture change.
        spread = (coeffs.albedo - coeffs.albedo.mean(0)).std()
        assert 0.05 < spread < 0.5
    identities = torch.stack([sets[i]["identity"] for i in range(len(sets))])
    assert torch.cdist(identities, identities).triu(1)[torch.triu(torch.ones(4, 4), 1) > 0].min() > 1.0


def test_yaws_are_spread_over_the_whole_range_in_every_set(sets):
    for i in range(len(sets)):
        yaw = np.sort(sets[i]["yaw_deg"].numpy())
        edges = np.linspace(-80.0, 80.0, 6)
        assert np.all((yaw >= edges[:-1]) & (yaw <= edges[1:])), yaw


def test_sample_layout_and_ground_truth(sets, ict_small):
    sample = sets[1]
    assert sample["images"].shape == (5, 3, SIZE, SIZE) and sample["images"].dtype == torch.float32
    assert sample["landmarks"].shape == (5, 68, 2) and sample["skin"].shape == (5, 1, SIZE, SIZE)
    zeros = ict_small.layout.zeros(1)
    neutral = ict_small.shape(zeros.replace(identity=sample["identity"][None]))[0]
    torch.testing.assert_close(sample["vertices"], neutral)
    assert torch.equal(sample["occluded"], sample["degradation"] == DEGRADATIONS.index("occluder"))


def test_degradations_follow_their_probability_and_change_only_their_pictures(ict_small):
    clean = make_sets(ict_small, n_sets=2, degrade_probability=0.0)
    degraded = make_sets(ict_small, n_sets=2, degrade_probability=1.0, degradations=("blur", "noise"))
    assert (clean.arrays.degradation == 0).all()
    assert set(np.unique(degraded.arrays.degradation)) <= {DEGRADATIONS.index("blur"), DEGRADATIONS.index("noise")}
    # Same identities and poses whatever the degradations: they are drawn from their own streams.
    np.testing.assert_array_equal(clean.arrays.coefficients, degraded.arrays.coefficients)
    blurred = degraded.arrays.degradation == DEGRADATIONS.index("blur")
    if blurred.any():
        sharp = cv2.Laplacian(clean.arrays.images[blurred][0].transpose(1, 2, 0), cv2.CV_32F).var()
        soft = cv2.Laplacian(degraded.arrays.images[blurred][0].transpose(1, 2, 0), cv2.CV_32F).var()
        assert soft < sharp
    side = make_sets(ict_small, n_sets=2, degrade_probability=1.0, degradations=("side_light",))
    lighting = side.layout.split(torch.from_numpy(side.arrays.coefficients)).lighting.reshape(-1, 3, 9)
    assert torch.allclose(lighting[:, :, 3].abs(), torch.tensor(side.settings.degradation.side_light))


def test_deterministic_cached_and_split_apart(ict_small, sets, tmp_path):
    again = make_sets(ict_small, cache_dir=tmp_path)
    again.materialise()
    assert again.cache_path.is_file()
    for name in ("offsets", "images", "skin", "landmarks", "coefficients", "degradation"):
        np.testing.assert_array_equal(getattr(again.arrays, name), getattr(sets.arrays, name), err_msg=name)
    reread = make_sets(ict_small, cache_dir=tmp_path)
    np.testing.assert_array_equal(reread.materialise().images, sets.arrays.images)
    # The first sets of a smaller dataset are the same sets.
    np.testing.assert_array_equal(make_sets(ict_small, n_sets=2).set_plan(1)["identity"], sets.set_plan(1)["identity"])
    train = np.stack([sets.set_plan(i)["identity"] for i in range(4)])
    for split in ("val", "test"):
        other = np.stack([make_sets(ict_small, split=split).set_plan(i)["identity"] for i in range(4)])
        assert np.abs(train[:, None] - other[None]).sum(-1).min() > 1.0


def test_variable_set_sizes_are_padded_and_masked(ict_small):
    dataset = make_sets(ict_small, n_sets=6, set_size=4, min_set_size=2, degrade_probability=0.0)
    sizes = np.diff(dataset.arrays.offsets)
    assert sizes.min() >= 2 and sizes.max() <= 4 and len(set(sizes.tolist())) > 1
    batch = collate_image_sets([dataset[i] for i in range(6)])
    assert batch.images.shape[:2] == (6, sizes.max()) and not batch.full
    assert torch.equal(batch.valid.sum(1), torch.from_numpy(sizes))
    assert (batch.images[~batch.valid] == 0).all() and (batch.metadata.degradation[~batch.valid] == 0).all()
    assert batch.ground_truth.vertices.shape == (6, ict_small.n_vertices, 3)
    moved = batch.to("cpu")
    assert moved.full is False and torch.equal(moved.valid, batch.valid)


def test_datamodule_serves_set_batches(sets):
    datamodule = ImageSetDataModule({"train": sets, "val": sets}, batch_size=2)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.images.shape == (2, 5, 3, SIZE, SIZE) and batch.full and batch.valid.all()
    with pytest.raises(ValueError, match="no 'test' split"):
        datamodule.test_dataloader()


def _write_prepared(root, sources):
    records = []
    for k, source in enumerate(sources):
        crop = np.full((32, 32, 3), 40 + 10 * k, np.uint8)
        paths = {"crop": f"crops/{source}.png", "landmarks": f"landmarks/{source}.npy", "skin": f"skin/{source}.png"}
        for key in paths:
            (root / paths[key]).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / paths["crop"]), crop)
        np.save(root / paths["landmarks"], np.full((68, 2), float(k), np.float32))
        cv2.imwrite(str(root / paths["skin"]), np.full((32, 32), 128, np.uint8))
        records.append({"source": source, "status": "ok", "outputs": paths, "sha256": f"{k:064x}"})
    records.append({"source": "carol/broken.jpg", "status": "no_face", "outputs": None})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_prepared_photos_are_grouped_by_folder_into_sets(tmp_path):
    sources = ["alice/1.png", "alice/2.png", "alice/3.png", "bob/a.png", "bob/b.png", "dave/x.png", "loose.png"]
    _write_prepared(tmp_path, sources)
    assert identity_of("alice/1.png") == "alice" and identity_of("team/alice/1.png") == "team/alice"
    assert identity_of("loose.png") is None
    groups = group_by_identity(read_prepared(tmp_path), min_images=2)
    assert sorted(groups) == ["alice", "bob"] and len(groups["alice"]) == 3
    train, val = split_identities(groups, 0.0)
    assert sorted(train) == ["alice", "bob"] and not val

    two_of_two = ImageSetSettings(kind="prepared", set_size=2, sets_per_identity=2)
    fixed = PreparedImageSetDataset(groups, two_of_two, image_size=16, random_sets=False)
    assert len(fixed) == 4
    assert [r.source for r in fixed.choose(0)] == [r.source for r in fixed.choose(0)]
    batch = collate_image_sets([fixed[0], fixed[2]])
    assert batch.images.shape == (2, 2, 3, 16, 16) and batch.ground_truth is None and batch.metadata is None
    assert batch.landmarks[0, 0, 0, 0] < 16  # landmarks scaled with the crop
    everything = PreparedImageSetDataset(groups, ImageSetSettings(kind="prepared"), image_size=None, random_sets=True)
    padded = collate_image_sets([everything[0], everything[1]])
    assert torch.equal(padded.valid.sum(1), torch.tensor([3, 2])) and not padded.full
    with pytest.raises(ValueError, match="one folder per person"):
        group_by_identity(read_prepared(tmp_path), min_images=4)


def test_photo_look_side_light_lights_the_side_the_coefficients_say(ict_small):
    from datamodules.appearance import AppearanceSettings

    sharp = AppearanceSettings(blur_probability=0.0, jpeg_probability=0.0, focal_scale=(1.0, 1.0))
    side = make_sets(
        ict_small,
        n_sets=2,
        set_size=3,
        max_yaw_deg=15.0,
        degrade_probability=1.0,
        degradations=("side_light",),
        appearance=sharp,
    )
    lighting = side.layout.split(torch.from_numpy(side.arrays.coefficients)).lighting.reshape(-1, 3, 9)
    for k, image in enumerate(side.arrays.images.astype(float).mean(1)):
        landmarks = side.arrays.landmarks[k]
        nose_x = landmarks[27:31, 0].mean()
        top, bottom = int(landmarks[:, 1].min()), int(landmarks[:, 1].max())
        left, right = int(landmarks[:, 0].min()), int(landmarks[:, 0].max())
        face = image[top:bottom, left:right]
        columns = np.arange(left, right) + 0.5
        left_mean, right_mean = face[:, columns < nose_x].mean(), face[:, columns > nose_x].mean()
        # A positive x band brightens the subject's right (image left); the photo look lights from there.
        lit_left = float(lighting[k, 0, 3]) > 0
        assert (left_mean > right_mean) == lit_left, (k, left_mean, right_mean)


def test_prepared_sets_of_few_people_still_validate_on_one(tmp_path):
    sources = ["alice/1.png", "alice/2.png", "bob/a.png", "bob/b.png", "carol/x.png", "carol/y.png"]
    _write_prepared(tmp_path, sources)
    settings = ImageSetSettings(kind="prepared", root=str(tmp_path), val_fraction=0.01, set_size=2, batch_size=2)
    with pytest.warns(UserWarning, match="holding out one"):
        datamodule = ImageSetDataModule.from_settings(settings, None, image_size=16)
    train, val = datamodule.dataset("train"), datamodule.dataset("val")
    assert len(val) == 1 and len(train) == 2 and not set(train.names) & set(val.names)
    batch = next(iter(datamodule.val_dataloader()))
    assert batch.images.shape == (1, 2, 3, 16, 16)


def test_bad_image_set_settings_are_named():
    with pytest.raises(ValueError, match="min_set_size"):
        ImageSetSettings(set_size=3, min_set_size=4)
    with pytest.raises(ValueError, match="unknown degradations"):
        ImageSetSettings(degradations=("rain",))
    with pytest.raises(ValueError, match="image-set kind"):
        ImageSetSettings(kind="video")
