"""Coefficients -> shaded image, face mask and projected landmarks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from errors import InvalidInputError
from face_model.coefficients import Coefficients
from face_model.model import FaceModel
from geometry.normals import vertex_normals
from renderers.camera import PinholeCamera, euler_to_rotation, model_to_camera, rigid_transform, to_screen
from renderers.lighting import DEFAULT_AMBIENT, shade
from renderers.rasterizer import interpolate, rasterize
from renderers.rasterizer.rasterize import BACKENDS


@dataclass(frozen=True)
class RenderOutput:
    """What `MeshRenderer` produces for a batch.

    image:           (B, 3, H, W) shaded face, linear RGB nominally in [0, 1]; 0 on the background
    mask:            (B, 1, H, W) 1 where the face covers the pixel, else 0 (not differentiable)
    landmarks:       (B, 68, 2) projected landmark pixel coordinates (x right, y down)
    vertices_camera: (B, V, 3) posed vertices in OpenCV camera space (z = depth)
    vertex_colors:   (B, V, 3) shaded per-vertex colours
    albedo:          (B, V, 3) per-vertex reflectance
    """

    image: torch.Tensor
    mask: torch.Tensor
    landmarks: torch.Tensor
    vertices_camera: torch.Tensor
    vertex_colors: torch.Tensor
    albedo: torch.Tensor


class MeshRenderer(nn.Module):
    """Coefficients -> posed, shaded and rasterized face (Gouraud shading of per-vertex SH colour, as
    Deep3DFaceRecon does).

    Args:
        face_model: the morphable model (a submodule, so ``.to(device)`` moves its buffers).
        camera: intrinsics, image size and camera distance.
        backend: rasterizer backend, ``"auto"``, ``"torch"`` or ``"pytorch3d"``.
        ambient: default ambient SH term that lighting coefficients are offsets from.
    """

    def __init__(
        self,
        face_model: FaceModel,
        camera: PinholeCamera = PinholeCamera(),
        backend: str = "auto",
        ambient: float = DEFAULT_AMBIENT,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise InvalidInputError(f"unknown rasterizer backend {backend!r}; choose one of {BACKENDS}")
        self.face_model = face_model
        self.camera = camera
        self.backend = backend
        self.ambient = ambient

    def pose(self, vertices: torch.Tensor, coeffs: Coefficients) -> torch.Tensor:
        """(B, V, 3) model-space vertices -> (B, V, 3) posed model space (before the camera flip)."""
        return rigid_transform(vertices, euler_to_rotation(coeffs.angles), coeffs.translation)

    def forward(self, coeffs: Coefficients, camera: PinholeCamera | None = None) -> RenderOutput:
        camera = camera or self.camera
        mesh = self.face_model(coeffs)
        posed = self.pose(mesh.vertices, coeffs)
        triangles = self.face_model.triangles
        colors = shade(mesh.albedo, vertex_normals(posed, triangles), coeffs.lighting, self.ambient)
        vertices_camera = model_to_camera(posed, camera.camera_distance)
        screen = to_screen(vertices_camera, camera)
        fragments = rasterize(screen, triangles, camera.image_size, backend=self.backend)
        image = interpolate(colors, triangles, fragments).permute(0, 3, 1, 2)
        return RenderOutput(
            image=image,
            mask=fragments.mask.unsqueeze(1).to(image.dtype),
            landmarks=self.face_model.landmarks(screen)[..., :2],
            vertices_camera=vertices_camera,
            vertex_colors=colors,
            albedo=mesh.albedo,
        )

    def project_landmarks(self, coeffs: Coefficients, camera: PinholeCamera | None = None) -> torch.Tensor:
        """(B, 68, 2) landmark pixels without rasterizing (cheap; for landmark-only fitting)."""
        camera = camera or self.camera
        vertices = self.face_model.shape(coeffs)[:, self.face_model.landmark_ids]
        posed = self.pose(vertices, coeffs)
        return to_screen(model_to_camera(posed, camera.camera_distance), camera)[..., :2]
