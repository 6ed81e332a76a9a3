"""A textured 3D scan with 68 landmarks: reading it (OBJ with texture coordinates, menpo LJSON landmarks) and
settling its units and axes from the data.

The shipped scan (`JAMES_DIR`, ``benchmarks/assets/james``: menpo3d's ``james``, BSD-3, see its PROVENANCE.md)
is one person's head with the two photographs taken at scan time as its texture. Units and axes are not
assumed: `settle_units` reads the unit from the distance between the eye centres (the mean of each eye's
six contour landmarks, about 63 mm in adults; the OUTER eye corners are some 90 mm apart), and
`frontal_transform` finds the rotation that turns the scan into the face model's frame (x to the image
right, y up, z towards the viewer) by a rigid fit of its landmarks to the model's mean-face landmarks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.ceiling import INNER_LANDMARKS
from benchmarks.datasets.io import DatasetFormatError
from geometry.similarity import SimilarityTransform, fit_similarity
from metrics import DM_TO_MM

JAMES_DIR = Path(__file__).resolve().parent / "assets" / "james"
"""The shipped scan: ``james.obj`` (+ ``.mtl``), ``james.jpg``, ``james.ljson``, LICENSE, PROVENANCE.md."""

EYE_CENTRE_DISTANCE_MM = 63.0
"""Typical adult distance between the eye centres (interpupillary distance, ~55-75 mm)."""
EYE_CENTRE_RANGE_MM = (50.0, 80.0)
UNIT_FACTORS = (1.0, 10.0, 100.0, 1000.0, 0.1)
"""Candidate factors to millimetres: mm, cm, dm, m, and tenths of a millimetre."""

IBUG_GROUPS = {
    "jaw": range(0, 17),
    "left_eyebrow": range(17, 22),
    "right_eyebrow": range(22, 27),
    "nose": range(27, 36),
    "left_eye": range(36, 42),
    "right_eye": range(42, 48),
    "mouth": range(48, 68),
}
"""iBUG-68 point ranges per group; "left" is the IMAGE left (the subject's right), as in the iBUG annotations."""

_GROUP_NAMES = {
    "jaw": "jaw",
    "chin": "jaw",
    "jawline": "jaw",
    "left_eyebrow": "left_eyebrow",
    "leyebrow": "left_eyebrow",
    "leftbrow": "left_eyebrow",
    "right_eyebrow": "right_eyebrow",
    "reyebrow": "right_eyebrow",
    "rightbrow": "right_eyebrow",
    "nose": "nose",
    "left_eye": "left_eye",
    "leye": "left_eye",
    "right_eye": "right_eye",
    "reye": "right_eye",
    "mouth": "mouth",
}
"""Label names of LJSON files (menpo's own and older ones) -> iBUG-68 group."""


@dataclass(frozen=True)
class TexturedMesh:
    """A triangle mesh with texture coordinates, OBJ style.

    vertices:     (V, 3) float64, in the file's units
    faces:        (F, 3) int64 vertex ids (polygons fan-triangulated)
    uvs:          (T, 2) float64 texture coordinates (u right, v up)
    uv_faces:     (F, 3) int64 uv ids of each face's corners
    texture_path: the image the material's ``map_Kd`` names, or None
    """

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    uv_faces: np.ndarray
    texture_path: Path | None


@dataclass(frozen=True)
class TexturedScan:
    """A scan in millimetres, ready for scoring and rendering.

    vertices, faces, uvs, uv_faces: as `TexturedMesh`, vertices scaled to mm (the file's frame)
    texture:      (H, W, 3) uint8 RGB, row 0 at the top
    landmarks:    (68, 3) float64 iBUG-68 landmarks on the scan, mm, the file's frame
    unit_to_mm:   the factor that was applied (`settle_units`)
    name:         a short name for reports
    """

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    uv_faces: np.ndarray
    texture: np.ndarray
    landmarks: np.ndarray
    unit_to_mm: float
    name: str

    @property
    def nose_tip(self) -> np.ndarray:
        """(3,) iBUG landmark 30, the centre of the Genova crop."""
        return self.landmarks[30]

    def eye_centre_distance(self) -> float:
        return _eye_centre_distance(self.landmarks)


def read_textured_obj(path: str | Path) -> TexturedMesh:
    """Wavefront OBJ with ``v``, ``vt`` and ``f v/vt[/vn]`` lines (1-based or negative ids) and the texture
    named by ``map_Kd`` in its ``mtllib``. Raises `DatasetFormatError` naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as error:
        raise DatasetFormatError(f"{path}: cannot read ({error})") from error
    vertices: list[list[float]] = []
    uvs: list[list[float]] = []
    faces: list[list[int]] = []
    uv_faces: list[list[int]] = []
    mtllib = None
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            if parts[0] == "v":
                vertices.append([float(x) for x in parts[1:4]])
                if len(vertices[-1]) != 3:
                    raise ValueError("a vertex needs 3 coordinates")
            elif parts[0] == "vt":
                uvs.append([float(x) for x in parts[1:3]])
                if len(uvs[-1]) != 2:
                    raise ValueError("a texture coordinate needs u and v")
            elif parts[0] == "f":
                refs = [ref.split("/") for ref in parts[1:]]
                if len(refs) < 3:
                    raise ValueError("a face needs at least 3 corners")
                if any(len(ref) < 2 or not ref[1] for ref in refs):
                    raise ValueError("every face corner needs a texture coordinate (f v/vt)")
                ids = [_obj_id(int(ref[0]), len(vertices)) for ref in refs]
                tids = [_obj_id(int(ref[1]), len(uvs)) for ref in refs]
                # Fan triangulation of a (convex) polygon.
                for k in range(1, len(refs) - 1):
                    faces.append([ids[0], ids[k], ids[k + 1]])
                    uv_faces.append([tids[0], tids[k], tids[k + 1]])
            elif parts[0] == "mtllib" and len(parts) > 1:
                mtllib = path.parent / " ".join(parts[1:])
        except ValueError as error:
            raise DatasetFormatError(f"{path}:{number}: {error}") from error
    if not vertices or not faces or not uvs:
        raise DatasetFormatError(
            f"{path}: a textured mesh needs vertices, texture coordinates and faces; found "
            f"{len(vertices)}, {len(uvs)} and {len(faces)}"
        )
    mesh = TexturedMesh(
        np.asarray(vertices, np.float64),
        np.asarray(faces, np.int64),
        np.asarray(uvs, np.float64),
        np.asarray(uv_faces, np.int64),
        _texture_from_mtl(mtllib),
    )
    for name, ids, n in (("vertex", mesh.faces, len(vertices)), ("texture coordinate", mesh.uv_faces, len(uvs))):
        if ids.min() < 0 or ids.max() >= n:
            raise DatasetFormatError(f"{path}: faces refer to {name} ids outside 1..{n}")
    return mesh


def _obj_id(ref: int, count: int) -> int:
    if ref == 0:
        raise ValueError("OBJ ids start at 1")
    return ref - 1 if ref > 0 else count + ref


def _texture_from_mtl(mtllib: Path | None) -> Path | None:
    if mtllib is None or not mtllib.is_file():
        return None
    for line in mtllib.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[0] == "map_Kd":
            return mtllib.parent / parts[-1]
    return None


def read_ljson(path: str | Path) -> np.ndarray:
    """(68, 3) iBUG-68 landmarks from a menpo LJSON file (version 2 or 3), in iBUG order.

    LJSON stores the points with labelled index masks; files differ in the order of the groups (menpo3d's
    james lists the eyes before the brows), so the points are reordered through the label names
    (``chin``/``jaw``, ``leye``/``left_eye``, ..., "left" = image left as in iBUG). A file with exactly 68
    points and no labels is taken to be in iBUG order.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DatasetFormatError(f"{path}: not a readable LJSON file ({error})") from error
    if "groups" in data:  # version 3: one or more named groups
        groups = data["groups"]
        if not isinstance(groups, dict) or not groups:
            raise DatasetFormatError(f"{path}: LJSON 'groups' is empty")
        group = groups.get("LJSON") or next(iter(groups.values()))
    else:  # version 2: a single group at the top level
        group = data
    try:
        points = np.asarray(group["landmarks"]["points"], dtype=np.float64)
        labels = group.get("labels", [])
    except (KeyError, TypeError, ValueError) as error:
        raise DatasetFormatError(f"{path}: LJSON without landmarks/points ({error})") from error
    if points.ndim != 2 or points.shape[1] != 3:
        raise DatasetFormatError(f"{path}: expected 3D landmark points, got shape {points.shape}")
    if not labels:
        if len(points) != 68:
            raise DatasetFormatError(f"{path}: {len(points)} unlabelled points; expected 68 in iBUG order")
        return points
    out = np.full((68, 3), np.nan)
    for label in labels:
        group_name = _GROUP_NAMES.get(str(label.get("label", "")).lower())
        if group_name is None:
            continue
        mask = np.asarray(label["mask"], dtype=np.int64)
        target = IBUG_GROUPS[group_name]
        if len(mask) != len(target) or mask.min() < 0 or mask.max() >= len(points):
            raise DatasetFormatError(
                f"{path}: label {label['label']!r} has {len(mask)} points (ids up to "
                f"{mask.max()}), iBUG's {group_name} has {len(target)}"
            )
        out[list(target)] = points[mask]
    if np.isnan(out).any():
        missing = [name for name, ids in IBUG_GROUPS.items() if np.isnan(out[list(ids)]).any()]
        raise DatasetFormatError(
            f"{path}: no label for the iBUG groups {missing}; expected labels such as {sorted(set(_GROUP_NAMES))}"
        )
    return out


def _eye_centre_distance(landmarks68: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks68[36:42].mean(0) - landmarks68[42:48].mean(0)))


def settle_units(landmarks68: Any, source: str = "scan") -> float:
    """The factor from the landmarks' unit to mm: the candidate of `UNIT_FACTORS` that brings the eye-centre
    distance closest to `EYE_CENTRE_DISTANCE_MM`. Raises `DatasetFormatError` when none brings it into
    `EYE_CENTRE_RANGE_MM` (then the landmarks are not a face's, or not in iBUG order)."""
    distance = _eye_centre_distance(np.asarray(landmarks68, np.float64))
    factor = min(UNIT_FACTORS, key=lambda f: abs(np.log(max(distance * f, 1e-300) / EYE_CENTRE_DISTANCE_MM)))
    low, high = EYE_CENTRE_RANGE_MM
    if not low <= distance * factor <= high:
        raise DatasetFormatError(
            f"{source}: the eye centres are {distance:.4g} units apart; no unit among "
            f"{UNIT_FACTORS} x mm makes that an adult's {low:g}-{high:g} mm"
        )
    return factor


def load_textured_scan(folder: str | Path = JAMES_DIR, name: str | None = None) -> TexturedScan:
    """The scan of ``folder``: its one ``*.obj`` (texture from the material), its one ``*.ljson``; units settled
    from the landmarks (`settle_units`)."""
    from PIL import Image

    folder = Path(folder)
    objs, ljsons = sorted(folder.glob("*.obj")), sorted(folder.glob("*.ljson"))
    if len(objs) != 1 or len(ljsons) != 1:
        raise DatasetFormatError(
            f"{folder}: expected one .obj and one .ljson, found {[p.name for p in objs]} and {[p.name for p in ljsons]}"
        )
    mesh = read_textured_obj(objs[0])
    if mesh.texture_path is None or not mesh.texture_path.is_file():
        raise DatasetFormatError(f"{objs[0]}: no texture image (map_Kd in its mtllib) next to it")
    landmarks = read_ljson(ljsons[0])
    factor = settle_units(landmarks, str(ljsons[0]))
    with Image.open(mesh.texture_path) as image:
        texture = np.asarray(image.convert("RGB"))
    return TexturedScan(
        mesh.vertices * factor,
        mesh.faces,
        mesh.uvs,
        mesh.uv_faces,
        texture,
        landmarks * factor,
        factor,
        name or objs[0].stem,
    )


def model_landmarks_mm(face_model) -> np.ndarray:
    """(68, 3) the face model's mean-face landmarks in mm, model frame."""
    return face_model.mean_shape[face_model.landmark_ids].detach().double().cpu().numpy() * DM_TO_MM


def frontal_transform(scan: TexturedScan, face_model, max_rms_mm: float = 12.0) -> SimilarityTransform:
    """Rigid transform (no scale) taking the scan's frame to the face model's (x image right, y up, z towards
    the viewer), centred like the mean face: the best rigid fit of the scan's inner landmarks
    (`INNER_LANDMARKS`) to the mean face's. Raises ValueError when the fit leaves more than ``max_rms_mm``
    of RMS landmark distance (a mirrored scan, or landmarks in another order)."""
    ids = list(INNER_LANDMARKS)
    reference = model_landmarks_mm(face_model)[ids]
    transform = fit_similarity(scan.landmarks[ids], reference, with_scale=False)
    rms = float(np.sqrt(((transform.apply(scan.landmarks[ids]) - reference) ** 2).sum(1).mean()))
    if rms > max_rms_mm:
        raise ValueError(
            f"the scan's landmarks fit the mean face's only to {rms:.1f} mm RMS after a rigid "
            f"alignment (at most {max_rms_mm:g} expected): is the scan mirrored, or are its landmarks "
            "out of iBUG order?"
        )
    return transform


def rotation_angle_deg(rotation: np.ndarray) -> float:
    """The angle of a (3, 3) rotation in degrees."""
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))))
