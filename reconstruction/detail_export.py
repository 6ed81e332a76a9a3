"""Files of an HRN reconstruction: the detailed mesh (subdivided, deformed and displaced), the detail maps as
16-bit PNGs with their scales, the detailed normal map and the photo unwrapped into UV.

``export_detail`` writes one face; the maps are stored so that ``value = (pixel / 65535 * 2 - 1) * scale`` (the
scales are in ``detail_maps.json``), row 0 at v = 1 like every texture of this project.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from face_model.model import FaceModel
from geometry.normals import vertex_normals
from networks.hrn import HRNDetailOutput
from reconstruction.export import write_obj, write_ply
from renderers.detail_renderer import DetailLayout, detail_normal_map
from renderers.uv import displace_mesh, position_map, subdivide

DETAIL_FILES = {
    "mesh_obj": "detailed.obj",
    "mesh_ply": "detailed.ply",
    "deformation": "deformation.png",
    "displacement": "displacement.png",
    "normal_map": "normal_map.png",
    "texture": "unwrapped.png",
    "scales": "detail_maps.json",
}


def encode_signed_16bit(values: np.ndarray, scale: float) -> np.ndarray:
    """(..., C) values in [-scale, scale] -> uint16 (0 = -scale, 65535 = +scale)."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    unit = np.clip(np.asarray(values, np.float64) / scale, -1.0, 1.0)
    return np.rint((unit * 0.5 + 0.5) * 65535.0).astype(np.uint16)


def decode_signed_16bit(pixels: np.ndarray, scale: float) -> np.ndarray:
    return (np.asarray(pixels, np.float64) / 65535.0 * 2.0 - 1.0) * scale


def _write_png(path: Path, image: np.ndarray) -> Path:
    # OpenCV writes BGR; the maps are RGB (x, y, z).
    image = image[..., ::-1] if image.ndim == 3 and image.shape[-1] == 3 else image
    if not cv2.imwrite(str(path), np.ascontiguousarray(image)):
        raise OSError(f"could not write {path}")
    return path


def export_detail(
    out_dir: str | Path,
    face_model: FaceModel,
    layout: DetailLayout,
    detail: HRNDetailOutput,
    index: int = 0,
    max_deformation: float = 0.1,
    max_displacement: float = 0.01,
) -> dict[str, Path]:
    """Write face ``index`` of an `HRNDetail` output; returns the paths by `DETAIL_FILES` key.

    The mesh is the deformed 3DMM subdivided once (each triangle into four) and displaced along its normals by
    the displacement map, in model space (decimetres), with the model's triangles' orientation.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        deformed = detail.deformed[index : index + 1].float().cpu()
        displacement = detail.displacement[index : index + 1].float().cpu()
        deformation = detail.deformation[index : index + 1].float().cpu()
        cpu_layout = layout.to("cpu")
        fine = subdivide(deformed, face_model.triangles.cpu(), cpu_layout.uvs, cpu_layout.uv_faces)
        vertices = displace_mesh(fine, displacement)[0].numpy()
        atlas = cpu_layout.high
        base = F.normalize(position_map(vertex_normals(deformed, atlas.triangles), atlas), dim=1)
        normals = F.normalize(base + detail_normal_map(deformed, displacement, cpu_layout), dim=1)
        normals = normals * atlas.mask.to(normals.dtype)
    paths = {
        "mesh_obj": write_obj(out / DETAIL_FILES["mesh_obj"], vertices, fine.triangles.numpy()),
        # Uniform grey: the detail is in the geometry, and a viewer's shading shows it.
        "mesh_ply": write_ply(
            out / DETAIL_FILES["mesh_ply"], vertices, fine.triangles.numpy(), np.full_like(vertices, 0.75)
        ),
        "deformation": _write_png(
            out / DETAIL_FILES["deformation"],
            encode_signed_16bit(deformation[0].permute(1, 2, 0).numpy(), max_deformation),
        ),
        "displacement": _write_png(
            out / DETAIL_FILES["displacement"], encode_signed_16bit(displacement[0, 0].numpy(), max_displacement)
        ),
        "normal_map": _write_png(
            out / DETAIL_FILES["normal_map"], encode_signed_16bit(normals[0].permute(1, 2, 0).numpy(), 1.0)
        ),
        "texture": _write_png(
            out / DETAIL_FILES["texture"],
            np.rint(detail.high_input.texture[index].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255)
            .astype(np.uint8)
            .copy(),
        ),
    }
    scales = {
        "deformation": max_deformation,
        "displacement": max_displacement,
        "normal_map": 1.0,
        "units": "decimetres (model space)",
        "decode": "value = (pixel / 65535 * 2 - 1) * scale; row 0 is v = 1",
        "visible_share": float(detail.high_input.visible_share[index]),
    }
    paths["scales"] = out / DETAIL_FILES["scales"]
    paths["scales"].write_text(json.dumps(scales, indent=2) + "\n")
    return paths
