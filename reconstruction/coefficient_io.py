"""Coefficient files of one reconstruction: the project's .npz (`save_coefficients` / `load_coefficients`) and
Deep3DFaceRecon's per-image .mat (`save_deep3d_mat`)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import scipy.io
import torch

from face_model.coefficients import Coefficients, CoeffLayout

DEEP3D_MAT_KEYS = ("id", "exp", "tex", "angle", "gamma", "trans", "lm68")
"""Keys of Deep3DFaceRecon's per-image coefficient .mat (its ``save_coeff``), in order."""

COEFFICIENT_FIELDS = tuple(f.name for f in fields(Coefficients))
"""Field names of `Coefficients`, in the flat layout's order."""


def save_coefficients(path: str | Path, coeffs: Coefficients, layout: CoeffLayout, face_model_name: str) -> Path:
    """One reconstruction's coefficients as .npz: one (n,) float32 array per `Coefficients` field, ``flat``
    (the `CoeffLayout` vector, R-Net's output order), the layout sizes (``n_id``, ``n_exp``, ``n_tex``,
    ``sh_channels``) and ``face_model``. Angles are radians, translation decimetres."""
    if coeffs.batch_size != 1:
        raise ValueError(
            f"save_coefficients writes one reconstruction, got a batch of {coeffs.batch_size}; "
            "select one with coeffs.index(i)"
        )
    arrays = {name: getattr(coeffs, name)[0].detach().cpu().numpy().astype(np.float32) for name in COEFFICIENT_FIELDS}
    arrays["flat"] = layout.join(coeffs)[0].detach().cpu().numpy().astype(np.float32)
    np.savez(
        path,
        **arrays,
        n_id=layout.n_id,
        n_exp=layout.n_exp,
        n_tex=layout.n_tex,
        sh_channels=layout.sh_channels,
        face_model=np.str_(face_model_name),
    )
    return Path(path)


def load_coefficients(path: str | Path) -> tuple[Coefficients, CoeffLayout, str]:
    """Read `save_coefficients`' file: (Coefficients with batch 1, CoeffLayout, face model name)."""
    with np.load(path) as data:
        missing = [k for k in (*COEFFICIENT_FIELDS, "n_id", "n_exp", "n_tex", "sh_channels") if k not in data.files]
        if missing:
            raise ValueError(f"{path} is not a face3d coefficient file: missing {missing}")
        layout = CoeffLayout(int(data["n_id"]), int(data["n_exp"]), int(data["n_tex"]), int(data["sh_channels"]))
        coeffs = Coefficients(
            **{name: torch.from_numpy(data[name].astype(np.float32)).unsqueeze(0) for name in COEFFICIENT_FIELDS}
        )
        name = str(data["face_model"]) if "face_model" in data.files else ""
    layout.join(coeffs)
    return coeffs, layout, name


def deep3d_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(68, 2) crop pixels in our convention -> the ``lm68`` values Deep3D's ``save_coeff`` writes.

    Deep3D projects with y up (``y_deep3d = H - y``) and saves ``H - 1 - y_deep3d``, which is our y minus
    one; x is the same in both.
    """
    points = np.asarray(landmarks, dtype=np.float64).copy()
    points[:, 1] -= 1.0
    return points


def save_deep3d_mat(path: str | Path, coeffs: Coefficients, landmarks: np.ndarray) -> Path:
    """Deep3DFaceRecon's per-image .mat: ``id``, ``exp``, ``tex``, ``angle``, ``gamma``, ``trans`` as
    (1, n) float32 and ``lm68`` (1, 68, 2) (see `deep3d_landmarks`).

    Monochrome lighting (9 coefficients) is written as the equivalent RGB ``gamma`` (27, channel-major),
    which is what Deep3D's renderer reads. Only meaningful for the BFM model: the same keys on another
    model's coefficients would be read as BFM coefficients.
    """
    if coeffs.batch_size != 1:
        raise ValueError(f"save_deep3d_mat writes one reconstruction, got a batch of {coeffs.batch_size}")
    gamma = coeffs.lighting.detach().cpu()
    if gamma.shape[1] == 9:
        gamma = gamma.repeat(1, 3)

    def row(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float32).reshape(1, -1)

    scipy.io.savemat(
        str(path),
        {
            "id": row(coeffs.identity),
            "exp": row(coeffs.expression),
            "tex": row(coeffs.albedo),
            "angle": row(coeffs.angles),
            "gamma": row(gamma),
            "trans": row(coeffs.translation),
            "lm68": deep3d_landmarks(landmarks).astype(np.float32)[None],
        },
    )
    return Path(path)
