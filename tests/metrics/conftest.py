"""Synthetic surfaces for the metric tests: small, asymmetric (so a rotation is observable), in mm."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from geometry.similarity import SimilarityTransform


def grid_mesh(n: int, half_width: float, height) -> tuple[np.ndarray, np.ndarray]:
    """(n*n, 3) vertices of the height field z = height(x, y) on a square grid and (2(n-1)^2, 3)
    counter-clockwise (+z facing) triangles."""
    xs = np.linspace(-half_width, half_width, n)
    x, y = np.meshgrid(xs, xs)
    vertices = np.stack([x.ravel(), y.ravel(), height(x, y).ravel()], axis=1)
    ids = np.arange(n * n).reshape(n, n)
    a, b, c, d = ids[:-1, :-1].ravel(), ids[:-1, 1:].ravel(), ids[1:, :-1].ravel(), ids[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
    return vertices, faces


def face_height(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A face-like, asymmetric relief in mm: a rounded dome, a nose, brows, a tilt."""
    return (
        60.0 * np.exp(-(x**2 + y**2) / (2 * 70.0**2))
        + 25.0 * np.exp(-(x**2 + (y + 5) ** 2) / 200.0)
        + 6.0 * np.exp(-((np.abs(x) - 30) ** 2 + (y - 35) ** 2) / 150.0)
        + 0.05 * x
        + 0.02 * x * y / 10
    )


# Where the 7 NoW landmarks sit on `face_height` (x, y in mm), in NoW's order.
NOW_LANDMARK_XY = np.array(
    [[-45.0, 30.0], [-15.0, 30.0], [15.0, 30.0], [45.0, 30.0], [0.0, -15.0], [-25.0, -45.0], [25.0, -45.0]]
)


def on_face(xy: np.ndarray) -> np.ndarray:
    return np.column_stack([xy, face_height(xy[:, 0], xy[:, 1])])


@pytest.fixture(scope="session")
def face_surface() -> tuple[np.ndarray, np.ndarray]:
    """A 61 x 61 vertex face-like height field, 180 mm wide (the 'prediction')."""
    return grid_mesh(61, 90.0, face_height)


@pytest.fixture(scope="session")
def bumpy_sphere() -> tuple[np.ndarray, np.ndarray]:
    """A closed, asymmetric blob of radius ~50 mm (642 vertices)."""
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    v = np.asarray(sphere.vertices)
    x, y, z = v.T
    radius = 50 * (1 + 0.25 * x * y + 0.15 * np.sin(3 * z) + 0.1 * x**2 - 0.2 * y**3)
    return v * radius[:, None], np.asarray(sphere.faces, dtype=np.int64)


@pytest.fixture
def similarity() -> SimilarityTransform:
    """A moderate known similarity transform (scale 1.3, ~25 degrees, a few cm of translation)."""
    rotation = Rotation.from_euler("xyz", [10.0, -15.0, 20.0], degrees=True).as_matrix()
    return SimilarityTransform(1.3, rotation, np.array([15.0, -30.0, 20.0]))


@pytest.fixture(scope="session")
def face_landmarks() -> np.ndarray:
    """(7, 3) NoW-ordered landmarks lying on `face_height`."""
    return on_face(NOW_LANDMARK_XY)


@pytest.fixture(scope="session")
def make_grid():
    """`grid_mesh` and `face_height`, for tests that need their own sampling of the surfaces."""
    return grid_mesh, face_height
