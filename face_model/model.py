"""The differentiable 3D morphable face model.

A `FaceModel` holds its mean, bases, triangles and landmark ids as buffers (so ``.to(device)`` and
checkpoints carry them) and does no I/O: build one with `FaceModel.from_file` or the loaders in
`face_model.ict` / `face_model.bfm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from face_model.coefficients import Coefficients, CoeffLayout
from geometry.normals import vertex_normals

N_LANDMARKS = 68

# iBUG 68-point indices used to form the 5 alignment points.
LEFT_EYE_68 = tuple(range(36, 42))  # consecutive, as `five_points_from_68` relies on
RIGHT_EYE_68 = tuple(range(42, 48))
NOSE_TIP_68 = 30
MOUTH_CORNERS_68 = (48, 54)


@dataclass(frozen=True)
class FaceMesh:
    """Face geometry and reflectance for a batch of coefficients (before pose).

    vertices: (B, V, 3) model space, decimetres
    albedo:   (B, V, 3) linear RGB reflectance, nominally in [0, 1]
    """

    vertices: torch.Tensor
    albedo: torch.Tensor


def five_points_from_68(points: torch.Tensor) -> torch.Tensor:
    """(..., 68, D) landmarks -> (..., 5, D): eye centres, nose tip, mouth corners (image left first)."""
    # Slices, not list indices: a list index becomes a host tensor copied to the device, a sync on CUDA
    # in every training step with the perceptual loss. The eyes are consecutive points.
    left, right = slice(LEFT_EYE_68[0], LEFT_EYE_68[-1] + 1), slice(RIGHT_EYE_68[0], RIGHT_EYE_68[-1] + 1)
    return torch.stack(
        [
            points[..., left, :].mean(-2),
            points[..., right, :].mean(-2),
            points[..., NOSE_TIP_68, :],
            points[..., MOUTH_CORNERS_68[0], :],
            points[..., MOUTH_CORNERS_68[1], :],
        ],
        dim=-2,
    )


def _check(name: str, tensor: torch.Tensor, shape: tuple) -> None:
    if tensor.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, tensor.shape)):
        raise ValueError(
            f"face model array {name!r} has shape {tuple(tensor.shape)}, expected {shape} (None = any size)"
        )


class FaceModel(nn.Module):
    """Linear shape, expression and albedo model with triangles and 68 landmark vertex ids.

    Args:
        mean_shape: (V, 3) neutral mean face in model space (decimetres, centred).
        id_basis: (n_id, V, 3) identity modes scaled by their standard deviation (prior N(0, 1)).
        exp_basis: (n_exp, V, 3) expression modes, likewise scaled.
        albedo_mean: (V, 3) mean reflectance in [0, 1].
        albedo_basis: (n_tex, V, 3) albedo modes, likewise scaled.
        triangles: (F, 3) vertex ids, counter-clockwise seen from the front (normals point to +z).
        landmark_ids: (68,) vertex ids of the iBUG 68 landmarks.
        skin_mask: (V,) bool, cheek/forehead/nose skin used by the texture-flatness loss.
        name: a short identifier of the model ("ict", "bfm09").
        sh_channels: 3 for RGB lighting (27 coefficients), 1 for monochrome (9).
    """

    mean_shape: torch.Tensor
    id_basis: torch.Tensor
    exp_basis: torch.Tensor
    albedo_mean: torch.Tensor
    albedo_basis: torch.Tensor
    triangles: torch.Tensor
    landmark_ids: torch.Tensor
    skin_mask: torch.Tensor

    def __init__(
        self,
        mean_shape: torch.Tensor,
        id_basis: torch.Tensor,
        exp_basis: torch.Tensor,
        albedo_mean: torch.Tensor,
        albedo_basis: torch.Tensor,
        triangles: torch.Tensor,
        landmark_ids: torch.Tensor,
        skin_mask: torch.Tensor,
        name: str = "custom",
        sh_channels: int = 3,
    ) -> None:
        super().__init__()
        n_vertices = mean_shape.shape[0]
        _check("mean_shape", mean_shape, (None, 3))
        _check("id_basis", id_basis, (None, n_vertices, 3))
        _check("exp_basis", exp_basis, (None, n_vertices, 3))
        _check("albedo_mean", albedo_mean, (n_vertices, 3))
        _check("albedo_basis", albedo_basis, (None, n_vertices, 3))
        _check("triangles", triangles, (None, 3))
        _check("landmark_ids", landmark_ids, (N_LANDMARKS,))
        _check("skin_mask", skin_mask, (n_vertices,))
        for name_, ids in (("triangles", triangles), ("landmark_ids", landmark_ids)):
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n_vertices):
                raise ValueError(f"{name_} index vertices outside [0, {n_vertices})")
        self.name = name
        self.layout = CoeffLayout(id_basis.shape[0], exp_basis.shape[0], albedo_basis.shape[0], sh_channels)
        floats = dict(dtype=torch.float32)
        self.register_buffer("mean_shape", mean_shape.to(**floats))
        self.register_buffer("id_basis", id_basis.to(**floats))
        self.register_buffer("exp_basis", exp_basis.to(**floats))
        self.register_buffer("albedo_mean", albedo_mean.to(**floats))
        self.register_buffer("albedo_basis", albedo_basis.to(**floats))
        self.register_buffer("triangles", triangles.to(torch.long))
        self.register_buffer("landmark_ids", landmark_ids.to(torch.long))
        self.register_buffer("skin_mask", skin_mask.to(torch.bool))

    @classmethod
    def from_file(cls, path: str | Path, **options) -> FaceModel:
        """Load a face model file: the bundled ICT ``.npz`` layout or Deep3D's ``BFM_model_front.mat``.

        ``options`` go to the matching loader (`face_model.ict.load_ict` or `face_model.bfm.load_bfm`).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"face model file {path} not found. The bundled ICT model needs no file "
                "(use face_model.load_face_model('ict')); for BFM09 run `face3d prepare-bfm --bfm-dir DIR` "
                "to build BFM_model_front.mat (see README, 'Face models')."
            )
        if path.suffix == ".npz":
            from face_model.ict import load_ict

            return load_ict(path, **options)
        if path.suffix == ".mat":
            from face_model.bfm import load_bfm

            return load_bfm(path, **options)
        raise ValueError(f"unknown face model file type {path.suffix!r} for {path}: expected .npz (ICT) or .mat (BFM)")

    @property
    def n_vertices(self) -> int:
        return self.mean_shape.shape[0]

    def shape(self, coeffs: Coefficients) -> torch.Tensor:
        """(B, V, 3) model-space vertices for identity + expression coefficients."""
        width = 3 * self.n_vertices
        flat = (
            self.mean_shape.reshape(1, width)
            + coeffs.identity @ self.id_basis.reshape(self.layout.n_id, width)
            + coeffs.expression @ self.exp_basis.reshape(self.layout.n_exp, width)
        )
        return flat.reshape(-1, self.n_vertices, 3)

    def albedo(self, coeffs: Coefficients) -> torch.Tensor:
        """(B, V, 3) per-vertex reflectance."""
        width = 3 * self.n_vertices
        flat = self.albedo_mean.reshape(1, width) + coeffs.albedo @ self.albedo_basis.reshape(self.layout.n_tex, width)
        return flat.reshape(-1, self.n_vertices, 3)

    def forward(self, coeffs: Coefficients) -> FaceMesh:
        return FaceMesh(vertices=self.shape(coeffs), albedo=self.albedo(coeffs))

    def normals(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) vertices -> (B, V, 3) unit vertex normals."""
        return vertex_normals(vertices, self.triangles)

    def landmarks(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, V, D) per-vertex values -> (B, 68, D) at the landmark vertices."""
        return vertices[:, self.landmark_ids]

    def five_point_template(self) -> torch.Tensor:
        """(5, 3) eye centres, nose tip and mouth corners of the mean face, for image alignment."""
        return five_points_from_68(self.mean_shape[self.landmark_ids])

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, vertices={self.n_vertices}, triangles={self.triangles.shape[0]}, layout={self.layout}"
        )
