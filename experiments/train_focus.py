"""FOCUS training entry point (``face3d train --config focus``, ``make train-focus``): the stages of
`lightning_modules.focus_module` run one after the other, each by its own step-bounded Lightning Trainer.

A run writes ``outputs/<name>/``: ``config.yaml``, ``checkpoints/NN-<stage>.ckpt`` after every stage (and
``last.ckpt``), ``logs/version_N/metrics.csv`` (stage-prefixed names), an offline W&B run, ``masks.png``
(input | FOCUS's mask | true visibility for a few test pictures) and ``evaluation.md`` (the tables of
`benchmarks.focus_eval`). ``--resume`` skips the stages whose checkpoint exists. No checkpoint is written
from non-finite weights.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments.config import ExperimentConfig, to_yaml


@dataclass(frozen=True)
class FocusTrainResult:
    """Where a finished FOCUS run put its outputs, its timings and its evaluation (None when skipped)."""

    run_dir: Path
    last_checkpoint: Path
    stage_seconds: dict[str, float]
    evaluation: object | None

    def summary(self) -> str:
        lines = [f"run directory:   {self.run_dir}", f"last checkpoint: {self.last_checkpoint}"]
        lines += [f"  {stage}: {seconds:.0f} s" for stage, seconds in self.stage_seconds.items()]
        if self.evaluation is not None:
            lines.append(self.evaluation.markdown())
        return "\n".join(lines)


def build_focus_datamodule(cfg: ExperimentConfig, face_model, cache_dir: Path | None = None):
    from datamodules.occlusion import OcclusionDataModule

    sc = cfg.data.synthetic
    return OcclusionDataModule(
        face_model,
        image_size=cfg.renderer.image_size,
        n_train=sc.n_train,
        n_val=sc.n_val,
        n_test=sc.n_test,
        batch_size=cfg.data.batch_size,
        seed=sc.seed,
        settings=cfg.focus.occlusion,
        cache_dir=cache_dir,
        landmark_noise_px=sc.landmark_noise_px,
        max_yaw_deg=sc.max_yaw_deg,
        max_pitch_deg=sc.max_pitch_deg,
        max_roll_deg=sc.max_roll_deg,
    )


def build_focus_module(cfg: ExperimentConfig, face_model=None):
    """The `FocusModule` of a config: R-Net as configured (``network.init`` for a trained start), the
    hybrid loss, the U-Net and, with ``focus.settings.feature_layers > 0``, SFace's shallow features."""
    from experiments.build import build_face_model, build_loss, build_renderer, build_rnet
    from lightning_modules.focus_module import FocusModule
    from networks.segmentation import SegmentationUNet, ShallowFeatures

    face_model = face_model or build_face_model(cfg)
    fs = cfg.focus.settings
    features = ShallowFeatures.from_sface(fs.feature_layers, fs.feature_size) if fs.feature_layers else None
    return FocusModule(
        encoder=build_rnet(cfg, face_model),
        renderer=build_renderer(cfg, face_model),
        hybrid=build_loss(cfg, face_model),
        unet=SegmentationUNet(cfg.focus.unet),
        weights=cfg.focus.loss,
        settings=fs,
        features=features,
        config=to_yaml(cfg),
    )


def load_focus_checkpoint(path: str | Path, map_location: str = "cpu"):
    """(module, config) rebuilt from a FOCUS checkpoint (its stored config and weights)."""
    from experiments.build import config_from_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FOCUS checkpoint {path} not found; train one with `make train-focus`")
    checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    if "focus_stage" not in checkpoint:
        raise ValueError(f"{path} is not a FOCUS checkpoint (no 'focus_stage'); pass one written by train-focus")
    cfg = config_from_checkpoint(checkpoint, path)
    # The weights come from the checkpoint: do not read network.init's source again.
    cfg.network.init = None
    cfg.network.pretrained = None
    module = build_focus_module(cfg)
    # Keep the run's own config (with its network.init), e.g. to rebuild the R-Net it started from.
    module.config_yaml = checkpoint["face3d_config"]
    module.load_state_dict(checkpoint["state_dict"])
    module.set_stage(checkpoint["focus_stage"])
    return module.eval(), cfg


def make_stage_trainer(cfg: ExperimentConfig, run_dir: Path, max_steps: int, loggers: list, callbacks: list):
    """One stage's Trainer: bounded by ``max_steps``, no automatic checkpoints (the runner validates and saves
    between stages). The one place to swap for a shared trainer builder."""
    import pytorch_lightning as pl

    from experiments.build import resolve_precision

    tc = cfg.trainer
    return pl.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=-1,
        max_steps=max_steps,
        accelerator=tc.accelerator,
        devices=1,
        precision=resolve_precision(tc.precision, tc.accelerator),
        log_every_n_steps=tc.log_every_n_steps,
        gradient_clip_val=tc.gradient_clip_val,
        logger=loggers,
        callbacks=callbacks,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )


def _loggers(cfg: ExperimentConfig, run_dir: Path) -> list:
    from pytorch_lightning.loggers import CSVLogger

    loggers = [CSVLogger(save_dir=str(run_dir), name="logs")]
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
    return loggers


def save_if_finite(trainer, module, path: Path) -> None:
    """Write ``path`` only when every weight and buffer is finite; otherwise stop with the names."""
    from lightning_modules.callbacks import NonFiniteLossError

    bad = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if not torch.isfinite(t).all()]
    if bad:
        raise NonFiniteLossError(
            f"non-finite weights after FOCUS stage {module.stage} (e.g. {bad[:3]}); {path.name} was not written. "
            "Lower focus.settings.encoder_lr / unet_lr or set trainer.gradient_clip_val, then run again with --resume."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(str(path))


def _save_map(values: torch.Tensor, path: Path) -> None:
    """(H, W) non-negative map as a grey PNG scaled to its maximum (the misfit prior, for the run's record)."""
    import cv2

    scaled = values / values.max().clamp_min(1e-6)
    cv2.imwrite(str(path), (scaled.cpu().numpy() * 255).round().astype("uint8"))


def _brief(metrics: dict) -> str:
    """One line of a stage's validation metrics."""
    keys = {"val/mask_f1": "mask F1", "val/shape_error_mm": "shape error mm", "val/mean_face_error_mm": "mean face mm"}
    return ", ".join(f"{label} {float(metrics[key]):.3f}" for key, label in keys.items() if key in metrics)


def train_focus(cfg: ExperimentConfig, resume: bool = False, evaluate: bool = True) -> FocusTrainResult:
    """Run FOCUS's schedule (`FocusSettings.schedule`) and evaluate on the occluded test split."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import TQDMProgressBar

    from benchmarks.focus_eval import evaluate_focus, save_mask_figure
    from experiments.build import build_face_model
    from lightning_modules.callbacks import FiniteLossGuard

    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r"You have overridden `transfer_batch_to_device`")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # Validation runs between stages (the evaluation), not inside a stage's fit.
    warnings.filterwarnings("ignore", message=r"You defined a `validation_step` but have no `val_dataloader`")
    run_dir = Path(cfg.logging.output_dir) / (cfg.logging.run_name or cfg.name)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if last.exists() and not resume:
        raise FileExistsError(
            f"run directory {run_dir} already has checkpoints; pass --resume to continue that run, or choose "
            "another with logging.run_name=NAME"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    pl.seed_everything(cfg.trainer.seed, workers=True)

    face_model = build_face_model(cfg)
    module = build_focus_module(cfg, face_model)
    datamodule = build_focus_datamodule(cfg, face_model, cache_dir=Path(cfg.logging.output_dir) / "cache")
    datamodule.setup("fit")
    loggers = _loggers(cfg, run_dir)
    fs = cfg.focus.settings
    stage_seconds: dict[str, float] = {}
    for k, (stage, steps) in enumerate(fs.schedule()):
        path = ckpt_dir / f"{k:02d}-{stage}.ckpt"
        module.set_stage(stage)
        if resume and path.exists():
            module.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["state_dict"])
            print(f"FOCUS stage {k} ({stage}): restored from {path.name}")
            continue
        if stage == "pretrain_unet" and fs.misfit_prior and not bool(module.misfit_estimated):
            batches = [b for b, _ in zip(datamodule.train_dataloader(), range(fs.misfit_batches))]
            misfit = module.estimate_misfit(batches)
            _save_map(misfit[0, 0], run_dir / "misfit_prior.png")
            print(f"misfit prior: median expected residual {float(misfit.median()):.3f}, max {float(misfit.max()):.3f}")
        start = time.perf_counter()
        callbacks = [FiniteLossGuard(cfg.trainer.log_every_n_steps), TQDMProgressBar(refresh_rate=10)]
        trainer = make_stage_trainer(cfg, run_dir, steps, loggers, callbacks)
        trainer.fit(module, train_dataloaders=datamodule.train_dataloader())
        stage_seconds[f"{k:02d}-{stage}"] = time.perf_counter() - start
        save_if_finite(trainer, module, path)
        save_if_finite(trainer, module, last)
        if len(datamodule.dataset("val")):
            metrics = trainer.validate(module, dataloaders=datamodule.val_dataloader(), verbose=False)[0]
            print(
                f"FOCUS stage {k} ({stage}, {steps} steps, {stage_seconds[f'{k:02d}-{stage}']:.0f} s): "
                + _brief(metrics)
            )
    if not last.exists():
        raise ValueError("the FOCUS schedule has no steps: set focus.settings.*_steps")
    evaluation = None
    if evaluate:
        from experiments.build import build_rnet

        # R-Net with skin attention, FOCUS's starting point, is the reference the encoder must beat.
        reference = build_rnet(cfg, face_model)
        evaluation = evaluate_focus(module, datamodule, reference)
        (run_dir / "evaluation.md").write_text(evaluation.markdown() + "\n")
        save_mask_figure(module, datamodule.dataset("test"), run_dir / "masks.png")
    return FocusTrainResult(run_dir, last, stage_seconds, evaluation)
