"""torchmetrics wrappers: state and reduction only; the maths is in `functional`."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from benchmarks.metrics.functional import landmark_error, vertex_error


class _MeanOverSamples(Metric):
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _accumulate(self, per_sample: torch.Tensor) -> None:
        self.total += per_sample.double().sum()
        self.count += per_sample.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


class ShapeError(_MeanOverSamples):
    """Mean per-vertex distance (mm) between predicted and ground-truth meshes after alignment."""

    def __init__(self, align: str = "rigid") -> None:
        super().__init__()
        self.align = align

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        self._accumulate(vertex_error(predicted.float(), target.float(), self.align))


class LandmarkError(_MeanOverSamples):
    """Mean 2D landmark distance, in pixels or normalised by the inter-ocular distance."""

    def __init__(self, normalise: str = "none") -> None:
        super().__init__()
        self.normalise = normalise

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        self._accumulate(landmark_error(predicted.float(), target.float(), self.normalise))
