"""Rendering a morphable-model face with HRN's two detail layers: a deformation map (3 channels in UV, per-vertex
offsets in model space) and a displacement map (1 channel in UV, along the normals, shading through per-pixel
normals). The same function renders the synthetic detail ground truth and HRN's predictions, so both go through
one renderer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from face_model.coefficients import Coefficients
from face_model.model import FaceModel
from geometry.normals import vertex_normals
from renderers.camera import PinholeCamera, euler_to_rotation, model_to_camera, rigid_transform, to_screen
from renderers.lighting import DEFAULT_AMBIENT, shade
from renderers.rasterizer import interpolate, rasterize
from renderers.texture import interpolate_uv, sample_texture
from renderers.uv import UVAtlas, displaced_normal_map, position_map, sample_uv_map


@dataclass(frozen=True)
class DetailRender:
    """A face rendered with its detail layers.

    image:      (B, 3, H, W) SH-shaded face with per-pixel normals, 0 on the background
    mask:       (B, 1, H, W) 1 on face pixels
    normals:    (B, 3, H, W) unit per-pixel normals in posed model space (0 on the background)
    depth:      (B, 1, H, W) camera depth of the surface (displacement included), 0 on the background
    landmarks:  (B, 68, 2) projected landmarks, pixels
    vertices:   (B, V, 3) model-space vertices after the deformation (before pose)
    vertices_camera: (B, V, 3) the same posed, in camera space
    """

    image: torch.Tensor
    mask: torch.Tensor
    normals: torch.Tensor
    depth: torch.Tensor
    landmarks: torch.Tensor
    vertices: torch.Tensor
    vertices_camera: torch.Tensor


@dataclass(frozen=True, eq=False)
class DetailLayout:
    """What the detail renderer needs of a face model's UV layout.

    uvs:       (T, 2) texture coordinates, OBJ convention
    uv_faces:  (F, 3) uv ids of each triangle's corners
    mid:       `UVAtlas` of the deformation maps
    high:      `UVAtlas` of the displacement maps
    """

    uvs: torch.Tensor
    uv_faces: torch.Tensor
    mid: UVAtlas
    high: UVAtlas

    def to(self, device: torch.device | str) -> DetailLayout:
        return DetailLayout(self.uvs.to(device), self.uv_faces.to(device), self.mid.to(device), self.high.to(device))


def deform_vertices(vertices: torch.Tensor, deformation: torch.Tensor | None, layout: DetailLayout) -> torch.Tensor:
    """(B, V, 3) model-space vertices plus the (B, 3, S, S) deformation map sampled at each vertex's uv."""
    if deformation is None:
        return vertices
    return vertices + sample_uv_map(deformation, layout.mid.vertex_uv)


def detail_normal_map(vertices: torch.Tensor, displacement: torch.Tensor, layout: DetailLayout) -> torch.Tensor:
    """(B, 3, S, S) model-space unit normals of the surface displaced by a (B, 1, S, S) map, minus those of the
    undisplaced surface (both from the same finite differences, so a zero map gives exactly zero): the offset that
    turns an interpolated normal into the detailed one."""
    atlas = layout.high
    positions = position_map(vertices, atlas)
    base = F.normalize(position_map(vertex_normals(vertices, atlas.triangles), atlas), dim=1)
    base = base * atlas.mask.to(base.dtype)
    displaced = displaced_normal_map(positions, base, displacement, atlas.mask)
    return displaced - displaced_normal_map(positions, base, torch.zeros_like(displacement), atlas.mask)


def render_detailed(
    face_model: FaceModel,
    coeffs: Coefficients,
    camera: PinholeCamera,
    layout: DetailLayout,
    deformation: torch.Tensor | None = None,
    displacement: torch.Tensor | None = None,
    backend: str = "auto",
    ambient: float = DEFAULT_AMBIENT,
) -> DetailRender:
    """Render ``coeffs`` with optional detail layers (the face model's own SH look, per-pixel shading).

    Args:
        deformation: (B, 3, Sm, Sm) model-space offsets (decimetres) in UV, or None (the 3DMM alone).
        displacement: (B, 1, Sh, Sh) displacement along the normals (decimetres) in UV, or None.
    """
    mesh = face_model(coeffs)
    vertices = deform_vertices(mesh.vertices, deformation, layout)
    triangles = face_model.triangles
    rotation = euler_to_rotation(coeffs.angles)
    posed = rigid_transform(vertices, rotation, coeffs.translation)
    vertices_camera = model_to_camera(posed, camera.camera_distance)
    screen = to_screen(vertices_camera, camera)
    fragments = rasterize(screen, triangles, camera.image_size, backend=backend)
    mask = fragments.mask.unsqueeze(-1)
    normals = interpolate(vertex_normals(posed, triangles), triangles, fragments)
    albedo = interpolate(mesh.albedo, triangles, fragments)
    depth = fragments.depth.unsqueeze(-1)
    if displacement is not None:
        uv = interpolate_uv(layout.uvs, layout.uv_faces, fragments)
        offset = sample_texture(detail_normal_map(vertices, displacement, layout), uv, fragments.mask)
        # The offset lives in model space; the pose rotates it like the normals.
        normals = normals + offset @ rotation.transpose(1, 2).unsqueeze(1)
        height = sample_texture(displacement, uv, fragments.mask)
        # Moving along the outward normal brings the surface nearer the camera by the normal's z (posed space).
        depth = depth - height * F.normalize(normals, dim=-1)[..., 2:3]
    normals = F.normalize(normals, dim=-1) * mask
    batch, height_px, width_px = fragments.pix_to_face.shape
    colour = shade(albedo.reshape(batch, -1, 3), normals.reshape(batch, -1, 3), coeffs.lighting, ambient)
    image = colour.reshape(batch, height_px, width_px, 3) * mask
    return DetailRender(
        image=image.permute(0, 3, 1, 2),
        mask=mask.permute(0, 3, 1, 2).to(image.dtype),
        normals=normals.permute(0, 3, 1, 2),
        depth=(depth * mask).permute(0, 3, 1, 2),
        landmarks=face_model.landmarks(screen)[..., :2],
        vertices=vertices,
        vertices_camera=vertices_camera,
    )
