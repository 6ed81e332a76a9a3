"""BFM09 preparation and loading on tiny fake files with the real keys, dtypes and binary layouts.

The real inputs are licensed downloads, so these files mimic them at a small scale: 60 "full" BFM
vertices, 50 of them kept by Guo et al.'s expression basis and 30 in the front crop (a 5 x 6 grid facing
+z). Expected outputs are computed here element by element from the raw arrays, not with the reshapes
the implementation uses.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from face_model import FaceModel
from face_model.bfm import RAW_SOURCES, load_bfm, prepare_bfm

N_FULL, N_EXP_VERTICES, GRID = 60, 50, (5, 6)
N_FRONT = GRID[0] * GRID[1]
RAW_FILES = tuple(RAW_SOURCES)


def _grid_triangles() -> np.ndarray:
    """Counter-clockwise (seen from +z) 1-based triangles over the front grid, x along columns, y along rows."""
    rows, cols = GRID
    tris = []
    for r in range(rows - 1):
        for c in range(cols - 1):
            a = r * cols + c
            b, d = a + 1, a + cols
            tris += [(a, b, d + 1), (a, d + 1, d)]
    return np.array(tris, dtype=np.float32) + 1


def make_raw_bfm(folder: Path, n_shape: int = 199, n_tex: int = 199, n_exp: int = 79, seed: int = 0) -> dict:
    """Write the six raw inputs into ``folder``; return the arrays for the expected-value computation."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    trim = rng.choice(N_FULL, N_EXP_VERTICES, replace=False) + 1  # exp vertex -> full vertex, 1-based
    front = rng.choice(N_EXP_VERTICES, N_FRONT, replace=False) + 1  # front vertex -> exp vertex, 1-based

    # Front vertices on a grid in micrometres (a face about 1 dm across), off-centre so recentring shows.
    rows, cols = GRID
    yy, xx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    front_xyz = np.stack([xx.ravel() * 2e4 + 3e4, yy.ravel() * 2e4 - 1e4, rng.normal(5e4, 3e3, N_FRONT)], 1)
    full_xyz = rng.normal(0, 1e5, (N_FULL, 3))
    full_xyz[trim[front - 1] - 1] = front_xyz
    morphable = {
        "shapeMU": full_xyz.reshape(-1, 1).astype(np.float32),
        "shapePC": rng.normal(0, 0.1, (3 * N_FULL, n_shape)).astype(np.float32),
        "shapeEV": rng.uniform(1e3, 1e5, (n_shape, 1)).astype(np.float32),
        "texMU": rng.uniform(50, 200, (3 * N_FULL, 1)).astype(np.float32),
        "texPC": rng.normal(0, 0.1, (3 * N_FULL, n_tex)).astype(np.float32),
        "texEV": rng.uniform(1, 100, (n_tex, 1)).astype(np.float32),
        "segbin": np.zeros((N_FULL, 4), dtype=np.uint8),  # present in the real file, unused
    }
    scipy.io.savemat(folder / "01_MorphableModel.mat", morphable)

    exp_mean = rng.normal(0, 1e3, 3 * N_EXP_VERTICES).astype("<f4")
    exp_pcs = rng.normal(0, 0.1, n_exp * 3 * N_EXP_VERTICES).astype("<f4")
    with (folder / "Exp_Pca.bin").open("wb") as fh:
        np.array([n_exp], dtype="<i4").tofile(fh)
        exp_mean.tofile(fh)
        exp_pcs.tofile(fh)
    exp_std = rng.uniform(1e3, 5e5, n_exp)
    (folder / "std_exp.txt").write_text(" ".join(f"{s:g}" for s in exp_std) + "\n")

    # Same dtypes as the files in Deep3DFaceRecon's BFM/ folder.
    scipy.io.savemat(folder / "BFM_exp_idx.mat", {"trimIndex": trim.reshape(-1, 1).astype(np.uint16)})
    scipy.io.savemat(folder / "BFM_front_idx.mat", {"idx": front.reshape(-1, 1).astype(np.float32)})
    tri = _grid_triangles()
    info = {
        "tri": tri,
        "keypoints": rng.integers(1, N_FRONT + 1, (1, 68)).astype(np.float32),
        "point_buf": rng.integers(1, len(tri) + 2, (N_FRONT, 8)).astype(np.float32),
        "tri_mask2": tri[:10],
        "frontmask2_idx": np.arange(1, 21, dtype=np.float32).reshape(-1, 1),
        "skinmask": (rng.random((1, N_FRONT)) > 0.5).astype(np.float32),
        "frontmask2": np.ones((1, N_FRONT), dtype=np.float32),
    }
    scipy.io.savemat(folder / "facemodel_info.mat", info)
    return dict(morphable, trim=trim, front=front, exp_pcs=exp_pcs, exp_std=exp_std, info=info)


def expected_front_model(raw: dict, n_id: int, n_exp: int, n_tex: int) -> dict:
    """What BFM_model_front should hold, per vertex and coordinate, straight from the raw arrays."""
    exp_ids = raw["front"].astype(int) - 1
    full_ids = raw["trim"][exp_ids].astype(int) - 1
    out = {
        "mean": np.zeros((N_FRONT, 3)),
        "tex": np.zeros((N_FRONT, 3)),
        "id": np.zeros((n_id, N_FRONT, 3)),
        "exp": np.zeros((n_exp, N_FRONT, 3)),
        "alb": np.zeros((n_tex, N_FRONT, 3)),
    }
    ev_shape, ev_tex = raw["shapeEV"][:, 0].astype(float), raw["texEV"][:, 0].astype(float)
    for j in range(N_FRONT):
        f, e = full_ids[j], exp_ids[j]
        for c in range(3):
            out["mean"][j, c] = raw["shapeMU"][3 * f + c, 0] / 1e5
            out["tex"][j, c] = raw["texMU"][3 * f + c, 0]
            out["id"][:, j, c] = raw["shapePC"][3 * f + c, :n_id] * ev_shape[:n_id] / 1e5
            out["alb"][:, j, c] = raw["texPC"][3 * f + c, :n_tex] * ev_tex[:n_tex]
            for k in range(n_exp):
                flat_index = k * 3 * N_EXP_VERTICES + 3 * e + c  # components are stored one after another
                out["exp"][k, j, c] = raw["exp_pcs"][flat_index] * raw["exp_std"][k] / 1e5
    return out


@pytest.fixture()
def raw_dir(tmp_path: Path) -> tuple[Path, dict]:
    folder = tmp_path / "bfm"
    return folder, make_raw_bfm(folder)


def _close(actual, expected) -> None:
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=2e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# prepare_bfm
# ----------------------------------------------------------------------------------------------------


def test_prepare_writes_deep3d_layout(raw_dir):
    folder, raw = raw_dir
    out = prepare_bfm(folder)
    assert out == folder / "BFM_model_front.mat"
    mat = scipy.io.loadmat(out)
    shapes = {key: mat[key].shape for key in mat if not key.startswith("__")}
    assert shapes == {
        "meanshape": (1, 3 * N_FRONT),
        "meantex": (1, 3 * N_FRONT),
        "idBase": (3 * N_FRONT, 80),
        "exBase": (3 * N_FRONT, 64),
        "texBase": (3 * N_FRONT, 80),
        "tri": raw["info"]["tri"].shape,
        "point_buf": (N_FRONT, 8),
        "tri_mask2": (10, 3),
        "keypoints": (1, 68),
        "frontmask2_idx": (20, 1),
        "skinmask": (1, N_FRONT),
    }
    # Index arrays pass through unchanged (still 1-based), exactly as Deep3D's transferBFM09.
    for key in ("tri", "point_buf", "tri_mask2", "keypoints", "frontmask2_idx", "skinmask"):
        np.testing.assert_array_equal(mat[key], raw["info"][key])
    # Before recentring, the stored mean shape is the raw one in decimetres.
    expected = expected_front_model(raw, 80, 64, 80)
    _close(mat["meanshape"].reshape(N_FRONT, 3), expected["mean"])


def test_prepare_then_load_matches_numpy(raw_dir):
    folder, raw = raw_dir
    model = load_bfm(prepare_bfm(folder))
    expected = expected_front_model(raw, 80, 64, 80)

    assert model.name == "bfm09" and model.n_vertices == N_FRONT
    _close(model.mean_shape, expected["mean"] - expected["mean"].mean(0))
    _close(model.mean_shape.mean(0), np.zeros(3))
    _close(model.id_basis, expected["id"])
    _close(model.exp_basis, expected["exp"])
    _close(model.albedo_mean, expected["tex"] / 255)
    _close(model.albedo_basis, expected["alb"] / 255)
    np.testing.assert_array_equal(model.triangles.numpy(), raw["info"]["tri"] - 1)
    np.testing.assert_array_equal(model.landmark_ids.numpy(), raw["info"]["keypoints"][0] - 1)
    np.testing.assert_array_equal(model.skin_mask.numpy(), raw["info"]["skinmask"][0] == 1)


def test_model_forward_shapes_and_landmarks(raw_dir):
    folder, raw = raw_dir
    model = load_bfm(prepare_bfm(folder), sh_channels=1)
    layout = model.layout
    assert (layout.n_id, layout.n_exp, layout.n_tex, layout.size) == (80, 64, 80, 80 + 64 + 80 + 3 + 9 + 3)
    coeffs = model.layout.split(torch.randn(2, model.layout.size))
    mesh = model(coeffs)
    assert mesh.vertices.shape == mesh.albedo.shape == (2, N_FRONT, 3)
    assert model.normals(mesh.vertices).shape == (2, N_FRONT, 3)
    marks = model.landmarks(mesh.vertices)
    assert marks.shape == (2, 68, 3)
    keypoints = raw["info"]["keypoints"][0].astype(int) - 1
    for i in (0, 17, 30, 67):
        torch.testing.assert_close(marks[:, i], mesh.vertices[:, keypoints[i]])
    # The grid faces +z, so counter-clockwise triangles give front-facing normals on the mean face.
    normals = model.normals(model.mean_shape[None])
    assert (normals[..., 2] > 0).all()
    assert model.five_point_template().shape == (5, 3)


def test_prepare_keeps_a_handful_of_modes(tmp_path):
    folder = tmp_path / "bfm"
    raw = make_raw_bfm(folder, n_shape=6, n_tex=5, n_exp=4)
    out = prepare_bfm(folder, tmp_path / "sub" / "front.mat", n_id=3, n_exp=2, n_tex=4)
    assert out == tmp_path / "sub" / "front.mat" and not (folder / "BFM_model_front.mat").exists()
    model = load_bfm(out, n_id=2, n_exp=1)
    expected = expected_front_model(raw, 2, 1, 4)
    assert (model.layout.n_id, model.layout.n_exp, model.layout.n_tex) == (2, 1, 4)
    _close(model.id_basis, expected["id"])
    _close(model.exp_basis, expected["exp"])
    _close(model.albedo_basis, expected["alb"] / 255)


def test_prepare_default_sizes_need_enough_modes(tmp_path):
    folder = tmp_path / "bfm"
    make_raw_bfm(folder, n_shape=6, n_tex=5, n_exp=4)
    with pytest.raises(ValueError, match=r"n_id=80 but 01_MorphableModel.mat shapePC has 6 modes"):
        prepare_bfm(folder)


@pytest.mark.parametrize("name", RAW_FILES)
def test_prepare_names_the_missing_file_and_its_source(raw_dir, name):
    folder, _ = raw_dir
    (folder / name).unlink()
    with pytest.raises(FileNotFoundError) as info:
        prepare_bfm(folder)
    message = str(info.value)
    assert name in message and RAW_SOURCES[name] in message
    assert not any(other in message for other in RAW_FILES if other != name)
    assert not (folder / "BFM_model_front.mat").exists()


def test_prepare_lists_every_missing_file_at_once(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "absent"):
        with pytest.raises(FileNotFoundError) as info:
            prepare_bfm(folder)
        assert all(name in str(info.value) and RAW_SOURCES[name] in str(info.value) for name in RAW_FILES)
    assert "does not exist" in str(info.value)


def test_prepare_skips_an_up_to_date_output_unless_forced(raw_dir, capsys):
    folder, _ = raw_dir
    out = prepare_bfm(folder)
    newest_input = max((folder / name).stat().st_mtime_ns for name in RAW_FILES)
    os.utime(out, ns=(newest_input + 10**9, newest_input + 10**9))
    out.write_bytes(b"marker")  # would not load: proves the skip did not rewrite it
    os.utime(out, ns=(newest_input + 10**9, newest_input + 10**9))
    capsys.readouterr()

    assert prepare_bfm(folder) == out and out.read_bytes() == b"marker"
    assert "skipping" in capsys.readouterr().out

    (folder / "std_exp.txt").touch()
    os.utime(folder / "std_exp.txt", ns=(newest_input + 2 * 10**9,) * 2)
    prepare_bfm(folder)  # an input changed: rebuilt
    assert out.read_bytes() != b"marker"

    out.write_bytes(b"marker")
    prepare_bfm(folder, force=True)
    assert out.read_bytes() != b"marker" and load_bfm(out).n_vertices == N_FRONT


def _resave(path: Path, **changes) -> None:
    mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    mat.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del mat[key]
    scipy.io.savemat(path, mat)


@pytest.mark.parametrize(
    ("file", "change", "pattern"),
    [
        ("01_MorphableModel.mat", {"shapeEV": np.ones((5, 1))}, r"'shapeEV' has shape \(5, 1\).*length 199"),
        ("01_MorphableModel.mat", {"texPC": np.ones((7, 199))}, r"'texPC' has shape \(7, 199\), expected \(3N"),
        ("01_MorphableModel.mat", {"texMU": None}, r"lacks key\(s\) \['texMU'\]"),
        ("BFM_exp_idx.mat", {"trimIndex": np.arange(1, 41).reshape(-1, 1)}, r"'trimIndex' has shape \(40, 1\)"),
        ("BFM_front_idx.mat", {"idx": np.arange(0, 30).reshape(-1, 1)}, r"'idx'.*\[0, 29\].*0-based"),
        ("facemodel_info.mat", {"keypoints": np.ones((1, 5))}, r"'keypoints' has shape \(1, 5\).*length 68"),
        ("facemodel_info.mat", {"tri": np.full((4, 3), N_FRONT + 1.0)}, r"'tri' holds indices in \[31, 31\]"),
        ("facemodel_info.mat", {"skinmask": None}, r"facemodel_info.mat lacks key\(s\) \['skinmask'\]"),
    ],
)
def test_prepare_rejects_wrong_keys_and_shapes(raw_dir, file, change, pattern):
    folder, _ = raw_dir
    _resave(folder / file, **change)
    with pytest.raises(ValueError, match=pattern):
        prepare_bfm(folder)


def test_prepare_rejects_bad_expression_files(raw_dir):
    folder, _ = raw_dir
    (folder / "std_exp.txt").write_text("1 2 3\n")
    with pytest.raises(ValueError, match=r"std_exp.txt holds 3 values, expected .* \(79\)"):
        prepare_bfm(folder)
    bin_path = folder / "Exp_Pca.bin"
    bin_path.write_bytes(bin_path.read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"Exp_Pca.bin is \d+ bytes, expected 4 \+ 4 \* 3M"):
        prepare_bfm(folder)


# ----------------------------------------------------------------------------------------------------
# load_bfm on a BFM_model_front.mat written directly
# ----------------------------------------------------------------------------------------------------

V = 6


def _front_file(path: Path, **changes) -> dict:
    """A minimal BFM_model_front.mat over a 2 x 3 grid facing +z (decimetres, not centred)."""
    rng = np.random.default_rng(1)
    xyz = np.array([[x, y, 0.5] for y in (1.0, 2.0) for x in (0.0, 1.0, 2.0)])
    contents = {
        "meanshape": xyz.reshape(1, -1).astype(np.float32),
        "idBase": rng.normal(size=(3 * V, 4)).astype(np.float32),
        "exBase": rng.normal(size=(3 * V, 3)).astype(np.float32),
        "meantex": rng.uniform(0, 255, (1, 3 * V)).astype(np.float32),
        "texBase": rng.normal(0, 10, (3 * V, 5)).astype(np.float32),
        "tri": np.array([[1, 2, 5], [1, 5, 4], [2, 3, 6], [2, 6, 5]], dtype=np.float32),
        "point_buf": np.ones((V, 8), dtype=np.float32),
        "keypoints": (np.arange(68) % V + 1).reshape(1, 68).astype(np.float32),
        "frontmask2_idx": np.arange(1, V + 1, dtype=np.float32).reshape(-1, 1),
        "skinmask": np.array([[0, 1, 1, 0, 1, 0]], dtype=np.float32),
    }
    contents.update(changes)
    scipy.io.savemat(path, {k: v for k, v in contents.items() if v is not None})
    return contents


def test_load_front_file_conversions(tmp_path):
    path = tmp_path / "BFM_model_front.mat"
    src = _front_file(path)
    model = load_bfm(path)
    xyz = src["meanshape"].reshape(V, 3).astype(np.float64)
    _close(model.mean_shape, xyz - xyz.mean(0))
    # Mode k, vertex j, axis c sits in row 3j + c, column k of the (3V, n) matrices.
    for key, basis, scale in (
        ("idBase", model.id_basis, 1),
        ("exBase", model.exp_basis, 1),
        ("texBase", model.albedo_basis, 255),
    ):
        for k in range(src[key].shape[1]):
            for j in range(V):
                _close(basis[k, j], src[key][3 * j : 3 * j + 3, k] / scale)
    _close(model.albedo_mean[4], src["meantex"][0, 12:15] / 255)
    assert model.triangles.tolist() == [[0, 1, 4], [0, 4, 3], [1, 2, 5], [1, 5, 4]]
    assert model.landmark_ids[:8].tolist() == [0, 1, 2, 3, 4, 5, 0, 1]
    assert model.skin_mask.tolist() == [False, True, True, False, True, False]
    assert model.layout.size == 4 + 3 + 5 + 6 + 27

    truncated = load_bfm(path, sh_channels=1, n_id=2, n_exp=1, n_tex=1)
    assert (truncated.layout.n_id, truncated.layout.n_exp, truncated.layout.n_tex) == (2, 1, 1)
    torch.testing.assert_close(truncated.id_basis, model.id_basis[:2])
    vertices = truncated.shape(truncated.layout.zeros(3))
    torch.testing.assert_close(truncated.landmarks(vertices)[:, 6], vertices[:, 0])
    assert FaceModel.from_file(path, n_id=1).layout.n_id == 1


def test_load_missing_file_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"face3d prepare-bfm --bfm-dir DIR") as info:
        load_bfm(tmp_path / "nope.mat")
    assert "faces.dmi.unibas.ch" in str(info.value) and "Juyong/3DFace" in str(info.value)


@pytest.mark.parametrize(
    ("change", "options", "pattern"),
    [
        ({"exBase": None}, {}, r"lacks key\(s\) \['exBase'\]"),
        (
            {"idBase": np.zeros((3 * V + 3, 4))},
            {},
            r"'idBase' has shape \(21, 4\), expected \(3V, n\) with V=6 = \(18, any\)",
        ),
        ({"meanshape": np.zeros((1, 17))}, {}, r"'meanshape' has 17 entries"),
        ({"meantex": np.zeros((1, 3))}, {}, r"'meantex' has shape \(1, 3\)"),
        ({"keypoints": np.ones((2, 68))}, {}, r"'keypoints' has shape \(2, 68\)"),
        ({"tri": np.array([[0.0, 1, 4]])}, {}, r"'tri' holds indices in \[0, 4\].*looks 0-based"),
        ({"skinmask": np.ones((1, V + 1))}, {}, r"'skinmask' has shape \(1, 7\)"),
        ({}, {"n_id": 5}, r"n_id=5 asks for more modes .* 'idBase' has 4"),
    ],
)
def test_load_rejects_bad_files(tmp_path, change, options, pattern):
    path = tmp_path / "BFM_model_front.mat"
    _front_file(path, **change)
    with pytest.raises(ValueError, match=pattern):
        load_bfm(path, **options)


def test_load_warns_on_clockwise_triangles(tmp_path):
    path = tmp_path / "BFM_model_front.mat"
    tri = np.array([[1, 2, 5], [1, 5, 4], [2, 3, 6], [2, 6, 5]], dtype=np.float32)
    _front_file(path, tri=tri[:, [0, 2, 1]])
    with pytest.warns(UserWarning, match="clockwise"):
        load_bfm(path)
    _front_file(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_bfm(path)


# ----------------------------------------------------------------------------------------------------
# face3d prepare-bfm
# ----------------------------------------------------------------------------------------------------


@pytest.fixture()
def cli_main():
    from experiments import cli

    return cli.main


def test_cli_missing_directory(cli_main, tmp_path, capsys):
    assert cli_main(["prepare-bfm", "--bfm-dir", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("face3d prepare-bfm: error:") and "does not exist" in err
    assert "01_MorphableModel.mat" in err and "faces.dmi.unibas.ch" in err


def test_cli_builds_from_fake_files(cli_main, raw_dir, tmp_path, capsys):
    folder, _ = raw_dir
    assert cli_main(["prepare-bfm", "--bfm-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert str(folder / "BFM_model_front.mat") in out and f"{N_FRONT} vertices" in out and "40 triangles" in out

    target = tmp_path / "elsewhere.mat"
    assert cli_main(["prepare-bfm", "--bfm-dir", str(folder), "--out", str(target), "--force"]) == 0
    assert target.is_file() and str(target) in capsys.readouterr().out
