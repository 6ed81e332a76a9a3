"""``face3d train --config hrn``: HRN's detail layers on a frozen R-Net, on the synthetic detail faces; ends with
the detail table of `benchmarks.detail_eval` on the held-out split."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments.config import ExperimentConfig, load_config, to_yaml


@dataclass(frozen=True)
class HRNTrainResult:
    run_dir: Path
    last_checkpoint: Path | None
    train_seconds: float
    steps: int
    table: str

    def summary(self) -> str:
        return "\n".join(
            [
                f"run directory:   {self.run_dir}",
                f"last checkpoint: {self.last_checkpoint}",
                f"trained {self.steps} steps in {self.train_seconds / 60:.1f} min",
                "",
                self.table,
            ]
        )


def detail_data_settings(cfg: ExperimentConfig, image_size: int):
    from datamodules.detail import DetailDataSettings

    h = cfg.hrn
    return DetailDataSettings(
        n_train=h.n_train,
        n_val=h.n_val,
        n_test=h.n_test,
        image_size=image_size,
        seed=cfg.data.synthetic.seed,
        mid_size=h.mid_size,
        high_size=h.high_size,
        batch_size=cfg.data.batch_size,
    )


def build_hrn_module(cfg: ExperimentConfig):
    """R-Net (``hrn.rnet``, frozen) + fresh detail networks + the shared and HRN losses, as configured."""
    from datamodules.detail import detail_layout
    from experiments.build import load_rnet_checkpoint
    from lightning_modules.hrn_module import HRNModule
    from losses.hrn import HRNLossWeights
    from losses.hybrid import HybridLoss, LossWeights
    from networks.hrn import HRNDetail, HRNSettings

    h, lc = cfg.hrn, cfg.loss
    rnet_module, _ = load_rnet_checkpoint(h.rnet)
    face_model, camera = rnet_module.renderer.face_model, rnet_module.renderer.camera
    recognition = None
    if lc.perceptual > 0:
        from networks.recognition import build_recognition_net

        recognition = build_recognition_net(lc.recognition_net, lc.recognition_weights)
    # The coefficients are R-Net's and fixed here: their prior and the albedo flatness have nothing to act on.
    shared = LossWeights(
        photometric=lc.photometric,
        landmark=lc.landmark,
        perceptual=lc.perceptual,
        regularization=0.0,
        texture=0.0,
        nose_mouth_landmark_weight=lc.nose_mouth_landmark_weight,
    )
    detail = HRNDetail(
        face_model,
        detail_layout(face_model, h.mid_size, h.high_size),
        camera,
        HRNSettings(widths=tuple(h.widths), max_deformation=h.max_deformation, max_displacement=h.max_displacement),
    )
    weights = HRNLossWeights(
        contour=h.contour,
        tv=h.tv,
        deformation=h.deformation,
        displacement=h.displacement,
        reflectance=h.reflectance,
        contour_max_gap=h.contour_max_gap,
    )
    return HRNModule(
        rnet_module.rnet,
        detail,
        HybridLoss(shared, face_model.skin_mask, recognition),
        weights,
        lr=h.lr,
        backend=cfg.renderer.backend,
        config=to_yaml(cfg),
    )


def load_hrn_checkpoint(path: str | Path):
    """(HRNModule, config) from a checkpoint of ``face3d train --config hrn``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HRN checkpoint {path} not found; train one with `make train-hrn`")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "config_yaml" not in checkpoint or "detail.deformation_net.out.weight" not in checkpoint.get("state_dict", {}):
        raise ValueError(f"{path} is not an HRN checkpoint (face3d train --config hrn writes them)")
    cfg = load_config(base_yaml=checkpoint["config_yaml"])
    module = build_hrn_module(cfg)
    module.load_state_dict(checkpoint["state_dict"], strict=True)
    return module.eval(), cfg


def build_hrn_trainer(cfg: ExperimentConfig, run_dir: Path, callbacks: list):
    """The Lightning trainer of an HRN run (steps-bounded, CSV logs, checkpoints from the callbacks)."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    from experiments.build import resolve_precision

    tc = cfg.trainer
    return pl.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=tc.max_epochs,
        max_steps=tc.max_steps,
        accelerator=tc.accelerator,
        devices=1,
        precision=resolve_precision("32-true", tc.accelerator),
        log_every_n_steps=tc.log_every_n_steps,
        val_check_interval=tc.val_check_interval,
        gradient_clip_val=tc.gradient_clip_val,
        logger=CSVLogger(save_dir=str(run_dir), name="logs"),
        callbacks=callbacks,
        enable_model_summary=False,
    )


def train_hrn(cfg: ExperimentConfig, resume: bool = False) -> HRNTrainResult:
    """Train as configured, then score the detail layers on the held-out detail faces."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar

    from benchmarks.detail_eval import evaluate_detail, format_detail_table
    from datamodules.detail import DetailDataModule

    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r"You have overridden `transfer_batch_to_device`")
    run_dir = Path(cfg.logging.output_dir) / (cfg.logging.run_name or cfg.name)
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.exists() and not resume:
        raise FileExistsError(
            f"run directory {run_dir} already has checkpoints; pass --resume to continue that run, or choose "
            "another with logging.run_name=NAME"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    pl.seed_everything(cfg.trainer.seed, workers=True)
    module = build_hrn_module(cfg)
    data = DetailDataModule(module.detail.face_model, detail_data_settings(cfg, module.detail.camera.image_size[0]))
    latest = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=cfg.trainer.checkpoint_every_n_steps,
    )
    trainer = build_hrn_trainer(cfg, run_dir, [latest, TQDMProgressBar(refresh_rate=5)])
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume and last.exists() else None)
    seconds = time.perf_counter() - start
    table = format_detail_table(evaluate_detail(module, data.dataset("test"), cfg.data.batch_size))
    (run_dir / "detail_table.md").write_text(table + "\n")
    return HRNTrainResult(run_dir, last if last.exists() else None, seconds, int(trainer.global_step), table)
