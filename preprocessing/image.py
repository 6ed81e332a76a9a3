"""One image file's bytes -> decoded photo, largest face, 68 landmarks, aligned crop and skin posterior, or a
status saying why not (`STATUSES`). No files are written here (`preprocessing.outputs`)."""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from preprocessing.align import AlignedFace, align_face
from preprocessing.config import PrepareConfig
from preprocessing.detect import Detection, FaceDetector, detect_largest_face
from preprocessing.skin import skin_posterior

OK = "ok"
UNREADABLE = "unreadable"
TOO_SMALL = "too_small"
TOO_LARGE = "too_large"
NO_FACE = "no_face"
BAD_LANDMARKS = "bad_landmarks"
ERROR = "error"
STATUSES = (OK, UNREADABLE, TOO_SMALL, TOO_LARGE, NO_FACE, BAD_LANDMARKS, ERROR)

_EXIF_ORIENTATION_TAG = 0x0112


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
