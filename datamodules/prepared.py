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
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.augment import AugmentSettings, augment_sample
from datamodules.batch import collate_face_samples
from datamodules.loaders import check_loader_args, hash_fraction, make_loader, split_by_hash
from errors import InvalidInputError, MissingFileError
from preprocessing.image import OK as STATUS_OK
from preprocessing.outputs import MANIFEST_NAME


@dataclass(frozen=True)
class PreparedDataSettings:
    """Training on a ``face3d prepare`` output folder (`PreparedImagesDataModule`; the ``data.prepared`` section of
    the experiment config).

    root:         the folder given to ``face3d prepare --out`` (with manifest.jsonl); None = not configured
    val_fraction: share of photos (by content hash) held out for validation, in [0, 1); a folder too small for
                  it to hold out any still gets one validation photo (`datamodules.loaders.split_by_hash`)
    augment:      augment training samples (validation never is)
    augmentation: the augmentation's ranges
    seed:         seeds the training shuffle
    """

    root: str | None = None
    val_fraction: float = 0.05
    augment: bool = True
    augmentation: AugmentSettings = field(default_factory=AugmentSettings)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


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
    """Whether a photo with this content hash falls in the validation share (`datamodules.loaders.hash_fraction`
    below ``val_fraction``)."""
    return hash_fraction(content_hash) < val_fraction


def split_records(
    records: Sequence[PreparedRecord],
    val_fraction: float,
) -> tuple[list[PreparedRecord], list[PreparedRecord]]:
    """(train, val) by content hash, at least one validation photo when ``val_fraction`` > 0 and there are two
    (`datamodules.loaders.split_by_hash`); order within each split is kept."""
    return split_by_hash(records, lambda r: r.content_hash, val_fraction, "prepared photos")


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
        augmentation: random shift, scale, rotation and flip within these ranges (`datamodules.augment`), for
            training; None serves the photos as they are.
    """

    def __init__(
        self,
        records: Sequence[PreparedRecord],
        image_size: int | None = None,
        augmentation: AugmentSettings | None = None,
    ) -> None:
        self.records = list(records)
        self.image_size = image_size
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        crop, landmarks, skin = load_prepared_sample(self.records[index], self.image_size)
        image = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float().div_(255.0)
        landmarks_t = torch.from_numpy(landmarks)
        skin_t = torch.from_numpy(skin).unsqueeze(0)
        if self.augmentation is not None:
            # torch's global generator: DataLoader seeds it differently in each worker.
            image, landmarks_t, skin_t = augment_sample(
                image, landmarks_t, skin_t, settings=self.augmentation.for_width(image.shape[-1])
            )
        return {"image": image, "landmarks": landmarks_t, "skin": skin_t, "index": index}


class PreparedImagesDataModule(pl.LightningDataModule):
    """Train / val loaders over a ``face3d prepare`` output folder (see the module docstring).

    Args:
        settings: the folder, split and augmentation (`PreparedDataSettings`).
        image_size: side of the served crops (resized from prepare's crops if they differ); None = as written.
        batch_size: photos per batch.
        num_workers: DataLoader workers (-1: one per spare CPU; see `datamodules.loaders.resolve_num_workers`).
    """

    def __init__(
        self, settings: PreparedDataSettings, *, image_size: int | None, batch_size: int, num_workers: int = 0
    ) -> None:
        super().__init__()
        check_loader_args(batch_size, num_workers)
        if settings.root is None:
            raise InvalidInputError(
                "no prepared folder given: set data.prepared.root to a folder written by `face3d prepare`"
            )
        self.settings = settings
        self.root = Path(settings.root)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_dataset: PreparedImagesDataset | None = None
        self.val_dataset: PreparedImagesDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        settings = self.settings
        train, val = split_records(read_prepared(self.root), settings.val_fraction)
        if not train:
            raise InvalidInputError(
                f"all {len(val)} photos of {self.root} fell into the validation split; lower "
                f"data.prepared.val_fraction ({settings.val_fraction}) or prepare more photos"
            )
        augmentation = settings.augmentation if settings.augment else None
        self.train_dataset = PreparedImagesDataset(train, self.image_size, augmentation)
        self.val_dataset = PreparedImagesDataset(val, self.image_size)

    def _loader(self, dataset: PreparedImagesDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader (the Trainer does this itself)")
        return make_loader(
            dataset, self.batch_size, shuffle, self.settings.seed, self.num_workers, collate_face_samples
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)
