"""Trains HRN's detail layers on top of a frozen R-Net (thin: the networks, renderer and losses are core code)."""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from datamodules.batch import FaceBatch
from datamodules.detail import DetailBatch
from face_model.coefficients import Coefficients
from geometry.normals import vertex_normals
from losses.hrn import (
    HRNLossWeights,
    contour_loss,
    deformation_magnitude,
    displacement_regularizer,
    edge_weights,
    mask_row_extents,
    reflectance_flatness,
    tv_loss,
)
from losses.hybrid import HybridLoss
from losses.photometric import skin_attention
from networks.hrn import HRNDetail, HRNDetailOutput
from networks.rnet import RNet
from renderers.camera import euler_to_rotation, to_screen
from renderers.detail_renderer import DetailRender, detail_normal_map, render_detailed
from renderers.lighting import irradiance
from renderers.mesh_renderer import RenderOutput
from renderers.uv import position_map

NOSE_TIP = 30
BROWS, CHIN = slice(17, 27), 8


@dataclass(frozen=True)
class HRNPrediction:
    """coeffs: R-Net's coefficients; detail: the detail maps; render: the detailed render of the crops."""

    coeffs: Coefficients
    detail: HRNDetailOutput
    render: DetailRender


class HRNModule(pl.LightningModule):
    """HRN's mid and high layers trained by the shared hybrid loss on the detailed render plus HRN's own terms.

    Args:
        rnet: a trained R-Net (frozen: its coefficients are the low-frequency layer).
        detail: `HRNDetail` (the two U-Nets).
        loss: the shared `HybridLoss` (its regularisation and texture terms see fixed coefficients).
        weights: HRN's own terms.
        lr: Adam learning rate of the detail networks.
        backend: rasterizer backend.
        config: the experiment config as YAML text, kept in checkpoints.
    """

    def __init__(
        self,
        rnet: RNet,
        detail: HRNDetail,
        loss: HybridLoss,
        weights: HRNLossWeights | None = None,
        lr: float = 1e-3,
        backend: str = "auto",
        config: str = "",
    ) -> None:
        super().__init__()
        self.rnet = rnet.eval().requires_grad_(False)
        self.detail = detail
        self.loss = loss
        self.weights = weights if weights is not None else HRNLossWeights()
        self.lr = lr
        self.backend = backend
        self.config_yaml = config

    def train(self, mode: bool = True) -> HRNModule:
        super().train(mode)
        self.rnet.eval()  # frozen, batch-norm statistics included
        return self

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> HRNPrediction:
        with torch.no_grad():
            coeffs = self.rnet(images, landmarks).coeffs.to(torch.float32)
        detail = self.detail(images, coeffs, self.backend)
        render = render_detailed(
            self.detail.face_model,
            coeffs,
            self.detail.camera,
            self.detail.layout,
            detail.deformation,
            detail.displacement,
            self.backend,
        )
        return HRNPrediction(coeffs, detail, render)

    def compute_losses(self, batch: FaceBatch, prediction: HRNPrediction) -> dict[str, torch.Tensor]:
        coeffs, detail, render = prediction.coeffs, prediction.detail, prediction.render
        face_model, layout, camera = self.detail.face_model, self.detail.layout, self.detail.camera
        shared = RenderOutput(
            image=render.image,
            mask=render.mask,
            landmarks=render.landmarks,
            vertices_camera=render.vertices_camera,
            vertex_colors=render.image.new_zeros(()),
            albedo=face_model.albedo(coeffs),
        )
        losses = self.loss(
            images=batch.images,
            render=shared,
            target_landmarks=batch.landmarks,
            skin_attention=skin_attention(batch.skin),
            coeffs=coeffs,
        )
        w = self.weights
        raw = {}
        if w.contour:
            left, right, valid = mask_row_extents(batch.skin)
            # The outline is the cheeks' and jaw's: rows between the brows and the chin of the detected landmarks.
            rows = torch.arange(valid.shape[1], device=valid.device, dtype=batch.landmarks.dtype)[None]
            top = batch.landmarks[:, BROWS, 1].amin(1, keepdim=True)
            bottom = batch.landmarks[:, CHIN, 1].unsqueeze(1)
            valid = valid & (rows >= top) & (rows <= bottom)
            points = to_screen(render.vertices_camera, camera)[..., :2]
            centre = batch.landmarks[:, NOSE_TIP, 0]
            weights = edge_weights(points, *mask_row_extents(render.mask), centre)
            width = float(camera.image_size[1])
            raw["contour"] = contour_loss(points, weights, left, right, valid, centre, width, w.contour_max_gap * width)
        if w.tv:
            raw["tv"] = tv_loss(detail.deformation, layout.mid.mask)
        if w.deformation:
            raw["deformation"] = deformation_magnitude(detail.deformation, layout.mid.mask)
        if w.displacement:
            raw["displacement"] = displacement_regularizer(detail.displacement, layout.high.mask)
        if w.reflectance:
            raw["reflectance"] = reflectance_flatness(
                detail.high_input.texture, self.texel_shading(coeffs, detail), detail.high_input.visibility
            )
        for name, value in raw.items():
            losses[name] = getattr(w, name) * value
            losses[f"raw/{name}"] = value
            losses["total"] = losses["total"] + losses[name]
        return losses

    def texel_shading(self, coeffs: Coefficients, detail: HRNDetailOutput) -> torch.Tensor:
        """(B, 3, S, S) SH irradiance at the displacement map's texels, with the detailed normals."""
        layout = self.detail.layout
        deformed = detail.deformed
        base = F.normalize(position_map(vertex_normals(deformed, layout.high.triangles), layout.high), dim=1)
        normals = F.normalize(base + detail_normal_map(deformed, detail.displacement, layout), dim=1)
        batch, _, size, _ = normals.shape
        posed = normals.flatten(2).transpose(1, 2) @ euler_to_rotation(coeffs.angles).transpose(1, 2)
        return irradiance(posed, coeffs.lighting).transpose(1, 2).reshape(batch, 3, size, size)

    @staticmethod
    def _face_batch(batch: FaceBatch | DetailBatch) -> FaceBatch:
        return batch.face if isinstance(batch, DetailBatch) else batch

    def training_step(self, batch: FaceBatch | DetailBatch, batch_idx: int) -> torch.Tensor:
        face = self._face_batch(batch)
        losses = self.compute_losses(face, self(face.images, face.landmarks))
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=face.batch_size)
        self.log("train/loss", losses["total"], prog_bar=True, batch_size=face.batch_size, logger=False)
        return losses["total"]

    def validation_step(self, batch: FaceBatch | DetailBatch, batch_idx: int) -> None:
        face = self._face_batch(batch)
        losses = self.compute_losses(face, self(face.images, face.landmarks))
        self.log("val/loss", losses["total"], prog_bar=True, batch_size=face.batch_size)

    def configure_optimizers(self):
        return torch.optim.Adam(self.detail.parameters(), lr=self.lr)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        return batch.to(device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["config_yaml"] = self.config_yaml
