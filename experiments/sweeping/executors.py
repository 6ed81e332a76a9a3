"""How one run of a sweep is trained: in a child process (the default, isolated as ``wandb agent`` runs it) or in
this process (tests, debugging). An executor takes (config files, overrides, run directory) and returns the
run's test metrics, or raises `RunFailed`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUEST_FILE = "sweep_request.json"
RESULT_FILE = "sweep_result.json"
LOG_FILE = "train.log"


class RunFailed(RuntimeError):
    """A run that did not finish; the message is what the summary shows."""


# An executor trains one configuration in ``run_dir`` and returns its test metrics, or raises.
Executor = Callable[[Sequence[str], Sequence[str], Path], Mapping[str, float]]


def runner_overrides(sweep_dir: Path, run_id: str) -> list[str]:
    """Where the run writes (``<sweep dir>/<run id>``; the synthetic-data cache ``<sweep dir>/cache`` is shared
    by the runs) and that its W&B run is offline."""
    return [f"logging.output_dir={sweep_dir}", f"logging.run_name={run_id}", "logging.wandb_mode=offline"]


@dataclass(frozen=True)
class SubprocessExecutor:
    """Trains each run in a child Python (``python -m experiments.sweeping.worker REQUEST``), output in train.log."""

    group: str
    """The W&B group of the runs (the sweep's name)."""

    def __call__(self, config_files: Sequence[str], overrides: Sequence[str], run_dir: Path) -> Mapping[str, float]:
        run_dir.mkdir(parents=True, exist_ok=True)
        request = run_dir / REQUEST_FILE
        result_path = run_dir / RESULT_FILE
        result_path.unlink(missing_ok=True)
        request.write_text(
            json.dumps(
                {"config_files": list(config_files), "overrides": list(overrides), "result": str(result_path)}, indent=2
            )
        )
        env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", WANDB_RUN_GROUP=self.group)
        # The child must import this checkout even when the project is not installed.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        with open(run_dir / LOG_FILE, "ab") as log:
            code = subprocess.call(
                [sys.executable, "-m", "experiments.sweeping.worker", str(request)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if "error" in result:
            raise RunFailed(result["error"])
        if code != 0 or "test_metrics" not in result:
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            hint = " (SIGKILL: out of memory?)" if code == -9 else ""
            raise RunFailed(f"training process ended without a result ({how}{hint}); see {run_dir / LOG_FILE}")
        return result["test_metrics"]


@dataclass(frozen=True)
class InProcessExecutor:
    """Trains in this process with ``train_fn(cfg, resume=True)`` (tests, debugging with pdb). No isolation:
    a crash ends the sweep."""

    train_fn: Callable[..., Any] | None = None
    """Default: `experiments.train.train`."""

    def __call__(self, config_files: Sequence[str], overrides: Sequence[str], run_dir: Path) -> Mapping[str, float]:
        train_fn = self.train_fn
        if train_fn is None:
            from experiments.train import train as train_fn
        try:
            return dict(train_fn(load_config(list(config_files), list(overrides)), resume=True).test_metrics)
        finally:
            # Lightning's WandbLogger would log the next run into this one if it stayed active.
            wandb = sys.modules.get("wandb")
            if wandb is not None and getattr(wandb, "run", None) is not None:
                wandb.finish()


def error_text(err: BaseException) -> str:
    return str(err) if isinstance(err, RunFailed) else f"{type(err).__name__}: {err}"
