"""The C-Net strategy table (benchmarks.cnet_analysis) against direct per-set computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.cnet_analysis import SetEvaluation, confidence_by_degradation, strategy_errors, strategy_table
from datamodules.image_sets import DEGRADATIONS
from experiments.train_aggregate import AggregateResult, identity_information_note
from face_model import load_face_model
from metrics import vertex_error

pytestmark = pytest.mark.usefixtures("reuse_face_models")


@pytest.fixture(scope="module")
def face_model():
    return load_face_model("ict")


def neutral(face_model, identity: torch.Tensor) -> torch.Tensor:
    return face_model.shape(face_model.layout.zeros(identity.shape[0]).replace(identity=identity))


def evaluation_of(face_model, identity, truth_identity, valid, elementwise, scalar) -> SetEvaluation:
    return SetEvaluation(
        identity=identity,
        valid=valid,
        confidences={"s4": elementwise, "s1": scalar},
        truth_vertices=neutral(face_model, truth_identity),
        yaw_deg=None,
        occluded=None,
        degradation=None,
    )


def test_rows_match_direct_computation(face_model):
    generator = torch.Generator().manual_seed(3)
    n_sets, n, n_id = 3, 4, face_model.layout.n_id
    truth = torch.randn(n_sets, n_id, generator=generator)
    identity = truth[:, None] + 0.7 * torch.randn(n_sets, n, n_id, generator=generator)
    valid = torch.tensor([[True] * 4, [True, True, True, False], [True, True, False, False]])
    identity = identity * valid[..., None]
    # S3 takes the picture with the largest confidence sum: picture 1 in every set.
    elementwise = torch.full((n_sets, n, n_id), 0.1) * valid[..., None]
    elementwise[:, 1] = 0.9
    scalar = torch.rand(n_sets, n, 1, generator=generator) * valid[..., None]
    errors = strategy_errors(evaluation_of(face_model, identity, truth, valid, elementwise, scalar), face_model)

    truth_shapes = neutral(face_model, truth)
    mean_face = vertex_error(face_model.mean_shape.expand(n_sets, -1, -1), truth_shapes).numpy()
    np.testing.assert_allclose(errors["mean_face"], mean_face, rtol=1e-5)
    averaged = torch.stack([identity[s, valid[s]].mean(0) for s in range(n_sets)])
    np.testing.assert_allclose(
        errors["mean"], vertex_error(neutral(face_model, averaged), truth_shapes).numpy(), rtol=1e-5
    )
    np.testing.assert_allclose(
        errors["s3"], vertex_error(neutral(face_model, identity[:, 1]), truth_shapes).numpy(), rtol=1e-5
    )
    weights = scalar[..., 0]
    s1 = torch.stack(
        [
            (weights[s, valid[s], None] * identity[s, valid[s]]).sum(0) / weights[s, valid[s]].sum()
            for s in range(n_sets)
        ]
    )
    np.testing.assert_allclose(errors["s1"], vertex_error(neutral(face_model, s1), truth_shapes).numpy(), rtol=1e-4)
    assert len(errors["per_image"]) == int(valid.sum())

    rows = {row.key: row for row in strategy_table(errors)}
    assert list(rows) == ["mean_face", "per_image", "mean", "s1", "s2", "s3", "s4"]
    assert rows["mean"].diff_mm is None
    assert rows["mean_face"].diff_mm == pytest.approx(float(np.mean(mean_face - errors["mean"])), rel=1e-5)


def test_exact_identities_score_zero_and_the_mean_face_does_not(face_model):
    truth = torch.randn(2, face_model.layout.n_id, generator=torch.Generator().manual_seed(0))
    identity = truth[:, None].expand(-1, 3, -1).clone()
    valid = torch.ones(2, 3, dtype=torch.bool)
    confidences = torch.rand(2, 3, face_model.layout.n_id)
    errors = strategy_errors(
        evaluation_of(face_model, identity, truth, valid, confidences, confidences[..., :1]), face_model
    )
    for key in ("per_image", "mean", "s1", "s2", "s3", "s4"):
        assert errors[key].max() < 1e-3, key
    assert errors["mean_face"].min() > 1.0


def test_identity_information_note_only_when_averaging_is_near_the_mean_face(face_model):
    generator = torch.Generator().manual_seed(1)
    truth = torch.randn(4, face_model.layout.n_id, generator=generator)
    valid = torch.ones(4, 3, dtype=torch.bool)
    confidences = torch.rand(4, 3, face_model.layout.n_id, generator=generator)

    def note(shrinkage: float) -> str | None:
        identity = (shrinkage * truth)[:, None].expand(-1, 3, -1)
        evaluation = evaluation_of(face_model, identity, truth, valid, confidences, confidences[..., :1])
        return identity_information_note(strategy_table(strategy_errors(evaluation, face_model)))

    assert note(0.8) is None
    uninformative = note(0.01)
    assert uninformative is not None and "R-Net" in uninformative and "mean face" in uninformative


def test_confidence_by_degradation_is_relative_to_the_clean_pictures():
    noise, blur = DEGRADATIONS.index("noise"), DEGRADATIONS.index("blur")
    degradation = torch.tensor([[0, noise, blur, 0], [0, 0, noise, 0]])
    valid = torch.tensor([[True] * 4, [True, True, True, False]])
    elementwise = torch.full((2, 4, 3), 0.6)
    elementwise[degradation == noise] = 0.15
    scalar = torch.full((2, 4, 1), 0.5)
    scalar[degradation == blur] = 0.25
    scalar[1, 3] = 0.0  # padding must not count as a clean picture
    evaluation = SetEvaluation(
        identity=torch.zeros(2, 4, 3),
        valid=valid,
        confidences={"s4": elementwise, "s1": scalar},
        truth_vertices=None,
        yaw_deg=None,
        occluded=None,
        degradation=degradation,
    )
    trust = confidence_by_degradation(evaluation)
    element, single = trust["S4 sum of element-wise"], trust["S1 scalar"]
    assert set(element) == {"none", "noise", "blur"}
    assert element["none"][0] == pytest.approx(1.0) and element["noise"][0] == pytest.approx(0.25)
    assert element["blur"][0] == pytest.approx(1.0) and single["blur"][0] == pytest.approx(0.5)
    assert single["noise"] == pytest.approx((1.0, 0.0))

    summary = AggregateResult(
        run_dir=Path("run"),
        rnet_checkpoint=Path("r.ckpt"),
        cnet_checkpoints={},
        rows=strategy_table({"mean": np.array([1.0, 2.0])}),
        confidence_by_degradation=trust,
    ).summary()
    assert "S4 sum of element-wise confidence of degraded pictures / clean ones: blur 1.00, noise 0.25" in summary
