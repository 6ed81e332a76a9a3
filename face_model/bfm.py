"""The Basel Face Model 2009 in Deep3DFaceRecon's cropped "front" form (the paper's face model).

BFM09 may not be redistributed, so nothing here ships with the package: the user downloads the raw
files (see `RAW_SOURCES`) and runs ``face3d prepare-bfm --bfm-dir DIR`` once, which calls
`prepare_bfm` to write ``BFM_model_front.mat`` in the layout Deep3DFaceRecon uses. `load_bfm` turns
that file into a `FaceModel`.

``BFM_model_front.mat`` (all index arrays 1-based, as MATLAB writes them):

* ``meanshape`` (1, 3V) mean shape in decimetres, not yet centred;
* ``idBase`` (3V, 80), ``exBase`` (3V, 64): principal components times their standard deviation,
  in decimetres;
* ``meantex`` (1, 3V), ``texBase`` (3V, 80): RGB reflectance in 0..255 units;
* ``tri`` (F, 3), ``keypoints`` (1, 68), ``skinmask`` (1, V) 0/1, plus ``point_buf``, ``tri_mask2``
  and ``frontmask2_idx``, which Deep3D keeps and this project does not need.

Every 3V axis is vertex-major: ``x0, y0, z0, x1, y1, z1, ...``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import scipy.io
import torch

from errors import InvalidInputError, MissingFileError
from face_model.model import N_LANDMARKS, FaceModel

BFM_FRONT_FILE = "BFM_model_front.mat"

MICROMETRES_PER_DECIMETRE = 1e5
"""Raw BFM09 and Guo et al.'s expression basis are in micrometres; the model space is in decimetres."""

DEEP3D_N_ID, DEEP3D_N_EXP, DEEP3D_N_TEX = 80, 64, 80
"""Basis sizes Deep3DFaceRecon keeps; its 257-coefficient checkpoints assume them."""

_DEEP3D_BFM_FOLDER = "the BFM/ folder of https://github.com/sicxu/Deep3DFaceRecon_pytorch"

RAW_SOURCES: dict[str, str] = {
    "01_MorphableModel.mat": (
        "Basel Face Model 2009; register (non-commercial licence) and download at "
        "https://faces.dmi.unibas.ch/bfm/main.php?nav=1-2&id=downloads"
    ),
    "Exp_Pca.bin": (
        "expression basis of Guo et al. (CNN-based Real-time Dense Face Reconstruction); follow the "
        "'CoarseData' link of https://github.com/Juyong/3DFace and unzip Coarse_Dataset.zip"
    ),
    "std_exp.txt": _DEEP3D_BFM_FOLDER,
    "BFM_front_idx.mat": _DEEP3D_BFM_FOLDER,
    "BFM_exp_idx.mat": _DEEP3D_BFM_FOLDER,
    "facemodel_info.mat": _DEEP3D_BFM_FOLDER,
}
"""Every input of `prepare_bfm` and where it comes from."""

# Keys of the prepared file that `load_bfm` needs; the others (point_buf, tri_mask2, frontmask2_idx)
# serve Deep3D's own normal computation and cropped photometric mask, which this project derives from
# the triangles and the rendered mask instead.
_LOAD_KEYS = ("meanshape", "idBase", "exBase", "meantex", "texBase", "tri", "keypoints", "skinmask")
_INFO_KEYS = ("tri", "point_buf", "tri_mask2", "keypoints", "frontmask2_idx", "skinmask")
_MORPHABLE_KEYS = ("shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV")


def _sources_text(names: list[str] | tuple[str, ...]) -> str:
    return "\n".join(f"  - {name}: {RAW_SOURCES[name]}" for name in names)


def _prepare_hint() -> str:
    return "Build it with `face3d prepare-bfm --bfm-dir DIR`, where DIR holds these files:\n" + _sources_text(
        tuple(RAW_SOURCES)
    )


# ----------------------------------------------------------------------------------------------------
# Reading and checking MATLAB arrays
# ----------------------------------------------------------------------------------------------------


def _load_mat(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays of a .mat file; ValueError naming the file and keys if it is unreadable or lacks some."""
    try:
        # variable_names skips arrays this code never uses (01_MorphableModel.mat holds more than the model).
        mat = scipy.io.loadmat(path, variable_names=list(keys))
    except NotImplementedError as err:
        raise InvalidInputError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save it in MATLAB with "
            "save(..., '-v7') or use the original download"
        ) from err
    except (ValueError, TypeError, OSError) as err:
        raise InvalidInputError(f"could not read {path} as a MATLAB .mat file ({err}); re-download it") from err
    missing = [key for key in keys if key not in mat]
    if missing:
        found = sorted(name for name, _, _ in scipy.io.whosmat(path))
        raise InvalidInputError(
            f"{path} lacks key(s) {missing}; it has {found}. Expected a file with keys {list(keys)}"
        )
    return {key: mat[key] for key in keys}


def _matrix(where: Path, key: str, array: np.ndarray, rows: int | None, cols: int | None, expected: str) -> np.ndarray:
    """Check a 2-D array's shape; ``None`` accepts any size. ``expected`` names the dimensions."""
    if (
        array.ndim != 2
        or (rows is not None and array.shape[0] != rows)
        or (cols is not None and array.shape[1] != cols)
    ):
        wanted = (rows if rows is not None else "any", cols if cols is not None else "any")
        raise InvalidInputError(
            f"{where}: {key!r} has shape {array.shape}, expected {expected} = ({wanted[0]}, {wanted[1]})"
        )
    return array


def _vector(where: Path, key: str, array: np.ndarray, length: int | None, expected: str) -> np.ndarray:
    """A MATLAB vector as 1-D; row or column orientation is incidental, so both are accepted."""
    if (
        array.ndim > 2
        or (array.ndim == 2 and min(array.shape) != 1 and array.size != 0)
        or (length is not None and array.size != length)
    ):
        raise InvalidInputError(
            f"{where}: {key!r} has shape {array.shape}, expected a vector {expected} of length "
            f"{length if length is not None else 'any'}"
        )
    return array.reshape(-1)


def _zero_based(where: Path, key: str, ids: np.ndarray, upper: int) -> np.ndarray:
    """1-based MATLAB indices in [1, upper] -> int64 0-based indices."""
    if ids.size == 0:
        return ids.astype(np.int64)
    # The Deep3D files store indices as float32 or uint16; anything fractional means a wrong array.
    if not np.all(np.equal(np.mod(ids, 1), 0)):
        raise InvalidInputError(f"{where}: {key!r} should hold integer vertex/face indices, found fractional values")
    as_int = ids.astype(np.int64)
    low, high = int(as_int.min()), int(as_int.max())
    if low < 1 or high > upper:
        hint = " (it looks 0-based; these files store 1-based MATLAB indices)" if low == 0 else ""
        raise InvalidInputError(
            f"{where}: {key!r} holds indices in [{low}, {high}], expected 1-based indices in [1, {upper}]{hint}"
        )
    return as_int - 1


def _modes(where: Path, key: str, basis: np.ndarray, n_vertices: int, keep: int | None, option: str) -> np.ndarray:
    """(3V, k) vertex-major basis -> (keep, V, 3), keeping the first ``keep`` modes (all if None)."""
    _matrix(where, key, basis, 3 * n_vertices, None, f"(3V, n) with V={n_vertices}")
    available = basis.shape[1]
    if keep is None:
        keep = available
    if keep < 0 or keep > available:
        raise InvalidInputError(
            f"{option}={keep} asks for more modes than {where} holds: {key!r} has {available}; "
            f"pass {option} between 0 and {available} (or None for all)"
        )
    # Column k is one mode laid out x0 y0 z0 x1 ...; transposing makes it a row, which reshapes to (V, 3).
    return np.ascontiguousarray(basis[:, :keep].T).reshape(keep, n_vertices, 3)


def _warn_if_inward(where: Path, mean_shape: np.ndarray, triangles: np.ndarray) -> None:
    """Warn when the triangles' winding makes normals point away from the viewer (-z).

    Deep3D computes normals with the same winding rule as `geometry.normals.face_normals`, so the
    triangles are kept as stored (its lighting coefficients then mean the same here); this only flags a
    file whose winding would break the renderer's CCW-from-the-front assumption.
    """
    v0, v1, v2 = (mean_shape[triangles[:, k]] for k in range(3))
    # The summed (area-weighted) normal of an open face mask is its projected area, dominated by +z.
    total = np.cross(v1 - v0, v2 - v0).sum(axis=0)
    if total[2] < 0:
        warnings.warn(
            f"{where}: the triangles wind clockwise seen from the front (mean-shape normals point to -z); "
            "FaceModel expects counter-clockwise triangles. Check that 'tri' comes from Deep3D's "
            "facemodel_info.mat.",
            stacklevel=3,
        )


# ----------------------------------------------------------------------------------------------------
# Loading BFM_model_front.mat
# ----------------------------------------------------------------------------------------------------


def load_bfm(
    path: str | Path,
    sh_channels: int = 3,
    n_id: int | None = None,
    n_exp: int | None = None,
    n_tex: int | None = None,
) -> FaceModel:
    """Read Deep3DFaceRecon's ``BFM_model_front.mat`` into a `FaceModel` named "bfm09".

    Conversions, as Deep3D's ``ParametricFaceModel``: the mean shape is recentred on its vertex mean
    (units stay decimetres), texture is divided by 255, indices become 0-based, and each (3V, n) basis
    becomes (n, V, 3).

    Args:
        path: the prepared ``BFM_model_front.mat``.
        sh_channels: 3 for RGB lighting (Deep3D), 1 for monochrome.
        n_id, n_exp, n_tex: keep only the first modes of each basis; None keeps all in the file
            (80, 64, 80 for a file from `prepare_bfm`).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"BFM face model file {path} not found. {_prepare_hint()}")
    mat = _load_mat(path, _LOAD_KEYS)

    meanshape = _vector(path, "meanshape", mat["meanshape"], None, "(1, 3V)")
    if meanshape.size == 0 or meanshape.size % 3:
        raise InvalidInputError(
            f"{path}: 'meanshape' has {meanshape.size} entries, expected (1, 3V): a positive "
            "multiple of 3 (x, y, z per vertex)"
        )
    n_vertices = meanshape.size // 3
    mean_shape = meanshape.astype(np.float64).reshape(n_vertices, 3)
    # Deep3D's recenter=True: its camera distance and the landmark template assume a centred face.
    mean_shape = mean_shape - mean_shape.mean(axis=0, keepdims=True)

    id_basis = _modes(path, "idBase", mat["idBase"], n_vertices, n_id, "n_id")
    exp_basis = _modes(path, "exBase", mat["exBase"], n_vertices, n_exp, "n_exp")
    tex_basis = _modes(path, "texBase", mat["texBase"], n_vertices, n_tex, "n_tex") / 255.0
    albedo_mean = _vector(path, "meantex", mat["meantex"], 3 * n_vertices, f"(1, 3V) with V={n_vertices}")
    albedo_mean = albedo_mean.astype(np.float64).reshape(n_vertices, 3) / 255.0

    tri = _matrix(path, "tri", mat["tri"], None, 3, "(F, 3)")
    triangles = _zero_based(path, "tri", tri, n_vertices)
    keypoints = _vector(path, "keypoints", mat["keypoints"], N_LANDMARKS, "(1, 68)")
    landmark_ids = _zero_based(path, "keypoints", keypoints, n_vertices)
    skin = _vector(path, "skinmask", mat["skinmask"], n_vertices, f"(1, V) with V={n_vertices}")

    _warn_if_inward(path, mean_shape, triangles)
    return FaceModel(
        mean_shape=torch.from_numpy(mean_shape),
        id_basis=torch.from_numpy(id_basis.astype(np.float64)),
        exp_basis=torch.from_numpy(exp_basis.astype(np.float64)),
        albedo_mean=torch.from_numpy(albedo_mean),
        albedo_basis=torch.from_numpy(tex_basis.astype(np.float64)),
        triangles=torch.from_numpy(triangles),
        landmark_ids=torch.from_numpy(landmark_ids),
        skin_mask=torch.from_numpy(skin != 0),
        name="bfm09",
        sh_channels=sh_channels,
    )


# ----------------------------------------------------------------------------------------------------
# Building BFM_model_front.mat from the raw downloads
# ----------------------------------------------------------------------------------------------------


def _read_expression_basis(path: Path) -> tuple[np.ndarray, int]:
    """Guo et al.'s ``Exp_Pca.bin`` -> ((n_modes, 3M) components, M vertices).

    Layout (little-endian): int32 n_modes, float32 mean (3M), float32 components (n_modes x 3M, one
    component after another, each vertex-major). M is 53215 for the real file; it is derived from the
    file size so that the count is checked rather than assumed.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        header = np.fromfile(fh, dtype="<i4", count=1)
        if header.size != 1 or header[0] <= 0:
            raise InvalidInputError(
                f"{path}: expected an int32 number of expression components first, got "
                f"{header.tolist()}; is this Guo et al.'s Exp_Pca.bin?"
            )
        n_modes = int(header[0])
        floats_per_vertex = 3 * (n_modes + 1)
        payload = size - 4
        if payload <= 0 or payload % (4 * floats_per_vertex):
            raise InvalidInputError(
                f"{path} is {size} bytes, expected 4 + 4 * 3M * ({n_modes} + 1) bytes (int32 count, float32 "
                f"mean and {n_modes} components over M vertices); the file is truncated or not Exp_Pca.bin"
            )
        n_vertices = payload // (4 * floats_per_vertex)
        # The mean expression offset is skipped: Deep3D's expression model is zero-mean.
        fh.seek(4 + 4 * 3 * n_vertices)
        components = np.fromfile(fh, dtype="<f4", count=n_modes * 3 * n_vertices)
    return components.reshape(n_modes, 3 * n_vertices), n_vertices


def _select_vertices(basis: np.ndarray, vertex_ids: np.ndarray) -> np.ndarray:
    """(3N, k) vertex-major rows -> (3V, k) rows of the chosen vertices, still vertex-major."""
    rows = (3 * vertex_ids[:, None] + np.arange(3)[None, :]).reshape(-1)
    return basis[rows]


def _is_up_to_date(out_path: Path, inputs: list[Path]) -> bool:
    if not out_path.is_file():
        return False
    built = out_path.stat().st_mtime_ns
    return all(built > path.stat().st_mtime_ns for path in inputs)


def prepare_bfm(
    bfm_dir: str | Path,
    out_path: str | Path | None = None,
    force: bool = False,
    *,
    n_id: int = DEEP3D_N_ID,
    n_exp: int = DEEP3D_N_EXP,
    n_tex: int = DEEP3D_N_TEX,
) -> Path:
    """Build ``BFM_model_front.mat`` from the raw BFM09 downloads, as Deep3D's ``transferBFM09``.

    Identity and texture modes are the BFM principal components times their standard deviations, the
    expression modes Guo et al.'s components times ``std_exp.txt``; shapes go from micrometres to
    decimetres (/1e5). The 53490 BFM vertices are cut to Guo et al.'s 53215 (``BFM_exp_idx.mat``) and
    then to the 35709 front vertices (``BFM_front_idx.mat``); ``facemodel_info.mat`` supplies triangles,
    landmarks and masks over those.

    Args:
        bfm_dir: folder holding every file of `RAW_SOURCES`.
        out_path: where to write; default ``bfm_dir / "BFM_model_front.mat"``.
        force: rebuild even if ``out_path`` is newer than every input.
        n_id, n_exp, n_tex: modes to keep (Deep3D's 80, 64, 80 by default).

    Returns:
        The path of the written (or already up-to-date) file.
    """
    bfm_dir = Path(bfm_dir)
    out_path = Path(out_path) if out_path is not None else bfm_dir / BFM_FRONT_FILE
    inputs = {name: bfm_dir / name for name in RAW_SOURCES}

    # Check every input before reading any, so the user fetches all missing files in one go.
    missing = [name for name, path in inputs.items() if not path.is_file()]
    if missing:
        where = f"{bfm_dir} does not exist" if not bfm_dir.is_dir() else f"{bfm_dir} lacks {len(missing)} file(s)"
        raise MissingFileError(
            f"cannot build {BFM_FRONT_FILE}: {where}. Put these files in it:\n{_sources_text(missing)}"
        )
    if not force and _is_up_to_date(out_path, list(inputs.values())):
        print(f"{out_path} is newer than its inputs; skipping (pass --force / force=True to rebuild)")
        return out_path

    raw = _load_mat(inputs["01_MorphableModel.mat"], _MORPHABLE_KEYS)
    where = inputs["01_MorphableModel.mat"]
    shape_mu = _vector(where, "shapeMU", raw["shapeMU"], None, "(3N, 1)")
    if shape_mu.size == 0 or shape_mu.size % 3:
        raise InvalidInputError(f"{where}: 'shapeMU' has {shape_mu.size} entries, expected (3N, 1) with N vertices")
    n_full = shape_mu.size // 3
    shape_pc = _matrix(where, "shapePC", raw["shapePC"], 3 * n_full, None, f"(3N, k) with N={n_full}")
    shape_ev = _vector(where, "shapeEV", raw["shapeEV"], shape_pc.shape[1], "(k, 1) matching shapePC")
    tex_mu = _vector(where, "texMU", raw["texMU"], 3 * n_full, f"(3N, 1) with N={n_full}")
    tex_pc = _matrix(where, "texPC", raw["texPC"], 3 * n_full, None, f"(3N, k) with N={n_full}")
    tex_ev = _vector(where, "texEV", raw["texEV"], tex_pc.shape[1], "(k, 1) matching texPC")

    exp_pc, n_exp_vertices = _read_expression_basis(inputs["Exp_Pca.bin"])
    exp_std = np.loadtxt(inputs["std_exp.txt"], dtype=np.float64, ndmin=1)
    if exp_std.shape != (exp_pc.shape[0],):
        raise InvalidInputError(
            f"{inputs['std_exp.txt']} holds {exp_std.size} values, expected one standard "
            f"deviation per expression component of Exp_Pca.bin ({exp_pc.shape[0]})"
        )

    for option, keep, available, source in (
        ("n_id", n_id, shape_pc.shape[1], "01_MorphableModel.mat shapePC"),
        ("n_exp", n_exp, exp_pc.shape[0], "Exp_Pca.bin"),
        ("n_tex", n_tex, tex_pc.shape[1], "01_MorphableModel.mat texPC"),
    ):
        if not 0 <= keep <= available:
            raise InvalidInputError(f"{option}={keep} but {source} has {available} modes; choose 0..{available}")

    where = inputs["BFM_exp_idx.mat"]
    trim = _vector(
        where,
        "trimIndex",
        _load_mat(where, ("trimIndex",))["trimIndex"],
        n_exp_vertices,
        f"(M, 1) with M={n_exp_vertices} vertices of Exp_Pca.bin",
    )
    exp_to_full = _zero_based(where, "trimIndex", trim, n_full)
    where = inputs["BFM_front_idx.mat"]
    front = _vector(where, "idx", _load_mat(where, ("idx",))["idx"], None, "(V, 1)")
    front_to_exp = _zero_based(where, "idx", front, n_exp_vertices)
    front_to_full = exp_to_full[front_to_exp]
    n_front = front_to_exp.size

    where = inputs["facemodel_info.mat"]
    info = _load_mat(where, _INFO_KEYS)
    _zero_based(where, "tri", _matrix(where, "tri", info["tri"], None, 3, "(F, 3)"), n_front)
    _zero_based(where, "keypoints", _vector(where, "keypoints", info["keypoints"], N_LANDMARKS, "(1, 68)"), n_front)
    _vector(where, "skinmask", info["skinmask"], n_front, f"(1, V) with V={n_front} front vertices")
    _matrix(where, "point_buf", info["point_buf"], n_front, None, f"(V, k) with V={n_front}")

    # Scale and cut in float64, then store float32 as Deep3D's loader reads it.
    scale = 1.0 / MICROMETRES_PER_DECIMETRE
    f64 = np.float64
    id_base = _select_vertices(shape_pc[:, :n_id], front_to_full).astype(f64) * shape_ev[:n_id].astype(f64) * scale
    tex_base = _select_vertices(tex_pc[:, :n_tex], front_to_full).astype(f64) * tex_ev[:n_tex].astype(f64)
    ex_base = _select_vertices(exp_pc[:n_exp].T, front_to_exp).astype(f64) * exp_std[:n_exp] * scale
    mean_shape = shape_mu.astype(np.float64).reshape(n_full, 3)[front_to_full] * scale
    mean_tex = tex_mu.astype(np.float64).reshape(n_full, 3)[front_to_full]

    contents = {
        "meanshape": mean_shape.reshape(1, -1),
        "meantex": mean_tex.reshape(1, -1),
        "idBase": id_base,
        "exBase": ex_base,
        "texBase": tex_base,
    }
    contents = {key: value.astype(np.float32) for key, value in contents.items()}
    # Triangles, landmarks and masks are already over the front vertices and stay 1-based, as in Deep3D.
    contents.update({key: info[key] for key in _INFO_KEYS})

    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so an interrupted run never leaves a partial file that a later
    # run would take as up to date.
    partial = out_path.with_name(out_path.name + ".part")
    try:
        with partial.open("wb") as fh:
            scipy.io.savemat(fh, contents)
        os.replace(partial, out_path)
    finally:
        partial.unlink(missing_ok=True)
    return out_path
