"""Deep3D-style 5-point alignment of a photo to the fixed 224x224 crop.

Deep3DFaceRecon fits a scale and a translation (its ``POS`` step keeps only those from an affine camera
fit) so that the detected eye centres, nose tip and mouth corners fall on the mean face's projected
5 points, then resizes and crops. The image is never rotated: in-plane roll is left for R-Net's pose to
explain. Here the scale and translation come from a direct 2D least-squares fit to a (5, 2) template in
crop pixels, and the resize + crop is one affine warp.

Coordinates follow `renderers.camera`: x right, y down, origin at the image's top-left corner, pixel
``(row i, col j)`` centred at ``(j + 0.5, i + 0.5)``. In that convention resizing an image by a factor
is a pure scale of coordinates, which keeps the transforms below free of half-pixel terms; OpenCV puts
pixel centres on integers and the conversion happens only inside `warp_image`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from face_model.model import FaceModel, five_points_from_68
from renderers.camera import PinholeCamera, model_to_camera, project

# Below this warp scale, bilinear sampling skips source pixels and aliases; the image is first shrunk
# with an area filter to roughly the crop's scale, and the remaining warp is close to a translation.
ANTIALIAS_BELOW_SCALE = 0.75
CROP_SIZE = 224


@dataclass(frozen=True, eq=False)
class AlignedFace:
    """A face warped onto the template.

    crop:        (S, S, 3) uint8 RGB aligned crop; pixels from outside the photo are 0 (black).
    valid:       (S, S) bool, True where the crop samples the photo (False in the black border).
    landmarks68: (68, 2) float32 landmarks in crop pixels.
    five_points: (5, 2) float32 eye centres, nose tip, mouth corners in crop pixels.
    transform:   (2, 3) float64 source pixels -> crop pixels, ``q = A @ [x, y, 1]`` (scale, 0, tx; 0, scale, ty).
    scale:       crop pixels per source pixel.
    residual:    root-mean-square distance (crop pixels) between the aligned 5 points and the template.
    """

    crop: np.ndarray
    valid: np.ndarray
    landmarks68: np.ndarray
    five_points: np.ndarray
    transform: np.ndarray
    scale: float
    residual: float


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """(68, 2) or (N, 68, 2) iBUG landmarks -> (5, 2) / (N, 5, 2): eye centres, nose tip, mouth corners."""
    return five_points_from_68(torch.from_numpy(np.asarray(landmarks68, dtype=np.float64))).numpy()


def project_five_points(points3d: np.ndarray | torch.Tensor, camera: PinholeCamera) -> np.ndarray:
    """(5, 3) model-space points at identity pose -> (5, 2) float64 pixel positions on ``camera``'s image."""
    points = torch.as_tensor(points3d, dtype=torch.float64).detach().cpu()
    return project(model_to_camera(points, camera.camera_distance), camera).numpy()


def template_from_face_model(face_model: FaceModel, camera: PinholeCamera | None = None) -> np.ndarray:
    """(5, 2) crop-pixel template: the face model's mean 5 points projected at identity pose.

    This is the place where R-Net's fixed camera sees the mean face, so an aligned crop starts R-Net at
    zero pose. ``camera`` defaults to `PinholeCamera()` (224x224); pass ``PinholeCamera().resized(s, s)``
    for another crop size.
    """
    camera = camera or PinholeCamera()
    with torch.no_grad():
        return project_five_points(face_model.five_point_template(), camera)


def fit_scale_translation(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Least-squares ``s, t`` minimising ``sum_i |s * source_i + t - target_i|^2`` (no rotation).

    source, target: (N, 2) points, N >= 2. Returns the scale and the (2,) translation. The closed form is
    the centred cross term over the centred source spread; a negative or zero scale (points collapsed, or
    the face upside down relative to the template) raises ValueError.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2 or source.shape[0] < 2:
        raise ValueError(f"expected two (N, 2) point sets with N >= 2, got {source.shape} and {target.shape}")
    if not (np.isfinite(source).all() and np.isfinite(target).all()):
        raise ValueError("points must be finite")
    src_c = source - source.mean(0)
    dst_c = target - target.mean(0)
    spread = float((src_c**2).sum())
    if spread < 1e-12:
        raise ValueError("source points coincide: no scale can be fitted")
    scale = float((src_c * dst_c).sum()) / spread
    if scale <= 0:
        raise ValueError(f"fitted scale {scale:.3g} is not positive: the points do not match the template's layout")
    return scale, target.mean(0) - scale * source.mean(0)


def scale_translation_matrix(scale: float, translation: np.ndarray) -> np.ndarray:
    """(2, 3) affine matrix of ``q = scale * p + translation``."""
    tx, ty = np.asarray(translation, dtype=np.float64)
    return np.array([[scale, 0.0, tx], [0.0, scale, ty]])


def transform_points(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """(N, 2) points and a (2, 3) affine -> (N, 2) transformed points (same convention in and out)."""
    points = np.asarray(points, dtype=np.float64)
    return points @ transform[:, :2].T + transform[:, 2]


def warp_image(
    image: np.ndarray, transform: np.ndarray, size: tuple[int, int], border_value: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``image`` with a (2, 3) affine (pixel-corner convention) onto a (height, width) canvas.

    Returns the warped image and a bool mask of output pixels whose sample lies inside the image.
    Bilinear interpolation; outside the image the constant ``border_value`` is used rather than replicated
    edges, because replicated streaks look like real texture (often skin-coloured next to a cheek) that the
    photometric loss would try to fit, whereas a black border is non-skin and is also what Deep3D's
    resize-and-crop produces. When the warp shrinks the image by more than `ANTIALIAS_BELOW_SCALE`, the
    needed region is area-resampled first so the crop does not alias.
    """
    height, width = size
    transform = np.asarray(transform, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    if scale < ANTIALIAS_BELOW_SCALE:
        image, transform = _shrink_for_warp(image, transform, scale, (height, width))
    # Our pixel centres are at +0.5; OpenCV's are at integers: q_cv = A p_cv + (b + 0.5 * A 1 - 0.5).
    linear, offset = transform[:, :2], transform[:, 2]
    cv_transform = np.concatenate([linear, (offset + 0.5 * linear.sum(1) - 0.5)[:, None]], axis=1)
    warped = cv2.warpAffine(
        image,
        cv_transform,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(border_value,) * 3,
    )
    inside = np.ones(image.shape[:2], dtype=np.uint8)
    coverage = cv2.warpAffine(
        inside * 255,
        cv_transform,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return warped, coverage >= 128


def _shrink_for_warp(
    image: np.ndarray, transform: np.ndarray, scale: float, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Cut out the source region the warp reads, area-resize it by ~``scale``; return it and the new warp."""
    height, width = size
    inverse = cv2.invertAffineTransform(transform)
    corners = transform_points(np.array([[0, 0], [width, 0], [0, height], [width, height]], float), inverse)
    margin = 2.0 / scale
    x0 = int(np.clip(np.floor(corners[:, 0].min() - margin), 0, image.shape[1]))
    x1 = int(np.clip(np.ceil(corners[:, 0].max() + margin), 0, image.shape[1]))
    y0 = int(np.clip(np.floor(corners[:, 1].min() - margin), 0, image.shape[0]))
    y1 = int(np.clip(np.ceil(corners[:, 1].max() + margin), 0, image.shape[0]))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return image, transform
    region = image[y0:y1, x0:x1]
    new_w = max(1, round((x1 - x0) * scale))
    new_h = max(1, round((y1 - y0) * scale))
    small = cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA)
    # p_small = diag(sx, sy) (p - [x0, y0]); the warp from p_small is transform composed with its inverse.
    sx, sy = new_w / (x1 - x0), new_h / (y1 - y0)
    linear = transform[:, :2] @ np.diag([1.0 / sx, 1.0 / sy])
    offset = transform[:, :2] @ np.array([x0, y0], float) + transform[:, 2]
    return small, np.concatenate([linear, offset[:, None]], axis=1)


def align_face(
    image: np.ndarray, landmarks68: np.ndarray, template: np.ndarray, crop_size: int = CROP_SIZE
) -> AlignedFace:
    """Warp a face onto the 5-point template.

    image: (H, W, 3) uint8 RGB; landmarks68: (68, 2) in its pixels; template: (5, 2) target positions in
    crop pixels for a ``crop_size`` square crop. Raises ValueError for landmarks that admit no alignment.
    """
    template = np.asarray(template, dtype=np.float64)
    if template.shape != (5, 2):
        raise ValueError(f"template must be (5, 2) crop pixels, got shape {template.shape}")
    landmarks68 = np.asarray(landmarks68, dtype=np.float64)
    if landmarks68.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got shape {landmarks68.shape}")
    source5 = five_points(landmarks68)
    scale, translation = fit_scale_translation(source5, template)
    transform = scale_translation_matrix(scale, translation)
    crop, valid = warp_image(image, transform, (crop_size, crop_size))
    aligned5 = transform_points(source5, transform)
    residual = float(np.sqrt(((aligned5 - template) ** 2).sum(1).mean()))
    return AlignedFace(
        crop=crop,
        valid=valid,
        landmarks68=transform_points(landmarks68, transform).astype(np.float32),
        five_points=aligned5.astype(np.float32),
        transform=transform,
        scale=scale,
        residual=residual,
    )
