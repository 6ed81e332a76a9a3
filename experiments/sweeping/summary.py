"""The sweep's ranking: ``summary.csv`` (every parameter and test metric) and ``summary.md`` (the swept parameters
and the error metrics), best run first."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.sweeping.executors import runner_overrides
from experiments.sweeping.planning import wandb_token
from experiments.sweeping.spec import Metric, Sweep

if TYPE_CHECKING:
    from experiments.sweeping.runner import RunRecord


STATUS_ORDER = {"ok": 0, "failed": 1, "skipped": 2}


def sort_records(metric: Metric, records: Sequence[RunRecord]) -> list[RunRecord]:
    """Best metric first (by the goal), then failed runs, then skipped ones; stable within each group."""
    return sorted(
        records,
        key=lambda r: (
            STATUS_ORDER.get(r.status, 3),
            metric.better_first_key(r.metric) if r.metric is not None else 0.0,
        ),
    )


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_summary(sweep: Sweep, out_dir: Path, records: Sequence[RunRecord]) -> tuple[Path, Path]:
    """``summary.csv`` (every parameter and test metric) and ``summary.md`` (the swept parameters and the
    error metrics), one row per run, best first."""
    ordered = sort_records(sweep.metric, records)
    params = list(sweep.parameters)
    others = sorted({k for r in records for k in r.test_metrics} - {sweep.metric.name})

    csv_path = out_dir / "summary.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["rank", "run_id", "status", sweep.metric.name, *params, *others, "duration_s", "error", "run_dir"]
        )
        for rank, r in enumerate(ordered, 1):
            writer.writerow(
                [
                    rank,
                    r.run_id,
                    r.status,
                    "" if r.metric is None else r.metric,
                    *(r.params.get(p, "") for p in params),
                    *(r.test_metrics.get(k, "") for k in others),
                    round(r.duration_s, 1),
                    r.error or "",
                    r.run_dir or "",
                ]
            )

    varying, fixed = sweep.swept(), sweep.fixed()
    # The error metrics (mm, px) keep the table readable; the loss values are in the CSV.
    others = [k for k in others if k.endswith(("_mm", "_px"))] or others
    lines = [
        f"# Sweep {sweep.name}",
        "",
        f"- file: `{sweep.path}`",
        f"- method: {sweep.method}; metric: `{sweep.metric.name}` ({sweep.metric.goal}); best first",
        f"- configs: {', '.join(sweep.config_files)}; fixed: "
        + (
            ", ".join(f"`{t}`" for t in [*sweep.command_overrides, *(wandb_token(k, v) for k, v in fixed.items())])
            or "none"
        )
        + f"; then, per run, `{' '.join(runner_overrides(out_dir, 'RUN_ID'))}`",
        f"- runs: {sum(r.status == 'ok' for r in records)} ok, {sum(r.status == 'failed' for r in records)} failed, "
        f"{sum(r.status == 'skipped' for r in records)} skipped",
        "",
        "| # | run | status | " + " | ".join([f"**{sweep.metric.name}**", *varying, *others, "min", "note"]) + " |",
        "|" + "---|" * (5 + len(varying) + len(others) + 1),
    ]
    for rank, r in enumerate(ordered, 1):
        note = (r.error or "").replace("|", "\\|").replace("\n", " ")
        cells = [
            str(rank),
            r.run_id,
            r.status,
            "" if r.metric is None else f"**{r.metric:.4g}**",
            *(_format(r.params.get(p, "")) for p in varying),
            *(_format(r.test_metrics[k]) if k in r.test_metrics else "" for k in others),
            f"{r.duration_s / 60:.1f}" if r.duration_s else "",
            note[:200],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    md_path = out_dir / "summary.md"
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, csv_path


def default_out_dir(sweep: Sweep) -> Path:
    return Path("outputs") / "sweeps" / sweep.name
