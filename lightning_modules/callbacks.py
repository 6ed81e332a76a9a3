"""Training callbacks: a guard against non-finite losses, overlay images of predictions, and the clock and
hardware record that a model card needs."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from datamodules.batch import FaceBatch
from renderers.visualize import TARGET_COLOUR, composite, draw_landmarks, image_grid, label, save_png, to_uint8


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or Inf; the last good checkpoint is kept."""


class FiniteLossGuard(pl.Callback):
    """Stops training with a clear message when the loss or the weights stop being finite, and refuses
    to write such a checkpoint, so ``last.ckpt`` keeps the last good state for ``--resume``.

    The check reads the loss on the host, so it runs only every ``check_every_n_steps`` steps (on the
    steps Lightning logs anyway) and before every checkpoint; a NaN between checks poisons the weights,
    which the checkpoint check then catches.
    """

    def __init__(self, check_every_n_steps: int = 10) -> None:
        self.check_every_n_steps = max(1, check_every_n_steps)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if trainer.global_step % self.check_every_n_steps != 0:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not bool(torch.isfinite(loss.detach())):
            raise NonFiniteLossError(
                f"the training loss became {float(loss.detach())} at step {trainer.global_step}; training stopped "
                "before writing a checkpoint, so last.ckpt holds the last finite state. Lower optim.lr, enable "
                "trainer.gradient_clip_val, or check the data, then run again with --resume."
            )

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        bad = [name for name, p in pl_module.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
        if bad:
            raise NonFiniteLossError(
                f"non-finite weights at step {trainer.global_step} (e.g. {bad[:3]}); the checkpoint was not written "
                "and last.ckpt holds the last finite state. Lower optim.lr or enable trainer.gradient_clip_val."
            )


class OverlayImages(pl.Callback):
    """After validation, draws input | reconstruction over input | render alone with landmarks
    (green: predicted, red: target) for a fixed set of validation images; writes a PNG per epoch under
    ``out_dir`` and logs it to W&B when that logger is active."""

    def __init__(self, out_dir: str | Path, n_images: int = 8, every_n_epochs: int = 1) -> None:
        self.out_dir = Path(out_dir)
        self.n_images = n_images
        self.every_n_epochs = max(1, every_n_epochs)
        self._batch: FaceBatch | None = None
        self.last_path: Path | None = None

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch: FaceBatch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._batch is None and batch_idx == 0:
            n = min(self.n_images, batch.batch_size)
            self._batch = FaceBatch(
                images=batch.images[:n].detach(),
                landmarks=batch.landmarks[:n].detach(),
                skin=batch.skin[:n].detach(),
                index=batch.index[:n].detach(),
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._batch is None or trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        grid = self.render_grid(pl_module, self._batch)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.last_path = self.out_dir / f"epoch_{trainer.current_epoch:03d}.png"
        save_png(self.last_path, grid)
        for logger in trainer.loggers:
            if isinstance(logger, pl.loggers.WandbLogger):
                logger.log_image(key="val/overlay", images=[grid], step=trainer.global_step)

    @staticmethod
    @torch.no_grad()
    def render_grid(pl_module: pl.LightningModule, batch: FaceBatch) -> np.ndarray:
        prediction = pl_module(batch.images, batch.landmarks)
        render = prediction.render
        overlay = composite(render.image, render.mask, batch.images)
        tiles = []
        for i in range(batch.batch_size):
            target = batch.landmarks[i].cpu().numpy()
            predicted = render.landmarks[i].cpu().numpy()
            tiles.append(label(to_uint8(batch.images[i]), "input"))
            tiles.append(label(draw_landmarks(to_uint8(overlay[i]), predicted), "overlay"))
            tiles.append(
                draw_landmarks(
                    draw_landmarks(
                        to_uint8(composite(render.image[i : i + 1], render.mask[i : i + 1], 0.35)[0]),
                        target,
                        TARGET_COLOUR,
                    ),
                    predicted,
                )
            )
        return image_grid(tiles, n_cols=6)


TRAINING_RECORD_KEY = "face3d_training"
"""Checkpoint entry written by `TrainingClock`."""


def describe_hardware(accelerator: str, precision: str) -> str:
    """One line naming where a run trained: the GPU, or the CPU model and torch's thread count."""
    if accelerator in ("cuda", "gpu") and torch.cuda.is_available():
        device = f"GPU {torch.cuda.get_device_name(0)}"
    else:
        cpu = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        device = f"CPU {cpu}, {torch.get_num_threads()} torch thread(s)"
    return f"{device}, precision {precision}, torch {torch.__version__}"


class TrainingClock(pl.Callback):
    """Stores in every checkpoint (``checkpoint["face3d_training"]``) the training wall time summed over all
    launches of a run (a resumed run continues the sum), the optimisation step, and the hardware of each launch,
    so that an exported model card can say what the weights cost. Validation time counts too: it is part of
    what a run takes."""

    def __init__(self) -> None:
        self._previous_seconds = 0.0
        self._previous_hardware: list[str] = []
        self._started: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        record = checkpoint.get(TRAINING_RECORD_KEY, {})
        self._previous_seconds = float(record.get("wall_seconds", 0.0))
        self._previous_hardware = list(record.get("hardware", []))

    def record(self, trainer: pl.Trainer) -> dict:
        elapsed = 0.0 if self._started is None else time.perf_counter() - self._started
        hardware = describe_hardware(
            trainer.accelerator.__class__.__name__.removesuffix("Accelerator").lower(), str(trainer.precision)
        )
        launches = self._previous_hardware + ([] if hardware in self._previous_hardware[-1:] else [hardware])
        return {"wall_seconds": self._previous_seconds + elapsed, "step": trainer.global_step, "hardware": launches}

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[TRAINING_RECORD_KEY] = self.record(trainer)
