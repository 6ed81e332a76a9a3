"""C-Net training entry point (``face3d train-aggregate``, ``make train-aggregate``).

1. Find the R-Net to aggregate: ``--rnet-ckpt``, else ``cnet.rnet_checkpoint``, else the latest checkpoint of
   the default single-image run (``<logging.output_dir>/train-single/checkpoints``: best-*.ckpt, else
   last.ckpt); when there is none, train that run first (`experiments.train.train` with the default config).
2. Build the run's config: face model, renderer, network and loss come from the R-Net checkpoint's config;
   everything else from the schema, the config files (default ``aggregate``) and the overrides.
3. Train one C-Net per ``cnet.strategies`` entry (S4's element-wise head and S1's global head by default),
   each under ``<run dir>/<strategy>/``, keeping its best checkpoint by validation shape error.
4. On the held-out test sets, write the strategy table of the paper's Table 5 (mean per-image error, shape
   averaging, S1-S4) as markdown and CSV into the run directory, and the confidence plots of §6.2.1.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.cnet_analysis import TableRow, table_markdown
from errors import ExistingOutputError, MissingFileError
from experiments.config import ConfigError, ExperimentConfig, load_config, to_yaml
from experiments.train import run_dir_for
from experiments.trainer import latest_checkpoint

DEFAULT_CONFIGS = ("aggregate",)
RNET_DEFAULT_CONFIG = "default"
"""The single-image config whose run provides the default R-Net (``make train-single``)."""
_FROM_CHECKPOINT = ("face_model", "renderer", "network", "loss")
_MUST_MATCH = ("face_model", "renderer", "network")


@dataclass(frozen=True)
class AggregateResult:
    """Where a train-aggregate run put its outputs, and its strategy table (empty without ground truth)."""

    run_dir: Path
    rnet_checkpoint: Path
    cnet_checkpoints: dict[str, Path]
    rows: list[TableRow] = field(default_factory=list)
    table_markdown: Path | None = None
    table_csv: Path | None = None
    plots: list[Path] = field(default_factory=list)
    confidence_by_degradation: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    """See `benchmarks.cnet_analysis.confidence_by_degradation`."""
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"run directory:    {self.run_dir}", f"R-Net checkpoint: {self.rnet_checkpoint}"]
        lines += [f"C-Net {strategy} checkpoint: {path}" for strategy, path in self.cnet_checkpoints.items()]
        if self.rows:
            lines += [
                "",
                "shape error on held-out synthetic identities (neutral identity shape, rigid alignment):",
                "",
                table_markdown(self.rows).rstrip(),
            ]
            if self.confidence_by_degradation:
                lines.append("")
            for name, kinds in self.confidence_by_degradation.items():
                ratios = ", ".join(f"{kind} {mean:.2f}" for kind, (mean, _) in kinds.items() if kind != "none")
                lines.append(f"{name} confidence of degraded pictures / clean ones: {ratios}")
            note = identity_information_note(self.rows)
            if note:
                lines += ["", note]
        if self.table_markdown:
            lines.append(f"\ntable: {self.table_markdown} and {self.table_csv}")
        if self.plots:
            lines.append("plots: " + ", ".join(str(p) for p in self.plots))
        lines.append(f"total time: {self.seconds / 60.0:.1f} min")
        return "\n".join(lines)


def identity_information_note(rows: Sequence[TableRow], min_gain: float = 0.05) -> str | None:
    """A warning when shape averaging is less than ``min_gain`` (relative) below the mean face: R-Net's identities
    then say little about the truth, and C-Net, which only weights them, cannot gain much over averaging."""
    by_key = {row.key: row for row in rows}
    mean_face, averaging = by_key.get("mean_face"), by_key.get("mean")
    if mean_face is None or averaging is None or averaging.mean_mm <= (1.0 - min_gain) * mean_face.mean_mm:
        return None
    gain = 100.0 * (1.0 - averaging.mean_mm / mean_face.mean_mm)
    return (
        f"note: shape averaging is only {gain:.1f}% below the mean face: this R-Net's identities carry little "
        "information about the true shape, and C-Net, which only re-weights them, is bounded by what R-Net knows. "
        "A longer R-Net run (or one on a GPU) gives both more to work with; see the README, C-Net."
    )


def resolve_rnet_checkpoint(explicit: str | Path | None, output_dir: str, log: Callable[[str], None] = print) -> Path:
    """The R-Net checkpoint to aggregate (see the module docstring); trains the default R-Net when none exists."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise MissingFileError(
                f"R-Net checkpoint {path} not found; pass a checkpoint written by `face3d train` "
                "(outputs/<run>/checkpoints/*.ckpt) or leave --rnet-ckpt out to use the default"
            )
        return path
    rnet_cfg = load_config([RNET_DEFAULT_CONFIG], [f"logging.output_dir={output_dir}"])
    checkpoint_dir = run_dir_for(rnet_cfg) / "checkpoints"
    found = latest_checkpoint(checkpoint_dir)
    if found is not None:
        return found
    log(
        f"no R-Net checkpoint under {checkpoint_dir}: training R-Net first with the '{RNET_DEFAULT_CONFIG}' config "
        "(as `make train-single`; about 10 minutes on a CPU)"
    )
    from experiments.train import train

    result = train(rnet_cfg, resume=True)
    log(result.summary())
    found = result.best_checkpoint or result.last_checkpoint
    if found is None:
        raise RuntimeError(f"R-Net training finished without writing a checkpoint under {checkpoint_dir}")
    return found


def aggregate_config(
    files: Sequence[str], overrides: Sequence[str], rnet_cfg: ExperimentConfig, rnet_checkpoint: Path
) -> ExperimentConfig:
    """The C-Net run's config: R-Net's face model, renderer, network and loss, then ``files`` and ``overrides``.

    The loss may be overridden (other weights for C-Net); face model, renderer and network may not, since the
    frozen R-Net was trained with them.
    """
    base = ExperimentConfig(**{name: getattr(rnet_cfg, name) for name in _FROM_CHECKPOINT})
    cfg = load_config(files, overrides, base_yaml=to_yaml(base))
    for name in _MUST_MATCH:
        if getattr(cfg, name) != getattr(rnet_cfg, name):
            raise ConfigError(
                f"the '{name}' section differs from the R-Net checkpoint's ({rnet_checkpoint}); C-Net "
                f"runs on that frozen R-Net, so '{name}' comes from its checkpoint: drop the override"
            )
    return dataclasses.replace(cfg, cnet=dataclasses.replace(cfg.cnet, rnet_checkpoint=str(rnet_checkpoint.resolve())))


def check_same_rnet(checkpoint: Path, rnet_module) -> None:
    """Refuse to resume a C-Net checkpoint trained on another R-Net: resuming would load that R-Net's weights."""
    from networks.rnet import same_rnet

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    stored = {name.removeprefix("rnet."): value for name, value in state.items() if name.startswith("rnet.")}
    if not same_rnet(stored, rnet_module.rnet):
        raise ExistingOutputError(
            f"{checkpoint} was trained on another R-Net than the one given now; its C-Net's confidences mean "
            "nothing for this R-Net. Delete that run directory or choose another with logging.run_name=NAME"
        )


def _load_weights(module, path: Path) -> None:
    from lightning_modules.cnet_module import restore_rebuilt_state

    state = dict(torch.load(path, map_location="cpu", weights_only=False)["state_dict"])
    restore_rebuilt_state(module, state)
    module.load_state_dict(state)


def train_aggregate(
    files: Sequence[str] = DEFAULT_CONFIGS,
    overrides: Sequence[str] = (),
    rnet_checkpoint: str | Path | None = None,
    resume: bool = False,
    fast_dev_run: bool | int = False,
    log: Callable[[str], None] = print,
) -> AggregateResult:
    """Train the configured C-Nets on a frozen R-Net and evaluate the aggregation strategies (module docstring).

    Refuses to start over a strategy that already has checkpoints unless ``resume`` is set (then it continues
    that strategy's last.ckpt; a finished one is only evaluated again).
    """
    from benchmarks.cnet_analysis import analyse, collect_set_evaluation
    from experiments.build import build_cnet_module, build_image_set_datamodule, build_loss, load_rnet_checkpoint
    from experiments.trainer import (
        build_trainer,
        checkpoint_dir,
        finish_wandb_runs,
        intended_warnings_silenced,
        open_run_dir,
    )

    start = time.perf_counter()
    files = list(files) or list(DEFAULT_CONFIGS)
    preliminary = load_config(files, overrides)
    rnet_path = resolve_rnet_checkpoint(
        rnet_checkpoint or preliminary.cnet.rnet_checkpoint, preliminary.logging.output_dir, log
    )
    log(f"aggregating R-Net {rnet_path}")
    rnet_module, rnet_cfg = load_rnet_checkpoint(rnet_path)
    cfg = aggregate_config(files, overrides, rnet_cfg, rnet_path)

    run_dir = run_dir_for(cfg)
    existing = [s for s in cfg.cnet.strategies if any(checkpoint_dir(run_dir / s).glob("*.ckpt"))]
    open_run_dir(
        run_dir,
        to_yaml(cfg),
        cfg.trainer.seed,
        existing=f"C-Net checkpoints ({existing})" if existing else None,
        resume=resume,
        fast_dev_run=fast_dev_run,
        resume_means="continue (or re-evaluate) that run",
    )

    face_model = rnet_module.face_model
    datamodule = build_image_set_datamodule(cfg, face_model, cache_dir=Path(cfg.logging.output_dir) / "cache")
    has_ground_truth = cfg.data.sets.kind == "synthetic"
    loss = None if cfg.loss == rnet_cfg.loss else build_loss(cfg, face_model)

    modules, checkpoints = {}, {}
    for strategy in cfg.cnet.strategies:
        log(f"training C-Net for strategy {strategy.upper()}")
        module = build_cnet_module(cfg, rnet_module, strategy, loss=loss)
        strategy_dir = run_dir / strategy
        stage = build_trainer(
            cfg.trainer,
            cfg.logging,
            strategy_dir,
            monitor="val/shape_error_mm" if has_ground_truth else "val/total",
            wandb_name=f"{run_dir.name}-{strategy}",
            save_weights_only=True,
            lr_logging_interval="epoch",
            fast_dev_run=fast_dev_run,
        )
        resume_from = stage.resume_from(resume)
        if resume_from is not None:
            check_same_rnet(resume_from, rnet_module)
        with intended_warnings_silenced():
            stage.trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        # Each strategy is its own W&B run; an unfinished run would swallow the next strategy's logs.
        finish_wandb_runs(stage.trainer.loggers)
        last = stage.last_checkpoint
        chosen = stage.best_checkpoint or (last if last.exists() else None)
        if chosen is not None:
            _load_weights(module, chosen)
            checkpoints[strategy] = chosen
        modules[strategy] = module.eval()

    result = AggregateResult(run_dir=run_dir, rnet_checkpoint=rnet_path, cnet_checkpoints=checkpoints)
    if has_ground_truth:
        log("evaluating the aggregation strategies on the held-out test sets")
        datamodule.setup("test")
        device = "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda") else "cpu"
        evaluation = collect_set_evaluation(modules, datamodule.test_dataloader(), device=device)
        analysis = analyse(evaluation, face_model.to(device), run_dir, plots=cfg.cnet.analysis)
        result = dataclasses.replace(
            result,
            rows=analysis.rows,
            table_markdown=analysis.table_markdown,
            table_csv=analysis.table_csv,
            plots=analysis.plots,
            confidence_by_degradation=analysis.confidence_by_degradation,
        )
    return dataclasses.replace(result, seconds=time.perf_counter() - start)
