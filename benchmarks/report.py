"""Writing a `benchmarks.suite.BenchmarkResult`: ``report.md`` (Markdown tables, plots linked by relative path),
``metrics.json`` (``accuracy`` holds the deterministic numbers, ``speed`` the timings), the stdout summary, and
the same tables and plots as a W&B run."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.pose_grid_eval import per_yaw_share_table, per_yaw_table, pitch_yaw_table

if TYPE_CHECKING:
    from benchmarks.suite import BenchmarkResult

METRIC_TEXT = (
    "shape error in mm of the NEUTRAL identity shape against the ground-truth identity shape, after "
    "rigid alignment (`metrics.vertex_error`, 'rigid': the training logs' metric, "
    "restricted to identity)"
)


def number(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """A Markdown table; floats get ``digits`` decimals, None becomes a dash."""

    def cell(value: Any) -> str:
        if value is None or isinstance(value, float):
            return number(value, digits)
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def accuracy_table(result: BenchmarkResult, pose_grid=None) -> tuple[list[str], list[list]]:
    """Rows of a pose-grid protocol (the matched one by default) with the standard error of each mean and its
    share of the possible gain from the mean face to the model's ceiling."""
    pose_grid = pose_grid if pose_grid is not None else result.pose_grid
    columns = ["method", "one value per", "n", "mean ± s.e. (mm)", "std (mm)", "median (mm)", "share of gain"]
    rows = [
        [
            row.name,
            row.level,
            row.stats.count,
            f"{row.stats.mean:.3f} ± {row.standard_error:.3f}",
            f"{row.stats.std:.3f}",
            f"{row.stats.median:.3f}",
            "" if row.share_of_gain is None else f"{100 * row.share_of_gain:.0f} %",
        ]
        for row in pose_grid.rows
    ]
    return columns, rows


def side_by_side_table(result: BenchmarkResult) -> tuple[list[str], list[list]]:
    """Every method's mean error and share of gain on the matched and the appearance-gap pose grids."""
    gap = {row.key: row for row in result.appearance_gap.rows}

    def cell(row) -> str:
        if row is None:
            return ""
        share = "" if row.share_of_gain is None else f" ({100 * row.share_of_gain:.0f} %)"
        return f"{row.stats.mean:.3f}{share}"

    columns = ["method", "matched look", "appearance gap"]
    rows = [[row.name, cell(row), cell(gap.get(row.key))] for row in result.pose_grid.rows]
    return columns, rows


def dataset_table(result: BenchmarkResult) -> tuple[list[str], list[list]]:
    columns = ["dataset", "protocol row", "one value per", "n", "mean ± std (mm)", "median (mm)", "failed"]
    rows = []
    for dataset in result.datasets:
        for row in dataset.rows:
            rows.append(
                [
                    dataset.title,
                    row.label,
                    row.level,
                    row.stats.count,
                    f"{row.stats.mean:.3f} ± {row.stats.std:.3f}",
                    f"{row.stats.median:.3f}",
                    len(dataset.failed),
                ]
            )
    return columns, rows


def real_photo_tables(result: BenchmarkResult) -> dict[str, tuple[list[str], list[list]]]:
    """The real-photo protocol's rows per section (photos, renders) and its per-yaw table, for W&B."""
    rp = result.real_photo
    columns = ["method", "one value per", "n", "mean (mm)", "std (mm)", "median (mm)", "share of gain"]
    tables = {}
    for section in ("photos", "renders"):
        rows = [
            [r.method, r.level, r.stats.count, r.stats.mean, r.stats.std, r.stats.median, r.share_of_gain]
            for r in rp.rows(section)
        ]
        if any(r[1] == "picture" for r in rows):
            tables[f"real_photo_{section}"] = (columns, rows)
    if any(s.section == "renders" for s in rp.scores):
        tables["real_photo_per_yaw"] = rp.per_yaw("yaw_deg")
    return tables


def speed_table(result: BenchmarkResult) -> tuple[list[str], list[list]]:
    columns = ["task", "setting", "value", "unit", "note"]
    return columns, [[r.task, r.setting, r.value, r.unit, r.note] for r in result.speed]


def report_markdown(result: BenchmarkResult) -> str:
    s, pg, info = result.settings, result.pose_grid, result.checkpoint
    protocol = pg.protocol
    trained = ", ".join(
        part
        for part in (
            f"epoch {info.epoch}" if info.epoch is not None else "",
            f"step {info.global_step}" if info.global_step is not None else "",
        )
        if part
    )
    lines = [
        "# face3d benchmark",
        "",
        f"- date: {result.date}",
        f"- device: {result.device}",
        f"- seed: {s.seed}",
        f"- R-Net checkpoint: `{info.path}`" + (f" ({trained})" if trained else ""),
        "- C-Net checkpoint: " + (f"`{result.cnet_checkpoint}`" if result.cnet_checkpoint else "none"),
        f"- run time: {result.seconds:.1f} s",
        "",
        "## Checkpoint configuration",
        "",
        "```json",
        json.dumps(info.config, indent=2),
        "```",
        "",
        "## Synthetic 20-pose protocol",
        "",
        f"{protocol['identities']} held-out synthetic identities, each rendered with the checkpoint's face model at "
        f"{protocol['image_size']}x{protocol['image_size']} at every pose of a grid of "
        f"{len(protocol['pitches_deg'])} pitches ({', '.join(f'{p:g}' for p in protocol['pitches_deg'])} degrees) x "
        f"{len(protocol['yaws_deg'])} yaws ({', '.join(f'{y:g}' for y in protocol['yaws_deg'])} degrees), roll 0: "
        f"{protocol['pictures_per_identity']} pictures per identity, each with its own random expression, lighting "
        "and albedo, rendered as the synthetic training data is (after the rendered-MICC test of Deng et al. 2019, "
        f"Fig. 6). Identities come from the image-set generator's `{protocol['split']}` split with base seed "
        f"{protocol['generator_seed']} (benchmark seed + `BENCHMARK_SEED_BASE`), streams no training split draws "
        "from (`benchmarks/pose_grid.py`).",
        "",
        f"Metric: {METRIC_TEXT}.",
        "",
        "### Shape error",
        "",
        markdown_table(*accuracy_table(result)),
        f"The model's ceiling on this protocol is {pg.protocol.get('ceiling_mm', 0.0):g} mm: the truth is itself a "
        "face-model identity. Share of gain = (mean face - method) / (mean face - ceiling) on the same pictures.",
        "",
        "### Shape error per yaw (mm)",
        "",
        markdown_table(*per_yaw_table(pg)),
        "### Share of the possible gain per yaw (%)",
        "",
        markdown_table(*per_yaw_share_table(pg)),
        "![shape error vs yaw](error_vs_yaw.png)",
        "",
        "Identity-level rows (shape averaging, C-Net) give one value per identity from all 20 pictures; the plot "
        "draws them as dashed horizontal lines.",
        "",
        "### R-Net, single image: shape error per pitch and yaw (mm)",
        "",
        markdown_table(*pitch_yaw_table(pg)),
    ]
    if result.appearance_gap is not None:
        gap = result.appearance_gap
        lines += [
            "## Appearance-gap protocol",
            "",
            "The same identities, poses and expressions rendered in a look neither the fit nor the face model's "
            "own renders assume (`benchmarks/pose_grid.py`, `datamodules.appearance.APPEARANCE_GAP`): the whole "
            "head with eyeballs, skin albedo without the prior's lip and brow colours, in several tones, lights "
            "that are not second-order SH (directional with shadows, coloured), other backgrounds. Same metric.",
            "",
            "### Shape error",
            "",
            markdown_table(*accuracy_table(result, gap)),
            "### Shape error per yaw (mm)",
            "",
            markdown_table(*per_yaw_table(gap)),
            "### Share of the possible gain per yaw (%)",
            "",
            markdown_table(*per_yaw_share_table(gap)),
            "### Matched and appearance-gap protocols side by side (mm; share of gain)",
            "",
            markdown_table(*side_by_side_table(result)),
            "",
        ]
    if "fit" in protocol:
        fitted = "; ".join(
            f"identity {p['identity']} at pitch {p['pitch_deg']:g}, yaw {p['yaw_deg']:g}"
            for p in protocol["fit"]["pictures"]
        )
        settings = protocol["fit"]["settings"]
        lines += [
            "### Fitting",
            "",
            f"Analysis-by-synthesis (`reconstruction.fit.fit_coefficients`) from the "
            f"{protocol['fit'].get('start', 'mean face')} (the set rows from the mean of its answers), "
            "minimising "
            f"{protocol['fit']['objective']} at {protocol['fit']['crop_size']} px, on "
            f"{len(protocol['fit']['pictures'])} pictures ({fitted}); {settings['rigid_iterations']} landmark "
            f"steps from each of the yaws {settings['rigid_starts_deg']}, {settings['shape_iterations']} landmark "
            f"steps, then {settings['iterations']} full-loss steps. The fitting rows above compare it with "
            "R-Net on the same pictures (R-Net at its own crop size). The set rows fit each identity's fitted "
            "pictures together with one shared identity, and average its single-picture identities.",
            "",
            "Loss weights: `" + json.dumps(protocol["fit"]["weights"]) + "`",
            "",
        ]
    lines += ["## Licensed datasets", ""]
    ran = [d for d in result.datasets if not d.skipped]
    if ran:
        lines += [markdown_table(*dataset_table(result))]
    for dataset in result.datasets:
        lines.append(
            f"- {dataset.title}: {dataset.note}"
            + (
                f"; {len(dataset.failed)} item(s) failed, e.g. {dataset.failed[0][0]}: {dataset.failed[0][1]}"
                if dataset.failed
                else ""
            )
        )
    if result.real_photo is not None:
        from benchmarks.real_photo import real_photo_markdown

        lines += [""] + real_photo_markdown(result.real_photo, markdown_table)
    lines += ["", "## Speed", ""]
    if result.speed:
        lines += [
            f"Device: {result.device}. Medians of {s.speed_repeats} timed runs after a warm-up; other work "
            "on the machine slows them.",
            "",
            markdown_table(*speed_table(result)),
        ]
    else:
        lines.append("Not measured (--no-speed).")
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def metrics_dict(result: BenchmarkResult) -> dict:
    info = result.checkpoint
    return {
        "date": result.date,
        "seed": result.settings.seed,
        "device": result.device,
        "checkpoint": {
            "path": str(info.path),
            "epoch": info.epoch,
            "global_step": info.global_step,
            "config": info.config,
        },
        "cnet_checkpoint": None if result.cnet_checkpoint is None else str(result.cnet_checkpoint),
        "accuracy": result.accuracy_dict(),
        "speed": [row.as_dict() for row in result.speed],
        "fit_seconds_per_image": result.pose_grid.fit_seconds,
        "real_photo_seconds": None if result.real_photo is None else result.real_photo.seconds,
        "seconds": result.seconds,
        "notes": list(result.notes),
    }


def log_to_wandb(result: BenchmarkResult, out_dir: Path) -> Path | None:
    """The report's tables (wandb.Table) and plots (wandb.Image) as one W&B run under ``out_dir/wandb``; the mode
    is ``WANDB_MODE`` (offline unless set), "disabled" logs nothing. Returns the run's folder."""
    mode = os.environ.get("WANDB_MODE", "offline")
    if mode == "disabled":
        return None
    import wandb

    tables = {
        "accuracy": accuracy_table(result),
        "error_per_yaw": per_yaw_table(result.pose_grid),
        "share_per_yaw": per_yaw_share_table(result.pose_grid),
        "error_pitch_yaw": pitch_yaw_table(result.pose_grid),
    }
    if result.appearance_gap is not None:
        tables.update(
            {
                "appearance_gap_accuracy": accuracy_table(result, result.appearance_gap),
                "appearance_gap_error_per_yaw": per_yaw_table(result.appearance_gap),
                "appearance_gap_share_per_yaw": per_yaw_share_table(result.appearance_gap),
            }
        )
    if any(not d.skipped for d in result.datasets):
        tables["datasets"] = dataset_table(result)
    if result.speed:
        tables["speed"] = speed_table(result)
    if result.real_photo is not None:
        tables.update(real_photo_tables(result))
    config = {
        "seed": result.settings.seed,
        "identities": result.settings.identities,
        "checkpoint": str(result.checkpoint.path),
        "device": result.device,
        **result.checkpoint.config,
    }
    run = wandb.init(
        project=result.checkpoint.wandb_project,
        name=f"benchmark-{out_dir.name}",
        job_type="benchmark",
        dir=str(out_dir),
        mode=mode,
        config=config,
        # Per run: setting WANDB_SILENT would silence every later W&B run of the process too.
        settings=wandb.Settings(silent=True),
    )
    try:
        payload = {
            name: wandb.Table(columns=list(columns), data=[list(row) for row in rows])
            for name, (columns, rows) in tables.items()
        }
        payload.update({name: wandb.Image(str(path)) for name, path in result.files.items() if path.suffix == ".png"})
        run.log(payload)
        run.summary.update({f"shape_error_mm/{row.key}": row.stats.mean for row in result.pose_grid.rows})
        if result.real_photo is not None:
            for section in ("photos", "renders"):
                for row in result.real_photo.rows(section):
                    if row.level == "picture":
                        run.summary[f"real_photo/{section}/{row.method}/error_mm"] = row.stats.mean
                        run.summary[f"real_photo/{section}/{row.method}/share_of_gain"] = row.share_of_gain
        run_dir = Path(run.dir).parent
    finally:
        run.finish()
    return run_dir


def write_outputs(result: BenchmarkResult, log: Callable[[str], None] = print) -> BenchmarkResult:
    """report.md, metrics.json and (if enabled) the W&B run, into the settings' output folder."""
    out_dir = Path(result.settings.out_dir)
    report = out_dir / "report.md"
    metrics = out_dir / "metrics.json"
    files = {**result.files, "report": report, "metrics": metrics}
    result = dataclasses.replace(result, files=files)
    report.write_text(report_markdown(result))
    metrics.write_text(json.dumps(metrics_dict(result), indent=2) + "\n")
    if result.settings.wandb:
        run_dir = log_to_wandb(result, out_dir)
        if run_dir is not None:
            log(f"W&B run ({os.environ.get('WANDB_MODE', 'offline')}): {run_dir}")
            result = dataclasses.replace(result, files={**result.files, "wandb": run_dir})
    return result


def summary_text(result: BenchmarkResult) -> str:
    """What ``face3d benchmark`` prints: the accuracy table, dataset notes, speed, and where the report is."""
    pg = result.pose_grid
    lines = [
        f"shape error on the synthetic 20-pose protocol ({pg.protocol['identities']} identities x "
        f"{pg.protocol['pictures_per_identity']} pictures; neutral identity shape, rigid alignment, mm):",
        "",
        markdown_table(*accuracy_table(result)).rstrip(),
    ]
    if result.appearance_gap is not None:
        lines += [
            "",
            "the same grid in the appearance-gap look (what the fit and the model's renders do not assume):",
            "",
            markdown_table(*accuracy_table(result, result.appearance_gap)).rstrip(),
        ]
    lines += [""] + [f"{d.title}: {d.note}" for d in result.datasets]
    if result.real_photo is not None:
        from benchmarks.real_photo import percent

        rp = result.real_photo
        for section in ("photos", "renders"):
            rows = rp.rows(section)
            if not any(r.level == "picture" for r in rows):
                continue
            lines += [
                "",
                f"real-photo protocol, {section} of the {rp.scan['name']} scan (point-to-surface mm, 95 mm "
                "crop; share of the gain from the mean face to the model's ceiling):",
            ]
            lines += [
                f"  {r.method}: {r.stats.mean:.3f} mm (n={r.stats.count})"
                + ("" if r.share_of_gain is None else f", {percent(r.share_of_gain)} of the gain")
                for r in rows
            ]
    if result.speed:
        lines += ["", f"speed on {result.device}:"]
        lines += [
            f"  {r.task} ({r.setting}): " + (f"{r.value:.2f} {r.unit}" if r.value is not None else r.note)
            for r in result.speed
        ]
    lines += [""] + [f"note: {note}" for note in result.notes]
    lines.append(f"report: {result.files.get('report')}  (metrics.json and plots beside it; {result.seconds:.0f} s)")
    return "\n".join(lines)
