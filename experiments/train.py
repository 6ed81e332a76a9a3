"""Training entry point shared by ``face3d train``, ``make train-single`` and sweeps."""

from __future__ import annotations

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
    from experiments.build import build_datamodule, build_face_model, build_rnet_module
    from experiments.trainer import build_trainer, intended_warnings_silenced, last_checkpoint_path, open_run_dir
    from lightning_modules.callbacks import OverlayImages, TrainingClock

    run_dir = run_dir_for(cfg)
    open_run_dir(
        run_dir,
        to_yaml(cfg),
        cfg.trainer.seed,
        existing="checkpoints" if last_checkpoint_path(run_dir).exists() else None,
        resume=resume,
        fast_dev_run=fast_dev_run,
    )

    face_model = build_face_model(cfg)
    module = build_rnet_module(cfg, face_model)
    datamodule = build_datamodule(cfg, face_model, cache_dir=Path(cfg.logging.output_dir) / "cache")

    has_ground_truth = cfg.data.kind == "synthetic"
    overlays = OverlayImages(run_dir / "overlays", every_n_epochs=cfg.logging.overlay_every_n_epochs)
    stage = build_trainer(
        cfg.trainer,
        cfg.logging,
        run_dir,
        monitor="val/shape_error_mm" if has_ground_truth else "val/total",
        callbacks=[TrainingClock(), overlays, *extra_callbacks],
        fast_dev_run=fast_dev_run,
    )
    with intended_warnings_silenced():
        stage.trainer.fit(module, datamodule=datamodule, ckpt_path=stage.resume_from(resume))

        test_metrics: dict[str, float] = {}
        if has_ground_truth and not fast_dev_run:
            results = stage.trainer.test(module, datamodule=datamodule, ckpt_path=stage.best_checkpoint, verbose=False)
            test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    last = stage.last_checkpoint
    return TrainResult(
        run_dir=run_dir,
        best_checkpoint=stage.best_checkpoint,
        last_checkpoint=last if last.exists() else None,
        metrics_csv=stage.metrics_csv,
        overlay=overlays.last_path,
        test_metrics=test_metrics,
        test_samples=cfg.data.synthetic.n_test if test_metrics else 0,
    )
