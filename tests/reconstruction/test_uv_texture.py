import numpy as np
import pytest

from geometry.mesh_io import UVLayout
from reconstruction.uv_texture import bake_texture, ict_uv_layout, uv_to_vertex


@pytest.fixture(scope="module")
def ict_uv(ict_small):
    layout = ict_uv_layout(ict_small.triangles.numpy(), ict_small.n_vertices)
    assert layout is not None
    return layout


def test_baking_interpolates_exactly_in_uv_space(ict_small, ict_uv):
    # Colours that are a linear function of the UV coordinates come back as that function at every texel
    # centre inside the chart: barycentric interpolation of a linear function is exact.
    size = 128
    mapping = uv_to_vertex(ict_small.triangles.numpy(), ict_uv.tri_uv, len(ict_uv.uv))
    colours = np.zeros((ict_small.n_vertices, 3))
    used = mapping >= 0
    colours[mapping[used], 0] = ict_uv.uv[used, 0]
    colours[mapping[used], 1] = ict_uv.uv[used, 1]
    colours[:, 2] = 0.5
    texture, coverage = bake_texture(colours, ict_small.triangles.numpy(), ict_uv, size)
    rows, cols = np.nonzero(coverage)
    u = (cols + 0.5) / size
    v = 1.0 - (rows + 0.5) / size
    np.testing.assert_allclose(texture[rows, cols, 0] / 255.0, u, atol=1.0 / 255 + 1e-6)
    np.testing.assert_allclose(texture[rows, cols, 1] / 255.0, v, atol=1.0 / 255 + 1e-6)


def test_uv_layout_only_for_the_bundled_mesh(ict_small):
    assert ict_uv_layout(ict_small.triangles.numpy()[:-1], ict_small.n_vertices) is None
    layout = ict_uv_layout(ict_small.triangles.numpy(), ict_small.n_vertices)
    assert isinstance(layout, UVLayout) and layout.tri_uv.shape == tuple(ict_small.triangles.shape)
