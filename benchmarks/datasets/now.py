"""NoW benchmark (Sanyal et al. 2019), validation split: 20 subjects, iPhone photos in four challenges
(multiview_neutral, multiview_expressions, multiview_occlusions, selfie) and one neutral 3D scan per
subject with 7 annotated landmarks. Request it at https://now.is.tue.mpg.de.

Expected layout (``root`` is ``NoW_Dataset/final_release_version``)::

    <root>/
      imagepathsvalidation.txt           one "<subject>/<challenge>/<image>.jpg" per line (the list may
                                         also sit one folder up, in NoW_Dataset/)
      iphone_pictures/<subject>/<challenge>/IMG_0101.jpg
      detected_face/<subject>/<challenge>/IMG_0101.npy      face box: pickled dict left/top/right/bottom
      scans/<subject>/<scan>.obj                             neutral scan, mm
      scans_lmks_onlypp/<subject>/<scan>_picked_points.pp    its 7 landmarks (MeshLab PickPoints)

Subjects look like ``FaMoS_180424_03335_TA``. The 7 landmarks are, in order: outer and inner corner of the
eye on the image left, inner and outer corner of the other eye, the bottom of the nose tip, the two mouth
corners (image left first): `metrics.NOW_LANDMARKS_68` selects them from iBUG-68 landmarks.

Predictions for the official evaluation (github.com/soubhiksanyal/now_evaluation, ``compute_error.py``)
go in ``<predictions>/<subject>/<challenge>/<image stem>.obj`` with the 7 landmarks of that mesh in
``<image stem>.npy`` (a (7, 3) array in the mesh's frame and units): `export_prediction` writes both.
The same protocol runs here with `metrics.now_scan_to_mesh`.

Pitfall - export the UNCROPPED identity mesh: neutral expression (expression coefficients zero), no pose,
the model's whole surface. The scan crop reaches the forehead, cheeks and chin; a tightly cropped
prediction (such as Deep3D's BFM "front" face region) leaves scan points beyond its border, whose
distance to that border is counted as error. This alone has been reported to raise the error by about
half a millimetre (now_evaluation issue #27: ~1.87 mm mean on validation with the cropped BFM mesh against
~1.4 mm reported for the same method), more than separates most methods on the leaderboard.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets.io import DatasetFormatError, read_lines, read_mesh, read_pp, scale_to_mm, to_numpy
from benchmarks.datasets.paths import open_dataset
from geometry.mesh_io import write_obj
from metrics import DM_TO_MM, NOW_LANDMARKS_68

CHALLENGES = ("multiview_neutral", "multiview_expressions", "multiview_occlusions", "selfie")
IMAGE_LIST = "imagepathsvalidation.txt"


@dataclass(frozen=True)
class NoWImage:
    """One validation image (paths only: predictions need no scan).

    relative:   the image list's line, "<subject>/<challenge>/<image>.jpg"
    subject:    e.g. "FaMoS_180424_03335_TA"
    challenge:  one of `CHALLENGES`
    image_path: the photo under iphone_pictures/
    bbox_path:  the detected face box under detected_face/, or None when absent (`read_face_box`)
    """

    relative: str
    subject: str
    challenge: str
    image_path: Path
    bbox_path: Path | None


@dataclass(frozen=True)
class NoWScan:
    """A subject's ground truth.

    vertices:  (V, 3) float64 scan vertices in mm
    faces:     (F, 3) int64
    landmarks: (7, 3) float64 mm, NoW's order
    scan_path, landmarks_path: the files read
    """

    subject: str
    vertices: np.ndarray
    faces: np.ndarray
    landmarks: np.ndarray
    scan_path: Path
    landmarks_path: Path


@dataclass(frozen=True)
class NoWSample:
    """An image with its subject's ground-truth scan."""

    image: NoWImage
    scan: NoWScan


class NoWValidation:
    """Index of the NoW validation split; iterating yields `NoWSample` (scans loaded once per subject).

    challenges: restrict to some of `CHALLENGES` (all by default).
    unit_to_mm: factor from the scan unit to mm (the release is in mm).
    """

    def __init__(self, root: str | Path, *, challenges: Sequence[str] = CHALLENGES, unit_to_mm: float = 1.0) -> None:
        self.root = Path(root)
        self.unit_to_mm = unit_to_mm
        unknown = set(challenges) - set(CHALLENGES)
        if unknown:
            raise ValueError(f"challenges must be among {CHALLENGES}, got {sorted(unknown)}")
        candidates = (self.root / IMAGE_LIST, self.root.parent / IMAGE_LIST)
        list_path = next((path for path in candidates if path.is_file()), None)
        if list_path is None:
            raise DatasetFormatError(
                f"{self.root / IMAGE_LIST}: missing image list (also looked in {self.root.parent})"
            )
        self.image_list = list_path
        images = []
        for number, line in enumerate(read_lines(list_path), start=1):
            parts = Path(line).parts
            if len(parts) < 3:
                raise DatasetFormatError(f"{list_path}:{number}: expected <subject>/<challenge>/<image>, got {line!r}")
            subject, challenge, name = parts[-3:]
            if challenge not in CHALLENGES:
                raise DatasetFormatError(f"{list_path}:{number}: unknown challenge {challenge!r} in {line!r}")
            if challenge not in challenges:
                continue
            relative = f"{subject}/{challenge}/{name}"
            image_path = self.root / "iphone_pictures" / relative
            if not image_path.is_file():
                raise DatasetFormatError(f"{image_path}: listed in {list_path.name} but missing")
            bbox = self.root / "detected_face" / subject / challenge / f"{Path(name).stem}.npy"
            images.append(NoWImage(relative, subject, challenge, image_path, bbox if bbox.is_file() else None))
        if not images:
            raise DatasetFormatError(f"{list_path}: no images (for challenges {list(challenges)})")
        self.images = tuple(images)
        self.subjects = tuple(dict.fromkeys(image.subject for image in images))
        self._scan_files = {subject: self._locate_scan(subject) for subject in self.subjects}
        self._cached: NoWScan | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[NoWSample]:
        for image in self.images:
            yield NoWSample(image, self.scan(image.subject))

    def scan(self, subject: str) -> NoWScan:
        """The subject's scan and landmarks (the last one loaded is kept: the list is grouped by subject)."""
        if self._cached is not None and self._cached.subject == subject:
            return self._cached
        if subject not in self._scan_files:
            raise KeyError(f"no subject {subject!r} in {self.image_list}")
        scan_path, landmarks_path = self._scan_files[subject]
        mesh, factor = scale_to_mm(read_mesh(scan_path), self.unit_to_mm, scan_path)
        points, _ = read_pp(landmarks_path)
        if len(points) != 7:
            raise DatasetFormatError(f"{landmarks_path}: expected NoW's 7 landmarks, found {len(points)}")
        self._cached = NoWScan(subject, mesh.vertices, mesh.faces, points * factor, scan_path, landmarks_path)
        return self._cached

    def _locate_scan(self, subject: str) -> tuple[Path, Path]:
        scans = sorted((self.root / "scans" / subject).glob("*.obj"))
        if not scans:
            raise DatasetFormatError(f"{self.root / 'scans' / subject}: no .obj scan for subject {subject}")
        landmarks = sorted((self.root / "scans_lmks_onlypp" / subject).glob("*.pp"))
        if not landmarks:
            raise DatasetFormatError(
                f"{self.root / 'scans_lmks_onlypp' / subject}: no .pp landmarks for subject {subject}"
            )
        return scans[0], landmarks[0]


open_now = partial(open_dataset, "now", NoWValidation)
"""``open_now(root=None, *, paths_file, environ, **options)``: `NoWValidation` from ``root``, ``FACE3D_DATA_NOW`` or
``paths.yaml`` (`benchmarks.datasets.paths.open_dataset`); ``options`` are `NoWValidation`'s keyword arguments."""


def read_face_box(path: str | Path) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) pixels from a ``detected_face`` .npy (a pickled dict: NoW's format, so
    only open files from the dataset)."""
    path = Path(path)
    try:
        content = np.load(path, allow_pickle=True, encoding="latin1")
        box = content.item() if content.dtype == object else None
        return tuple(float(box[key]) for key in ("left", "top", "right", "bottom"))
    except (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError, pickle.UnpicklingError) as error:
        raise DatasetFormatError(f"{path}: expected a pickled dict with left, top, right, bottom") from error


def prediction_paths(out_root: str | Path, relative: str) -> tuple[Path, Path]:
    """(mesh .obj, landmarks .npy) paths the NoW evaluation looks up for image list line ``relative``."""
    parts = Path(relative).parts
    if len(parts) < 3:
        raise ValueError(f"expected an image list line <subject>/<challenge>/<image>, got {relative!r}")
    subject, challenge, name = parts[-3:]
    folder = Path(out_root) / subject / challenge
    stem = Path(name).stem
    return folder / f"{stem}.obj", folder / f"{stem}.npy"


def export_prediction(
    out_root: str | Path, relative: str, vertices: Any, faces: Any, landmarks_7: Any
) -> tuple[Path, Path]:
    """Write one prediction where the NoW evaluation expects it -> (obj path, npy path).

    vertices: (V, 3) the UNCROPPED identity mesh (see the module docstring), any unit and frame;
    faces: (F, 3) zero-based triangles; landmarks_7: (7, 3) the NoW landmarks of that mesh, same frame.
    """
    landmarks = np.asarray(to_numpy(landmarks_7), dtype=np.float64)
    if landmarks.shape != (7, 3):
        raise ValueError(f"NoW needs (7, 3) landmarks, got {landmarks.shape}")
    obj_path, npy_path = prediction_paths(out_root, relative)
    write_obj(obj_path, vertices, faces)
    np.save(npy_path, landmarks)
    return obj_path, npy_path


def export_model_prediction(
    out_root: str | Path, relative: str, vertices: Any, faces: Any, landmark_ids: Any, unit_scale: float = DM_TO_MM
) -> tuple[Path, Path]:
    """`export_prediction` for a face-model mesh: (V, 3) vertices in model units (decimetres), (68,)
    iBUG landmark vertex ids (``FaceModel.landmark_ids``); writes mm (``unit_scale``) so that NoW's
    metrical variant can read the meshes as "mm" too."""
    vertices = np.asarray(to_numpy(vertices), dtype=np.float64)
    ids = np.asarray(to_numpy(landmark_ids)).astype(np.int64)
    if ids.shape != (68,):
        raise ValueError(f"landmark_ids must be the (68,) iBUG vertex ids, got shape {ids.shape}")
    mesh = vertices * unit_scale
    return export_prediction(out_root, relative, mesh, faces, mesh[ids[list(NOW_LANDMARKS_68)]])


def missing_predictions(out_root: str | Path, relatives: Sequence[str]) -> tuple[str, ...]:
    """Image list lines whose .obj or .npy is not under ``out_root`` (the official script counts them
    as missing and the score is then not comparable)."""
    return tuple(r for r in relatives if not all(p.is_file() for p in prediction_paths(out_root, r)))
