"""Exported R-Net weights: `face3d export-weights`, loading them (`--ckpt`, bundled default), fine-tuning from them
(`network.init`), and the refusals for damaged files and for weights of another face model or crop size."""

from __future__ import annotations

import json

import pytest
import torch

import networks.bundled_weights as bw
from experiments import cli
from experiments.build import (
    BUNDLED,
    build_face_model,
    build_rnet,
    build_rnet_module,
    load_rnet_checkpoint,
    read_rnet_source,
)
from experiments.config import load_config, to_yaml

pytestmark = pytest.mark.usefixtures("reuse_face_models")

TINY = ["data.batch_size=2", "data.synthetic.n_train=2", "data.synthetic.n_val=2", "data.synthetic.n_test=2"]
"""On top of the configs default + smoke."""


def tiny_cfg(*extra):
    return load_config(["default", "smoke"], [*TINY, *extra])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny R-Net saved the way `face3d train` saves it, with non-zero heads (so that loading shows)."""
    cfg = tiny_cfg()
    module = build_rnet_module(cfg)
    with torch.no_grad():
        for layer in module.rnet.final_layers:
            layer.weight.normal_(std=1e-3)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "face3d_config": to_yaml(cfg),
            "global_step": 3,
            "epoch": 1,
            "face3d_training": {"wall_seconds": 90.0, "step": 3, "hardware": ["CPU test"]},
        },
        path,
    )
    return path, module


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("weights")
    main(
        [
            "export-weights",
            "--ckpt",
            str(tiny_checkpoint[0]),
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path_factory.mktemp("cache")),
        ]
    )
    return out


@pytest.fixture
def bundled_here(exported, monkeypatch):
    """The exported folder plays the bundled R-Net."""
    monkeypatch.setattr(bw, "BUNDLED_DIR", exported.resolve())
    return exported


def main(argv):
    code = cli.main(argv)
    assert code == 0, argv
    return code


def test_export_writes_weights_card_and_metrics_next_to_the_mean_face(exported, tiny_checkpoint):
    card = json.loads((exported / "rnet.json").read_text())
    assert card["sha256"] == bw.sha256_file(exported / "rnet.pt") and card["dtype"] == "float16"
    assert card["training"]["steps"] == 3 and card["training"]["wall_time_minutes"] == 1.5
    assert card["training"]["hardware"] == ["CPU test"] and card["training"]["data"]["kind"] == "synthetic"
    assert card["model"]["crop_size"] == 64 and card["model"]["n_id"] == 8
    metrics = card["metrics"]
    assert metrics["test_faces"] == 2 and 0 < metrics["test_mean_face_error_mm"] < 50
    assert len(metrics["identity_r_first_8_modes"]) == 8
    licences = " ".join(f"{item['part']} {item['licence']}" for item in card["licences"])
    assert "ICT-FaceKit" in licences and "MIT" in licences
    assert "SFace" not in licences  # a ResNet-18 from scratch: no SFace weights in it
    assert "Limitations" in (exported / "MODEL_CARD.md").read_text()


def test_exported_weights_load_like_the_checkpoint(exported, tiny_checkpoint):
    _, trained = tiny_checkpoint
    module, cfg = load_rnet_checkpoint(exported)
    assert cfg.renderer.image_size == 64
    for name, value in trained.rnet.state_dict().items():
        torch.testing.assert_close(module.rnet.state_dict()[name], value.half().to(value.dtype), rtol=0, atol=0)


def test_network_init_fine_tunes_from_the_bundled_and_from_a_checkpoint(bundled_here, tiny_checkpoint):
    path, trained = tiny_checkpoint
    from_bundled = build_rnet(tiny_cfg(f"network.init={BUNDLED}"), trained.face_model)
    from_checkpoint = build_rnet(tiny_cfg(f"network.init={path}"), trained.face_model)
    for name, value in trained.rnet.state_dict().items():
        torch.testing.assert_close(from_checkpoint.state_dict()[name], value, rtol=0, atol=0)
        torch.testing.assert_close(from_bundled.state_dict()[name], value.half().to(value.dtype), rtol=0, atol=0)


@pytest.mark.parametrize(
    "override, key",
    [
        ("renderer.image_size=96", "renderer.image_size"),
        ("face_model.n_id=10", "face_model.n_id"),
        ("network.landmark_input=true", "network.landmark_input"),
    ],
)
def test_network_init_refuses_another_face_model_crop_size_or_network(bundled_here, tiny_checkpoint, override, key):
    path, trained = tiny_checkpoint
    for source in (BUNDLED, str(path)):
        cfg = tiny_cfg(f"network.init={source}", override)
        with pytest.raises(
            ValueError,
            match=rf"trained for another face model, crop size or network \({key}=.*"
            rf"set {key}=",
        ):
            build_rnet(cfg, trained.face_model)


def test_a_checkpoint_whose_weights_do_not_fit_is_refused(tiny_checkpoint, tmp_path):
    path, trained = tiny_checkpoint
    stored = torch.load(path, weights_only=False)
    stored["face3d_config"] = to_yaml(tiny_cfg("face_model.n_id=10"))
    wrong = tmp_path / "wrong.ckpt"
    torch.save(stored, wrong)
    with pytest.raises(ValueError, match="does not match the model its config describes"):
        load_rnet_checkpoint(wrong)
    cfg = tiny_cfg(f"network.init={wrong}", "face_model.n_id=10")
    with pytest.raises(ValueError, match="does not fit this R-Net"):
        build_rnet(cfg, build_face_model(cfg))
    cnet = tmp_path / "cnet.ckpt"
    torch.save({**stored, "face3d_cnet": {"strategy": "s4"}}, cnet)
    for load in (load_rnet_checkpoint, read_rnet_source):
        with pytest.raises(ValueError, match="is a C-Net checkpoint"):
            load(cnet)


def test_weights_without_their_card_or_damaged_are_refused(exported, tmp_path, monkeypatch):
    lone = tmp_path / "lone.pt"
    lone.write_bytes((exported / "rnet.pt").read_bytes())
    with pytest.raises(ValueError, match="without their model card"):
        load_rnet_checkpoint(lone)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("rnet.pt", "rnet.json"):
        (copy / name).write_bytes((exported / name).read_bytes())
    with open(copy / "rnet.pt", "r+b") as f:
        f.seek(100)
        f.write(b"tampered")
    monkeypatch.setattr(bw, "BUNDLED_DIR", copy.resolve())
    with pytest.raises(ValueError, match=r"rnet.pt fails its SHA-256 check.*git checkout -- "):
        load_rnet_checkpoint(BUNDLED)
    cfg = tiny_cfg(f"network.init={BUNDLED}")
    with pytest.raises(ValueError, match="fails its SHA-256 check"):
        build_rnet(cfg, build_face_model(cfg))


def test_export_refuses_what_is_not_a_training_checkpoint(exported, tmp_path, capsys):
    assert cli.main(["export-weights", "--ckpt", str(exported), "--out", str(tmp_path / "again")]) == 2
    assert "already exported weights" in capsys.readouterr().err
    assert cli.main(["export-weights", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")]) == 2
    assert "missing.ckpt not found" in capsys.readouterr().err


def test_benchmark_scores_the_bundled_rnet_when_there_is_no_train_single_checkpoint(
    bundled_here, tmp_path, monkeypatch, capsys
):
    for name in ("MICC", "FACEWAREHOUSE", "BU3DFE", "NOW"):
        monkeypatch.setenv(f"FACE3D_DATA_{name}", str(tmp_path / "absent"))
    out = tmp_path / "report"
    main(
        [
            "benchmark",
            "--outputs-dir",
            str(tmp_path / "outputs"),
            "--identities",
            "1",
            "--no-fit",
            "--no-speed",
            "--no-wandb",
            # What is checked is which R-Net is scored; the real-photo and appearance-gap protocols have their own
            # tests and would take most of this one's time.
            "--no-real-photo",
            "--no-appearance-gap",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert "the bundled R-Net" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoint"]["path"] == str(bundled_here.resolve() / "rnet.pt")
    assert metrics["checkpoint"]["global_step"] == 3
