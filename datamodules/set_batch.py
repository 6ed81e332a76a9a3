"""The batch of image sets C-Net trains on: several pictures of one identity per sample, padded to the largest
set of the batch (`collate_image_sets`), with the 3D ground truth and per-picture metadata of synthetic sets."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from datamodules.batch import Movable


@dataclass(frozen=True)
class SetGroundTruth(Movable):
    """3D ground truth of each set's identity, where the data has it (synthetic sets).

    identity: (B, n_id) identity coefficients
    vertices: (B, V, 3) the identity's neutral shape (mean + identity, zero expression, before pose), decimetres
    """

    identity: torch.Tensor
    vertices: torch.Tensor


@dataclass(frozen=True)
class SetMetadata(Movable):
    """What was done to each picture, for analysis (synthetic sets); padding holds zeros.

    yaw_deg:     (B, N) float head yaw in degrees (the y-axis angle of `Coefficients.angles`): 0 is frontal,
                 +-90 a full profile
    occluded:    (B, N) bool, an occluder covers part of the face
    degradation: (B, N) long index into `datamodules.synthetic_sets.DEGRADATIONS` (0 = clean)
    """

    yaw_deg: torch.Tensor
    occluded: torch.Tensor
    degradation: torch.Tensor


@dataclass(frozen=True)
class SetBatch(Movable):
    """B image sets of one identity each, padded to N pictures.

    images:       (B, N, 3, H, W) RGB float in [0, 1]; padding is 0
    landmarks:    (B, N, 68, 2) detected (or noisy synthetic) landmarks, crop pixels
    skin:         (B, N, 1, H, W) skin posterior in [0, 1]
    valid:        (B, N) bool, True for real pictures, False for padding
    index:        (B,) long, position of each set in its dataset
    ground_truth: `SetGroundTruth` or None
    metadata:     `SetMetadata` or None
    full:         True when the batch is known to hold no padding (``valid`` all True). Set on the host by
                  `collate_image_sets`, so a training step can skip selecting valid pictures without asking
                  the device; False is always safe.
    """

    images: torch.Tensor
    landmarks: torch.Tensor
    skin: torch.Tensor
    valid: torch.Tensor
    index: torch.Tensor
    ground_truth: SetGroundTruth | None = None
    metadata: SetMetadata | None = None
    full: bool = False

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    @property
    def set_size(self) -> int:
        return self.images.shape[1]


def collate_image_sets(samples: list[dict]) -> SetBatch:
    """Stack per-set dicts into a `SetBatch`, padding to the largest set.

    Keys of a sample: ``images`` (n, 3, H, W), ``landmarks`` (n, 68, 2), ``skin`` (n, 1, H, W), ``index``; with
    ground truth ``identity`` (n_id,) and ``vertices`` (V, 3); with metadata ``yaw_deg``, ``occluded`` and
    ``degradation``, each (n,).
    """
    if not samples:
        raise ValueError("cannot collate an empty list of image sets")
    sizes = [len(s["images"]) for s in samples]
    if min(sizes) < 1:
        raise ValueError("an image set has no pictures; every set needs at least one")
    n = max(sizes)

    def pad(key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        first = torch.as_tensor(samples[0][key])
        out = torch.zeros((len(samples), n, *first.shape[1:]), dtype=dtype or first.dtype)
        for b, sample in enumerate(samples):
            value = torch.as_tensor(sample[key])
            out[b, : len(value)] = value.to(out.dtype)
        return out

    valid = torch.zeros(len(samples), n, dtype=torch.bool)
    for b, size in enumerate(sizes):
        valid[b, :size] = True
    ground_truth = metadata = None
    if "identity" in samples[0]:
        ground_truth = SetGroundTruth(
            identity=torch.stack([torch.as_tensor(s["identity"]) for s in samples]),
            vertices=torch.stack([torch.as_tensor(s["vertices"]) for s in samples]),
        )
    if "yaw_deg" in samples[0]:
        metadata = SetMetadata(
            yaw_deg=pad("yaw_deg", torch.float32),
            occluded=pad("occluded", torch.bool),
            degradation=pad("degradation", torch.long),
        )
    return SetBatch(
        images=pad("images", torch.float32),
        landmarks=pad("landmarks", torch.float32),
        skin=pad("skin", torch.float32),
        valid=valid,
        index=torch.tensor([int(s["index"]) for s in samples], dtype=torch.long),
        ground_truth=ground_truth,
        metadata=metadata,
        full=min(sizes) == n,
    )
