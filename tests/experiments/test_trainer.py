"""`experiments.trainer`: every training stage gets the same checkpoints, loggers and limits."""

from __future__ import annotations

import dataclasses
import os
import warnings

import pytest
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from errors import ExistingOutputError
from experiments.config import LoggingConfig, TrainerConfig
from experiments.trainer import (
    build_trainer,
    intended_warnings_silenced,
    latest_checkpoint,
    open_run_dir,
    wandb_run_id,
)
from lightning_modules.callbacks import FiniteLossGuard, TrainingClock

TRAINER = TrainerConfig(max_epochs=-1, max_steps=7, checkpoint_every_n_steps=3, log_every_n_steps=2, accelerator="cpu")


def _checkpoints(stage):
    return [c for c in stage.trainer.callbacks if isinstance(c, ModelCheckpoint)]


def _describe(stage):
    """What a stage's trainer keeps, independent of the stage."""
    best, latest = _checkpoints(stage)
    return {
        "kinds": sorted(type(c).__name__ for c in stage.trainer.callbacks if not isinstance(c, TrainingClock)),
        "best": (best.monitor, best.mode, best.save_top_k, best.filename, best._every_n_train_steps),
        "latest": (latest.save_last, latest.save_top_k, latest._every_n_train_steps),
        "dirs": (best.dirpath, latest.dirpath),
        "max_steps": stage.trainer.max_steps,
        "max_epochs": stage.trainer.max_epochs,
        "loggers": [type(logger).__name__ for logger in stage.trainer.loggers],
    }


def test_rnet_and_cnet_stages_get_the_same_checkpoints_loggers_and_limits(tmp_path):
    logging = LoggingConfig(wandb=True, wandb_mode="offline")
    # As experiments.train and experiments.train_aggregate call it.
    rnet = build_trainer(TRAINER, logging, tmp_path / "rnet", monitor="val/shape_error_mm", callbacks=[TrainingClock()])
    cnet = build_trainer(
        TRAINER,
        logging,
        tmp_path / "cnet",
        monitor="val/shape_error_mm",
        wandb_name="agg-s4",
        save_weights_only=True,
        lr_logging_interval="epoch",
    )
    a, b = _describe(rnet), _describe(cnet)
    assert a["dirs"] == (str(tmp_path / "rnet" / "checkpoints"),) * 2
    assert b["dirs"] == (str(tmp_path / "cnet" / "checkpoints"),) * 2
    for key in ("kinds", "best", "latest", "max_steps", "max_epochs", "loggers"):
        assert a[key] == b[key], key
    assert a["best"] == ("val/shape_error_mm", "min", 1, "best-{epoch:03d}-{step}", 0)
    assert a["latest"] == (True, 0, 3)
    assert (a["max_steps"], a["max_epochs"]) == (7, -1)
    assert a["loggers"] == ["CSVLogger", "WandbLogger"]
    assert sorted(a["kinds"]) == sorted(
        ["FiniteLossGuard", "ModelCheckpoint", "ModelCheckpoint", "LearningRateMonitor", "TQDMProgressBar"]
    )
    assert [type(c) for c in rnet.trainer.callbacks].count(TrainingClock) == 1
    guard = next(c for c in rnet.trainer.callbacks if isinstance(c, FiniteLossGuard))
    assert guard.check_every_n_steps == TRAINER.log_every_n_steps
    # What differs on purpose: C-Net's best checkpoints hold weights only, its learning rate is logged per epoch.
    assert (_checkpoints(rnet)[0].save_weights_only, _checkpoints(cnet)[0].save_weights_only) == (False, True)
    lr = [next(c for c in s.trainer.callbacks if isinstance(c, LearningRateMonitor)) for s in (rnet, cnet)]
    assert [m.logging_interval for m in lr] == ["step", "epoch"]
    assert any(isinstance(c, TQDMProgressBar) for c in cnet.trainer.callbacks)


def test_resume_last_checkpoint_and_wandb_identity(tmp_path):
    stage = build_trainer(TRAINER, LoggingConfig(wandb=True), tmp_path / "run", monitor="val/total")
    assert stage.last_checkpoint == tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert stage.resume_from(True) is None  # nothing written yet: a resumed run starts fresh
    stage.last_checkpoint.parent.mkdir(parents=True)
    stage.last_checkpoint.write_bytes(b"")
    assert stage.resume_from(True) == stage.last_checkpoint and stage.resume_from(False) is None
    assert stage.best_checkpoint is None and stage.metrics_csv is None
    wandb_logger = next(logger for logger in stage.trainer.loggers if isinstance(logger, WandbLogger))
    # A resumed run continues its W&B run: the id depends only on the name and the run directory.
    assert wandb_logger._wandb_init["id"] == wandb_run_id("run", tmp_path / "run")
    assert wandb_run_id("run", tmp_path / "run") != wandb_run_id("run", tmp_path / "other" / "run")
    assert wandb_logger._wandb_init["mode"] == "offline"
    assert isinstance(stage.csv_logger, CSVLogger) and stage.csv_logger.save_dir == str(tmp_path / "run")


@pytest.mark.parametrize("logging", [LoggingConfig(wandb=False), LoggingConfig(wandb_mode="disabled")])
def test_without_wandb_only_the_csv_logger(tmp_path, logging):
    stage = build_trainer(TRAINER, logging, tmp_path, monitor="val/total")
    assert [type(logger) for logger in stage.trainer.loggers] == [CSVLogger]


def test_precision_auto_is_resolved_for_the_machine(tmp_path, monkeypatch):
    monkeypatch.setattr("experiments.build.cpu_has_native_bf16", lambda: False)
    trainer = dataclasses.replace(TRAINER, precision="auto")
    stage = build_trainer(trainer, LoggingConfig(wandb=False), tmp_path, monitor="val/total")
    assert stage.trainer.precision == "32-true"


def test_intended_warnings_are_silenced_only_inside_the_block():
    message = "Found 3 module(s) in eval mode"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with intended_warnings_silenced():
            warnings.warn(message, stacklevel=1)
        assert not seen
        warnings.warn(message, stacklevel=1)
        assert len(seen) == 1


def test_a_run_with_checkpoints_is_not_started_over_without_resume(tmp_path):
    run_dir = tmp_path / "run"
    open_run_dir(run_dir, "a: 1\n", seed=0, existing=None, resume=False)
    assert (run_dir / "config.yaml").read_text() == "a: 1\n"
    with pytest.raises(ExistingOutputError, match="already has checkpoints; pass --resume to continue that run"):
        open_run_dir(run_dir, "a: 2\n", seed=0, existing="checkpoints", resume=False)
    assert (run_dir / "config.yaml").read_text() == "a: 1\n", "nothing of the refused run is written"
    open_run_dir(run_dir, "a: 2\n", seed=0, existing="checkpoints", resume=True)
    open_run_dir(run_dir, "a: 3\n", seed=0, existing="checkpoints", resume=False, fast_dev_run=True)
    assert (run_dir / "config.yaml").read_text() == "a: 3\n"


def test_latest_checkpoint_prefers_the_newest_best_then_last(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "last.ckpt").write_bytes(b"")
    assert latest_checkpoint(tmp_path) == tmp_path / "last.ckpt"
    older, newer = tmp_path / "best-000-1.ckpt", tmp_path / "best-001-9.ckpt"
    newer.write_bytes(b"")
    older.write_bytes(b"")
    os.utime(older, (1, 1))
    assert latest_checkpoint(tmp_path) == newer
