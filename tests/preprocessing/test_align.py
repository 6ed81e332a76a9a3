from __future__ import annotations

import numpy as np
import pytest
import torch

from face_model.model import FaceModel
from preprocessing.align import (
    align_face,
    fit_scale_translation,
    five_points,
    scale_translation_matrix,
    template_from_face_model,
    transform_points,
    warp_image,
)
from renderers.camera import PinholeCamera


def tiny_face_model(landmarks3d: torch.Tensor) -> FaceModel:
    """A FaceModel whose 68 vertices are its landmarks (one zero mode per basis)."""
    n = landmarks3d.shape[0]
    zeros = torch.zeros(1, n, 3)
    return FaceModel(
        landmarks3d,
        zeros,
        zeros,
        torch.full((n, 3), 0.5),
        zeros,
        torch.tensor([[0, 1, 2]]),
        torch.arange(n),
        torch.ones(n, dtype=torch.bool),
    )


def blob_image(height: int, width: int, centre: tuple[float, float], sigma: float) -> np.ndarray:
    """uint8 RGB image of a Gaussian blob centred at ``centre`` (x, y) in our pixel convention."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    blob = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma**2))
    return np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def centroid(image: np.ndarray) -> np.ndarray:
    weights = image[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]] + 0.5
    return np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()


def synthetic_68(five: np.ndarray) -> np.ndarray:
    """68 landmarks whose eye centres, nose tip and mouth corners are exactly ``five``."""
    points = np.zeros((68, 2))
    points[36:42], points[42:48], points[30], points[48], points[54] = five[0], five[1], five[2], five[3], five[4]
    return points


def test_fit_recovers_scale_and_translation():
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 500, size=(5, 2))
    target = 0.37 * source + np.array([12.5, -40.0])
    scale, translation = fit_scale_translation(source, target)
    assert scale == pytest.approx(0.37)
    np.testing.assert_allclose(translation, [12.5, -40.0], atol=1e-9)


def test_fit_rejects_degenerate_points():
    with pytest.raises(ValueError):
        fit_scale_translation(np.ones((5, 2)), np.random.default_rng(0).normal(size=(5, 2)))
    square = np.array([[0, 0], [1, 0], [0, 1], [1, 1.0]])
    with pytest.raises(ValueError, match="not positive"):
        fit_scale_translation(square, -square)  # upside down


def test_template_is_the_projection_at_identity_pose():
    points = torch.randn(68, 3) * 0.5
    model = tiny_face_model(points)
    camera = PinholeCamera()
    template = template_from_face_model(model, camera)
    five3 = five_points(points.numpy().astype(np.float64))
    depth = camera.camera_distance - five3[:, 2]
    expected = np.stack([camera.focal * five3[:, 0] / depth + 112, -camera.focal * five3[:, 1] / depth + 112], 1)
    np.testing.assert_allclose(template, expected, rtol=1e-5)


def test_ict_template_layout(ict_template):
    left_eye, right_eye, nose, mouth_left, mouth_right = ict_template
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert left_eye[1] < nose[1] < mouth_left[1]
    assert (left_eye[0] + right_eye[0]) / 2 == pytest.approx(112, abs=0.5)  # the model is symmetric
    assert ((ict_template > 30) & (ict_template < 194)).all()


def test_synthetic_five_points_land_exactly_on_template(ict_template):
    source5 = (ict_template + np.array([30.0, 10.0])) / 0.6  # a face 1/0.6 times bigger, elsewhere
    image = np.full((600, 600, 3), 90, np.uint8)
    aligned = align_face(image, synthetic_68(source5), ict_template)
    np.testing.assert_allclose(aligned.five_points, ict_template, atol=1e-4)
    assert aligned.scale == pytest.approx(0.6) and aligned.residual < 1e-4
    assert aligned.crop.shape == (224, 224, 3) and aligned.valid.all()


@pytest.mark.parametrize("scale", [1.7, 1.0, 0.3])
def test_warp_moves_image_content_with_the_points(scale):
    """A blob drawn at a point is found at the transformed point (checks the half-pixel bookkeeping and
    the anti-aliasing path, used below 0.75)."""
    centre = (201.3, 143.7)
    image = blob_image(300, 400, centre, sigma=6.0 / min(scale, 1.0))
    transform = scale_translation_matrix(scale, np.array([112.0, 112.0]) - scale * np.array(centre) + [3.2, -7.9])
    warped, valid = warp_image(image, transform, (224, 224))
    np.testing.assert_allclose(centroid(warped), transform_points(np.array([centre]), transform)[0], atol=0.1)
    assert valid[112, 112]


def test_identity_warp_is_exact():
    image = np.random.default_rng(0).integers(0, 256, size=(50, 60, 3), dtype=np.uint8)
    warped, valid = warp_image(image, scale_translation_matrix(1.0, np.zeros(2)), (50, 60))
    np.testing.assert_array_equal(warped, image)
    assert valid.all()


def test_outside_the_photo_is_black_and_invalid():
    image = np.full((100, 100, 3), 200, np.uint8)
    warped, valid = warp_image(image, scale_translation_matrix(1.0, np.array([150.0, 0.0])), (224, 224))
    assert (warped[:, :140] == 0).all() and not valid[:, :140].any()
    assert (warped[10:90, 160:240] == 200).all() and valid[10:90, 160:240].all()


@pytest.mark.parametrize("name", ["takeo.ppm", "lenna.png"])
def test_align_hand_labelled_photos(photo, ict_template, name):
    image, truth = photo(name)
    aligned = align_face(image, truth, ict_template)
    np.testing.assert_allclose(aligned.landmarks68, transform_points(truth, aligned.transform), atol=1e-3)
    # Free translation puts the centroids together exactly; what remains is shape and in-plane rotation
    # (not corrected, as in Deep3D), a few pixels on the upright takeo, ~10 on the tilted lenna.
    np.testing.assert_allclose(aligned.five_points.mean(0), ict_template.mean(0), atol=1e-3)
    assert aligned.residual < (6.0 if name == "takeo.ppm" else 12.0)
    # The two eye centres straddle their template positions by less than a few pixels.
    assert np.abs(aligned.five_points[:2] - ict_template[:2]).max() < (3.0 if name == "takeo.ppm" else 10.0)


def test_other_crop_size(ict_template):
    camera = PinholeCamera().resized(256, 256)
    template = ict_template * 256 / 224  # the resized camera scales the projection
    points = torch.randn(68, 3) * 0.5
    np.testing.assert_allclose(
        template_from_face_model(tiny_face_model(points), camera),
        template_from_face_model(tiny_face_model(points)) * 256 / 224,
        rtol=1e-6,
    )
    aligned = align_face(np.full((300, 300, 3), 50, np.uint8), synthetic_68(template / 1.5), template, crop_size=256)
    assert aligned.crop.shape == (256, 256, 3)
    np.testing.assert_allclose(aligned.five_points, template, atol=1e-4)
