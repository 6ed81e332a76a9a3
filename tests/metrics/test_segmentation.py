"""Mask scores against hand-counted confusion tables."""

from __future__ import annotations

import pytest
import torch

from metrics.segmentation import MaskScores, mask_confusion, mask_scores


def test_confusion_and_scores_by_hand():
    predicted = torch.tensor([0.9, 0.8, 0.2, 0.1, 0.7, 0.3]).view(1, 1, 2, 3)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 3)
    counts = mask_confusion(predicted, target)
    assert counts.tolist() == [[2.0, 1.0, 1.0, 2.0]]
    s = mask_scores(counts[0])
    assert s["accuracy"].item() == pytest.approx(4 / 6)
    assert s["precision"].item() == pytest.approx(2 / 3)
    assert s["recall"].item() == pytest.approx(2 / 3)
    assert s["f1"].item() == pytest.approx(2 / 3)
    assert s["iou"].item() == pytest.approx(2 / 4)


def test_metric_pools_pixels_over_batches_and_handles_empty_classes():
    metric = MaskScores()
    metric.update(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    metric.update(torch.zeros(2, 1, 2, 2), torch.tensor([1.0, 0, 0, 0] * 2).view(2, 1, 2, 2))
    s = metric.compute()
    # tp 4, fp 0, fn 2, tn 6
    assert s["recall"].item() == pytest.approx(4 / 6) and s["precision"].item() == pytest.approx(1.0)
    assert mask_scores(torch.zeros(4))["f1"].item() == 0.0


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        mask_confusion(torch.ones(1, 2, 2), torch.ones(1, 2, 2))
