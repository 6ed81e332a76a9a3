import dataclasses

import pytest
import torch

from face_model.model import five_points_from_68
from losses.hybrid import TERMS, HybridLoss, LossWeights
from losses.landmark import landmark_weights

SKIN = torch.tensor([True, True, False, True, True, False, True, True, False, True])


def _batch(make_render, make_coeffs, sh_channels=3):
    render = make_render()
    generator = torch.Generator().manual_seed(5)
    images = torch.rand(render.image.shape, generator=generator)
    target = render.landmarks.detach() + torch.randn(render.landmarks.shape, generator=generator)
    # Five points well inside the 16-pixel image so the alignment is not degenerate.
    target[:, 36:42] = torch.tensor([4.0, 5.0])
    target[:, 42:48] = torch.tensor([11.0, 5.0])
    target[:, 30] = torch.tensor([7.5, 8.5])
    target[:, 48] = torch.tensor([5.0, 11.5])
    target[:, 54] = torch.tensor([10.0, 11.5])
    attention = torch.rand(render.mask.shape, generator=generator)
    return dict(
        images=images,
        render=render,
        target_landmarks=target,
        skin_attention=attention,
        coeffs=make_coeffs(sh_channels=sh_channels),
    )


def test_loss_weights_defaults_are_the_paper_values():
    w = LossWeights()
    assert (w.photometric, w.landmark, w.perceptual, w.regularization) == (1.92, 1.6e-3, 0.2, 3e-4)
    assert (w.texture, w.gamma, w.reg_id, w.reg_exp, w.reg_tex) == (1.0, 0.0, 1.0, 0.8, 1.7e-3)
    assert w.nose_mouth_landmark_weight == 20.0
    with pytest.raises(ValueError, match="landmark"):
        LossWeights(landmark=-1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.photometric = 2.0


def test_keys_weighted_raw_and_total(make_render, make_coeffs, recognition):
    loss = HybridLoss(LossWeights(gamma=10.0), SKIN, recognition)
    out = loss(**_batch(make_render, make_coeffs))
    assert set(out) == {*TERMS, "total", *(f"raw/{t}" for t in TERMS)}
    assert all(v.shape == () for v in out.values())
    w = LossWeights(gamma=10.0)
    for term in TERMS:
        torch.testing.assert_close(out[term], getattr(w, term) * out[f"raw/{term}"])
    torch.testing.assert_close(out["total"], sum(out[t] for t in TERMS))


@pytest.mark.parametrize("term", TERMS)
def test_doubling_a_weight_doubles_its_term(make_render, make_coeffs, recognition, term):
    base = LossWeights(gamma=10.0)
    batch = _batch(make_render, make_coeffs)
    once = HybridLoss(base, SKIN, recognition)(**batch)
    doubled = base.__class__(**{**dataclasses.asdict(base), term: 2 * getattr(base, term)})
    twice = HybridLoss(doubled, SKIN, recognition)(**batch)
    torch.testing.assert_close(twice[term], 2 * once[term])
    torch.testing.assert_close(twice[f"raw/{term}"], once[f"raw/{term}"])


def test_zero_weight_terms_and_missing_network_are_skipped(make_render, make_coeffs, recognition):
    batch = _batch(make_render, make_coeffs)
    out = HybridLoss(LossWeights(perceptual=0.0, texture=0.0), SKIN, recognition)(**batch)
    assert "perceptual" not in out and "raw/perceptual" not in out and "texture" not in out
    assert "gamma" not in out  # off by default
    assert recognition.calls == 0
    out = HybridLoss(LossWeights(), SKIN, None)(**batch)
    assert "perceptual" not in out and "photometric" in out


def test_gradients_reach_render_and_coefficients_but_not_the_network(make_render, make_coeffs, recognition):
    batch = _batch(make_render, make_coeffs)
    out = HybridLoss(LossWeights(gamma=10.0), SKIN, recognition)(**batch)
    out["total"].backward()
    render, coeffs = batch["render"], batch["coeffs"]
    for grad in (
        render.image.grad,
        render.landmarks.grad,
        render.albedo.grad,
        coeffs.identity.grad,
        coeffs.expression.grad,
        coeffs.albedo.grad,
        coeffs.lighting.grad,
    ):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in recognition.parameters())


def test_recognition_stays_in_eval_mode(recognition):
    loss = HybridLoss(LossWeights(), SKIN, recognition).train()
    assert loss.training and not recognition.training


def test_default_five_points_come_from_the_target_landmarks(make_render, make_coeffs, recognition):
    batch = _batch(make_render, make_coeffs)
    loss = HybridLoss(LossWeights(), SKIN, recognition)
    default = loss(**batch)["raw/perceptual"]
    explicit = loss(**batch, five_points=five_points_from_68(batch["target_landmarks"]))["raw/perceptual"]
    torch.testing.assert_close(default, explicit)
    moved = five_points_from_68(batch["target_landmarks"]) + 2.0
    shifted = loss(**batch, five_points=moved)["raw/perceptual"]
    assert not torch.allclose(shifted, default)


def test_zero_loss_for_a_perfect_fit(make_render, make_coeffs, recognition):
    batch = _batch(make_render, make_coeffs, sh_channels=1)
    render = batch["render"]
    perfect = dataclasses.replace(
        render,
        image=batch["images"].clone(),
        landmarks=batch["target_landmarks"].clone(),
        albedo=torch.full_like(render.albedo, 0.5),
    )
    coeffs = batch["coeffs"]
    coeffs = coeffs.replace(**{n: torch.zeros_like(getattr(coeffs, n)) for n in ("identity", "expression", "albedo")})
    loss = HybridLoss(LossWeights(gamma=10.0), SKIN, recognition)
    out = loss(**{**batch, "render": perfect, "coeffs": coeffs})
    assert out["total"].item() == pytest.approx(0.0, abs=1e-6)


def test_landmark_term_is_resolution_independent(make_render, make_coeffs):
    batch = _batch(make_render, make_coeffs)
    only_landmarks = LossWeights(photometric=0.0, perceptual=0.0, regularization=0.0, texture=0.0)
    loss = HybridLoss(only_landmarks, SKIN)
    small = loss(**batch)["landmark"]
    render = batch["render"]
    large = dataclasses.replace(
        render, image=torch.zeros(2, 3, 32, 32), mask=torch.zeros(2, 1, 32, 32), landmarks=render.landmarks * 2
    )
    out = loss(
        **{
            **batch,
            "images": torch.zeros(2, 3, 32, 32),
            "render": large,
            "target_landmarks": batch["target_landmarks"] * 2,
        }
    )
    torch.testing.assert_close(out["landmark"], small)
    assert set(out) == {"landmark", "total", "raw/landmark"}


def test_custom_landmark_point_weights_and_buffers(make_render, make_coeffs):
    weights = landmark_weights(20.0, nose=(28, 29, 30))
    loss = HybridLoss(LossWeights(), SKIN, landmark_point_weights=weights)
    assert torch.equal(loss.landmark_point_weights, weights)
    assert dict(loss.named_buffers()).keys() == {"skin_mask", "landmark_point_weights"}
    with pytest.raises(ValueError, match="landmark_point_weights"):
        HybridLoss(LossWeights(), SKIN, landmark_point_weights=torch.ones(5))


def test_bad_recognition_network_is_reported():
    with pytest.raises(TypeError, match="template"):
        HybridLoss(LossWeights(), SKIN, torch.nn.Linear(2, 2))
