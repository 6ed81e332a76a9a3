"""``face3d benchmark`` at tiny sizes: the 20-pose grid, the report files and rows, the mean-face row against an
independent NumPy computation, determinism, the C-Net row, licensed-dataset notes and one dataset protocol on a
fixture, speed rows, and the CLI's checkpoint errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.licensed import DatasetSettings, evaluate_datasets
from benchmarks.pose_grid import BENCHMARK_SEED_BASE, PITCHES_DEG, YAWS_DEG, PoseGridDataset, fit_subset, pose_grid
from benchmarks.pose_grid_eval import per_yaw_share_table, per_yaw_table
from benchmarks.suite import BenchmarkSettings, ModelLoaders, _load_cnet, run_benchmark
from experiments import cli
from experiments.build import build_cnet_module, load_cnet_checkpoint, load_rnet_checkpoint
from experiments.config import load_config, to_yaml

TINY_MODEL = ["renderer.image_size=32", "cnet.conv_channels=[8,8,8]", "cnet.hidden=16"]
"""On top of the configs default + smoke."""
LOADERS = ModelLoaders(load_rnet_checkpoint, load_cnet_checkpoint, build_cnet_module)
NO_DATASETS = DatasetSettings(paths_file=None, environ={})


pytestmark = pytest.mark.usefixtures("reuse_face_models")


def _random_heads(module, seed: int) -> None:
    """Random final layers, so that pictures get different identities, as from a trained R-Net."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.rnet.final_layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.02)


def _save_rnet(path: Path, seed: int = 0) -> Path:
    """An R-Net checkpoint as `face3d train` writes it (state dict and config)."""
    from experiments.build import build_rnet_module

    cfg = load_config(["default", "smoke"], TINY_MODEL)
    module = build_rnet_module(cfg)
    _random_heads(module, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "face3d_config": to_yaml(cfg)}, path)
    return path


def _save_cnet(path: Path, rnet_checkpoint: Path) -> Path:
    """A C-Net checkpoint as `face3d train-aggregate` writes it (`CNetModule.on_save_checkpoint`), untrained."""
    rnet_module, cfg = load_rnet_checkpoint(rnet_checkpoint)
    module = build_cnet_module(cfg, rnet_module, "s4")
    state = {k: v for k, v in module.state_dict().items() if not k.startswith(("renderer.", "loss."))}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"state_dict": state, "face3d_config": to_yaml(cfg), "face3d_cnet": {"strategy": "s4", "kind": "elementwise"}},
        path,
    )
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    rnet = _save_rnet(folder / "rnet.ckpt")
    return rnet, _save_cnet(folder / "cnet.ckpt", rnet)


def _settings(checkpoints, out_dir: Path, **changes) -> BenchmarkSettings:
    rnet, cnet = checkpoints
    options = dict(
        checkpoint=rnet,
        cnet_checkpoint=cnet,
        out_dir=out_dir,
        identities=2,
        seed=3,
        fit_images=2,
        fit_iterations=1,
        fit_rigid_iterations=2,
        fit_shape_iterations=2,
        fit_crop_size=32,
        speed=False,
        wandb=False,
        datasets=NO_DATASETS,
        device="cpu",
    )
    options.update(changes)
    return BenchmarkSettings(**options)


@pytest.fixture(scope="module")
def run(checkpoints, tmp_path_factory):
    return run_benchmark(_settings(checkpoints, tmp_path_factory.mktemp("report")), LOADERS, log=lambda line: None)


def read_metrics(result) -> dict:
    return json.loads(result.files["metrics"].read_text())


# ------------------------------------------------------------------------------------------ protocol


def test_the_grid_is_4_pitches_by_5_yaws_pitch_major():
    pitch, yaw = pose_grid()
    assert YAWS_DEG == (-80.0, -40.0, 0.0, 40.0, 80.0) and len(PITCHES_DEG) == 4
    assert len(pitch) == len(yaw) == 20
    np.testing.assert_array_equal(yaw, np.tile(YAWS_DEG, 4))
    np.testing.assert_array_equal(pitch, np.repeat(PITCHES_DEG, 5))
    # Five fits are the first identity's five yaws at the pitch nearest frontal; more go to the next identity.
    assert fit_subset(3, 5) == [(0, 5 + k) for k in range(5)]
    assert fit_subset(3, 7)[5:] == [(1, 5), (1, 6)]
    assert fit_subset(1, 100)[-1] == (0, 19) and len(fit_subset(1, 100)) == 20


def test_pose_grid_pictures_share_the_identity_and_differ_in_everything_else(ict_small):
    dataset = PoseGridDataset(ict_small, 1, seed=0, image_size=16)
    assert dataset.split == "test" and dataset.seed == BENCHMARK_SEED_BASE
    sample = dataset[0]
    assert sample["images"].shape == (20, 3, 16, 16)
    coeffs = dataset.layout.split(torch.from_numpy(dataset.arrays.coefficients))
    np.testing.assert_allclose(
        torch.rad2deg(coeffs.angles).numpy(), np.column_stack([*pose_grid(), np.zeros(20)]), atol=1e-4
    )
    np.testing.assert_allclose(sample["yaw_deg"].numpy(), np.tile(YAWS_DEG, 4), atol=1e-4)
    assert torch.equal(coeffs.identity, coeffs.identity[:1].expand(20, -1))
    for name in ("expression", "albedo", "lighting"):
        values = getattr(coeffs, name)
        assert not torch.allclose(values[0], values[1]), f"{name} should be drawn per picture"
    assert not dataset.arrays.degradation.any(), "the protocol has no occluders or degradations"


# -------------------------------------------------------------------------------------------- report


def test_report_metrics_and_plot_are_written(run):
    out = Path(run.settings.out_dir)
    for name in ("report.md", "metrics.json", "error_vs_yaw.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "](error_vs_yaw.png)" in report, "plots are linked by relative path"
    assert str(run.settings.checkpoint) in report and "seed: 3" in report and "device:" in report
    assert "neutral identity shape" in report.lower() and "rigid" in report
    metrics = read_metrics(run)
    assert metrics["seed"] == 3 and metrics["checkpoint"]["config"]["image_size"] == 32
    pictures = metrics["accuracy"]["pose_grid"]["pictures"]
    assert pictures["identity"] == [0] * 20 + [1] * 20
    gap = metrics["accuracy"]["appearance_gap"]
    assert (
        gap["protocol"]["look"] == "appearance_gap"
        and metrics["accuracy"]["pose_grid"]["protocol"]["look"] == "matched"
    )
    assert [row["key"] for row in gap["rows"]] == [row.key for row in run.pose_grid.rows]
    assert "## Appearance-gap protocol" in report and "side by side" in report
    # Same identities, other pictures: the mean face scores the same, the methods do not.
    assert gap["identities"]["mean_face"] == metrics["accuracy"]["pose_grid"]["identities"]["mean_face"]
    assert gap["pictures"]["rnet"] != pictures["rnet"]
    assert pictures["yaw_deg"] == list(np.tile(YAWS_DEG, 8)) and pictures["pitch_deg"] == list(
        np.tile(np.repeat(PITCHES_DEG, 5), 2)
    )


def test_the_table_has_every_method(run):
    rows = {row.key: row for row in run.pose_grid.rows}
    assert list(rows) == ["mean_face", "rnet", "averaging", "s4", "rnet_fit_subset", "fit", "fit_averaging", "fit_set"]
    assert rows["rnet"].stats.count == 40 and rows["mean_face"].stats.count == 40
    assert rows["averaging"].stats.count == 2 and rows["s4"].stats.count == 2
    assert rows["fit"].stats.count == 2 and rows["rnet_fit_subset"].stats.count == 2
    # Both fitted pictures are identity 0's: one shared-identity fit and one average of two fits.
    assert rows["fit_set"].stats.count == 1 and rows["fit_averaging"].stats.count == 1
    # Shares of gain are measured against the mean face on the same pictures (ceiling 0 mm here).
    mean_face = run.pose_grid.picture_errors["mean_face"]
    fit = run.pose_grid.picture_errors["fit"]
    fitted = ~np.isnan(fit)
    expected = (mean_face[fitted].mean() - fit[fitted].mean()) / mean_face[fitted].mean()
    assert rows["fit"].share_of_gain == pytest.approx(expected)
    assert rows["mean_face"].share_of_gain == pytest.approx(0.0)
    assert rows["fit"].standard_error == pytest.approx(rows["fit"].stats.std / np.sqrt(2))
    columns, per_yaw = per_yaw_table(run.pose_grid)
    assert columns == ["method", "-80°", "-40°", "0°", "+40°", "+80°", "all", "share of gain (%)"]
    # The two fitted pictures are identity 0's at yaw -80 and -40: the other yaws have no fitting value.
    fit_line = next(line for line in per_yaw if line[0].startswith("fitting"))
    assert all(v is not None for v in fit_line[1:3]) and fit_line[3:6] == [None] * 3
    share_columns, shares = per_yaw_share_table(run.pose_grid)
    assert share_columns == ["method", "-80°", "-40°", "0°", "+40°", "+80°"]
    fit_share = next(line for line in shares if line[0].startswith("fitting"))
    at = run.pose_grid.yaw_deg == -80.0
    expected = 100 * (mean_face[at & fitted].mean() - fit[at & fitted].mean()) / mean_face[at & fitted].mean()
    assert fit_share[1] == pytest.approx(round(expected, 1)) and fit_share[3:] == [None] * 3
    summary = run.summary()
    for row in run.pose_grid.rows:
        assert row.name in summary
    assert "report:" in summary and str(run.files["report"]) in summary


def _kabsch_error_mm(source: np.ndarray, target: np.ndarray) -> float:
    """Mean vertex distance after the best rotation and translation (Kabsch, no reflection), x100 for dm -> mm."""
    s, t = source - source.mean(0), target - target.mean(0)
    u, _, vt = np.linalg.svd(t.T @ s)
    d = np.sign(np.linalg.det(u @ vt))
    rotation = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.linalg.norm(s @ rotation.T - t, axis=1).mean() * 100.0)


def test_the_mean_face_row_matches_an_independent_numpy_computation(run):
    from experiments.build import load_rnet_checkpoint

    module, _ = load_rnet_checkpoint(run.settings.checkpoint)
    model = module.face_model
    mean = model.mean_shape.double().numpy()
    basis = model.id_basis.double().numpy().reshape(model.layout.n_id, -1)
    dataset = PoseGridDataset(model, run.settings.identities, seed=run.settings.seed, image_size=32)
    errors = []
    for i in range(run.settings.identities):
        identity = dataset.set_plan(i)["identity"].astype(np.float32).astype(np.float64)
        truth = mean + (identity @ basis).reshape(-1, 3)
        errors.append(_kabsch_error_mm(mean, truth))
    row = next(r for r in run.pose_grid.rows if r.key == "mean_face")
    assert row.stats.mean == pytest.approx(np.mean(errors), rel=1e-4)
    assert row.stats.std == pytest.approx(np.std(errors), rel=1e-3, abs=1e-6)
    assert row.stats.median == pytest.approx(np.median(errors), rel=1e-4)


# ~2.5 s: a second benchmark run.
@pytest.mark.slow
def test_two_runs_with_the_same_seed_give_identical_accuracy(run, checkpoints, tmp_path):
    again = run_benchmark(_settings(checkpoints, tmp_path / "again"), LOADERS, log=lambda line: None)
    assert read_metrics(again)["accuracy"] == read_metrics(run)["accuracy"]


def test_missing_datasets_get_one_line_skip_notes(run):
    notes = {d.name: d.note for d in run.datasets}
    assert set(notes) == {"micc", "facewarehouse", "bu3dfe", "now"}
    assert all(d.skipped and not d.rows for d in run.datasets)
    for name, variable in (
        ("micc", "FACE3D_DATA_MICC"),
        ("bu3dfe", "FACE3D_DATA_BU3DFE"),
        ("facewarehouse", "FACE3D_DATA_FACEWAREHOUSE"),
        ("now", "FACE3D_DATA_NOW"),
    ):
        assert variable in notes[name] and "\n" not in notes[name]
    report = run.files["report"].read_text()
    assert "FACE3D_DATA_MICC" in report and "Evaluation datasets" in report


def test_a_cnet_of_another_rnet_is_skipped_with_a_note(checkpoints, tmp_path):
    other = _save_rnet(tmp_path / "other.ckpt", seed=1)
    module, _ = load_rnet_checkpoint(other)
    cnet, note, _ = _load_cnet(checkpoints[1], module, other, load_cnet_checkpoint)
    assert cnet is None and "another R-Net" in note and str(other) in note


# ------------------------------------------------------------------------------------------- datasets


class _MeanFacePredictor:
    """Predicts the mean face for every picture (stands in for detection + R-Net)."""

    def __init__(self, face_model) -> None:
        self.face_model = face_model

    def predict(self, sources):
        return self.face_model.layout.zeros(len(sources)), []


def _write_wrl(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    points = ",\n".join(f"{x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices)
    index = ", ".join(f"{a}, {b}, {c}, -1" for a, b, c in faces)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"#VRML V2.0 utf8\nShape {{ geometry IndexedFaceSet {{\n coord Coordinate {{ point [\n{points}\n] }}\n"
        f" coordIndex [ {index} ]\n}} }}\n"
    )


def test_bu3dfe_protocol_on_a_fixture_scores_an_exact_prediction_near_zero(ict_small, tmp_path):
    # A BU-3DFE folder whose neutral scan is the mean face in mm: predicting the mean face must score ~0 mm.
    root = tmp_path / "BU3DFE"
    _write_wrl(
        root / "F0001" / "F0001_NE00WH_F3D.wrl",
        ict_small.mean_shape.double().numpy() * 100.0,
        ict_small.triangles.numpy(),
    )
    (root / "F0001" / "F0001_NE00WH_F2D.bmp").write_bytes(b"\x00")
    settings = DatasetSettings(names=("bu3dfe", "micc"), paths_file=None, environ={"FACE3D_DATA_BU3DFE": str(root)})
    bu3dfe, micc = evaluate_datasets(settings, lambda: _MeanFacePredictor(ict_small), log=lambda line: None)
    assert not bu3dfe.skipped and not bu3dfe.failed and str(root) in bu3dfe.note
    (row,) = bu3dfe.rows
    assert row.level == "subject" and row.stats.count == 1 and row.stats.mean < 0.01
    assert micc.skipped and "FACE3D_DATA_MICC" in micc.note


def test_unknown_dataset_names_are_refused():
    with pytest.raises(ValueError, match="unknown datasets"):
        evaluate_datasets(DatasetSettings(names=("lfw",)), lambda: None)


# ---------------------------------------------------------------------------------------------- speed


def test_speed_rows_name_the_device_and_report_positive_rates(checkpoints):
    from benchmarks.speed import device_name, measure_speed
    from experiments.build import load_rnet_checkpoint

    module, _ = load_rnet_checkpoint(checkpoints[0])
    rows = measure_speed(
        module.rnet,
        module.face_model,
        32,
        "cpu",
        preprocessing=False,
        batches=(1, 2),
        render_batch=2,
        repeats=1,
        fit_seconds=0.5,
        onnx=False,
        video=False,
    )
    assert [r.task.split(" ")[0] for r in rows] == ["R-Net", "R-Net", "rendering,", "rendering,", "fitting"]
    assert all(r.value is not None and r.value > 0 for r in rows)
    assert "CPU" in device_name("cpu")


# ------------------------------------------------------------------------------------------------ CLI


def test_without_a_checkpoint_the_command_says_to_train_one(checkpoints, tmp_path, capsys, monkeypatch):
    import networks.bundled_weights

    assert "benchmark" in cli.COMMANDS
    # No bundled R-Net either (a checkout that ships one would score it instead).
    monkeypatch.setattr(networks.bundled_weights, "BUNDLED_DIR", tmp_path / "no-weights")
    code = cli.main(["benchmark", "--outputs-dir", str(tmp_path / "outputs"), "--no-wandb"])
    err = capsys.readouterr().err
    assert code == 2 and "make train-single" in err and "--ckpt" in err and len(err.strip().splitlines()) == 1
    code = cli.main(["benchmark", "--ckpt", str(tmp_path / "missing.ckpt"), "--no-wandb"])
    err = capsys.readouterr().err
    assert code == 2 and "missing.ckpt" in err and "not found" in err
    code = cli.main(["benchmark", "--ckpt", str(checkpoints[0]), "--cnet-ckpt", str(tmp_path / "no-cnet.ckpt")])
    err = capsys.readouterr().err
    assert code == 2 and "no-cnet.ckpt" in err and "train-aggregate" in err


def test_the_command_uses_the_latest_train_single_checkpoint(checkpoints, tmp_path, monkeypatch, capsys):
    outputs = tmp_path / "outputs"
    checkpoint = outputs / "train-single" / "checkpoints" / "best-000-1.ckpt"
    checkpoint.parent.mkdir(parents=True)
    shutil.copy(checkpoints[0], checkpoint)
    for name in ("MICC", "FACEWAREHOUSE", "BU3DFE", "NOW"):
        # An environment variable wins over any paths.yaml on this machine: every dataset is skipped.
        monkeypatch.setenv(f"FACE3D_DATA_{name}", str(tmp_path / "absent"))
    out = tmp_path / "report"
    code = cli.main(
        [
            "benchmark",
            "--outputs-dir",
            str(outputs),
            "--identities",
            "1",
            "--no-fit",
            "--no-speed",
            "--no-wandb",
            "--no-real-photo",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "R-Net, single image" in stdout and f"report: {out / 'report.md'}" in stdout
    assert "C-Net S4 row skipped" in stdout and "make train-aggregate" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoint"]["path"] == str(checkpoint)
    assert [row["key"] for row in metrics["accuracy"]["pose_grid"]["rows"]] == ["mean_face", "rnet", "averaging"]


# ~3.5 s: a benchmark run and a W&B offline run.
@pytest.mark.slow
def test_wandb_offline_run_holds_the_tables_and_plot(checkpoints, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    result = run_benchmark(
        _settings(checkpoints, tmp_path / "wb", identities=1, fit_images=0, appearance_gap=False, wandb=True),
        LOADERS,
        log=lambda line: None,
    )
    run_dir = result.files["wandb"]
    assert run_dir.is_dir() and run_dir.name.startswith("offline-run-")
    assert any(run_dir.rglob("*.wandb"))
