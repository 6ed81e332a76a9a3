"""W&B's parameter distributions, drawn offline the way W&B draws them (beta ones are not supported), and the
check of one parameter's spec."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from experiments.sweeping.spec import SweepError, distribution_of


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


def sampler(path: Path, key: str, spec: Mapping[str, Any]) -> Callable[[random.Random], Any]:
    """A function drawing one value of parameter ``key`` (W&B's distributions; beta ones are not supported)."""
    dist = distribution_of(spec)
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


def check_parameter(path: Path, key: str, spec: Any) -> None:
    if not isinstance(spec, dict):
        raise SweepError(
            f"{path}: parameter {key} must be a mapping such as {{values: [...]}} or {{value: x}}, got {spec!r}"
        )
    if "parameters" in spec:
        raise SweepError(
            f"{path}: parameter {key} nests parameters, which ${{args_no_hyphens}} cannot pass to "
            f"face3d train; name each one by its dotted config key (e.g. {key}.photometric)"
        )
    dist = distribution_of(spec)
    if dist not in SUPPORTED_DISTRIBUTIONS:
        raise SweepError(
            f"{path}: parameter {key}: distribution {dist!r} is not supported offline; use one of "
            f"{SUPPORTED_DISTRIBUTIONS}"
        )
    if dist == "constant" and "value" not in spec:
        raise SweepError(f"{path}: parameter {key}: a constant needs `value`")
    if dist == "categorical" and (not isinstance(spec.get("values"), list) or not spec["values"]):
        raise SweepError(f"{path}: parameter {key}: `values` must be a non-empty list")
    sampler(path, key, spec)  # checks the numbers now, so a bad file fails before any run starts
