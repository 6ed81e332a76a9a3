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

Runs train in a child process (``python -m experiments.sweep --worker REQUEST``), as ``wandb agent`` does:
an exception, a NaN, a crash or an out-of-memory kill fails that run only, each run starts with fresh
memory and a fresh W&B run (Lightning's WandbLogger reuses an active W&B run within one process), and the
sweep goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import itertools
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.config import ConfigError, ExperimentConfig, load_config

SWEEP_DIR = Path(__file__).resolve().parent / "sweeps"
REPO_ROOT = Path(__file__).resolve().parent.parent
ARGS_MACRO = "${args_no_hyphens}"
METHODS_OFFLINE = ("grid", "random")
REQUEST_FILE = "sweep_request.json"
RESULT_FILE = "sweep_result.json"
LOG_FILE = "train.log"


class SweepError(ValueError):
    """A sweep file the offline runner cannot use; the message names the problem and the fix."""


# ------------------------------------------------------------------------------------------ the sweep file


@dataclass(frozen=True)
class Metric:
    name: str
    goal: str
    """'minimize' or 'maximize' (W&B's default is minimize)."""

    def better_first_key(self, value: float) -> float:
        return value if self.goal == "minimize" else -value


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: what to search, how, and the ``face3d train`` invocation to run it with."""

    path: Path
    name: str
    method: str
    metric: Metric
    parameters: Mapping[str, Mapping[str, Any]]
    """Parameter name (a dotted config key) -> its W&B spec (``value``, ``values`` or a distribution)."""
    config_files: tuple[str, ...]
    """The ``--config`` files of the command, in order (``default`` when it names none, as the CLI does)."""
    command_overrides: tuple[str, ...]
    """Fixed ``key=value`` tokens written in the command itself."""
    run_cap: int | None = None

    def swept(self) -> list[str]:
        """The parameters that vary between runs (all but the ``value:`` ones), in file order."""
        return [k for k, spec in self.parameters.items() if _distribution(spec) != "constant"]

    def fixed(self) -> dict[str, Any]:
        """The ``value:`` parameters, the same in every run."""
        return {k: spec["value"] for k, spec in self.parameters.items() if _distribution(spec) == "constant"}


def resolve_sweep_path(name: str | Path) -> Path:
    """A sweep file given as a path, or by name under experiments/sweeps/ (``table1_cpu``)."""
    path = Path(name)
    if path.is_file():
        return path
    candidate = SWEEP_DIR / (str(name) if str(name).endswith(".yaml") else f"{name}.yaml")
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"sweep {name!r} not found (as a path or under {SWEEP_DIR}); known sweeps: {known}")


def load_sweep(name: str | Path) -> Sweep:
    """Read and check a W&B sweep file for the offline runner (method, metric, parameters, command)."""
    import yaml

    path = resolve_sweep_path(name)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path} must hold a mapping with method, metric, parameters and command")

    method = raw.get("method")
    if method == "bayes":
        raise SweepError(
            f"{path}: method 'bayes' needs W&B's sweep server (`wandb sweep` + `wandb agent`); "
            "offline, use method: grid (values lists) or method: random (distributions, with --count N)"
        )
    if method not in METHODS_OFFLINE:
        raise SweepError(f"{path}: method must be one of {METHODS_OFFLINE} offline, got {method!r}")

    metric_raw = raw.get("metric")
    if not isinstance(metric_raw, dict) or not isinstance(metric_raw.get("name"), str):
        raise SweepError(f"{path}: needs `metric: {{name: test/shape_error_mm, goal: minimize}}` to rank the runs")
    goal = metric_raw.get("goal", "minimize")
    if goal not in ("minimize", "maximize"):
        raise SweepError(f"{path}: metric.goal must be 'minimize' or 'maximize', got {goal!r}")

    parameters = raw.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise SweepError(f"{path}: needs a non-empty `parameters` mapping of config keys (e.g. loss.photometric)")
    for key, spec in parameters.items():
        _check_parameter(path, key, spec)

    run_cap = raw.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or run_cap < 1):
        raise SweepError(f"{path}: run_cap must be a positive integer, got {run_cap!r}")

    name = str(raw.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        # The name becomes a directory and the prefix of every run's id.
        raise SweepError(f"{path}: name must use only letters, digits, '_', '.' and '-', got {name!r}")
    config_files, command_overrides = _parse_command(path, raw.get("command"), raw.get("program"))
    return Sweep(
        path=path,
        name=name,
        method=method,
        metric=Metric(name=metric_raw["name"], goal=goal),
        parameters=dict(parameters),
        config_files=config_files,
        command_overrides=command_overrides,
        run_cap=run_cap,
    )


def _parse_command(path: Path, command: Any, program: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The config files and fixed overrides of the sweep's ``face3d train`` command."""
    example = f"[${{env}}, ${{interpreter}}, -m, experiments.cli, train, --config, default, {ARGS_MACRO}]"
    if not isinstance(command, list) or not command:
        # W&B's default command passes --key=value, which `face3d train` does not accept.
        raise SweepError(f"{path}: needs a `command` that runs `face3d train` with {ARGS_MACRO}, e.g. {example}")
    tokens = [str(t) for t in command]
    if "train" not in tokens:
        raise SweepError(f"{path}: the command must run the `train` subcommand of face3d, e.g. {example}")
    split = tokens.index("train")
    launcher, train_args = tokens[:split], tokens[split + 1 :]
    runs_cli = (
        "experiments.cli" in launcher
        or any(Path(t).name == "face3d" for t in launcher)
        or ("${program}" in launcher and str(program or "").endswith("experiments/cli.py"))
    )
    if not runs_cli:
        raise SweepError(f"{path}: the command must start face3d (`-m experiments.cli` or `face3d`), got {tokens}")
    if train_args.count(ARGS_MACRO) != 1:
        raise SweepError(
            f"{path}: the command must pass the parameters once as {ARGS_MACRO} (key=value, the "
            f"override syntax of face3d train), e.g. {example}"
        )
    others = [t for t in train_args if t.startswith("${") and t != ARGS_MACRO]
    if others:
        raise SweepError(f"{path}: after `train` only {ARGS_MACRO} can be used offline; found {others}")
    # The train subcommand's own parser, so the command means here exactly what it means to `face3d train`.
    from experiments.commands import train as train_command

    parser = argparse.ArgumentParser(prog="face3d", add_help=False)
    train_command.register(parser.add_subparsers(dest="command"))
    try:
        args = parser.parse_args(["train", *[t for t in train_args if t != ARGS_MACRO]])
    except SystemExit:
        raise SweepError(f"{path}: `face3d train` cannot parse the command's arguments {train_args}") from None
    if args.fast_dev_run or args.print_config:
        raise SweepError(f"{path}: the command must train fully (remove --fast-dev-run / --print-config)")
    return tuple(args.config or ["default"]), tuple(args.overrides)


# ------------------------------------------------------------------------------------------ distributions


def _number(path: Path, key: str, spec: Mapping[str, Any], name: str, default: float | None = None) -> float:
    value = spec.get(name, default)
    if value is None:
        raise SweepError(f"{path}: parameter {key} needs `{name}` for distribution {spec.get('distribution')!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = (
            " (YAML reads an exponent without a decimal point as text: write 1.0e-4, not 1e-4)"
            if isinstance(value, str) and "e" in value.lower()
            else ""
        )
        raise SweepError(f"{path}: parameter {key}: `{name}` must be a number, got {value!r}{hint}")
    return value


def _quantize(x: float, q: float) -> float | int:
    # W&B returns integers when q is an integer; rounding to 12 digits drops float noise (0.30000000000000004).
    value = round(x / q) * q
    return int(value) if isinstance(q, int) else round(value, 12)


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(lo, hi))


def _sampler(path: Path, key: str, spec: Mapping[str, Any]) -> Callable[[random.Random], Any]:
    """A function drawing one value of parameter ``key`` (W&B's distributions; beta ones are not supported)."""
    dist = _distribution(spec)
    if dist == "constant":
        return lambda rng: spec["value"]
    if dist == "categorical":
        values = list(spec["values"])
        weights = spec.get("probabilities")
        if weights is not None:
            if len(weights) != len(values) or any(not isinstance(w, (int, float)) or w < 0 for w in weights):
                raise SweepError(f"{path}: parameter {key}: `probabilities` needs one non-negative number per value")
            return lambda rng: rng.choices(values, weights=weights)[0]
        return lambda rng: values[rng.randrange(len(values))]

    def num(name: str, default: float | None = None) -> float:
        return _number(path, key, spec, name, default)

    q = num("q", 1.0) if dist in QUANTIZED else 1.0
    if q <= 0:
        raise SweepError(f"{path}: parameter {key}: `q` must be positive, got {q}")
    if dist in ("normal", "q_normal", "log_normal", "q_log_normal"):
        mu, sigma = num("mu", 0.0), num("sigma", 1.0)
        if sigma < 0:
            raise SweepError(f"{path}: parameter {key}: `sigma` must be >= 0, got {sigma}")
        draw = {
            "normal": lambda rng: rng.gauss(mu, sigma),
            "q_normal": lambda rng: _quantize(rng.gauss(mu, sigma), q),
            "log_normal": lambda rng: rng.lognormvariate(mu, sigma),
            "q_log_normal": lambda rng: _quantize(rng.lognormvariate(mu, sigma), q),
        }
        return draw[dist]
    lo, hi = num("min"), num("max")
    if lo > hi:
        raise SweepError(f"{path}: parameter {key}: min ({lo}) is larger than max ({hi})")
    if dist in ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values") and lo <= 0:
        raise SweepError(f"{path}: parameter {key}: {dist} needs min > 0 (they are values, not exponents), got {lo}")
    if dist == "int_uniform":
        if not (isinstance(lo, int) and isinstance(hi, int)):
            raise SweepError(f"{path}: parameter {key}: int_uniform needs integer min and max, got {lo}, {hi}")
        return lambda rng: rng.randint(lo, hi)
    draw = {
        "uniform": lambda rng: rng.uniform(lo, hi),
        "q_uniform": lambda rng: _quantize(rng.uniform(lo, hi), q),
        # min and max are natural-log exponents here.
        "log_uniform": lambda rng: _log_uniform(rng, lo, hi),
        "q_log_uniform": lambda rng: _quantize(_log_uniform(rng, lo, hi), q),
        # min and max are the values themselves.
        "log_uniform_values": lambda rng: _log_uniform(rng, math.log(lo), math.log(hi)),
        "q_log_uniform_values": lambda rng: _quantize(_log_uniform(rng, math.log(lo), math.log(hi)), q),
        # log(1/X) is uniform in [min, max] (exponents) or in [log(1/max), log(1/min)] (values).
        "inv_log_uniform": lambda rng: math.exp(-rng.uniform(lo, hi)),
        "inv_log_uniform_values": lambda rng: 1.0 / _log_uniform(rng, math.log(lo), math.log(hi)),
    }
    return draw[dist]


QUANTIZED = ("q_uniform", "q_log_uniform", "q_log_uniform_values", "q_normal", "q_log_normal")
SUPPORTED_DISTRIBUTIONS = (
    "constant",
    "categorical",
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform",
    "log_uniform_values",
    "q_log_uniform",
    "q_log_uniform_values",
    "inv_log_uniform",
    "inv_log_uniform_values",
    "normal",
    "q_normal",
    "log_normal",
    "q_log_normal",
)


def _distribution(spec: Mapping[str, Any]) -> str:
    """The spec's distribution, inferred as W&B does when it names none."""
    if "distribution" in spec:
        return str(spec["distribution"])
    if "values" in spec:
        return "categorical"
    if "value" in spec:
        return "constant"
    lo, hi = spec.get("min"), spec.get("max")
    if isinstance(lo, int) and isinstance(hi, int) and not isinstance(lo, bool) and not isinstance(hi, bool):
        return "int_uniform"
    return "uniform"


def _check_parameter(path: Path, key: str, spec: Any) -> None:
    if not isinstance(spec, dict):
        raise SweepError(
            f"{path}: parameter {key} must be a mapping such as {{values: [...]}} or {{value: x}}, got {spec!r}"
        )
    if "parameters" in spec:
        raise SweepError(
            f"{path}: parameter {key} nests parameters, which ${{args_no_hyphens}} cannot pass to "
            f"face3d train; name each one by its dotted config key (e.g. {key}.photometric)"
        )
    dist = _distribution(spec)
    if dist not in SUPPORTED_DISTRIBUTIONS:
        raise SweepError(
            f"{path}: parameter {key}: distribution {dist!r} is not supported offline; use one of "
            f"{SUPPORTED_DISTRIBUTIONS}"
        )
    if dist == "constant" and "value" not in spec:
        raise SweepError(f"{path}: parameter {key}: a constant needs `value`")
    if dist == "categorical" and (not isinstance(spec.get("values"), list) or not spec["values"]):
        raise SweepError(f"{path}: parameter {key}: `values` must be a non-empty list")
    _sampler(path, key, spec)  # checks the numbers now, so a bad file fails before any run starts


# ------------------------------------------------------------------------------------------ expansion


@dataclass(frozen=True)
class PlannedRun:
    """One configuration of the sweep, before it runs."""

    run_id: str
    params: Mapping[str, Any]
    config_files: tuple[str, ...]
    overrides: tuple[str, ...]
    """The command's fixed tokens, then one ``name=value`` token per parameter as W&B's agent writes it."""
    skip_reason: str | None = None
    config_error: str | None = None


def expand(sweep: Sweep, count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The parameter sets of the sweep, in order: the cartesian product of ``values`` (grid, the last
    parameter varying fastest), or ``count`` draws (random, default ``run_cap``) seeded by ``seed`` so the
    first N draws are the same whatever ``count`` is. Duplicate draws are dropped. ``count`` truncates a grid.
    """
    if count is not None and count < 1:
        raise SweepError(f"--count must be at least 1, got {count}")
    names = list(sweep.parameters)
    if sweep.method == "grid":
        choices = []
        for name in names:
            spec = sweep.parameters[name]
            dist = _distribution(spec)
            if dist not in ("constant", "categorical"):
                raise SweepError(
                    f"{sweep.path}: grid search needs `values` or `value` for every parameter; {name} "
                    f"has distribution {dist!r} (use method: random, or list its values)"
                )
            choices.append([spec["value"]] if dist == "constant" else list(spec["values"]))
        combos = [dict(zip(names, combo)) for combo in itertools.product(*choices)]
        return _unique(combos)[:count] if count is not None else _unique(combos)
    n = count if count is not None else sweep.run_cap
    if n is None:
        raise SweepError(
            f"{sweep.path}: random search runs until stopped online; offline give --count N "
            "(or run_cap: N in the sweep file)"
        )
    rng = random.Random(seed)
    samplers = {name: _sampler(sweep.path, name, sweep.parameters[name]) for name in names}
    return _unique([{name: samplers[name](rng) for name in names} for _ in range(n)])


def _unique(combos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for combo in combos:
        key = json.dumps(combo, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(combo)
    return out


def wandb_token(name: str, value: Any) -> str:
    """The ``key=value`` token W&B's agent puts in ``${args_no_hyphens}`` for one parameter."""
    return f"{name}={value}"


def run_id_for(sweep: Sweep, config_files: Sequence[str], overrides: Sequence[str]) -> str:
    """Stable id of a configuration: same files and overrides, same id (the resume key and run directory)."""
    text = json.dumps({"config_files": list(config_files), "overrides": list(overrides)})
    return f"{sweep.name}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def no_data_term(cfg: ExperimentConfig) -> str | None:
    """Why a configuration is not worth training, or None. Without the photometric, landmark and perceptual
    terms only the coefficient regularisers are left: the network learns nothing from the images (Table 1's
    all-off row), and the test already reports that baseline as test/mean_face_error_mm."""
    loss = cfg.loss
    if loss.photometric == 0 and loss.landmark == 0 and loss.perceptual == 0:
        return "no image loss (photometric, landmark and perceptual weights all 0); see test/mean_face_error_mm"
    return None


SKIP_RULES: tuple[Callable[[ExperimentConfig], str | None], ...] = (no_data_term,)


def plan(sweep: Sweep, count: int | None = None, seed: int = 0) -> list[PlannedRun]:
    """The runs of the sweep, each with its config checked against the schema and the skip rules."""
    runs = []
    for params in expand(sweep, count, seed):
        overrides = (*sweep.command_overrides, *(wandb_token(k, v) for k, v in params.items()))
        skip_reason = config_error = None
        try:
            cfg = load_config(list(sweep.config_files), list(overrides))
        except (ConfigError, FileNotFoundError) as err:
            config_error = f"bad config: {err}"
        else:
            skip_reason = next((reason for rule in SKIP_RULES if (reason := rule(cfg))), None)
        runs.append(
            PlannedRun(
                run_id=run_id_for(sweep, sweep.config_files, overrides),
                params=params,
                config_files=sweep.config_files,
                overrides=overrides,
                skip_reason=skip_reason,
                config_error=config_error,
            )
        )
    return runs


# ------------------------------------------------------------------------------------------ running


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
    """Trains each run in a child Python (``python -m experiments.sweep --worker``), output in train.log."""

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
                [sys.executable, "-m", "experiments.sweep", "--worker", str(request)],
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


def _metric_value(metric: Metric, test_metrics: Mapping[str, float]) -> float:
    if metric.name not in test_metrics:
        raise RunFailed(f"the run did not report {metric.name} (it reported {sorted(test_metrics) or 'nothing'})")
    value = float(test_metrics[metric.name])
    if not math.isfinite(value):
        raise RunFailed(f"{metric.name} is {value}")
    return value


def _error_text(err: BaseException) -> str:
    return str(err) if isinstance(err, RunFailed) else f"{type(err).__name__}: {err}"


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
            error=_error_text(err),
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


# ------------------------------------------------------------------------------------------ summary


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


# ------------------------------------------------------------------------------------------ child process


def _worker(request_path: Path) -> int:
    """Train one configuration (the child process of SubprocessExecutor) and write its result file."""
    request = json.loads(Path(request_path).read_text())
    result_path = Path(request["result"])
    try:
        cfg = load_config(request["config_files"], request["overrides"])
        from experiments.train import train

        # resume: an interrupted run continues from its last.ckpt; a fresh run has none and starts over.
        metrics = dict(train(cfg, resume=True).test_metrics)
    except Exception as err:  # noqa: BLE001 -- reported to the parent, which records the run as failed
        traceback.print_exc()
        result_path.write_text(json.dumps({"error": _error_text(err)}))
        return 1
    result_path.write_text(json.dumps({"test_metrics": metrics}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker(Path(sys.argv[2])))
    sys.exit("usage: face3d sweep SWEEP_YAML (this module's own entry point is the sweep's child process)")
