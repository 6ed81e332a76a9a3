"""R-Net training (Deng et al. 2019 §4): R-Net -> face model -> renderer -> hybrid loss.

The module is thin: the networks, renderer and loss are plain PyTorch built elsewhere
(`experiments.build`) and handed in; a step is one core forward, the loss dict and logging.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torchmetrics.regression import PearsonCorrCoef

from datamodules.batch import FaceBatch
from face_model.coefficients import Coefficients
from losses.hybrid import HybridLoss
from losses.photometric import skin_attention
from metrics import FractionCloser, LandmarkError, ShapeError
from networks.rnet import RNet
from renderers.mesh_renderer import MeshRenderer, RenderOutput

IDENTITY_MODES = 10
"""Identity coefficients (the strongest modes) whose correlation with the truth the test reports."""


@dataclass(frozen=True)
class OptimSettings:
    """Adam with step decay, as Deep3DFaceRecon ('step' policy); the ``optim`` section of the experiment config.

    lr:                learning rate.
    lr_step_epochs:    the learning rate is multiplied by ``lr_gamma`` every this many epochs (used when
                       ``lr_step_steps`` is None).
    lr_step_steps:     step decay period in optimisation steps; replaces ``lr_step_epochs`` when set. A run bounded
                       by ``trainer.max_steps`` should decay by steps, so the schedule does not depend on the epoch
                       length.
    lr_gamma:          decay factor.
    weight_decay:      Adam's weight decay.
    identity_lr_scale: R-Net only: the identity head learns at ``lr * identity_lr_scale`` (1 = the paper). Adam's
                       steps are normalised by the gradient's size, and identity's share of the weak loss's
                       gradient is small and noisy, so at 1 the head moves slowly; C-Net runs ignore it.
    """

    lr: float = 1e-4
    lr_step_epochs: int = 10
    lr_step_steps: int | None = None
    lr_gamma: float = 0.2
    weight_decay: float = 0.0
    identity_lr_scale: float = 1.0


@dataclass(frozen=True)
class Prediction:
    """R-Net's reconstruction of a batch.

    coeffs: predicted `Coefficients`
    render: the `RenderOutput` of those coefficients
    """

    coeffs: Coefficients
    render: RenderOutput


class RNetModule(pl.LightningModule):
    """Trains R-Net with the hybrid loss; validation/test log landmark error and, when the data has 3D
    ground truth, the shape error in mm after rigid alignment next to the mean-face baseline.

    Args:
        rnet: the coefficient regressor.
        renderer: `MeshRenderer` holding the face model.
        loss: `HybridLoss`.
        optim: optimiser settings.
        use_skin_attention: False uses attention 1 on every face pixel (the paper's Fig. 2 ablation).
        channels_last: feed R-Net channels-last images (faster convolutions on recent GPUs).
        config: the experiment config as plain YAML text, stored in checkpoints so that a checkpoint
            alone rebuilds its model (`experiments.build.load_rnet_checkpoint`).
    """

    def __init__(
        self,
        rnet: RNet,
        renderer: MeshRenderer,
        loss: HybridLoss,
        optim: OptimSettings = OptimSettings(),
        use_skin_attention: bool = True,
        channels_last: bool = False,
        config: str = "",
    ) -> None:
        super().__init__()
        self.rnet = rnet
        self.renderer = renderer
        self.loss = loss
        self.optim = optim
        self.use_skin_attention = use_skin_attention
        self.channels_last = channels_last
        self.config_yaml = config
        if channels_last:
            self.rnet.to(memory_format=torch.channels_last)
        self.val_shape_error = ShapeError("rigid")
        self.val_mean_face_error = ShapeError("rigid")
        self.val_landmark_error = LandmarkError()
        self.val_better_than_mean_face = FractionCloser("rigid")
        self.test_shape_error = ShapeError("rigid")
        self.test_mean_face_error = ShapeError("rigid")
        self.test_landmark_error = LandmarkError()
        self.test_better_than_mean_face = FractionCloser("rigid")
        # How much identity R-Net learned, which the shape error mixes with expression: the correlation of the
        # strongest identity coefficients with the truth, one per mode, reported as their mean.
        self.identity_modes = min(IDENTITY_MODES, rnet.layout.n_id)
        self.test_identity_r = PearsonCorrCoef(num_outputs=self.identity_modes) if self.identity_modes > 1 else None

    @property
    def face_model(self):
        return self.renderer.face_model

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> Prediction:
        """(B, 3, S, S) crops in [0, 1] and their (B, 68, 2) landmarks in crop pixels (needed only by an R-Net
        with landmark input) -> coefficients and their render."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        coeffs = self.rnet(images, landmarks).coeffs
        # Geometry, shading and rasterization stay in float32 under mixed precision: depth ordering and
        # barycentrics lose too much in half precision.
        coeffs = coeffs.to(torch.float32)
        with torch.autocast(device_type=images.device.type, enabled=False):
            render = self.renderer(coeffs)
        return Prediction(coeffs=coeffs, render=render)

    def compute_losses(self, batch: FaceBatch, prediction: Prediction) -> dict[str, torch.Tensor]:
        attention = skin_attention(batch.skin) if self.use_skin_attention else torch.ones_like(batch.skin)
        with torch.autocast(device_type=batch.images.device.type, enabled=False):
            return self.loss(
                images=batch.images.float(),
                render=prediction.render,
                target_landmarks=batch.landmarks,
                skin_attention=attention,
                coeffs=prediction.coeffs,
            )

    def training_step(self, batch: FaceBatch, batch_idx: int) -> torch.Tensor:
        losses = self.compute_losses(batch, self(batch.images, batch.landmarks))
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=batch.batch_size)
        self.log("train/loss", losses["total"], prog_bar=True, batch_size=batch.batch_size, logger=False)
        return losses["total"]

    def _evaluate(self, batch: FaceBatch, stage: str) -> Prediction:
        prediction = self(batch.images, batch.landmarks)
        losses = self.compute_losses(batch, prediction)
        self.log_dict({f"{stage}/{k}": v for k, v in losses.items()}, batch_size=batch.batch_size, sync_dist=True)
        landmark_metric = getattr(self, f"{stage}_landmark_error")
        landmark_metric(prediction.render.landmarks, batch.landmarks)
        self.log(f"{stage}/landmark_error_px", landmark_metric, batch_size=batch.batch_size)
        if batch.ground_truth is not None:
            # Outside autocast: the shape error is a sub-millimetre float32 measurement (see `forward`).
            shape_metric = getattr(self, f"{stage}_shape_error")
            baseline_metric = getattr(self, f"{stage}_mean_face_error")
            closer_metric = getattr(self, f"{stage}_better_than_mean_face")
            with torch.autocast(device_type=batch.images.device.type, enabled=False):
                predicted = self.face_model.shape(prediction.coeffs)
                mean_face = self.face_model.mean_shape.expand_as(predicted)
                shape_metric(predicted, batch.ground_truth.vertices)
                baseline_metric(mean_face, batch.ground_truth.vertices)
                closer_metric(predicted, mean_face, batch.ground_truth.vertices)
            self.log(f"{stage}/shape_error_mm", shape_metric, batch_size=batch.batch_size, prog_bar=stage == "val")
            self.log(f"{stage}/mean_face_error_mm", baseline_metric, batch_size=batch.batch_size)
            self.log(f"{stage}/better_than_mean_face", closer_metric, batch_size=batch.batch_size)
            if stage == "test" and self.test_identity_r is not None:
                truth = self.face_model.layout.split(batch.ground_truth.coefficients).identity
                self.test_identity_r.update(
                    prediction.coeffs.identity[:, : self.identity_modes].float(),
                    truth[:, : self.identity_modes].float(),
                )
        return prediction

    def on_test_epoch_end(self) -> None:
        if self.test_identity_r is not None and self.test_identity_r.n_total.sum() > 0:
            self.log("test/identity_r", self.test_identity_r.compute().mean())
            self.test_identity_r.reset()

    def validation_step(self, batch: FaceBatch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: FaceBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        identity = self.rnet.head("identity")
        scaled = [] if identity is None or self.optim.identity_lr_scale == 1.0 else list(identity.parameters())
        skip = {id(p) for p in scaled}
        groups = [{"params": [p for p in self.rnet.parameters() if p.requires_grad and id(p) not in skip]}]
        if scaled:
            groups.append({"params": scaled, "lr": self.optim.lr * self.optim.identity_lr_scale})
        optimizer = torch.optim.Adam(groups, lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        by_steps = self.optim.lr_step_steps is not None
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer,
            step_size=self.optim.lr_step_steps if by_steps else self.optim.lr_step_epochs,
            gamma=self.optim.lr_gamma,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step" if by_steps else "epoch"},
        }

    def transfer_batch_to_device(self, batch: FaceBatch, device: torch.device, dataloader_idx: int) -> FaceBatch:
        return batch.to(device, non_blocking=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["face3d_config"] = self.config_yaml
