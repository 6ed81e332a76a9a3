"""Evaluation metrics: pure functions (`functional`) and thin torchmetrics wrappers (`modules`)."""

from benchmarks.metrics.functional import landmark_error, procrustes, vertex_error
from benchmarks.metrics.modules import LandmarkError, ShapeError

__all__ = ["LandmarkError", "ShapeError", "landmark_error", "procrustes", "vertex_error"]
