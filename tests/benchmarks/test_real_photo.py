"""The real-photo protocol: scan renders (texture x light over the background), the picture grid, and one small
end-to-end run with predictors whose scores are known (the mean face, the ceiling's identity)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from benchmarks.ceiling import CeilingSettings, fit_model_to_mesh
from benchmarks.real_photo import (
    CEILING,
    CEILING_IDENTITY,
    MEAN_FACE,
    RealPhotoSettings,
    evaluate_real_photo,
    real_photo_markdown,
    split_photographs,
)
from benchmarks.report import markdown_table
from benchmarks.scan_render import Light, ScanRenderSettings, prepare_scan, render_scan
from benchmarks.textured_scan import TexturedScan, load_textured_scan
from geometry.similarity import SimilarityTransform
from reconstruction.pipeline import Predicted
from renderers.camera import PinholeCamera
from renderers.mesh_renderer import MeshRenderer

SMALL = ScanRenderSettings(
    image_size=48, focal=120.0, background_top=(1.0, 0.0, 0.0), background_bottom=(0.0, 0.0, 1.0)
)


def flat_card() -> TexturedScan:
    """A 100 mm square facing the camera (+z), textured with one colour."""
    vertices = np.array([[-50.0, -50.0, 0.0], [50.0, -50.0, 0.0], [50.0, 50.0, 0.0], [-50.0, 50.0, 0.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    texture = np.empty((4, 4, 3), np.uint8)
    texture[:] = (200, 100, 50)
    return TexturedScan(
        vertices,
        faces,
        np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float64),
        faces.copy(),
        texture,
        np.zeros((68, 3)),
        1.0,
        "card",
    )


def test_render_is_texture_times_light_over_the_gradient() -> None:
    prepared = prepare_scan(flat_card(), SimilarityTransform.identity())
    flat = render_scan(prepared, 0.0, 0.0, Light("flat", (1.0, 1.0, 1.0)), SMALL).astype(int)
    centre = flat[24, 24]
    np.testing.assert_array_equal(centre, (200, 100, 50))
    # The background: red at the top fading to blue at the bottom.
    assert flat[0, 0, 0] > 240 and flat[0, 0, 2] < 15 and flat[-1, 0, 2] > 240 and flat[-1, 0, 0] < 15
    # A light straight on the card (normal +z) at full strength gives the texture; from the side, nothing;
    # a coloured ambient scales each channel.
    front = render_scan(prepared, 0.0, 0.0, Light("front", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.0, 0.0, 1.0)), SMALL)
    np.testing.assert_array_equal(front[24, 24], (200, 100, 50))
    side = render_scan(prepared, 0.0, 0.0, Light("side", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0)), SMALL)
    np.testing.assert_array_equal(side[24, 24], (0, 0, 0))
    tinted = render_scan(prepared, 0.0, 0.0, Light("tint", (0.5, 1.0, 0.0)), SMALL)
    np.testing.assert_array_equal(tinted[24, 24], (100, 100, 0))
    # Turning the card by 60 degrees of yaw narrows it to about half its width.
    turned = render_scan(prepared, 0.0, 60.0, Light("flat", (1.0, 1.0, 1.0)), SMALL)
    width = lambda image: int((np.abs(image[24].astype(int) - (200, 100, 50)).sum(1) < 3).sum())  # noqa: E731
    assert width(turned) == pytest.approx(width(flat) / 2, abs=2)


def test_render_grid_and_fitted_renders() -> None:
    settings = RealPhotoSettings(pitches_deg=(-10.0, 5.0, 20.0), yaws_deg=(-60.0, -30.0, 0.0, 30.0, 60.0))
    grid = settings.render_grid()
    assert len(grid) == 15
    # Lights taken in turn: every yaw once under each light and at each pitch.
    for yaw in settings.yaws_deg:
        assert sorted(light for _, y, light in grid if y == yaw) == ["coloured", "flat", "key"]
    assert len(dataclasses.replace(settings, all_lights=True).render_grid()) == 45
    assert [(p, y) for p, y, _ in settings.fitted_renders()] == [(5.0, 0.0)]
    three = dataclasses.replace(settings, fit_renders=3).fitted_renders()
    assert [(p, y) for p, y, _ in three] == [(5.0, -60.0), (5.0, 0.0), (5.0, 60.0)]
    assert dataclasses.replace(settings, fit_renders=0).fitted_renders() == []
    with pytest.raises(ValueError, match="unknown lights"):
        RealPhotoSettings(lights=("sunset",))


def test_the_texture_holds_two_photographs() -> None:
    halves = split_photographs(np.zeros((10, 300, 3), np.uint8))
    assert [name for name, _ in halves] == ["photo-left", "photo-right"]
    assert all(rgb.shape == (10, 150, 3) for _, rgb in halves)


class ConstantPredictor:
    """Always answers the same identity (a `reconstruction.pipeline.Predictor`), so its score is known."""

    def __init__(self, face_model, identity: torch.Tensor, name: str) -> None:
        self.renderer = MeshRenderer(face_model, PinholeCamera())
        self.identity = identity
        self.name = name
        self.calls = 0

    def predict(self, crops) -> Predicted:
        self.calls += 1
        zeros = self.renderer.face_model.layout.zeros(crops.images.shape[0])
        return Predicted(zeros.replace(identity=self.identity.expand(crops.images.shape[0], -1)))


@pytest.mark.slow
def test_protocol_end_to_end_on_tiny_settings(ict_small, tmp_path) -> None:
    ceiling = CeilingSettings(iterations=2, max_points=300)
    settings = RealPhotoSettings(
        pitches_deg=(0.0,),
        yaws_deg=(0.0, 30.0),
        lights=("key", "flat"),
        fit_photos=False,
        fit_renders=1,
        render=ScanRenderSettings(image_size=256, focal=600.0),
        ceiling=ceiling,
    )
    scan = load_textured_scan(settings.scan_dir)
    oracle_fit = fit_model_to_mesh(
        ict_small, scan.vertices, scan.faces, scan.landmarks, settings=dataclasses.replace(ceiling, expression=False)
    )
    mean_face = ConstantPredictor(ict_small, torch.zeros(1, ict_small.layout.n_id), "mean-face predictor")
    oracle = ConstantPredictor(ict_small, oracle_fit.coeffs.identity, "oracle")
    result = evaluate_real_photo(
        settings,
        ict_small,
        {"mean": mean_face, "oracle": oracle},
        log=lambda _: None,
        out_dir=tmp_path,
        fitting=("oracle",),
    )
    assert not result.failed, result.failed
    assert mean_face.calls == 4 and oracle.calls == 1  # 2 photos + 2 renders; the fitted subset is 1 render
    mean_ref, ceiling_ref = result.references[MEAN_FACE][0], result.references[CEILING][0]
    assert 0 < ceiling_ref < mean_ref
    # A predictor that answers the mean face scores exactly the mean-face reference on every picture; one that
    # answers the identity-only ceiling scores exactly that reference.
    for score in result.scores:
        expected = mean_ref if score.method == "mean" else result.references[CEILING_IDENTITY][0]
        assert score.mean_mm == pytest.approx(expected, rel=1e-6)  # float32 coefficients vs the float64 fit
    rows = {row.method: row for row in result.rows("renders")}
    assert rows["mean"].stats.count == 2 and rows["mean"].share_of_gain == pytest.approx(0.0, abs=1e-9)
    assert rows["oracle"].stats.count == 1 and 0 < rows["oracle"].share_of_gain <= 1.0 + 1e-9
    assert rows[CEILING].share_of_gain == pytest.approx(1.0)
    assert [s.yaw_deg for s in result.scores if s.method == "oracle"] == [0.0]
    assert (tmp_path / "real_photo_renders.png").is_file()
    text = "\n".join(real_photo_markdown(result, markdown_table))
    assert "### The two photographs" in text and "share of gain" in text and "| 0° | 30° | all |" in text
    json.dumps(result.accuracy_dict())


def test_command_line_settings() -> None:
    from experiments.cli import build_parser
    from experiments.commands.benchmark import real_photo_settings

    parser = build_parser()
    args = parser.parse_args(
        [
            "benchmark",
            "--real-photo-yaws=-30,0",
            "--real-photo-pitches=0",
            "--real-photo-lights",
            "flat",
            "--real-photo-size",
            "256",
            "--real-photo-fit",
            "2",
        ]
    )
    settings = real_photo_settings(args)
    assert settings.yaws_deg == (-30.0, 0.0) and settings.pitches_deg == (0.0,) and settings.lights == ("flat",)
    assert settings.render.image_size == 256 and settings.render.focal == pytest.approx(600.0)
    assert settings.fit_renders == 2 and settings.fit_photos
    no_fit = real_photo_settings(parser.parse_args(["benchmark", "--no-fit"]))
    assert no_fit.fit_renders == 0 and not no_fit.fit_photos and len(no_fit.render_grid()) == 15
    assert real_photo_settings(parser.parse_args(["benchmark", "--no-real-photo"])) is None
    with pytest.raises(ValueError, match="--real-photo-yaws must be comma-separated degrees"):
        real_photo_settings(parser.parse_args(["benchmark", "--real-photo-yaws", "left,right"]))


@pytest.mark.slow
@pytest.mark.usefixtures("reuse_face_models")
def test_benchmark_report_holds_the_protocol(tmp_path, monkeypatch) -> None:
    """`run_benchmark` with a tiny R-Net and a tiny grid: report.md, metrics.json, the summary and W&B."""
    from benchmarks.licensed import DatasetSettings
    from benchmarks.suite import BenchmarkSettings, ModelLoaders, run_benchmark
    from experiments.build import build_cnet_module, build_rnet_module, load_cnet_checkpoint, load_rnet_checkpoint
    from experiments.config import load_config, to_yaml

    cfg = load_config(["default", "smoke"], ["renderer.image_size=32"])
    checkpoint = tmp_path / "rnet.ckpt"
    torch.save({"state_dict": build_rnet_module(cfg).state_dict(), "face3d_config": to_yaml(cfg)}, checkpoint)
    monkeypatch.setenv("WANDB_MODE", "offline")
    real_photo = RealPhotoSettings(
        pitches_deg=(0.0,),
        yaws_deg=(0.0,),
        lights=("key",),
        render=ScanRenderSettings(image_size=256, focal=600.0),
        ceiling=CeilingSettings(iterations=1, max_points=200),
    )
    settings = BenchmarkSettings(
        checkpoint=checkpoint,
        out_dir=tmp_path / "report",
        identities=1,
        fit_images=0,
        speed=False,
        wandb=True,
        datasets=DatasetSettings(paths_file=None, environ={}),
        real_photo=real_photo,
        device="cpu",
    )
    loaders = ModelLoaders(load_rnet_checkpoint, load_cnet_checkpoint, build_cnet_module)
    result = run_benchmark(settings, loaders, log=lambda _: None)
    rows = {row.method: row for row in result.real_photo.rows("photos")}
    assert rows["R-Net"].stats.count == 2 and "fit" not in rows  # fit_images=0: no fitting rows
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Real photographs with ground truth" in report and "real_photo_renders.png" in report
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    photos = metrics["accuracy"]["real_photo"]["rows"]["photos"]
    assert [row["method"] for row in photos] == [MEAN_FACE, CEILING, CEILING_IDENTITY, "R-Net"]
    assert "real-photo protocol, photos of the james scan" in result.summary()
    assert "wandb" in result.files
