import cv2

from experiments.cli import main


def test_preview_writes_a_grid_of_renders(tmp_path):
    out = tmp_path / "sub" / "face.png"
    assert main(["preview", "--out", str(out), "--size", "64"]) == 0
    img = cv2.imread(str(out))
    # 4 x 4 tiles of 64 px with 2 px padding.
    assert img.shape == (4 * 66 + 2, 4 * 66 + 2, 3)
    tile = img[2:66, 2:66]
    assert tile.std() > 10, "the mean face should be visible against the grey background"


def test_preview_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["preview", "--out", str(tmp_path / "f.png"), "--face-model", "bfm"]) == 2
    assert "prepare-bfm" in capsys.readouterr().err
    assert main(["preview", "--out", str(tmp_path / "f.png"), "--backend", "opengl"]) == 2
    assert "backend" in capsys.readouterr().err
