"""Image sets of real photos for C-Net: photos from ONE ``face3d prepare`` output folder whose source photos were
organised one folder per person (``people/alice/1.jpg``, ``people/bob/x.png``, ... prepared with
``face3d prepare --images people --out prepared``).

The identity of a photo is the folder its source path sits in (``alice``, or ``group/alice`` for deeper trees);
photos directly in the root folder have no identity and are skipped. One prepare run keeps prepare's cache and
manifest in one place, which is why this layout was chosen over one prepare folder per identity. Any number of
photos per identity; sets are sampled to ``set_size`` pictures (5 in the paper), smaller identities give smaller
sets (padded by `datamodules.set_batch.collate_image_sets`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.loaders import split_by_hash
from datamodules.prepared import PreparedRecord, load_prepared_sample
from errors import InvalidInputError

if TYPE_CHECKING:
    # The settings live beside the DataModule, which imports this module.
    from datamodules.image_sets import ImageSetSettings


def identity_of(source: str) -> str | None:
    """The identity of a prepared photo: the folder of its source path (None for photos in the root)."""
    parent = PurePosixPath(source).parent
    return None if str(parent) in ("", ".") else str(parent)


def group_by_identity(records: Sequence[PreparedRecord], min_images: int = 1) -> dict[str, list[PreparedRecord]]:
    """Prepared records grouped by `identity_of` their source, identities with fewer than ``min_images`` photos
    dropped, sorted by name. Raises ValueError when no identity is left, naming the layout it expects."""
    groups: dict[str, list[PreparedRecord]] = {}
    loose = 0
    for record in records:
        name = identity_of(record.source)
        if name is None:
            loose += 1
            continue
        groups.setdefault(name, []).append(record)
    kept = {
        name: sorted(group, key=lambda r: r.source)
        for name, group in sorted(groups.items())
        if len(group) >= min_images
    }
    if not kept:
        raise InvalidInputError(
            f"no identity with at least {min_images} photos among {len(records)} prepared photos ({loose} lie in "
            "the root folder and have no identity). Image sets need one folder per person: prepare "
            "`people/<name>/*.jpg` with `face3d prepare --images people --out DIR`."
        )
    return kept


def split_identities(
    groups: Mapping[str, Sequence[PreparedRecord]],
    val_fraction: float,
) -> tuple[dict[str, list[PreparedRecord]], dict[str, list[PreparedRecord]]]:
    """(train, val) by a hash of the identity's name, so a person is never in both and the split is stable; at
    least one validation identity when ``val_fraction`` > 0 and there are two (`datamodules.loaders.split_by_hash`).
    """
    train, val = split_by_hash(sorted(groups), lambda name: name, val_fraction, "identities")
    return {k: list(groups[k]) for k in train}, {k: list(groups[k]) for k in val}


class PreparedImageSetDataset(Dataset):
    """Sets of real photos of one identity each (see the module docstring; no ground truth).

    Args:
        groups: identity name -> its prepared records (`group_by_identity`, `split_identities`).
        settings: ``set_size`` (pictures per set; identities with fewer photos give all of theirs),
            ``sets_per_identity`` (sets served per identity and epoch: an epoch has len(groups) x this sets) and
            ``seed`` (seeds the fixed subsets) of `datamodules.image_sets.ImageSetSettings`.
        image_size: side to resize crops to; None keeps prepare's size.
        random_sets: draw each set's pictures at random on every access (training, using torch's global
            generator, which DataLoader seeds per worker); False picks a fixed subset per (identity, k) from
            ``seed`` (validation, analysis).
    """

    def __init__(
        self,
        groups: Mapping[str, Sequence[PreparedRecord]],
        settings: ImageSetSettings,
        *,
        image_size: int | None,
        random_sets: bool,
    ) -> None:
        self.names = sorted(groups)
        self.groups = {name: list(groups[name]) for name in self.names}
        self.set_size = settings.set_size
        self.image_size = image_size
        self.sets_per_identity = settings.sets_per_identity
        self.random_sets = random_sets
        self.seed = settings.seed

    def __len__(self) -> int:
        return len(self.names) * self.sets_per_identity

    def choose(self, index: int) -> list[PreparedRecord]:
        """The records of set ``index``."""
        name = self.names[index // self.sets_per_identity]
        records = self.groups[name]
        n = min(self.set_size, len(records))
        if self.random_sets:
            picks = torch.randperm(len(records))[:n].tolist()
        else:
            key = int.from_bytes(
                hashlib.sha256(f"{name}/{index % self.sets_per_identity}".encode()).digest()[:8], "big"
            )
            picks = np.random.default_rng([self.seed, key]).permutation(len(records))[:n].tolist()
        return [records[k] for k in sorted(picks)]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"set {index} out of range for {len(self)} sets")
        crops, landmarks, skins = zip(*(load_prepared_sample(r, self.image_size) for r in self.choose(index)))
        images = torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy()).float().div_(255.0)
        return {
            "images": images,
            "landmarks": torch.from_numpy(np.stack(landmarks)),
            "skin": torch.from_numpy(np.stack(skins)).unsqueeze(1),
            "index": index,
        }
