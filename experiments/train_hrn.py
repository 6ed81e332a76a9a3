"""``face3d train --config hrn``: HRN's detail layers on a frozen R-Net, on the synthetic detail faces; ends with
the detail table of `benchmarks.detail_eval` on the held-out split."""

from __future__ import annotations

import argparse
import dataclasses
import time
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
    """``hrn.data`` at the R-Net's crop size (the detail faces must be the pictures R-Net was trained on)."""
    return dataclasses.replace(cfg.hrn.data, image_size=image_size)


def build_hrn_module(cfg: ExperimentConfig):
    """R-Net (``hrn.rnet``, frozen) + fresh detail networks + the shared and HRN losses, as configured."""
    from datamodules.detail import detail_layout
    from experiments.build import load_rnet_checkpoint
    from lightning_modules.hrn_module import HRNModule
    from losses.hybrid import HybridLoss, LossWeights
    from networks.hrn import HRNDetail

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
    detail = HRNDetail(face_model, detail_layout(face_model, h.data.mid_size, h.data.high_size), camera, h.network)
    return HRNModule(
        rnet_module.rnet,
        detail,
        HybridLoss(shared, face_model.skin_mask, recognition),
        h.loss,
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


def train_hrn(cfg: ExperimentConfig, resume: bool = False) -> HRNTrainResult:
    """Train as configured, then score the detail layers on the held-out detail faces."""
    from benchmarks.detail_eval import evaluate_detail, format_detail_table
    from datamodules.detail import DetailDataModule
    from experiments.trainer import build_trainer, intended_warnings_silenced, last_checkpoint_path, open_run_dir

    run_dir = Path(cfg.logging.output_dir) / (cfg.logging.run_name or cfg.name)
    last = last_checkpoint_path(run_dir)
    open_run_dir(
        run_dir, to_yaml(cfg), cfg.trainer.seed, existing="checkpoints" if last.exists() else None, resume=resume
    )
    module = build_hrn_module(cfg)
    data = DetailDataModule(module.detail.face_model, detail_data_settings(cfg, module.detail.camera.image_size[0]))
    stage = build_trainer(cfg.trainer, cfg.logging, run_dir, monitor="val/loss")
    start = time.perf_counter()
    with intended_warnings_silenced():
        stage.trainer.fit(module, datamodule=data, ckpt_path=stage.resume_from(resume))
    seconds = time.perf_counter() - start
    table = format_detail_table(evaluate_detail(module, data.dataset("test"), cfg.hrn.data.batch_size))
    (run_dir / "detail_table.md").write_text(table + "\n")
    return HRNTrainResult(run_dir, last if last.exists() else None, seconds, int(stage.trainer.global_step), table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.train_hrn", description="The detail table of an HRN checkpoint."
    )
    parser.add_argument("--ckpt", default=None, help="HRN checkpoint (face3d train --config hrn); default: untrained")
    parser.add_argument("--n-test", type=int, default=None, help="test faces (default: the config's hrn.data.n_test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from benchmarks.detail_eval import evaluate_detail, format_detail_table
    from datamodules.detail import DetailFaceDataset

    if args.ckpt:
        module, cfg = load_hrn_checkpoint(args.ckpt)
    else:
        cfg = load_config(["hrn"], [])
        module = build_hrn_module(cfg)
    settings = detail_data_settings(cfg, module.detail.camera.image_size[0])
    if args.n_test is not None:
        settings = type(settings)(**{**settings.__dict__, "n_test": args.n_test})
    dataset = DetailFaceDataset(module.detail.face_model, "test", settings)
    print(format_detail_table(evaluate_detail(module, dataset)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
