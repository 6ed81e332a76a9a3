"""Jaw landmarks on the silhouette ("landmark marching", as 3DDFA and HPEN do it).

A detector puts the 17 jaw points (iBUG 0-16) on the face's outline in the picture. On a frontal face the
model's fixed jaw vertices lie on that outline, but once the face turns, the outline on the side turning
away moves forward onto the cheek and the fixed vertices fall behind it (hidden), while the side turning
towards the camera shows its outline further back. Matching the detected points to the fixed vertices then
pulls the jaw inwards on one side and outwards on the other, and identity bends to do it.

Here each jaw landmark on the sides of the face (0-4 and 12-16, where the outline runs up and down) owns a
horizontal line of candidate vertices: the mean face's vertices at the height of its fixed vertex (within
``band_mm``), on its side of the face and at least ``min_offset_mm`` from the midline. The points under the
jaw (5-11) keep their fixed vertices: there the outline runs sideways, so a horizontal line would carry them
along the jaw (25 px on a frontal 224-pixel face) instead of onto it. For a pose, the landmark is the candidate that lies furthest out in the
picture along the face's own left-right axis: the point of that slice of the surface on the silhouette.
The choice is a discrete argmax (no gradient through it); the chosen vertex's position carries the gradient,
as in landmark marching.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from renderers.camera import PinholeCamera, euler_to_rotation, model_to_camera, to_screen

JAW = tuple(range(17))
"""iBUG jaw landmarks, image left (subject's right, model -x) to image right."""
CHIN = 8

_DM_PER_MM = 0.01


@dataclass(frozen=True)
class ContourSettings:
    """Which vertices may carry a jaw landmark.

    band_mm:       half height of each landmark's horizontal line of candidates, in mm of the mean face.
    min_offset_mm: candidates lie at least this far from the face's midline (|x|), in mm, so the nose and
                   lips never become a jaw point.
    marched:       the jaw landmarks that move onto the silhouette; the others keep their fixed vertices.
    """

    band_mm: float = 3.0
    min_offset_mm: float = 20.0
    marched: tuple[int, ...] = (0, 1, 2, 3, 4, 12, 13, 14, 15, 16)

    def __post_init__(self) -> None:
        if not self.band_mm > 0:
            raise ValueError(f"ContourSettings.band_mm must be > 0, got {self.band_mm!r}")
        if self.min_offset_mm < 0:
            raise ValueError(f"ContourSettings.min_offset_mm must be >= 0, got {self.min_offset_mm!r}")
        if any(j not in JAW or j == CHIN for j in self.marched):
            raise ValueError(
                f"ContourSettings.marched holds jaw landmarks 0-16 other than the chin (8), got {self.marched}"
            )


@dataclass(frozen=True)
class JawContour:
    """Candidate vertices of the 17 jaw landmarks.

    candidates: (17, K) long vertex ids; rows shorter than K are padded with their landmark's fixed vertex.
    side:       (17,) float: -1 for landmarks on the model's -x side (0-7), +1 for the +x side (9-16), 0 for those
                that keep their fixed vertex (the chin, and any not marched; their rows hold only that vertex).
    """

    candidates: torch.Tensor
    side: torch.Tensor

    def to(self, device: torch.device | str) -> JawContour:
        return JawContour(self.candidates.to(device), self.side.to(device))


def jaw_contour(
    mean_shape: torch.Tensor, landmark_ids: torch.Tensor, settings: ContourSettings = ContourSettings()
) -> JawContour:
    """The candidate lines of a face model (module docstring).

    mean_shape: (V, 3) model-space vertices in decimetres (+x the subject's left, +y up); landmark_ids: (68,).
    Each line holds its landmark's fixed vertex, so a frontal face can keep it.
    """
    if mean_shape.ndim != 2 or mean_shape.shape[1] != 3:
        raise ValueError(f"mean_shape must be (V, 3) vertices, got {tuple(mean_shape.shape)}")
    if landmark_ids.numel() < len(JAW):
        raise ValueError(f"landmark_ids must hold the 68 iBUG landmark vertices, got {landmark_ids.numel()}")
    shape = mean_shape.detach().float().cpu()
    ids = landmark_ids.detach().long().cpu()
    band = settings.band_mm * _DM_PER_MM
    offset = settings.min_offset_mm * _DM_PER_MM
    rows, sides = [], []
    for j in JAW:
        own = int(ids[j])
        if j not in settings.marched:
            rows.append(torch.tensor([own]))
            sides.append(0.0)
            continue
        side = -1.0 if j < CHIN else 1.0
        near = ((shape[:, 1] - shape[own, 1]).abs() <= band) & (side * shape[:, 0] >= offset)
        found = torch.nonzero(near).flatten()
        rows.append(torch.cat([torch.tensor([own]), found[found != own]]))
        sides.append(side)
    width = max(len(r) for r in rows)
    candidates = torch.stack([torch.cat([r, r[:1].expand(width - len(r))]) for r in rows])
    return JawContour(candidates, torch.tensor(sides))


def march(points: torch.Tensor, axis: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Pick each line's outermost candidate: (B, L, K, 2) projected candidates, (B, 2) the image direction of
    the face's +x axis, (L,) side (-1, +1, or 0 for lines of one vertex) -> (B, L) index into K of the candidate
    furthest along ``side * axis`` (ties: the first, i.e. the fixed vertex)."""
    outward = (points * axis[:, None, None, :]).sum(-1) * side[None, :, None]
    return outward.argmax(-1)


def image_axis(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) Euler angles -> (B, 2) the image direction (x right, y down) of the face's +x axis, not normalised:
    the first column of the rotation with y flipped as `renderers.camera.model_to_camera` flips it."""
    rotation = euler_to_rotation(angles)
    return torch.stack([rotation[:, 0, 0], -rotation[:, 1, 0]], dim=-1)


def contour_landmarks(
    landmarks: torch.Tensor,
    vertices_camera: torch.Tensor,
    angles: torch.Tensor,
    contour: JawContour,
    camera: PinholeCamera,
) -> torch.Tensor:
    """``landmarks`` (B, 68, 2) with the jaw points (0-16) moved onto the silhouette.

    vertices_camera: (B, V, 3) posed vertices in camera space (`renderers.mesh_renderer.RenderOutput`);
    angles: (B, 3) the pose's Euler angles.
    """
    batch = vertices_camera.shape[0]
    lines, width = contour.candidates.shape
    flat = contour.candidates.reshape(-1)
    points = to_screen(vertices_camera[:, flat], camera)[..., :2].reshape(batch, lines, width, 2)
    with torch.no_grad():
        chosen = march(points, image_axis(angles), contour.side.to(points))
    jaw = points.gather(2, chosen[:, :, None, None].expand(batch, lines, 1, 2)).squeeze(2)
    return torch.cat([jaw, landmarks[:, lines:]], dim=1)


def project_contour_landmarks(renderer, coeffs, contour: JawContour) -> torch.Tensor:
    """(B, 68, 2) landmark pixels of ``coeffs`` with the jaw on the silhouette, without rasterizing (the
    counterpart of `MeshRenderer.project_landmarks`)."""
    model = renderer.face_model
    needed = torch.cat([contour.candidates.reshape(-1), model.landmark_ids[len(JAW) :].to(contour.candidates)])
    vertices = model.shape(coeffs)[:, needed]
    camera_space = model_to_camera(renderer.pose(vertices, coeffs), renderer.camera.camera_distance)
    lines, width = contour.candidates.shape
    local = JawContour(torch.arange(lines * width, device=needed.device).reshape(lines, width), contour.side)
    rest = to_screen(camera_space[:, lines * width :], renderer.camera)[..., :2]
    placeholder = torch.cat([rest.new_zeros(rest.shape[0], lines, 2), rest], dim=1)
    return contour_landmarks(placeholder, camera_space, coeffs.angles, local, renderer.camera)
