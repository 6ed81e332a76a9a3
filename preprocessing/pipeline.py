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

Modules: `preprocessing.config` (settings, cache key), `preprocessing.templates`, `preprocessing.image` (one
image, statuses), `preprocessing.outputs` (files and manifest); this one walks the folder and runs the workers.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from preprocessing.config import PREPROCESSING_VERSION, PrepareConfig, config_hash
from preprocessing.detect import FaceDetector, make_detector
from preprocessing.image import ERROR, OK, STATUSES, UNREADABLE, ImageResult, process_image
from preprocessing.outputs import (
    CONFIG_NAME,
    MANIFEST_NAME,
    manifest_record,
    read_manifest,
    write_manifest,
    write_outputs,
)
from preprocessing.templates import resolve_template

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".pnm", ".tif", ".tiff", ".webp", ".gif"}
)
# Below this many images to process, a pool costs more than it saves: starting one (fork server imports,
# a 100 MB dlib model per worker) takes ~2 s, while one process does ~5 photos/s.
MIN_IMAGES_FOR_POOL = 24
# Write the manifest this often during a run, so an interrupted run keeps most of its work cached.
CHECKPOINT_SECONDS = 30.0


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
    digest, stat, outputs = "", None, None
    try:
        stat = job.source.stat()
        data = job.source.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
    except OSError as err:
        result = ImageResult(UNREADABLE, f"cannot read file: {type(err).__name__}: {err}")
    else:
        try:
            result = process_image(data, state.detector, state.template, state.config)
            outputs = write_outputs(state.out_dir, job.relative, result) if result.status == OK else None
        except Exception as err:  # noqa: BLE001 - one broken image (or a library bug on it) must not end the run
            last = traceback.extract_tb(err.__traceback__)[-1]
            result = ImageResult(ERROR, f"{type(err).__name__}: {err} ({Path(last.filename).name}:{last.lineno})")
            outputs = None
    return manifest_record(
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
                write_manifest(manifest_path, records)
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
            write_manifest(manifest_path, records)
    else:
        write_manifest(manifest_path, records)

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
