import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from benchmarks.metrics import FractionCloser, LandmarkError, ShapeError, landmark_error, procrustes, vertex_error


def random_pose(n: int, scale: float = 1.0):
    r = torch.from_numpy(Rotation.random(n, random_state=0).as_matrix())
    t = torch.randn(n, 1, 3, dtype=torch.float64)
    return r, t, scale


def test_procrustes_recovers_a_known_rigid_motion():
    x = torch.randn(3, 50, 3, dtype=torch.float64)
    r, t, _ = random_pose(3)
    y = x @ r.transpose(1, 2) + t
    torch.testing.assert_close(procrustes(x, y), y)
    assert float(vertex_error(x, y).max()) < 1e-8


def test_similarity_alignment_recovers_scale_rigid_does_not():
    x = torch.randn(2, 40, 3, dtype=torch.float64)
    r, t, _ = random_pose(2)
    y = 1.3 * x @ r.transpose(1, 2) + t
    torch.testing.assert_close(procrustes(x, y, scale=True), y)
    assert float(vertex_error(x, y, "rigid").min()) > 1.0


def test_no_reflection_for_mirrored_shapes():
    x = torch.randn(1, 30, 3, dtype=torch.float64)
    mirrored = x * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    aligned = procrustes(x, mirrored)
    centred = aligned - aligned.mean(1, keepdim=True)
    # A proper rotation keeps the Gram matrix of the centred points.
    xc = x - x.mean(1, keepdim=True)
    torch.testing.assert_close(centred @ centred.transpose(1, 2), xc @ xc.transpose(1, 2))


def test_vertex_error_in_mm_against_numpy():
    a = torch.randn(2, 10, 3, dtype=torch.float64)
    b = a + 0.01
    expected = np.linalg.norm((a - b).numpy(), axis=-1).mean(-1) * 100
    np.testing.assert_allclose(vertex_error(a, b, "none").numpy(), expected)
    with pytest.raises(ValueError, match="align"):
        vertex_error(a, b, "icp")


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
