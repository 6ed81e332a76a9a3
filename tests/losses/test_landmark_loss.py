import numpy as np
import pytest
import torch

from losses.landmark import (
    DEEP3D_NOSE_68,
    INNER_MOUTH_68,
    NOSE_68,
    landmark_loss,
    landmark_weights,
)


def _points(batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(batch, 68, 2, generator=generator) * 224 for _ in range(2))


def test_index_sets_are_the_ibug_nose_and_inner_mouth():
    assert NOSE_68 == tuple(range(27, 36))
    assert INNER_MOUTH_68 == tuple(range(60, 68))
    assert DEEP3D_NOSE_68 == (28, 29, 30)


def test_weights_are_twenty_on_nose_and_inner_mouth_and_one_elsewhere():
    weights = landmark_weights()
    assert weights.shape == (68,) and weights.dtype == torch.float32
    heavy = set(range(27, 36)) | set(range(60, 68))
    expected = np.array([20.0 if i in heavy else 1.0 for i in range(68)])
    np.testing.assert_array_equal(weights.numpy(), expected)


def test_weights_are_configurable():
    weights = landmark_weights(5.0, nose=DEEP3D_NOSE_68)
    assert set(torch.nonzero(weights == 5.0).flatten().tolist()) == {28, 29, 30, *range(60, 68)}
    assert (weights != 5.0).sum() == 68 - 11
    with pytest.raises(ValueError, match="indices"):
        landmark_weights(nose=(68,))


def test_value_matches_numpy():
    predicted, target = _points()
    weights = landmark_weights()
    p, t, w = (x.numpy().astype(np.float64) for x in (predicted, target, weights))
    expected = (((p - t) ** 2).sum(-1) * w).sum() / (3 * 68)
    got = landmark_loss(predicted, target, weights)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_zero_on_identical_landmarks():
    predicted, _ = _points()
    assert landmark_loss(predicted, predicted.clone(), landmark_weights()).item() == 0.0


def test_image_size_rescaling_keeps_the_weight_meaning():
    predicted, target = _points()
    weights = landmark_weights()
    full = landmark_loss(predicted, target, weights)
    # The same configuration on a 112-pixel crop has half the coordinates and the same loss.
    half = landmark_loss(predicted / 2, target / 2, weights, image_size=112.0)
    torch.testing.assert_close(half, full)
    normalised = landmark_loss(predicted, target, weights, image_size=224.0, reference_size=1.0)
    torch.testing.assert_close(normalised, full / 224.0**2)


def test_per_image_weights_and_gradients():
    predicted, target = _points(batch=2)
    predicted.requires_grad_()
    weights = torch.stack([landmark_weights(), torch.zeros(68)])
    loss = landmark_loss(predicted, target, weights)
    torch.testing.assert_close(loss, landmark_loss(predicted[:1], target[:1], landmark_weights()) / 2)
    loss.backward()
    assert torch.isfinite(predicted.grad).all()
    assert predicted.grad[0].abs().sum() > 0 and predicted.grad[1].abs().sum() == 0


def test_bad_shapes_are_reported():
    predicted, target = _points()
    with pytest.raises(ValueError, match="predicted"):
        landmark_loss(predicted[:, :5], target[:, :5], landmark_weights())
    with pytest.raises(ValueError, match="point_weights"):
        landmark_loss(predicted, target, torch.ones(5))
