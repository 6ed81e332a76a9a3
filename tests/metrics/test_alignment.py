import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from geometry.similarity import SimilarityTransform
from metrics import centroid_alignment, icp


def perturbed(transform: SimilarityTransform, degrees: float, shift: float, scale: float) -> SimilarityTransform:
    """The transform, off by a rotation of ``degrees``, a translation of ``shift`` mm and a scale factor."""
    extra = Rotation.from_rotvec(np.radians(degrees) * np.array([0.6, -0.8, 0.0])).as_matrix()
    return SimilarityTransform(
        transform.scale * scale, extra @ transform.rotation, transform.translation + shift * np.array([0.0, 0.6, 0.8])
    )


def assert_recovers(
    found: SimilarityTransform, truth: SimilarityTransform, rotation_deg: float, scale: float, translation: float
) -> None:
    angle = np.degrees(Rotation.from_matrix(found.rotation @ truth.rotation.T).magnitude())
    assert angle < rotation_deg, f"rotation off by {angle:.4f} degrees"
    assert abs(found.scale / truth.scale - 1) < scale, f"scale {found.scale} vs {truth.scale}"
    assert np.linalg.norm(found.translation - truth.translation) < translation, (
        f"translation {found.translation} vs {truth.translation}"
    )


def test_icp_recovers_similarity_from_a_noisy_partial_scan(bumpy_sphere, similarity):
    vertices, faces = bumpy_sphere
    rng = np.random.default_rng(3)
    # The "scan": a dense resampling of one side of the surface only, transformed, with 0.1 mm noise.
    barycentric = rng.dirichlet(np.ones(3), size=(4, len(faces)))
    samples = np.einsum("sfk,fkd->sfd", barycentric, vertices[faces]).reshape(-1, 3)
    partial = samples[samples[:, 2] > 5.0]
    scan = similarity.apply(partial) + rng.normal(scale=0.1, size=partial.shape)
    start = perturbed(similarity, degrees=8.0, shift=8.0, scale=0.95)
    result = icp(vertices, scan, source_faces=faces, init=start)
    assert result.converged and result.iterations < 30
    assert_recovers(result.transform, similarity, 0.1, 2e-3, 0.5)
    assert result.distances.shape == (len(scan),)
    # Residuals are the noise: its mean absolute normal component is 0.1 * sqrt(2 / pi) ~ 0.08 mm.
    assert result.distances.mean() < 0.11


def test_icp_between_point_sets_and_in_the_other_direction(bumpy_sphere, similarity):
    vertices, faces = bumpy_sphere
    # Point-to-point, every target point matched to the moving source vertices.
    target = similarity.apply(vertices[vertices[:, 0] > -10.0])
    result = icp(vertices, target, init=perturbed(similarity, 3.0, 3.0, 1.01))
    assert_recovers(result.transform, similarity, 0.05, 1e-3, 0.2)
    # Source covers part of the target: match each (partial) source point to the target's surface.
    part = vertices[vertices[:, 1] > 0.0]
    result = icp(
        part,
        similarity.apply(vertices),
        target_faces=faces,
        direction="source_to_target",
        init=perturbed(similarity, 5.0, 5.0, 0.97),
    )
    assert_recovers(result.transform, similarity, 0.01, 1e-4, 0.05)
    assert result.distances.shape == (len(part),) and result.distances.max() < 1e-3


def test_rigid_icp_keeps_unit_scale(bumpy_sphere, similarity):
    vertices, faces = bumpy_sphere
    rigid = SimilarityTransform(1.0, similarity.rotation, similarity.translation)
    scan = rigid.apply(vertices[vertices[:, 2] > 0.0])
    result = icp(vertices, scan, source_faces=faces, init=perturbed(rigid, 5.0, 5.0, 1.0), with_scale=False)
    assert result.transform.scale == pytest.approx(1.0)
    assert_recovers(result.transform, rigid, 0.01, 1e-9, 0.05)
    with pytest.raises(ValueError, match="scaled"):
        icp(vertices, scan, init=perturbed(rigid, 0.0, 0.0, 1.1), with_scale=False)


def test_icp_options_are_validated_and_outliers_can_be_rejected(bumpy_sphere, similarity):
    vertices, faces = bumpy_sphere
    scan = similarity.apply(vertices[vertices[:, 2] > 0.0])
    outliers = scan + 200.0
    result = icp(
        vertices,
        np.concatenate([scan, outliers[:10]]),
        source_faces=faces,
        init=perturbed(similarity, 3.0, 3.0, 1.0),
        max_correspondence_distance=20.0,
    )
    assert_recovers(result.transform, similarity, 0.01, 1e-4, 0.05)
    assert (result.distances[-10:] > 100).all()
    with pytest.raises(ValueError, match="direction"):
        icp(vertices, scan, direction="both")
    with pytest.raises(ValueError, match="correspondences within"):
        icp(vertices, scan + 1000.0, max_correspondence_distance=1.0)


def test_centroid_alignment_matches_position_and_spread():
    source = np.random.default_rng(4).normal(size=(100, 3))
    target = 3.0 * source + np.array([1.0, 2.0, 3.0])
    found = centroid_alignment(source, target)
    np.testing.assert_allclose(found.apply(source), target, atol=1e-12)
