"""The model ceiling: exact on targets the model can represent, zero on the mean face, the share of gain."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from benchmarks.ceiling import CeilingSettings, fit_model_to_mesh, share_of_gain
from geometry.similarity import SimilarityTransform
from metrics import DM_TO_MM, point_to_surface

FAST = CeilingSettings(iterations=6, max_points=1500)
EXACT = CeilingSettings(iterations=6, max_points=1500, regularization=1e-8)


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = (
        math.cos(yaw),
        math.sin(yaw),
        math.cos(pitch),
        math.sin(pitch),
        math.cos(roll),
        math.sin(roll),
    )
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return rz @ ry @ rx


def model_instance(face_model, identity: torch.Tensor, expression: torch.Tensor) -> np.ndarray:
    coeffs = face_model.layout.zeros(1).replace(identity=identity[None], expression=expression[None])
    return face_model.shape(coeffs)[0].double().numpy()


@pytest.mark.slow
def test_a_model_instance_under_a_similarity_is_recovered(ict_small) -> None:
    generator = torch.Generator().manual_seed(3)
    identity = torch.randn(ict_small.layout.n_id, generator=generator)
    expression = 0.5 * torch.randn(ict_small.layout.n_exp, generator=generator)
    shape = model_instance(ict_small, identity, expression)
    # Into millimetres, turned and moved: a "scan" of a face the model can represent exactly.
    truth = SimilarityTransform(DM_TO_MM * 1.07, rotation(0.4, -0.2, 0.1), np.array([12.0, -30.0, 450.0]))
    target = truth.apply(shape)
    landmarks = target[ict_small.landmark_ids.numpy()]
    fit = fit_model_to_mesh(ict_small, target, ict_small.triangles, landmarks, settings=EXACT)
    # The fitted surface lies on the target, from more than a millimetre at the landmark start.
    assert fit.history[0] > 1.0
    assert fit.rms < 1e-3
    assert np.abs(fit.vertices - target).max() < 1e-3
    distances = point_to_surface(target, fit.vertices, ict_small.triangles.numpy()).distances
    assert distances.max() < 1e-3
    # Scale, rotation and the coefficients themselves come back.
    assert fit.transform.scale == pytest.approx(truth.scale, rel=1e-5)
    np.testing.assert_allclose(fit.transform.rotation, truth.rotation, atol=1e-5)
    torch.testing.assert_close(fit.coeffs.identity[0], identity, atol=1e-3, rtol=0)
    torch.testing.assert_close(fit.coeffs.expression[0], expression, atol=1e-3, rtol=0)
    assert fit.coeffs.albedo.abs().max() == 0 and fit.coeffs.angles.abs().max() == 0
    # The default prior, tuned for real scans, costs only hundredths of a millimetre here.
    assert fit_model_to_mesh(ict_small, target, ict_small.triangles, landmarks, settings=FAST).rms < 0.1


def test_the_mean_face_gives_zero_coefficients(ict_small) -> None:
    mean = ict_small.mean_shape.double().numpy() * DM_TO_MM
    fit = fit_model_to_mesh(
        ict_small,
        mean,
        ict_small.triangles,
        mean[ict_small.landmark_ids.numpy()],
        settings=CeilingSettings(iterations=2, max_points=300),
    )
    assert fit.coeffs.identity.abs().max() < 1e-3
    assert fit.coeffs.expression.abs().max() < 1e-3
    assert fit.rms < 1e-6
    assert fit.transform.scale == pytest.approx(DM_TO_MM)


@pytest.mark.slow
def test_identity_only_ceiling_leaves_expression_at_zero_and_fits_worse(ict_small) -> None:
    generator = torch.Generator().manual_seed(5)
    shape = model_instance(
        ict_small,
        torch.randn(ict_small.layout.n_id, generator=generator),
        torch.randn(ict_small.layout.n_exp, generator=generator),
    )
    target = shape * DM_TO_MM
    landmarks = target[ict_small.landmark_ids.numpy()]
    both = fit_model_to_mesh(ict_small, target, ict_small.triangles, landmarks, settings=EXACT)
    alone = fit_model_to_mesh(
        ict_small, target, ict_small.triangles, landmarks, settings=dataclasses.replace(EXACT, expression=False)
    )
    assert alone.coeffs.expression.abs().max() == 0
    assert alone.rms > 5 * both.rms


def test_the_crop_needs_a_centre(ict_small) -> None:
    mean = ict_small.mean_shape.double().numpy() * DM_TO_MM
    with pytest.raises(ValueError, match="crop_radius=None"):
        fit_model_to_mesh(ict_small, mean, ict_small.triangles)
    with pytest.raises(ValueError, match="iterations"):
        CeilingSettings(iterations=0)


def test_share_of_gain() -> None:
    assert share_of_gain(2.0, 2.0, 1.0) == 0.0
    assert share_of_gain(2.0, 1.0, 1.0) == 1.0
    assert share_of_gain(2.0, 1.5, 1.0) == pytest.approx(0.5)
    assert share_of_gain(2.0, 2.5, 1.0) == pytest.approx(-0.5)
    assert share_of_gain(1.0, 0.9, 1.0) is None
