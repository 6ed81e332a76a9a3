"""What a sweep file says, parsed: the metric, the parameters and their W&B distributions, the ``face3d train``
invocation (`experiments.sweeping.sweep_file` reads and checks the file)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from errors import InvalidInputError


class SweepError(InvalidInputError):
    """A sweep file the offline runner cannot use; the message names the problem and the fix."""


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
        return [k for k, spec in self.parameters.items() if distribution_of(spec) != "constant"]

    def fixed(self) -> dict[str, Any]:
        """The ``value:`` parameters, the same in every run."""
        return {k: spec["value"] for k, spec in self.parameters.items() if distribution_of(spec) == "constant"}


def distribution_of(spec: Mapping[str, Any]) -> str:
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
