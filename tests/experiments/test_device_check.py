"""experiments/device_check.py end to end on the CPU at its quick sizes (the GPU run is device_check.sh's)."""

from __future__ import annotations

import json

import pytest
import torch

from experiments import device_check


def test_the_quick_cpu_check_writes_one_report_with_every_section(tmp_path, capsys):
    torch.manual_seed(0)
    code = device_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["errors"] == [] and report["quick"] and report["device"] == "cpu"
    assert report["rasterizer_backend"].startswith("torch (portable PyTorch)")
    raster = report["rasterizer"]
    assert raster["triangles"] == 2 * 23 * 23 and raster["faces_per_s"] > 0 and 0.2 < raster["coverage"] < 1
    assert [row["config"] for row in report["training"]] == ["default + smoke", "paper_ict + smoke"]
    assert all(row["images_per_s"] > 0 and row["precision"] == "bf16" for row in report["training"])
    # The sync-free path (CUDA's) forced on the CPU: nothing may be counted.
    assert len(report["host_syncs"]) == 2
    assert all(found["counted"] == [] for found in report["host_syncs"].values()), report["host_syncs"]
    markdown = (tmp_path / "device_check.md").read_text()
    assert ">= 20,000 faces/s" in markdown and ">= 1,000 images/s" in markdown and "quick run" in markdown


def _row(config, images_per_s):
    return {
        "config": config,
        "images_per_s": images_per_s,
        "backbone": "resnet50",
        "image_size": 224,
        "batch": 32,
        "perceptual": 0.2,
        "precision": "bf16",
        "timed_steps": 30,
        "warmup_steps": 10,
    }


def test_verdicts_compare_with_the_goals_only_outside_quick_runs():
    report = device_check.Report(
        device="cuda:0",
        device_name="GPU",
        torch="2",
        cuda="12",
        quick=False,
        rasterizer_backend="torch",
        rasterizer={},
        training=[_row("default", 1500.0), _row("paper_ict", 400.0)],
    )
    rows = [line for line in device_check.render_markdown(report).splitlines() if line.startswith("| training")]
    assert rows[0].endswith("| met |") and rows[1].endswith("| NOT met |")
    assert "not measured" in device_check.render_markdown(report)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_asking_for_cuda_without_it_says_how_to_get_it(capsys):
    with pytest.raises(SystemExit):
        device_check.main(["--device", "cuda"])
    assert "device_check.sh" in capsys.readouterr().err
