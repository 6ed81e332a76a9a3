"""Smoke tests on the real datasets, for machines that have them (see benchmarks/datasets/paths.py).
Marked ``data`` (deselected by ``make test``); each skips with the loader's note when not configured."""

import numpy as np
import pytest

from benchmarks.datasets import open_bu3dfe, open_facewarehouse, open_micc, open_now

pytestmark = pytest.mark.data


def first(opened):
    if not opened:
        pytest.skip(opened.note)
    return next(iter(opened.dataset))


def assert_face_scan_in_mm(vertices: np.ndarray, faces: np.ndarray) -> None:
    assert vertices.ndim == 2 and vertices.shape[1] == 3 and len(faces) > 0
    assert faces.min() >= 0 and faces.max() < len(vertices)
    assert 80.0 < np.linalg.norm(np.ptp(vertices, axis=0)) < 1000.0


def test_micc():
    sample = first(open_micc())
    assert_face_scan_in_mm(sample.vertices, sample.faces)
    assert sample.videos, f"{sample.subject}: no videos under Video/"


def test_facewarehouse():
    sample = first(open_facewarehouse(poses=(0,)))
    assert_face_scan_in_mm(sample.vertices, sample.faces)
    assert sample.image_path.is_file()


def test_bu3dfe():
    opened = open_bu3dfe()
    sample = first(opened)
    assert len(opened.dataset) == 100
    assert_face_scan_in_mm(sample.vertices, sample.faces)


def test_now():
    sample = first(open_now())
    assert_face_scan_in_mm(sample.scan.vertices, sample.scan.faces)
    # The landmarks are annotated on the scan: each lies close to a scan vertex.
    gaps = np.linalg.norm(sample.scan.landmarks[:, None] - sample.scan.vertices[None], axis=2).min(1)
    assert gaps.max() < 5.0
