"""Running a sweep: its runs one after the other, each in its own directory, completed ones skipped, failures
recorded, the summary rewritten after every run."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.sweeping.executors import (
    RESULT_FILE,
    Executor,
    RunFailed,
    SubprocessExecutor,
    error_text,
    runner_overrides,
)
from experiments.sweeping.planning import PlannedRun, plan, wandb_token
from experiments.sweeping.spec import Metric, Sweep
from experiments.sweeping.summary import sort_records, write_summary


@dataclass(frozen=True)
class RunRecord:
    """What one run of the sweep gave."""

    run_id: str
    params: Mapping[str, Any]
    status: str
    """'ok', 'failed' or 'skipped'."""
    metric: float | None = None
    test_metrics: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0
    run_dir: str | None = None


def _metric_value(metric: Metric, test_metrics: Mapping[str, float]) -> float:
    if metric.name not in test_metrics:
        raise RunFailed(f"the run did not report {metric.name} (it reported {sorted(test_metrics) or 'nothing'})")
    value = float(test_metrics[metric.name])
    if not math.isfinite(value):
        raise RunFailed(f"{metric.name} is {value}")
    return value


def completed_result(run_dir: Path, overrides: Sequence[str]) -> dict[str, Any] | None:
    """The stored result of a run that completed with these overrides, or None (never ran, failed, or the
    directory holds another configuration)."""
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if result.get("status") == "ok" and result.get("overrides") == list(overrides):
        return result
    return None


def run_sweep(
    sweep: Sweep,
    out_dir: Path,
    count: int | None = None,
    seed: int = 0,
    executor: Executor | None = None,
    log: Callable[[str], None] = print,
) -> list[RunRecord]:
    """Run the sweep's configurations one after the other in ``out_dir/<run id>`` and write
    ``out_dir/summary.md`` and ``summary.csv`` (rewritten after every run). Completed runs are skipped;
    a run that fails is recorded with its error and the sweep goes on. Returns the records, best first."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    executor = executor if executor is not None else SubprocessExecutor(group=sweep.name)
    runs = plan(sweep, count, seed)
    records: list[RunRecord] = []
    try:
        with _sigterm_as_interrupt():
            for index, run in enumerate(runs, 1):
                record = _run_one(sweep, out_dir, run, executor, log, f"[{index}/{len(runs)}]")
                records.append(record)
                write_summary(sweep, out_dir, records)
    finally:
        write_summary(sweep, out_dir, records)
    return sort_records(sweep.metric, records)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """``kill PID`` stops the sweep as Ctrl-C does: the running child is killed with it (subprocess.call kills
    its child on any exception) instead of being left training as an orphan, and the summary is written.
    Signal handlers can only be set from the main thread; elsewhere SIGTERM keeps its default."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_one(
    sweep: Sweep, out_dir: Path, run: PlannedRun, executor: Executor, log: Callable[[str], None], progress: str
) -> RunRecord:
    run_dir = out_dir / run.run_id
    label = f"{progress} {run.run_id} {' '.join(wandb_token(k, run.params[k]) for k in sweep.swept())}"
    if run.skip_reason or run.config_error:
        status = "skipped" if run.skip_reason else "failed"
        log(f"{label}: {status}: {run.skip_reason or run.config_error}")
        return RunRecord(run.run_id, run.params, status, error=run.skip_reason or run.config_error)
    done = completed_result(run_dir, run.overrides)
    if done is not None:
        log(f"{label}: already completed, skipped ({sweep.metric.name}={done['metric']:.4g})")
        return RunRecord(
            run.run_id,
            run.params,
            "ok",
            metric=done["metric"],
            test_metrics=done["test_metrics"],
            duration_s=done.get("duration_s", 0.0),
            run_dir=str(run_dir),
        )
    log(f"{label}: training")
    start = time.monotonic()
    overrides = [*run.overrides, *runner_overrides(out_dir, run.run_id)]
    try:
        test_metrics = {k: float(v) for k, v in executor(run.config_files, overrides, run_dir).items()}
        metric = _metric_value(sweep.metric, test_metrics)
    except Exception as err:  # noqa: BLE001 -- any failure of one run is recorded, the sweep goes on
        record = RunRecord(
            run.run_id,
            run.params,
            "failed",
            error=error_text(err),
            duration_s=time.monotonic() - start,
            run_dir=str(run_dir),
        )
        log(f"{label}: FAILED: {record.error}")
    else:
        record = RunRecord(
            run.run_id,
            run.params,
            "ok",
            metric=metric,
            test_metrics=test_metrics,
            duration_s=time.monotonic() - start,
            run_dir=str(run_dir),
        )
        log(f"{label}: {sweep.metric.name}={metric:.4g} ({record.duration_s / 60:.1f} min)")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESULT_FILE).write_text(
        json.dumps(
            {
                "status": record.status,
                "metric": record.metric,
                "test_metrics": record.test_metrics,
                "error": record.error,
                "duration_s": record.duration_s,
                "params": dict(run.params),
                "config_files": list(run.config_files),
                "overrides": list(run.overrides),
            },
            indent=2,
            default=str,
        )
    )
    return record
