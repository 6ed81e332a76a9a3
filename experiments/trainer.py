"""The Lightning Trainer of every training stage (R-Net, C-Net, and the stages to come): checkpoints, loggers,
precision and run limits decided once.

A stage gives its run directory, the metric its best checkpoint is chosen by and the stage's own callbacks, and
gets a `StageTrainer`::

    stage = build_trainer(cfg.trainer, cfg.logging, run_dir, monitor="val/shape_error_mm")
    stage.trainer.fit(module, datamodule=datamodule, ckpt_path=stage.resume_from(resume))

Every stage writes the same things under its run directory: ``checkpoints/best-EEE-S.ckpt`` (the best by
``monitor``), ``checkpoints/last.ckpt`` (refreshed every ``trainer.checkpoint_every_n_steps``, so a killed run
loses at most that many steps), ``logs/version_N/metrics.csv`` (one folder per launch, so a resumed run keeps
its history) and, unless W&B is off, a W&B run (offline by default) under ``wandb/`` whose id is derived from
the run directory, so a resumed run continues its W&B run.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from errors import ExistingOutputError
from experiments.config import LoggingConfig, TrainerConfig

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger, Logger

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_FILENAME = "best-{epoch:03d}-{step}"

INTENDED_WARNINGS = (
    # The perceptual network (and C-Net's R-Net) are frozen in eval mode on purpose.
    r"Found \d+ module\(s\) in eval mode",
    # FaceBatch and SetBatch move themselves to the device.
    r"You have overridden `transfer_batch_to_device`",
)


@dataclass(frozen=True)
class StageTrainer:
    """A configured `pl.Trainer` and where its checkpoints and metrics go."""

    trainer: pl.Trainer
    best: ModelCheckpoint | None
    """Keeps the best checkpoint by the stage's monitor; ``best.best_model_path`` after fitting ('' if none); None
    for a stage built without a monitor (it saves its own checkpoints)."""
    csv_logger: CSVLogger
    last_checkpoint: Path
    """``<run dir>/checkpoints/last.ckpt``, which ``--resume`` continues."""

    def resume_from(self, resume: bool) -> Path | None:
        """The checkpoint to continue when ``resume`` is set and one was written, else None (start fresh)."""
        return self.last_checkpoint if resume and self.last_checkpoint.exists() else None

    @property
    def best_checkpoint(self) -> Path | None:
        return Path(self.best.best_model_path) if self.best is not None and self.best.best_model_path else None

    @property
    def metrics_csv(self) -> Path | None:
        """This launch's ``metrics.csv``, None when nothing was logged."""
        path = Path(self.csv_logger.log_dir) / "metrics.csv"
        return path if path.exists() else None


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def last_checkpoint_path(run_dir: Path) -> Path:
    return checkpoint_dir(run_dir) / LAST_CHECKPOINT


def open_run_dir(
    run_dir: Path,
    config_yaml: str,
    seed: int,
    *,
    existing: str | None,
    resume: bool,
    fast_dev_run: bool | int = False,
    resume_means: str = "continue that run",
) -> None:
    """Start (or continue) a run in ``run_dir``: refuse when it already holds ``existing`` (a description of its
    checkpoints, None when it has none) unless ``resume`` or ``fast_dev_run`` is set, so that a finished or killed
    run is never overwritten by accident; then write ``config.yaml`` and seed every generator with ``seed``."""
    import pytorch_lightning as pl

    if existing and not resume and not fast_dev_run:
        raise ExistingOutputError(
            f"run directory {run_dir} already has {existing}; pass --resume to {resume_means}, or choose another "
            "with logging.run_name=NAME"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config_yaml)
    pl.seed_everything(seed, workers=True)


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest best-*.ckpt in a checkpoint ``directory``, else its last.ckpt, else None."""
    best = sorted(Path(directory).glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    last = Path(directory) / LAST_CHECKPOINT
    return last if last.is_file() else None


def checkpoint_callbacks(
    run_dir: Path, monitor: str, mode: str = "min", every_n_steps: int = 25, save_weights_only: bool = False
) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """(best by ``monitor``, frequent ``last.ckpt``) writing into ``<run dir>/checkpoints``."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    directory = checkpoint_dir(run_dir)
    best = ModelCheckpoint(
        dirpath=directory,
        filename=BEST_FILENAME,
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        auto_insert_metric_name=False,
        save_weights_only=save_weights_only,
    )
    # A separate, frequent last.ckpt so a killed run loses at most a few steps.
    latest = ModelCheckpoint(dirpath=directory, save_last=True, save_top_k=0, every_n_train_steps=every_n_steps)
    return best, latest


def wandb_run_id(name: str, run_dir: Path) -> str:
    """The W&B id of a run directory: the name plus a hash of the resolved path, so that resuming continues the
    same W&B run and two run directories of the same name do not share one."""
    return f"{name}-{hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:8]}"


def build_loggers(logging: LoggingConfig, run_dir: Path, wandb_name: str | None = None) -> list[Logger]:
    """A CSV logger (``<run dir>/logs/version_N``) and, unless ``logging.wandb`` is off or its mode 'disabled',
    a W&B logger (``logging.wandb_mode``, offline by default) named ``wandb_name`` (default: the run directory's
    name). The CSV logger comes first."""
    from pytorch_lightning.loggers import CSVLogger

    # One CSV folder per launch (logs/version_N): a resumed run must not overwrite the metrics it already has.
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="logs")]
    if logging.wandb and logging.wandb_mode != "disabled":
        import wandb
        from pytorch_lightning.loggers import WandbLogger

        name = wandb_name or Path(run_dir).name
        loggers.append(
            WandbLogger(
                project=logging.wandb_project,
                name=name,
                save_dir=str(run_dir),
                id=wandb_run_id(name, run_dir),
                resume="allow",
                mode=logging.wandb_mode,
                # Per run, not through WANDB_SILENT: setting the environment would change every later W&B run of
                # the process too.
                settings=wandb.Settings(silent=True),
            )
        )
    return loggers


def build_trainer(
    trainer: TrainerConfig,
    logging: LoggingConfig,
    run_dir: Path,
    *,
    monitor: str | None,
    mode: str = "min",
    callbacks: Sequence[Callback] = (),
    wandb_name: str | None = None,
    save_weights_only: bool = False,
    lr_logging_interval: str = "step",
    fast_dev_run: bool | int = False,
    loggers: Sequence[Logger] | None = None,
) -> StageTrainer:
    """The `pl.Trainer` of one training stage writing into ``run_dir`` (see the module docstring).

    ``monitor``/``mode``: the logged metric the best checkpoint is kept by; ``monitor=None`` builds no checkpoint
    callbacks, for a runner that validates and saves between stages itself (FOCUS). ``loggers``: loggers to
    reuse (a multi-stage run logs every stage into one run; the first must be the CSV logger), default
    `build_loggers`. ``callbacks``: the stage's own
    (overlays, clocks, instrumentation), added after the finite-loss guard and the checkpoints. ``wandb_name``:
    the W&B run's name (default: the run directory's name). ``save_weights_only``: best checkpoints without
    optimiser state. ``lr_logging_interval``: how often the learning rate is logged ('step' or 'epoch').
    Limits (``max_steps``, ``max_epochs``, ``max_time_minutes``), devices, precision ('auto' resolved for the
    machine), logging interval, validation interval, clipping and determinism come from ``trainer``.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor, TQDMProgressBar

    from experiments.build import resolve_precision
    from lightning_modules.callbacks import FiniteLossGuard

    checkpoints: list[Callback] = []
    best = None
    if monitor is not None:
        best, latest = checkpoint_callbacks(
            run_dir, monitor, mode, every_n_steps=trainer.checkpoint_every_n_steps, save_weights_only=save_weights_only
        )
        checkpoints = [best, latest]
    loggers = list(loggers) if loggers is not None else build_loggers(logging, run_dir, wandb_name)
    lightning_trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=trainer.max_epochs,
        max_steps=trainer.max_steps,
        max_time={"minutes": trainer.max_time_minutes} if trainer.max_time_minutes else None,
        accelerator=trainer.accelerator,
        devices=trainer.devices,
        strategy=trainer.strategy,
        num_nodes=trainer.num_nodes,
        precision=resolve_precision(trainer.precision, trainer.accelerator),
        log_every_n_steps=trainer.log_every_n_steps,
        val_check_interval=trainer.val_check_interval,
        gradient_clip_val=trainer.gradient_clip_val,
        deterministic=trainer.deterministic,
        logger=loggers,
        callbacks=[
            FiniteLossGuard(trainer.log_every_n_steps),
            *checkpoints,
            *callbacks,
            LearningRateMonitor(logging_interval=lr_logging_interval),
            TQDMProgressBar(refresh_rate=5),
        ],
        fast_dev_run=fast_dev_run,
        enable_checkpointing=monitor is not None,
        enable_model_summary=False,
    )
    return StageTrainer(
        trainer=lightning_trainer, best=best, csv_logger=loggers[0], last_checkpoint=last_checkpoint_path(run_dir)
    )


def finish_wandb_runs(loggers: Sequence[Logger]) -> None:
    """End the W&B runs among ``loggers`` (a trainer's ``loggers``): an unfinished one would swallow the logs of
    the next stage of the process."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


@contextlib.contextmanager
def intended_warnings_silenced() -> Iterator[None]:
    """Lightning warnings about what this project does on purpose (`INTENDED_WARNINGS`) are not shown inside the
    block; the process's warning filters are restored afterwards."""
    with warnings.catch_warnings():
        for message in INTENDED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield
