"""Set outputs people look at: four-panel overlays at 512 px and binary glTF meshes beside OBJ/PLY (the C-Net
aggregation itself is tested in tests/experiments/test_reconstruct_set.py)."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import trimesh

from reconstruction.sets import SetPicture, align_pictures, reconstruct_set
from renderers.camera import PinholeCamera
from renderers.mesh_renderer import MeshRenderer

CROP = 64


class FakeRNet(torch.nn.Module):
    """Each picture's coefficients: the mean face with a small per-picture identity and a turned head."""

    def __init__(self, layout):
        super().__init__()
        self.layout = layout
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, images):
        n = images.shape[0]
        coeffs = self.layout.zeros(n)
        identity = 0.5 * torch.arange(n, dtype=torch.float32)[:, None].expand(n, self.layout.n_id)
        angles = torch.tensor([[0.0, 0.4, 0.0]]).expand(n, 3)
        return SimpleNamespace(coeffs=coeffs.replace(identity=identity * self.scale, angles=angles), features=None)


@pytest.fixture(scope="module")
def module(ict_small):
    renderer = MeshRenderer(ict_small, PinholeCamera().resized(CROP, CROP), backend="torch")
    return SimpleNamespace(rnet=FakeRNet(ict_small.layout), renderer=renderer, face_model=ict_small)


def glb_mesh(path) -> trimesh.Trimesh:
    scene = trimesh.load(path, process=False)
    (mesh,) = scene.geometry.values() if isinstance(scene, trimesh.Scene) else (scene,)
    return mesh


def test_set_writes_glb_meshes_and_four_panel_overlays(module, ict_small, tmp_path):
    rng = np.random.default_rng(0)
    big = rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)
    pictures = [
        SetPicture(
            "a",
            rng.integers(0, 255, (CROP, CROP, 3), dtype=np.uint8),
            np.full((68, 2), 32.0, np.float32),
            detected_by="dlib-mmod",
        ),
        SetPicture("b", rng.integers(0, 255, (CROP, CROP, 3), dtype=np.uint8), None, overlay_input=big),
    ]
    result = reconstruct_set(pictures, module, None, tmp_path, plots=False)
    identity = glb_mesh(result.files["identity_glb"])
    assert len(identity.vertices) == ict_small.n_vertices and len(identity.faces) == len(ict_small.triangles)
    obj = trimesh.load(tmp_path / "identity.obj", process=False)
    np.testing.assert_allclose(identity.vertices, obj.vertices / 1000.0, atol=1e-6)  # mm in OBJ, m in glTF
    for name in "ab":
        picture = glb_mesh(tmp_path / "pictures" / f"{name}.glb")
        assert len(picture.vertices) == ict_small.n_vertices
        np.testing.assert_allclose(
            picture.vertices,
            trimesh.load(tmp_path / "pictures" / f"{name}.obj", process=False).vertices / 1000,
            atol=1e-6,
        )
        overlay = cv2.imread(str(result.files[f"picture_{name}_overlay"]))
        assert overlay.shape == (512, 4 * 512, 3)
    with open(result.files["confidences_csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["detected_by"] for row in rows] == ["dlib-mmod", ""]
    # The given overlay input is the first panel (under its caption); without one the crop is enlarged.
    overlay_b = cv2.cvtColor(cv2.imread(str(tmp_path / "pictures" / "b_overlay.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(overlay_b[100:, :512], big[100:])


def test_aligned_pictures_keep_a_sharp_overlay_input(tmp_path):
    mio = pytest.importorskip("menpo.io")
    from preprocessing.config import PrepareConfig
    from preprocessing.detect import make_detector
    from preprocessing.templates import resolve_template

    data = (mio.data_dir_path() / "lenna.png").read_bytes()
    config = PrepareConfig(workers=0, crop_size=CROP)
    aligned = align_pictures([("lenna", data)], make_detector("dlib-hog"), resolve_template("ict", CROP), config)
    (picture,) = aligned.pictures
    assert picture.crop.shape == (CROP, CROP, 3) and picture.overlay_input.shape == (512, 512, 3)
    assert picture.detected_by == "dlib-hog"
    # The same view: shrunk to the crop's size, the overlay input matches the crop up to resampling.
    shrunk = cv2.resize(picture.overlay_input, (CROP, CROP), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(shrunk - picture.crop).mean() < 6.0
    # And it has the detail the crop lacks.
    enlarged = cv2.resize(picture.crop, (512, 512), interpolation=cv2.INTER_CUBIC)
    assert cv2.Laplacian(picture.overlay_input, cv2.CV_64F).var() > 2 * cv2.Laplacian(enlarged, cv2.CV_64F).var()
