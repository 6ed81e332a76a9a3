"""Folder of photos -> aligned 224 crops, 68 landmarks, skin masks and a manifest.

`prepare(images_dir, out_dir, config)` walks ``images_dir`` (recursively; hidden files and non-image
extensions are skipped), and for every image writes, under ``out_dir``:

* ``crops/<relative path>.png``      aligned RGB crop, ``crop_size`` square;
* ``landmarks/<relative path>.npy``  (68, 2) float32 landmarks in crop pixels (x right, y down, pixel
                                     ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``, as `renderers.camera`);
* ``skin/<relative path>.png``       uint8 skin posterior x 255 (0 outside the photo);
* ``manifest.jsonl``                 one JSON record per input image, sorted by source path;
* ``prepare_config.json``            the config, template and config hash of the last run.

Output names keep the full source name (``a.jpg`` -> ``a.jpg.png``) so ``a.jpg`` and ``a.png`` never
collide. Every input gets a record, whatever happens to it: ``status`` is one of `STATUSES` and
``reason`` says why it is not ``ok``. Nothing about one bad image stops the run.

A record holds: ``source`` (relative posix path, the key), ``source_path``, ``sha256``, ``size``,
``mtime_ns``, ``config_hash``, ``detector`` (the configured backend), ``status``, ``reason``, ``n_faces``,
``outputs`` (paths relative to ``out_dir``, or null), ``seconds``; once decoded ``image_size`` [H, W] (after
EXIF rotation), ``source_mode`` (PIL mode), ``exif_orientation``, ``grayscale`` (the colour skin model sees no
skin in grey photos); once a face is found ``box`` [left, top, right, bottom], ``detector_score``,
``detected_by`` (the backend or cascade stage that found it: ``dlib-hog`` or ``dlib-mmod`` under the default
``dlib-cascade``) and ``detect_seconds`` (finding faces, every stage tried, without landmarks); once aligned
``transform`` (2x3, source pixels -> crop pixels), ``align_scale``, ``align_residual`` (RMS 5-point
distance to the template, crop pixels; large for rolled or turned heads) and ``valid_fraction`` (share of
the crop inside the photo).

Re-runs are incremental: an image whose content hash (sha256 of its bytes) and preprocessing config hash
match its previous record, and whose outputs still exist, is not processed again (nor are its bytes
re-read when size and mtime are unchanged, unless ``rehash``). The config hash covers every setting that
changes outputs (detector, sizes, thresholds, the template's values, the code version) but not the number
of workers. Records with status ``error`` (unexpected exceptions) are always retried.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import time
import traceback
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from preprocessing.align import AlignedFace, align_face, template_from_face_model
from preprocessing.detect import (
    DEFAULT_DETECTOR,
    DETECTORS,
    Detection,
    FaceDetector,
    detect_largest_face,
    make_detector,
)
from preprocessing.skin import skin_posterior

# Bump when a code change alters outputs, so caches made by older code are not reused.
# 2: records name the detector stage that found the face (``detected_by``) and its time.
PREPROCESSING_VERSION = 2

OK = "ok"
UNREADABLE = "unreadable"
TOO_SMALL = "too_small"
TOO_LARGE = "too_large"
NO_FACE = "no_face"
BAD_LANDMARKS = "bad_landmarks"
ERROR = "error"
STATUSES = (OK, UNREADABLE, TOO_SMALL, TOO_LARGE, NO_FACE, BAD_LANDMARKS, ERROR)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".pnm", ".tif", ".tiff", ".webp", ".gif"}
)
MANIFEST_NAME = "manifest.jsonl"
CONFIG_NAME = "prepare_config.json"
# Below this many images to process, a pool costs more than it saves: starting one (fork server imports,
# a 100 MB dlib model per worker) takes ~2 s, while one process does ~5 photos/s.
MIN_IMAGES_FOR_POOL = 24
# Write the manifest this often during a run, so an interrupted run keeps most of its work cached.
CHECKPOINT_SECONDS = 30.0

_EXIF_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class PrepareConfig:
    """Preprocessing settings. All but ``workers`` enter the config hash that keys the cache."""

    detector: str = DEFAULT_DETECTOR
    """One of `preprocessing.detect.DETECTORS`; the default HOG-then-MMOD cascade covers turned heads."""
    upsample: int | None = None
    """dlib pyramid upsampling steps; None = 1 for dlib-hog and the cascade's HOG stage (finds 40 px faces),
    0 for dlib-mmod (CPU-bound; the cascade's MMOD stage always runs at 0)."""
    crop_size: int = 224
    template_source: str = "ict"
    """Where the (5, 2) template comes from: a face model name for `face_model.load_face_model` ("ict"),
    a face model file (.npz / .mat), or a .npy holding the (5, 2) template in crop pixels."""
    skin_prior: float = 0.5
    workers: int | None = None
    """Worker processes; None = all CPU cores, 0 or 1 = in this process."""
    max_detect_side: int = 1024
    """Photos are shrunk to this longer side for detection (landmarks still use full resolution)."""
    min_detect_side: int = 160
    """Smaller photos are enlarged to this longer side for detection. Thumbnails only: with upsample 1
    dlib's 80 px HOG window already finds 40 px faces, about the smallest that ``max_upscale`` accepts."""
    min_image_side: int = 32
    """Images with a shorter side are ``too_small`` without trying."""
    max_upscale: float = 4.0
    """Faces needing more than this enlargement to reach the template's size are ``too_small``."""
    max_pixels: int = 100_000_000
    """Images with more pixels are ``too_large`` (decompression-bomb guard)."""
    device: str = "cpu"
    """For the fan / insightface backends."""
    weights_dir: str | None = None
    """Weight folder for fan (torch hub checkpoints) / insightface (root holding models/buffalo_l)."""

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"unknown detector {self.detector!r}; choose one of {', '.join(DETECTORS)}")
        if not 0.0 < self.skin_prior < 1.0:
            raise ValueError(f"skin_prior must be in (0, 1), got {self.skin_prior}")
        if self.crop_size < 16:
            raise ValueError(f"crop_size must be >= 16, got {self.crop_size}")
        if self.min_detect_side > self.max_detect_side:
            raise ValueError("min_detect_side must not exceed max_detect_side")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")

    @property
    def resolved_upsample(self) -> int:
        if self.upsample is not None:
            return self.upsample
        return 0 if self.detector == "dlib-mmod" else 1

    @property
    def resolved_workers(self) -> int:
        return (os.cpu_count() or 1) if self.workers is None else self.workers


@dataclass(frozen=True)
class PrepareSummary:
    """What a `prepare` run did.

    status_counts: statuses over all images (processed this run or cached).
    failed_reasons: over the non-ok images, how many per ``reason``.
    """

    n_images: int
    n_processed: int
    n_cached: int
    n_ignored: int
    status_counts: dict[str, int]
    failed_reasons: dict[str, int]
    manifest_path: Path
    config_hash: str
    seconds: float

    @property
    def n_failed(self) -> int:
        return self.n_images - self.status_counts.get(OK, 0)


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """rgb: (H, W, 3) uint8 after EXIF orientation; mode: PIL mode of the file; orientation: EXIF tag (1 = none)."""

    rgb: np.ndarray
    mode: str
    orientation: int
    grayscale: bool


@dataclass(frozen=True, eq=False)
class ImageResult:
    """Outcome for one image; ``aligned`` and ``skin`` ((S, S) float32 posterior) are set when status is ok."""

    status: str
    reason: str | None = None
    image: DecodedImage | None = None
    detection: Detection | None = None
    n_faces: int | None = None
    aligned: AlignedFace | None = None
    skin: np.ndarray | None = None


class ImageRejected(Exception):
    """Raised inside the per-image steps to end processing with a status and a reason."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --------------------------------------------------------------------------------------------- templates


def resolve_template(source: str, crop_size: int = 224) -> np.ndarray:
    """(5, 2) float64 template in crop pixels from a face model name, a face model file, or a .npy."""
    from renderers.camera import PinholeCamera

    path = Path(source).expanduser()
    if path.suffix == ".npy":
        if not path.is_file():
            raise FileNotFoundError(f"template file {path} not found")
        template = np.load(path).astype(np.float64)
        if template.shape != (5, 2):
            raise ValueError(f"template {path} has shape {template.shape}, expected (5, 2) crop pixels")
        return template
    camera = PinholeCamera().resized(crop_size, crop_size)
    if path.suffix in (".npz", ".mat"):
        from face_model.model import FaceModel

        return template_from_face_model(FaceModel.from_file(path), camera)
    from face_model import load_face_model

    # The template needs only the mean face and its landmarks: for ICT, skip the bases (the expression
    # PCA alone is an SVD of seconds); the mean and landmark ids do not depend on these options.
    options = dict(n_id=0, n_exp=1, n_tex=0, expression_basis="blendshapes") if source == "ict" else {}
    return template_from_face_model(load_face_model(source, **options), camera)


def config_hash(config: PrepareConfig, template: np.ndarray) -> str:
    """Short sha256 of everything that changes outputs: config (but workers), template values, code version."""
    settings = asdict(config)
    # Not output-changing: the worker count, the device (float rounding aside), and the template's source
    # name (its values are hashed instead, so an explicit template and an equal named one share a cache).
    for key in ("workers", "device", "template_source"):
        settings.pop(key)
    settings["upsample"] = config.resolved_upsample
    settings["template"] = np.round(np.asarray(template, dtype=np.float64), 4).tolist()
    settings["version"] = PREPROCESSING_VERSION
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ single image


def decode_image(data: bytes, max_pixels: int = PrepareConfig.max_pixels) -> DecodedImage:
    """Bytes -> upright (H, W, 3) uint8 RGB. Raises `ImageRejected` for unreadable or oversized files.

    EXIF orientation is applied (phones store portraits sideways with a rotation tag); grayscale,
    palette, CMYK and 16-bit images become 8-bit RGB; alpha is dropped.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(TOO_LARGE, f"{width}x{height} image exceeds max_pixels {max_pixels}")
            mode = image.mode
            image, orientation = _exif_upright(image)
            rgb = _to_rgb8(image)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as err:
        raise ImageRejected(TOO_LARGE, str(err)) from err
    except UnidentifiedImageError as err:
        raise ImageRejected(UNREADABLE, "not a recognised image format") from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        # PIL reports truncated or corrupt data through these.
        raise ImageRejected(UNREADABLE, f"corrupt image data: {type(err).__name__}: {err}") from err
    grayscale = mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") or bool(
        np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    )
    return DecodedImage(rgb=rgb, mode=mode, orientation=orientation, grayscale=grayscale)


def _exif_upright(image: Image.Image) -> tuple[Image.Image, int]:
    """Apply the EXIF orientation tag; a malformed EXIF block leaves the pixels as stored (orientation 1)."""
    try:
        orientation = int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1) or 1)
        return ImageOps.exif_transpose(image), orientation
    except Exception:  # noqa: BLE001 - PIL raises assorted types on broken EXIF; the pixels may still be fine
        return image, 1


def _to_rgb8(image: Image.Image) -> np.ndarray:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # Wide grey levels: PIL's convert("L") clips rather than rescales, so rescale here.
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if image.mode == "F" and values.max() <= 1.0 else 65535.0 if values.max() > 255 else 255.0
        grey = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def process_image(data: bytes, detector: FaceDetector, template: np.ndarray, config: PrepareConfig) -> ImageResult:
    """Decode, detect, align and classify skin for one image file's bytes. Never raises for bad images
    (`ImageRejected` becomes a status); unexpected errors propagate to the caller, which records them."""
    image = None
    detection = None
    n_faces = None
    try:
        image = decode_image(data, config.max_pixels)
        height, width = image.rgb.shape[:2]
        if min(height, width) < config.min_image_side:
            raise ImageRejected(TOO_SMALL, f"{width}x{height} image is below min_image_side {config.min_image_side}")
        detection, n_faces = detect_largest_face(detector, image.rgb, config.max_detect_side, config.min_detect_side)
        if detection is None:
            raise ImageRejected(NO_FACE, f"no face found by {detector.name}")
        if not np.isfinite(detection.landmarks68).all():
            raise ImageRejected(BAD_LANDMARKS, "landmarks are not finite")
        try:
            aligned = align_face(image.rgb, detection.landmarks68, template, config.crop_size)
        except ValueError as err:
            raise ImageRejected(BAD_LANDMARKS, str(err)) from err
        if aligned.scale > config.max_upscale:
            raise ImageRejected(
                TOO_SMALL,
                f"face needs x{aligned.scale:.1f} enlargement to fill the crop (max_upscale {config.max_upscale})",
            )
    except ImageRejected as rejected:
        return ImageResult(rejected.status, rejected.reason, image, detection, n_faces)
    with _one_torch_thread():
        skin = skin_posterior(aligned.crop, prior=config.skin_prior) * aligned.valid
    return ImageResult(OK, None, image, detection, n_faces, aligned, skin.astype(np.float32))


@contextmanager
def _one_torch_thread():
    """Run torch single-threaded for a moment: a 224x224 posterior takes ~15 ms on one core, but an OpenMP
    team waits at every barrier for its slowest thread, and on a busy machine (or beside pool workers)
    that made it ~20x slower. The caller's thread setting is restored."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------- outputs


def output_paths(relative: str) -> dict[str, str]:
    """Output files of one source, relative to the output folder (posix)."""
    return {
        "crop": f"crops/{relative}.png",
        "landmarks": f"landmarks/{relative}.npy",
        "skin": f"skin/{relative}.png",
    }


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    path.write_bytes(encoded.tobytes())


def _write_outputs(out_dir: Path, relative: str, result: ImageResult) -> dict[str, str]:
    paths = output_paths(relative)
    _write_png(out_dir / paths["crop"], result.aligned.crop)
    landmarks_path = out_dir / paths["landmarks"]
    landmarks_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(landmarks_path, result.aligned.landmarks68.astype(np.float32))
    _write_png(out_dir / paths["skin"], np.round(result.skin * 255.0).astype(np.uint8))
    return paths


def _record(
    relative: str,
    source: Path,
    digest: str,
    stat: os.stat_result | None,
    cfg_hash: str,
    detector_name: str,
    result: ImageResult,
    outputs: dict[str, str] | None,
    seconds: float,
) -> dict:
    record = {
        "source": relative,
        "source_path": str(source),
        "sha256": digest,
        "size": stat.st_size if stat else None,
        "mtime_ns": stat.st_mtime_ns if stat else None,
        "config_hash": cfg_hash,
        "detector": detector_name,
        "status": result.status,
        "reason": result.reason,
        "n_faces": result.n_faces,
        "outputs": outputs,
        "seconds": round(seconds, 4),
    }
    if result.image is not None:
        record.update(
            image_size=list(result.image.rgb.shape[:2]),
            source_mode=result.image.mode,
            exif_orientation=result.image.orientation,
            grayscale=result.image.grayscale,
        )
    if result.detection is not None:
        record.update(
            box=result.detection.box.as_list(),
            detector_score=result.detection.box.score,
            detected_by=result.detection.detector,
            detect_seconds=round(result.detection.seconds, 4),
        )
    if result.aligned is not None:
        record.update(
            transform=result.aligned.transform.tolist(),
            align_scale=result.aligned.scale,
            align_residual=result.aligned.residual,
            valid_fraction=float(result.aligned.valid.mean()),
        )
    return record


# ------------------------------------------------------------------------------------------- the runner


@dataclass(frozen=True)
class _Job:
    relative: str
    source: Path


@dataclass
class _WorkerState:
    detector: FaceDetector
    template: np.ndarray
    config: PrepareConfig
    out_dir: Path
    cfg_hash: str


_STATE: _WorkerState | None = None
_STATE_ERROR: str | None = None


def _build_detector(config: PrepareConfig) -> FaceDetector:
    return make_detector(
        config.detector, upsample=config.resolved_upsample, device=config.device, weights_dir=config.weights_dir
    )


def _init_worker(config: PrepareConfig, template: np.ndarray, out_dir: Path, cfg_hash: str) -> None:
    global _STATE, _STATE_ERROR
    # Each worker is one of N processes: nested thread pools would only oversubscribe the cores.
    cv2.setNumThreads(1)
    import torch

    torch.set_num_threads(1)
    try:
        _STATE = _WorkerState(_build_detector(config), template, config, out_dir, cfg_hash)
    except Exception as err:  # noqa: BLE001 - a raising initializer makes the pool respawn workers forever
        _STATE_ERROR = f"worker could not build the {config.detector} detector: {type(err).__name__}: {err}"


def _run_job(job: _Job) -> dict:
    if _STATE is None:
        return {
            "source": job.relative,
            "source_path": str(job.source),
            "sha256": "",
            "status": ERROR,
            "reason": _STATE_ERROR,
            "n_faces": None,
            "outputs": None,
        }
    return _process_file(job, _STATE)


def _process_file(job: _Job, state: _WorkerState) -> dict:
    """Process one file into its record; every exception becomes a status, so a run never stops."""
    start = time.perf_counter()
    digest, stat = "", None
    try:
        stat = job.source.stat()
        data = job.source.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
    except OSError as err:
        result = ImageResult(UNREADABLE, f"cannot read file: {type(err).__name__}: {err}")
        return _record(
            job.relative,
            job.source,
            digest,
            stat,
            state.cfg_hash,
            state.detector.name,
            result,
            None,
            time.perf_counter() - start,
        )
    try:
        result = process_image(data, state.detector, state.template, state.config)
        outputs = _write_outputs(state.out_dir, job.relative, result) if result.status == OK else None
    except Exception as err:  # noqa: BLE001 - one broken image (or a library bug on it) must not end the run
        last = traceback.extract_tb(err.__traceback__)[-1]
        result = ImageResult(ERROR, f"{type(err).__name__}: {err} ({Path(last.filename).name}:{last.lineno})")
        outputs = None
    return _record(
        job.relative,
        job.source,
        digest,
        stat,
        state.cfg_hash,
        state.detector.name,
        result,
        outputs,
        time.perf_counter() - start,
    )


def list_images(images_dir: Path, exclude: Path | None = None) -> tuple[list[str], int]:
    """Sorted posix paths (relative to ``images_dir``) of image files, and how many other files were skipped."""
    images, ignored = [], 0
    exclude = exclude.resolve() if exclude is not None else None
    for root, dirs, files in os.walk(images_dir):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (root_path / d).resolve() != exclude)
        for name in files:
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                images.append((root_path / name).relative_to(images_dir).as_posix())
            else:
                ignored += 1
    return sorted(images), ignored


def read_manifest(path: Path) -> dict[str, dict]:
    """Records of a manifest.jsonl by source; unparsable lines are dropped (they will be recomputed)."""
    records = {}
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            records[record["source"]] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return records


def _write_manifest(path: Path, records: dict[str, dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(records[key], sort_keys=True) + "\n" for key in sorted(records)))
    os.replace(tmp, path)


def _current_sha256(path: Path, record: dict | None, rehash: bool) -> str | None:
    """The file's sha256, taken from its previous record when size and mtime are unchanged (as make and
    rsync do: re-reading every byte of a large dataset on each run would dominate a cached re-run)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    if (
        not rehash
        and record is not None
        and record.get("sha256")
        and record.get("size") == stat.st_size
        and record.get("mtime_ns") == stat.st_mtime_ns
    ):
        return record["sha256"]
    return _file_sha256(path)


def _file_sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _is_cached(record: dict | None, digest: str | None, cfg_hash: str, out_dir: Path) -> bool:
    if record is None or digest is None or record.get("sha256") != digest or record.get("config_hash") != cfg_hash:
        return False
    # Unexpected errors may be transient (memory, a full disk): retry them.
    if record.get("status") == ERROR:
        return False
    outputs = record.get("outputs") or {}
    return all((out_dir / rel).is_file() for rel in outputs.values())


def prepare(
    images_dir: str | Path,
    out_dir: str | Path,
    config: PrepareConfig = PrepareConfig(),
    template: np.ndarray | None = None,
    progress: bool = True,
    rehash: bool = False,
) -> PrepareSummary:
    """Preprocess every image under ``images_dir`` into ``out_dir`` (see the module docstring).

    template: (5, 2) crop-pixel target positions of the eye centres, nose tip and mouth corners; None
    resolves ``config.template_source``.
    rehash: hash every file's bytes even when its size and mtime match the previous record (catches
    content changed in place with the timestamp preserved).

    Raises FileNotFoundError for a missing ``images_dir``, and the detector's errors (missing package or
    weights) before any image is touched; per-image problems are only recorded.
    """
    start = time.perf_counter()
    images_dir, out_dir = Path(images_dir).expanduser(), Path(out_dir).expanduser()
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder {images_dir} does not exist (or is not a folder)")
    template = (
        resolve_template(config.template_source, config.crop_size)
        if template is None
        else np.asarray(template, dtype=np.float64)
    )
    if template.shape != (5, 2):
        raise ValueError(f"template must be (5, 2) crop pixels, got shape {template.shape}")
    cfg_hash = config_hash(config, template)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST_NAME

    relatives, n_ignored = list_images(images_dir, exclude=out_dir)
    previous = read_manifest(manifest_path)
    records: dict[str, dict] = {}
    todo: list[_Job] = []
    for relative in relatives:
        source = images_dir / relative
        record = previous.get(relative)
        if _is_cached(record, _current_sha256(source, record, rehash), cfg_hash, out_dir):
            records[relative] = previous[relative]
        else:
            todo.append(_Job(relative, source.resolve()))

    (out_dir / CONFIG_NAME).write_text(
        json.dumps(
            {
                "config": asdict(config),
                "template": template.tolist(),
                "config_hash": cfg_hash,
                "version": PREPROCESSING_VERSION,
                "images_dir": str(images_dir.resolve()),
            },
            indent=2,
        )
        + "\n"
    )
    if todo:
        # Built here even when workers do the work, so a missing package or weight file fails up front
        # with its own message instead of inside every worker.
        detector = _build_detector(config)
        workers = min(config.resolved_workers, len(todo))
        bar = tqdm(total=len(todo), desc="prepare", unit="img", disable=not progress)
        last_checkpoint = time.monotonic()

        def collect(record: dict) -> None:
            nonlocal last_checkpoint
            records[record["source"]] = record
            bar.update(1)
            if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                _write_manifest(manifest_path, records)
                last_checkpoint = time.monotonic()

        try:
            if workers <= 1 or len(todo) < MIN_IMAGES_FOR_POOL:
                state = _WorkerState(detector, template, config, out_dir, cfg_hash)
                for job in todo:
                    collect(_process_file(job, state))
            else:
                del detector
                with _pool_context().Pool(
                    workers, initializer=_init_worker, initargs=(config, template, out_dir, cfg_hash)
                ) as pool:
                    for record in pool.imap_unordered(_run_job, todo, chunksize=1):
                        collect(record)
        finally:
            bar.close()
            _write_manifest(manifest_path, records)
    else:
        _write_manifest(manifest_path, records)

    statuses = Counter(record["status"] for record in records.values())
    reasons = Counter(record.get("reason") or record["status"] for record in records.values() if record["status"] != OK)
    return PrepareSummary(
        n_images=len(relatives),
        n_processed=len(todo),
        n_cached=len(relatives) - len(todo),
        n_ignored=n_ignored,
        status_counts={status: statuses[status] for status in STATUSES if statuses[status]},
        failed_reasons=dict(reasons.most_common()),
        manifest_path=manifest_path,
        config_hash=cfg_hash,
        seconds=time.perf_counter() - start,
    )


def _pool_context() -> multiprocessing.context.BaseContext:
    # Not plain fork: a child forked from a parent that has used OpenCV's (or torch's, onnxruntime's)
    # thread pool deadlocks on that pool's dead threads. A fork server is a fresh process that imports
    # this module once, before any pool exists, and forks the workers from there: spawn's safety without
    # paying the torch / OpenCV / dlib imports once per worker.
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")
