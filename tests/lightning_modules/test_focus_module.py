"""FOCUS end to end on tiny data, and the balance of its segmentation terms (no all-face / all-outlier masks)."""

from __future__ import annotations

import pytest
import torch

from experiments.config import load_config
from experiments.train_focus import load_focus_checkpoint, save_if_finite, train_focus
from lightning_modules.callbacks import NonFiniteLossError
from lightning_modules.focus_module import FOCUS_STAGES, FocusSettings
from losses.focus import FocusLossWeights, robust_photometric_loss, segmentation_losses


def tiny_focus_config(tmp_path, *extra):
    return load_config(
        ["default", "smoke"],
        [
            "focus.enabled=true",
            f"logging.output_dir={tmp_path}",
            "data.synthetic.n_test=4",
            "focus.settings.pretrain_encoder_steps=2",
            "focus.settings.pretrain_unet_steps=2",
            "focus.settings.em_unet_steps=1",
            "focus.settings.em_encoder_steps=1",
            "focus.settings.em_rounds=1",
            "focus.settings.misfit_batches=1",
            "focus.settings.feature_layers=1",
            "focus.settings.feature_size=16",
            "focus.unet.base_channels=4",
            *extra,
        ],
    )


def test_segmentation_terms_start_from_noisy_pseudo_masks_without_collapsing():
    """FOCUS's EM starts the mask from the robust loss's pseudo-masks. Optimise a free mask (one logit per pixel)
    from pseudo-masks with a fifth of the pixels flipped under the published weights: it must collapse neither to
    all-face (the area term alone would do that) nor to all-outlier (the neighbour term alone), and the occluder
    must stay outlier."""
    torch.manual_seed(0)
    size = 24
    rendered = torch.rand(2, 3, 1, 1) * 0.5 + 0.3 + 0.05 * torch.rand(2, 3, size, size)
    images = rendered + 0.01 * torch.randn(2, 3, size, size)
    occluder = torch.zeros(2, 1, size, size, dtype=torch.bool)
    occluder[:, :, 4:14, 6:18] = True
    images = torch.where(occluder, torch.rand(2, 3, 1, 1) * 0.2, images)
    region = torch.ones(2, 1, size, size)
    _, pseudo = robust_photometric_loss(images, rendered, region)
    assert torch.equal(pseudo.bool(), ~occluder)
    start = torch.where(torch.rand(pseudo.shape) < 0.2, 1 - pseudo, pseudo)
    features = torch.nn.Conv2d(3, 4, 3, padding=1)
    features.requires_grad_(False)
    logits = (4 * start - 2).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(40):
        loss = segmentation_losses(images, rendered, region, torch.sigmoid(logits), FocusLossWeights(), features)
        opt.zero_grad()
        loss["total"].backward()
        opt.step()
    mask = torch.sigmoid(logits) > 0.5
    assert mask[~occluder].float().mean() > 0.75
    assert mask[occluder].float().mean() < 0.15


def test_schedule_and_settings():
    s = FocusSettings(pretrain_encoder_steps=3, pretrain_unet_steps=0, em_rounds=2, em_unet_steps=1, em_encoder_steps=2)
    assert s.schedule() == [
        ("pretrain_encoder", 3),
        ("em_unet", 1),
        ("em_encoder", 2),
        ("em_unet", 1),
        ("em_encoder", 2),
    ]
    with pytest.raises(ValueError, match=">= 0"):
        FocusSettings(em_rounds=-1)


@pytest.mark.slow
def test_whole_schedule_runs_saves_finite_checkpoints_and_reloads(tmp_path):
    result = train_focus(tiny_focus_config(tmp_path))
    names = sorted(p.name for p in (result.run_dir / "checkpoints").glob("*.ckpt"))
    assert names == [
        "00-pretrain_encoder.ckpt",
        "01-pretrain_unet.ckpt",
        "02-em_unet.ckpt",
        "03-em_encoder.ckpt",
        "last.ckpt",
    ]
    module, cfg = load_focus_checkpoint(result.last_checkpoint)
    assert module.stage == "em_encoder" and cfg.focus.enabled
    assert bool(module.misfit_estimated) and torch.isfinite(module.misfit).all() and module.misfit.max() > 0
    assert all(torch.isfinite(p).all() for p in module.state_dict().values() if p.is_floating_point())
    masks = result.evaluation.masks
    assert {"FOCUS", "skin attention", "no mask", "robust loss, 3σ"} <= set(masks) and 0 < masks["FOCUS"]["f1"] <= 1
    assert (result.run_dir / "masks.png").exists() and (result.run_dir / "evaluation.md").exists()
    # Resuming skips every finished stage.
    again = train_focus(tiny_focus_config(tmp_path), resume=True, evaluate=False)
    assert again.stage_seconds == {}


def test_stage_switch_freezes_the_other_network_and_keeps_frozen_encoder_layers(tmp_path):
    from experiments.train_focus import build_focus_module
    from lightning_modules.focus_module import FocusModule

    built = build_focus_module(tiny_focus_config(tmp_path, "focus.settings.feature_layers=0"))
    next(built.encoder.parameters()).requires_grad_(False)  # as the SFace trunk's frozen layers are
    module = FocusModule(built.encoder, built.renderer, built.hybrid, built.unet)
    frozen = {n for n, p in module.encoder.named_parameters() if not p.requires_grad}
    for stage in FOCUS_STAGES:
        module.set_stage(stage)
        encoder = {n for n, p in module.encoder.named_parameters() if p.requires_grad}
        unet = any(p.requires_grad for p in module.unet.parameters())
        assert (bool(encoder), unet) == ((True, False) if "encoder" in stage else (False, True))
        assert not encoder & frozen
    with pytest.raises(ValueError, match="unknown FOCUS stage"):
        module.set_stage("finetune")


def test_no_nan_reaches_a_checkpoint(tmp_path):
    from experiments.train_focus import build_focus_module

    module = build_focus_module(tiny_focus_config(tmp_path, "focus.settings.feature_layers=0"))
    with torch.no_grad():
        next(module.unet.parameters()).view(-1)[0] = float("nan")
    path = tmp_path / "bad.ckpt"
    with pytest.raises(NonFiniteLossError, match="unet"):
        save_if_finite(None, module, path)
    assert not path.exists()
