"""Hyper-parameter sweeps: W&B sweep files (``experiments/sweeps/*.yaml``) run online by ``wandb agent`` or
offline by this module, from the same file.

Online (needs a W&B account)::

    source .venv/bin/activate               # the sweep command runs `python`, which must be the venv's
    wandb sweep experiments/sweeps/table1_cpu.yaml     # prints ENTITY/PROJECT/SWEEP_ID
    wandb agent ENTITY/PROJECT/SWEEP_ID

Offline (``face3d sweep FILE``, ``make sweep SWEEP=FILE``): grid and random search are expanded here,
each configuration is trained as a W&B *offline* run in its own directory ``<sweep dir>/<run id>``, and
``summary.md`` / ``summary.csv`` rank the runs by the sweep's metric. Bayesian search needs W&B's server.

What the offline runner takes from the file, so that an offline result means what the online sweep means:

- ``command`` must run ``face3d train`` (``${env} ${interpreter} -m experiments.cli train ...``) with the
  ``${args_no_hyphens}`` macro, which W&B expands to ``key=value`` tokens, the override syntax of
  ``face3d train``. Its ``--config`` files and fixed ``key=value`` tokens are used as they are.
- Each parameter becomes the token W&B would pass, formatted the way W&B's agent formats it
  (``f"{name}={value}"``: ``True``, ``0.0016``), so a value the config cannot read fails here as online.
- A run's id is a hash of its config files and overrides: re-running a sweep skips the runs that
  completed, retries failed ones and continues interrupted ones from their ``last.ckpt``.

Runs train in a child process (``python -m experiments.sweeping.worker REQUEST``), as ``wandb agent`` does:
an exception, a NaN, a crash or an out-of-memory kill fails that run only, each run starts with fresh
memory and a fresh W&B run (Lightning's WandbLogger reuses an active W&B run within one process), and the
sweep goes on.

Modules: `spec` (the parsed sweep: metric, parameters, `SweepError`), `sweep_file` (reading and checking a file),
`distributions` (W&B's distributions drawn offline), `planning` (parameter sets, run ids, overrides, skip
rules), `executors` (a run in a child process or in this one), `runner` (`run_sweep`: the runs one after the
other, resume, failures), `summary` (``summary.md`` / ``summary.csv``), `worker` (the child process).
"""

from __future__ import annotations

from experiments.sweeping.executors import (
    LOG_FILE,
    RESULT_FILE,
    Executor,
    InProcessExecutor,
    RunFailed,
    SubprocessExecutor,
    runner_overrides,
)
from experiments.sweeping.planning import PlannedRun, expand, no_data_term, plan, run_id_for, wandb_token
from experiments.sweeping.runner import RunRecord, completed_result, run_sweep
from experiments.sweeping.spec import Metric, Sweep, SweepError
from experiments.sweeping.summary import default_out_dir, sort_records, write_summary
from experiments.sweeping.sweep_file import SWEEP_DIR, load_sweep, resolve_sweep_path

__all__ = [
    "LOG_FILE",
    "RESULT_FILE",
    "SWEEP_DIR",
    "Executor",
    "InProcessExecutor",
    "Metric",
    "PlannedRun",
    "RunFailed",
    "RunRecord",
    "SubprocessExecutor",
    "Sweep",
    "SweepError",
    "completed_result",
    "default_out_dir",
    "expand",
    "load_sweep",
    "no_data_term",
    "plan",
    "resolve_sweep_path",
    "run_id_for",
    "run_sweep",
    "runner_overrides",
    "sort_records",
    "wandb_token",
    "write_summary",
]
