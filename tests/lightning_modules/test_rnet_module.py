"""RNetModule end to end on tiny synthetic data: fast_dev_run, resume, NaN guard, checkpoint reload."""

import pytest
import torch

from experiments.build import load_rnet_checkpoint
from experiments.config import load_config
from experiments.train import TrainResult, train
from lightning_modules.callbacks import FiniteLossGuard, NonFiniteLossError


def tiny_config(tmp_path, *extra):
    return load_config(["default", "smoke"], [f"logging.output_dir={tmp_path}", *extra])


def test_fast_dev_run_trains_validates_and_draws_overlays(tmp_path):
    result = train(tiny_config(tmp_path), fast_dev_run=True)
    assert result.overlay is not None and result.overlay.exists()


# ~4 s: a real training run; tests/networks/test_sface_backbone.py checks the freezing itself, fast.
@pytest.mark.slow
def test_the_default_pretrained_sface_backbone_trains_with_its_frozen_weights_fixed(tmp_path):
    cfg = load_config(
        ["default"],
        [
            "renderer.image_size=64",
            "face_model.n_id=8",
            "face_model.n_exp=8",
            "face_model.n_tex=6",
            "data.batch_size=4",
            "data.synthetic.n_train=8",
            "data.synthetic.n_val=4",
            "data.synthetic.n_test=4",
            "trainer.max_steps=2",
            "trainer.max_epochs=1",
            "logging.wandb=false",
            f"logging.output_dir={tmp_path}",
        ],
    )
    assert cfg.network.backbone == "sface" and cfg.network.frozen_layers > 0
    result = train(cfg)
    module, _ = load_rnet_checkpoint(result.last_checkpoint)
    from networks.sface_backbone import SFaceBackbone

    pretrained = SFaceBackbone.build("bundled")
    frozen, trained = cfg.network.frozen_layers - 1, cfg.network.frozen_layers
    torch.testing.assert_close(module.rnet.backbone.body[frozen].conv.weight, pretrained.body[frozen].conv.weight)
    torch.testing.assert_close(module.rnet.backbone.body[frozen].bn.weight, pretrained.body[frozen].bn.weight)
    assert not torch.equal(module.rnet.backbone.body[trained].conv.weight, pretrained.body[trained].conv.weight)


def test_the_summary_puts_the_shape_error_next_to_the_mean_face_baseline(tmp_path):
    metrics = {
        "test/shape_error_mm": 4.6,
        "test/mean_face_error_mm": 4.9,
        "test/better_than_mean_face": 0.72,
        "test/landmark_error_px": 3.05,
        "test/identity_r": 0.126,
    }
    text = TrainResult(tmp_path, None, None, None, None, metrics, test_samples=256).summary()
    assert "identity coefficients vs the truth: mean r 0.13 over the first ten modes" in text
    assert "4.60 mm after rigid alignment, 6.1% lower than the mean-face baseline (4.90 mm) on 256" in text
    assert "closer to the truth than the mean face on 72% of them" in text
    worse = TrainResult(tmp_path, None, None, None, None, {**metrics, "test/shape_error_mm": 5.0}).summary()
    assert "2.0% HIGHER than" in worse


# ~2 s: a real training run; tests/experiments/test_trainer.py checks the precision plumbing, fast.
@pytest.mark.slow
def test_bf16_mixed_channels_last_trains_and_measures_shape_error_in_float32(tmp_path):
    result = train(
        tiny_config(
            tmp_path,
            "trainer.precision=bf16-mixed",
            "trainer.channels_last=true",
            "trainer.max_steps=1",
            "trainer.max_epochs=1",
        )
    )
    error, baseline = result.test_metrics["test/shape_error_mm"], result.test_metrics["test/mean_face_error_mm"]
    assert 0.0 < baseline < 50.0 and 0.0 < error < 50.0
    # One step of a zero-initialised head moves the shape by far less than bf16's ~0.4% of a decimetre.
    assert abs(error - baseline) < 0.5


# ~7 s: two real training runs.
@pytest.mark.slow
def test_resume_continues_where_the_run_stopped_and_refuses_to_overwrite(tmp_path):
    first = train(tiny_config(tmp_path, "trainer.max_steps=2", "trainer.max_epochs=5"))
    first_clock = torch.load(first.last_checkpoint, weights_only=False)["face3d_training"]
    assert torch.load(first.last_checkpoint, weights_only=False)["global_step"] == 2
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(tmp_path, "trainer.max_steps=4", "trainer.max_epochs=5"))
    second = train(tiny_config(tmp_path, "trainer.max_steps=4", "trainer.max_epochs=5"), resume=True)
    assert torch.load(second.last_checkpoint, weights_only=False)["global_step"] == 4
    # The training clock (for model cards) adds wall time over launches and names the hardware once per machine.
    from lightning_modules.callbacks import TRAINING_RECORD_KEY

    clock = [first_clock, torch.load(second.last_checkpoint, weights_only=False)[TRAINING_RECORD_KEY]]
    assert clock[0]["step"] == 2 and clock[1]["step"] == 4 and 0 < clock[0]["wall_seconds"] < clock[1]["wall_seconds"]
    assert len(clock[1]["hardware"]) == 1 and "CPU" in clock[1]["hardware"][0]
    assert "test/shape_error_mm" in second.test_metrics and "test/mean_face_error_mm" in second.test_metrics
    assert -1 <= second.test_metrics["test/identity_r"] <= 1

    module, cfg = load_rnet_checkpoint(second.last_checkpoint)
    assert cfg.renderer.image_size == 64 and module.face_model.layout.n_id == 8
    images = torch.rand(2, 3, 64, 64)
    state = torch.load(second.last_checkpoint, weights_only=False)["state_dict"]
    head = state["rnet.final_layers.0.weight"]
    torch.testing.assert_close(module.rnet.final_layers[0].weight, head)
    assert module(images).render.image.shape == (2, 3, 64, 64)


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="make train-single"):
        load_rnet_checkpoint(tmp_path / "missing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        load_rnet_checkpoint(garbage)
    foreign = tmp_path / "epoch_20.pth"
    torch.save({"net_recon": {}}, foreign)
    with pytest.raises(ValueError, match="deep3d_checkpoint"):
        load_rnet_checkpoint(foreign)


class _Trainer:
    global_step = 10


def test_nan_guard_stops_on_a_non_finite_loss_and_refuses_a_poisoned_checkpoint():
    guard = FiniteLossGuard(check_every_n_steps=5)
    module = torch.nn.Linear(2, 2)
    guard.on_train_batch_end(_Trainer(), module, {"loss": torch.tensor(1.0)}, None, 0)
    with pytest.raises(NonFiniteLossError, match="last.ckpt"):
        guard.on_train_batch_end(_Trainer(), module, {"loss": torch.tensor(float("nan"))}, None, 0)
    guard.on_save_checkpoint(_Trainer(), module, {})
    with torch.no_grad():
        module.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteLossError, match="not written"):
        guard.on_save_checkpoint(_Trainer(), module, {})


# ~2.5 s: a real training run; the guard's own checks are tested above without one.
@pytest.mark.slow
def test_a_nan_during_training_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from lightning_modules.rnet_module import RNetModule

    original = RNetModule.compute_losses
    calls = {"n": 0}

    def poisoned(self, batch, prediction):
        losses = original(self, batch, prediction)
        calls["n"] += 1
        if calls["n"] >= 3:
            losses = {**losses, "total": losses["total"] * float("nan")}
        return losses

    monkeypatch.setattr(RNetModule, "compute_losses", poisoned)
    cfg = tiny_config(tmp_path, "trainer.max_steps=6", "trainer.max_epochs=5", "trainer.val_check_interval=null")
    with pytest.raises(NonFiniteLossError):
        train(cfg)
    last = tmp_path / "train-single" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=False)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.gpu
def test_training_step_has_no_host_sync_on_cuda(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from experiments.build import build_datamodule, build_face_model, build_rnet_module

    cfg = tiny_config(tmp_path, "renderer.backend=torch")
    face_model = build_face_model(cfg)
    module = build_rnet_module(cfg, face_model).cuda()
    dm = build_datamodule(cfg, face_model)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader())).to("cuda")
    module.training_step(batch, 0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        module.training_step(batch, 1).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_identity_lr_scale_gives_the_identity_head_its_own_learning_rate(tmp_path, scale):
    from experiments.build import build_rnet_module

    cfg = tiny_config(tmp_path, f"optim.identity_lr_scale={scale}", "optim.lr=2e-4")
    module = build_rnet_module(cfg)
    optimizer = module.configure_optimizers()["optimizer"]
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    trainable = [p for p in module.rnet.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    identity = module.rnet.head("identity")
    assert identity.out_channels == module.rnet.layout.n_id
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert lr_of[id(identity.weight)] == pytest.approx(2e-4 * scale)
    assert lr_of[id(module.rnet.head("expression").weight)] == pytest.approx(2e-4)
    assert len(optimizer.param_groups) == (1 if scale == 1.0 else 2)


@pytest.mark.parametrize("by_steps", [False, True])
def test_the_learning_rate_decays_by_steps_or_by_epochs(tmp_path, by_steps):
    from experiments.build import build_rnet_module

    extra = ["optim.lr_step_steps=3"] if by_steps else ["optim.lr_step_steps=null", "optim.lr_step_epochs=2"]
    module = build_rnet_module(tiny_config(tmp_path, "optim.lr=1e-3", "optim.lr_gamma=0.5", *extra))
    config = module.configure_optimizers()
    scheduler = config["lr_scheduler"]
    assert scheduler["interval"] == ("step" if by_steps else "epoch")
    lrs = []
    for _ in range(4):
        lrs.append(config["optimizer"].param_groups[0]["lr"])
        config["optimizer"].step()
        scheduler["scheduler"].step()
    expected = [1e-3, 1e-3, 1e-3, 5e-4] if by_steps else [1e-3, 1e-3, 5e-4, 5e-4]
    assert lrs == pytest.approx(expected)


# ~2.5 s: a real training run; tests/networks/test_rnet.py checks the landmark heads, fast.
@pytest.mark.slow
def test_a_landmark_input_rnet_trains_and_reloads(tmp_path):
    result = train(
        tiny_config(tmp_path, "network.landmark_input=true", "network.landmark_hidden=8", "trainer.max_steps=1")
    )
    module, cfg = load_rnet_checkpoint(result.last_checkpoint)
    assert cfg.network.landmark_input and module.rnet.landmark_net is not None
    prediction = module(torch.rand(2, 3, 64, 64), torch.rand(2, 68, 2) * 64)
    assert prediction.render.image.shape == (2, 3, 64, 64)
