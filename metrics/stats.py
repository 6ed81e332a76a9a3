"""Summary statistics of error sets, shared by the functional protocols and the metric modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ErrorStats:
    """Summary of a set of errors (mm for the shape protocols): mean, population std (as NoW's
    ``np.std``), median (mean of the two middle values for an even count) and the number of values."""

    mean: float
    std: float
    median: float
    count: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.std:.3f} (median {self.median:.3f}, n={self.count})"


def summarise(distances: Any) -> ErrorStats:
    """Any-shaped array or tensor of errors -> `ErrorStats` over all its values (float64)."""
    if hasattr(distances, "detach"):
        distances = distances.detach().cpu().numpy()
    values = np.asarray(distances, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("cannot summarise an empty set of errors")
    if not np.isfinite(values).all():
        raise ValueError("errors contain NaN or infinite values")
    return ErrorStats(float(values.mean()), float(values.std()), float(np.median(values)), int(values.size))
