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
    from networks.rnet import RNet, load_pretrained_backbone

    nc = cfg.network
    rnet = RNet(face_model.layout, backbone=nc.backbone, frozen_layers=nc.frozen_layers, pooled_grid=nc.pooled_grid)
    if nc.pretrained is not None:
        load_pretrained_backbone(rnet, nc.pretrained)
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
                            weight_decay=oc.weight_decay, identity_lr_scale=oc.identity_lr_scale),
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


def _read_checkpoint(path: Path, map_location: str | torch.device, missing: str) -> dict:
    """The unpickled checkpoint at ``path``; FileNotFoundError with the ``missing`` message, ValueError when
    the file is not a PyTorch checkpoint."""
    if not path.is_file():
        raise FileNotFoundError(missing)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ValueError(f"{path} could not be read as a PyTorch checkpoint ({err.__class__.__name__}: {err})") from None


def _for_checkpoint_weights(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` without the weight files R-Net started from (pretrained backbone, Deep3D checkpoint): a checkpoint
    holds every weight, and those files need not exist on the machine that loads it."""
    return dataclasses.replace(cfg, network=dataclasses.replace(cfg.network, pretrained=None, deep3d_checkpoint=None))


def load_rnet_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild an `RNetModule` from a checkpoint written by ``face3d train`` (config included)."""
    path = Path(path)
    checkpoint = _read_checkpoint(path, map_location, f"checkpoint {path} not found; train one with `make "
                                  "train-single` or `face3d train --config NAME` (checkpoints are under "
                                  "outputs/<run>/checkpoints/)")
    cfg = config_from_checkpoint(checkpoint, path)
    module = build_rnet_module(_for_checkpoint_weights(cfg))
    missing, unexpected = module.load_state_dict(checkpoint["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model its config describes: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return module.eval(), cfg


# ------------------------------------------------------------------------------------------------- C-Net


def build_cnet(cfg: ExperimentConfig, rnet, kind: str):
    """A C-Net of ``kind`` ("elementwise" or "global") sized for ``rnet``'s backbone and face model."""
    from networks.cnet import CNet, rnet_feature_channels

    shallow, deep = rnet_feature_channels(rnet.backbone)
    return CNet(rnet.layout.n_id, shallow, deep, kind=kind, conv_channels=tuple(cfg.cnet.conv_channels),
                hidden=cfg.cnet.hidden)


def build_cnet_module(cfg: ExperimentConfig, rnet_module, strategy: str, loss=None):
    """A `CNetModule` on the R-Net, renderer and (unless ``loss`` is given) hybrid loss of ``rnet_module``."""
    from lightning_modules.cnet_module import CNetModule
    from lightning_modules.rnet_module import OptimSettings
    from networks.aggregation import GLOBAL_STRATEGIES

    cnet = None
    if strategy != "mean":
        cnet = build_cnet(cfg, rnet_module.rnet, "global" if strategy in GLOBAL_STRATEGIES else "elementwise")
    oc = cfg.optim
    return CNetModule(
        rnet=rnet_module.rnet,
        renderer=rnet_module.renderer,
        loss=loss if loss is not None else rnet_module.loss,
        cnet=cnet,
        strategy=strategy,
        optim=OptimSettings(lr=oc.lr, lr_step_epochs=oc.lr_step_epochs, lr_gamma=oc.lr_gamma,
                            weight_decay=oc.weight_decay),
        use_skin_attention=cfg.loss.skin_attention,
        config=to_yaml(cfg),
    )


def build_image_set_datamodule(cfg: ExperimentConfig, face_model: FaceModel, cache_dir: Path | None = None):
    """`ImageSetDataModule` over synthetic sets (train/val/test) or prepared photos (train/val)."""
    from datamodules.image_sets import ImageSetDataModule

    sc = cfg.data.sets
    if sc.kind == "synthetic":
        from datamodules.image_sets import SyntheticImageSetDataset

        common = dict(set_size=sc.set_size, min_set_size=sc.min_set_size, seed=sc.seed,
                      image_size=cfg.renderer.image_size, max_yaw_deg=sc.max_yaw_deg, max_pitch_deg=sc.max_pitch_deg,
                      max_roll_deg=sc.max_roll_deg, albedo_jitter=sc.albedo_jitter,
                      degrade_probability=sc.degrade_probability, degradations=tuple(sc.degradations),
                      landmark_noise_px=sc.landmark_noise_px, cache_dir=cache_dir, backend=cfg.renderer.backend)
        sizes = {"train": sc.n_train, "val": sc.n_val, "test": sc.n_test}
        datasets = {split: SyntheticImageSetDataset(face_model, n, split=split, **common) for split, n in sizes.items()}
    else:
        from datamodules.image_sets import PreparedImageSetDataset, group_by_identity, split_identities
        from datamodules.prepared import read_prepared

        groups = group_by_identity(read_prepared(sc.root), min_images=sc.min_images)
        train, val = split_identities(groups, sc.val_fraction)
        if not train:
            raise ValueError(f"all {len(val)} identities of {sc.root} fell into the validation split; lower "
                             f"data.sets.val_fraction ({sc.val_fraction}) or add people")
        common = dict(set_size=sc.set_size, image_size=cfg.renderer.image_size, seed=sc.seed)
        datasets = {"train": PreparedImageSetDataset(train, sets_per_identity=sc.sets_per_identity, random_sets=True,
                                                     **common),
                    "val": PreparedImageSetDataset(val, random_sets=False, **common)}
    return ImageSetDataModule(datasets, batch_size=sc.batch_size, num_workers=cfg.data.num_workers, seed=sc.seed)


def load_cnet_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild a `CNetModule` (frozen R-Net included) from a checkpoint written by ``face3d train-aggregate``;
    returns (module in eval mode, config)."""
    from lightning_modules.cnet_module import restore_rebuilt_state

    path = Path(path)
    checkpoint = _read_checkpoint(path, map_location, f"C-Net checkpoint {path} not found; train one with `face3d "
                                  "train-aggregate` (checkpoints are under outputs/train-aggregate/<strategy>/"
                                  "checkpoints/)")
    info = checkpoint.get("face3d_cnet")
    if info is None:
        raise ValueError(f"{path} is not a C-Net checkpoint (no 'face3d_cnet' entry); an R-Net checkpoint goes to "
                         "--rnet-ckpt instead")
    cfg = config_from_checkpoint(checkpoint, path)
    face_model = build_face_model(cfg)
    rnet_module = build_rnet_module(_for_checkpoint_weights(cfg), face_model)
    module = build_cnet_module(cfg, rnet_module, info["strategy"])
    state = dict(checkpoint["state_dict"])
    restore_rebuilt_state(module, state)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the C-Net its config describes: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return module.eval(), cfg


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bf16 in hardware (x86 ``avx512_bf16`` or ``amx_bf16``; Linux only, since
    that is where the flags can be read). ``cpuinfo`` is /proc/cpuinfo's text, read when not given."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, accelerator: str) -> str:
    """The Lightning precision for ``trainer.precision`` (see `TrainerConfig.precision`): 'auto' picks mixed
    precision where the hardware runs it natively and full precision elsewhere; other values pass through."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
