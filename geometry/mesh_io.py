"""Mesh files: Wavefront OBJ (with vertex colours, or textured with its MTL and PNG), PLY and binary glTF.

Every writer takes NumPy arrays or CPU torch tensors, (V, 3) vertices in the unit wanted in the file and
(F, 3) zero-based triangles, checks them, creates the file's folder and returns the path it wrote.
Colours are (V, 3) in [0, 1], clipped and rounded to 8 bits the same way in every format. Textures follow
OBJ's convention: u right, v up, texture row 0 at v = 1.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_MATERIAL = "face_albedo"


@dataclass(frozen=True)
class UVLayout:
    """Texture coordinates of a face model's mesh.

    uv:     (T, 2) float (u right, v up, both in [0, 1], OBJ's convention).
    tri_uv: (F, 3) int, for each triangle corner its row of ``uv`` (rows match the model's triangles).
    """

    uv: np.ndarray
    tri_uv: np.ndarray


def colour_bytes(colors: np.ndarray) -> np.ndarray:
    return np.round(np.clip(colors, 0.0, 1.0) * 255.0).astype(np.uint8)


def _text_rows(fmt: str, rows: np.ndarray) -> str:
    buffer = io.StringIO()
    np.savetxt(buffer, rows, fmt=fmt)
    return buffer.getvalue()


def _array(x: Any, dtype: type) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype)


def _mesh(
    path: str | Path, vertices: Any, triangles: Any, colors: Any | None = None
) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray | None]:
    """Checked float64 vertices, int64 triangles and float64 colours (or None), and the path with its folder
    created."""
    vertices, triangles = _array(vertices, np.float64), _array(triangles, np.int64)
    colors = None if colors is None else _array(colors, np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be (V, 3), got shape {vertices.shape}")
    if triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ValueError(f"triangles (faces) must be (F, 3), got shape {triangles.shape}")
    if triangles.size and (triangles.min() < 0 or triangles.max() >= len(vertices)):
        raise ValueError(
            f"triangles index vertices outside [0, {len(vertices)}): faces must be zero-based ids of the vertices"
        )
    if colors is not None and colors.shape != vertices.shape:
        raise ValueError(f"colors must be (V, 3) like the vertices {vertices.shape}, got {colors.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, vertices, triangles, colors


def write_obj(path: str | Path, vertices: Any, triangles: Any, colors: Any | None = None) -> Path:
    """Wavefront OBJ, with per-vertex colours as ``v x y z r g b`` (r, g, b in [0, 1]; clipped) when ``colors``
    is given; without them for tools that reject colours (NoW's evaluation).

    vertices: (V, 3) in the units wanted in the file; triangles: (F, 3) 0-based ids; colors: (V, 3) or None.
    """
    path, vertices, triangles, colors = _mesh(path, vertices, triangles, colors)
    header = f"# face3d-lightning mesh: {len(vertices)} vertices, {len(triangles)} triangles\n"
    if colors is None:
        body = _text_rows("v %.6f %.6f %.6f", vertices)
    else:
        # Colours rounded to 8 bits, as in the PLY, so both files carry the same values.
        body = _text_rows("v %.6f %.6f %.6f %.6f %.6f %.6f", np.hstack([vertices, colour_bytes(colors) / 255.0]))
    path.write_text(header + body + _text_rows("f %d %d %d", triangles + 1))
    return path


def write_ply(path: str | Path, vertices: Any, triangles: Any, colors: Any, binary: bool = True) -> Path:
    """PLY with float32 positions, uchar RGB vertex colours and int32 triangle lists.

    vertices: (V, 3); triangles: (F, 3) 0-based; colors: (V, 3) in [0, 1] (clipped, rounded to 8 bits).
    binary: little-endian binary (compact, default) or ASCII.
    """
    path, vertices, triangles, colors = _mesh(path, vertices, triangles, colors)
    header = (
        "ply\n"
        f"format {'binary_little_endian' if binary else 'ascii'} 1.0\n"
        "comment face3d-lightning mesh\n"
        f"element vertex {len(vertices)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        f"element face {len(triangles)}\n"
        "property list uchar int vertex_indices\n"
        "end_header\n"
    )
    rgb = colour_bytes(colors)
    if binary:
        vertex_rows = np.empty(len(vertices), dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)])
        vertex_rows["xyz"], vertex_rows["rgb"] = vertices, rgb
        face_rows = np.empty(len(triangles), dtype=[("n", "u1"), ("ids", "<i4", 3)])
        face_rows["n"], face_rows["ids"] = 3, triangles
        path.write_bytes(header.encode("ascii") + vertex_rows.tobytes() + face_rows.tobytes())
    else:
        vertex_text = "".join(
            f"{x:.6f} {y:.6f} {z:.6f} {r} {g} {b}\n"
            for (x, y, z), (r, g, b) in zip(vertices.astype(np.float32).tolist(), rgb.tolist())
        )
        path.write_text(header + vertex_text + _text_rows("3 %d %d %d", triangles))
    return path


def write_textured_obj(
    obj_path: str | Path,
    vertices: Any,
    triangles: Any,
    layout: UVLayout,
    texture: np.ndarray,
    texture_name: str = "albedo.png",
) -> dict[str, Path]:
    """OBJ with ``vt`` texture coordinates, its MTL and the texture PNG, side by side.

    The MTL takes the OBJ's stem (``face.obj`` -> ``face.mtl``) and names the PNG ``texture_name`` in its
    ``map_Kd``, so the three files form one asset. texture: (H, W, 3) uint8 RGB. Returns the paths by kind
    (``textured_obj``, ``textured_mtl``, ``texture``).
    """
    from PIL import Image

    obj_path, vertices, triangles, _ = _mesh(obj_path, vertices, triangles)
    tri_uv = np.asarray(layout.tri_uv, np.int64)
    if tri_uv.shape != triangles.shape:
        raise ValueError(f"the UV layout has {tri_uv.shape[0]} triangles, the mesh {triangles.shape[0]}")
    mtl_path = obj_path.with_suffix(".mtl")
    png_path = obj_path.with_name(texture_name)
    Image.fromarray(np.ascontiguousarray(texture)).save(png_path)
    # Kd 1 with the map: the texture holds the albedo itself; no specular, lambertian illumination model.
    mtl_path.write_text(
        f"newmtl {_MATERIAL}\nKa 1.000 1.000 1.000\nKd 1.000 1.000 1.000\n"
        f"Ks 0.000 0.000 0.000\nillum 1\nmap_Kd {png_path.name}\n"
    )
    corners = np.stack([triangles + 1, tri_uv + 1], axis=-1).reshape(len(triangles), 6)
    obj_path.write_text(
        f"# face3d-lightning mesh: {len(vertices)} vertices, {len(triangles)} triangles, texture {png_path.name}\n"
        f"mtllib {mtl_path.name}\n"
        + _text_rows("v %.6f %.6f %.6f", vertices)
        + _text_rows("vt %.6f %.6f", np.asarray(layout.uv, np.float64))
        + f"usemtl {_MATERIAL}\n"
        + _text_rows("f %d/%d %d/%d %d/%d", corners)
    )
    return {"textured_obj": obj_path, "textured_mtl": mtl_path, "texture": png_path}


def write_glb(path: str | Path, vertices: Any, triangles: Any, colors: Any) -> Path:
    """Binary glTF (trimesh) of a mesh with per-vertex colours (``COLOR_0``, 8-bit RGBA, opaque).

    vertices: (V, 3) in metres (glTF's unit), y up, +z towards the viewer; triangles: (F, 3) 0-based,
    counter-clockwise seen from the front (glTF's front faces); colors: (V, 3) in [0, 1] (clipped).
    Vertices are written as given (no merging or reordering), so vertex i of the file is vertex i here.
    """
    import trimesh

    path, vertices, triangles, colors = _mesh(path, vertices, triangles, colors)
    rgba = np.concatenate([colour_bytes(colors), np.full((len(colors), 1), 255, np.uint8)], axis=1)
    mesh = trimesh.Trimesh(vertices=vertices, faces=triangles, vertex_colors=rgba, process=False)
    path.write_bytes(mesh.export(file_type="glb"))
    return path


def split_uv_seams(triangles: np.ndarray, layout: UVLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One vertex per distinct (mesh vertex, UV vertex) corner pair, as formats with a single index per corner
    (glTF) need. Returns (K,) mesh vertex ids, (K, 2) UVs and the (F, 3) triangles re-indexed into them."""
    triangles, tri_uv = np.asarray(triangles, np.int64), np.asarray(layout.tri_uv, np.int64)
    if tri_uv.shape != triangles.shape:
        raise ValueError(f"the UV layout has {tri_uv.shape[0]} triangles, the mesh {triangles.shape[0]}")
    pairs = np.stack([triangles.ravel(), tri_uv.ravel()], axis=1)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    return unique[:, 0], np.asarray(layout.uv, np.float64)[unique[:, 1]], inverse.reshape(triangles.shape)


def write_textured_glb(path: str | Path, vertices: Any, triangles: Any, layout: UVLayout, texture: np.ndarray) -> Path:
    """Binary glTF of a mesh with UVs and its texture (an embedded PNG as the base colour, no lighting baked).

    vertices: (V, 3) in metres; triangles: (F, 3); layout: the mesh's `UVLayout` (v up, as OBJ); texture:
    (H, W, 3) uint8 RGB with row 0 at v = 1. Vertices are split where the UV charts have seams
    (`split_uv_seams`), so the file holds one vertex per distinct corner pair.
    """
    import trimesh
    from PIL import Image

    path, vertices, triangles, _ = _mesh(path, vertices, triangles)
    vertex_ids, uv, faces = split_uv_seams(triangles, layout)
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(np.ascontiguousarray(texture)), metallicFactor=0.0, roughnessFactor=1.0
    )
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    mesh = trimesh.Trimesh(vertices=vertices[vertex_ids], faces=faces, visual=visual, process=False)
    path.write_bytes(mesh.export(file_type="glb"))
    return path
