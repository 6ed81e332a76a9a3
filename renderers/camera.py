"""Pinhole camera and rigid pose, as pure functions.

Scene conventions follow Deep3DFaceRecon so that its checkpoints keep their meaning:

* model space: +x to the subject's left (image right), +y up, +z towards the camera; units are
  decimetres (BFM front as Deep3D stores it; the ICT model is rescaled from cm);
* pose: ``v' = R v + t`` with ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``;
* the camera sits at ``z = camera_distance`` (10) on the +z axis looking down -z, focal 1015 px,
  principal point (112, 112) on a 224x224 crop.

Camera space here is OpenCV's (x right, y down, z forward = depth), so pixel coordinates are
``u = f x / z + cx`` and ``v = f y / z + cy`` with the origin at the top-left corner of the image and
pixel ``(row i, col j)`` centred at ``(j + 0.5, i + 0.5)``. Deep3D's image y axis points up; its
landmarks relate to ours by ``v = H - v_deep3d``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics and placement of the fixed virtual camera (Deep3D defaults)."""

    focal: float = 1015.0
    principal_point: tuple[float, float] = (112.0, 112.0)
    image_size: tuple[int, int] = (224, 224)
    """(height, width) in pixels."""
    camera_distance: float = 10.0
    """Distance of the camera centre from the model-space origin, in model units."""

    def __post_init__(self) -> None:
        if self.focal <= 0 or self.camera_distance <= 0:
            raise ValueError(f"focal and camera_distance must be positive, got {self}")
        if min(self.image_size) <= 0:
            raise ValueError(f"image_size must be positive (height, width), got {self.image_size}")

    def intrinsics(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """(3, 3) matrix K mapping camera space to homogeneous pixel coordinates."""
        cx, cy = self.principal_point
        return torch.tensor([[self.focal, 0.0, cx], [0.0, self.focal, cy], [0.0, 0.0, 1.0]], device=device, dtype=dtype)

    def resized(self, height: int, width: int) -> PinholeCamera:
        """The same view rendered at another resolution (focal and principal point scale along)."""
        sy, sx = height / self.image_size[0], width / self.image_size[1]
        if abs(sx - sy) > 1e-6:
            raise ValueError("resizing must keep the aspect ratio")
        cx, cy = self.principal_point
        return PinholeCamera(self.focal * sx, (cx * sx, cy * sy), (height, width), self.camera_distance)


def euler_to_rotation(angles: torch.Tensor) -> torch.Tensor:
    """(..., 3) Euler angles (pitch x, yaw y, roll z) in radians -> (..., 3, 3) ``Rz @ Ry @ Rx``."""
    x, y, z = angles.unbind(-1)
    cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()
    # The product Rz Ry Rx written out, so no intermediate matrices are built.
    rows = [
        cz * cy,
        cz * sy * sx - sz * cx,
        cz * sy * cx + sz * sx,
        sz * cy,
        sz * sy * sx + cz * cx,
        sz * sy * cx - cz * sx,
        -sy,
        cy * sx,
        cy * cx,
    ]
    return torch.stack(rows, dim=-1).reshape(*angles.shape[:-1], 3, 3)


def rigid_transform(points: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) points, (B, 3, 3) rotation, (B, 3) translation -> (B, N, 3) ``R p + t``."""
    return points @ rotation.transpose(-1, -2) + translation.unsqueeze(-2)


def model_to_camera(points: torch.Tensor, camera_distance: float) -> torch.Tensor:
    """(..., 3) posed model-space points -> (..., 3) OpenCV camera space (z = depth)."""
    x, y, z = points.unbind(-1)
    return torch.stack([x, -y, camera_distance - z], dim=-1)


def project(points_cam: torch.Tensor, camera: PinholeCamera) -> torch.Tensor:
    """(..., 3) camera-space points -> (..., 2) pixel coordinates (x right, y down).

    Points at or behind the camera have no image; callers cull them (the rasterizer does).
    """
    cx, cy = camera.principal_point
    xy = points_cam[..., :2] / points_cam[..., 2:3]
    return torch.stack([camera.focal * xy[..., 0] + cx, camera.focal * xy[..., 1] + cy], dim=-1)


def to_screen(points_cam: torch.Tensor, camera: PinholeCamera) -> torch.Tensor:
    """(..., 3) camera-space points -> (..., 3) (pixel x, pixel y, depth), the rasterizer's input."""
    return torch.cat([project(points_cam, camera), points_cam[..., 2:3]], dim=-1)
