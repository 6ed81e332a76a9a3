"""Jaw landmarks on the silhouette, checked on a cylinder whose outline is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from reconstruction.contour import ContourSettings, contour_landmarks, jaw_contour, march
from renderers.camera import PinholeCamera

RADIUS = 0.7  # dm
HEIGHTS = torch.linspace(-0.8, 0.3, 17)  # one ring per jaw landmark
N_ANGLES = 720


def cylinder() -> tuple[torch.Tensor, torch.Tensor]:
    """(V, 3) rings of a vertical cylinder (axis y) and (68,) landmark ids: jaw landmark j on ring j at the
    cylinder's outermost point on its side (-x for 0-7, +x for 9-16, the front for the chin), the others on
    the front of ring 0."""
    phi = torch.arange(N_ANGLES) * (2 * math.pi / N_ANGLES)  # 0 = +z (the front), pi/2 = +x
    rings = [torch.stack([RADIUS * phi.sin(), torch.full_like(phi, float(h)), RADIUS * phi.cos()], -1) for h in HEIGHTS]
    vertices = torch.cat(rings)
    jaw = [j * N_ANGLES + (3 * N_ANGLES // 4 if j < 8 else N_ANGLES // 4 if j > 8 else 0) for j in range(17)]
    return vertices, torch.tensor(jaw + [0] * 51)


def posed_camera_space(vertices: torch.Tensor, yaw: float, distance: float) -> torch.Tensor:
    """Turn about the vertical axis by ``yaw`` and move into OpenCV camera space (x right, y down, z depth),
    written out here rather than taken from renderers.camera."""
    c, s = math.cos(yaw), math.sin(yaw)
    x, y, z = vertices.unbind(-1)
    xr, zr = c * x + s * z, -s * x + c * z
    return torch.stack([xr, -y, distance - zr], -1)[None]


@pytest.mark.parametrize("yaw_deg", [0.0, 25.0, -50.0])
def test_marched_jaw_lies_on_the_cylinder_s_outline(yaw_deg):
    vertices, landmark_ids = cylinder()
    contour = jaw_contour(vertices, landmark_ids, ContourSettings(band_mm=1.0, min_offset_mm=5.0))
    camera = PinholeCamera()
    cam = posed_camera_space(vertices, math.radians(yaw_deg), camera.camera_distance)
    fixed = cam[:, landmark_ids]
    fixed_px = fixed[..., :2] / fixed[..., 2:] * camera.focal + torch.tensor(camera.principal_point)
    angles = torch.tensor([[0.0, math.radians(yaw_deg), 0.0]])
    marched = contour_landmarks(fixed_px, cam, angles, contour, camera)[0]

    # A ray from the camera grazes a cylinder of radius r at distance D where sin(angle) = r / D.
    d = camera.camera_distance
    outline = camera.focal * RADIUS / math.sqrt(d * d - RADIUS * RADIUS)
    cx = camera.principal_point[0]
    step = camera.focal * RADIUS * (2 * math.pi / N_ANGLES) ** 2 / d  # sampling error of the rings, generous
    for j in ContourSettings().marched:
        expected = cx - outline if j < 8 else cx + outline
        assert marched[j, 0].item() == pytest.approx(expected, abs=max(step, 0.05)), j
    # Landmarks not marched (under the jaw, the chin, the rest of the face) keep their fixed vertices.
    kept = [j for j in range(68) if j not in ContourSettings().marched]
    torch.testing.assert_close(marched[kept], fixed_px[0, kept])
    if yaw_deg:
        # Turned, the fixed vertices leave the outline; the marched points do not.
        assert (fixed_px[0, 0, 0] - (cx - outline)).abs() > 1.0


def test_march_takes_the_outermost_candidate_on_each_side():
    points = torch.tensor([[[[0.0, 0.0], [-2.0, 5.0], [-1.0, 0.0]], [[0.0, 0.0], [3.0, 0.0], [1.0, 9.0]]]])
    chosen = march(points, torch.tensor([[1.0, 0.0]]), torch.tensor([-1.0, 1.0]))
    assert chosen.tolist() == [[1, 1]]
    # Turned upside down (the face's +x axis points image-left) the sides swap.
    chosen = march(points, torch.tensor([[-1.0, 0.0]]), torch.tensor([-1.0, 1.0]))
    assert chosen.tolist() == [[0, 0]]


def test_frontal_cylinder_keeps_the_fixed_vertices_and_gradients_reach_the_shape():
    vertices, landmark_ids = cylinder()
    contour = jaw_contour(vertices, landmark_ids, ContourSettings(band_mm=1.0, min_offset_mm=5.0))
    assert contour.candidates.shape[0] == 17 and (contour.candidates[:, 0] == landmark_ids[:17]).all()
    assert contour.side.tolist() == [-1.0] * 5 + [0.0] * 7 + [1.0] * 5
    cam = posed_camera_space(vertices, 0.0, 10.0).requires_grad_(True)
    marched = contour_landmarks(torch.zeros(1, 68, 2), cam, torch.zeros(1, 3), contour, PinholeCamera())
    marched[:, :17].sum().backward()
    assert cam.grad[0, landmark_ids[:17]].abs().sum() > 0


def test_bad_contour_settings_name_the_problem():
    with pytest.raises(ValueError, match="band_mm"):
        ContourSettings(band_mm=0.0)
    with pytest.raises(ValueError, match="min_offset_mm"):
        ContourSettings(min_offset_mm=-1.0)
    with pytest.raises(ValueError, match="chin"):
        ContourSettings(marched=(8,))
    with pytest.raises(ValueError, match="mean_shape"):
        jaw_contour(torch.zeros(5, 2), torch.zeros(68, dtype=torch.long))
