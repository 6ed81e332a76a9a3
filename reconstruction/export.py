"""Writers for one reconstructed face: meshes, texture, coefficients, landmarks, pose and an overlay.

`write_reconstruction` writes everything for one `Reconstruction` into a folder (see `OUTPUT_FILES`);
the single-format writers below it are usable on their own.

Frames and units (see `renderers.camera` for the conventions):

* **model space** (``mesh.obj`` / ``mesh.ply`` / ``mesh_textured.obj``): the reconstructed identity and
  expression before pose: x to the image right, y up, z towards the viewer, origin at the mean face's
  centroid. Vertex colours are the **albedo** (reflectance, lighting removed).
* **camera space** (``mesh_camera.obj`` / ``mesh_camera.ply``): the posed face in OpenCV's camera frame:
  camera centre at the origin, x right, y down, z forward (depth). Projecting its vertices with the
  intrinsics of ``pose.json`` lands them on the crop (``intrinsics_crop``) or on the original photo
  (``intrinsics_image``). Vertex colours are the **shaded** colours of the render.
* **units**: millimetres by default (``ExportOptions.units="mm"``); ``"dm"`` keeps the decimetres the
  face models and Deep3DFaceRecon work in. Coefficient files are unit-free (translation stays in the
  model's decimetres, as the coefficients mean it).
* **binary glTF** (``mesh.glb``): the model-space mesh with its albedo vertex colours, for viewers (Blender,
  three.js, the operating system's 3D viewer); ``mesh_textured.glb`` (ICT) the same with the baked albedo
  texture (vertices split where the UV charts have seams). glTF's axes are the model space's (y up, +z
  towards the viewer) and its unit is the **metre** by specification, whatever ``units`` says.
* **overlay** (``overlay.png``): four panels of ``ExportOptions.overlay_size`` pixels (512 by default):
  the input, the textured reconstruction over it, the grey shaded geometry alone (same pose, neutral
  material, fixed light) and the detected (red) and projected (green) landmarks.

Pixel coordinates follow the project convention: x right, y down, pixel (row i, col j) centred at
(j + 0.5, i + 0.5).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np
import scipy.io
import torch

from face_model.coefficients import Coefficients, CoeffLayout
from renderers.camera import PinholeCamera, euler_to_rotation
from renderers.rasterizer import interpolate, rasterize
from renderers.visualize import OVERLAY_PANEL, OverlayViews, overlay_panels, save_png

UNIT_SCALES = {"mm": 100.0, "dm": 1.0}
"""Output length units -> factor from the models' decimetres."""
GLB_SCALE = 0.1
"""Decimetres -> metres, glTF's unit."""

DEEP3D_MAT_KEYS = ("id", "exp", "tex", "angle", "gamma", "trans", "lm68")
"""Keys of Deep3DFaceRecon's per-image coefficient .mat (its ``save_coeff``), in order."""

OUTPUT_FILES = {
    "mesh_obj": "mesh.obj",
    "mesh_ply": "mesh.ply",
    "camera_obj": "mesh_camera.obj",
    "camera_ply": "mesh_camera.ply",
    "mesh_glb": "mesh.glb",
    "textured_obj": "mesh_textured.obj",
    "textured_mtl": "mesh_textured.mtl",
    "textured_glb": "mesh_textured.glb",
    "texture": "albedo.png",
    "coeffs_npz": "coeffs.npz",
    "coeffs_mat": "coeffs.mat",
    "landmarks": "landmarks.txt",
    "pose": "pose.json",
    "overlay": "overlay.png",
}
"""Every file `write_reconstruction` may write, by key. The textured mesh needs a UV layout (the ICT
model has one) and the .mat is written for BFM models only."""

COEFFICIENT_FIELDS = tuple(f.name for f in fields(Coefficients))
"""Field names of `Coefficients`, in the flat layout's order."""

_MATERIAL = "face_albedo"
# Texels this far (in pixels) outside the UV charts get the nearest chart colour, so that bilinear and
# mip-mapped lookups at a chart's border do not blend in the background.
_TEXTURE_PADDING = 8


@dataclass(frozen=True)
class ExportOptions:
    """How `write_reconstruction` writes.

    units:        "mm" (default) or "dm" for the mesh files and the metric entries of pose.json (mesh.glb is
                  in metres, glTF's unit).
    ply_binary:   binary little-endian PLY (default) or ASCII.
    texture_size: side of the baked albedo texture, pixels (textured OBJ only).
    overlay_size: side of each overlay panel, pixels (at least the crop's).
    """

    units: str = "mm"
    ply_binary: bool = True
    texture_size: int = 1024
    overlay_size: int = OVERLAY_PANEL

    def __post_init__(self) -> None:
        if self.units not in UNIT_SCALES:
            raise ValueError(f"units must be one of {sorted(UNIT_SCALES)}, got {self.units!r}")
        if not 16 <= self.texture_size <= 8192:
            raise ValueError(f"texture_size must be in [16, 8192] pixels, got {self.texture_size}")
        if not 32 <= self.overlay_size <= 4096:
            raise ValueError(f"overlay_size must be in [32, 4096] pixels, got {self.overlay_size}")

    @property
    def scale(self) -> float:
        return UNIT_SCALES[self.units]


@dataclass(frozen=True)
class UVLayout:
    """Texture coordinates of a face model's mesh.

    uv:     (T, 2) float (u right, v up, both in [0, 1], OBJ's convention).
    tri_uv: (F, 3) int, for each triangle corner its row of ``uv`` (rows match the model's triangles).
    """

    uv: np.ndarray
    tri_uv: np.ndarray


@dataclass(frozen=True, eq=False)
class Reconstruction:
    """One reconstructed face, as NumPy arrays (batch dimension dropped), ready to be written.

    coeffs:          `Coefficients` with batch 1 (CPU tensors).
    layout:          their `CoeffLayout`.
    face_model_name: ``FaceModel.name`` ("ict", "bfm09", ...).
    vertices_model:  (V, 3) model-space vertices before pose, decimetres.
    vertices_camera: (V, 3) posed vertices in OpenCV camera space, decimetres.
    triangles:       (F, 3) vertex ids, counter-clockwise seen from the front.
    albedo:          (V, 3) reflectance in [0, 1].
    shaded:          (V, 3) shaded vertex colours (what the render shows).
    landmarks:       (68, 2) the reconstruction's projected landmarks, crop pixels.
    detected:        (68, 2) the detector's landmarks, crop pixels.
    crop:            (S, S, 3) uint8 RGB aligned input crop.
    render:          (S, S, 3) float render in [0, 1] (0 off the face).
    mask:            (S, S) bool, where the render covers the crop.
    transform:       (2, 3) float64 alignment, source-image pixels -> crop pixels.
    image_size:      (height, width) of the source image.
    camera:          the crop's `PinholeCamera`.
    views:           the overlay's renders at panel size (`renderers.visualize.OverlayViews`).
    """

    coeffs: Coefficients
    layout: CoeffLayout
    face_model_name: str
    vertices_model: np.ndarray
    vertices_camera: np.ndarray
    triangles: np.ndarray
    albedo: np.ndarray
    shaded: np.ndarray
    landmarks: np.ndarray
    detected: np.ndarray
    crop: np.ndarray
    render: np.ndarray
    mask: np.ndarray
    transform: np.ndarray
    image_size: tuple[int, int]
    camera: PinholeCamera
    views: OverlayViews


# ------------------------------------------------------------------------------------------------ meshes


def _colour_bytes(colors: np.ndarray) -> np.ndarray:
    return np.round(np.clip(colors, 0.0, 1.0) * 255.0).astype(np.uint8)


def _text_rows(fmt: str, rows: np.ndarray) -> str:
    buffer = io.StringIO()
    np.savetxt(buffer, rows, fmt=fmt)
    return buffer.getvalue()


def _check_mesh(vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray | None) -> None:
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be (V, 3), got shape {vertices.shape}")
    if triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ValueError(f"triangles must be (F, 3), got shape {triangles.shape}")
    if triangles.size and (triangles.min() < 0 or triangles.max() >= len(vertices)):
        raise ValueError(f"triangles index vertices outside [0, {len(vertices)})")
    if colors is not None and colors.shape != vertices.shape:
        raise ValueError(f"colors must be (V, 3) like the vertices {vertices.shape}, got {colors.shape}")


def write_obj(path: str | Path, vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray | None = None) -> Path:
    """Wavefront OBJ with per-vertex colours as ``v x y z r g b`` (r, g, b in [0, 1]; clipped).

    vertices: (V, 3) in the units wanted in the file; triangles: (F, 3) 0-based ids; colors: (V, 3) or None.
    """
    path = Path(path)
    vertices, triangles = np.asarray(vertices, np.float64), np.asarray(triangles, np.int64)
    colors = None if colors is None else np.asarray(colors, np.float64)
    _check_mesh(vertices, triangles, colors)
    header = f"# face3d-lightning reconstruction: {len(vertices)} vertices, {len(triangles)} triangles\n"
    if colors is None:
        body = _text_rows("v %.6f %.6f %.6f", vertices)
    else:
        # Colours rounded to 8 bits, as in the PLY, so both files carry the same values.
        body = _text_rows("v %.6f %.6f %.6f %.6f %.6f %.6f", np.hstack([vertices, _colour_bytes(colors) / 255.0]))
    path.write_text(header + body + _text_rows("f %d %d %d", triangles + 1))
    return path


def write_ply(
    path: str | Path, vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray, binary: bool = True
) -> Path:
    """PLY with float32 positions, uchar RGB vertex colours and int32 triangle lists.

    vertices: (V, 3); triangles: (F, 3) 0-based; colors: (V, 3) in [0, 1] (clipped, rounded to 8 bits).
    binary: little-endian binary (compact, default) or ASCII.
    """
    path = Path(path)
    vertices, triangles = np.asarray(vertices, np.float64), np.asarray(triangles, np.int64)
    colors = np.asarray(colors, np.float64)
    _check_mesh(vertices, triangles, colors)
    header = (
        "ply\n"
        f"format {'binary_little_endian' if binary else 'ascii'} 1.0\n"
        "comment face3d-lightning reconstruction\n"
        f"element vertex {len(vertices)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        f"element face {len(triangles)}\n"
        "property list uchar int vertex_indices\n"
        "end_header\n"
    )
    rgb = _colour_bytes(colors)
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


# ----------------------------------------------------------------------------------------------- texture


def ict_uv_layout(
    triangles: np.ndarray | torch.Tensor, n_vertices: int, npz_path: str | Path | None = None
) -> UVLayout | None:
    """The bundled ICT-FaceKit UVs for a model loaded from it, or None if ``triangles`` are not its mesh.

    The ICT loader keeps the triangles whose vertices all lie below its vertex count (the "narrow" face
    by default); the same mask selects the rows of ``tri_uv``. The triangles are compared with the
    file's, so a model from elsewhere is never given wrong UVs.
    """
    from face_model.ict import default_ict_path

    path = Path(npz_path) if npz_path is not None else default_ict_path()
    if not path.is_file():
        return None
    with np.load(path) as data:
        if not {"tri", "uv", "tri_uv"} <= set(data.files):
            return None
        tri, uv, tri_uv = data["tri"].astype(np.int64), data["uv"].astype(np.float64), data["tri_uv"].astype(np.int64)
    keep = (tri < n_vertices).all(axis=1)
    triangles = np.asarray(triangles, dtype=np.int64)
    if tri[keep].shape != triangles.shape or not np.array_equal(tri[keep], triangles):
        return None
    return UVLayout(uv=uv, tri_uv=tri_uv[keep])


def uv_to_vertex(triangles: np.ndarray, tri_uv: np.ndarray, n_uv: int) -> np.ndarray:
    """(T,) mesh vertex of every UV vertex (-1 for UV vertices no triangle uses).

    Raises ValueError when a UV vertex sits on two mesh vertices: such a layout cannot carry per-vertex
    colours without ambiguity.
    """
    triangles, tri_uv = np.asarray(triangles, np.int64), np.asarray(tri_uv, np.int64)
    if triangles.shape != tri_uv.shape:
        raise ValueError(f"tri_uv {tri_uv.shape} must have one row per triangle {triangles.shape}")
    mapping = np.full(n_uv, -1, dtype=np.int64)
    mapping[tri_uv.ravel()] = triangles.ravel()
    if not np.array_equal(mapping[tri_uv], triangles):
        raise ValueError("the UV layout maps one UV vertex to several mesh vertices")
    return mapping


def bake_texture(
    vertex_colors: np.ndarray | torch.Tensor,
    triangles: np.ndarray,
    layout: UVLayout,
    size: int,
    background: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterize per-vertex colours into UV space.

    Every texel centre inside a UV triangle gets the barycentric blend of its corners' colours (the UV
    triangles are rasterized as screen triangles at constant depth, with the project's rasterizer).
    Texels up to `_TEXTURE_PADDING` pixels outside the charts take the nearest chart colour; the rest get
    ``background`` (default: the mean colour).

    Args:
        vertex_colors: (V, 3) colours in [0, 1].
        triangles: (F, 3) mesh triangles.
        layout: the mesh's `UVLayout`.
        size: texture side in pixels.

    Returns:
        (size, size, 3) uint8 RGB image, row 0 at v = 1 (image top, as OBJ's ``map_Kd`` expects), and the
        (size, size) bool chart coverage.
    """
    colors = torch.as_tensor(np.asarray(vertex_colors, dtype=np.float32))
    mapping = uv_to_vertex(triangles, layout.tri_uv, len(layout.uv))
    uv_colors = colors[torch.from_numpy(np.maximum(mapping, 0))]
    uv = torch.as_tensor(layout.uv, dtype=torch.float32)
    # Texel (row i, col j) is centred at u = (j + 0.5) / size, v = 1 - (i + 0.5) / size.
    screen = torch.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size, torch.ones_like(uv[:, 0])], dim=-1)
    faces = torch.as_tensor(layout.tri_uv, dtype=torch.long)
    with torch.no_grad():
        fragments = rasterize(screen.unsqueeze(0), faces, (size, size), backend="torch")
        texture = interpolate(uv_colors.unsqueeze(0), faces, fragments)[0].numpy()
    coverage = fragments.mask[0].numpy()
    texture = _pad_charts(texture, coverage, _TEXTURE_PADDING)
    filled = coverage | (
        cv2.dilate(coverage.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=_TEXTURE_PADDING) > 0
    )
    fill = colors.mean(0).numpy() if background is None else np.asarray(background, dtype=np.float32)
    texture[~filled] = fill
    return _colour_bytes(texture), coverage


def _pad_charts(texture: np.ndarray, coverage: np.ndarray, steps: int) -> np.ndarray:
    """Grow the covered texels outwards by ``steps`` pixels, each new texel the mean of its covered 3x3
    neighbours."""
    texture = texture.astype(np.float32).copy()
    known = coverage.astype(np.float32)
    for _ in range(steps):
        total = cv2.boxFilter(texture * known[..., None], -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
        count = cv2.boxFilter(known, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
        grow = (known == 0) & (count > 0)
        texture[grow] = total[grow] / count[grow][:, None]
        known[grow] = 1.0
    return texture


def write_textured_obj(
    obj_path: str | Path, vertices: np.ndarray, triangles: np.ndarray, layout: UVLayout, texture: np.ndarray
) -> dict[str, Path]:
    """OBJ with ``vt`` texture coordinates, its MTL and the texture PNG, side by side.

    The MTL and PNG take the OBJ's stem (``face.obj`` -> ``face.mtl``; the PNG name is the MTL's
    ``map_Kd``, ``albedo.png``), so the three files form one asset. Returns their paths by kind.
    """
    obj_path = Path(obj_path)
    vertices, triangles = np.asarray(vertices, np.float64), np.asarray(triangles, np.int64)
    _check_mesh(vertices, triangles, None)
    tri_uv = np.asarray(layout.tri_uv, np.int64)
    if tri_uv.shape != triangles.shape:
        raise ValueError(f"the UV layout has {tri_uv.shape[0]} triangles, the mesh {triangles.shape[0]}")
    mtl_path = obj_path.with_suffix(".mtl")
    png_path = obj_path.with_name(OUTPUT_FILES["texture"])
    save_png(png_path, np.ascontiguousarray(texture))
    # Kd 1 with the map: the texture holds the albedo itself; no specular, lambertian illumination model.
    mtl_path.write_text(
        f"newmtl {_MATERIAL}\nKa 1.000 1.000 1.000\nKd 1.000 1.000 1.000\n"
        f"Ks 0.000 0.000 0.000\nillum 1\nmap_Kd {png_path.name}\n"
    )
    corners = np.stack([triangles + 1, tri_uv + 1], axis=-1).reshape(len(triangles), 6)
    obj_path.write_text(
        f"# face3d-lightning reconstruction: {len(vertices)} vertices, {len(triangles)} triangles, albedo texture\n"
        f"mtllib {mtl_path.name}\n"
        + _text_rows("v %.6f %.6f %.6f", vertices)
        + _text_rows("vt %.6f %.6f", np.asarray(layout.uv, np.float64))
        + f"usemtl {_MATERIAL}\n"
        + _text_rows("f %d/%d %d/%d %d/%d", corners)
    )
    return {"textured_obj": obj_path, "textured_mtl": mtl_path, "texture": png_path}


# ---------------------------------------------------------------------------------------- coefficients


def save_coefficients(path: str | Path, coeffs: Coefficients, layout: CoeffLayout, face_model_name: str) -> Path:
    """One reconstruction's coefficients as .npz: one (n,) float32 array per `Coefficients` field, ``flat``
    (the `CoeffLayout` vector, R-Net's output order), the layout sizes (``n_id``, ``n_exp``, ``n_tex``,
    ``sh_channels``) and ``face_model``. Angles are radians, translation decimetres."""
    if coeffs.batch_size != 1:
        raise ValueError(
            f"save_coefficients writes one reconstruction, got a batch of {coeffs.batch_size}; "
            "select one with coeffs.index(i)"
        )
    arrays = {name: getattr(coeffs, name)[0].detach().cpu().numpy().astype(np.float32) for name in COEFFICIENT_FIELDS}
    arrays["flat"] = layout.join(coeffs)[0].detach().cpu().numpy().astype(np.float32)
    np.savez(
        path,
        **arrays,
        n_id=layout.n_id,
        n_exp=layout.n_exp,
        n_tex=layout.n_tex,
        sh_channels=layout.sh_channels,
        face_model=np.str_(face_model_name),
    )
    return Path(path)


def load_coefficients(path: str | Path) -> tuple[Coefficients, CoeffLayout, str]:
    """Read `save_coefficients`' file: (Coefficients with batch 1, CoeffLayout, face model name)."""
    with np.load(path) as data:
        missing = [k for k in (*COEFFICIENT_FIELDS, "n_id", "n_exp", "n_tex", "sh_channels") if k not in data.files]
        if missing:
            raise ValueError(f"{path} is not a face3d coefficient file: missing {missing}")
        layout = CoeffLayout(int(data["n_id"]), int(data["n_exp"]), int(data["n_tex"]), int(data["sh_channels"]))
        coeffs = Coefficients(
            **{name: torch.from_numpy(data[name].astype(np.float32)).unsqueeze(0) for name in COEFFICIENT_FIELDS}
        )
        name = str(data["face_model"]) if "face_model" in data.files else ""
    layout.join(coeffs)
    return coeffs, layout, name


def deep3d_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(68, 2) crop pixels in our convention -> the ``lm68`` values Deep3D's ``save_coeff`` writes.

    Deep3D projects with y up (``y_deep3d = H - y``) and saves ``H - 1 - y_deep3d``, which is our y minus
    one; x is the same in both.
    """
    points = np.asarray(landmarks, dtype=np.float64).copy()
    points[:, 1] -= 1.0
    return points


def save_deep3d_mat(path: str | Path, coeffs: Coefficients, landmarks: np.ndarray) -> Path:
    """Deep3DFaceRecon's per-image .mat: ``id``, ``exp``, ``tex``, ``angle``, ``gamma``, ``trans`` as
    (1, n) float32 and ``lm68`` (1, 68, 2) (see `deep3d_landmarks`).

    Monochrome lighting (9 coefficients) is written as the equivalent RGB ``gamma`` (27, channel-major),
    which is what Deep3D's renderer reads. Only meaningful for the BFM model: the same keys on another
    model's coefficients would be read as BFM coefficients.
    """
    if coeffs.batch_size != 1:
        raise ValueError(f"save_deep3d_mat writes one reconstruction, got a batch of {coeffs.batch_size}")
    gamma = coeffs.lighting.detach().cpu()
    if gamma.shape[1] == 9:
        gamma = gamma.repeat(1, 3)

    def row(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float32).reshape(1, -1)

    scipy.io.savemat(
        str(path),
        {
            "id": row(coeffs.identity),
            "exp": row(coeffs.expression),
            "tex": row(coeffs.albedo),
            "angle": row(coeffs.angles),
            "gamma": row(gamma),
            "trans": row(coeffs.translation),
            "lm68": deep3d_landmarks(landmarks).astype(np.float32)[None],
        },
    )
    return Path(path)


# ------------------------------------------------------------------------------------ landmarks and pose


def invert_affine(transform: np.ndarray) -> np.ndarray:
    """(2, 3) affine ``q = A p + b`` -> (2, 3) inverse ``p = A^-1 (q - b)``."""
    transform = np.asarray(transform, dtype=np.float64)
    linear_inv = np.linalg.inv(transform[:, :2])
    return np.concatenate([linear_inv, -(linear_inv @ transform[:, 2])[:, None]], axis=1)


def crop_to_image(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """(N, 2) crop pixels -> (N, 2) source-image pixels, given the (2, 3) source -> crop alignment."""
    inverse = invert_affine(transform)
    return np.asarray(points, dtype=np.float64) @ inverse[:, :2].T + inverse[:, 2]


def write_landmarks(
    path: str | Path, landmarks: np.ndarray, transform: np.ndarray, detected: np.ndarray | None = None
) -> Path:
    """68 landmarks as text, one row per point: ``x_crop y_crop x_image y_image`` (and, with ``detected``,
    the detector's ``det_x_crop det_y_crop det_x_image det_y_image``); '#' header lines explain."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    columns = [landmarks, crop_to_image(landmarks, transform)]
    names = "x_crop y_crop x_image y_image"
    if detected is not None:
        detected = np.asarray(detected, dtype=np.float64)
        columns += [detected, crop_to_image(detected, transform)]
        names += " det_x_crop det_y_crop det_x_image det_y_image"
    header = (
        "68 iBUG landmarks of the reconstruction (projected model landmarks)"
        + (" and the detector's" if detected is not None else "")
        + ", pixels: x right, y down, "
        "pixel (row i, col j) centred at (j + 0.5, i + 0.5); crop = the aligned crop, image = the source "
        f"photo (through the inverse alignment)\n{names}"
    )
    np.savetxt(path, np.hstack(columns), fmt="%.3f", header=header)
    return Path(path)


def model_to_camera_matrix(
    angles: np.ndarray, translation: np.ndarray, camera_distance: float, scale: float = 1.0
) -> np.ndarray:
    """(4, 4) homogeneous map from model space to OpenCV camera space, both in units ``scale`` x decimetres.

    Posing is ``R v + t`` (`renderers.camera`); the camera sits at ``z = camera_distance`` looking down -z,
    so camera coordinates are ``(x, -y, camera_distance - z)`` of the posed point.
    """
    rotation = euler_to_rotation(torch.as_tensor(np.asarray(angles, np.float64))).numpy()
    flip = np.diag([1.0, -1.0, -1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = flip @ rotation
    matrix[:3, 3] = scale * (flip @ np.asarray(translation, np.float64) + np.array([0.0, 0.0, camera_distance]))
    return matrix


def intrinsics(focal: float, principal_point: tuple[float, float]) -> list[list[float]]:
    cx, cy = principal_point
    return [[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]]


def pose_record(
    coeffs: Coefficients, camera: PinholeCamera, transform: np.ndarray, image_size: tuple[int, int], units: str = "mm"
) -> dict:
    """Head pose, camera and alignment of one reconstruction as a JSON-ready dict (see `write_pose`)."""
    scale = UNIT_SCALES[units]
    angles = coeffs.angles[0].detach().cpu().double().numpy()
    translation = coeffs.translation[0].detach().cpu().double().numpy()
    transform = np.asarray(transform, dtype=np.float64)
    align_scale = float(math.sqrt(abs(np.linalg.det(transform[:, :2]))))
    inverse = invert_affine(transform)
    cx, cy = camera.principal_point
    # The crop is a scale + shift of the photo, so the photo's intrinsics are the crop's mapped back.
    image_focal = camera.focal / align_scale
    image_principal = (inverse[:, :2] @ np.array([cx, cy]) + inverse[:, 2]).tolist()
    degrees = np.degrees(angles)
    return {
        "conventions": (
            "model space: x image-right, y up, z towards the camera; posed = R v + t with R = Rz(roll) Ry(yaw) "
            "Rx(pitch); camera space: OpenCV (x right, y down, z forward), camera at the origin, at camera_distance "
            "from the model origin; pixels: x right, y down, pixel (row i, col j) centred at (j + 0.5, i + 0.5)"
        ),
        "units": units,
        "angles_deg": {"pitch": float(degrees[0]), "yaw": float(degrees[1]), "roll": float(degrees[2])},
        "angles_rad": [float(a) for a in angles],
        "rotation": euler_to_rotation(torch.from_numpy(angles)).numpy().tolist(),
        "translation": (translation * scale).tolist(),
        "translation_dm": translation.tolist(),
        "model_to_camera": model_to_camera_matrix(angles, translation, camera.camera_distance, scale).tolist(),
        "camera": {
            "focal": camera.focal,
            "principal_point": [cx, cy],
            "image_size": list(camera.image_size),
            "camera_distance": camera.camera_distance * scale,
            "camera_distance_dm": camera.camera_distance,
        },
        "intrinsics_crop": intrinsics(camera.focal, (cx, cy)),
        "intrinsics_image": intrinsics(image_focal, tuple(image_principal)),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "alignment": {"image_to_crop": transform.tolist(), "crop_to_image": inverse.tolist(), "scale": align_scale},
    }


def write_pose(
    path: str | Path,
    coeffs: Coefficients,
    camera: PinholeCamera,
    transform: np.ndarray,
    image_size: tuple[int, int],
    units: str = "mm",
) -> Path:
    """pose.json: angles (degrees and radians), rotation, translation (``units`` and decimetres), the
    4x4 model-to-camera matrix (``units``; maps mesh.obj onto mesh_camera.obj), the camera (focal, principal
    point, crop size, camera distance), 3x3 intrinsics for the crop and for the source photo, the source
    image size [H, W] and the alignment transforms."""
    Path(path).write_text(json.dumps(pose_record(coeffs, camera, transform, image_size, units), indent=2) + "\n")
    return Path(path)


# ------------------------------------------------------------------------------------------------ overlay


def write_glb(path: str | Path, vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray) -> Path:
    """Binary glTF (trimesh) of a mesh with per-vertex colours (``COLOR_0``, 8-bit RGBA, opaque).

    vertices: (V, 3) in metres (glTF's unit), y up, +z towards the viewer; triangles: (F, 3) 0-based,
    counter-clockwise seen from the front (glTF's front faces); colors: (V, 3) in [0, 1] (clipped).
    Vertices are written as given (no merging or reordering), so vertex i of the file is vertex i here.
    """
    import trimesh

    path = Path(path)
    vertices, triangles = np.asarray(vertices, np.float64), np.asarray(triangles, np.int64)
    colors = np.asarray(colors, np.float64)
    _check_mesh(vertices, triangles, colors)
    rgba = np.concatenate([_colour_bytes(colors), np.full((len(colors), 1), 255, np.uint8)], axis=1)
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


def write_textured_glb(
    path: str | Path, vertices: np.ndarray, triangles: np.ndarray, layout: UVLayout, texture: np.ndarray
) -> Path:
    """Binary glTF of a mesh with UVs and its texture (an embedded PNG as the base colour, no lighting baked).

    vertices: (V, 3) in metres; triangles: (F, 3); layout: the mesh's `UVLayout` (v up, as OBJ); texture:
    (H, W, 3) uint8 RGB with row 0 at v = 1. Vertices are split where the UV charts have seams
    (`split_uv_seams`), so the file holds one vertex per distinct corner pair.
    """
    import trimesh
    from PIL import Image

    path = Path(path)
    vertices = np.asarray(vertices, np.float64)
    _check_mesh(vertices, np.asarray(triangles, np.int64), None)
    vertex_ids, uv, faces = split_uv_seams(triangles, layout)
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(np.ascontiguousarray(texture)), metallicFactor=0.0, roughnessFactor=1.0
    )
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    mesh = trimesh.Trimesh(vertices=vertices[vertex_ids], faces=faces, visual=visual, process=False)
    path.write_bytes(mesh.export(file_type="glb"))
    return path


# ------------------------------------------------------------------------------------------ all outputs


def write_reconstruction(
    folder: str | Path,
    recon: Reconstruction,
    options: ExportOptions = ExportOptions(),
    uv_layout: UVLayout | None = None,
) -> dict[str, Path]:
    """Write every output of one reconstruction into ``folder`` (created); returns the paths by
    `OUTPUT_FILES` key. The textured OBJ needs ``uv_layout``; the Deep3D .mat is written for BFM models."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scale = options.scale
    model_vertices = recon.vertices_model * scale
    camera_vertices = recon.vertices_camera * scale
    out: dict[str, Path] = {}
    out["mesh_obj"] = write_obj(folder / OUTPUT_FILES["mesh_obj"], model_vertices, recon.triangles, recon.albedo)
    out["mesh_ply"] = write_ply(
        folder / OUTPUT_FILES["mesh_ply"], model_vertices, recon.triangles, recon.albedo, options.ply_binary
    )
    out["camera_obj"] = write_obj(folder / OUTPUT_FILES["camera_obj"], camera_vertices, recon.triangles, recon.shaded)
    out["camera_ply"] = write_ply(
        folder / OUTPUT_FILES["camera_ply"], camera_vertices, recon.triangles, recon.shaded, options.ply_binary
    )
    out["mesh_glb"] = write_glb(
        folder / OUTPUT_FILES["mesh_glb"], recon.vertices_model * GLB_SCALE, recon.triangles, recon.albedo
    )
    if uv_layout is not None:
        texture, _ = bake_texture(recon.albedo, recon.triangles, uv_layout, options.texture_size)
        out.update(
            write_textured_obj(
                folder / OUTPUT_FILES["textured_obj"], model_vertices, recon.triangles, uv_layout, texture
            )
        )
        out["textured_glb"] = write_textured_glb(
            folder / OUTPUT_FILES["textured_glb"], recon.vertices_model * GLB_SCALE, recon.triangles, uv_layout, texture
        )
    out["coeffs_npz"] = save_coefficients(
        folder / OUTPUT_FILES["coeffs_npz"], recon.coeffs, recon.layout, recon.face_model_name
    )
    if recon.face_model_name.startswith("bfm"):
        out["coeffs_mat"] = save_deep3d_mat(folder / OUTPUT_FILES["coeffs_mat"], recon.coeffs, recon.landmarks)
    out["landmarks"] = write_landmarks(
        folder / OUTPUT_FILES["landmarks"], recon.landmarks, recon.transform, recon.detected
    )
    out["pose"] = write_pose(
        folder / OUTPUT_FILES["pose"], recon.coeffs, recon.camera, recon.transform, recon.image_size, options.units
    )
    out["overlay"] = folder / OUTPUT_FILES["overlay"]
    save_png(out["overlay"], overlay_panels(recon.views))
    return out
