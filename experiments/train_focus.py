"""FOCUS training entry point (``face3d train --config focus``, ``make train-focus``): the stages of
`lightning_modules.focus_module` run one after the other, each by its own step-bounded Lightning Trainer.

A run writes ``outputs/<name>/``: ``config.yaml``, ``checkpoints/NN-<stage>.ckpt`` after every stage (and
``last.ckpt``), ``logs/version_N/metrics.csv`` (stage-prefixed names), an offline W&B run, ``masks.png``
(input | FOCUS's mask | true visibility for a few test pictures) and ``evaluation.md`` (the tables of
`benchmarks.focus_eval`). ``--resume`` skips the stages whose checkpoint exists. No checkpoint is written
from non-finite weights.
"""

from __future__ import annotations

import argparse
import dataclasses
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

    return OcclusionDataModule(
        face_model,
        cfg.data.synthetic,
        cfg.focus.occlusion,
        image_size=cfg.renderer.image_size,
        batch_size=cfg.data.batch_size,
        cache_dir=cache_dir,
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
    from experiments.trainer import (
        build_loggers,
        checkpoint_dir,
        finish_wandb_runs,
        intended_warnings_silenced,
        last_checkpoint_path,
        open_run_dir,
    )

    run_dir = Path(cfg.logging.output_dir) / (cfg.logging.run_name or cfg.name)
    ckpt_dir, last = checkpoint_dir(run_dir), last_checkpoint_path(run_dir)
    open_run_dir(
        run_dir, to_yaml(cfg), cfg.trainer.seed, existing="checkpoints" if last.exists() else None, resume=resume
    )
    with intended_warnings_silenced(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        # Validation runs between stages (the evaluation), not inside a stage's fit.
        warnings.filterwarnings("ignore", message=r"You defined a `validation_step` but have no `val_dataloader`")
        # One set of loggers for every stage, so the whole schedule is one run.
        loggers = build_loggers(cfg.logging, run_dir)
        try:
            return _run_schedule(cfg, run_dir, ckpt_dir, last, loggers, resume, evaluate)
        finally:
            finish_wandb_runs(loggers)


def _run_schedule(
    cfg: ExperimentConfig, run_dir: Path, ckpt_dir: Path, last: Path, loggers: list, resume: bool, evaluate: bool
) -> FocusTrainResult:
    from benchmarks.focus_eval import evaluate_focus, save_mask_figure
    from experiments.build import build_face_model
    from experiments.trainer import build_trainer

    face_model = build_face_model(cfg)
    module = build_focus_module(cfg, face_model)
    datamodule = build_focus_datamodule(cfg, face_model, cache_dir=Path(cfg.logging.output_dir) / "cache")
    datamodule.setup("fit")
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
        # Each stage is bounded by its own steps; the runner validates and saves between stages.
        limits = dataclasses.replace(cfg.trainer, max_steps=steps, max_epochs=-1, max_time_minutes=None)
        trainer = build_trainer(limits, cfg.logging, run_dir, monitor=None, loggers=loggers).trainer
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.train_focus", description="The mask and shape tables of a FOCUS checkpoint."
    )
    parser.add_argument("--ckpt", required=True, help="a FOCUS checkpoint (train-focus's checkpoints/last.ckpt)")
    parser.add_argument("--n-test", type=int, default=None, help="test pictures (default: the run's)")
    parser.add_argument("--out", type=Path, default=None, help="also write evaluation.md and masks.png here")
    args = parser.parse_args(argv)
    from benchmarks.focus_eval import evaluate_focus, save_mask_figure
    from experiments.build import build_rnet
    from experiments.config import load_config

    module, cfg = load_focus_checkpoint(args.ckpt)
    if args.n_test:
        cfg = dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, synthetic=dataclasses.replace(cfg.data.synthetic, n_test=args.n_test)),
        )
    datamodule = build_focus_datamodule(cfg, module.renderer.face_model, Path(cfg.logging.output_dir) / "cache")
    # The reference R-Net: the run's starting point, rebuilt from its stored config.
    reference = build_rnet(load_config(base_yaml=module.config_yaml), module.renderer.face_model)
    evaluation = evaluate_focus(module, datamodule, reference)
    print(evaluation.markdown())
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "evaluation.md").write_text(evaluation.markdown() + "\n")
        save_mask_figure(module, datamodule.dataset("test"), args.out / "masks.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
