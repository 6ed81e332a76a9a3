import torch

from metrics import FractionCloser, LandmarkError, ShapeError, landmark_error


def test_metric_modules_average_over_samples():
    metric = ShapeError(align="none")
    a = torch.zeros(2, 5, 3)
    metric.update(a, a + torch.tensor([0.01, 0.0, 0.0]))
    metric.update(a[:1], a[:1] + torch.tensor([0.04, 0.0, 0.0]))
    torch.testing.assert_close(metric.compute(), torch.tensor((1.0 + 1.0 + 4.0) / 3))
    lm = LandmarkError(normalise="interocular")
    target = torch.zeros(1, 68, 2)
    target[0, 45, 0] = 10.0
    lm.update(target + torch.tensor([1.0, 0.0]), target)
    torch.testing.assert_close(lm.compute(), torch.tensor(0.1))
    torch.testing.assert_close(landmark_error(target + 3.0, target), torch.tensor([3.0 * 2**0.5]))


def test_fraction_closer_counts_the_samples_where_the_prediction_wins():
    metric = FractionCloser(align="none")
    target = torch.zeros(4, 5, 3)
    offsets = torch.tensor([0.01, 0.03, 0.02, 0.05])[:, None, None] * torch.tensor([1.0, 0.0, 0.0])
    reference = target + 0.025 * torch.tensor([0.0, 1.0, 0.0])
    metric.update(target[:2] + offsets[:2], reference[:2], target[:2])
    metric.update(target[2:] + offsets[2:], reference[2:], target[2:])
    # 0.01 and 0.02 beat the reference's 0.025; 0.03 and 0.05 do not.
    torch.testing.assert_close(metric.compute(), torch.tensor(0.5))
