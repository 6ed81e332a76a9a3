"""Photo-like pictures of a textured scan (`benchmarks.textured_scan.TexturedScan`) at chosen poses and lights.

The scan is turned into the face model's frame (`frontal_transform`: x to the image right, y up, z towards the
camera), posed like the face model is (``R = Rz(roll) Ry(yaw) Rx(pitch)`` about the model origin, which sits
at the mean face's centre), put in front of the project's pinhole camera (`renderers.camera`, 1 m away) and
rasterized (`renderers.rasterizer`). Each pixel takes the scan's texture (`renderers.texture`), which already
holds the light of the scan session, times a simple light: an RGB ambient term plus one RGB directional light
on the interpolated vertex normal (Lambert), over a vertical gradient background. Pure functions of the
scan, the pose and the light: no randomness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.textured_scan import TexturedScan
from geometry.normals import vertex_normals
from geometry.similarity import SimilarityTransform
from metrics import DM_TO_MM
from renderers.camera import PinholeCamera, euler_to_rotation, model_to_camera, to_screen
from renderers.rasterizer import interpolate, rasterize
from renderers.texture import texture_image


@dataclass(frozen=True)
class Light:
    """An RGB ambient term plus one RGB directional light.

    name:      short key for tables.
    ambient:   RGB factor on the texture everywhere.
    colour:    RGB factor of the directional light, times max(0, n . direction).
    direction: towards the light, in the camera-facing model frame (x image right, y up, z towards the camera);
               normalised when used.
    """

    name: str
    ambient: tuple[float, float, float]
    colour: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, float, float] = (0.0, 0.0, 1.0)


LIGHTS: dict[str, Light] = {
    "key": Light("key", ambient=(0.45, 0.45, 0.45), colour=(0.75, 0.75, 0.75), direction=(-0.6, 0.5, 1.0)),
    "coloured": Light("coloured", ambient=(0.25, 0.3, 0.45), colour=(1.0, 0.75, 0.45), direction=(0.8, 0.1, 0.7)),
    "flat": Light("flat", ambient=(1.0, 1.0, 1.0)),
}
"""A white key light from the upper image left with ambient fill, a warm light from the image right with a
cool ambient, and flat ambient light (the texture as photographed)."""


@dataclass(frozen=True)
class ScanRenderSettings:
    """Camera and background of `render_scan`.

    image_size: square picture side in pixels.
    focal:      focal length in pixels; with the camera 1 m away, 1200 px at 512 makes the face (eyebrows to
                chin) some 140 px tall, a head-and-shoulders portrait.
    background_top, background_bottom: RGB in [0, 1] of the vertical gradient behind the head.
    """

    image_size: int = 512
    focal: float = 1200.0
    background_top: tuple[float, float, float] = (0.78, 0.80, 0.84)
    background_bottom: tuple[float, float, float] = (0.42, 0.44, 0.50)

    @property
    def camera(self) -> PinholeCamera:
        half = self.image_size / 2.0
        return PinholeCamera(self.focal, (half, half), (self.image_size, self.image_size))


@dataclass(frozen=True)
class PreparedScan:
    """The scan as tensors in the face model's frame, built once for many renders (`prepare_scan`).

    vertices: (V, 3) float32, model frame, decimetres; faces, uv_faces: (F, 3) long; uvs: (T, 2) float32;
    texture: (3, H, W) float32 in [0, 1]
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    uvs: torch.Tensor
    uv_faces: torch.Tensor
    texture: torch.Tensor


def prepare_scan(scan: TexturedScan, frontal: SimilarityTransform) -> PreparedScan:
    """Tensors of ``scan`` turned into the model frame by ``frontal`` (scan mm -> model-frame mm)."""
    vertices = frontal.apply(scan.vertices) / DM_TO_MM
    return PreparedScan(
        torch.as_tensor(vertices, dtype=torch.float32),
        torch.as_tensor(scan.faces).long(),
        torch.as_tensor(scan.uvs, dtype=torch.float32),
        torch.as_tensor(scan.uv_faces).long(),
        torch.from_numpy(np.ascontiguousarray(scan.texture.transpose(2, 0, 1))).float() / 255.0,
    )


def render_scan(
    prepared: PreparedScan,
    pitch_deg: float,
    yaw_deg: float,
    light: Light,
    settings: ScanRenderSettings = ScanRenderSettings(),
) -> np.ndarray:
    """(S, S, 3) uint8 RGB picture of the scan at the pose under ``light``. Angles in degrees, as the face model's
    pose: positive yaw turns the nose towards the image right, positive pitch turns it down."""
    camera = settings.camera
    angles = torch.tensor([[math.radians(pitch_deg), math.radians(yaw_deg), 0.0]])
    rotation = euler_to_rotation(angles)[0]
    posed = (prepared.vertices @ rotation.T)[None]
    screen = to_screen(model_to_camera(posed, camera.camera_distance), camera)
    with torch.no_grad():
        fragments = rasterize(screen, prepared.faces, camera.image_size, backend="torch")
        albedo = texture_image(prepared.texture, prepared.uvs, prepared.uv_faces, fragments)[0]  # (S, S, 3)
        normals = F.normalize(interpolate(vertex_normals(posed, prepared.faces), prepared.faces, fragments)[0], dim=-1)
        direction = F.normalize(torch.tensor(light.direction, dtype=torch.float32), dim=0)
        lambert = (normals @ direction).clamp(min=0.0)[..., None]
        shaded = albedo * (torch.tensor(light.ambient) + lambert * torch.tensor(light.colour))
        size = settings.image_size
        t = ((torch.arange(size, dtype=torch.float32) + 0.5) / size)[:, None, None]
        background = (1 - t) * torch.tensor(settings.background_top) + t * torch.tensor(settings.background_bottom)
        mask = fragments.mask[0, ..., None]
        image = torch.where(mask, shaded, background.expand(size, size, 3))
    return (image.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).numpy()
