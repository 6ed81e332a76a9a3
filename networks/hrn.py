"""HRN's detail networks (Lei et al. 2023): image-to-image networks in UV on top of R-Net's morphable model.

- mid frequency: `DeformationNet` maps the photo unwrapped into UV (texture and visibility, 64x64) and the
  3DMM's position map to a 3-channel deformation map, applied as per-vertex offsets in model space;
- high frequency: `DisplacementNet` maps the photo unwrapped through the deformed mesh (128x128 here, 256 in
  the paper) and the deformed position map to a 1-channel displacement along the normals, used for per-pixel
  normals in shading.

Both are small U-Nets whose last layer starts at zero, so an untrained HRN is exactly its 3DMM.
`HRNDetail.forward` runs the whole hierarchy for given coefficients; rendering and losses are elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from face_model.coefficients import Coefficients
from face_model.model import FaceModel
from renderers.camera import PinholeCamera, euler_to_rotation, model_to_camera, rigid_transform
from renderers.detail_renderer import DetailLayout, deform_vertices
from renderers.uv import Unwrapped, UnwrapSettings, position_map, unwrap_image


@dataclass(frozen=True)
class HRNSettings:
    """Sizes of HRN's detail networks.

    widths: channels of the U-Nets' levels (each level halves the resolution)
    max_deformation: bound of the deformation offsets (tanh-scaled), decimetres (0.1 = 1 cm)
    max_displacement: bound of the displacement, decimetres (0.01 = 1 mm)
    """

    widths: tuple[int, ...] = (16, 32, 64)
    max_deformation: float = 0.1
    max_displacement: float = 0.01
    unwrap: UnwrapSettings = UnwrapSettings()


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.GroupNorm(min(8, c_out), c_out),
        nn.LeakyReLU(0.2),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.LeakyReLU(0.2),
    )


class SmallUNet(nn.Module):
    """(B, C_in, S, S) -> (B, C_out, S, S) bounded by ``scale`` (tanh); S divisible by 2^(levels - 1).

    The output layer starts at zero, so the first prediction is an exact zero map.
    """

    def __init__(self, c_in: int, c_out: int, widths: tuple[int, ...], scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.down = nn.ModuleList()
        previous = c_in
        for width in widths:
            self.down.append(_block(previous, width))
            previous = width
        self.up = nn.ModuleList(_block(widths[k + 1] + widths[k], widths[k]) for k in range(len(widths) - 1))
        self.out = nn.Conv2d(widths[0], c_out, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        if size % 2 ** (len(self.down) - 1):
            raise ValueError(f"map side {size} must be divisible by {2 ** (len(self.down) - 1)}")
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else nn.functional.avg_pool2d(x, 2))
            skips.append(x)
        for k in reversed(range(len(self.up))):
            x = nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = self.up[k](torch.cat([x, skips[k]], dim=1))
        return self.scale * torch.tanh(self.out(x))


N_INPUTS = 7
"""Unwrapped texture (3), visibility (1), position map (3)."""


@dataclass(frozen=True)
class HRNDetailOutput:
    """HRN's detail layers for a batch.

    deformation:   (B, 3, Sm, Sm) model-space offsets in UV, decimetres
    displacement:  (B, 1, Sh, Sh) displacement along the normals in UV, decimetres
    vertices:      (B, V, 3) model-space vertices of the 3DMM
    deformed:      (B, V, 3) the same plus the deformation
    mid_input:     `Unwrapped` photo at the deformation maps' resolution (through the 3DMM)
    high_input:    `Unwrapped` photo at the displacement maps' resolution (through the deformed mesh)
    """

    deformation: torch.Tensor
    displacement: torch.Tensor
    vertices: torch.Tensor
    deformed: torch.Tensor
    mid_input: Unwrapped
    high_input: Unwrapped


def posed_camera_vertices(vertices: torch.Tensor, coeffs: Coefficients, camera: PinholeCamera) -> torch.Tensor:
    """(B, V, 3) model-space vertices -> camera space under ``coeffs``' pose."""
    return model_to_camera(
        rigid_transform(vertices, euler_to_rotation(coeffs.angles), coeffs.translation), camera.camera_distance
    )


class HRNDetail(nn.Module):
    """The mid and high layers of HRN for a face model with a UV layout.

    Args:
        face_model: the morphable model R-Net predicts (a submodule, so it moves with the networks).
        layout: its UV layout at the two map sizes (`renderers.detail_renderer.DetailLayout`).
        camera: the crops' camera.
        settings: network sizes and bounds.
    """

    def __init__(
        self, face_model: FaceModel, layout: DetailLayout, camera: PinholeCamera, settings: HRNSettings = HRNSettings()
    ) -> None:
        super().__init__()
        self.face_model = face_model
        self.layout = layout
        self.camera = camera
        self.settings = settings
        self.deformation_net = SmallUNet(N_INPUTS, 3, settings.widths, settings.max_deformation)
        self.displacement_net = SmallUNet(N_INPUTS, 1, settings.widths, settings.max_displacement)

    def _apply(self, fn, *args, **kwargs):
        # The layout's tables are plain tensors (not buffers): move them with the module.
        out = super()._apply(fn, *args, **kwargs)
        self.layout = self.layout.to(self.face_model.mean_shape.device)
        return out

    def forward(self, images: torch.Tensor, coeffs: Coefficients, backend: str = "auto") -> HRNDetailOutput:
        """(B, 3, H, W) crops and their R-Net coefficients -> the detail maps."""
        layout, unwrap = self.layout, self.settings.unwrap
        vertices = self.face_model.shape(coeffs)
        mid_input = unwrap_image(
            images, posed_camera_vertices(vertices, coeffs, self.camera), self.camera, layout.mid, unwrap, backend
        )
        x = torch.cat([mid_input.texture, mid_input.visibility, position_map(vertices, layout.mid)], dim=1)
        deformation = self.deformation_net(x)
        deformed = deform_vertices(vertices, deformation, layout)
        # The high layer reads the deformed mesh as data: its loss should not move the mid layer through it.
        seen = deformed.detach()
        high_input = unwrap_image(
            images, posed_camera_vertices(seen, coeffs, self.camera), self.camera, layout.high, unwrap, backend
        )
        x = torch.cat([high_input.texture, high_input.visibility, position_map(seen, layout.high)], dim=1)
        displacement = self.displacement_net(x)
        return HRNDetailOutput(deformation, displacement, vertices, deformed, mid_input, high_input)
