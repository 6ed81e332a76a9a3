import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from metrics import vertex_error


def test_vertex_error_in_mm_against_numpy():
    a = torch.randn(2, 10, 3, dtype=torch.float64)
    b = a + 0.01
    expected = np.linalg.norm((a - b).numpy(), axis=-1).mean(-1) * 100
    np.testing.assert_allclose(vertex_error(a, b, "none").numpy(), expected)
    with pytest.raises(ValueError, match="align"):
        vertex_error(a, b, "icp")


def test_vertex_error_ignores_a_rigid_motion_but_not_a_scale():
    x = torch.randn(2, 40, 3, dtype=torch.float64)
    r = torch.from_numpy(Rotation.random(2, random_state=0).as_matrix())
    t = torch.randn(2, 1, 3, dtype=torch.float64)
    assert float(vertex_error(x, x @ r.transpose(1, 2) + t).max()) < 1e-8
    scaled = 1.3 * x @ r.transpose(1, 2) + t
    assert float(vertex_error(x, scaled, "rigid").min()) > 1.0
    assert float(vertex_error(x, scaled, "similarity").max()) < 1e-8
