"""The ONNX speed rows of `benchmarks.speed` (timings are reported, never asserted: only their form is checked)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_onnx_rows_time_pytorch_onnx_int8_and_a_whole_photo(smoke_rnet):
    pytest.importorskip("menpo.io")
    from benchmarks.speed import onnx_speed_rows

    rnet, face_model, cfg = smoke_rnet
    threads = torch.get_num_threads()
    rows = onnx_speed_rows(rnet, face_model, cfg.renderer.image_size, threads=(1,), repeats=1, photo_repeats=1)
    assert [row.task for row in rows] == [
        "R-Net inference, PyTorch", "R-Net inference, onnxruntime fp32", "R-Net inference, onnxruntime int8 (dynamic)",
        "whole photo, ONNX R-Net (decode, detect, landmarks, align, skin, R-Net, mesh)"]
    assert all(row.value is not None and row.value > 0 for row in rows), [row.note for row in rows]
    assert [row.unit for row in rows] == ["ms/face"] * 3 + ["ms/photo"]
    assert "1 torch thread(s)" in rows[0].setting and "thread CPU time" in rows[1].note
    assert "mean vertex distance" in rows[2].note
    for stage in ("detection", "landmarks", "R-Net", "mesh"):
        assert f"{stage} " in rows[3].note
    assert torch.get_num_threads() == threads, "the thread setting must not outlive the measurement"
