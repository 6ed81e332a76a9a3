"""The full ICT head (face area + eyeballs) driven by a face model's coefficients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from face_model import load_face_model
from face_model.ict import default_ict_path, ict_head_geometry


def random_coefficients(model, batch: int = 3):
    generator = torch.Generator().manual_seed(0)
    zeros = model.layout.zeros(batch)
    return zeros.replace(
        identity=torch.randn(batch, model.layout.n_id, generator=generator),
        expression=torch.randn(batch, model.layout.n_exp, generator=generator),
    )


@pytest.mark.parametrize(
    "options",
    [
        dict(n_id=10, n_exp=10, n_tex=9),
        dict(region="full", n_id=5, n_exp=7, n_tex=3),
        dict(n_id=4, n_exp=6, n_tex=3, expression_basis="blendshapes"),
    ],
)
def test_head_agrees_with_the_face_model_on_its_vertices(options):
    model = load_face_model("ict", **options)
    head = ict_head_geometry(model)
    with np.load(default_ict_path()) as data:
        n_area, n_eyes = data["mean"].shape[0], data["eyes_mean"].shape[0]
    assert head.n_face == model.n_vertices and head.n_area == n_area
    assert head.n_vertices == n_area + n_eyes
    coeffs = random_coefficients(model)
    vertices = head.shape(coeffs.identity, coeffs.expression)
    assert torch.allclose(vertices[:, : model.n_vertices], model.shape(coeffs), atol=1e-6)
    assert torch.equal(head.landmark_ids, model.landmark_ids)
    assert int(head.triangles.max()) == head.n_vertices - 1


def test_extra_vertices_move_as_a_larger_region_would():
    # With raw blendshapes, coefficients mean the same in the narrow and the full model, so the narrow
    # model's head must reproduce the full model on all 9,409 face-area vertices.
    narrow = load_face_model("ict", n_id=6, n_exp=8, n_tex=3, expression_basis="blendshapes")
    full = load_face_model("ict", n_id=6, n_exp=8, n_tex=3, expression_basis="blendshapes", region="full")
    head = ict_head_geometry(narrow)
    coeffs = random_coefficients(narrow)
    ours = head.shape(coeffs.identity, coeffs.expression)[:, : head.n_area]
    theirs = full.shape(coeffs)
    # The two models are centred on different vertex sets: compare up to one constant shift.
    shift = (theirs - ours).mean(dim=(0, 1))
    assert torch.allclose(ours + shift, theirs, atol=2e-4)


def test_eyeballs_sit_in_the_eye_openings():
    model = load_face_model("ict", n_id=2, n_exp=2, n_tex=1)
    head = ict_head_geometry(model)
    eyes = head.mean_shape[head.n_area :]
    landmarks = model.mean_shape[model.landmark_ids]
    for ids, ball in ((range(36, 42), eyes[eyes[:, 0] < 0]), (range(42, 48), eyes[eyes[:, 0] > 0])):
        opening = landmarks[list(ids)].mean(0)
        # Eyeball centre behind the lids, within a centimetre sideways.
        assert torch.linalg.norm(ball.mean(0)[:2] - opening[:2]) < 0.1
        assert ball[:, 2].max() < opening[2] + 0.05


def test_a_foreign_model_is_refused():
    model = load_face_model("ict", n_id=2, n_exp=2, n_tex=1)
    model.mean_shape.add_(torch.randn_like(model.mean_shape) * 0.01)
    with pytest.raises(ValueError, match="mean shape"):
        ict_head_geometry(model)
    model = load_face_model("ict", n_id=2, n_exp=2, n_tex=1)
    model.id_basis.add_(torch.randn_like(model.id_basis) * 0.01)
    with pytest.raises(ValueError, match="identity basis"):
        ict_head_geometry(model)
