import math

import pytest
import torch

from renderers.camera import PinholeCamera, model_to_camera, project
from renderers.mesh_renderer import MeshRenderer


@pytest.fixture(scope="module")
def renderer(ict_small):
    return MeshRenderer(ict_small, PinholeCamera().resized(112, 112), backend="torch")


def test_mean_face_covers_the_centre_and_landmarks_match_the_template(renderer, ict_small):
    coeffs = ict_small.layout.zeros(1)
    out = renderer(coeffs)
    h, w = renderer.camera.image_size
    assert out.image.shape == (1, 3, h, w) and out.mask.shape == (1, 1, h, w)
    assert float(out.mask[0, 0, h // 2, w // 2]) == 1.0 and float(out.mask[0, 0, 0, 0]) == 0.0
    # Background stays black; the lit face is not.
    assert float(out.image[0, :, 0, 0].abs().sum()) == 0.0 and float(out.image[0, :, h // 2, w // 2].min()) > 0.1
    template = project(model_to_camera(ict_small.mean_shape[ict_small.landmark_ids][None], 10.0), renderer.camera)
    torch.testing.assert_close(out.landmarks, template)
    torch.testing.assert_close(renderer.project_landmarks(coeffs), out.landmarks)


def test_translation_and_yaw_move_the_face(renderer, ict_small):
    base = ict_small.layout.zeros(3)
    coeffs = base.replace(
        translation=torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        angles=torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 30 * math.pi / 180, 0.0]]),
    )
    out = renderer(coeffs)
    xs = torch.arange(out.mask.shape[-1], dtype=torch.float32)
    centroid_x = (out.mask[:, 0].sum(1) * xs).sum(-1) / out.mask[:, 0].sum((1, 2))
    assert float(centroid_x[1]) > float(centroid_x[0]) + 5
    nose_x = out.landmarks[:, 30, 0]
    assert float(nose_x[2]) > float(nose_x[0]) + 3, "positive yaw turns the nose to image right"


def test_light_from_the_image_left_brightens_the_left_cheek(renderer, ict_small):
    lighting = torch.zeros(1, 27)
    # Band 3 is -x: a positive coefficient lights normals pointing to -x (image left).
    lighting[0, [3, 12, 21]] = 0.5
    out = renderer(ict_small.layout.zeros(1).replace(lighting=lighting))
    lm = out.landmarks[0].round().long()
    left, right = lm[2], lm[14]
    img = out.image[0].mean(0)
    l_val = img[left[1], left[0] + 4]
    r_val = img[right[1], right[0] - 4]
    assert float(l_val) > float(r_val)


def test_gradients_reach_every_coefficient_group(renderer, ict_small):
    coeffs = ict_small.layout.zeros(2)
    params = {
        k: getattr(coeffs, k).clone().requires_grad_()
        for k in ("identity", "expression", "albedo", "angles", "lighting", "translation")
    }
    out = renderer(coeffs.replace(**params))
    loss = (out.image * torch.linspace(0, 1, out.image.shape[-1])).sum() + out.landmarks.sum()
    loss.backward()
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and float(p.grad.abs().sum()) > 0, name


def test_rendering_is_deterministic(renderer, ict_small):
    from face_model.sampling import sample_coefficients

    coeffs = sample_coefficients(ict_small.layout, 2, generator=torch.Generator().manual_seed(3))
    a, b = renderer(coeffs), renderer(coeffs)
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)


def test_unknown_backend_is_rejected(ict_small):
    with pytest.raises(ValueError, match="backend"):
        MeshRenderer(ict_small, backend="opengl")
