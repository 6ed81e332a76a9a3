"""HRNModule: one training step moves the detail networks and nothing of the frozen R-Net."""

from __future__ import annotations

import pytest
import torch

from datamodules.detail import DetailDataSettings, DetailFaceDataset, collate_detail, detail_layout
from lightning_modules.hrn_module import HRNModule
from losses.hybrid import HybridLoss, LossWeights
from networks.hrn import HRNDetail, HRNSettings
from renderers.camera import PinholeCamera


def tiny_hrn(rnet, face_model) -> HRNModule:
    camera = PinholeCamera().resized(64, 64)
    detail = HRNDetail(face_model, detail_layout(face_model, 16, 32), camera, HRNSettings(widths=(4, 8)))
    loss = HybridLoss(LossWeights(perceptual=0.0, regularization=0.0, texture=0.0), face_model.skin_mask, None)
    return HRNModule(rnet, detail, loss, lr=1e-2, backend="torch")


@pytest.fixture(scope="module")
def detail_batch(smoke_rnet):
    _, face_model, _ = smoke_rnet
    settings = DetailDataSettings(n_train=2, n_val=1, n_test=2, image_size=64, mid_size=16, high_size=32)
    dataset = DetailFaceDataset(face_model, "train", settings)
    return collate_detail([dataset[0], dataset[1]])


def test_training_step_trains_only_the_detail_networks(smoke_rnet, detail_batch):
    rnet, face_model, _ = smoke_rnet
    module = tiny_hrn(rnet, face_model)
    module.log_dict = module.log = lambda *a, **k: None  # no trainer attached
    rnet_before = {k: v.clone() for k, v in rnet.state_dict().items()}
    optimizer = module.configure_optimizers()
    loss = module.training_step(detail_batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in rnet.parameters())
    assert all(torch.equal(v, rnet.state_dict()[k]) for k, v in rnet_before.items())
    assert module.detail.deformation_net.out.weight.abs().sum() > 0
    assert module.detail.displacement_net.out.weight.abs().sum() > 0
    losses = module.compute_losses(detail_batch.face, module(detail_batch.face.images, detail_batch.face.landmarks))
    for name in ("photometric", "landmark", "contour", "tv", "deformation", "displacement", "reflectance"):
        assert torch.isfinite(losses[f"raw/{name}"]), name
