"""Real photos, as ``face3d prepare`` leaves them: aligned crops with detected landmarks and skin maps.

`preprocessing.pipeline` writes, under its output folder, ``manifest.jsonl`` (one JSON record per input
photo) and, for every record whose ``status`` is ``"ok"``, the files named in its ``outputs``: the
aligned RGB crop (``crops/<source>.png``), its (68, 2) float32 landmarks in crop pixels
(``landmarks/<source>.npy``) and the skin posterior x 255 as a grey PNG (``skin/<source>.png``), all paths
relative to that folder. Only ``ok`` records are read; the others (no face, unreadable, ...) are counted.

The train/val split is decided by each photo's content hash (the record's ``sha256`` of the source
bytes): it does not change when photos are added, removed or renamed, and copies of one photo always
land in the same split. It cannot keep one person's different photos apart (the manifest has no
identities).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.augment import augment_sample
from datamodules.batch import collate_face_samples
from errors import InvalidInputError, MissingFileError
from preprocessing.pipeline import MANIFEST_NAME
from preprocessing.pipeline import OK as STATUS_OK

REFERENCE_CROP_SIZE = 224
"""Crop size that the augmentation's pixel shift is specified for (Deep3D's)."""


@dataclass(frozen=True)
class PreparedRecord:
    """One usable photo of a prepare output folder; paths are absolute.

    source:       the photo's path relative to the prepared images folder (for messages and ordering)
    crop:         aligned RGB crop PNG
    landmarks:    (68, 2) float32 .npy, crop pixels
    skin:         grey PNG, skin posterior x 255
    content_hash: hex digest of the photo's bytes (decides the split)
    """

    source: str
    crop: Path
    landmarks: Path
    skin: Path
    content_hash: str


def read_prepared(root: str | Path) -> list[PreparedRecord]:
    """The ``ok`` records of a prepare output folder, sorted by source path.

    Raises FileNotFoundError when ``root`` has no manifest and ValueError when it lists no usable photo.
    """
    root = Path(root).expanduser()
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        raise MissingFileError(
            f"{root} has no {MANIFEST_NAME}: it is not a `face3d prepare` output folder. Run "
            f"`face3d prepare --images DIR --out {root}` first (DIR = your folder of face photos)."
        )
    records, statuses = [], {}
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            status = entry["status"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise InvalidInputError(
                f"{manifest}, line {number}: not a prepare record ({err}); re-run `face3d prepare` "
                f"to rewrite the manifest"
            ) from err
        statuses[status] = statuses.get(status, 0) + 1
        if status != STATUS_OK:
            continue
        outputs = entry.get("outputs") or {}
        missing = [key for key in ("crop", "landmarks", "skin") if key not in outputs]
        if missing:
            raise InvalidInputError(
                f"{manifest}, line {number}: ok record of {entry.get('source')!r} has no "
                f"{missing} outputs; re-run `face3d prepare` with the current code"
            )
        source = str(entry.get("source", outputs["crop"]))
        crop = root / outputs["crop"]
        # Old or hand-made records may lack the source hash; the crop's bytes identify the photo as well.
        content_hash = entry.get("sha256") or _file_sha256(crop)
        records.append(PreparedRecord(source, crop, root / outputs["landmarks"], root / outputs["skin"], content_hash))
    if not records:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items())) or "no records"
        raise InvalidInputError(
            f"{manifest} lists no usable photo ({counts}); `face3d prepare` found no aligned face in the input folder"
        )
    return sorted(records, key=lambda r: r.source)


def _file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as err:
        raise MissingFileError(
            f"prepared crop {path} is missing; re-run `face3d prepare` on the same folders to restore it"
        ) from err


def is_validation(content_hash: str, val_fraction: float) -> bool:
    """Whether a photo with this content hash belongs to the validation split.

    The hash is re-hashed (so that any hex or non-hex key works) and its first 8 bytes, read as a fraction
    of 2^64, are compared with ``val_fraction``.
    """
    value = int.from_bytes(hashlib.sha256(content_hash.encode()).digest()[:8], "big")
    return value / 2.0**64 < val_fraction


def split_records(
    records: Sequence[PreparedRecord],
    val_fraction: float,
) -> tuple[list[PreparedRecord], list[PreparedRecord]]:
    """(train, val) by content hash; order within each split is kept."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    val = [r for r in records if is_validation(r.content_hash, val_fraction)]
    train = [r for r in records if not is_validation(r.content_hash, val_fraction)]
    return train, val


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise MissingFileError(
            f"cannot read prepared image {path}; re-run `face3d prepare` on the same folders to restore it"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_grey(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise MissingFileError(
            f"cannot read prepared skin map {path}; re-run `face3d prepare` on the same folders to restore it"
        )
    return image


def load_prepared_sample(
    record: PreparedRecord,
    image_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one photo: (H, W, 3) uint8 crop, (68, 2) float32 landmarks, (H, W) float32 skin in [0, 1].

    With ``image_size`` the crop and skin are area-resized to that square size and the landmarks scaled
    to match (with pixel centres at +0.5, resizing is a pure scale of coordinates).
    """
    crop = read_rgb(record.crop)
    skin = read_grey(record.skin).astype(np.float32) / 255.0
    try:
        landmarks = np.load(record.landmarks).astype(np.float32)
    except OSError as err:
        raise MissingFileError(
            f"cannot read prepared landmarks {record.landmarks}; re-run `face3d prepare` on "
            "the same folders to restore them"
        ) from err
    if landmarks.shape != (68, 2):
        raise InvalidInputError(f"{record.landmarks} holds shape {landmarks.shape}, expected (68, 2) crop pixels")
    if skin.shape != crop.shape[:2]:
        raise InvalidInputError(
            f"skin map {record.skin} is {skin.shape}, but its crop {record.crop} is {crop.shape[:2]}"
        )
    height, width = crop.shape[:2]
    if image_size is not None and (height, width) != (image_size, image_size):
        if height != width:
            raise InvalidInputError(
                f"prepared crop {record.crop} is {width}x{height}; only square crops can be resized"
            )
        interpolation = cv2.INTER_AREA if image_size < height else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (image_size, image_size), interpolation=interpolation)
        skin = cv2.resize(skin, (image_size, image_size), interpolation=interpolation)
        landmarks = landmarks * np.float32(image_size / width)
    return crop, landmarks, skin


class PreparedImagesDataset(Dataset):
    """Samples for `collate_face_samples` from prepared records (no ground truth).

    Args:
        records: photos to serve, e.g. one split of `split_records`.
        image_size: side to resize crops to; None keeps the size prepare wrote.
        augment: random shift, scale, rotation and flip (`datamodules.augment`), for training only.
        max_shift_px: shift range in pixels of a 224 crop (scaled with the served size).
        max_scale, max_rotation_deg, flip_probability: see `datamodules.augment.sample_augmentation`.
    """

    def __init__(
        self,
        records: Sequence[PreparedRecord],
        image_size: int | None = None,
        augment: bool = False,
        max_shift_px: float = 10.0,
        max_scale: float = 0.1,
        max_rotation_deg: float = 10.0,
        flip_probability: float = 0.5,
    ) -> None:
        self.records = list(records)
        self.image_size = image_size
        self.augment = augment
        self.max_shift_px = max_shift_px
        self.max_scale = max_scale
        self.max_rotation_deg = max_rotation_deg
        self.flip_probability = flip_probability

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        crop, landmarks, skin = load_prepared_sample(self.records[index], self.image_size)
        image = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float().div_(255.0)
        landmarks_t = torch.from_numpy(landmarks)
        skin_t = torch.from_numpy(skin).unsqueeze(0)
        if self.augment:
            # torch's global generator: DataLoader seeds it differently in each worker.
            image, landmarks_t, skin_t = augment_sample(
                image,
                landmarks_t,
                skin_t,
                max_shift_px=self.max_shift_px * image.shape[-1] / REFERENCE_CROP_SIZE,
                max_scale=self.max_scale,
                max_rotation_deg=self.max_rotation_deg,
                flip_probability=self.flip_probability,
            )
        return {"image": image, "landmarks": landmarks_t, "skin": skin_t, "index": index}


class PreparedImagesDataModule(pl.LightningDataModule):
    """Train / val loaders over a ``face3d prepare`` output folder (see the module docstring).

    Args:
        root: the folder given to ``face3d prepare --out``.
        image_size: side of the served crops (resized from prepare's crops if they differ); None = as written.
        batch_size, num_workers: DataLoader settings.
        val_fraction: share of photos (by content hash) held out for validation.
        augment: augment training samples (validation never is).
        seed: seeds the training shuffle.
        max_shift_px, max_scale, max_rotation_deg, flip_probability: augmentation ranges (`PreparedImagesDataset`).
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int | None = 224,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.05,
        augment: bool = True,
        seed: int = 0,
        max_shift_px: float = 10.0,
        max_scale: float = 0.1,
        max_rotation_deg: float = 10.0,
        flip_probability: float = 0.5,
    ) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.root = Path(root)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.augment = augment
        self.seed = seed
        self.augmentation = dict(
            max_shift_px=max_shift_px,
            max_scale=max_scale,
            max_rotation_deg=max_rotation_deg,
            flip_probability=flip_probability,
        )
        self.train_dataset: PreparedImagesDataset | None = None
        self.val_dataset: PreparedImagesDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        train, val = split_records(read_prepared(self.root), self.val_fraction)
        if not train:
            raise InvalidInputError(
                f"all {len(val)} photos of {self.root} fell into the validation split; lower "
                f"val_fraction ({self.val_fraction}) or prepare more photos"
            )
        self.train_dataset = PreparedImagesDataset(train, self.image_size, augment=self.augment, **self.augmentation)
        self.val_dataset = PreparedImagesDataset(val, self.image_size, augment=False)

    def _loader(self, dataset: PreparedImagesDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader (the Trainer does this itself)")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            # A last batch of one breaks batch norm; a shuffled epoch loses nothing by skipping the remainder.
            drop_last=shuffle and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_face_samples,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)
