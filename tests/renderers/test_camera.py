import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from renderers.camera import PinholeCamera, euler_to_rotation, model_to_camera, project, rigid_transform, to_screen


def test_rotation_matches_scipy_extrinsic_xyz():
    angles = torch.tensor([[0.3, -0.7, 1.1], [0.0, 0.0, 0.0], [-1.2, 0.4, -0.2]], dtype=torch.float64)
    ours = euler_to_rotation(angles).numpy()
    # Extrinsic x, then y, then z is R = Rz @ Ry @ Rx, Deep3D's order.
    ref = Rotation.from_euler("xyz", angles.numpy()).as_matrix()
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_rotation_is_orthonormal_and_batched():
    r = euler_to_rotation(torch.randn(2, 5, 3, dtype=torch.float64))
    assert r.shape == (2, 5, 3, 3)
    eye = torch.eye(3, dtype=torch.float64).expand_as(r)
    torch.testing.assert_close(r @ r.transpose(-1, -2), eye)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(2, 5, dtype=torch.float64))


def test_positive_yaw_turns_the_nose_to_image_right():
    nose = torch.tensor([[[0.0, 0.0, 1.0]]])
    posed = rigid_transform(nose, euler_to_rotation(torch.tensor([[0.0, 0.5, 0.0]])), torch.zeros(1, 3))
    assert float(project(model_to_camera(posed, 10.0), PinholeCamera())[0, 0, 0]) > 112.0


def test_projection_against_intrinsics_matrix():
    cam = PinholeCamera()
    pts = torch.tensor([[[0.1, -0.2, 9.5], [-0.4, 0.3, 10.5]]], dtype=torch.float64)
    k = cam.intrinsics(dtype=torch.float64).numpy()
    homog = pts[0].numpy() @ k.T
    np.testing.assert_allclose(project(pts, cam)[0].numpy(), homog[:, :2] / homog[:, 2:], rtol=1e-12)


def test_origin_projects_to_principal_point_at_camera_distance():
    cam = PinholeCamera()
    p = to_screen(model_to_camera(torch.zeros(1, 1, 3), cam.camera_distance), cam)
    torch.testing.assert_close(p, torch.tensor([[[112.0, 112.0, 10.0]]]))


def test_model_y_up_is_image_y_down():
    p = project(model_to_camera(torch.tensor([[[0.0, 1.0, 0.0]]]), 10.0), PinholeCamera())
    assert float(p[0, 0, 1]) < 112.0


def test_resized_camera_scales_projection():
    cam = PinholeCamera()
    big = cam.resized(448, 448)
    pts = torch.tensor([[[0.3, 0.2, 10.0]]])
    torch.testing.assert_close(project(pts, big), 2 * project(pts, cam))
    with pytest.raises(ValueError, match="aspect"):
        cam.resized(448, 224)


def test_camera_validation():
    with pytest.raises(ValueError):
        PinholeCamera(focal=-1.0)


def test_gradcheck_pose_and_projection():
    cam = PinholeCamera()

    def f(points, angles, trans):
        posed = rigid_transform(points, euler_to_rotation(angles), trans)
        return to_screen(model_to_camera(posed, cam.camera_distance), cam)

    pts = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    angles = (0.3 * torch.randn(2, 3, dtype=torch.float64)).requires_grad_()
    trans = (0.1 * torch.randn(2, 3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(f, (pts, angles, trans))
