"""FOCUS training (Li et al. 2023): the face encoder (an R-Net) and the outlier-segmentation U-Net, in stages.

One module, four stages (`FOCUS_STAGES`), each run by its own `pl.Trainer` (`experiments.train_focus`):

1. ``pretrain_encoder``: the encoder with the outlier-robust photometric loss (`losses.focus`), which ignores
   pixels beyond a fixed threshold instead of weighting them by the skin posterior;
2. ``pretrain_unet``: the U-Net learns the robust loss's inlier masks (the pseudo-masks, computed on the fly
   from the frozen pre-trained encoder, with the misfit prior estimated between stages 1 and 2);
3. ``em_unet``: the U-Net with FOCUS's unsupervised segmentation terms, the encoder frozen;
4. ``em_encoder``: the encoder with the photometric term weighted by the U-Net's mask and the area term, the
   U-Net frozen (but differentiable in its input: the area term reaches the encoder through the render).

Stages 3 and 4 alternate for ``FocusSettings.em_rounds`` rounds. A step is the core forward, the loss dict
and logging; nothing is read back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
import torch

from datamodules.occlusion import FocusBatch
from lightning_modules.rnet_module import Prediction
from losses.focus import (
    FocusLossWeights,
    area_loss,
    estimate_misfit_prior,
    pseudo_mask_loss,
    residual,
    robust_photometric_loss,
    segmentation_losses,
)
from losses.hybrid import HybridLoss
from metrics import ShapeError
from metrics.segmentation import MaskScores
from networks.rnet import RNet
from networks.segmentation import SegmentationUNet
from renderers.mesh_renderer import MeshRenderer

FOCUS_STAGES = ("pretrain_encoder", "pretrain_unet", "em_unet", "em_encoder")


@dataclass(frozen=True)
class FocusSettings:
    """FOCUS's schedule and optimisation (every default here).

    Steps per stage: ``pretrain_encoder_steps``, ``pretrain_unet_steps``, then ``em_rounds`` rounds of
    ``em_unet_steps`` (U-Net) and ``em_encoder_steps`` (encoder). FOCUS's reference code trains on CelebA for
    300k encoder steps, 30k U-Net steps, then cycles of 5k U-Net and 25k encoder steps; these defaults are that
    schedule shrunk to a CPU budget, starting from a trained R-Net instead of from scratch.

    encoder_lr, unet_lr: Adam learning rates (FOCUS: Adadelta; Adam is this project's optimiser);
    em_unet_lr: the U-Net's rate in the EM stage, 10x lower than in pre-training: FOCUS's EM trains the U-Net at
        0.06 of the encoder's rate, and at the pre-training rate the unsupervised terms drift from the pre-trained
        masks within a few dozen steps (mask F1 0.896 after the first EM round, 0.866 after the second).
    robust_weight: weight of the robust photometric term in pre-training. FOCUS weighs it 0.5 against a
        landmark weight of 5e-4; here it sits beside this project's hybrid loss, so it is set to give the
        gradient of the skin-attention photometric term (weight 1.92 on the RGB distance) at a residual of
        ``threshold_sigmas`` standard deviations: ``1.92 sigma / 3 = 0.028`` per unit of ``0.5 d² / sigma²``.
    misfit_prior: estimate and use the misfit prior (`losses.focus`); misfit_batches: training batches it is
        estimated from.
    feature_layers, feature_size: SFace layers and crop side of the preserve and dist terms' features
        (`networks.segmentation.ShallowFeatures`); 0 layers drops both terms.
    mask_threshold: the U-Net's probability above which a pixel counts as face in masks and metrics.
    """

    pretrain_encoder_steps: int = 120
    pretrain_unet_steps: int = 120
    em_rounds: int = 2
    em_unet_steps: int = 40
    em_encoder_steps: int = 80
    encoder_lr: float = 5e-5
    unet_lr: float = 3e-3
    em_unet_lr: float = 3e-4
    robust_weight: float = 0.028
    misfit_prior: bool = True
    misfit_batches: int = 8
    feature_layers: int = 5
    feature_size: int = 56
    mask_threshold: float = 0.5

    def __post_init__(self) -> None:
        counts = {
            "pretrain_encoder_steps": self.pretrain_encoder_steps,
            "pretrain_unet_steps": self.pretrain_unet_steps,
            "em_rounds": self.em_rounds,
            "em_unet_steps": self.em_unet_steps,
            "em_encoder_steps": self.em_encoder_steps,
            "misfit_batches": self.misfit_batches,
            "feature_layers": self.feature_layers,
        }
        negative = {k: v for k, v in counts.items() if v < 0}
        if negative:
            raise ValueError(f"FOCUS step counts must be >= 0, got {negative}")
        if min(self.encoder_lr, self.unet_lr, self.em_unet_lr) <= 0 or self.robust_weight < 0:
            raise ValueError("encoder_lr, unet_lr and em_unet_lr must be positive and robust_weight >= 0")

    def schedule(self) -> list[tuple[str, int]]:
        """The stages in order with their step counts (stages of 0 steps left out)."""
        stages = [("pretrain_encoder", self.pretrain_encoder_steps), ("pretrain_unet", self.pretrain_unet_steps)]
        stages += [("em_unet", self.em_unet_steps), ("em_encoder", self.em_encoder_steps)] * self.em_rounds
        return [(name, steps) for name, steps in stages if steps > 0]


@dataclass(frozen=True)
class FocusPrediction:
    """The encoder's reconstruction of a batch and the U-Net's mask.

    prediction:   `Prediction` (coefficients and render)
    segmentation: (B, 1, H, W) U-Net probability of face
    valid:        (B, 1, H, W) ``render.mask * segmentation``: the pixels the model is asked to explain
    """

    prediction: Prediction
    segmentation: torch.Tensor
    valid: torch.Tensor


class FocusModule(pl.LightningModule):
    """FOCUS's encoder and segmentation network trained in `FOCUS_STAGES` (set `stage` before each fit).

    Args:
        encoder: the R-Net (FOCUS's face encoder), usually initialised from a trained one.
        renderer: `MeshRenderer` holding the face model.
        hybrid: this project's hybrid loss; its landmark, prior and texture terms are kept in every encoder
            stage, its photometric term is replaced by the robust one in pre-training and weighted by the
            U-Net's mask (instead of the skin attention) in the EM stage; its perceptual term is used as is.
        unet: `SegmentationUNet`.
        weights: FOCUS's loss weights (`losses.focus.FocusLossWeights`).
        settings: schedule and optimisation (`FocusSettings`).
        features: frozen feature network of the preserve and dist terms, or None to drop them.
        config: the experiment config as YAML text, stored in checkpoints.
    """

    def __init__(
        self,
        encoder: RNet,
        renderer: MeshRenderer,
        hybrid: HybridLoss,
        unet: SegmentationUNet,
        weights: FocusLossWeights = FocusLossWeights(),
        settings: FocusSettings = FocusSettings(),
        features: torch.nn.Module | None = None,
        config: str = "",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.renderer = renderer
        self.hybrid = hybrid
        self.unet = unet
        self.weights = weights
        self.settings = settings
        self.features = features
        self.config_yaml = config
        self.stage = FOCUS_STAGES[0]
        # Layers the encoder keeps frozen in every stage (e.g. the SFace trunk's first layers).
        self._encoder_trainable = {name: p.requires_grad for name, p in encoder.named_parameters()}
        size = renderer.camera.image_size
        # The misfit prior: expected model residual per crop pixel; zero (no prior) until estimated.
        self.register_buffer("misfit", torch.zeros(1, 1, *size))
        self.register_buffer("misfit_estimated", torch.zeros((), dtype=torch.bool))
        self.val_mask = MaskScores(threshold=settings.mask_threshold)
        self.val_shape_error = ShapeError("rigid")
        self.val_mean_face_error = ShapeError("rigid")

    # ------------------------------------------------------------------------------------------ stages

    def set_stage(self, stage: str) -> None:
        """Choose what the next fit trains; freezes the other network (and keeps it in eval mode)."""
        if stage not in FOCUS_STAGES:
            raise ValueError(f"unknown FOCUS stage {stage!r}; choose one of {FOCUS_STAGES}")
        self.stage = stage
        trains_encoder = stage in ("pretrain_encoder", "em_encoder")
        for name, p in self.encoder.named_parameters():
            p.requires_grad_(trains_encoder and self._encoder_trainable[name])
        self.unet.requires_grad_(not trains_encoder)

    def on_train_epoch_start(self) -> None:
        # The frozen network keeps its batch-norm statistics: only the trained one is in train mode.
        if self.stage in ("pretrain_encoder", "em_encoder"):
            self.unet.eval()
        else:
            self.encoder.eval()
        self.hybrid.train(False)

    @property
    def misfit_prior(self) -> torch.Tensor | None:
        return self.misfit if self.settings.misfit_prior else None

    # ------------------------------------------------------------------------------------------ forward

    def reconstruct(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> Prediction:
        """(B, 3, S, S) crops in [0, 1] -> the encoder's coefficients and their render (float32)."""
        coeffs = self.encoder(images, landmarks).coeffs.to(torch.float32)
        with torch.autocast(device_type=images.device.type, enabled=False):
            render = self.renderer(coeffs)
        return Prediction(coeffs=coeffs, render=render)

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> FocusPrediction:
        prediction = self.reconstruct(images, landmarks)
        segmentation = self.unet.probability(images, prediction.render.image)
        return FocusPrediction(prediction, segmentation, prediction.render.mask * segmentation)

    def pseudo_masks(self, images: torch.Tensor, prediction: Prediction) -> torch.Tensor:
        """(B, 1, H, W) inlier masks of the robust loss under the misfit prior (FOCUS's step 2)."""
        w = self.weights
        _, inlier = robust_photometric_loss(
            images, prediction.render.image, prediction.render.mask, w.sigma, w.threshold_sigmas, self.misfit_prior
        )
        return inlier

    # ------------------------------------------------------------------------------------------ losses

    def _hybrid(self, batch: FocusBatch, prediction: Prediction, attention: torch.Tensor) -> dict[str, torch.Tensor]:
        faces = batch.faces
        return self.hybrid(
            images=faces.images,
            render=prediction.render,
            target_landmarks=faces.landmarks,
            skin_attention=attention,
            coeffs=prediction.coeffs,
        )

    def encoder_losses(self, batch: FocusBatch) -> dict[str, torch.Tensor]:
        images = batch.faces.images
        prediction = self.reconstruct(images, batch.faces.landmarks)
        render, w = prediction.render, self.weights
        if self.stage == "pretrain_encoder":
            # Zero attention: the hybrid's own photometric term is replaced by the robust one.
            out = self._hybrid(batch, prediction, torch.zeros_like(render.mask))
            robust, _ = robust_photometric_loss(images, render.image, render.mask, w.sigma, w.threshold_sigmas)
            out["robust_photometric"] = self.settings.robust_weight * robust
            out["raw/robust_photometric"] = robust
            out["total"] = out["total"] + out["robust_photometric"]
            return out
        segmentation = self.unet.probability(images, render.image)
        out = self._hybrid(batch, prediction, segmentation.detach())
        # FOCUS weighs the area term 0.06 against its masked photometric 0.5; the ratio is kept against this
        # project's photometric weight.
        area_weight = w.encoder_area / max(w.encoder_photometric, 1e-12) * self.hybrid.weights.photometric
        area = area_loss(render.mask, segmentation)
        out["area"] = area_weight * area
        out["raw/area"] = area
        out["total"] = out["total"] + out["area"]
        return out

    def unet_losses(self, batch: FocusBatch) -> dict[str, torch.Tensor]:
        images = batch.faces.images
        with torch.no_grad():
            prediction = self.reconstruct(images, batch.faces.landmarks)
        rendered, region = prediction.render.image, prediction.render.mask
        logits = self.unet(images, rendered)
        if self.stage == "pretrain_unet":
            bce = pseudo_mask_loss(logits, self.pseudo_masks(images, prediction), region)
            return {"pseudo_mask_bce": bce, "total": bce}
        return segmentation_losses(
            images, rendered, region, torch.sigmoid(logits), self.weights, self.features, self.misfit_prior
        )

    def training_step(self, batch: FocusBatch, batch_idx: int) -> torch.Tensor:
        trains_encoder = self.stage in ("pretrain_encoder", "em_encoder")
        losses = self.encoder_losses(batch) if trains_encoder else self.unet_losses(batch)
        self.log_dict({f"{self.stage}/{k}": v for k, v in losses.items()}, batch_size=batch.batch_size)
        self.log("train/loss", losses["total"], prog_bar=True, batch_size=batch.batch_size, logger=False)
        return losses["total"]

    # ------------------------------------------------------------------------------------------ evaluation

    def validation_step(self, batch: FocusBatch, batch_idx: int) -> None:
        faces = batch.faces
        out = self(faces.images, faces.landmarks)
        self.val_mask.update(out.valid, batch.visible)
        if faces.ground_truth is not None:
            predicted = self.renderer.face_model.shape(out.prediction.coeffs)
            self.val_shape_error(predicted, faces.ground_truth.vertices)
            self.val_mean_face_error(
                self.renderer.face_model.mean_shape.expand_as(predicted), faces.ground_truth.vertices
            )
            self.log("val/shape_error_mm", self.val_shape_error, batch_size=batch.batch_size)
            self.log("val/mean_face_error_mm", self.val_mean_face_error, batch_size=batch.batch_size)

    def on_validation_epoch_end(self) -> None:
        self.log_dict({f"val/mask_{k}": v.float() for k, v in self.val_mask.compute().items()})
        self.val_mask.reset()

    @torch.no_grad()
    def estimate_misfit(self, batches) -> torch.Tensor:
        """Estimate the misfit prior from an iterable of `FocusBatch` under the current encoder; stores and
        returns the (1, 1, H, W) map (`losses.focus.estimate_misfit_prior`). Runs outside training steps."""
        residuals, masks = [], []
        was_training = self.encoder.training
        self.encoder.eval()
        for batch in batches:
            batch = batch.to(self.device)
            prediction = self.reconstruct(batch.faces.images, batch.faces.landmarks)
            residuals.append(residual(batch.faces.images, prediction.render.image))
            masks.append(prediction.render.mask)
        self.encoder.train(was_training)
        if not residuals:
            raise ValueError("estimate_misfit needs at least one batch")
        self.misfit.copy_(estimate_misfit_prior(torch.cat(residuals), torch.cat(masks)))
        self.misfit_estimated.fill_(True)
        return self.misfit

    def configure_optimizers(self):
        if self.stage in ("pretrain_encoder", "em_encoder"):
            params, lr = [p for p in self.encoder.parameters() if p.requires_grad], self.settings.encoder_lr
        else:
            lr = self.settings.em_unet_lr if self.stage == "em_unet" else self.settings.unet_lr
            params = list(self.unet.parameters())
        return torch.optim.Adam(params, lr=lr)

    def transfer_batch_to_device(self, batch: FocusBatch, device: torch.device, dataloader_idx: int) -> FocusBatch:
        return batch.to(device, non_blocking=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["face3d_config"] = self.config_yaml
        checkpoint["focus_stage"] = self.stage
