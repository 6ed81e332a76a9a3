"""Reading a W&B sweep file (``experiments/sweeps/*.yaml``) for the offline runner: method, metric,
parameters and the ``face3d train`` command, each checked with a message naming the fix."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from errors import MissingFileError
from experiments.sweeping.distributions import check_parameter
from experiments.sweeping.spec import Metric, Sweep, SweepError

SWEEP_DIR = Path(__file__).resolve().parent.parent / "sweeps"
ARGS_MACRO = "${args_no_hyphens}"
METHODS_OFFLINE = ("grid", "random")


def resolve_sweep_path(name: str | Path) -> Path:
    """A sweep file given as a path, or by name under experiments/sweeps/ (``table1_cpu``)."""
    path = Path(name)
    if path.is_file():
        return path
    candidate = SWEEP_DIR / (str(name) if str(name).endswith(".yaml") else f"{name}.yaml")
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))
    raise MissingFileError(f"sweep {name!r} not found (as a path or under {SWEEP_DIR}); known sweeps: {known}")


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
        check_parameter(path, key, spec)

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
