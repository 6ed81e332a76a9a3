"""Device check: is the GPU path fast and free of host syncs on this machine? One report, Markdown and JSON.

    python -m experiments.device_check [--out DIR] [--device cuda|cpu] [--quick]

Measures, on one device:

* the rasterizer, forward + backward (rasterize, interpolate per-vertex colours, an L2 loss back to the screen
  vertices and colours) of a BFM-sized mesh (`benchmarks.bench_renderer.bfm_sized_mesh`: 35,721 vertices,
  70,688 triangles, procedural, since BFM09 cannot ship) at batch 64 and 224 x 224, in rendered faces/s
  (triangles x images per second), and whether the sync-free schedule dropped any candidate pairs;
* host syncs: one rasterizer forward + backward and one R-Net training step on the sync-free path (the CUDA
  default, forced on a CPU too) counted by `HostSyncCounter`, and on CUDA also run under
  ``torch.cuda.set_sync_debug_mode("error")``;
* R-Net training images/s for the ``default`` and ``paper_ict`` configs: bf16 autocast, channels-last, Adam,
  synthetic batches already on the device (the step, not the data loading), a fixed number of steps after
  warm-up, at the config's batch size and at 128.

``--quick`` shrinks everything (a 24 x 24 grid mesh, batch 2, 32 pixels; the smoke config's tiny R-Net) so the
whole driver runs on a CPU in seconds; its numbers only show that the driver works. ``benchmarks/device_check.sh``
runs it after creating the CUDA venv and the ``gpu``-marked tests. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

RASTER_GOAL_FACES_PER_S = 20_000
"""Goal on one modern GPU: rendered faces (triangles x images) per second, forward + backward."""
TRAIN_GOAL_IMAGES_PER_S = 1_000
"""Goal on one modern GPU: R-Net training images per second."""
DEFAULT_OUT = Path("benchmarks/reports/device_check")

_SYNC_OPS = {
    "aten._local_scalar_dense",
    "aten.nonzero",
    "aten.masked_select",
    "aten.unique",
    "aten._unique",
    "aten._unique2",
    "aten.unique_dim",
    "aten.unique_consecutive",
    "aten.is_nonzero",
    "aten.equal",
    "aten.lift_fresh",
    "aten.masked_scatter",
}
_INDEX_OPS = {"aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"}


class HostSyncCounter(TorchDispatchMode):
    """Counts the operations that make the host wait for a CUDA device, on any device (a CPU run included).

    Recorded, keyed by (operation, the last file:line outside torch and the tests that ran it): the aten ops that
    read device values on the host (``_local_scalar_dense`` behind ``.item()``, ``int()``, ``bool()``; ``nonzero``
    and boolean-mask indexing; ``unique``; ``masked_select``; ``repeat_interleave`` without ``output_size``),
    ``lift_fresh`` (``torch.tensor(data)`` or a list index: a blocking host-to-device copy on CUDA), blocking copies
    between host and device (visible on CUDA runs), and the Python-level reads ``Tensor.tolist``/``numpy``/``cpu``, which never reach the dispatcher for CPU tensors.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hits: collections.Counter = collections.Counter()
        self._patched: dict[str, object] = {}

    def __enter__(self):
        for name in ("tolist", "numpy", "cpu"):
            original = getattr(torch.Tensor, name)
            self._patched[name] = original
            setattr(torch.Tensor, name, self._wrap(name, original))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for name, original in self._patched.items():
                setattr(torch.Tensor, name, original)
            self._patched.clear()

    def _record(self, name: str) -> None:
        ours = [
            f
            for f in traceback.extract_stack()[:-2]
            if "/tests/" not in f.filename and "/torch/" not in f.filename and f.filename != __file__
        ]
        where = f"{'/'.join(ours[-1].filename.rsplit('/', 2)[-2:])}:{ours[-1].lineno}" if ours else "?"
        self.hits[(name, where)] += 1

    def _wrap(self, name: str, method):
        def wrapped(tensor, *args, **kwargs):
            self._record(f"Tensor.{name}")
            return method(tensor, *args, **kwargs)

        return wrapped

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        syncs = name in _SYNC_OPS
        if name in _INDEX_OPS:
            syncs = any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1])
        if name == "aten.repeat_interleave" and kwargs.get("output_size") is None and len(args) < 3:
            syncs = True
        if name in ("aten._to_copy", "aten.copy_") and not kwargs.get("non_blocking", False):
            # A blocking copy between host and device (seen on CUDA runs; on a CPU run both sides are the host).
            source = args[1] if name == "aten.copy_" else args[0]
            target = args[0].device if name == "aten.copy_" else kwargs.get("device") or source.device
            syncs = isinstance(source, torch.Tensor) and torch.device(target).type != source.device.type
        if syncs:
            self._record(name)
        return func(*args, **kwargs)

    def summary(self) -> list[str]:
        """``"op at file:line (n x)"`` per recorded site."""
        return [f"{op} at {where} ({n}x)" for (op, where), n in sorted(self.hits.items())]


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class CheckSettings:
    """Sizes of one device check; `quick` gives the CPU smoke sizes."""

    raster_grid: int = 189
    raster_batch: int = 64
    raster_size: int = 224
    raster_warmup: int = 3
    raster_repeats: int = 10
    configs: tuple[str, ...] = ("default", "paper_ict")
    extra_configs: tuple[str, ...] = ()
    train_warmup: int = 10
    train_steps: int = 30
    train_batches: tuple[int | None, ...] = (None, 128)
    """Batch sizes timed per config; None is the config's own (16 for default, 32 for paper_ict). The larger
    one shows how far the per-step launch overhead, not the arithmetic, bounds small batches."""
    precision: str = "bf16"

    @staticmethod
    def quick() -> CheckSettings:
        return CheckSettings(
            raster_grid=24,
            raster_batch=2,
            raster_size=32,
            raster_warmup=1,
            raster_repeats=1,
            extra_configs=("smoke",),
            train_warmup=1,
            train_steps=1,
            train_batches=(2,),
        )


@dataclass
class Report:
    """Everything the check measured; written as JSON and rendered as Markdown."""

    device: str
    device_name: str
    torch: str
    cuda: str | None
    quick: bool
    rasterizer_backend: str
    goals: dict = field(default_factory=dict)
    rasterizer: dict = field(default_factory=dict)
    host_syncs: dict = field(default_factory=dict)
    training: list = field(default_factory=list)
    gpu_tests: str | None = None
    errors: list = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def backend_description(device: torch.device) -> str:
    """The rasterizer backend and schedule `rasterize` picks for tensors on ``device`` by default."""
    from renderers.rasterizer.rasterize import _resolve_backend, _sync_free_by_default

    probe = torch.zeros(1, 1, 3, device=device)
    name = _resolve_backend("auto", probe)
    if name == "pytorch3d":
        return "pytorch3d (PyTorch3D's rasterizer for visibility; barycentrics by the shared autograd code)"
    schedule = (
        "sync-free fixed schedule"
        if _sync_free_by_default(probe)
        else "data-sized schedule (host syncs; the CPU default)"
    )
    return f"torch (portable PyTorch), {schedule}"


def rasterizer_check(settings: CheckSettings, device: torch.device) -> dict:
    """Forward and forward+backward timing of the BFM-sized mesh, plus the pairs the budget dropped."""
    from benchmarks.bench_renderer import DEFAULT_CAMERA, bfm_sized_mesh, posed_screen
    from renderers.rasterizer import interpolate, rasterize

    vertices, faces = bfm_sized_mesh(settings.raster_grid)
    size = settings.raster_size
    screen = posed_screen(vertices, settings.raster_batch, DEFAULT_CAMERA.resized(size, size)).to(device)
    screen.requires_grad_(True)
    faces = faces.to(device)
    colors = torch.rand(settings.raster_batch, vertices.shape[0], 3, generator=torch.Generator().manual_seed(0))
    colors = colors.to(device).requires_grad_(True)

    def step():
        fragments = rasterize(screen, faces, (size, size))
        image = interpolate(colors, faces, fragments)
        _sync(device)
        mid = time.perf_counter()
        image.square().mean().backward()
        screen.grad = colors.grad = None
        return fragments, mid

    forward, total = [], []
    for run in range(settings.raster_warmup + settings.raster_repeats):
        _sync(device)
        start = time.perf_counter()
        fragments, mid = step()
        _sync(device)
        if run >= settings.raster_warmup:
            forward.append(mid - start)
            total.append(time.perf_counter() - start)
    forward_s, total_s = sorted(forward)[len(forward) // 2], sorted(total)[len(total) // 2]
    rendered = settings.raster_batch * faces.shape[0]
    dropped = fragments.dropped_pairs
    return {
        "mesh": f"procedural BFM-sized grid ({vertices.shape[0]} vertices, {faces.shape[0]} triangles)",
        "vertices": vertices.shape[0],
        "triangles": faces.shape[0],
        "batch": settings.raster_batch,
        "image_size": size,
        "repeats": settings.raster_repeats,
        "warmup": settings.raster_warmup,
        "forward_ms": 1e3 * forward_s,
        "forward_backward_ms": 1e3 * total_s,
        "faces_per_s": rendered / total_s,
        "images_per_s": settings.raster_batch / total_s,
        "coverage": float(fragments.mask.float().mean()),
        "dropped_pairs": None if dropped is None else int(dropped),
    }


def _config(name: str, settings: CheckSettings, batch: int | None = None):
    from experiments.config import load_config

    overrides = ["renderer.backend=auto", "trainer.channels_last=true", "logging.wandb=false", "data.kind=synthetic"]
    if batch is not None:
        overrides.append(f"data.batch_size={batch}")
    return load_config([name, *settings.extra_configs], overrides)


def _module_and_batch(cfg, device: torch.device):
    from datamodules.batch import FaceBatch
    from experiments.build import build_rnet_module

    module = build_rnet_module(cfg).to(device)
    module.train()
    size, batch = cfg.renderer.image_size, cfg.data.batch_size
    gen = torch.Generator().manual_seed(0)
    coeffs = module.rnet.layout.zeros(batch, device=device)
    # Targets near the mean face's landmarks, so that the landmark term has its usual size.
    landmarks = module.renderer.project_landmarks(coeffs).detach()
    landmarks = landmarks + torch.randn(landmarks.shape, generator=gen).to(device)
    faces = FaceBatch(
        images=torch.rand(batch, 3, size, size, generator=gen),
        landmarks=landmarks.cpu(),
        skin=torch.rand(batch, 1, size, size, generator=gen),
        index=torch.arange(batch),
    )
    return module, faces.to(device)


def _autocast(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def training_check(name: str, settings: CheckSettings, device: torch.device, batch_size: int | None = None) -> dict:
    """images/s of R-Net training steps (forward, hybrid loss, backward, Adam) for config ``name`` at
    ``batch_size`` (None: the config's)."""
    cfg = _config(name, settings, batch_size)
    module, batch = _module_and_batch(cfg, device)
    optimizer = module.configure_optimizers()["optimizer"]

    def step(index: int) -> torch.Tensor:
        with _autocast(device, settings.precision):
            loss = module.training_step(batch, index)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for index in range(settings.train_warmup):
        step(index)
    _sync(device)
    start = time.perf_counter()
    for index in range(settings.train_steps):
        loss = step(settings.train_warmup + index)
    _sync(device)
    elapsed = time.perf_counter() - start
    images = settings.train_steps * batch.batch_size
    return {
        "config": name + "".join(f" + {extra}" for extra in settings.extra_configs),
        "backbone": cfg.network.backbone,
        "image_size": cfg.renderer.image_size,
        "batch": batch.batch_size,
        "perceptual": cfg.loss.perceptual,
        "precision": settings.precision,
        "channels_last": True,
        "warmup_steps": settings.train_warmup,
        "timed_steps": settings.train_steps,
        "seconds": elapsed,
        "images_per_s": images / elapsed,
        "last_loss": float(loss.detach()),
    }


def sync_check(settings: CheckSettings, device: torch.device) -> dict:
    """Host syncs of one rasterizer forward+backward and one training step of the first config (after a warm-up
    step each), counted by `HostSyncCounter` and, on CUDA, run under sync debug mode "error"."""
    from benchmarks.bench_renderer import DEFAULT_CAMERA, bfm_sized_mesh, posed_screen
    from renderers.rasterizer import interpolate, rasterize
    from renderers.rasterizer.rasterize import sync_free_everywhere

    vertices, faces = bfm_sized_mesh(min(settings.raster_grid, 64))
    size = min(settings.raster_size, 112)
    screen = posed_screen(vertices, 2, DEFAULT_CAMERA.resized(size, size)).to(device).requires_grad_(True)
    faces = faces.to(device)
    colors = torch.rand(2, vertices.shape[0], 3).to(device).requires_grad_(True)
    cfg = _config(settings.configs[0], settings, settings.train_batches[0])
    module, batch = _module_and_batch(cfg, device)

    def render():
        interpolate(colors, faces, rasterize(screen, faces, (size, size))).square().mean().backward()

    def train():
        with _autocast(device, settings.precision):
            loss = module.training_step(batch, 0)
        loss.backward()

    result = {}
    # The CUDA default, forced on every device so that a CPU run checks the path CUDA takes.
    with sync_free_everywhere():
        for what, run in (("rasterizer forward+backward", render), (f"training step ({cfg.name})", train)):
            run()  # warm-up: one-time checks (the face list's index range) may sync
            _sync(device)
            counter = HostSyncCounter()
            debug_error = None
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("error")
            try:
                with counter:
                    run()
            except RuntimeError as error:
                debug_error = str(error).splitlines()[0]
            finally:
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
            result[what] = {"counted": counter.summary(), "cuda_sync_debug_error": debug_error}
    return result


# ------------------------------------------------------------------------------------------------ report


def run_check(
    settings: CheckSettings, device: torch.device, quick: bool, gpu_tests: str | None = None, out: Path | None = None
) -> Report:
    """Every measurement; a failing section is recorded in ``errors`` and the rest still runs. With ``out`` the
    report is rewritten there after each section, so a run stopped by a time limit keeps what it measured."""
    cuda = torch.version.cuda if device.type == "cuda" else None
    from benchmarks.speed import device_name

    report = Report(
        device=str(device),
        device_name=device_name(device),
        torch=torch.__version__,
        cuda=cuda,
        quick=quick,
        rasterizer_backend=backend_description(device),
        gpu_tests=gpu_tests,
        goals={"rasterizer_faces_per_s": RASTER_GOAL_FACES_PER_S, "training_images_per_s": TRAIN_GOAL_IMAGES_PER_S},
    )
    sections = [
        ("rasterizer", lambda: setattr(report, "rasterizer", rasterizer_check(settings, device))),
        ("host syncs", lambda: setattr(report, "host_syncs", sync_check(settings, device))),
    ]
    for name in settings.configs:
        for batch in settings.train_batches:
            sections.append(
                (
                    f"training {name} batch {batch or 'of the config'}",
                    lambda name=name, batch=batch: report.training.append(
                        training_check(name, settings, device, batch)
                    ),
                )
            )
    for title, section in sections:
        try:
            section()
        except Exception as error:  # noqa: BLE001 - one failing section must not lose the others' numbers
            report.errors.append(f"{title}: {type(error).__name__}: {error}")
            print(f"device check: {title} failed: {error}", file=sys.stderr)
        if out is not None:
            write_report(report, out)
    return report


def _verdict(value: float | None, goal: float, quick: bool) -> str:
    if value is None:
        return "not measured"
    if quick:
        return "n/a (quick run)"
    return "met" if value >= goal else "NOT met"


def render_markdown(report: Report) -> str:
    lines = [
        "# Device check",
        "",
        f"- device: {report.device_name} (`{report.device}`), torch {report.torch}"
        + (f", CUDA {report.cuda}" if report.cuda else ""),
        f"- rasterizer backend: {report.rasterizer_backend}",
        f"- platform: {platform.platform()}, Python {platform.python_version()}",
    ]
    if report.quick:
        lines.append("- **quick run** (tiny sizes): the numbers only show that the check works")
    lines += ["", "## Goals (one modern GPU)", "", "| goal | measured | verdict |", "|---|---:|---|"]
    raster = report.rasterizer.get("faces_per_s")
    lines.append(
        f"| rasterizer forward+backward >= {RASTER_GOAL_FACES_PER_S:,} faces/s | "
        f"{'-' if raster is None else f'{raster:,.0f}'} | "
        f"{_verdict(raster, RASTER_GOAL_FACES_PER_S, report.quick)} |"
    )
    for row in report.training:
        lines.append(
            f"| training `{row['config']}`, batch {row['batch']} >= {TRAIN_GOAL_IMAGES_PER_S:,} images/s | "
            f"{row['images_per_s']:,.1f} | "
            f"{_verdict(row['images_per_s'], TRAIN_GOAL_IMAGES_PER_S, report.quick)} |"
        )
    if report.rasterizer:
        r = report.rasterizer
        lines += [
            "",
            "## Rasterizer",
            "",
            f"{r['mesh']}, batch {r['batch']}, {r['image_size']}x{r['image_size']}, median of {r['repeats']} "
            f"after {r['warmup']} warm-up runs; coverage {r['coverage']:.0%}.",
            "",
            "| forward ms | forward+backward ms | faces/s | images/s | dropped pairs |",
            "|---:|---:|---:|---:|---:|",
            f"| {r['forward_ms']:.1f} | {r['forward_backward_ms']:.1f} | {r['faces_per_s']:,.0f} | "
            f"{r['images_per_s']:,.1f} | {r['dropped_pairs']} |",
        ]
    if report.host_syncs:
        lines += ["", "## Host syncs", "", "| what | counted sync operations | CUDA sync debug mode |", "|---|---|---|"]
        for what, found in report.host_syncs.items():
            counted = "; ".join(found["counted"]) or "none"
            debug = found["cuda_sync_debug_error"] or ("passed" if report.device.startswith("cuda") else "n/a (CPU)")
            lines.append(f"| {what} | {counted} | {debug} |")
    if report.training:
        lines += [
            "",
            "## R-Net training",
            "",
            "Synthetic batches already on the device; forward, hybrid loss, backward and Adam per step.",
            "",
            "| config | backbone | crop | batch | perceptual | precision | steps | images/s |",
            "|---|---|---:|---:|---:|---|---:|---:|",
        ]
        for t in report.training:
            lines.append(
                f"| {t['config']} | {t['backbone']} | {t['image_size']} | {t['batch']} | {t['perceptual']} | "
                f"{t['precision']}, channels-last | {t['timed_steps']} after {t['warmup_steps']} | "
                f"{t['images_per_s']:,.1f} |"
            )
    if report.gpu_tests:
        lines += ["", "## gpu-marked tests", "", "```", report.gpu_tests.strip(), "```"]
    if report.errors:
        lines += ["", "## Errors", ""] + [f"- {error}" for error in report.errors]
    return "\n".join(lines) + "\n"


def write_report(report: Report, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "device_check.json", out / "device_check.md"
    json_path.write_text(json.dumps(asdict(report), indent=2) + "\n")
    md_path.write_text(render_markdown(report))
    return md_path, json_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds on a CPU)")
    parser.add_argument("--configs", default=None, help="comma-separated configs (default: default,paper_ict)")
    parser.add_argument("--train-steps", type=int, default=None, help="timed training steps per config")
    parser.add_argument(
        "--gpu-tests-log",
        type=Path,
        default=None,
        help="pytest output of the gpu-marked tests; its last lines go into the report",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device cuda but torch {torch.__version__} sees no CUDA device; install a CUDA wheel "
            "(see benchmarks/device_check.sh) or pass --device cpu --quick"
        )
    settings = CheckSettings.quick() if args.quick else CheckSettings()
    if args.configs:
        settings = CheckSettings(**{**asdict(settings), "configs": tuple(args.configs.split(","))})
    if args.train_steps:
        settings = CheckSettings(**{**asdict(settings), "train_steps": args.train_steps})
    gpu_tests = None
    if args.gpu_tests_log and args.gpu_tests_log.is_file():
        gpu_tests = "\n".join(args.gpu_tests_log.read_text(errors="replace").strip().splitlines()[-15:])
    report = run_check(settings, torch.device(args.device), args.quick, gpu_tests, args.out)
    md_path, json_path = write_report(report, args.out)
    print(render_markdown(report))
    print(f"report: {md_path} and {json_path}")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
