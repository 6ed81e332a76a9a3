"""torchmetrics wrappers: state and reduction only; the maths is in `functional`."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from metrics.functional import landmark_error, vertex_error
from metrics.stats import summarise


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


class FractionCloser(_MeanOverSamples):
    """Share of samples whose ``predicted`` mesh is closer to the ground truth than a ``reference`` mesh (e.g.
    the mean face), both by `ShapeError`'s distance: a paired view of "better than the baseline" that a
    difference of means can hide."""

    def __init__(self, align: str = "rigid") -> None:
        super().__init__()
        self.align = align

    def update(self, predicted: torch.Tensor, reference: torch.Tensor, target: torch.Tensor) -> None:
        target = target.float()
        closer = vertex_error(predicted.float(), target, self.align) < vertex_error(
            reference.float(), target, self.align
        )
        self._accumulate(closer.float())


class LandmarkError(_MeanOverSamples):
    """Mean 2D landmark distance, in pixels or normalised by the inter-ocular distance."""

    def __init__(self, normalise: str = "none") -> None:
        super().__init__()
        self.normalise = normalise

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        self._accumulate(landmark_error(predicted.float(), target.float(), self.normalise))


def _stats_dict(values: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    stats = summarise(values)
    return {
        name: torch.tensor(getattr(stats, name), dtype=torch.float32, device=device)
        for name in ("mean", "std", "median")
    }


def _as_tensor(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    return values.detach() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))


class ErrorSummary(Metric):
    """Collects errors of any shape (flattened) and reports {"mean", "std", "median"} over all of them,
    e.g. one per-sample error per update (mm). The values are kept (cat state) because the median needs
    them all."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, errors: torch.Tensor | np.ndarray) -> None:
        self.values.append(_as_tensor(errors).flatten().to(device=self.device, dtype=torch.float64))

    def compute(self) -> dict[str, torch.Tensor]:
        return _stats_dict(dim_zero_cat(self.values), self.device)


class ScanToMeshError(Metric):
    """Scan-to-mesh distances, one update per sample (e.g. the distances of `now_scan_to_mesh`, mm).

    reduction="points" pools every distance of every sample, as the NoW challenge reports;
    reduction="samples" takes each sample's mean distance and summarises those, as per-face errors on
    MICC, BU-3DFE or FaceWarehouse are reported (mean ± std across faces). Returns {"mean", "std",
    "median"}.
    """

    full_state_update = False

    def __init__(self, reduction: str = "points") -> None:
        super().__init__()
        if reduction not in ("points", "samples"):
            raise ValueError(f"reduction must be 'points' or 'samples', got {reduction!r}")
        self.reduction = reduction
        # Pooled point distances can run to tens of millions (NoW): float32 halves their memory.
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, distances: torch.Tensor | np.ndarray) -> None:
        values = _as_tensor(distances).flatten()
        if values.numel() == 0:
            raise ValueError("a sample has no scan-to-mesh distances (empty crop?)")
        if self.reduction == "points":
            self.values.append(values.to(device=self.device, dtype=torch.float32))
        else:
            self.values.append(values.to(dtype=torch.float64).mean().reshape(1).to(self.device))

    def compute(self) -> dict[str, torch.Tensor]:
        return _stats_dict(dim_zero_cat(self.values), self.device)
