"""MICC Florence 2D/3D Hybrid Face Dataset (Bagdanov et al. 2011): 53 subjects, each with 3dMD scans and
three videos. Request it at https://www.micc.unifi.it/resources/datasets/florence-3d-faces/.

Expected layout (the extracted release; ``root`` is the folder holding the ``subject_XX`` folders)::

    <root>/
      subject_01/
        Model/
          frontal1/            neutral frontal scan (the ground truth used here by default)
            obj/<id>.obj       3dMD mesh in millimetres (+ .mtl and texture, unused)
            vrml/<id>.wrl      the same scan as VRML (read when there is no .obj)
          frontal2/            a second neutral scan (some works report the better of the two)
          ...
        Video/
          Indoor-Cooperative.mjpg   controlled indoor HD video
          PTZ-Indoor.mjpg           semi-controlled indoor PTZ camera
          PTZ-Outdoor.mjpg          unconstrained outdoor PTZ camera
      subject_02/
      ...

Optional, not part of the release:

- ``<any name>.pp`` next to (or below) a scan: MeshLab PickPoints landmarks you annotated on it, e.g. the
  nose tip for the 95 mm crop (`nose_tip` uses the point named like "nose", else the only point);
- ``frames_root/subject_XX/<setting>/*.jpg|png``: frames you extracted from the videos (e.g.
  ``ffmpeg -i Indoor-Cooperative.mjpg frames/subject_01/Indoor-Cooperative/%05d.jpg``).

Protocol (Genova et al. 2018, followed by Deng et al. 2019): reconstruct the frames of one video, take the
average shape of the sequence (or the C-Net aggregate), then `metrics.scan_to_mesh` against the
neutral scan: keep scan points within 95 mm of the nose tip, ICP with isotropic scale, point-to-plane
distance; report mean ± std over subjects per setting. MICC has no official scan landmarks: without an
annotated nose tip pass the prediction's nose-tip vertex as ``mesh_crop_center`` (and for the first
alignment either landmarks or an ``init``, as 3dMD axes need not match the model's).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.datasets.io import DatasetFormatError, read_mesh, read_pp, scale_to_mm
from benchmarks.datasets.paths import open_dataset

SETTINGS = ("Indoor-Cooperative", "PTZ-Indoor", "PTZ-Outdoor")
SCAN_NAMES = ("frontal1", "frontal2")
_SUBJECT = re.compile(r"^subject_(\d+)$")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class MICCSample:
    """One neutral ground-truth scan of a subject, with the subject's videos.

    subject:        folder name, e.g. "subject_01"
    scan_name:      "frontal1" or "frontal2"
    scan_path:      the .obj or .wrl read
    vertices:       (V, 3) float64 scan vertices in mm
    faces:          (F, 3) int64 triangles
    landmarks:      (K, 3) float64 mm from an annotated .pp next to the scan, or None
    landmark_names: (K,) names of those landmarks ("" tuple when None)
    videos:         setting ("Indoor-Cooperative", "PTZ-Indoor", "PTZ-Outdoor") -> video file, when present
    frames:         setting -> sorted frame images under ``frames_root``, when given and present
    """

    subject: str
    scan_name: str
    scan_path: Path
    vertices: np.ndarray
    faces: np.ndarray
    landmarks: np.ndarray | None
    landmark_names: tuple[str, ...]
    videos: Mapping[str, Path]
    frames: Mapping[str, tuple[Path, ...]]

    def nose_tip(self) -> np.ndarray | None:
        """(3,) annotated nose tip in mm: the landmark whose name contains "nose" (or the only landmark)."""
        if self.landmarks is None:
            return None
        for name, point in zip(self.landmark_names, self.landmarks):
            if "nose" in name.lower():
                return point
        return self.landmarks[0] if len(self.landmarks) == 1 else None


@dataclass(frozen=True)
class _Entry:
    subject: str
    scan_name: str
    scan_path: Path
    landmarks_path: Path | None
    videos: Mapping[str, Path]
    frames: Mapping[str, tuple[Path, ...]]


class MICCFlorence:
    """Index of a MICC Florence folder; iterating loads one `MICCSample` at a time (scans are large).

    scan_names: which neutral scans to yield per subject ("frontal1" by default). A subject without a
        requested scan folder is listed in ``missing`` rather than failing.
    frames_root: optional folder of extracted frames (see the module docstring).
    unit_to_mm: factor from the scan unit to mm (3dMD scans are in mm).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        scan_names: Sequence[str] = ("frontal1",),
        frames_root: str | Path | None = None,
        unit_to_mm: float = 1.0,
    ) -> None:
        self.root = Path(root)
        self.unit_to_mm = unit_to_mm
        unknown = set(scan_names) - set(SCAN_NAMES)
        if unknown:
            raise ValueError(f"scan_names must be among {SCAN_NAMES}, got {sorted(unknown)}")
        subjects = sorted(
            (p for p in self.root.iterdir() if p.is_dir() and _SUBJECT.match(p.name)),
            key=lambda p: int(_SUBJECT.match(p.name).group(1)),
        )
        if not subjects:
            raise DatasetFormatError(
                f"{self.root}: no subject_XX folders (expected the extracted MICC "
                "release, see benchmarks/datasets/micc.py)"
            )
        entries, missing = [], []
        for folder in subjects:
            videos = _videos(folder / "Video")
            frames = _frames(Path(frames_root) / folder.name) if frames_root is not None else {}
            for scan_name in scan_names:
                scan_folder = folder / "Model" / scan_name
                if not scan_folder.is_dir():
                    missing.append(f"{folder.name}/Model/{scan_name}")
                    continue
                scan = _scan_file(scan_folder)
                landmarks = sorted(scan_folder.rglob("*.pp"))
                entries.append(
                    _Entry(folder.name, scan_name, scan, landmarks[0] if landmarks else None, videos, frames)
                )
        if not entries:
            raise DatasetFormatError(f"{self.root}: none of the subject folders has Model/{'|'.join(scan_names)}")
        self.subjects = tuple(p.name for p in subjects)
        self.missing = tuple(missing)
        self._entries = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[MICCSample]:
        return (self._load(entry) for entry in self._entries)

    def _load(self, entry: _Entry) -> MICCSample:
        mesh, factor = scale_to_mm(read_mesh(entry.scan_path), self.unit_to_mm, entry.scan_path)
        if len(mesh.faces) == 0:
            raise DatasetFormatError(f"{entry.scan_path}: the scan has no faces")
        landmarks, names = None, ()
        if entry.landmarks_path is not None:
            points, names = read_pp(entry.landmarks_path)
            landmarks = points * factor
        return MICCSample(
            entry.subject,
            entry.scan_name,
            entry.scan_path,
            mesh.vertices,
            mesh.faces,
            landmarks,
            names,
            entry.videos,
            entry.frames,
        )


open_micc = partial(open_dataset, "micc", MICCFlorence)
"""``open_micc(root=None, *, paths_file, environ, **options)``: `MICCFlorence` from ``root``, ``FACE3D_DATA_MICC`` or
``paths.yaml`` (`benchmarks.datasets.paths.open_dataset`); ``options`` are `MICCFlorence`'s keyword arguments."""


def _scan_file(folder: Path) -> Path:
    for pattern in ("*.obj", "*.OBJ", "*.wrl", "*.WRL", "*.vrml"):
        found = sorted(folder.rglob(pattern))
        if found:
            return found[0]
    raise DatasetFormatError(f"{folder}: no .obj or .wrl scan inside")


def _videos(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    videos = {}
    for setting in SETTINGS:
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.stem == setting)
        if found:
            videos[setting] = found[0]
    return videos


def _frames(folder: Path) -> dict[str, tuple[Path, ...]]:
    frames = {}
    for setting in SETTINGS:
        images = (
            tuple(sorted(p for p in (folder / setting).glob("*") if p.suffix.lower() in _IMAGE_SUFFIXES))
            if (folder / setting).is_dir()
            else ()
        )
        if images:
            frames[setting] = images
    return frames
