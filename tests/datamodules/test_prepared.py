"""Reading a `face3d prepare` output folder: records, split, batches, augmentation, errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from datamodules.batch import FaceBatch
from datamodules.prepared import (
    PreparedDataSettings,
    PreparedImagesDataModule,
    PreparedImagesDataset,
    is_validation,
    read_prepared,
    split_records,
)
from preprocessing.image import NO_FACE, OK
from preprocessing.outputs import MANIFEST_NAME, output_paths

SIZE = 64
N_OK = 10


def write_prepare_output(root: Path, n_ok: int = N_OK, n_failed: int = 2) -> list[dict]:
    """A fake prepare output with the real layout: crops, landmarks, skin PNGs and the manifest."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n_ok):
        source = f"people/photo_{i:02d}.jpg"
        outputs = output_paths(source)
        crop = np.zeros((SIZE, SIZE, 3), np.uint8)
        crop[..., 0] = 40 + 20 * i  # red ramps with the index, so a BGR/RGB mix-up shows
        crop[10:20, 30:40, 2] = 255
        landmarks = (rng.random((68, 2)) * 40 + 12).astype(np.float32)
        skin = np.zeros((SIZE, SIZE), np.uint8)
        skin[:, : 3 * i + 5] = 255
        for key in outputs:
            (root / outputs[key]).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / outputs["crop"]), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        np.save(root / outputs["landmarks"], landmarks)
        cv2.imwrite(str(root / outputs["skin"]), skin)
        records.append({"source": source, "sha256": f"{i:064x}", "status": OK, "reason": None, "outputs": outputs})
    for i in range(n_failed):
        records.append(
            {
                "source": f"people/blurry_{i}.jpg",
                "sha256": f"{100 + i:064x}",
                "status": NO_FACE,
                "reason": "no face found by dlib-hog",
                "outputs": None,
            }
        )
    (root / MANIFEST_NAME).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return records


@pytest.fixture
def prepared_root(tmp_path) -> Path:
    write_prepare_output(tmp_path)
    return tmp_path


def test_reads_only_ok_records(prepared_root):
    records = read_prepared(prepared_root)
    assert [r.source for r in records] == [f"people/photo_{i:02d}.jpg" for i in range(N_OK)]
    assert all(r.crop.is_file() and r.landmarks.is_file() and r.skin.is_file() for r in records)


def test_missing_manifest_says_to_run_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"face3d prepare --images DIR --out"):
        read_prepared(tmp_path)
    dm = PreparedImagesDataModule(PreparedDataSettings(root=str(tmp_path)), image_size=SIZE, batch_size=4)
    with pytest.raises(FileNotFoundError, match="manifest"):
        dm.setup("fit")


def test_no_usable_photo_is_an_error(tmp_path):
    write_prepare_output(tmp_path, n_ok=0, n_failed=3)
    with pytest.raises(ValueError, match="3 no_face"):
        read_prepared(tmp_path)


def test_split_is_by_content_and_stable(prepared_root):
    records = read_prepared(prepared_root)
    train, val = split_records(records, val_fraction=0.3)
    assert len(train) + len(val) == N_OK and val and train
    assert not {r.source for r in train} & {r.source for r in val}
    # Dropping photos or reordering them moves no other photo across the split.
    again_train, again_val = split_records(list(reversed(records[::2])), val_fraction=0.3)
    assert {r.source for r in again_val} == {r.source for r in val if r in records[::2]}
    assert {r.source for r in again_train} == {r.source for r in train if r in records[::2]}
    assert split_records(records, val_fraction=0.0) == (records, [])


def test_datamodule_batches_match_the_files(prepared_root):
    settings = PreparedDataSettings(root=str(prepared_root), val_fraction=0.3, augment=False)
    dm = PreparedImagesDataModule(settings, image_size=None, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert isinstance(batch, FaceBatch) and batch.ground_truth is None
    n = batch.batch_size
    assert batch.images.shape == (n, 3, SIZE, SIZE) and batch.images.dtype == torch.float32
    assert batch.landmarks.shape == (n, 68, 2) and batch.skin.shape == (n, 1, SIZE, SIZE)
    for k in range(n):
        record = dm.val_dataset.records[int(batch.index[k])]
        i = int(record.source[-6:-4])
        assert batch.images[k, 0, 0, 0] == pytest.approx((40 + 20 * i) / 255.0)
        assert batch.images[k, 2, 15, 35] == 1.0 and batch.images[k, 2, 0, 0] == 0.0
        assert torch.equal(batch.landmarks[k], torch.from_numpy(np.load(record.landmarks)))
        assert float(batch.skin[k].sum()) == SIZE * (3 * i + 5)
    train = next(iter(dm.train_dataloader()))
    assert train.batch_size == 4


def test_resizing_scales_landmarks(prepared_root):
    records = read_prepared(prepared_root)
    full = PreparedImagesDataset(records)[0]
    half = PreparedImagesDataset(records, image_size=SIZE // 2)[0]
    assert half["image"].shape == (3, SIZE // 2, SIZE // 2) and half["skin"].shape == (1, SIZE // 2, SIZE // 2)
    assert torch.allclose(half["landmarks"], full["landmarks"] / 2)


def test_augmentation_is_for_training_only(prepared_root):
    torch.manual_seed(0)
    settings = PreparedDataSettings(root=str(prepared_root), val_fraction=0.3, augment=True)
    dm = PreparedImagesDataModule(settings, image_size=SIZE, batch_size=2)
    dm.setup("fit")
    plain = PreparedImagesDataset(dm.train_dataset.records, image_size=SIZE)
    augmented = dm.train_dataset[0]
    assert augmented["image"].shape == plain[0]["image"].shape
    assert not torch.equal(augmented["image"], plain[0]["image"])
    assert not torch.equal(augmented["landmarks"], plain[0]["landmarks"])
    assert dm.val_dataset.augmentation is None
    val_plain = PreparedImagesDataset(dm.val_dataset.records, image_size=SIZE)
    assert torch.equal(dm.val_dataset[0]["image"], val_plain[0]["image"])


def test_a_folder_too_small_for_the_validation_share_still_validates_on_one_photo(tmp_path):
    # 7 photos at 5%: the hash split alone holds out none of them.
    write_prepare_output(tmp_path, n_ok=7, n_failed=0)
    records = read_prepared(tmp_path)
    assert not [r for r in records if is_validation(r.content_hash, 0.05)]
    with pytest.warns(UserWarning, match="holding out one for validation"):
        train, val = split_records(records, val_fraction=0.05)
    assert len(val) == 1 and len(train) == 6
    # The same photo whatever the order of the records.
    with pytest.warns(UserWarning):
        assert split_records(list(reversed(records)), val_fraction=0.05)[1] == val
    dm = PreparedImagesDataModule(PreparedDataSettings(root=str(tmp_path)), image_size=SIZE, batch_size=4)
    with pytest.warns(UserWarning, match="holding out one"):
        dm.setup("fit")
    assert len(dm.val_dataset) == 1 and len(dm.train_dataset) == 6
    # One photo cannot be split: it trains, and the warning says nothing is validated.
    with pytest.warns(UserWarning, match="nothing is validated"):
        assert split_records(records[:1], val_fraction=0.05) == (records[:1], [])


def test_bad_prepared_settings_are_named():
    with pytest.raises(ValueError, match="val_fraction"):
        PreparedDataSettings(val_fraction=1.0)
    with pytest.raises(ValueError, match="data.prepared.root"):
        PreparedImagesDataModule(PreparedDataSettings(), image_size=SIZE, batch_size=4)
