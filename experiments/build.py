"""Composition root: turns an `ExperimentConfig` into the plain objects the rest of the code takes.

This is the only place (with `experiments.config`) that reads the config; every constructor below gets
explicit typed arguments.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from errors import InvalidInputError, MissingFileError
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
    from losses.hybrid import HybridLoss

    lc = cfg.loss
    recognition = None
    if lc.perceptual > 0:
        from networks.recognition import build_recognition_net

        recognition = build_recognition_net(lc.recognition_net, lc.recognition_weights)
    return HybridLoss(lc.weights(), face_model.skin_mask, recognition)


def build_rnet(cfg: ExperimentConfig, face_model: FaceModel):
    from networks.rnet import RNet, load_pretrained_backbone

    nc = cfg.network
    rnet = RNet(
        face_model.layout,
        backbone=nc.backbone,
        frozen_layers=nc.frozen_layers,
        pooled_grid=nc.pooled_grid,
        landmark_input=nc.landmark_input,
        landmark_hidden=nc.landmark_hidden,
    )
    if nc.init is not None:
        # A whole trained R-Net: it replaces the pretrained backbone, so that file is not read at all.
        source = read_rnet_source(nc.init)
        check_same_architecture(
            source.config, cfg, f"network.init={nc.init} ({source.origin})", "drop network.init, or"
        )
        load_rnet_state(rnet, source.state_dict, source.origin)
        return rnet
    if nc.pretrained is not None:
        load_pretrained_backbone(rnet, nc.pretrained)
    if cfg.network.deep3d_checkpoint:
        from networks.deep3d_import import load_deep3d_checkpoint

        load_deep3d_checkpoint(rnet, cfg.network.deep3d_checkpoint)
    return rnet


def build_rnet_module(cfg: ExperimentConfig, face_model: FaceModel | None = None):
    from lightning_modules.rnet_module import RNetModule

    face_model = face_model if face_model is not None else build_face_model(cfg)
    return RNetModule(
        rnet=build_rnet(cfg, face_model),
        renderer=build_renderer(cfg, face_model),
        loss=build_loss(cfg, face_model),
        optim=cfg.optim,
        use_skin_attention=cfg.loss.skin_attention,
        channels_last=cfg.trainer.channels_last,
        config=to_yaml(cfg),
    )


def build_datamodule(cfg: ExperimentConfig, face_model: FaceModel, cache_dir: Path | None = None):
    """The R-Net data the config's ``data`` section describes: synthetic faces or prepared photos."""
    dc = cfg.data
    loading = dict(image_size=cfg.renderer.image_size, batch_size=dc.batch_size, num_workers=dc.num_workers)
    if dc.kind == "synthetic":
        from datamodules.synthetic import SyntheticFaceDataModule

        return SyntheticFaceDataModule(face_model, dc.synthetic, cache_dir=cache_dir, **loading)
    from datamodules.prepared import PreparedImagesDataModule

    return PreparedImagesDataModule(dc.prepared, **loading)


def config_from_checkpoint(checkpoint: dict, path: str | Path) -> ExperimentConfig:
    text = checkpoint.get("face3d_config")
    if not text:
        raise InvalidInputError(
            f"{path} is not a face3d-lightning R-Net checkpoint (no 'face3d_config' entry). For a Deep3DFaceRecon "
            "epoch_*.pth use network.deep3d_checkpoint=PATH with the BFM model instead."
        )
    return load_config(base_yaml=text)


def _read_checkpoint(path: Path, map_location: str | torch.device, missing: str) -> dict:
    """The unpickled checkpoint at ``path``; FileNotFoundError with the ``missing`` message, ValueError when
    the file is not a PyTorch checkpoint."""
    if not path.is_file():
        raise MissingFileError(missing)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise InvalidInputError(
            f"{path} could not be read as a PyTorch checkpoint ({err.__class__.__name__}: {err})"
        ) from None


def _for_checkpoint_weights(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` without the weight files R-Net started from (pretrained backbone, Deep3D checkpoint): a checkpoint
    holds every weight, and those files need not exist on the machine that loads it."""
    return dataclasses.replace(
        cfg, network=dataclasses.replace(cfg.network, pretrained=None, deep3d_checkpoint=None, init=None)
    )


# ------------------------------------------------------------------------------ trained R-Net weights

BUNDLED = "bundled"
"""``network.init`` / ``--ckpt`` value naming the R-Net that ships in ``networks/weights/``."""

ARCHITECTURE_KEYS = (
    "face_model.name",
    "face_model.n_id",
    "face_model.n_exp",
    "face_model.n_tex",
    "face_model.sh_channels",
    "renderer.image_size",
    "network.backbone",
    "network.pooled_grid",
    "network.landmark_input",
    "network.landmark_hidden",
)
"""Config entries that must agree between trained weights and the network they go into: the layout of the
heads' outputs, the crop size the features were learned at, and the network's shape."""


@dataclasses.dataclass(frozen=True)
class RNetSource:
    """Trained R-Net weights from anywhere (bundled folder, exported folder, ``face3d train`` checkpoint).

    state_dict: ``RNet.state_dict()`` keys
    config:     the config they were trained with
    origin:     how messages name them (a path)
    step:       optimisation steps they were trained for, None when unknown
    epoch:      epochs, None when unknown
    card:       the model card of a weights folder, None for a checkpoint
    """

    state_dict: dict
    config: ExperimentConfig
    origin: str
    step: int | None = None
    epoch: int | None = None
    card: dict | None = None


def _architecture(cfg: ExperimentConfig) -> dict:
    values = {}
    for key in ARCHITECTURE_KEYS:
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        values[key] = node
    return values


def check_same_architecture(trained: ExperimentConfig, cfg: ExperimentConfig, what: str, fix: str) -> None:
    """ValueError naming every `ARCHITECTURE_KEYS` entry where ``trained`` and ``cfg`` differ."""
    ours, theirs = _architecture(cfg), _architecture(trained)
    diff = [key for key in ARCHITECTURE_KEYS if ours[key] != theirs[key]]
    if diff:
        was = ", ".join(f"{key}={theirs[key]}" for key in diff)
        now = ", ".join(f"{key}={ours[key]}" for key in diff)
        raise InvalidInputError(
            f"{what} was trained for another face model, crop size or network ({was}) than this run's "
            f"({now}); {fix} set {' '.join(f'{key}={theirs[key]}' for key in diff)}"
        )


def _weights_source(directory: Path) -> RNetSource:
    from networks.bundled_weights import read_weights

    weights = read_weights(directory)
    return RNetSource(
        weights.state_dict,
        config_from_yaml(weights.config_yaml, weights.path),
        str(weights.path),
        step=weights.card.get("training", {}).get("steps"),
        epoch=weights.card.get("training", {}).get("epochs"),
        card=weights.card,
    )


def config_from_yaml(text: str, path: str | Path) -> ExperimentConfig:
    try:
        return load_config(base_yaml=text)
    except Exception as err:  # noqa: BLE001 - an unreadable stored config means the same thing to the user
        raise InvalidInputError(f"the config stored in {path} does not fit this version's schema ({err})") from None


def _refuse_other_files(checkpoint, path: Path) -> None:
    """ValueError for an unpickled file that is not a ``face3d train`` R-Net checkpoint but something we know."""
    from networks.bundled_weights import CARD_NAME, FORMAT

    if not isinstance(checkpoint, dict):
        raise InvalidInputError(
            f"{path} is not a face3d-lightning R-Net checkpoint (it holds a {type(checkpoint).__name__})"
        )
    if checkpoint.get("format") == FORMAT:
        raise InvalidInputError(
            f"{path} is R-Net weights without their model card ({CARD_NAME}, which holds the checksum): "
            f"keep the folder written by `face3d export-weights` together and pass the folder"
        )
    if "face3d_cnet" in checkpoint:
        raise InvalidInputError(
            f"{path} is a C-Net checkpoint (`face3d train-aggregate`), not an R-Net one: it goes to "
            "--cnet-ckpt (with --set), and its R-Net comes with it"
        )


def _weights_folder(source: str | Path) -> Path | None:
    """The weights folder ``source`` names (``"bundled"``, a folder, or the ``rnet.pt`` beside its model card);
    None when it names something else (a ``face3d train`` checkpoint)."""
    from networks.bundled_weights import BUNDLED_DIR, CARD_NAME, WEIGHTS_NAME

    if str(source) == BUNDLED:
        return BUNDLED_DIR
    path = Path(source)
    if path.is_dir():
        return path
    if path.name == WEIGHTS_NAME and (path.parent / CARD_NAME).is_file():
        return path.parent
    return None


def _read_rnet_checkpoint(path: Path, map_location: str | torch.device) -> tuple[dict, ExperimentConfig]:
    """A ``face3d train`` checkpoint and its config; FileNotFoundError or ValueError saying what to pass instead."""
    checkpoint = _read_checkpoint(
        path,
        map_location,
        f"checkpoint {path} not found; train one with `make "
        "train-single` or `face3d train --config NAME` (checkpoints are under "
        "outputs/<run>/checkpoints/), or use the bundled R-Net (`bundled`)",
    )
    _refuse_other_files(checkpoint, path)
    return checkpoint, config_from_checkpoint(checkpoint, path)


def read_rnet_source(source: str | Path, map_location: str | torch.device = "cpu") -> RNetSource:
    """Trained R-Net weights: ``"bundled"`` (the R-Net shipped in ``networks/weights/``), a weights folder or its
    ``rnet.pt`` (written by ``face3d export-weights``; checksum verified), or a ``face3d train`` checkpoint."""
    folder = _weights_folder(source)
    if folder is not None:
        return _weights_source(folder)
    path = Path(source)
    checkpoint, cfg = _read_rnet_checkpoint(path, map_location)
    state = checkpoint.get("state_dict", {})
    rnet_state = {k.removeprefix("rnet."): v for k, v in state.items() if k.startswith("rnet.")}
    if not rnet_state:
        raise InvalidInputError(f"{path} holds no R-Net weights (no 'rnet.*' entries in its state_dict)")
    return RNetSource(rnet_state, cfg, str(path), step=checkpoint.get("global_step"), epoch=checkpoint.get("epoch"))


def load_rnet_state(rnet, state_dict: dict, origin: str) -> None:
    """Load ``state_dict`` into ``rnet`` (every key, cast to the network's dtypes); ValueError naming ``origin``
    when keys or shapes differ."""
    own = rnet.state_dict()
    missing = sorted(own.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - own.keys())
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own.keys() & state_dict.keys()
        if state_dict[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        raise InvalidInputError(
            f"{origin} does not fit this R-Net (another face model, crop size or network?): missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:3]}"
        )
    rnet.load_state_dict({k: v.to(own[k].dtype) for k, v in state_dict.items()}, strict=True)


def load_rnet_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild an `RNetModule` and its config from a checkpoint written by ``face3d train``, or from R-Net weights
    (``"bundled"`` or a ``face3d export-weights`` folder, see `read_rnet_source`)."""
    if _weights_folder(path) is not None:
        source = read_rnet_source(path, map_location)
        module = build_rnet_module(_for_checkpoint_weights(source.config))
        load_rnet_state(module.rnet, source.state_dict, source.origin)
        return module.eval(), source.config
    path = Path(path)
    checkpoint, cfg = _read_rnet_checkpoint(path, map_location)
    module = build_rnet_module(_for_checkpoint_weights(cfg))
    try:
        missing, unexpected = module.load_state_dict(checkpoint["state_dict"], strict=False)
    except RuntimeError as err:
        raise InvalidInputError(
            f"{path} does not match the model its config describes: {str(err).splitlines()[0]}"
        ) from None
    if missing or unexpected:
        raise InvalidInputError(
            f"{path} does not match the model its config describes: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return module.eval(), cfg


# ------------------------------------------------------------------------------------------------- C-Net


def build_cnet(cfg: ExperimentConfig, rnet, kind: str):
    """A C-Net of ``kind`` ("elementwise" or "global") sized for ``rnet``'s backbone and face model."""
    from networks.cnet import CNet, rnet_feature_channels

    shallow, deep = rnet_feature_channels(rnet.backbone)
    return CNet(
        rnet.layout.n_id, shallow, deep, kind=kind, conv_channels=tuple(cfg.cnet.conv_channels), hidden=cfg.cnet.hidden
    )


def build_cnet_module(cfg: ExperimentConfig, rnet_module, strategy: str, loss=None):
    """A `CNetModule` on the R-Net, renderer and (unless ``loss`` is given) hybrid loss of ``rnet_module``."""
    from lightning_modules.cnet_module import CNetModule
    from networks.aggregation import GLOBAL_STRATEGIES

    cnet = None
    if strategy != "mean":
        cnet = build_cnet(cfg, rnet_module.rnet, "global" if strategy in GLOBAL_STRATEGIES else "elementwise")
    return CNetModule(
        rnet=rnet_module.rnet,
        renderer=rnet_module.renderer,
        loss=loss if loss is not None else rnet_module.loss,
        cnet=cnet,
        strategy=strategy,
        # C-Net decays by epochs and has no identity head: it reads lr, lr_step_epochs, lr_gamma and weight_decay.
        optim=dataclasses.replace(cfg.optim, identity_lr_scale=1.0, lr_step_steps=None),
        use_skin_attention=cfg.loss.skin_attention,
        config=to_yaml(cfg),
    )


def build_image_set_datamodule(cfg: ExperimentConfig, face_model: FaceModel, cache_dir: Path | None = None):
    """`ImageSetDataModule` over synthetic sets (train/val/test) or prepared photos (train/val)."""
    from datamodules.image_sets import ImageSetDataModule

    return ImageSetDataModule.from_settings(
        cfg.data.sets,
        face_model,
        image_size=cfg.renderer.image_size,
        num_workers=cfg.data.num_workers,
        cache_dir=cache_dir,
        backend=cfg.renderer.backend,
    )


def load_cnet_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild a `CNetModule` (frozen R-Net included) from a checkpoint written by ``face3d train-aggregate``;
    returns (module in eval mode, config)."""
    from lightning_modules.cnet_module import restore_rebuilt_state

    path = Path(path)
    checkpoint = _read_checkpoint(
        path,
        map_location,
        f"C-Net checkpoint {path} not found; train one with `face3d "
        "train-aggregate` (checkpoints are under outputs/train-aggregate/<strategy>/"
        "checkpoints/)",
    )
    info = checkpoint.get("face3d_cnet")
    if info is None:
        raise InvalidInputError(
            f"{path} is not a C-Net checkpoint (no 'face3d_cnet' entry); an R-Net checkpoint goes to "
            "--rnet-ckpt instead"
        )
    cfg = config_from_checkpoint(checkpoint, path)
    face_model = build_face_model(cfg)
    rnet_module = build_rnet_module(_for_checkpoint_weights(cfg), face_model)
    module = build_cnet_module(cfg, rnet_module, info["strategy"])
    state = dict(checkpoint["state_dict"])
    restore_rebuilt_state(module, state)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InvalidInputError(
            f"{path} does not match the C-Net its config describes: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
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
