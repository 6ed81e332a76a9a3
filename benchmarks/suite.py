"""``face3d benchmark`` (``make benchmark``): accuracy and speed of an R-Net checkpoint, as one report.

`run_benchmark` runs, in order:

1. the synthetic 20-pose protocol (`benchmarks.pose_grid`, scored by `benchmarks.pose_grid_eval`): mean face,
   R-Net per picture, shape averaging, C-Net S4 (or S1) when a C-Net checkpoint trained on this R-Net is given,
   and analysis-by-synthesis fitting on a small subset; with the error-vs-yaw plot;
2. the licensed datasets that are configured (`benchmarks.licensed`), a one-line note for the others;
3. the real-photo protocol on the shipped scan (`benchmarks.real_photo`): its two photographs and renders at a
   pose grid, R-Net and fitting against the mean face and the model's ceiling, unless switched off;
4. the speed rows (`benchmarks.speed`), unless switched off;

then writes ``report.md``, ``metrics.json`` and the PNGs into the output folder (`benchmarks.report`) and, unless
switched off, logs the same tables and plots to a W&B run (offline unless ``WANDB_MODE=online``).

Accuracy numbers are deterministic: the data is generated from the seed alone, every network runs in eval mode,
and torch's seed is set (cuDNN is put in deterministic mode on a GPU). Timings are kept apart (``speed`` and the
fit's seconds) and are the only numbers that change between two runs with the same seed.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.licensed import DatasetResult, DatasetSettings
from benchmarks.pose_grid_eval import PoseGridResult
from benchmarks.real_photo import RealPhotoResult, RealPhotoSettings
from benchmarks.speed import SpeedRow
from networks.rnet import same_rnet


@dataclass(frozen=True)
class BenchmarkSettings:
    """What `run_benchmark` runs.

    checkpoint:      R-Net checkpoint written by ``face3d train``.
    out_dir:         output folder (created; files in it are overwritten).
    cnet_checkpoint: C-Net checkpoint of ``face3d train-aggregate`` for the S4/S1 row, or None.
    cnet_note:       why there is no C-Net row when ``cnet_checkpoint`` is None (goes into the report).
    identities:      held-out synthetic identities of the 20-pose protocol.
    seed:            benchmark seed (synthetic identities and every random draw of the protocol).
    fit_images:      pictures fitted by analysis-by-synthesis (0: no fitting rows); the default 40 is the 8 default
                     identities at every yaw at the pitch nearest frontal (`benchmarks.pose_grid.fit_subset`).
    fit_iterations:  steps of the fit's full-loss stage (`reconstruction.fit.FitSettings.iterations`); None keeps
                     the fitting default of ``face3d reconstruct --fit``.
    fit_rigid_iterations, fit_shape_iterations: the cheap landmark-only stages (None: the fitting defaults).
    appearance_gap:  run the pose grid a second time in the look the fit and the model's renders do not assume
                     (`benchmarks.pose_grid.POSE_GRID_LOOKS["appearance_gap"]`), beside the matched one.
    fit_crop_size:   crop side the fit runs at (``face3d reconstruct --fit``'s 224 by default); the pose grid is
                     rendered again at this size when the checkpoint's differs (same identities and poses).
    speed:           measure the speed rows; speed_preprocessing: include preprocessing among them;
    speed_repeats:   timed repeats per speed figure.
    wandb:           log to W&B (mode from ``WANDB_MODE``, offline by default).
    datasets:        licensed datasets to try.
    real_photo:      the real-photo protocol's settings, or None to skip it (``face3d benchmark`` runs it unless
                     --no-real-photo); its fitting rows follow ``fit_images``: none when it is 0.
    device:          "cpu", "cuda" or None (CUDA when available).
    """

    checkpoint: Path
    out_dir: Path
    cnet_checkpoint: Path | None = None
    cnet_note: str | None = None
    identities: int = 8
    seed: int = 0
    fit_images: int = 40
    fit_iterations: int | None = None
    fit_rigid_iterations: int | None = None
    fit_shape_iterations: int | None = None
    fit_crop_size: int = 224
    appearance_gap: bool = True
    speed: bool = True
    speed_preprocessing: bool = True
    speed_repeats: int = 3
    wandb: bool = True
    datasets: DatasetSettings = field(default_factory=DatasetSettings)
    real_photo: RealPhotoSettings | None = None
    device: str | None = None


@dataclass(frozen=True)
class ModelLoaders:
    """How the benchmark rebuilds trained modules; the entry point builds it (``face3d benchmark`` passes
    `experiments.build`'s loaders), because rebuilding needs the experiment configs, a layer above this one.

    load_rnet:  ``(path) -> (RNetModule in eval mode, its ExperimentConfig)``
    load_cnet:  ``(path) -> (CNetModule in eval mode, its ExperimentConfig)``
    build_cnet: ``(config, rnet_module, strategy) -> CNetModule`` (the "mean" strategy: shape averaging)
    """

    load_rnet: Callable[..., tuple[Any, Any]]
    load_cnet: Callable[..., tuple[Any, Any]]
    build_cnet: Callable[..., Any]


@dataclass(frozen=True)
class CheckpointInfo:
    """The checkpoint and what the report says about it.

    wandb_project: the W&B project of the run that trained it; the benchmark's W&B run goes there too.
    """

    path: Path
    epoch: int | None
    global_step: int | None
    config: dict
    wandb_project: str


@dataclass(frozen=True)
class BenchmarkResult:
    """Everything `run_benchmark` measured and where it wrote it."""

    settings: BenchmarkSettings
    checkpoint: CheckpointInfo
    cnet_checkpoint: Path | None
    date: str
    device: str
    pose_grid: PoseGridResult
    datasets: tuple[DatasetResult, ...]
    speed: tuple[SpeedRow, ...]
    notes: tuple[str, ...]
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    real_photo: RealPhotoResult | None = None
    appearance_gap: PoseGridResult | None = None
    """The same pose grid in the appearance-gap look, when run."""

    def accuracy_dict(self) -> dict:
        """The deterministic part of metrics.json: identical for two runs with the same settings."""
        accuracy = {"pose_grid": self.pose_grid.accuracy_dict(), "datasets": [d.as_dict() for d in self.datasets]}
        if self.appearance_gap is not None:
            accuracy["appearance_gap"] = self.appearance_gap.accuracy_dict()
        if self.real_photo is not None:
            accuracy["real_photo"] = self.real_photo.accuracy_dict()
        return accuracy

    def summary(self) -> str:
        from benchmarks.report import summary_text

        return summary_text(self)


def config_summary(cfg) -> dict:
    """The parts of a checkpoint's `ExperimentConfig` that say what was trained on what."""
    fm, data = cfg.face_model, cfg.data
    summary = {
        "run": cfg.logging.run_name or cfg.name,
        "face_model": {
            "name": fm.name,
            "path": fm.path,
            "n_id": fm.n_id,
            "n_exp": fm.n_exp,
            "n_tex": fm.n_tex,
            "sh_channels": fm.sh_channels,
        },
        "image_size": cfg.renderer.image_size,
        "backbone": cfg.network.backbone,
        "loss": {
            name: getattr(cfg.loss, name)
            for name in ("photometric", "landmark", "perceptual", "regularization", "texture", "skin_attention")
        },
        "data": {"kind": data.kind, "batch_size": data.batch_size},
        "optim": {"lr": cfg.optim.lr},
        "trainer": {"max_epochs": cfg.trainer.max_epochs, "max_time_minutes": cfg.trainer.max_time_minutes},
    }
    if data.kind == "synthetic":
        sc = data.synthetic
        summary["data"].update(
            n_train=sc.n_train,
            seed=sc.seed,
            max_yaw_deg=sc.max_yaw_deg,
            max_pitch_deg=sc.max_pitch_deg,
            max_roll_deg=sc.max_roll_deg,
            occluder_probability=sc.occluder_probability,
        )
    else:
        summary["data"]["root"] = data.prepared.root
    return summary


def _checkpoint_info(path: Path, cfg) -> CheckpointInfo:
    # Only the counters are read; mmap keeps the tensors on disk.
    stored = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    epoch, step = stored.get("epoch"), stored.get("global_step")
    return CheckpointInfo(
        path,
        None if epoch is None else int(epoch),
        None if step is None else int(step),
        config_summary(cfg),
        cfg.logging.wandb_project,
    )


def _load_cnet(
    path: Path, rnet_module, rnet_path: Path, load_cnet: Callable[..., tuple[Any, Any]]
) -> tuple[torch.nn.Module | None, str | None, str]:
    """(C-Net module or None, note when skipped, strategy)."""
    module, _ = load_cnet(path)
    if module.cnet is None:
        return None, f"C-Net row skipped: {path} holds no C-Net (strategy 'mean')", module.strategy
    if not same_rnet(module.rnet, rnet_module.rnet):
        return (
            None,
            (
                f"C-Net row skipped: {path} was trained on another R-Net than {rnet_path}; "
                "its confidences mean nothing for this one (train one with `face3d train-aggregate "
                "--rnet-ckpt CKPT`, or pass the matching --cnet-ckpt)"
            ),
            module.strategy,
        )
    strategy = "s1" if module.cnet.kind == "global" else "s4"
    return module, None, strategy


def run_benchmark(
    settings: BenchmarkSettings, loaders: ModelLoaders, log: Callable[[str], None] = print
) -> BenchmarkResult:
    """Run the benchmark (module docstring) with the modules ``loaders`` rebuild and write its outputs into
    ``settings.out_dir``."""
    import warnings

    with warnings.catch_warnings():
        # Intended: R-Net and the perceptual network are frozen in eval mode.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        return _run_benchmark(settings, loaders, log)


def _run_benchmark(settings: BenchmarkSettings, loaders: ModelLoaders, log: Callable[[str], None]) -> BenchmarkResult:
    from benchmarks.licensed import RNetPicturePredictor, evaluate_datasets
    from benchmarks.pose_grid import PoseGridDataset
    from benchmarks.pose_grid_eval import evaluate_pose_grid, plot_error_vs_yaw
    from benchmarks.report import write_outputs
    from benchmarks.speed import device_name, measure_speed

    if settings.identities < 1:
        raise ValueError(f"--identities must be >= 1, got {settings.identities}")
    if settings.fit_images < 0:
        raise ValueError(f"--fit-images must be >= 0, got {settings.fit_images}")
    start = time.perf_counter()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(settings.seed)
    if device.startswith("cuda"):
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False

    log(f"loading R-Net {settings.checkpoint}")
    rnet_module, cfg = loaders.load_rnet(settings.checkpoint)
    info = _checkpoint_info(Path(settings.checkpoint), cfg)
    notes = [settings.cnet_note] if settings.cnet_note else []
    modules = {"mean": loaders.build_cnet(cfg, rnet_module, "mean")}
    if settings.cnet_checkpoint is not None:
        log(f"loading C-Net {settings.cnet_checkpoint}")
        cnet_module, note, strategy = _load_cnet(
            Path(settings.cnet_checkpoint), rnet_module, Path(settings.checkpoint), loaders.load_cnet
        )
        if cnet_module is not None:
            modules[strategy] = cnet_module
        else:
            notes.append(note)

    sc = cfg.data.synthetic
    dataset = PoseGridDataset(
        rnet_module.face_model,
        settings.identities,
        seed=settings.seed,
        image_size=cfg.renderer.image_size,
        landmark_noise_px=sc.landmark_noise_px,
        device=device,
        backend=cfg.renderer.backend,
    )
    fitter = None
    if settings.fit_images == 0:
        notes.append("fitting rows skipped (--no-fit)")
    else:
        fitter = _fitter(settings, rnet_module, device)

    def grid(look: str, image_size: int) -> PoseGridDataset:
        return PoseGridDataset(
            rnet_module.face_model,
            settings.identities,
            seed=settings.seed,
            image_size=image_size,
            landmark_noise_px=sc.landmark_noise_px,
            look=look,
            device=device,
            backend=cfg.renderer.backend,
        )

    looks = ("matched", "appearance_gap") if settings.appearance_gap else ("matched",)
    grids = {}
    for look in looks:
        dataset = grid(look, cfg.renderer.image_size)
        fit_dataset = dataset
        if fitter is not None and settings.fit_crop_size != dataset.image_size:
            fit_dataset = grid(look, settings.fit_crop_size)
        log(
            f"synthetic 20-pose protocol, {look.replace('_', '-')} look: {settings.identities} identities x "
            f"{dataset.set_size} pictures at {dataset.image_size}x{dataset.image_size}"
            + (
                f", fitting {settings.fit_images} of them at {settings.fit_crop_size}x{settings.fit_crop_size}"
                if settings.fit_images
                else ""
            )
        )
        grids[look] = evaluate_pose_grid(
            dataset,
            modules,
            fitter=fitter,
            fit_count=settings.fit_images,
            fit_dataset=fit_dataset,
            device=device,
            notes=notes if look == "matched" else (),
        )
    pose_grid = grids["matched"]
    if not settings.appearance_gap:
        notes.append("appearance-gap protocol not run (--no-appearance-gap)")

    datasets = evaluate_datasets(settings.datasets, lambda: RNetPicturePredictor(rnet_module, device=device), log)

    out_dir = Path(settings.out_dir)
    real_photo, extra_notes = None, []
    if settings.real_photo is not None:
        real_photo = _real_photo(settings, rnet_module, cfg, device, out_dir, log)
    else:
        extra_notes.append("real-photo protocol not run (--no-real-photo)")

    speed: list[SpeedRow] = []
    if settings.speed:
        log("timing preprocessing, R-Net and rendering")
        speed = measure_speed(
            rnet_module.rnet,
            rnet_module.face_model,
            cfg.renderer.image_size,
            device,
            backend=cfg.renderer.backend,
            fit_seconds=pose_grid.fit_seconds,
            preprocessing=settings.speed_preprocessing,
            template_source=cfg.face_model.path if cfg.face_model.name == "bfm" else cfg.face_model.name,
            repeats=settings.speed_repeats,
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_error_vs_yaw(pose_grid, out_dir / "error_vs_yaw.png")
    files = {"error_vs_yaw": plot, **(real_photo.files if real_photo is not None else {})}
    result = BenchmarkResult(
        settings=settings,
        checkpoint=info,
        cnet_checkpoint=settings.cnet_checkpoint,
        date=date,
        device=device_name(device),
        pose_grid=pose_grid,
        datasets=tuple(datasets),
        speed=tuple(speed),
        notes=tuple(pose_grid.notes) + tuple(extra_notes),
        files=files,
        real_photo=real_photo,
        appearance_gap=grids.get("appearance_gap"),
    )
    result = dataclasses.replace(result, seconds=time.perf_counter() - start)
    return write_outputs(result, log)


def _fitter(settings: BenchmarkSettings, rnet_module, device: str):
    """`face3d reconstruct --fit`'s predictor (its objective and settings, started from this R-Net's prediction),
    with the benchmark's stage lengths."""
    from reconstruction.fit import FitSettings
    from reconstruction.pipeline import FittingPredictor, RNetPredictor

    lengths = {
        name: value
        for name, value in (
            ("iterations", settings.fit_iterations),
            ("rigid_iterations", settings.fit_rigid_iterations),
            ("shape_iterations", settings.fit_shape_iterations),
        )
        if value is not None
    }
    return FittingPredictor.build(
        rnet_module.face_model,
        dataclasses.replace(FitSettings(), **lengths),
        crop_size=settings.fit_crop_size,
        device=device,
        init=RNetPredictor(rnet_module.to(device), name="R-Net"),
    )


def _real_photo(
    settings: BenchmarkSettings, rnet_module, cfg, device: str, out_dir: Path, log: Callable[[str], None]
) -> RealPhotoResult:
    """The real-photo protocol with this R-Net and, unless fitting is off, `FittingPredictor` at its defaults."""
    from benchmarks.real_photo import evaluate_real_photo
    from reconstruction.pipeline import RNetPredictor

    rp = settings.real_photo
    predictors = {"R-Net": RNetPredictor(rnet_module.to(device), name="R-Net")}
    if settings.fit_images > 0 and (rp.fit_photos or rp.fit_renders > 0):
        predictors["fit"] = _fitter(settings, rnet_module, device)
    return evaluate_real_photo(rp, rnet_module.face_model, predictors, log, out_dir=out_dir, fitting=("fit",))
