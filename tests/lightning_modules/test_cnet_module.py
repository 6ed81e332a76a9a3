"""CNetModule on tiny synthetic sets: the zero-initialised start is shape averaging, gradients reach C-Net
and never R-Net, padding does not change the loss, fast_dev_run, and a checkpoint rebuilds the module."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from datamodules.image_sets import collate_image_sets
from experiments.build import (
    build_cnet_module,
    build_face_model,
    build_image_set_datamodule,
    build_rnet_module,
    load_cnet_checkpoint,
)
from experiments.config import load_config
from lightning_modules.cnet_module import CNetModule
from metrics import vertex_error
from networks.aggregation import mean_aggregate
from networks.rnet import RNetOutput

TINY = [
    "data.sets.set_size=3",
    "data.sets.batch_size=2",
    "data.sets.n_train=4",
    "data.sets.n_val=2",
    "data.sets.n_test=2",
    "cnet.conv_channels=[8,8,8]",
    "cnet.hidden=16",
    "trainer.log_every_n_steps=1",
    "logging.wandb=false",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = load_config(["smoke"], TINY + [f"logging.output_dir={tmp_path_factory.mktemp('cnet')}"])
    face_model = build_face_model(cfg)
    rnet_module = build_rnet_module(cfg, face_model)
    torch.manual_seed(1)
    # An untrained R-Net predicts the mean face for every picture; random heads make the identities differ.
    for layer in rnet_module.rnet.final_layers:
        torch.nn.init.normal_(layer.weight, std=0.02)
    datamodule = build_image_set_datamodule(cfg, face_model)
    datamodule.setup("fit")
    return cfg, rnet_module, datamodule


def batch_of(datamodule):
    return next(iter(datamodule.val_dataloader()))


def test_start_is_exactly_shape_averaging(setup):
    cfg, rnet_module, datamodule = setup
    batch = batch_of(datamodule)
    for strategy in ("s4", "s1", "s2"):
        module = build_cnet_module(cfg, rnet_module, strategy).train()
        prediction = module(batch.images, batch.valid, batch.full)
        assert torch.equal(prediction.confidence, torch.full_like(prediction.confidence, 0.5))
        torch.testing.assert_close(
            prediction.aggregated, mean_aggregate(prediction.identity, batch.valid), rtol=0, atol=1e-6
        )
        assert prediction.identity.std(dim=1).min() > 0  # the pictures really disagree


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_gradients_reach_cnet_and_never_rnet(setup):
    cfg, rnet_module, datamodule = setup
    module = build_cnet_module(cfg, rnet_module, "s4").train()
    assert not module.rnet.training and not any(p.requires_grad for p in module.rnet.parameters())
    stats = {k: v.clone() for k, v in module.rnet.state_dict().items() if "running" in k}
    batch = next(iter(datamodule.train_dataloader()))
    loss = module.training_step(batch, 0)
    loss.backward()
    assert module.cnet.out.weight.grad.abs().sum() > 0 and module.cnet.out.bias.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.rnet.parameters())
    for key, value in module.rnet.state_dict().items():
        if key in stats:
            assert torch.equal(value, stats[key]), f"R-Net batch-norm statistic {key} moved"
    # After one step the confidences move away from 0.5, so the aggregate is no longer the plain mean.
    optimizer = torch.optim.SGD(module.cnet.parameters(), lr=10.0)
    optimizer.step()
    # The photo-look pictures give smaller gradients than the model's own renders did: a few more steps.
    for step in range(1, 6):
        optimizer.zero_grad()
        module.training_step(batch, step).backward()
        optimizer.step()
    confidence = module(batch.images, batch.valid, batch.full).confidence
    assert (confidence - 0.5).abs().max() > 1e-4


def test_padding_changes_neither_the_aggregate_nor_the_loss(setup):
    cfg, rnet_module, datamodule = setup
    module = build_cnet_module(cfg, rnet_module, "s4").eval()
    torch.nn.init.normal_(module.cnet.out.weight, std=0.5)
    dataset = datamodule.dataset("val")
    full = collate_image_sets([dataset[0], dataset[1]])
    short = dict(dataset[1])
    for key in ("images", "landmarks", "skin", "yaw_deg", "occluded", "degradation"):
        short[key] = short[key][:2]
    padded = collate_image_sets([dataset[0], short])
    assert not padded.full and padded.valid.sum() == 5
    with torch.no_grad():
        padded_prediction = module(padded.images, padded.valid, padded.full)
        full_prediction = module(full.images, full.valid, full.full)
        torch.testing.assert_close(padded_prediction.aggregated[0], full_prediction.aggregated[0])
        garbage = padded.images.clone()
        garbage[~padded.valid] = torch.rand_like(garbage[~padded.valid])
        again = module(garbage, padded.valid, False)
        torch.testing.assert_close(again.aggregated, padded_prediction.aggregated)
        # Sum over each set, mean over sets: the padded batch's loss is the mean of its sets' own sums.
        losses = module.compute_losses(padded, padded_prediction)["total"]
        first = module.compute_losses(collate_image_sets([dataset[0]]), module(full.images[:1], full.valid[:1], True))[
            "total"
        ]
        second_batch = collate_image_sets([short])
        second = module.compute_losses(second_batch, module(second_batch.images, second_batch.valid, True))["total"]
        torch.testing.assert_close(losses, (first + second) / 2, rtol=1e-4, atol=1e-5)


def test_strategy_and_head_must_match(setup):
    cfg, rnet_module, _ = setup
    module = build_cnet_module(cfg, rnet_module, "s4")
    with pytest.raises(ValueError, match="kind='global'"):
        CNetModule(rnet_module.rnet, rnet_module.renderer, rnet_module.loss, module.cnet, strategy="s1")
    with pytest.raises(ValueError, match="unknown strategy"):
        CNetModule(rnet_module.rnet, rnet_module.renderer, rnet_module.loss, module.cnet, strategy="s9")
    mean = build_cnet_module(cfg, rnet_module, "mean")
    with pytest.raises(ValueError, match="nothing to train|no C-Net to train"):
        mean.configure_optimizers()


@pytest.mark.filterwarnings("ignore:.*(eval mode|transfer_batch_to_device|does not have many workers)")
def test_fast_dev_run_and_checkpoint_round_trip(setup, tmp_path):
    cfg, rnet_module, datamodule = setup
    module = build_cnet_module(cfg, rnet_module, "s4")
    trainer = pl.Trainer(
        fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(module, datamodule=datamodule)
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    for key in ("val/shape_error_mm", "val/shape_averaging_error_mm", "val/per_image_error_mm", "val/total"):
        assert key in metrics and metrics[key] == metrics[key], key
    path = tmp_path / "cnet.ckpt"
    trainer.save_checkpoint(path)
    stored = torch.load(path, weights_only=False)
    assert not any(k.startswith(("renderer.", "loss.")) for k in stored["state_dict"])
    assert stored["face3d_cnet"] == {"strategy": "s4", "kind": "elementwise"}
    loaded, loaded_cfg = load_cnet_checkpoint(path)
    assert loaded_cfg.face_model.n_id == 8 and loaded.strategy == "s4"
    batch = batch_of(datamodule)
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(batch.images, batch.valid, batch.full, render=False).aggregated,
            module(batch.images, batch.valid, batch.full, render=False).aggregated,
        )
    with pytest.raises(ValueError, match="not a C-Net checkpoint"):
        torch.save({"state_dict": {}, "face3d_config": "name: x\n"}, tmp_path / "rnet.ckpt")
        load_cnet_checkpoint(tmp_path / "rnet.ckpt")


class _InformativeRNet(torch.nn.Module):
    """Stands in for an R-Net whose identities carry information: R-Net's real features, but every picture's
    identity is the ground truth plus noise that is large on degraded pictures, and its other coefficients are
    the ground truth. ``truth`` is set before each call."""

    def __init__(self, rnet):
        super().__init__()
        self.rnet = rnet
        self.layout = rnet.layout
        self.truth = None

    def forward(self, images):
        out = self.rnet(images)
        return RNetOutput(coeffs=self.truth, flat=out.flat, features=out.features)


def _noisy_truth(dataset, batch, generator):
    layout = dataset.layout
    rows = [
        torch.from_numpy(
            dataset.arrays.coefficients[int(dataset.arrays.offsets[i]) : int(dataset.arrays.offsets[i + 1])]
        )
        for i in batch.index.tolist()
    ]
    coeffs = layout.split(torch.cat(rows))
    degraded = (batch.metadata.degradation.flatten() > 0).float()
    noise = torch.randn(coeffs.identity.shape, generator=generator) * (0.2 + 1.8 * degraded)[:, None]
    return coeffs.replace(identity=coeffs.identity + noise)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_cnet_learns_to_trust_the_clean_pictures_and_beats_averaging(setup):
    """The whole loop (features -> confidences -> aggregate -> re-render -> weak loss -> C-Net) on sets where
    noisy pictures give bad identities: the weak loss alone must teach C-Net to down-weight them."""
    cfg, rnet_module, _ = setup
    from datamodules.image_sets import ImageSetDataModule, ImageSetSettings, SyntheticImageSetDataset

    # The landmark noise the dataset had before the settings held every default.
    settings = ImageSetSettings(
        n_train=24, n_test=12, set_size=4, degrade_probability=0.5, degradations=("noise",), landmark_noise_px=2.0
    )
    face_model = rnet_module.face_model
    data = ImageSetDataModule(
        {split: SyntheticImageSetDataset(face_model, settings, split, image_size=64) for split in ("train", "test")},
        batch_size=4,
    )
    data.setup()
    module = build_cnet_module(cfg, rnet_module, "s4").train()
    bench = _InformativeRNet(module.rnet)
    module.rnet = bench
    optimizer = torch.optim.Adam(module.cnet.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for step, batch in enumerate(batch for _ in range(8) for batch in data.train_dataloader()):
        bench.truth = _noisy_truth(data.dataset("train"), batch, generator)
        module.training_step(batch, step).backward()
        optimizer.step()
        optimizer.zero_grad()
    module.eval()
    errors = {"mean": [], "s4": []}
    clean, noisy = [], []
    with torch.no_grad():
        for batch in data.test_dataloader():
            bench.truth = _noisy_truth(data.dataset("test"), batch, generator)
            prediction = module(batch.images, batch.valid, batch.full, render=False)
            truth = batch.ground_truth.vertices
            errors["s4"].append(vertex_error(module.neutral_shape(prediction.aggregated), truth))
            errors["mean"].append(
                vertex_error(module.neutral_shape(mean_aggregate(prediction.identity, batch.valid)), truth)
            )
            score = prediction.confidence.sum(-1)
            clean.append(score[batch.metadata.degradation == 0])
            noisy.append(score[batch.metadata.degradation > 0])
    s4, mean = torch.cat(errors["s4"]).mean(), torch.cat(errors["mean"]).mean()
    assert torch.cat(noisy).mean() < 0.8 * torch.cat(clean).mean()
    assert s4 < 0.9 * mean, f"S4 {s4:.3f} mm vs shape averaging {mean:.3f} mm"
