"""The (5, 2) alignment template: where the eye centres, nose tip and mouth corners land in the crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from preprocessing.align import template_from_face_model


def resolve_template(source: str, crop_size: int = 224) -> np.ndarray:
    """(5, 2) float64 template in crop pixels from a face model name, a face model file, or a .npy."""
    from renderers.camera import PinholeCamera

    path = Path(source).expanduser()
    if path.suffix == ".npy":
        if not path.is_file():
            raise FileNotFoundError(f"template file {path} not found")
        template = np.load(path).astype(np.float64)
        if template.shape != (5, 2):
            raise ValueError(f"template {path} has shape {template.shape}, expected (5, 2) crop pixels")
        return template
    camera = PinholeCamera().resized(crop_size, crop_size)
    if path.suffix in (".npz", ".mat"):
        from face_model.model import FaceModel

        return template_from_face_model(FaceModel.from_file(path), camera)
    from face_model import load_face_model

    # The template needs only the mean face and its landmarks: for ICT, skip the bases (the expression
    # PCA alone is an SVD of seconds); the mean and landmark ids do not depend on these options.
    options = dict(n_id=0, n_exp=1, n_tex=0, expression_basis="blendshapes") if source == "ict" else {}
    return template_from_face_model(load_face_model(source, **options), camera)
