import numpy as np
import pytest
import torch
import trimesh

from geometry.mesh_io import UVLayout, split_uv_seams, write_glb, write_obj, write_ply


def test_single_writers_validate_their_inputs(tmp_path):
    vertices = np.zeros((3, 3))
    with pytest.raises(ValueError, match="triangles index"):
        write_obj(tmp_path / "a.obj", vertices, np.array([[0, 1, 3]]))
    with pytest.raises(ValueError, match="colors"):
        write_ply(tmp_path / "a.ply", vertices, np.array([[0, 1, 2]]), np.zeros((2, 3)))


def test_obj_without_colours_from_tensors_into_a_new_folder(tmp_path):
    vertices = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    path = write_obj(tmp_path / "new" / "a.obj", vertices, faces)
    rows = [line.split() for line in path.read_text().splitlines() if not line.startswith("#")]
    assert [len(r) for r in rows] == [4] * 4 + [4] * 2, "no colour columns"
    mesh = trimesh.load(path, process=False)
    np.testing.assert_allclose(mesh.vertices, vertices.numpy())
    np.testing.assert_array_equal(mesh.faces, faces.numpy())


def test_colours_are_the_same_8_bit_values_in_every_format(tmp_path):
    vertices = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    colours = np.array([[0.1, 0.5, 1.2], [-0.3, 0.333, 0.9], [0.0, 1.0, 0.5]])
    expected = np.round(np.clip(colours, 0, 1) * 255).astype(np.uint8)
    for path in (
        write_obj(tmp_path / "a.obj", vertices, np.array([[0, 1, 2]]), colours),
        write_ply(tmp_path / "a.ply", vertices, np.array([[0, 1, 2]]), colours),
        write_glb(tmp_path / "a.glb", vertices, np.array([[0, 1, 2]]), colours),
    ):
        mesh = trimesh.load(path, process=False, force="mesh")
        np.testing.assert_array_equal(mesh.visual.vertex_colors[:, :3], expected, err_msg=path.name)


def test_uv_seams_split_shared_vertices():
    """Two triangles sharing the edge 1-2, whose corners have other UVs in the second triangle: a seam."""
    triangles = np.array([[0, 1, 2], [2, 1, 3]])
    layout = UVLayout(
        uv=np.array([[0, 0], [1, 0], [0, 1], [0.5, 0.5], [0.6, 0.5], [0.6, 0.6]], float),
        tri_uv=np.array([[0, 1, 2], [3, 4, 5]]),
    )
    vertex_ids, uv, faces = split_uv_seams(triangles, layout)
    assert len(vertex_ids) == 6  # vertices 1 and 2 appear twice
    np.testing.assert_array_equal(vertex_ids[faces], triangles)
    np.testing.assert_array_equal(uv[faces], layout.uv[layout.tri_uv])
