"""Composition root: turns an `ExperimentConfig` into the plain objects the rest of the code takes.

This is the only place (with `experiments.config`) that reads the config; every constructor below gets
explicit typed arguments.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from experiments.config import ExperimentConfig, load_config, to_yaml
from face_model import FaceModel, load_face_model
from renderers.camera import PinholeCamera
from renderers.mesh_renderer import MeshRenderer


def build_face_model(cfg: ExperimentConfig) -> FaceModel:
    fm = cfg.face_model
    options = dict(n_id=fm.n_id, n_tex=fm.n_tex, sh_channels=fm.sh_channels)
    if fm.n_exp is not None:
        options["n_exp"] = fm.n_exp
    return load_face_model(fm.name, path=fm.path, **options)


def build_camera(cfg: ExperimentConfig) -> PinholeCamera:
    size = cfg.renderer.image_size
    return PinholeCamera().resized(size, size)


def build_renderer(cfg: ExperimentConfig, face_model: FaceModel) -> MeshRenderer:
    return MeshRenderer(face_model, build_camera(cfg), backend=cfg.renderer.backend)


def build_loss(cfg: ExperimentConfig, face_model: FaceModel):
    from losses.hybrid import LossWeights, HybridLoss

    lc = cfg.loss
    names = {f.name for f in dataclasses.fields(LossWeights)}
    weights = LossWeights(**{k: v for k, v in dataclasses.asdict(lc).items() if k in names})
    recognition = None
    if lc.perceptual > 0:
        from networks.recognition import build_recognition_net

        recognition = build_recognition_net(lc.recognition_net, lc.recognition_weights)
    return HybridLoss(weights, face_model.skin_mask, recognition)


def build_rnet(cfg: ExperimentConfig, face_model: FaceModel):
    from networks.rnet import RNet

    rnet = RNet(face_model.layout, backbone=cfg.network.backbone, pretrained_path=cfg.network.pretrained)
    if cfg.network.deep3d_checkpoint:
        from networks.deep3d_import import load_deep3d_checkpoint

        load_deep3d_checkpoint(rnet, cfg.network.deep3d_checkpoint)
    return rnet


def build_rnet_module(cfg: ExperimentConfig, face_model: FaceModel | None = None):
    from lightning_modules.rnet_module import OptimSettings, RNetModule

    face_model = face_model if face_model is not None else build_face_model(cfg)
    oc = cfg.optim
    return RNetModule(
        rnet=build_rnet(cfg, face_model),
        renderer=build_renderer(cfg, face_model),
        loss=build_loss(cfg, face_model),
        optim=OptimSettings(lr=oc.lr, lr_step_epochs=oc.lr_step_epochs, lr_gamma=oc.lr_gamma,
                            weight_decay=oc.weight_decay),
        use_skin_attention=cfg.loss.skin_attention,
        channels_last=cfg.trainer.channels_last,
        config=to_yaml(cfg),
    )


def build_datamodule(cfg: ExperimentConfig, face_model: FaceModel, cache_dir: Path | None = None):
    dc = cfg.data
    if dc.kind == "synthetic":
        from datamodules.synthetic import SyntheticFaceDataModule

        sc = dc.synthetic
        return SyntheticFaceDataModule(
            face_model=face_model,
            image_size=cfg.renderer.image_size,
            n_train=sc.n_train,
            n_val=sc.n_val,
            n_test=sc.n_test,
            batch_size=dc.batch_size,
            num_workers=dc.num_workers,
            seed=sc.seed,
            max_yaw_deg=sc.max_yaw_deg,
            max_pitch_deg=sc.max_pitch_deg,
            max_roll_deg=sc.max_roll_deg,
            occluder_probability=sc.occluder_probability,
            landmark_noise_px=sc.landmark_noise_px,
            cache_dir=cache_dir,
        )
    from datamodules.prepared import PreparedImagesDataModule

    pc = dc.prepared
    return PreparedImagesDataModule(
        root=Path(pc.root),
        image_size=cfg.renderer.image_size,
        batch_size=dc.batch_size,
        num_workers=dc.num_workers,
        val_fraction=pc.val_fraction,
        augment=pc.augment,
    )


def config_from_checkpoint(checkpoint: dict, path: str | Path) -> ExperimentConfig:
    text = checkpoint.get("face3d_config")
    if not text:
        raise ValueError(
            f"{path} is not a face3d-lightning R-Net checkpoint (no 'face3d_config' entry). For a Deep3DFaceRecon "
            "epoch_*.pth use network.deep3d_checkpoint=PATH with the BFM model instead."
        )
    return load_config(base_yaml=text)


def load_rnet_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild an `RNetModule` from a checkpoint written by ``face3d train`` (config included)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; train one with `make train-single` or "
                                "`face3d train --config NAME` (checkpoints are under outputs/<run>/checkpoints/)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ValueError(f"{path} could not be read as a PyTorch checkpoint ({err.__class__.__name__}: {err})") from None
    cfg = config_from_checkpoint(checkpoint, path)
    module = build_rnet_module(cfg)
    missing, unexpected = module.load_state_dict(checkpoint["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model its config describes: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return module.eval(), cfg
