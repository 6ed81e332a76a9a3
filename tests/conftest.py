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


@pytest.fixture(scope="module")
def reuse_face_models():
    """Checkpoint loads rebuild their face model; with this fixture each ICT variant is built once per test
    module (the models are only read). Use it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import experiments.build

    cache, original = {}, experiments.build.load_face_model

    def load(name="ict", path=None, **options):
        key = (name, path, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = original(name, path, **options)
        return cache[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiments.build, "load_face_model", load)
        yield
