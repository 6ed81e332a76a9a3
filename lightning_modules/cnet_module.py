"""C-Net training (Deng et al. 2019 §5): frozen R-Net -> C-Net confidences -> aggregated identity ->
every picture re-rendered with the set's identity and its own other coefficients -> hybrid loss.

The module is thin: R-Net, C-Net, renderer and loss are plain PyTorch built elsewhere
(`experiments.build`) and handed in; the aggregation maths is `networks.aggregation`. R-Net stays frozen
(eval mode, no gradients, run under ``torch.no_grad``): the loss reaches C-Net only through the
confidence-weighted identity.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytorch_lightning as pl
import torch

from datamodules.image_sets import SetBatch
from face_model.coefficients import Coefficients
from lightning_modules.rnet_module import OptimSettings
from losses.hybrid import HybridLoss
from losses.photometric import skin_attention
from metrics import ShapeError
from networks.aggregation import GLOBAL_STRATEGIES, STRATEGIES, aggregate, mean_aggregate
from networks.cnet import CNet
from networks.rnet import RNet
from renderers.mesh_renderer import MeshRenderer, RenderOutput

# Not stored in C-Net checkpoints: both are rebuilt from the stored config (face model buffers, the frozen
# recognition network), which halves the file; `on_load_checkpoint` puts the rebuilt values back.
_REBUILT_PREFIXES = ("renderer.", "loss.")


def training_strategy(strategy: str) -> str:
    """The aggregation a module trains with: S3's selection has no gradient, so its element-wise head is
    trained as S4's (the paper computes S2 and S3 from the element-wise confidences)."""
    return "s4" if strategy == "s3" else strategy


@dataclass(frozen=True)
class SetPrediction:
    """The reconstruction of a batch of sets; M = the number of valid pictures, in set order.

    coeffs:      R-Net's own coefficients of the M pictures
    identity:    (B, N, n_id) the same identities laid out by set (zeros on padding)
    confidence:  (B, N, n_out) C-Net's confidences (n_out = n_id or 1), zeros on padding; None without C-Net
    aggregated:  (B, n_id) the set identity under the strategy used
    set_index:   (M,) long, the set of each picture
    render:      the M pictures rendered with ``aggregated`` and their own other coefficients, or None
    """

    coeffs: Coefficients
    identity: torch.Tensor
    confidence: torch.Tensor | None
    aggregated: torch.Tensor
    set_index: torch.Tensor
    render: RenderOutput | None

    @property
    def aggregated_coeffs(self) -> Coefficients:
        """Per-picture coefficients with the identity replaced by the set's (what is rendered)."""
        return self.coeffs.replace(identity=self.aggregated[self.set_index])


class CNetModule(pl.LightningModule):
    """Trains C-Net on image sets with the hybrid loss summed over each set (mean over sets); validation and
    test log, where sets have ground truth, the shape error (mm, rigid alignment, neutral expression) of the
    aggregated identity next to two baselines: the mean error of the single-picture identities and the error
    of shape averaging.

    Args:
        rnet: a trained R-Net; frozen here (eval mode, ``requires_grad`` False, forward under no_grad).
        renderer: `MeshRenderer` holding the face model (R-Net's).
        loss: `HybridLoss` (R-Net's or one with other weights).
        cnet: the confidence network: ``kind="elementwise"`` for s2/s3/s4, ``"global"`` for s1, None for mean.
        strategy: aggregation trained and evaluated, one of `networks.aggregation.STRATEGIES` (s3 trains as s4,
            see `training_strategy`; mean has nothing to train and is for evaluation only).
        optim: optimiser settings for C-Net.
        use_skin_attention: as in `RNetModule`.
        config: the experiment config as YAML, stored in checkpoints (`experiments.build.load_cnet_checkpoint`).
    """

    def __init__(
        self,
        rnet: RNet,
        renderer: MeshRenderer,
        loss: HybridLoss,
        cnet: CNet | None,
        strategy: str = "s4",
        optim: OptimSettings = OptimSettings(),
        use_skin_attention: bool = True,
        config: str = "",
    ) -> None:
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
        if strategy == "mean" and cnet is not None:
            raise ValueError("strategy 'mean' uses no C-Net; pass cnet=None")
        if strategy != "mean":
            needed = "global" if strategy in GLOBAL_STRATEGIES else "elementwise"
            if cnet is None or cnet.kind != needed:
                raise ValueError(
                    f"strategy {strategy!r} needs a C-Net with kind={needed!r}, got "
                    f"{None if cnet is None else cnet.kind!r}"
                )
            if cnet.n_id != renderer.face_model.layout.n_id:
                raise ValueError(
                    f"C-Net predicts {cnet.n_id} identity confidences but the face model has "
                    f"{renderer.face_model.layout.n_id} identity coefficients"
                )
        self.rnet = rnet
        self.rnet.requires_grad_(False)
        self.rnet.eval()
        self.renderer = renderer
        self.loss = loss
        self.cnet = cnet
        self.strategy = strategy
        self.optim = optim
        self.use_skin_attention = use_skin_attention
        self.config_yaml = config
        for stage in ("val", "test"):
            setattr(self, f"{stage}_shape_error", ShapeError("rigid"))
            setattr(self, f"{stage}_averaging_error", ShapeError("rigid"))
            setattr(self, f"{stage}_per_image_error", ShapeError("rigid"))

    @property
    def face_model(self):
        return self.renderer.face_model

    def train(self, mode: bool = True) -> CNetModule:
        # R-Net is frozen: its batch-norm statistics must not move while C-Net trains.
        super().train(mode)
        self.rnet.eval()
        return self

    # ----------------------------------------------------------------------------------------- forward

    def confidences(self, features) -> torch.Tensor | None:
        """C-Net's (M, n_out) confidences for R-Net features of M pictures (None for the mean strategy)."""
        return None if self.cnet is None else self.cnet.from_features(features)

    def forward(
        self,
        images: torch.Tensor,
        valid: torch.Tensor,
        full: bool = False,
        strategy: str | None = None,
        render: bool = True,
    ) -> SetPrediction:
        """(B, N, 3, H, W) sets with a (B, N) validity mask -> `SetPrediction`.

        ``full`` (no padding, see `SetBatch.full`) skips selecting the valid pictures, which would wait for the
        device. ``strategy`` overrides the module's aggregation (evaluation of other strategies).
        """
        if images.ndim != 5 or valid.shape != images.shape[:2]:
            raise ValueError(
                f"expected (B, N, 3, H, W) images with a (B, N) mask, got {tuple(images.shape)} and "
                f"{tuple(valid.shape)}"
            )
        n_sets, set_size = valid.shape
        flat = images.flatten(0, 1)
        positions = None
        if not full:
            positions = valid.flatten().nonzero().squeeze(1)
            flat = flat.index_select(0, positions)
        with torch.no_grad():
            out = self.rnet(flat)
        coeffs = out.coeffs.to(torch.float32)
        confidence = self.confidences(out.features)

        def by_set(values: torch.Tensor) -> torch.Tensor:
            if positions is None:
                return values.reshape(n_sets, set_size, *values.shape[1:])
            padded = values.new_zeros((n_sets * set_size, *values.shape[1:]))
            return padded.index_copy(0, positions, values).reshape(n_sets, set_size, *values.shape[1:])

        set_index = (
            torch.arange(n_sets, device=images.device).repeat_interleave(set_size)
            if positions is None
            else torch.div(positions, set_size, rounding_mode="floor")
        )
        identity = by_set(coeffs.identity)
        confidence = None if confidence is None else by_set(confidence.float())
        aggregated = aggregate(strategy or self.strategy, identity, valid, confidence)
        prediction = SetPrediction(
            coeffs=coeffs,
            identity=identity,
            confidence=confidence,
            aggregated=aggregated,
            set_index=set_index,
            render=None,
        )
        if not render:
            return prediction
        # Geometry and rasterization stay in float32 under mixed precision, as in RNetModule.
        with torch.autocast(device_type=images.device.type, enabled=False):
            rendered = self.renderer(prediction.aggregated_coeffs)
        return replace(prediction, render=rendered)

    # -------------------------------------------------------------------------------------------- loss

    def compute_losses(self, batch: SetBatch, prediction: SetPrediction) -> dict[str, torch.Tensor]:
        """The hybrid loss of every valid picture re-rendered with its set's identity, summed over each set and
        averaged over sets: the weighted terms and "total" are per-picture means times (valid pictures / sets);
        the "raw/*" terms stay per-picture means, comparable with R-Net's logs."""
        images, landmarks, skin = (x.flatten(0, 1) for x in (batch.images, batch.landmarks, batch.skin))
        if batch.full:
            pictures_per_set = images.new_tensor(float(batch.set_size))
        else:
            positions = batch.valid.flatten().nonzero().squeeze(1)
            images, landmarks, skin = (x.index_select(0, positions) for x in (images, landmarks, skin))
            pictures_per_set = batch.valid.sum().to(images.dtype) / batch.batch_size
        attention = skin_attention(skin) if self.use_skin_attention else torch.ones_like(skin)
        with torch.autocast(device_type=images.device.type, enabled=False):
            losses = self.loss(
                images=images.float(),
                render=prediction.render,
                target_landmarks=landmarks,
                skin_attention=attention,
                coeffs=prediction.aggregated_coeffs,
            )
        return {name: value if name.startswith("raw/") else value * pictures_per_set for name, value in losses.items()}

    def training_step(self, batch: SetBatch, batch_idx: int) -> torch.Tensor:
        prediction = self(batch.images, batch.valid, batch.full, strategy=training_strategy(self.strategy))
        losses = self.compute_losses(batch, prediction)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=batch.batch_size)
        self.log("train/loss", losses["total"], prog_bar=True, batch_size=batch.batch_size, logger=False)
        if prediction.confidence is not None:
            # Saturation shows here first: the mean drifting to 0 or 1, the spread inside sets collapsing.
            conf = prediction.confidence.detach()
            self.log_dict(
                {"train/confidence_mean": conf.mean(), "train/confidence_set_std": conf.std(dim=1).mean()},
                batch_size=batch.batch_size,
            )
        return losses["total"]

    # ---------------------------------------------------------------------------------------- evaluation

    def neutral_shape(self, identity: torch.Tensor) -> torch.Tensor:
        """(K, n_id) identities -> (K, V, 3) shapes with zero expression."""
        zeros = self.face_model.layout.zeros(identity.shape[0], device=identity.device, dtype=identity.dtype)
        return self.face_model.shape(zeros.replace(identity=identity))

    def _evaluate(self, batch: SetBatch, stage: str) -> SetPrediction:
        prediction = self(batch.images, batch.valid, batch.full)
        losses = self.compute_losses(batch, prediction)
        self.log_dict({f"{stage}/{k}": v for k, v in losses.items()}, batch_size=batch.batch_size, sync_dist=True)
        truth = batch.ground_truth
        if truth is not None:
            metrics = {
                name: getattr(self, f"{stage}_{name}") for name in ("shape_error", "averaging_error", "per_image_error")
            }
            metrics["shape_error"](self.neutral_shape(prediction.aggregated), truth.vertices)
            metrics["averaging_error"](
                self.neutral_shape(mean_aggregate(prediction.identity, batch.valid)), truth.vertices
            )
            metrics["per_image_error"](
                self.neutral_shape(prediction.coeffs.identity), truth.vertices[prediction.set_index]
            )
            self.log(
                f"{stage}/shape_error_mm", metrics["shape_error"], batch_size=batch.batch_size, prog_bar=stage == "val"
            )
            self.log(f"{stage}/shape_averaging_error_mm", metrics["averaging_error"], batch_size=batch.batch_size)
            self.log(f"{stage}/per_image_error_mm", metrics["per_image_error"], batch_size=batch.batch_size)
        return prediction

    def validation_step(self, batch: SetBatch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: SetBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    # ------------------------------------------------------------------------------------- optimisation

    def configure_optimizers(self):
        if self.cnet is None:
            raise ValueError(
                "strategy 'mean' (shape averaging) has no C-Net to train; evaluate it with "
                "trainer.validate / trainer.test, or choose s1, s2 or s4 to train"
            )
        optimizer = torch.optim.Adam(self.cnet.parameters(), lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=self.optim.lr_step_epochs, gamma=self.optim.lr_gamma
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def transfer_batch_to_device(self, batch: SetBatch, device: torch.device, dataloader_idx: int) -> SetBatch:
        return batch.to(device, non_blocking=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["face3d_config"] = self.config_yaml
        checkpoint["face3d_cnet"] = {"strategy": self.strategy, "kind": None if self.cnet is None else self.cnet.kind}
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(_REBUILT_PREFIXES)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_rebuilt_state(self, checkpoint["state_dict"])


def restore_rebuilt_state(module: CNetModule, state: dict) -> None:
    """Fill a C-Net checkpoint's state dict with the renderer and loss entries it leaves out (from ``module``,
    built from the same config), so that strict loading still checks every R-Net and C-Net weight."""
    for key, value in module.state_dict().items():
        if key.startswith(_REBUILT_PREFIXES) and key not in state:
            state[key] = value
