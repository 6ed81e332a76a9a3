"""Image sets for C-Net (Deng et al. 2019 §5): several pictures of one identity per sample.

This module holds what a run chooses (`ImageSetSettings`, the ``data.sets`` section of the experiment config) and
the DataModule that serves the sets; the parts live beside it:

* `datamodules.set_batch`: `SetBatch` and `collate_image_sets`, which pads sets to the largest one of the batch
  and marks real pictures in `SetBatch.valid`.
* `datamodules.synthetic_sets`: `SyntheticImageSetDataset`, rendered sets of random identities with 3D ground
  truth and per-picture degradations.
* `datamodules.prepared_sets`: `PreparedImageSetDataset`, real photos of one ``face3d prepare`` folder organised
  one subfolder per person.

Their public names are importable from here as well.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from datamodules.appearance import AppearanceSettings
from datamodules.loaders import SPLITS, check_loader_args, make_loader, stage_splits
from datamodules.prepared import read_prepared
from datamodules.prepared_sets import PreparedImageSetDataset, group_by_identity, identity_of, split_identities
from datamodules.set_batch import SetBatch, SetGroundTruth, SetMetadata, collate_image_sets
from datamodules.synthetic_sets import DEGRADATIONS, Degradation, SyntheticImageSetDataset, side_lit
from errors import InvalidInputError
from face_model.model import FaceModel

__all__ = [
    "DEGRADATIONS",
    "Degradation",
    "ImageSetDataModule",
    "ImageSetSettings",
    "PreparedImageSetDataset",
    "SetBatch",
    "SetGroundTruth",
    "SetMetadata",
    "SyntheticImageSetDataset",
    "collate_image_sets",
    "group_by_identity",
    "identity_of",
    "side_lit",
    "split_identities",
]

IMAGE_SET_KINDS = ("synthetic", "prepared")


@dataclasses.dataclass(frozen=True)
class ImageSetSettings:
    """Image sets for C-Net (the ``data.sets`` section of the experiment config); sizes count sets (identities),
    not pictures. Every default lives here.

    kind:              "synthetic" (rendered sets with ground truth, `SyntheticImageSetDataset`) or "prepared" (one
                       ``face3d prepare`` folder of photos organised one subfolder per person,
                       `PreparedImageSetDataset`).
    set_size:          pictures per set (5 in the paper).
    min_set_size:      synthetic only: None = fixed-size sets, else sizes uniform in [min_set_size, set_size]
                       (padded in batches).
    batch_size:        sets per batch.
    n_train, n_val, n_test: synthetic sets per split.
    seed:              base seed: (seed, split, set index) fixes a synthetic set; seeds the fixed subsets of
                       prepared validation sets and the training shuffle.
    max_yaw_deg:       yaws are spread over [-max, max] inside every set (stratified).
    max_pitch_deg, max_roll_deg: pitch and roll are uniform in +- these.
    albedo_jitter:     per-picture albedo change on top of the identity's albedo (prior units).
    degrade_probability: chance that a picture is degraded by one of ``degradations``.
    degradations:      kinds to draw from (`DEGRADATIONS` without "none").
    degradation:       strengths of the degradations.
    landmark_noise_px: std of the landmark noise, in pixels of the crop.
    pixel_noise_std:   sensor noise of the model look (the photo look uses the appearance's sensor model).
    render_batch_size: pictures rendered at once.
    appearance:        how pictures look (`datamodules.appearance.AppearanceSettings`); in the photo look a
                       side-light degradation is a hard directional light from that side.
    root:              prepared only: the folder written by ``face3d prepare`` over ``people/<name>/*`` photos.
    min_images:        prepared only: identities with fewer photos are left out.
    val_fraction:      prepared only: share of identities held out (by name hash); at least one identity when
                       there are two or more (`datamodules.loaders.split_by_hash`).
    sets_per_identity: prepared only: sets drawn per identity and training epoch.
    """

    kind: str = "synthetic"
    set_size: int = 5
    min_set_size: int | None = None
    batch_size: int = 4
    n_train: int = 512
    n_val: int = 32
    n_test: int = 64
    seed: int = 0
    max_yaw_deg: float = 80.0
    max_pitch_deg: float = 20.0
    max_roll_deg: float = 10.0
    albedo_jitter: float = 0.2
    degrade_probability: float = 0.5
    degradations: tuple[str, ...] = ("occluder", "blur", "noise", "side_light")
    degradation: Degradation = dataclasses.field(default_factory=Degradation)
    landmark_noise_px: float = 1.5
    pixel_noise_std: float = 0.01
    render_batch_size: int = 32
    appearance: AppearanceSettings = dataclasses.field(default_factory=AppearanceSettings)
    root: str | None = None
    min_images: int = 2
    val_fraction: float = 0.1
    sets_per_identity: int = 1

    def __post_init__(self) -> None:
        if self.kind not in IMAGE_SET_KINDS:
            raise ValueError(f"unknown image-set kind {self.kind!r}; choose one of {IMAGE_SET_KINDS}")
        if min(self.n_train, self.n_val, self.n_test, self.seed) < 0:
            raise ValueError(
                f"n_train, n_val, n_test and seed must be >= 0, got {self.n_train}, {self.n_val}, {self.n_test}, "
                f"{self.seed}"
            )
        if self.set_size < 1 or (self.min_set_size is not None and not 1 <= self.min_set_size <= self.set_size):
            raise ValueError(
                f"need 1 <= min_set_size <= set_size, got min_set_size={self.min_set_size}, set_size={self.set_size}"
            )
        unknown = [k for k in self.degradations if k not in DEGRADATIONS[1:]]
        if unknown:
            raise ValueError(f"unknown degradations {unknown}; choose from {DEGRADATIONS[1:]}")
        if not 0.0 <= self.degrade_probability <= 1.0 or (self.degrade_probability > 0 and not self.degradations):
            raise ValueError(
                f"degrade_probability must be in [0, 1] (and needs degradations to draw from), got "
                f"{self.degrade_probability} with {tuple(self.degradations)}"
            )
        if min(self.batch_size, self.render_batch_size, self.min_images, self.sets_per_identity) < 1:
            raise ValueError(
                "batch_size, render_batch_size, min_images and sets_per_identity must be >= 1, got "
                f"{self.batch_size}, {self.render_batch_size}, {self.min_images}, {self.sets_per_identity}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def size(self, split: str) -> int:
        """Synthetic sets in ``split``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]


class ImageSetDataModule(pl.LightningDataModule):
    """Loaders of `SetBatch` over given datasets.

    Args:
        datasets: split name ("train", "val", "test") -> a dataset of set dicts (`collate_image_sets`).
        batch_size: sets per batch.
        num_workers: DataLoader workers (-1: one per spare CPU; see `datamodules.loaders.resolve_num_workers`).
        seed: seeds the training shuffle.

    `from_settings` builds the datasets a run's `ImageSetSettings` describe.

    Synthetic datasets are generated (or read from their cache) in `setup`, in the main process.
    """

    def __init__(
        self, datasets: Mapping[str, Dataset], *, batch_size: int, num_workers: int = 0, seed: int = 0
    ) -> None:
        super().__init__()
        check_loader_args(batch_size, num_workers)
        unknown = set(datasets) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown splits {sorted(unknown)}; use {SPLITS}")
        self.datasets = dict(datasets)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed

    @classmethod
    def from_settings(
        cls,
        settings: ImageSetSettings,
        face_model: FaceModel,
        *,
        image_size: int,
        num_workers: int = 0,
        cache_dir: str | Path | None = None,
        backend: str = "auto",
    ) -> ImageSetDataModule:
        """Synthetic sets (train/val/test) or prepared photos (train/val) as ``settings`` say."""
        if settings.kind == "synthetic":
            datasets = {
                split: SyntheticImageSetDataset(
                    face_model, settings, split, image_size=image_size, cache_dir=cache_dir, backend=backend
                )
                for split in SPLITS
            }
        else:
            if settings.root is None:
                raise InvalidInputError("prepared image sets need data.sets.root (a `face3d prepare` folder of photos)")
            groups = group_by_identity(read_prepared(settings.root), min_images=settings.min_images)
            train, val = split_identities(groups, settings.val_fraction)
            if not train:
                raise InvalidInputError(
                    f"all {len(val)} identities of {settings.root} fell into the validation split; lower "
                    f"data.sets.val_fraction ({settings.val_fraction}) or add people"
                )
            datasets = {
                "train": PreparedImageSetDataset(train, settings, image_size=image_size, random_sets=True),
                "val": PreparedImageSetDataset(
                    val, dataclasses.replace(settings, sets_per_identity=1), image_size=image_size, random_sets=False
                ),
            }
        return cls(datasets, batch_size=settings.batch_size, num_workers=num_workers, seed=settings.seed)

    def setup(self, stage: str | None = None) -> None:
        for split in stage_splits(stage):
            dataset = self.datasets.get(split)
            if hasattr(dataset, "materialise"):
                dataset.materialise()

    def dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            raise ValueError(f"this data module has no {split!r} split (it has {sorted(self.datasets)})")
        return self.datasets[split]

    def loader(self, split: str, shuffle: bool = False) -> DataLoader:
        dataset = self.dataset(split)
        if hasattr(dataset, "materialise"):
            # Generating inside workers would repeat the work in each of them.
            dataset.materialise()
        return make_loader(dataset, self.batch_size, shuffle, self.seed, self.num_workers, collate_image_sets)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
