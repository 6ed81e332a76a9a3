import numpy as np
import torch

from geometry.normals import face_normals, vertex_normals


def grid_mesh(n: int = 4):
    ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    verts = np.stack([xs.ravel(), ys.ravel(), np.zeros(n * n)], axis=1).astype(np.float64)
    tris = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            tris += [[a, b, d], [a, d, c]]
    return torch.from_numpy(verts), torch.tensor(tris)


def test_flat_counter_clockwise_grid_faces_plus_z():
    v, f = grid_mesh()
    n = vertex_normals(v.unsqueeze(0), f)
    torch.testing.assert_close(n[0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(n[0]))


def test_vertex_normals_equal_numpy_average_of_unit_face_normals():
    v = torch.randn(1, 30, 3, dtype=torch.float64)
    f = torch.randint(0, 30, (50, 3))
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    verts, faces = v[0].numpy(), f.numpy()
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    fn /= np.linalg.norm(fn, axis=1, keepdims=True)
    acc = np.zeros_like(verts)
    for face, normal in zip(faces, fn):
        for idx in face:
            acc[idx] += normal
    used = np.linalg.norm(acc, axis=1) > 0
    ref = acc[used] / np.linalg.norm(acc[used], axis=1, keepdims=True)
    np.testing.assert_allclose(vertex_normals(v, f)[0].numpy()[used], ref, atol=1e-10)
    torch.testing.assert_close(face_normals(v, f)[0], torch.from_numpy(fn))


def test_area_weighted_vertex_normals_equal_numpy_area_weighted_sum():
    rng = np.random.default_rng(3)
    verts = rng.normal(size=(30, 3))
    faces = np.array([f for f in rng.integers(0, 25, size=(60, 3)) if len(set(f)) == 3])
    cross = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    acc = np.zeros_like(verts)
    np.add.at(acc, faces.ravel(), np.repeat(cross, 3, axis=0))
    length = np.linalg.norm(acc, axis=1, keepdims=True)
    ref = np.divide(acc, length, out=np.zeros_like(acc), where=length > 0)
    found = vertex_normals(torch.from_numpy(verts)[None], torch.from_numpy(faces), area_weighted=True)[0].numpy()
    np.testing.assert_allclose(found, ref, atol=1e-12)
    # Vertices 25..29 belong to no face: zero normals, not NaN.
    assert (found[25:] == 0).all()
