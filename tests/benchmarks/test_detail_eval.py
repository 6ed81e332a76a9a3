"""The detail table: its error functions on known cases and the rows of untrained detail layers."""

from __future__ import annotations

import math

import torch

from benchmarks.detail_eval import depth_error, evaluate_detail, format_detail_table, normal_angle_error
from datamodules.detail import DetailDataSettings, DetailFaceDataset
from renderers.detail_renderer import DetailRender
from tests.lightning_modules.test_hrn_module import tiny_hrn


def flat_render(normal: tuple[float, float, float], depth: float) -> DetailRender:
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1:3, 1:3] = 1.0
    normals = torch.tensor(normal).view(1, 3, 1, 1).expand(1, 3, 4, 4) * mask
    return DetailRender(
        image=torch.zeros(1, 3, 4, 4),
        mask=mask,
        normals=normals,
        depth=torch.full((1, 1, 4, 4), depth) * mask,
        landmarks=torch.zeros(1, 68, 2),
        vertices=torch.zeros(1, 1, 3),
        vertices_camera=torch.zeros(1, 1, 3),
    )


def test_normal_and_depth_errors():
    up = flat_render((0.0, 0.0, 1.0), 10.0)
    tilted = flat_render((math.sin(math.radians(30)), 0.0, math.cos(math.radians(30))), 10.5)
    torch.testing.assert_close(normal_angle_error(up, up), torch.zeros(1))
    torch.testing.assert_close(normal_angle_error(tilted, up), torch.tensor([30.0]), atol=1e-3, rtol=0)
    # A constant depth offset is not an error of a single picture.
    torch.testing.assert_close(depth_error(tilted, up), torch.zeros(1))


def test_untrained_detail_layers_leave_the_3dmm_rows(smoke_rnet):
    rnet, face_model, _ = smoke_rnet
    module = tiny_hrn(rnet, face_model)
    settings = DetailDataSettings(n_train=1, n_val=1, n_test=2, image_size=64, mid_size=16, high_size=32)
    scores = evaluate_detail(module, DetailFaceDataset(face_model, "test", settings), batch_size=2)
    rows = scores.rows
    assert scores.n_faces == 2
    assert rows["+ deformation"] == rows["3DMM (R-Net)"] == rows["+ displacement"]
    assert rows["true 3DMM + displacement"] == rows["true 3DMM (no detail)"]
    # The true coefficients miss only the detail: far closer than R-Net's or the mean face's.
    assert 0 < rows["true 3DMM (no detail)"]["vertex_mm"] < rows["mean face"]["vertex_mm"]
    table = format_detail_table(scores)
    assert "| + deformation | " in table and "(+0.0%)" in table
