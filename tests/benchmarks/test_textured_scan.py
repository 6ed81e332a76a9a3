"""Textured-scan loading: OBJ with texture coordinates, menpo LJSON landmarks reordered to iBUG-68, units settled from
the eye-centre distance, and the shipped james scan (units, axes, landmarks on the surface)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.datasets.io import DatasetFormatError
from benchmarks.textured_scan import (
    IBUG_GROUPS,
    JAMES_DIR,
    frontal_transform,
    load_textured_scan,
    read_ljson,
    read_textured_obj,
    rotation_angle_deg,
    settle_units,
)
from metrics import point_to_surface


def test_obj_with_texture_coordinates_keeps_uv_ids_apart_from_vertex_ids(tmp_path) -> None:
    (tmp_path / "m.mtl").write_text("newmtl a\nmap_Kd tex.png\n")
    (tmp_path / "m.obj").write_text(
        "mtllib m.mtl\n"
        "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\n"
        "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvt 0.5 0.5\n"
        "vn 0 0 1\n"
        "f 1/1/1 2/2/1 3/3/1 4/4/1\n"  # a quad: two triangles
        "f -4/5 -2/3 -1/4\n"  # negative (relative) ids, no normal
    )
    mesh = read_textured_obj(tmp_path / "m.obj")
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3], [0, 2, 3]])
    np.testing.assert_array_equal(mesh.uv_faces, [[0, 1, 2], [0, 2, 3], [4, 2, 3]])
    assert mesh.uvs.shape == (5, 2) and mesh.vertices.shape == (4, 3)
    assert mesh.texture_path == tmp_path / "tex.png"


def test_obj_without_texture_coordinates_fails_with_the_line(tmp_path) -> None:
    (tmp_path / "m.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nvt 0 0\nf 1 2 3\n")
    with pytest.raises(DatasetFormatError, match=r"m.obj:5: every face corner needs a texture coordinate"):
        read_textured_obj(tmp_path / "m.obj")


def _ljson(points: np.ndarray, labels: list[tuple[str, list[int]]]) -> dict:
    return {
        "version": 3,
        "groups": {
            "LJSON": {
                "landmarks": {"points": points.tolist(), "connectivity": []},
                "labels": [{"label": name, "mask": mask} for name, mask in labels],
            }
        },
    }


def test_ljson_groups_are_reordered_into_ibug_order(tmp_path) -> None:
    ibug = np.arange(68 * 3, dtype=np.float64).reshape(68, 3)
    # menpo3d's james order: jaw, left eye, right eye, left brow, nose, right brow, mouth.
    order = ["jaw", "left_eye", "right_eye", "left_eyebrow", "nose", "right_eyebrow", "mouth"]
    names = {
        "jaw": "chin",
        "left_eye": "leye",
        "right_eye": "reye",
        "left_eyebrow": "leyebrow",
        "nose": "nose",
        "right_eyebrow": "reyebrow",
        "mouth": "mouth",
    }
    stored, labels, start = [], [], 0
    for group in order:
        ids = list(IBUG_GROUPS[group])
        stored.append(ibug[ids])
        labels.append((names[group], list(range(start, start + len(ids)))))
        start += len(ids)
    path = tmp_path / "l.ljson"
    path.write_text(json.dumps(_ljson(np.concatenate(stored), labels)))
    np.testing.assert_array_equal(read_ljson(path), ibug)


def test_ljson_with_a_missing_group_names_it(tmp_path) -> None:
    path = tmp_path / "l.ljson"
    path.write_text(json.dumps(_ljson(np.zeros((17, 3)), [("chin", list(range(17)))])))
    with pytest.raises(DatasetFormatError, match="left_eyebrow"):
        read_ljson(path)


@pytest.mark.parametrize("unit_to_mm", [1.0, 10.0, 1000.0])
def test_units_are_settled_from_the_eye_centres(unit_to_mm: float) -> None:
    landmarks = np.zeros((68, 3))
    landmarks[36:42, 0] = -31.0 / unit_to_mm
    landmarks[42:48, 0] = 33.0 / unit_to_mm
    assert settle_units(landmarks) == unit_to_mm


def test_landmarks_that_are_no_face_fail() -> None:
    landmarks = np.zeros((68, 3))
    landmarks[42:48, 0] = 300.0  # 300 mm, 30 mm or 3 m apart: none is an adult's eye distance
    with pytest.raises(DatasetFormatError, match="eye centres"):
        settle_units(landmarks)


def test_the_shipped_james_scan(ict_small) -> None:
    scan = load_textured_scan(JAMES_DIR)
    assert scan.vertices.shape == (6393, 3) and scan.faces.shape == (12228, 3)
    assert scan.uv_faces.shape == scan.faces.shape and scan.texture.shape == (1600, 2400, 3)
    # Millimetres: eye centres 66.5 mm apart; the outer corners (an adult's are ~90 mm) 95 mm.
    assert scan.unit_to_mm == 1.0
    assert scan.eye_centre_distance() == pytest.approx(66.5, abs=0.1)
    assert np.linalg.norm(scan.landmarks[36] - scan.landmarks[45]) == pytest.approx(95.2, abs=0.1)
    # The landmarks are ON the scan, in iBUG order: the nose tip (30) is the most forward, the chin (8) lowest.
    distances = point_to_surface(scan.landmarks, scan.vertices, scan.faces).distances
    assert np.median(distances) < 0.5
    frontal = frontal_transform(scan, ict_small)
    turned = frontal.apply(scan.landmarks)
    assert turned[:, 2].argmax() == 30 and turned[:, 1].argmin() == 8
    assert turned[36:42, 0].mean() < turned[42:48, 0].mean()  # iBUG's "left" eye on the image left
    assert rotation_angle_deg(frontal.rotation) < 20.0
    # The uvs reach into both photographs of the texture.
    assert scan.uvs[:, 0].min() < 0.4 and scan.uvs[:, 0].max() > 0.6
