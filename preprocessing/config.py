"""Settings of ``face3d prepare`` (`PrepareConfig`) and the hash that keys its cache (`config_hash`)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

import numpy as np

from preprocessing.detect import DEFAULT_DETECTOR, DETECTORS

# Bump when a code change alters outputs, so caches made by older code are not reused.
# 2: records name the detector stage that found the face (``detected_by``) and its time.
PREPROCESSING_VERSION = 2


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
