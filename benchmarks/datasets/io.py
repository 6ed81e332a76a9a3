"""Readers for the file formats of the evaluation datasets (mesh files are written by `geometry.mesh_io`).

Every reader raises `DatasetFormatError` naming the file when it cannot make sense of it. Meshes come
back as `Mesh` (float64 vertices, int64 triangles; polygons are fan-triangulated), landmarks as float64
arrays. No unit conversion happens here: the dataset modules apply their documented unit factor.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class DatasetFormatError(ValueError):
    """A dataset file or folder is present but not in the expected format."""


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh read from disk.

    vertices: (V, 3) float64
    faces:    (F, 3) int64, zero-based; (0, 3) for a point cloud
    """

    vertices: np.ndarray
    faces: np.ndarray


# Bounding-box diagonal of a face or head scan in millimetres (a tight face crop is ~150 mm, a head with
# shoulders ~600 mm): anything outside means the unit factor is wrong.
FACE_DIAGONAL_MM = (50.0, 1500.0)


def scale_to_mm(mesh: Mesh, unit_to_mm: float | str, path: str | Path) -> tuple[Mesh, float]:
    """Scale a mesh to millimetres -> (mesh in mm, factor used).

    unit_to_mm: the factor from the file's unit (1.0 for mm), or "auto" to pick 1, 10, 100 or 1000
    (mm, cm, dm, m) as the one bringing the bounding-box diagonal closest to a face's ~250 mm. Raises
    `DatasetFormatError` when the scaled diagonal is outside `FACE_DIAGONAL_MM`, so that a wrong unit
    cannot silently scale every error.
    """
    diagonal = float(np.linalg.norm(mesh.vertices.max(0) - mesh.vertices.min(0)))
    if unit_to_mm == "auto":
        factors = (1.0, 10.0, 100.0, 1000.0)
        factor = min(factors, key=lambda f: abs(np.log(max(diagonal * f, 1e-300) / 250.0)))
    elif isinstance(unit_to_mm, (int, float)) and unit_to_mm > 0:
        factor = float(unit_to_mm)
    else:
        raise ValueError(f"unit_to_mm must be a positive number or 'auto', got {unit_to_mm!r}")
    low, high = FACE_DIAGONAL_MM
    if not low <= diagonal * factor <= high:
        raise DatasetFormatError(
            f"{path}: bounding-box diagonal is {diagonal * factor:.4g} mm after scaling "
            f"by {factor:g}, not a face in millimetres: pass the right unit_to_mm"
        )
    return Mesh(mesh.vertices * factor, mesh.faces), factor


def read_mesh(path: str | Path) -> Mesh:
    """Read an ``.obj`` or VRML ``.wrl`` mesh, by suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".obj":
        return read_obj(path)
    if suffix in (".wrl", ".vrml"):
        return read_wrl(path)
    raise DatasetFormatError(f"{path}: unsupported mesh format {suffix!r} (expected .obj or .wrl)")


def read_obj(path: str | Path) -> Mesh:
    """Wavefront OBJ: ``v x y z [r g b]`` vertices and ``f`` polygons (``i``, ``i/t``, ``i//n``,
    ``i/t/n`` references, 1-based or negative relative); everything else is ignored."""
    path = Path(path)
    lines = _read_text(path).splitlines()
    vertex_lines = [line for line in lines if line.startswith("v ")]
    face_lines = [line for line in lines if line.startswith("f ")]
    if not vertex_lines:
        raise DatasetFormatError(f"{path}: no vertices")
    try:
        fast = _obj_fast(vertex_lines, face_lines)
        if fast is not None:
            return Mesh(fast[0], _triangulate(fast[1], len(fast[0]), path))
        return _obj_general(lines, path)
    except DatasetFormatError:
        raise
    except ValueError as error:
        raise DatasetFormatError(f"{path}: not a valid OBJ file ({error})") from error


def _obj_fast(vertex_lines: list[str], face_lines: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Vectorised parse of the usual scan file: every vertex line with the same number of values, every
    face with the same number of positive references. None when the file is not like that."""
    vertex_tokens = " ".join(line[2:] for line in vertex_lines).split()
    width = len(vertex_lines[0].split()) - 1
    if width < 3 or len(vertex_tokens) != width * len(vertex_lines):
        return None
    vertices = np.array(vertex_tokens, dtype=np.float64).reshape(len(vertex_lines), width)[:, :3]
    if not face_lines:
        return vertices, np.zeros((0, 3), dtype=np.int64)
    corners = len(face_lines[0].split()) - 1
    # Only the vertex id matters: drop the "/texture/normal" parts of every reference.
    refs = _OBJ_REFERENCE_TAIL.sub("", " ".join(line[2:] for line in face_lines)).split()
    if corners < 3 or len(refs) != corners * len(face_lines):
        return None
    ids = np.array(refs, dtype=np.int64).reshape(len(face_lines), corners)
    if ids.min() <= 0:  # relative (negative) ids depend on each line's position: general path
        return None
    return vertices, ids - 1


_OBJ_REFERENCE_TAIL = re.compile(r"/\S*")


def _obj_general(lines: list[str], path: Path) -> Mesh:
    vertices: list[list[str]] = []
    polygons: list[list[int]] = []
    for number, line in enumerate(lines, start=1):
        if line.startswith("v "):
            values = line.split()
            if len(values) < 4:
                raise DatasetFormatError(f"{path}:{number}: vertex with fewer than 3 coordinates")
            vertices.append(values[1:4])
        elif line.startswith("f "):
            refs = [int(token.split("/", 1)[0]) for token in line.split()[1:]]
            if len(refs) < 3:
                raise DatasetFormatError(f"{path}:{number}: face with fewer than 3 vertices")
            n = len(vertices)
            # OBJ ids are 1-based; negative ids count back from the latest vertex.
            polygons.append([r - 1 if r > 0 else n + r for r in refs])
    points = np.array(vertices, dtype=np.float64).reshape(-1, 3)
    return Mesh(points, _triangulate(polygons, len(points), path))


# VRML: the first "[" list after a (non-texture) Coordinate/Coordinate3 node's "point" field, and after
# each "coordIndex" field (not texCoordIndex/normalIndex: the look-behind rejects a preceding letter).
_VRML_COORDS = re.compile(r"(?<![A-Za-z])Coordinate3?\s*\{\s*point\s*\[([^\]]*)\]")
_VRML_INDEX = re.compile(r"(?<![A-Za-z])coordIndex\s*\[([^\]]*)\]")
_VRML_COMMENT = re.compile(r'"(?:[^"\\]|\\.)*"|#[^\n]*')


def read_wrl(path: str | Path) -> Mesh:
    """VRML 1.0/2.0 ``IndexedFaceSet`` geometry: the ``point`` lists of ``Coordinate`` (2.0) or
    ``Coordinate3`` (1.0) nodes and the ``coordIndex`` lists (polygons ended by -1). Several shapes are
    concatenated; the k-th coordinate list pairs with the k-th index list. A file with coordinates
    but no index list is returned as a point cloud (0 faces)."""
    path = Path(path)
    text = _VRML_COMMENT.sub(lambda m: m.group(0) if m.group(0).startswith('"') else " ", _read_text(path))
    coordinate_blocks = _VRML_COORDS.findall(text)
    index_blocks = _VRML_INDEX.findall(text)
    if not coordinate_blocks:
        raise DatasetFormatError(f"{path}: no 'Coordinate {{ point [...] }}' node: not an IndexedFaceSet VRML file")
    if index_blocks and len(index_blocks) != len(coordinate_blocks):
        raise DatasetFormatError(
            f"{path}: {len(coordinate_blocks)} coordinate lists but {len(index_blocks)} "
            "coordIndex lists (shared DEF/USE coordinates are not supported)"
        )
    all_points, all_faces, offset = [], [], 0
    for k, block in enumerate(coordinate_blocks):
        try:
            values = np.array(block.replace(",", " ").split(), dtype=np.float64)
        except ValueError as error:
            raise DatasetFormatError(f"{path}: non-numeric coordinate in point list {k} ({error})") from error
        if values.size % 3:
            raise DatasetFormatError(f"{path}: point list {k} has {values.size} numbers, not a multiple of 3")
        points = values.reshape(-1, 3)
        if index_blocks:
            try:
                ids = np.array(index_blocks[k].replace(",", " ").split(), dtype=np.int64)
            except ValueError as error:
                raise DatasetFormatError(f"{path}: non-integer in coordIndex list {k} ({error})") from error
            all_faces.append(_triangulate(_vrml_polygons(ids), len(points), path) + offset)
        all_points.append(points)
        offset += len(points)
    vertices = np.concatenate(all_points)
    if len(vertices) == 0:
        raise DatasetFormatError(f"{path}: no vertices")
    faces = np.concatenate(all_faces) if all_faces else np.zeros((0, 3), dtype=np.int64)
    return Mesh(vertices, faces)


def _vrml_polygons(ids: np.ndarray) -> list[list[int]] | np.ndarray:
    """coordIndex list -> polygons: a (P, K) array when every polygon has K corners and ends with -1
    (the usual all-triangle scan), else a list of lists."""
    ends = np.flatnonzero(ids < 0)
    if len(ends) and ends[0] >= 3 and len(ids) % (ends[0] + 1) == 0:
        width = ends[0] + 1
        if np.array_equal(ends, np.arange(width - 1, len(ids), width)):
            return ids.reshape(-1, width)[:, :-1]
    polygons = [chunk.tolist() for chunk in np.split(ids, ends) if len(chunk)]
    # np.split keeps each -1 at the start of the next chunk: drop it (and skip empty polygons).
    return [p[1:] if p[0] < 0 else p for p in polygons if len(p) > (1 if p[0] < 0 else 0)]


def read_pp(path: str | Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """MeshLab "PickedPoints" ``.pp`` XML -> ((K, 3) float64 points in file order, their names).

    ``<point x= y= z= name= active=/>`` children of ``<PickedPoints>``; the DOCTYPE and
    ``<DocumentData>`` header are ignored. Points marked ``active="0"`` are still returned (their
    position is what was annotated)."""
    path = Path(path)
    try:
        root = ElementTree.fromstring(_read_text(path))
    except ElementTree.ParseError as error:
        raise DatasetFormatError(f"{path}: not a valid MeshLab .pp XML file ({error})") from error
    if root.tag != "PickedPoints":
        raise DatasetFormatError(f"{path}: root element is <{root.tag}>, expected <PickedPoints>")
    points, names = [], []
    for k, element in enumerate(root.iter("point")):
        try:
            points.append([float(element.attrib[axis]) for axis in ("x", "y", "z")])
        except (KeyError, ValueError) as error:
            raise DatasetFormatError(f"{path}: point {k} lacks a numeric x, y or z attribute") from error
        names.append(element.attrib.get("name", str(k)))
    if not points:
        raise DatasetFormatError(f"{path}: no <point> elements")
    return np.array(points, dtype=np.float64), tuple(names)


def read_point_rows(path: str | Path, columns: int, expected: int | None = None) -> np.ndarray:
    """Whitespace/comma separated numeric rows; the last ``columns`` numbers of each non-empty line are
    kept (BU-3DFE ``.bnd`` lines are "index x y z"). Returns (K, columns) float64."""
    path = Path(path)
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        tokens = line.replace(",", " ").split()
        if not tokens:
            continue
        try:
            values = [float(t) for t in tokens]
        except ValueError as error:
            raise DatasetFormatError(f"{path}:{number}: non-numeric value ({error})") from error
        if len(values) < columns:
            raise DatasetFormatError(f"{path}:{number}: expected at least {columns} numbers, got {len(values)}")
        rows.append(values[-columns:])
    if expected is not None and len(rows) != expected:
        raise DatasetFormatError(f"{path}: expected {expected} points, found {len(rows)}")
    if not rows:
        raise DatasetFormatError(f"{path}: no points")
    return np.array(rows, dtype=np.float64)


def read_counted_points(path: str | Path, columns: int) -> np.ndarray:
    """A point count on the first line, then that many rows of ``columns`` numbers (FaceWarehouse
    ``.land``). Returns (K, columns) float64."""
    path = Path(path)
    tokens = _read_text(path).split()
    try:
        count = int(tokens[0])
        values = np.array(tokens[1:], dtype=np.float64)
    except (IndexError, ValueError) as error:
        raise DatasetFormatError(f"{path}: expected a point count then {columns} numbers per point") from error
    if count <= 0 or values.size != count * columns:
        raise DatasetFormatError(
            f"{path}: header announces {count} points but {values.size} numbers follow ({columns} per point expected)"
        )
    return values.reshape(count, columns)


def read_lines(path: str | Path) -> tuple[str, ...]:
    """Non-empty, stripped lines of a text file (image lists)."""
    return tuple(line.strip() for line in _read_text(Path(path)).splitlines() if line.strip())


def read_vertex_ids(path: str | Path) -> np.ndarray:
    """Vertex id list from ``.npy`` or text (whitespace/comma separated integers) -> (K,) int64."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            ids = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DatasetFormatError(f"{path}: not a readable .npy array ({error})") from error
    else:
        try:
            ids = np.array(_read_text(path).replace(",", " ").split(), dtype=np.float64)
        except ValueError as error:
            raise DatasetFormatError(f"{path}: expected integer vertex ids ({error})") from error
    ids = np.asarray(ids).ravel()
    if ids.size == 0 or not np.all(np.equal(np.mod(ids, 1), 0)) or ids.min() < 0:
        raise DatasetFormatError(f"{path}: expected a non-empty list of non-negative integer vertex ids")
    return ids.astype(np.int64)


def to_numpy(x: Any) -> Any:
    """A torch tensor as a NumPy array (detached, on the CPU); anything else unchanged."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x


def _triangulate(polygons: list[list[int]] | np.ndarray, n_vertices: int, path: Path) -> np.ndarray:
    """Fan-triangulate polygons (valid for the convex quads and triangles of scans and face models);
    a (P, K) array holds P polygons of K corners each."""
    if isinstance(polygons, np.ndarray):
        fans = [
            np.stack([polygons[:, 0], polygons[:, i], polygons[:, i + 1]], axis=1)
            for i in range(1, polygons.shape[1] - 1)
        ]
        # Interleave so that each polygon's triangles stay together, in the list path's order.
        faces = np.stack(fans, axis=1).reshape(-1, 3)
    else:
        triangles = [(p[0], p[i], p[i + 1]) for p in polygons for i in range(1, len(p) - 1)]
        faces = np.array(triangles, dtype=np.int64).reshape(-1, 3)
    if faces.size and (faces.min() < 0 or faces.max() >= n_vertices):
        bad = faces.min() if faces.min() < 0 else faces.max()
        raise DatasetFormatError(f"{path}: face refers to vertex {bad} (0-based) but there are {n_vertices} vertices")
    return faces


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise DatasetFormatError(f"{path}: cannot read ({error.strerror or error})") from error
