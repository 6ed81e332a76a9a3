"""The bundled ICT-FaceKit UV layout for a face model loaded from it (detail maps of HRN live in this UV space)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from face_model.model import FaceModel


def ict_uv_tables(face_model: FaceModel, path: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, 2) uvs (OBJ convention) and (F, 3) uv ids per triangle of ``face_model``'s triangles.

    The ICT loader keeps the triangles whose vertices all lie in its region; the same rows of the file's uv
    table are kept. A model whose triangles are not the file's gets a clear error instead of wrong UVs.
    """
    from face_model.ict import default_ict_path

    path = Path(path) if path is not None else default_ict_path()
    with np.load(path) as data:
        if not {"tri", "uv", "tri_uv"} <= set(data.files):
            raise ValueError(f"{path} has no UV layout (keys 'uv' and 'tri_uv'); use the bundled ICT model")
        tri, uv, tri_uv = data["tri"].astype(np.int64), data["uv"].astype(np.float32), data["tri_uv"].astype(np.int64)
    keep = (tri < face_model.n_vertices).all(axis=1)
    triangles = face_model.triangles.cpu().numpy()
    if tri[keep].shape != triangles.shape or not np.array_equal(tri[keep], triangles):
        raise ValueError(
            f"face model {face_model.name!r} is not the ICT-FaceKit mesh of {path}: HRN's detail maps need its UV "
            "layout (use face_model.name=ict)"
        )
    return torch.from_numpy(uv), torch.from_numpy(tri_uv[keep])
