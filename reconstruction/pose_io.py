"""Landmark and pose files of one reconstruction (``landmarks.txt``, ``pose.json``) and the crop/photo/camera
transforms they are made of. Frames, units and pixel conventions: `reconstruction.export`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from face_model.coefficients import Coefficients
from reconstruction.units import UNIT_SCALES
from renderers.camera import PinholeCamera, euler_to_rotation


def invert_affine(transform: np.ndarray) -> np.ndarray:
    """(2, 3) affine ``q = A p + b`` -> (2, 3) inverse ``p = A^-1 (q - b)``."""
    transform = np.asarray(transform, dtype=np.float64)
    linear_inv = np.linalg.inv(transform[:, :2])
    return np.concatenate([linear_inv, -(linear_inv @ transform[:, 2])[:, None]], axis=1)


def crop_to_image(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """(N, 2) crop pixels -> (N, 2) source-image pixels, given the (2, 3) source -> crop alignment."""
    inverse = invert_affine(transform)
    return np.asarray(points, dtype=np.float64) @ inverse[:, :2].T + inverse[:, 2]


def write_landmarks(
    path: str | Path, landmarks: np.ndarray, transform: np.ndarray, detected: np.ndarray | None = None
) -> Path:
    """68 landmarks as text, one row per point: ``x_crop y_crop x_image y_image`` (and, with ``detected``,
    the detector's ``det_x_crop det_y_crop det_x_image det_y_image``); '#' header lines explain."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    columns = [landmarks, crop_to_image(landmarks, transform)]
    names = "x_crop y_crop x_image y_image"
    if detected is not None:
        detected = np.asarray(detected, dtype=np.float64)
        columns += [detected, crop_to_image(detected, transform)]
        names += " det_x_crop det_y_crop det_x_image det_y_image"
    header = (
        "68 iBUG landmarks of the reconstruction (projected model landmarks)"
        + (" and the detector's" if detected is not None else "")
        + ", pixels: x right, y down, "
        "pixel (row i, col j) centred at (j + 0.5, i + 0.5); crop = the aligned crop, image = the source "
        f"photo (through the inverse alignment)\n{names}"
    )
    np.savetxt(path, np.hstack(columns), fmt="%.3f", header=header)
    return Path(path)


def model_to_camera_matrix(
    angles: np.ndarray, translation: np.ndarray, camera_distance: float, scale: float = 1.0
) -> np.ndarray:
    """(4, 4) homogeneous map from model space to OpenCV camera space, both in units ``scale`` x decimetres.

    Posing is ``R v + t`` (`renderers.camera`); the camera sits at ``z = camera_distance`` looking down -z,
    so camera coordinates are ``(x, -y, camera_distance - z)`` of the posed point.
    """
    rotation = euler_to_rotation(torch.as_tensor(np.asarray(angles, np.float64))).numpy()
    flip = np.diag([1.0, -1.0, -1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = flip @ rotation
    matrix[:3, 3] = scale * (flip @ np.asarray(translation, np.float64) + np.array([0.0, 0.0, camera_distance]))
    return matrix


def intrinsics(focal: float, principal_point: tuple[float, float]) -> list[list[float]]:
    cx, cy = principal_point
    return [[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]]


def pose_record(
    coeffs: Coefficients, camera: PinholeCamera, transform: np.ndarray, image_size: tuple[int, int], units: str = "mm"
) -> dict:
    """Head pose, camera and alignment of one reconstruction as a JSON-ready dict (see `write_pose`)."""
    scale = UNIT_SCALES[units]
    angles = coeffs.angles[0].detach().cpu().double().numpy()
    translation = coeffs.translation[0].detach().cpu().double().numpy()
    transform = np.asarray(transform, dtype=np.float64)
    align_scale = float(math.sqrt(abs(np.linalg.det(transform[:, :2]))))
    inverse = invert_affine(transform)
    cx, cy = camera.principal_point
    # The crop is a scale + shift of the photo, so the photo's intrinsics are the crop's mapped back.
    image_focal = camera.focal / align_scale
    image_principal = (inverse[:, :2] @ np.array([cx, cy]) + inverse[:, 2]).tolist()
    degrees = np.degrees(angles)
    return {
        "conventions": (
            "model space: x image-right, y up, z towards the camera; posed = R v + t with R = Rz(roll) Ry(yaw) "
            "Rx(pitch); camera space: OpenCV (x right, y down, z forward), camera at the origin, at camera_distance "
            "from the model origin; pixels: x right, y down, pixel (row i, col j) centred at (j + 0.5, i + 0.5)"
        ),
        "units": units,
        "angles_deg": {"pitch": float(degrees[0]), "yaw": float(degrees[1]), "roll": float(degrees[2])},
        "angles_rad": [float(a) for a in angles],
        "rotation": euler_to_rotation(torch.from_numpy(angles)).numpy().tolist(),
        "translation": (translation * scale).tolist(),
        "translation_dm": translation.tolist(),
        "model_to_camera": model_to_camera_matrix(angles, translation, camera.camera_distance, scale).tolist(),
        "camera": {
            "focal": camera.focal,
            "principal_point": [cx, cy],
            "image_size": list(camera.image_size),
            "camera_distance": camera.camera_distance * scale,
            "camera_distance_dm": camera.camera_distance,
        },
        "intrinsics_crop": intrinsics(camera.focal, (cx, cy)),
        "intrinsics_image": intrinsics(image_focal, tuple(image_principal)),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "alignment": {"image_to_crop": transform.tolist(), "crop_to_image": inverse.tolist(), "scale": align_scale},
    }


def write_pose(
    path: str | Path,
    coeffs: Coefficients,
    camera: PinholeCamera,
    transform: np.ndarray,
    image_size: tuple[int, int],
    units: str = "mm",
) -> Path:
    """pose.json: angles (degrees and radians), rotation, translation (``units`` and decimetres), the
    4x4 model-to-camera matrix (``units``; maps mesh.obj onto mesh_camera.obj), the camera (focal, principal
    point, crop size, camera distance), 3x3 intrinsics for the crop and for the source photo, the source
    image size [H, W] and the alignment transforms."""
    Path(path).write_text(json.dumps(pose_record(coeffs, camera, transform, image_size, units), indent=2) + "\n")
    return Path(path)
