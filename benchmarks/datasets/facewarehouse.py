"""FaceWarehouse (Cao et al. 2014): 150 subjects ("testers"), each with 20 training poses (expressions):
a Kinect colour image and a mesh fitted to the RGB-D capture, in one topology (11510 vertices, quads).
Request it at http://kunzhou.net/zjugaps/facewarehouse/.

Expected layout (``root`` is the folder holding the ``Tester_N`` folders)::

    <root>/
      Tester_1/
        TrainingPose/
          pose_0.obj ... pose_19.obj      fitted mesh per expression (pose_0 is neutral)
          pose_0.png ... pose_19.png      the colour image (.jpg and .bmp are accepted too)
          pose_0.land ... pose_19.land    2D landmarks: a count line, then "x y" per point (optional)
        Blendshape/                       shape_0.obj ... shape_46.obj (not used here)
      Tester_2/
      ...

Protocol (Tewari et al. 2017, MoFA; followed by Deng et al. 2019): 9 subjects x 20 expressions; the
predicted mesh is aligned to the ground truth and the point-to-point error is measured on a small and a
large face region defined on the *predicted* topology (Deng et al. shared theirs for BFM in
microsoft/Deep3DFaceReconstruction issue #65): `metrics.region_point_to_point` with region
ids from `load_regions`. Pass the 9 testers of that protocol as ``subjects``: the list is not part of the
release and is not guessed here.

Units: the release does not state the mesh unit, so ``unit_to_mm="auto"`` picks the power of ten that
gives a face-sized mesh; pass a number once you know it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.datasets.io import DatasetFormatError, read_counted_points, read_mesh, read_vertex_ids, scale_to_mm
from benchmarks.datasets.paths import open_dataset

N_POSES = 20
_TESTER = re.compile(r"^Tester_(\d+)$")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class FaceWarehouseSample:
    """One subject in one training pose.

    subject:      folder name, e.g. "Tester_1"
    pose:         0..19 (0 is the neutral expression)
    image_path:   the colour image
    mesh_path:    the .obj read
    vertices:     (V, 3) float64 in mm
    faces:        (F, 3) int64 (the quads split in two)
    landmarks_2d: (K, 2) float64 from the .land file, or None when there is none
    unit_to_mm:   factor applied to the file's coordinates
    """

    subject: str
    pose: int
    image_path: Path
    mesh_path: Path
    vertices: np.ndarray
    faces: np.ndarray
    landmarks_2d: np.ndarray | None
    unit_to_mm: float


@dataclass(frozen=True)
class FaceWarehouseRegions:
    """Evaluation regions as vertex ids of the *predicted* mesh topology.

    small: (S,) int64 ids; large: (L,) int64 ids
    """

    small: np.ndarray
    large: np.ndarray


def load_regions(small: str | Path, large: str | Path) -> FaceWarehouseRegions:
    """Read the small and large region vertex ids (.npy, or text of integers)."""
    return FaceWarehouseRegions(read_vertex_ids(small), read_vertex_ids(large))


class FaceWarehouse:
    """Index of a FaceWarehouse folder; iterating loads one `FaceWarehouseSample` at a time.

    subjects: testers to use, as "Tester_7" or 7; all present when None. A requested tester that is
        absent raises `DatasetFormatError`.
    poses: training poses to use (0..19).
    unit_to_mm: factor from the mesh unit to mm, or "auto" (see the module docstring).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        subjects: Sequence[str | int] | None = None,
        poses: Sequence[int] = tuple(range(N_POSES)),
        unit_to_mm: float | str = "auto",
    ) -> None:
        self.root = Path(root)
        self.unit_to_mm = unit_to_mm
        if any(not 0 <= p < N_POSES for p in poses):
            raise ValueError(f"poses must be in 0..{N_POSES - 1}, got {list(poses)}")
        if subjects is None:
            folders = sorted(
                (p for p in self.root.iterdir() if p.is_dir() and _TESTER.match(p.name)),
                key=lambda p: int(_TESTER.match(p.name).group(1)),
            )
            if not folders:
                raise DatasetFormatError(
                    f"{self.root}: no Tester_N folders (see benchmarks/datasets/"
                    "facewarehouse.py for the expected layout)"
                )
        else:
            folders = [self.root / (s if isinstance(s, str) else f"Tester_{s}") for s in subjects]
            for folder in folders:
                if not folder.is_dir():
                    raise DatasetFormatError(f"{folder}: requested subject folder is missing")
        entries = []
        for folder in folders:
            poses_dir = folder / "TrainingPose"
            for pose in poses:
                mesh = poses_dir / f"pose_{pose}.obj"
                if not mesh.is_file():
                    raise DatasetFormatError(f"{mesh}: missing training-pose mesh")
                image = _image(poses_dir, f"pose_{pose}")
                land = poses_dir / f"pose_{pose}.land"
                entries.append((folder.name, pose, image, mesh, land if land.is_file() else None))
        self.subjects = tuple(folder.name for folder in folders)
        self._entries = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[FaceWarehouseSample]:
        for subject, pose, image, mesh_path, land in self._entries:
            mesh, factor = scale_to_mm(read_mesh(mesh_path), self.unit_to_mm, mesh_path)
            if len(mesh.faces) == 0:
                raise DatasetFormatError(f"{mesh_path}: the mesh has no faces")
            landmarks = read_counted_points(land, 2) if land is not None else None
            yield FaceWarehouseSample(subject, pose, image, mesh_path, mesh.vertices, mesh.faces, landmarks, factor)


open_facewarehouse = partial(open_dataset, "facewarehouse", FaceWarehouse)
"""``open_facewarehouse(root=None, *, paths_file, environ, **options)``: `FaceWarehouse` from ``root``, ``FACE3D_DATA_FACEWAREHOUSE`` or
``paths.yaml`` (`benchmarks.datasets.paths.open_dataset`); ``options`` are `FaceWarehouse`'s keyword arguments."""


def _image(folder: Path, stem: str) -> Path:
    for suffix in _IMAGE_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise DatasetFormatError(f"{folder / stem}.png: missing image (looked for {', '.join(_IMAGE_SUFFIXES)})")
