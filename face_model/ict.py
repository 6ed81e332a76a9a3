"""The bundled default face model: ICT-FaceKit Light (MIT), face area, with a project-made albedo prior.

What comes from ICT-FaceKit (``assets/ict/``, see its LICENSE and PROVENANCE.md): neutral mean, 100
identity PCA modes already scaled to N(0, 1), 53 ARKit-style expression blendshapes, triangles, the
68 landmark vertex ids. What is ours:

* **Units and frame**: centimetres -> decimetres (Deep3D's BFM unit) and centred on the vertex mean,
  so the scene conventions of `renderers.camera` (camera 10 units away, focal 1015) frame the face as
  they frame BFM.
* **Region**: ``"narrow"`` (default) keeps the 6,706-vertex face without ears and neck, the part the
  photometric loss can trust; ``"full"`` keeps all 9,409 face-area vertices.
* **Expression prior**: blendshape weights are treated as i.i.d. N(0, sigma^2) with
  ``expression_std`` (default 0.3), and the resulting Gaussian over vertex offsets is written in its
  principal axes (``expression_basis="pca"``, default; modes sorted by variance, coefficients N(0, 1)),
  or kept as the blendshapes themselves scaled by sigma (``"blendshapes"``, coefficient c means weight
  sigma * c; the modes are not orthogonal).
* **Albedo prior**: see `face_model.albedo_prior` (mean skin tone with lip and brow colour, plus
  Laplacian-eigenvector colour modes).
* **Skin region** for the texture-flatness loss: face vertices away from the eyes, brows and lips.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from matplotlib.path import Path as Polygon

from face_model.albedo_prior import AlbedoPriorConfig, albedo_basis
from face_model.model import FaceModel

CM_TO_DM = 0.1

SKIN_TONE = (0.70, 0.52, 0.44)
LIP_TONE = (0.60, 0.34, 0.34)
BROW_TONE = (0.40, 0.30, 0.25)

_OUTER_LIP = list(range(48, 60))
_INNER_LIP = list(range(60, 68))
_BROWS = (list(range(17, 22)), list(range(22, 27)))
_EYES = (list(range(36, 42)), list(range(42, 48)))

ICT_MAX_ID = 100
ICT_MAX_EXP = 53


def default_ict_path() -> Path:
    """Path of the bundled ICT-FaceKit npz (package data)."""
    return Path(str(resources.files("face_model") / "assets" / "ict" / "ict_face.npz"))


def _distance_to_polyline(points: np.ndarray, polyline: np.ndarray, closed: bool) -> np.ndarray:
    """(N, 3) points, (K, 3) polyline vertices -> (N,) distance to the nearest segment."""
    starts = polyline if closed else polyline[:-1]
    ends = np.roll(polyline, -1, axis=0) if closed else polyline[1:]
    seg = ends - starts
    rel = points[:, None, :] - starts[None]
    t = np.clip(np.einsum("nkd,kd->nk", rel, seg) / np.maximum((seg * seg).sum(-1), 1e-12), 0.0, 1.0)
    closest = starts[None] + t[..., None] * seg[None]
    return np.linalg.norm(points[:, None, :] - closest, axis=-1).min(axis=1)


def _feature_weights(vertices_cm: np.ndarray, landmarks_cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft (V,) weights of the lips and the brows on the mean face (centimetres)."""
    outer_lip = landmarks_cm[_OUTER_LIP]
    inside = Polygon(outer_lip[:, :2]).contains_points(vertices_cm[:, :2])
    # Only the front of the face can be lip: the xy polygon also covers the chin's underside.
    inside &= vertices_cm[:, 2] > outer_lip[:, 2].min() - 1.0
    d_lip = _distance_to_polyline(vertices_cm, outer_lip, closed=True)
    lips = np.where(inside, 1.0, np.exp(-0.5 * (d_lip / 0.15) ** 2))
    d_brow = np.minimum(*(_distance_to_polyline(vertices_cm, landmarks_cm[b], closed=False) for b in _BROWS))
    brows = np.exp(-0.5 * (d_brow / 0.35) ** 2)
    return lips, brows


def _skin_mask(vertices_cm: np.ndarray, landmarks_cm: np.ndarray) -> np.ndarray:
    """(V,) True on cheeks, forehead, nose and chin; False near eyes, brows and lips."""
    keep = np.ones(len(vertices_cm), dtype=bool)
    for ids, radius in ((_EYES[0], 1.0), (_EYES[1], 1.0), (_BROWS[0], 0.8), (_BROWS[1], 0.8)):
        keep &= _distance_to_polyline(vertices_cm, landmarks_cm[ids], closed=ids in _EYES) > radius
    keep &= _distance_to_polyline(vertices_cm, landmarks_cm[_OUTER_LIP], closed=True) > 0.6
    keep &= ~Polygon(landmarks_cm[_OUTER_LIP][:, :2]).contains_points(vertices_cm[:, :2]) | (
        vertices_cm[:, 2] < landmarks_cm[_OUTER_LIP][:, 2].min() - 1.0
    )
    return keep


def expression_modes(blendshapes: np.ndarray, std: float, n_modes: int, kind: str) -> np.ndarray:
    """(53, V, 3) blendshape offsets -> (n_modes, V, 3) expression modes with N(0, 1) coefficients."""
    n_shapes = blendshapes.shape[0]
    if kind == "blendshapes":
        return (std * blendshapes[:n_modes]).astype(np.float32)
    if kind != "pca":
        raise ValueError(f"expression_basis must be 'pca' or 'blendshapes', got {kind!r}")
    flat = blendshapes.reshape(n_shapes, -1).astype(np.float64)
    # Offsets w @ B with w ~ N(0, std^2 I) have covariance std^2 B^T B; its principal axes are the right
    # singular vectors of B, with standard deviations std * singular values.
    _, singular, vt = np.linalg.svd(flat, full_matrices=False)
    modes = std * singular[:, None] * vt
    flip = np.sign(modes[np.arange(n_shapes), np.abs(modes).argmax(axis=1)])
    modes *= flip[:, None]
    return modes[:n_modes].reshape(n_modes, blendshapes.shape[1], 3).astype(np.float32)


def load_ict(
    path: str | Path | None = None,
    n_id: int = 80,
    n_exp: int = ICT_MAX_EXP,
    n_tex: int = 80,
    region: str = "narrow",
    sh_channels: int = 3,
    expression_basis: str = "pca",
    expression_std: float = 0.3,
    albedo_prior: AlbedoPriorConfig = AlbedoPriorConfig(),
) -> FaceModel:
    """Build a `FaceModel` from the ICT-FaceKit npz (the bundled one when ``path`` is None)."""
    path = Path(path) if path is not None else default_ict_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"ICT face model {path} not found; the bundled copy ships with the package (reinstall with `make setup`)"
        )
    if not 0 <= n_id <= ICT_MAX_ID:
        raise ValueError(f"n_id must be in [0, {ICT_MAX_ID}] for ICT-FaceKit, got {n_id}")
    if not 0 <= n_exp <= ICT_MAX_EXP:
        raise ValueError(f"n_exp must be in [0, {ICT_MAX_EXP}] for ICT-FaceKit, got {n_exp}")
    if region not in ("narrow", "full"):
        raise ValueError(f"region must be 'narrow' or 'full', got {region!r}")

    with np.load(path) as data:
        required = ("mean", "id_basis", "exp_basis", "tri", "landmarks68", "narrow_vertex_count")
        missing = [k for k in required if k not in data.files]
        if missing:
            raise ValueError(f"{path} is not an ICT-FaceKit face npz: missing keys {missing}")
        mean = data["mean"].astype(np.float64)
        id_basis = data["id_basis"][:n_id].astype(np.float32)
        blendshapes = data["exp_basis"].astype(np.float32)
        triangles = data["tri"].astype(np.int64)
        landmarks = data["landmarks68"].astype(np.int64)
        n_keep = int(data["narrow_vertex_count"]) if region == "narrow" else mean.shape[0]

    mean, id_basis, blendshapes = mean[:n_keep], id_basis[:, :n_keep], blendshapes[:, :n_keep]
    triangles = triangles[(triangles < n_keep).all(axis=1)]
    lips, brows = _feature_weights(mean, mean[landmarks])
    skin = _skin_mask(mean, mean[landmarks])

    albedo_mean = np.broadcast_to(np.asarray(SKIN_TONE), mean.shape).copy()
    for weight, tone in ((lips, LIP_TONE), (brows, BROW_TONE)):
        albedo_mean += weight[:, None] * (np.asarray(tone) - albedo_mean)

    mean_dm = (mean - mean.mean(axis=0)) * CM_TO_DM
    return FaceModel(
        mean_shape=torch.from_numpy(mean_dm.astype(np.float32)),
        id_basis=torch.from_numpy(id_basis * CM_TO_DM),
        exp_basis=torch.from_numpy(expression_modes(blendshapes, expression_std, n_exp, expression_basis) * CM_TO_DM),
        albedo_mean=torch.from_numpy(albedo_mean.astype(np.float32)),
        albedo_basis=torch.from_numpy(albedo_basis(mean_dm, triangles, n_tex, albedo_prior)),
        triangles=torch.from_numpy(triangles),
        landmark_ids=torch.from_numpy(landmarks),
        skin_mask=torch.from_numpy(skin),
        name="ict",
        sh_channels=sh_channels,
    )


# ------------------------------------------------------------------------------ head geometry for rendering


@dataclass(frozen=True, eq=False)
class ICTHeadGeometry:
    """The whole ICT face area plus the eyeballs, driven by a face model's own coefficients.

    For rendering pictures that show more than the model's region (no holes at the eyes, ears and neck):
    vertices ``[0, n_face)`` are exactly the face model's (same frame, same bases), ``[n_face, n_area)`` the
    rest of the 9,409-vertex face area and ``[n_area, V)`` the two eyeballs (left eye first, as stored).

    mean_shape: (V, 3) neutral shape, decimetres, in the face model's frame
    id_basis:   (n_id, V, 3) the face model's identity modes continued onto every vertex
    exp_basis:  (n_exp, V, 3) the face model's expression modes continued onto every vertex
    triangles:  (F, 3) face-area triangles, then the eyeball triangles
    eye_triangles: number of eyeball triangles (the last rows of ``triangles``)
    n_face:     vertices shared with the face model
    n_area:     vertices of the face area (9,409)
    landmark_ids: (68,) the face model's landmark vertex ids (they lie in the shared part)
    """

    mean_shape: torch.Tensor
    id_basis: torch.Tensor
    exp_basis: torch.Tensor
    triangles: torch.Tensor
    eye_triangles: int
    n_face: int
    n_area: int
    landmark_ids: torch.Tensor

    @property
    def n_vertices(self) -> int:
        return self.mean_shape.shape[0]

    def shape(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """(B, n_id) identity and (B, n_exp) expression coefficients -> (B, V, 3) model-space vertices."""
        width = 3 * self.n_vertices
        flat = (
            self.mean_shape.reshape(1, width)
            + identity @ self.id_basis.reshape(-1, width)
            + expression @ self.exp_basis.reshape(-1, width)
        )
        return flat.reshape(-1, self.n_vertices, 3)

    def to(self, device: torch.device | str) -> ICTHeadGeometry:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return ICTHeadGeometry(**moved)


def _continue_basis(
    model_basis: np.ndarray, source_part: np.ndarray, source_rest: list[np.ndarray], what: str, tolerance_dm: float
) -> list[np.ndarray]:
    """Write each mode of ``model_basis`` (n, V_face, 3) as a combination of the source modes restricted to
    the face part (k, V_face, 3), and apply the same combination to the other parts (k, V_i, 3).

    Every ICT model basis is such a combination (identity modes are a selection, PCA expression modes a
    rotation of the blendshapes), so least squares recovers it exactly up to float16 rounding of the source.
    """
    if model_basis.shape[0] == 0:
        return [np.zeros((0, *rest.shape[1:]), np.float32) for rest in source_rest]
    a = source_part.reshape(source_part.shape[0], -1).astype(np.float64).T  # (3 V_face, k)
    b = model_basis.reshape(model_basis.shape[0], -1).astype(np.float64).T  # (3 V_face, n)
    weights, *_ = np.linalg.lstsq(a, b, rcond=None)  # (k, n)
    residual = float(np.abs(a @ weights - b).max())
    if residual > tolerance_dm:
        raise ValueError(
            f"the face model's {what} basis is not made of the bundled ICT-FaceKit modes (residual "
            f"{residual:.2g} dm); full-head rendering needs a model built by face_model.ict.load_ict"
        )
    return [np.einsum("kn,kvd->nvd", weights, rest.astype(np.float64)).astype(np.float32) for rest in source_rest]


def ict_head_geometry(face_model: FaceModel, path: str | Path | None = None) -> ICTHeadGeometry:
    """`ICTHeadGeometry` of an ICT `FaceModel` (any region, basis sizes and expression basis of `load_ict`).

    The model's frame offset and its bases are recovered from its own buffers, so the extra vertices move
    exactly as the model's would if its region were larger. Raises ValueError for a model that is not built
    from the bundled (or given) ICT npz.
    """
    path = Path(path) if path is not None else default_ict_path()
    with np.load(path) as data:
        if "eyes_mean" not in data.files:
            raise ValueError(f"{path} has no eyeballs (eyes_* arrays); full-head rendering needs them")
        mean_cm = data["mean"].astype(np.float64)
        id_cm = data["id_basis"].astype(np.float32)
        exp_cm = data["exp_basis"].astype(np.float32)
        triangles = data["tri"].astype(np.int64)
        eyes_cm = data["eyes_mean"].astype(np.float64)
        eyes_id = data["eyes_id_basis"].astype(np.float32)
        eyes_exp = data["eyes_exp_basis"].astype(np.float32)
        eyes_tri = data["eyes_tri"].astype(np.int64)
    n_face, n_area = face_model.n_vertices, mean_cm.shape[0]
    if n_face > n_area:
        raise ValueError(f"the face model has {n_face} vertices, more than the ICT face area's {n_area}")
    model_mean = face_model.mean_shape.detach().cpu().double().numpy()
    offset = (mean_cm[:n_face] * CM_TO_DM - model_mean).mean(axis=0)
    if np.abs(mean_cm[:n_face] * CM_TO_DM - offset - model_mean).max() > 1e-4:
        raise ValueError(
            "the face model's mean shape is not the bundled ICT-FaceKit mean; full-head rendering "
            "needs a model built by face_model.ict.load_ict"
        )
    # float16 source bases: 5e-4 cm rounding, i.e. 5e-5 dm per mode and a little more once combined.
    parts = []
    for name, model_basis, area, eyes in (
        ("identity", face_model.id_basis, id_cm, eyes_id),
        ("expression", face_model.exp_basis, exp_cm, eyes_exp),
    ):
        model_basis = model_basis.detach().cpu().numpy()
        area_dm, eyes_dm = area * CM_TO_DM, eyes * CM_TO_DM
        parts.append(
            _continue_basis(model_basis, area_dm[:, :n_face], [area_dm[:, n_face:], eyes_dm], name, tolerance_dm=2e-3)
        )
    (id_rest, id_eyes), (exp_rest, exp_eyes) = parts
    mean = np.concatenate([model_mean, mean_cm[n_face:] * CM_TO_DM - offset, eyes_cm * CM_TO_DM - offset])
    as_tensor = lambda array: torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))  # noqa: E731
    return ICTHeadGeometry(
        mean_shape=as_tensor(mean),
        id_basis=torch.cat([face_model.id_basis.detach().cpu().float(), as_tensor(id_rest), as_tensor(id_eyes)], 1),
        exp_basis=torch.cat([face_model.exp_basis.detach().cpu().float(), as_tensor(exp_rest), as_tensor(exp_eyes)], 1),
        triangles=torch.from_numpy(np.concatenate([triangles, eyes_tri + n_area])),
        eye_triangles=len(eyes_tri),
        n_face=n_face,
        n_area=n_area,
        landmark_ids=face_model.landmark_ids.detach().cpu().clone(),
    )
