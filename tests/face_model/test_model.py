import pytest
import torch

from face_model import FaceModel
from face_model.model import five_points_from_68


def tiny_model(**overrides) -> FaceModel:
    v = 70
    args = dict(
        mean_shape=torch.randn(v, 3),
        id_basis=torch.randn(4, v, 3),
        exp_basis=torch.randn(3, v, 3),
        albedo_mean=torch.rand(v, 3),
        albedo_basis=torch.randn(2, v, 3) * 0.1,
        triangles=torch.randint(0, v, (40, 3)),
        landmark_ids=torch.arange(68),
        skin_mask=torch.ones(v, dtype=torch.bool),
    )
    args.update(overrides)
    return FaceModel(**args)


def test_zero_coefficients_give_the_mean():
    m = tiny_model()
    mesh = m(m.layout.zeros(2))
    torch.testing.assert_close(mesh.vertices, m.mean_shape.expand(2, -1, -1))
    torch.testing.assert_close(mesh.albedo, m.albedo_mean.expand(2, -1, -1))


def test_shape_is_linear_in_each_basis():
    m = tiny_model()
    c = m.layout.zeros(1).replace(
        identity=torch.tensor([[0.0, 2.0, 0.0, 0.0]]), expression=torch.tensor([[0.0, 0.0, -1.0]])
    )
    expected = m.mean_shape + 2.0 * m.id_basis[1] - m.exp_basis[2]
    torch.testing.assert_close(m.shape(c)[0], expected)


def test_buffers_travel_with_the_module():
    m = tiny_model().to(torch.float64)
    assert m.mean_shape.dtype == torch.float64 and m.triangles.dtype == torch.long
    assert {"mean_shape", "id_basis", "triangles", "landmark_ids", "skin_mask"} <= set(m.state_dict())


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(id_basis=torch.randn(4, 69, 3)), "id_basis"),
        (dict(albedo_mean=torch.rand(70, 4)), "albedo_mean"),
        (dict(landmark_ids=torch.arange(5)), "landmark_ids"),
        (dict(triangles=torch.full((2, 3), 70)), "outside"),
    ],
)
def test_wrong_shapes_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(**override)


def test_five_points_from_68():
    pts = torch.arange(68 * 2, dtype=torch.float32).reshape(68, 2)
    five = five_points_from_68(pts)
    torch.testing.assert_close(five[0], pts[36:42].mean(0))
    torch.testing.assert_close(five[2], pts[30])
    torch.testing.assert_close(five[4], pts[54])


def test_empty_bases_are_allowed():
    m = tiny_model(exp_basis=torch.zeros(0, 70, 3), albedo_basis=torch.zeros(0, 70, 3))
    assert m.layout.n_exp == 0 and m(m.layout.zeros(2)).vertices.shape == (2, 70, 3)
