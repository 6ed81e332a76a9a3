"""From a sweep to its runs: the parameter sets (grid product or seeded random draws), each run's overrides and
stable id, and the configurations checked against the schema and the skip rules before anything trains."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from experiments.config import ConfigError, ExperimentConfig, load_config
from experiments.sweeping.distributions import sampler
from experiments.sweeping.spec import Sweep, SweepError, distribution_of


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
            dist = distribution_of(spec)
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
    samplers = {name: sampler(sweep.path, name, sweep.parameters[name]) for name in names}
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
