"""3D morphable face models: the coefficient layout, the differentiable model and its loaders."""

from __future__ import annotations

from pathlib import Path

from errors import InvalidInputError
from face_model.coefficients import Coefficients, CoeffLayout
from face_model.model import FaceMesh, FaceModel, five_points_from_68

__all__ = ["CoeffLayout", "Coefficients", "FaceMesh", "FaceModel", "five_points_from_68", "load_face_model"]

FACE_MODELS = ("ict", "bfm")


def load_face_model(name: str = "ict", path: str | Path | None = None, **options) -> FaceModel:
    """Build a face model by name: ``"ict"`` (bundled ICT-FaceKit, MIT) or ``"bfm"`` (user-supplied BFM09,
    ``path`` = BFM_model_front.mat). ``options`` go to the loader (basis sizes, sh_channels, ...)."""
    if name == "ict":
        from face_model.ict import load_ict

        return load_ict(path, **options)
    if name == "bfm":
        from face_model.bfm import load_bfm

        if path is None:
            raise InvalidInputError(
                "the BFM09 model is not bundled (licence): pass path=.../BFM_model_front.mat, "
                "built by `face3d prepare-bfm --bfm-dir DIR`"
            )
        return load_bfm(path, **options)
    raise InvalidInputError(f"unknown face model {name!r}; choose one of {FACE_MODELS}")
