"""Analysis-by-synthesis fitting on a real photo: it must move the model onto the face."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from losses.hybrid import HybridLoss, LossWeights
from reconstruction.fit import FitSettings, ReferenceCache, fit_coefficients, landmark_terms
from renderers.camera import PinholeCamera
from renderers.mesh_renderer import MeshRenderer

CROP = 112


@pytest.fixture(scope="module")
def photo(ict_small):
    """scikit-image's astronaut photo aligned to ict_small's template at 112 px: a `CropBatch` of one image."""
    import io

    import skimage.data
    from PIL import Image

    from preprocessing.align import template_from_face_model
    from preprocessing.config import PrepareConfig
    from preprocessing.detect import make_detector
    from preprocessing.image import OK, process_image
    from reconstruction.pipeline import CropBatch

    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buffer, format="PNG")
    camera = PinholeCamera().resized(CROP, CROP)
    template = template_from_face_model(ict_small, camera)
    result = process_image(
        buffer.getvalue(), make_detector("dlib-hog"), template, PrepareConfig(crop_size=CROP, workers=0)
    )
    assert result.status == OK, result.reason
    return CropBatch.from_aligned(result.aligned, result.skin, "cpu")


@pytest.fixture(scope="module")
def renderer(ict_small):
    return MeshRenderer(ict_small, PinholeCamera().resized(CROP, CROP), backend="torch")


def mean_landmark_error(renderer, coeffs, target):
    with torch.no_grad():
        return float((renderer.project_landmarks(coeffs) - target).norm(dim=-1).mean())


def test_fit_moves_the_mean_face_onto_a_real_photo(photo, renderer, ict_small):
    from networks.recognition import build_recognition_net

    loss = HybridLoss(LossWeights(), ict_small.skin_mask, build_recognition_net("sface"))
    settings = FitSettings(iterations=8)
    result = fit_coefficients(photo.images, photo.landmarks, photo.skin, renderer, loss, settings)

    before = mean_landmark_error(renderer, ict_small.layout.zeros(1), photo.landmarks)
    after = mean_landmark_error(renderer, result.coeffs, photo.landmarks)
    # The fit trusts a detector's points only so far (`landmark_trust`, `untrusted_identity_prior`): it need not
    # meet them exactly, but it must move well towards them.
    assert after < 0.7 * before, f"landmark error {before:.2f} px -> {after:.2f} px"

    assert [stage.name for stage in result.history] == ["rigid", "shape", "full"]
    rigid, shape, full = result.history
    assert len(rigid.terms["total"]) == 100 and len(shape.terms["total"]) == 200 and len(full.terms["total"]) == 8
    assert rigid.terms["landmark"][-1] < rigid.terms["landmark"][0]
    # The full stage runs every term of the hybrid loss and improves the photo match.
    assert {"photometric", "landmark", "perceptual", "regularization", "texture"} <= set(full.terms)
    assert full.terms["photometric"][-1] < full.terms["photometric"][0]
    assert result.seconds > 0 and result.final_losses()["total"] == full.terms["total"][-1]
    assert all(torch.isfinite(getattr(result.coeffs, f.name)).all() for f in dataclasses.fields(result.coeffs))


def test_fit_is_deterministic_and_leaves_the_loss_untouched(photo, renderer, ict_small):
    loss = HybridLoss(LossWeights(perceptual=0.0), ict_small.skin_mask)
    settings = FitSettings(rigid_iterations=5, shape_iterations=5, iterations=2)
    first = fit_coefficients(photo.images, photo.landmarks, photo.skin, renderer, loss, settings)
    second = fit_coefficients(photo.images, photo.landmarks, photo.skin, renderer, loss, settings)
    for f in dataclasses.fields(first.coeffs):
        assert torch.equal(getattr(first.coeffs, f.name), getattr(second.coeffs, f.name)), f.name
        assert not getattr(first.coeffs, f.name).requires_grad
    assert all(not p.requires_grad for p in ict_small.parameters())


def test_images_of_a_batch_are_fitted_independently(photo, renderer, ict_small):
    loss = HybridLoss(LossWeights(perceptual=0.0), ict_small.skin_mask)
    settings = FitSettings(rigid_iterations=20, shape_iterations=20, iterations=0)
    shifted = photo.landmarks + torch.tensor([3.0, -2.0])
    batch = fit_coefficients(
        photo.images.repeat(2, 1, 1, 1),
        torch.cat([photo.landmarks, shifted]),
        photo.skin.repeat(2, 1, 1, 1),
        renderer,
        loss,
        settings,
    )
    alone = fit_coefficients(photo.images, shifted, photo.skin, renderer, loss, settings)
    torch.testing.assert_close(batch.coeffs.index(1).translation, alone.coeffs.translation, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(batch.coeffs.index(1).identity, alone.coeffs.identity, atol=1e-3, rtol=1e-3)
    assert [stage.name for stage in batch.history] == ["rigid", "shape"]


def test_landmark_stage_terms_equal_the_hybrid_loss_terms(photo, renderer, ict_small):
    loss = HybridLoss(LossWeights(perceptual=0.0), ict_small.skin_mask)
    coeffs = ict_small.layout.zeros(1).replace(identity=torch.linspace(-1, 1, ict_small.layout.n_id)[None])
    render = renderer(coeffs)
    full = loss(
        images=photo.images, render=render, target_landmarks=photo.landmarks, skin_attention=photo.skin, coeffs=coeffs
    )
    cheap = landmark_terms(loss, renderer.project_landmarks(coeffs), photo.landmarks, coeffs, float(CROP))
    for name in ("landmark", "regularization", "raw/landmark", "raw/regularization"):
        torch.testing.assert_close(cheap[name], full[name])


def test_bad_settings_and_inputs_name_the_problem(photo, renderer, ict_small):
    with pytest.raises(ValueError, match="iterations"):
        FitSettings(iterations=-1)
    with pytest.raises(ValueError, match="lr_albedo"):
        FitSettings(lr_albedo=0.0)
    loss = HybridLoss(LossWeights(perceptual=0.0), ict_small.skin_mask)
    wrong_size = MeshRenderer(ict_small, PinholeCamera().resized(64, 64))
    with pytest.raises(ValueError, match="resized"):
        fit_coefficients(photo.images, photo.landmarks, photo.skin, wrong_size, loss)
    with pytest.raises(ValueError, match="landmarks"):
        fit_coefficients(photo.images, photo.landmarks[:, :5], photo.skin, renderer, loss)


def test_reference_cache_gives_the_network_s_answers(photo):
    from losses.perceptual import perceptual_loss
    from networks.recognition import build_recognition_net

    net = build_recognition_net("sface")
    cached = ReferenceCache(net)
    five = torch.stack(
        [
            photo.landmarks[:, 36:42].mean(1),
            photo.landmarks[:, 42:48].mean(1),
            photo.landmarks[:, 30],
            photo.landmarks[:, 48],
            photo.landmarks[:, 54],
        ],
        dim=1,
    )
    for shift in (0.0, 0.1):
        render = (photo.images * 0.8 + shift).requires_grad_(True)
        mask = torch.ones_like(photo.skin)
        expected = perceptual_loss(photo.images, render, mask, five, net)
        got = perceptual_loss(photo.images, render, mask, five, cached)
        torch.testing.assert_close(got, expected)
        got.backward()
        assert render.grad is not None and render.grad.abs().sum() > 0
    with torch.no_grad():
        other = torch.rand(1, 3, 112, 112)
        torch.testing.assert_close(cached(other), net(other))


def test_rigid_stage_reaches_a_profile_from_its_yaw_starts(renderer, ict_small):
    """Exact landmarks of the mean face at 70 degrees of yaw: the multi-start rigid stage recovers the pose,
    while one frontal start cannot get there (Adam moves an angle by about its rate per step)."""
    truth = ict_small.layout.zeros(1).replace(angles=torch.tensor([[0.1, 1.22, 0.05]]))
    target = renderer.project_landmarks(truth).detach()
    images, skin = torch.zeros(1, 3, CROP, CROP), torch.zeros(1, 1, CROP, CROP)
    loss = HybridLoss(LossWeights(perceptual=0.0), ict_small.skin_mask)
    several = FitSettings(rigid_iterations=100, shape_iterations=0, iterations=0)
    single = dataclasses.replace(several, rigid_starts_deg=(0.0,))
    found = fit_coefficients(images, target, skin, renderer, loss, several).coeffs
    stuck = fit_coefficients(images, target, skin, renderer, loss, single).coeffs
    assert abs(float(found.angles[0, 1]) - 1.22) < 0.05
    assert abs(float(stuck.angles[0, 1]) - 1.22) > 0.2
    assert mean_landmark_error(renderer, found, target) < 0.5
    with pytest.raises(ValueError, match="rigid_starts_deg"):
        FitSettings(rigid_starts_deg=())


def test_a_shared_identity_uses_every_picture_of_the_person(renderer, ict_small):
    """Three pictures of one identity (frontal, and 45 degrees either way) with noisy landmarks: fitted
    together with one identity they recover it better than the single-picture fits do on average, and
    each picture keeps its own pose and expression."""
    from metrics import vertex_error

    generator = torch.Generator().manual_seed(3)
    identity = torch.randn(1, ict_small.layout.n_id, generator=generator)
    pictures = ict_small.layout.zeros(3).replace(
        identity=identity.expand(3, -1),
        expression=0.5 * torch.randn(3, ict_small.layout.n_exp, generator=generator),
        angles=torch.tensor([[0.05, -0.8, 0.0], [0.0, 0.0, 0.0], [-0.05, 0.8, 0.0]]),
    )
    target = renderer.project_landmarks(pictures).detach() + 1.0 * torch.randn(3, 68, 2, generator=generator)
    images, skin = torch.zeros(3, 3, CROP, CROP), torch.zeros(3, 1, CROP, CROP)
    loss = HybridLoss(LossWeights(perceptual=0.0, regularization=3e-3), ict_small.skin_mask)
    settings = FitSettings(rigid_iterations=60, shape_iterations=150, iterations=0)
    together = fit_coefficients(images, target, skin, renderer, loss, settings, shared=("identity",)).coeffs
    alone = fit_coefficients(images, target, skin, renderer, loss, settings).coeffs

    assert torch.equal(together.identity[0], together.identity[2])
    assert not torch.allclose(together.expression[0], together.expression[2])
    assert float(together.angles[0, 1]) < -0.6 and float(together.angles[2, 1]) > 0.6

    def error(ids):
        zeros = ict_small.layout.zeros(ids.shape[0])
        truth = ict_small.shape(zeros.replace(identity=identity.expand(ids.shape[0], -1)))
        return vertex_error(ict_small.shape(zeros.replace(identity=ids)), truth)

    assert float(error(together.identity[:1])) < float(error(alone.identity).mean())
    with pytest.raises(ValueError, match="shared"):
        fit_coefficients(images, target, skin, renderer, loss, settings, shared=("angles",))


def test_landmark_trust_falls_with_yaw_and_with_landmarks_no_pose_explains(renderer, ict_small):
    """Stage 1's pose decides how far each image's landmarks are believed: exact landmarks of a frontal face keep
    full trust, a profile keeps little, and landmarks that no pose of the mean face explains (a detector that
    is lost) lose trust in proportion to their squared residual."""
    from reconstruction.fit import FitSettings, landmark_trust, landmark_yaw_scale

    assert float(landmark_yaw_scale(torch.tensor([0.0]), 5.0)) == 1.0
    torch.testing.assert_close(landmark_yaw_scale(torch.tensor([1.2]), 0.0), torch.tensor([1.0]))
    profile = float(landmark_yaw_scale(torch.tensor([math.radians(80)]), 5.0))
    assert profile == pytest.approx(1 / (1 + 5 * math.sin(math.radians(80)) ** 4) ** 2)

    coeffs = ict_small.layout.zeros(2)
    params = {f.name: getattr(coeffs, f.name) for f in dataclasses.fields(coeffs)}
    exact = renderer.project_landmarks(coeffs).detach()
    generator = torch.Generator().manual_seed(0)
    lost = exact + 20.0 * torch.randn(exact.shape, generator=generator)
    settings = FitSettings(landmark_noise_px=4.0)
    trust = landmark_trust(params, torch.cat([exact[:1], lost[1:]]), renderer, settings, 2)
    assert float(trust[0]) == 1.0
    residual = (lost[1] - exact[1]).square().sum(-1).mean().sqrt() * 224.0 / CROP
    assert float(trust[1]) == pytest.approx(float((4.0 / residual) ** 2), rel=1e-4)


def test_detector_weights_trust_nose_and_eyes_most():
    from reconstruction.fit import detector_landmark_weights

    weights = detector_landmark_weights()
    assert weights.shape == (68,) and float(weights.max()) == 1.0
    assert float(weights[30]) == 1.0 and float(weights[0]) < 0.3 and float(weights[19]) < float(weights[0])


def test_untrusted_landmarks_keep_the_identity_near_the_mean_face(renderer, ict_small):
    """Landmarks no pose explains, fitted with and without the extra identity prior for untrusted images: the
    prior keeps the identity smaller."""
    generator = torch.Generator().manual_seed(1)
    target = renderer.project_landmarks(ict_small.layout.zeros(1)).detach() + 15.0 * torch.randn(
        1, 68, 2, generator=generator
    )
    images, skin = torch.zeros(1, 3, CROP, CROP), torch.zeros(1, 1, CROP, CROP)
    loss = HybridLoss(LossWeights(perceptual=0.0, regularization=1e-3), ict_small.skin_mask)
    plain = FitSettings(rigid_iterations=30, shape_iterations=60, iterations=0, untrusted_identity_prior=0.0)
    guarded = dataclasses.replace(plain, untrusted_identity_prior=30.0)
    free = fit_coefficients(images, target, skin, renderer, loss, plain).coeffs.identity.norm()
    held = fit_coefficients(images, target, skin, renderer, loss, guarded).coeffs.identity.norm()
    assert float(held) < 0.5 * float(free)
    with pytest.raises(ValueError, match="untrusted_identity_prior"):
        FitSettings(untrusted_identity_prior=-1.0)
    with pytest.raises(ValueError, match="landmark_noise_px"):
        FitSettings(landmark_noise_px=0.0)


def test_identity_prior_terms_move_the_prior_s_centre():
    """The loss's own prior ``w |a|^2`` plus "prior_centre" is ``w |a - c|^2``; "untrusted_prior" is centred there
    too."""
    from reconstruction.fit import identity_prior_terms

    identity = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    centre = torch.tensor([[0.5, -1.0, 0.0], [1.0, 1.0, 1.0]])
    extra = torch.tensor([2.0, 0.0])
    terms = identity_prior_terms(identity, centre, 0.1, extra, FitSettings(identity_prior_centre=1.0))
    own = 0.1 * (identity**2).sum(-1)
    expected_centred = 0.1 * torch.tensor([0.25 + 1.0 + 0.25, 1.0 + 4.0 + 0.0])
    torch.testing.assert_close(own.mean() + terms["prior_centre"], expected_centred.mean())
    torch.testing.assert_close(terms["untrusted_prior"], torch.tensor((2.0 * 1.5 + 0.0) / 2))
    # Centred on the mean face there is no centre term.
    mean_face = FitSettings(identity_prior_centre=0.0)
    assert "prior_centre" not in identity_prior_terms(identity, centre * 0, 0.1, extra, mean_face)
    with pytest.raises(ValueError, match="identity_prior_centre"):
        FitSettings(identity_prior_centre=1.5)


def test_a_centred_prior_keeps_a_good_start(renderer, ict_small):
    """Started from the identity that drew the landmarks, a prior centred on the start keeps it; the mean-face
    prior pulls it back towards zero."""
    truth = ict_small.layout.zeros(1).replace(identity=torch.linspace(-2.0, 2.0, ict_small.layout.n_id)[None])
    target = renderer.project_landmarks(truth).detach()
    images, skin = torch.zeros(1, 3, CROP, CROP), torch.zeros(1, 1, CROP, CROP)
    loss = HybridLoss(LossWeights(perceptual=0.0, regularization=1e-2), ict_small.skin_mask)
    settings = FitSettings(
        rigid_iterations=10, shape_iterations=40, iterations=0, rigid_starts_deg=(0.0,), identity_prior_centre=0.0
    )
    pulled = fit_coefficients(images, target, skin, renderer, loss, settings, init=truth).coeffs.identity
    kept = fit_coefficients(
        images, target, skin, renderer, loss, dataclasses.replace(settings, identity_prior_centre=1.0), init=truth
    ).coeffs.identity
    assert float((kept - truth.identity).norm()) < 0.5 * float((pulled - truth.identity).norm())


def test_jaw_contour_fits_a_turned_face_s_outline(renderer, ict_small):
    """Landmarks drawn with the jaw on the silhouette of a turned face: the contour fit explains them better
    than fixed jaw vertices do."""
    from reconstruction.contour import ContourSettings, jaw_contour
    from reconstruction.fit import project_landmarks

    contour = jaw_contour(ict_small.mean_shape, ict_small.landmark_ids)
    truth = ict_small.layout.zeros(1).replace(angles=torch.tensor([[0.0, math.radians(45.0), 0.0]]))
    target = project_landmarks(renderer, truth, contour).detach()
    assert (target[0, :5] - renderer.project_landmarks(truth)[0, :5]).norm(dim=-1).mean() > 2.0
    images, skin = torch.zeros(1, 3, CROP, CROP), torch.zeros(1, 1, CROP, CROP)
    loss = HybridLoss(LossWeights(perceptual=0.0), ict_small.skin_mask)
    settings = FitSettings(rigid_iterations=40, shape_iterations=40, iterations=0, untrusted_identity_prior=0.0)
    fixed = fit_coefficients(images, target, skin, renderer, loss, settings).coeffs
    marched = fit_coefficients(
        images, target, skin, renderer, loss, dataclasses.replace(settings, jaw_contour=ContourSettings())
    ).coeffs
    error_fixed = float((project_landmarks(renderer, fixed, contour) - target).norm(dim=-1)[0, :17].mean())
    error_marched = float((project_landmarks(renderer, marched, contour) - target).norm(dim=-1)[0, :17].mean())
    assert error_marched < 0.7 * error_fixed
    assert float(marched.identity.norm()) < float(fixed.identity.norm())
