"""Shared fixtures: small, fast versions of the bundled face model."""

from __future__ import annotations

import pytest
import torch

from face_model import FaceModel, load_face_model


@pytest.fixture(scope="session")
def ict_small() -> FaceModel:
    """The bundled ICT model with few modes (fast to build, same mesh)."""
    return load_face_model("ict", n_id=10, n_exp=10, n_tex=9)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
