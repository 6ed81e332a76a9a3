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


@pytest.fixture(scope="session")
def smoke_rnet():
    """(R-Net, face model, config) of the smoke config (ResNet-18, ICT with 8/8/6 modes, 64-pixel crops) with
    non-zero heads and non-trivial BatchNorm statistics, in eval mode: the coefficients vary with the image
    (an untrained R-Net predicts exactly zero, which any copy of it would reproduce). Only read it."""
    from experiments.build import build_face_model, build_rnet
    from experiments.config import load_config

    cfg = load_config(
        ["default", "smoke"],
        ["data.batch_size=2", "data.synthetic.n_train=2", "data.synthetic.n_val=2", "data.synthetic.n_test=2"],
    )
    face_model = build_face_model(cfg)
    rnet = build_rnet(cfg, face_model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in rnet.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
        for layer in rnet.final_layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.05)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.1)
    return rnet.eval(), face_model, cfg
