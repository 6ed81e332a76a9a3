"""Training entry point shared by ``face3d train``, ``make train-single`` and sweeps."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from experiments.config import ExperimentConfig, to_yaml

if TYPE_CHECKING:
    from pytorch_lightning import Callback


@dataclass(frozen=True)
class TrainResult:
    """Where a finished run put its outputs, and its headline numbers (None when not measured)."""

    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    metrics_csv: Path | None
    overlay: Path | None
    test_metrics: dict[str, float]
    test_samples: int = 0

    def summary(self) -> str:
        lines = [f"run directory:   {self.run_dir}"]
        if self.best_checkpoint:
            lines.append(f"best checkpoint: {self.best_checkpoint}")
        if self.last_checkpoint:
            lines.append(f"last checkpoint: {self.last_checkpoint}")
        if self.metrics_csv:
            lines.append(f"metrics (CSV):   {self.metrics_csv}")
        if self.overlay:
            lines.append(f"overlay images:  {self.overlay.parent}/ (latest {self.overlay.name})")
        m = self.test_metrics
        if "test/shape_error_mm" in m:
            error, baseline = m["test/shape_error_mm"], m["test/mean_face_error_mm"]
            change = 100 * abs(1 - error / baseline)
            verdict = f"{change:.1f}% lower than" if error < baseline else f"{change:.1f}% HIGHER than"
            lines.append(
                f"test shape error: {error:.2f} mm after rigid alignment, {verdict} the mean-face "
                f"baseline ({baseline:.2f} mm) on {self.test_samples} held-out synthetic faces"
            )
            if "test/better_than_mean_face" in m:
                lines.append(
                    f"                  closer to the truth than the mean face on "
                    f"{100 * m['test/better_than_mean_face']:.0f}% of them"
                )
        if "test/identity_r" in m:
            lines.append(
                f"                  identity coefficients vs the truth: mean r {m['test/identity_r']:.2f} over "
                "the first ten modes"
            )
        if "test/landmark_error_px" in m:
            lines.append(f"test landmark error: {m['test/landmark_error_px']:.2f} px")
        return "\n".join(lines)


def run_dir_for(cfg: ExperimentConfig) -> Path:
    return Path(cfg.logging.output_dir) / (cfg.logging.run_name or cfg.name)


def train(
    cfg: ExperimentConfig,
    resume: bool = False,
    fast_dev_run: bool | int = False,
    extra_callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train R-Net as configured. ``resume`` continues the run directory's ``last.ckpt`` when there is one;
    ``extra_callbacks`` are added to the trainer's (instrumentation, tests).

    Refuses to start over a run that already has checkpoints unless ``resume`` is set, so a finished or
    killed run is never overwritten by accident.
    """
    import pytorch_lightning as pl

    # Both are intended here: the perceptual network is frozen in eval mode, and FaceBatch moves itself.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r"You have overridden `transfer_batch_to_device`")
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
    from pytorch_lightning.loggers import CSVLogger

    from experiments.build import build_datamodule, build_face_model, build_rnet_module, resolve_precision
    from lightning_modules.callbacks import FiniteLossGuard, OverlayImages, TrainingClock

    run_dir = run_dir_for(cfg)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if last.exists() and not resume and not fast_dev_run:
        raise FileExistsError(
            f"run directory {run_dir} already has checkpoints; pass --resume to continue that run, or choose "
            "another with logging.run_name=NAME"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    pl.seed_everything(cfg.trainer.seed, workers=True)

    face_model = build_face_model(cfg)
    module = build_rnet_module(cfg, face_model)
    datamodule = build_datamodule(cfg, face_model, cache_dir=Path(cfg.logging.output_dir) / "cache")

    has_ground_truth = cfg.data.kind == "synthetic"
    monitor = "val/shape_error_mm" if has_ground_truth else "val/total"
    best = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best-{epoch:03d}-{step}",
        monitor=monitor,
        mode="min",
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    # A separate, frequent last.ckpt so a killed run loses at most a few steps.
    latest = ModelCheckpoint(
        dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_train_steps=cfg.trainer.checkpoint_every_n_steps
    )
    overlays = OverlayImages(run_dir / "overlays", every_n_epochs=cfg.logging.overlay_every_n_epochs)
    # One CSV folder per launch (logs/version_N): a resumed run must not overwrite the metrics it already has.
    csv_logger = CSVLogger(save_dir=str(run_dir), name="logs")
    loggers = [csv_logger]
    if cfg.logging.wandb and cfg.logging.wandb_mode != "disabled":
        from pytorch_lightning.loggers import WandbLogger

        os.environ.setdefault("WANDB_MODE", cfg.logging.wandb_mode)
        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(
            WandbLogger(
                project=cfg.logging.wandb_project,
                name=run_dir.name,
                save_dir=str(run_dir),
                id=f"{run_dir.name}-{hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:8]}",
                resume="allow",
                mode=cfg.logging.wandb_mode,
            )
        )
    tc = cfg.trainer
    trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=tc.max_epochs,
        max_steps=tc.max_steps,
        max_time={"minutes": tc.max_time_minutes} if tc.max_time_minutes else None,
        accelerator=tc.accelerator,
        devices=tc.devices,
        strategy=tc.strategy,
        num_nodes=tc.num_nodes,
        precision=resolve_precision(tc.precision, tc.accelerator),
        log_every_n_steps=tc.log_every_n_steps,
        val_check_interval=tc.val_check_interval,
        gradient_clip_val=tc.gradient_clip_val,
        deterministic=tc.deterministic,
        logger=loggers,
        callbacks=[
            FiniteLossGuard(tc.log_every_n_steps),
            TrainingClock(),
            best,
            latest,
            overlays,
            LearningRateMonitor(logging_interval="step"),
            TQDMProgressBar(refresh_rate=5),
            *extra_callbacks,
        ],
        fast_dev_run=fast_dev_run,
        enable_model_summary=False,
    )
    ckpt_path = str(last) if resume and last.exists() else None
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    test_metrics: dict[str, float] = {}
    if has_ground_truth and not fast_dev_run:
        best_path = best.best_model_path or None
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
        test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    metrics_csv = Path(csv_logger.log_dir) / "metrics.csv"
    return TrainResult(
        run_dir=run_dir,
        best_checkpoint=Path(best.best_model_path) if best.best_model_path else None,
        last_checkpoint=last if last.exists() else None,
        metrics_csv=metrics_csv if metrics_csv.exists() else None,
        overlay=overlays.last_path,
        test_metrics=test_metrics,
        test_samples=cfg.data.synthetic.n_test if test_metrics else 0,
    )
