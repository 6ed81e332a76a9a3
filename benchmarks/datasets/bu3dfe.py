"""BU-3DFE (Yin et al. 2006): 100 subjects (56 female F0001-F0056, 44 male M0001-M0044), a neutral
face and 6 expressions at 4 intensities, each a cropped 3D face scan (VRML, mm), its texture and a
frontal 2D image. Request it from Binghamton University (Lijun Yin).

Expected layout (``root`` is the folder holding the subject folders)::

    <root>/
      F0001/
        F0001_NE00WH_F3D.wrl     neutral scan: VRML IndexedFaceSet, mm
        F0001_NE00WH_F3D.bnd     83 landmarks, one "index x y z" line each (optional)
        F0001_NE00WH_F2D.bmp     frontal 2D image (.png/.jpg accepted for converted copies)
        F0001_NE00WH_F3D.bmp     scan texture (unused)
        F0001_AN01WH_F3D.wrl ... expressions AN, DI, FE, HA, SA, SU at levels 01-04 (unused by default)
      ...
      M0044/

File names are ``<subject>_<expression><level><race>_<kind>.<ext>`` with race one of WH, AE, AM, BL, IN,
LA. Protocol (Deng et al. 2019): the 100 neutral frontal faces (expression "NE00"), reconstruction from
the F2D image, ICP with scale and point-to-plane error against the scan
(`metrics.scan_to_mesh`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.datasets.io import DatasetFormatError, read_mesh, read_point_rows, scale_to_mm
from benchmarks.datasets.paths import open_dataset

N_LANDMARKS = 83
_SUBJECT = re.compile(r"^[FM]\d{4}$")
_SCAN = re.compile(r"^(?P<subject>[FM]\d{4})_(?P<expression>[A-Z]{2}\d{2})(?P<race>[A-Z]{2})_F3D\.wrl$", re.IGNORECASE)
_IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class BU3DFESample:
    """One scan of one subject.

    subject:    e.g. "F0001"
    expression: e.g. "NE00" (neutral) or "HA03"
    race:       the file name's race code, e.g. "WH"
    image_path: the frontal 2D image (F2D)
    scan_path:  the F3D .wrl read
    vertices:   (V, 3) float64 in mm
    faces:      (F, 3) int64
    landmarks:  (83, 3) float64 mm from the .bnd file, or None when there is none
    """

    subject: str
    expression: str
    race: str
    image_path: Path
    scan_path: Path
    vertices: np.ndarray
    faces: np.ndarray
    landmarks: np.ndarray | None


class BU3DFE:
    """Index of a BU-3DFE folder; iterating loads one `BU3DFESample` at a time.

    expression: which scan of each subject ("NE00", the neutral face, by default). A subject folder
        without that scan, or a scan without its F2D image, raises `DatasetFormatError`.
    unit_to_mm: factor from the scan unit to mm (the release is in mm).
    """

    def __init__(self, root: str | Path, *, expression: str = "NE00", unit_to_mm: float = 1.0) -> None:
        self.root = Path(root)
        self.unit_to_mm = unit_to_mm
        subjects = sorted(p for p in self.root.iterdir() if p.is_dir() and _SUBJECT.match(p.name))
        if not subjects:
            raise DatasetFormatError(
                f"{self.root}: no F0001..M0044 subject folders (see benchmarks/datasets/"
                "bu3dfe.py for the expected layout)"
            )
        entries = []
        for folder in subjects:
            scans = [
                (p, m)
                for p in sorted(folder.iterdir())
                if (m := _SCAN.match(p.name))
                and m["subject"].upper() == folder.name
                and m["expression"].upper() == expression.upper()
            ]
            if not scans:
                raise DatasetFormatError(f"{folder}: no {folder.name}_{expression}<race>_F3D.wrl scan")
            scan, match = scans[0]
            stem = scan.name[: -len("_F3D.wrl")]
            images = [folder / f"{stem}_F2D{suffix}" for suffix in _IMAGE_SUFFIXES]
            image = next((path for path in images if path.is_file()), None)
            if image is None:
                raise DatasetFormatError(f"{folder / stem}_F2D.bmp: missing 2D image of {scan.name}")
            landmarks = folder / f"{stem}_F3D.bnd"
            entries.append(
                (
                    folder.name,
                    match["expression"].upper(),
                    match["race"].upper(),
                    image,
                    scan,
                    landmarks if landmarks.is_file() else None,
                )
            )
        self.subjects = tuple(p.name for p in subjects)
        self._entries = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[BU3DFESample]:
        for subject, expression, race, image, scan, bnd in self._entries:
            mesh, factor = scale_to_mm(read_mesh(scan), self.unit_to_mm, scan)
            if len(mesh.faces) == 0:
                raise DatasetFormatError(f"{scan}: the scan has no faces")
            landmarks = read_point_rows(bnd, 3, expected=N_LANDMARKS) * factor if bnd is not None else None
            yield BU3DFESample(subject, expression, race, image, scan, mesh.vertices, mesh.faces, landmarks)


open_bu3dfe = partial(open_dataset, "bu3dfe", BU3DFE)
"""``open_bu3dfe(root=None, *, paths_file, environ, **options)``: `BU3DFE` from ``root``, ``FACE3D_DATA_BU3DFE`` or
``paths.yaml`` (`benchmarks.datasets.paths.open_dataset`); ``options`` are `BU3DFE`'s keyword arguments."""
