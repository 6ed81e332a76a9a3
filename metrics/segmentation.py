"""Mask metrics of a face segmentation against the true visibility mask (FOCUS's evaluation): accuracy,
precision, recall, F1 and IoU of the "face" class over whole crops.

`mask_confusion` counts per image (pure function); `mask_scores` turns pooled counts into the scores;
`MaskScores` is the thin torchmetrics wrapper that pools counts over batches (and processes).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

MASK_SCORES = ("accuracy", "precision", "recall", "f1", "iou")


def mask_confusion(predicted: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B, 4) float counts [true positive, false positive, false negative, true negative] per image.

    predicted: (B, 1, H, W) probability (or 0/1) of face, compared at ``threshold``; target: (B, 1, H, W) 0/1.
    """
    if predicted.shape != target.shape or predicted.ndim != 4 or predicted.shape[1] != 1:
        raise ValueError(
            f"predicted and target must both be (B, 1, H, W), got {tuple(predicted.shape)} and {tuple(target.shape)}"
        )
    p, t = predicted >= threshold, target >= 0.5
    dims = (1, 2, 3)
    return torch.stack([(p & t).sum(dims), (p & ~t).sum(dims), (~p & t).sum(dims), (~p & ~t).sum(dims)], dim=1).to(
        torch.float64
    )


def mask_scores(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scores of pooled (4,) counts (or per image for (B, 4)); a ratio with an empty denominator is 0."""
    tp, fp, fn, tn = counts.unbind(-1)

    def ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(b > 0, a / b.clamp_min(1e-12), torch.zeros_like(a))

    return {
        "accuracy": ratio(tp + tn, tp + fp + fn + tn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
    }


class MaskScores(Metric):
    """Pools `mask_confusion` counts over every pixel seen; `compute` gives `mask_scores` as a dict."""

    full_state_update = False

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("counts", default=torch.zeros(4, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        self.counts += mask_confusion(predicted, target, self.threshold).sum(0)

    def compute(self) -> dict[str, torch.Tensor]:
        return mask_scores(self.counts)
