"""Everything written for one reconstructed face: meshes, texture, coefficients, landmarks, pose and an overlay.

`write_reconstruction` writes one `Reconstruction` into a folder (see `OUTPUT_FILES`) with the single-format
writers, which are usable on their own: mesh files in `geometry.mesh_io`, the UV texture in
`reconstruction.uv_texture`, coefficient files in `reconstruction.coefficient_io`, landmarks and pose in
`reconstruction.pose_io`.

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

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from face_model.coefficients import Coefficients, CoeffLayout
from geometry.mesh_io import UVLayout, write_glb, write_obj, write_ply, write_textured_glb, write_textured_obj
from reconstruction.coefficient_io import save_coefficients, save_deep3d_mat
from reconstruction.pose_io import write_landmarks, write_pose
from reconstruction.units import GLB_SCALE, UNIT_SCALES
from reconstruction.uv_texture import bake_texture
from renderers.camera import PinholeCamera
from renderers.visualize import OVERLAY_PANEL, OverlayViews, overlay_panels, save_png

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
                folder / OUTPUT_FILES["textured_obj"],
                model_vertices,
                recon.triangles,
                uv_layout,
                texture,
                texture_name=OUTPUT_FILES["texture"],
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
