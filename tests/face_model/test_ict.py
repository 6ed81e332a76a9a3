import numpy as np
import pytest
import torch

from face_model import FaceModel, load_face_model
from face_model.albedo_prior import cotangent_laplacian, laplacian_eigenbasis
from face_model.ict import ICT_MAX_EXP, default_ict_path, expression_modes, load_ict


def test_bundled_model_sizes_and_units(ict_small):
    m = ict_small
    assert m.n_vertices == 6706 and m.triangles.shape == (13120, 3)
    assert m.layout.n_id == 10 and m.layout.n_exp == 10 and m.layout.n_tex == 9
    width = float(m.mean_shape[:, 0].max() - m.mean_shape[:, 0].min())
    assert 1.2 < width < 1.8, "face width should be ~15 cm, i.e. ~1.5 decimetres"
    torch.testing.assert_close(m.mean_shape.mean(0), torch.zeros(3), atol=1e-5, rtol=0)


def test_full_region_keeps_ears_and_neck():
    m = load_ict(n_id=2, n_exp=2, n_tex=3, region="full")
    assert m.n_vertices == 9409


def test_normals_face_the_camera(ict_small):
    n = ict_small.landmarks(ict_small.normals(ict_small.mean_shape[None]))[0]
    # Nose, brows and nose bridge face the camera (+z); the jaw sides face outwards. (Nostril, mouth
    # and eye-socket interiors legitimately face away, so no global average is asserted.)
    for i in (19, 24, 27, 28, 29, 30, 33):
        assert float(n[i, 2]) > 0.5, i
    assert float(n[1, 0]) < -0.8 and float(n[15, 0]) > 0.8


def test_landmarks_sit_on_facial_features(ict_small):
    lm = ict_small.landmarks(ict_small.mean_shape[None])[0]
    # Image-left eye (36-41) has negative x; the nose tip is the most forward landmark; eyes above mouth.
    assert float(lm[36:42, 0].mean()) < 0 < float(lm[42:48, 0].mean())
    assert int(lm[:, 2].argmax()) in range(27, 36)
    assert float(lm[36:48, 1].mean()) > float(lm[48:68, 1].mean())
    t = ict_small.five_point_template()
    assert t.shape == (5, 3) and float(t[0, 0]) < 0 < float(t[1, 0])


def test_identity_modes_have_unit_prior_scale():
    raw = np.load(default_ict_path())
    m = load_ict(n_id=3, n_exp=1, n_tex=1)
    expected = raw["id_basis"][:3, :6706].astype(np.float64) * 0.1
    np.testing.assert_allclose(m.id_basis.numpy(), expected, atol=1e-6)


def test_expression_pca_is_orthogonal_and_keeps_total_variance():
    rng = np.random.default_rng(0)
    shapes = rng.normal(size=(6, 20, 3))
    std = 0.3
    modes = expression_modes(shapes, std, 6, "pca").reshape(6, -1).astype(np.float64)
    gram = modes @ modes.T
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-4)
    assert np.all(np.diff(np.diag(gram)) <= 1e-6), "modes sorted by variance"
    # Trace of the offset covariance std^2 B^T B is preserved by the rotation to principal axes.
    np.testing.assert_allclose(np.trace(gram), std**2 * (shapes**2).sum(), rtol=1e-5)
    # Same subspace as the blendshapes: projecting them onto the modes loses nothing.
    q, _ = np.linalg.qr(modes.T)
    flat = shapes.reshape(6, -1)
    np.testing.assert_allclose(flat @ q @ q.T, flat, atol=1e-4)
    raw = expression_modes(shapes, std, 4, "blendshapes")
    np.testing.assert_allclose(raw, std * shapes[:4], rtol=1e-6)
    with pytest.raises(ValueError, match="expression_basis"):
        expression_modes(shapes, std, 2, "ica")


def test_albedo_prior_is_plausible(ict_small):
    m = ict_small
    assert float(m.albedo_mean.min()) > 0.2 and float(m.albedo_mean.max()) < 0.8
    # Lips are redder than the cheeks.
    lip = m.albedo_mean[m.landmark_ids[62]]
    assert float(lip[0] - lip[1]) > float(
        m.albedo_mean[m.skin_mask][:, 0].mean() - m.albedo_mean[m.skin_mask][:, 1].mean()
    )
    _, area = cotangent_laplacian(m.mean_shape.double().numpy(), m.triangles.numpy())
    weights = torch.from_numpy(area / area.sum()).float()
    stds = ((m.albedo_basis**2).sum(-1) * weights).sum(-1).sqrt()
    assert torch.all(stds[:-1] >= stds[1:] - 1e-6), "albedo modes sorted by prior variance"
    # The leading mode is a global tone: the same colour at every vertex.
    first = m.albedo_basis[0]
    torch.testing.assert_close(first, first[:1].expand_as(first), atol=1e-4, rtol=0)
    # +-2 sigma of every mode stays inside [0, 1] on average.
    sample = m.albedo_mean + 2 * m.albedo_basis.sum(0) / 3
    assert 0.0 < float(sample.mean()) < 1.0


def test_laplacian_is_symmetric_psd_with_constant_kernel():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0.3], [2, 0.5, 0.1]], dtype=float)
    f = np.array([[0, 1, 2], [1, 3, 2], [1, 4, 3]])
    lap, area = cotangent_laplacian(v, f)
    dense = lap.toarray()
    np.testing.assert_allclose(dense, dense.T, atol=1e-12)
    np.testing.assert_allclose(dense @ np.ones(5), 0, atol=1e-12)
    assert np.linalg.eigvalsh(dense).min() > -1e-10
    tri_area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1).sum()
    np.testing.assert_allclose(area.sum(), tri_area)


def test_laplacian_eigenbasis_is_mass_orthonormal(ict_small):
    verts = ict_small.mean_shape.numpy().astype(np.float64)
    tris = ict_small.triangles.numpy()
    values, vectors = laplacian_eigenbasis(verts, tris, 6)
    _, area = cotangent_laplacian(verts, tris)
    gram = (vectors * area[:, None]).T @ vectors / area.sum()
    np.testing.assert_allclose(gram, np.eye(6), atol=1e-6)
    assert values[0] < 1e-6 < values[1] and np.all(np.diff(values) >= 0)


def test_skin_mask_avoids_eyes_and_lips(ict_small):
    m = ict_small
    for lm in (37, 44, 62, 19):
        assert not bool(m.skin_mask[m.landmark_ids[lm]])
    assert 0.3 < float(m.skin_mask.float().mean()) < 0.9


def test_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="n_id"):
        load_ict(n_id=101)
    with pytest.raises(ValueError, match="n_exp"):
        load_ict(n_exp=ICT_MAX_EXP + 1)
    with pytest.raises(ValueError, match="region"):
        load_ict(region="ears")
    with pytest.raises(FileNotFoundError, match="prepare-bfm"):
        FaceModel.from_file(tmp_path / "missing.mat")
    bad = tmp_path / "bad.npz"
    np.savez(bad, mean=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="missing keys"):
        FaceModel.from_file(bad)
    with pytest.raises(ValueError, match="unknown face model"):
        load_face_model("flame")
    with pytest.raises(ValueError, match="not bundled"):
        load_face_model("bfm")


def test_from_file_reads_the_bundled_npz():
    m = FaceModel.from_file(default_ict_path(), n_id=1, n_exp=1, n_tex=3, sh_channels=1)
    assert m.name == "ict" and m.layout.sh_channels == 1 and m.layout.size == 1 + 1 + 3 + 3 + 9 + 3


def test_deterministic_build():
    a = load_ict(n_id=1, n_exp=4, n_tex=6)
    b = load_ict(n_id=1, n_exp=4, n_tex=6)
    for name, buf in a.named_buffers():
        assert torch.equal(buf, dict(b.named_buffers())[name]), name
