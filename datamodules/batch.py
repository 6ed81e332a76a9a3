"""The batch every DataModule yields and every LightningModule consumes."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TypeVar

import torch

M = TypeVar("M", bound="Movable")


class Movable:
    """Base of the frozen batch dataclasses: `to` moves every field that can move (tensors, nested batches) and
    keeps the others (None, flags). Lightning moves batches to the device through it."""

    def to(self: M, device: torch.device | str, non_blocking: bool = False) -> M:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return type(self)(
            **{
                name: value.to(device, non_blocking=non_blocking) if hasattr(value, "to") else value
                for name, value in values.items()
            }
        )


@dataclass(frozen=True)
class GroundTruth(Movable):
    """3D ground truth, where the data has it (synthetic faces).

    coefficients: (B, layout.size) flat coefficient vector that generated the image (`CoeffLayout.split`)
    vertices:     (B, V, 3) model-space shape (identity + expression, before pose), decimetres
    """

    coefficients: torch.Tensor
    vertices: torch.Tensor


@dataclass(frozen=True)
class FaceBatch(Movable):
    """Aligned face crops with their weak labels.

    images:        (B, 3, H, W) RGB float in [0, 1]
    landmarks:     (B, 68, 2) detected (or noisy synthetic) landmarks, crop pixels, x right, y down
    skin:          (B, 1, H, W) skin posterior P(skin | colour) in [0, 1] from the skin model
    index:         (B,) long, position of each sample in its dataset (for logging / ordering)
    ground_truth:  `GroundTruth` or None
    """

    images: torch.Tensor
    landmarks: torch.Tensor
    skin: torch.Tensor
    index: torch.Tensor
    ground_truth: GroundTruth | None = None

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    def to_memory_format(self, memory_format: torch.memory_format) -> FaceBatch:
        """The same batch with images in ``memory_format`` (channels_last for faster convolutions)."""
        return FaceBatch(
            **{
                **{f.name: getattr(self, f.name) for f in fields(self)},
                "images": self.images.contiguous(memory_format=memory_format),
            }
        )


def collate_face_samples(samples: list[dict]) -> FaceBatch:
    """Stack per-sample dicts (keys: image, landmarks, skin, index, and optionally coefficients,
    vertices) into a `FaceBatch`."""
    stack = lambda key: torch.stack([torch.as_tensor(s[key]) for s in samples])  # noqa: E731
    gt = None
    if "coefficients" in samples[0]:
        gt = GroundTruth(coefficients=stack("coefficients"), vertices=stack("vertices"))
    return FaceBatch(
        images=stack("image"),
        landmarks=stack("landmarks"),
        skin=stack("skin"),
        index=stack("index").long(),
        ground_truth=gt,
    )
