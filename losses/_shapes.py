"""Shape checks shared by the loss terms (shapes are Python ints, so checking them never syncs)."""

from __future__ import annotations

import torch


def check_shape(name: str, tensor: torch.Tensor, shape: tuple[int | None, ...]) -> None:
    """Raise a `ValueError` naming ``name`` unless ``tensor`` has ``shape`` (None = any size)."""
    if tensor.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, tensor.shape)):
        expected = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {expected} (* = any size), got {tuple(tensor.shape)}")
