import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from geometry.similarity import SimilarityTransform, fit_similarity, procrustes, rotation_from_vector, umeyama


@pytest.fixture
def similarity() -> SimilarityTransform:
    """A moderate known similarity transform (scale 1.3, ~25 degrees, a few cm of translation)."""
    rotation = Rotation.from_euler("xyz", [10.0, -15.0, 20.0], degrees=True).as_matrix()
    return SimilarityTransform(1.3, rotation, np.array([15.0, -30.0, 20.0]))


def random_pose(n: int, scale: float = 1.0):
    r = torch.from_numpy(Rotation.random(n, random_state=0).as_matrix())
    t = torch.randn(n, 1, 3, dtype=torch.float64)
    return r, t, scale


def test_procrustes_recovers_a_known_rigid_motion():
    x = torch.randn(3, 50, 3, dtype=torch.float64)
    r, t, _ = random_pose(3)
    y = x @ r.transpose(1, 2) + t
    torch.testing.assert_close(procrustes(x, y), y)


def test_similarity_alignment_recovers_scale_rigid_does_not():
    x = torch.randn(2, 40, 3, dtype=torch.float64)
    r, t, _ = random_pose(2)
    y = 1.3 * x @ r.transpose(1, 2) + t
    torch.testing.assert_close(procrustes(x, y, scale=True), y)


def test_no_reflection_for_mirrored_shapes():
    x = torch.randn(1, 30, 3, dtype=torch.float64)
    mirrored = x * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    aligned = procrustes(x, mirrored)
    centred = aligned - aligned.mean(1, keepdim=True)
    # A proper rotation keeps the Gram matrix of the centred points.
    xc = x - x.mean(1, keepdim=True)
    torch.testing.assert_close(centred @ centred.transpose(1, 2), xc @ xc.transpose(1, 2))


def test_similarity_transform_algebra(similarity):
    points = np.random.default_rng(0).normal(size=(20, 3))
    np.testing.assert_allclose(similarity.inverse().apply(similarity.apply(points)), points, atol=1e-12)
    twice = similarity.compose(similarity)
    np.testing.assert_allclose(twice.apply(points), similarity.apply(similarity.apply(points)), atol=1e-10)
    homogeneous = np.column_stack([points, np.ones(20)]) @ similarity.matrix().T
    np.testing.assert_allclose(homogeneous[:, :3], similarity.apply(points), atol=1e-12)


def test_fit_similarity_recovers_known_transform_and_agrees_with_procrustes(similarity):
    source = np.random.default_rng(1).normal(scale=30.0, size=(40, 3))
    target = similarity.apply(source)
    found = fit_similarity(source, target)
    np.testing.assert_allclose(found.rotation, similarity.rotation, atol=1e-10)
    assert abs(found.scale / similarity.scale - 1) < 1e-12
    np.testing.assert_allclose(found.translation, similarity.translation, atol=1e-9)
    reference = procrustes(torch.from_numpy(source)[None], torch.from_numpy(target)[None], scale=True)
    torch.testing.assert_close(torch.from_numpy(found.apply(source))[None], reference)
    rigid = fit_similarity(source, target, with_scale=False)
    assert rigid.scale == 1.0 and np.isclose(np.linalg.det(rigid.rotation), 1.0)


def test_fit_similarity_never_reflects_and_rejects_degenerate_input():
    source = np.random.default_rng(2).normal(size=(30, 3))
    found = fit_similarity(source, source * np.array([-1.0, 1.0, 1.0]))
    assert np.isclose(np.linalg.det(found.rotation), 1.0)
    with pytest.raises(ValueError, match="3 distinct"):
        fit_similarity(np.ones((5, 3)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="correspond"):
        fit_similarity(source, source[:10])


def test_umeyama_weights_and_two_dimensions():
    # Zero-weight points are ignored: an outlier with weight 0 leaves the exact fit exact.
    source = torch.randn(1, 12, 2, dtype=torch.float64)
    angle = torch.tensor(0.7, dtype=torch.float64)
    rotation = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    target = 0.8 * source @ rotation.T + torch.tensor([3.0, -1.0], dtype=torch.float64)
    target[0, 0] += 50.0
    weights = torch.ones(12, dtype=torch.float64)
    weights[0] = 0.0
    scale, found, translation = umeyama(source, target, weights)
    torch.testing.assert_close(scale, torch.tensor([0.8], dtype=torch.float64))
    torch.testing.assert_close(found[0], rotation)
    torch.testing.assert_close(translation[0], torch.tensor([3.0, -1.0], dtype=torch.float64))
    unweighted, _, _ = umeyama(source, target)
    assert abs(float(unweighted) - 0.8) > 1e-3


def test_rotation_from_vector_agrees_with_scipy():
    omega = np.array([0.3, -1.1, 0.7])
    np.testing.assert_allclose(rotation_from_vector(omega), Rotation.from_rotvec(omega).as_matrix(), atol=1e-12)
    np.testing.assert_array_equal(rotation_from_vector(np.zeros(3)), np.eye(3))
