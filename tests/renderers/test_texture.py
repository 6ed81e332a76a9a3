"""UV texture sampling: analytic gradients on a quad, perspective-correct uvs on a tilted plane, per-corner
uv ids that differ from vertex ids (texture seams), gradients and errors."""

from __future__ import annotations

import pytest
import torch

from renderers.camera import PinholeCamera, to_screen
from renderers.rasterizer import rasterize
from renderers.texture import interpolate_uv, sample_texture, texture_image

SIZE = (32, 40)


def gradient_texture(height: int = 16, width: int = 24) -> torch.Tensor:
    """(2, H, W): channel 0 holds u and channel 1 holds v at each texel centre (OBJ convention, v up), so
    bilinear look-up of the texture returns the uv itself anywhere between the outer texel centres."""
    u = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    v = 1.0 - (torch.arange(height, dtype=torch.float64) + 0.5) / height
    return torch.stack([u.expand(height, width), v[:, None].expand(height, width)])


def quad(x0: float, y0: float, x1: float, y1: float, depth: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Screen-space axis-aligned rectangle as two triangles: (1, 4, 3) vertices, (2, 3) faces."""
    screen = torch.tensor([[[x0, y0, depth], [x1, y0, depth], [x1, y1, depth], [x0, y1, depth]]], dtype=torch.float64)
    return screen, torch.tensor([[0, 1, 2], [0, 2, 3]])


def pixel_centres(size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(
        torch.arange(size[0], dtype=torch.float64) + 0.5,
        torch.arange(size[1], dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    return xs, ys


def test_linear_gradient_texture_on_a_quad_matches_the_analytic_uv() -> None:
    x0, y0, x1, y1 = 4.0, 3.0, 36.0, 29.0
    screen, faces = quad(x0, y0, x1, y1)
    # The quad's top-left corner shows texture point (0.25, 0.8) and its bottom-right (0.75, 0.3).
    uvs = torch.tensor([[0.25, 0.8], [0.75, 0.8], [0.75, 0.3], [0.25, 0.3]], dtype=torch.float64)
    fragments = rasterize(screen, faces, SIZE)
    colours = texture_image(gradient_texture(), uvs, faces, fragments)[0]
    xs, ys = pixel_centres(SIZE)
    inside = (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)
    assert torch.equal(fragments.mask[0], inside)
    expected_u = 0.25 + 0.5 * (xs - x0) / (x1 - x0)
    expected_v = 0.8 - 0.5 * (ys - y0) / (y1 - y0)
    torch.testing.assert_close(colours[..., 0][inside], expected_u[inside], atol=1e-9, rtol=0)
    torch.testing.assert_close(colours[..., 1][inside], expected_v[inside], atol=1e-9, rtol=0)
    assert (colours[~inside] == 0).all()


def test_uvs_are_perspective_correct_on_a_tilted_plane() -> None:
    camera = PinholeCamera(focal=60.0, principal_point=(20.0, 16.0), image_size=SIZE)
    # A plane receding in depth from 4 to 8 (camera space), uv = its (x, y) position rescaled into [0, 1].
    corners = torch.tensor(
        [[-1.0, -1.0, 4.0], [1.0, -1.0, 4.0], [1.0, 1.0, 8.0], [-1.0, 1.0, 8.0]], dtype=torch.float64
    )
    uvs = (corners[:, :2] + 1.0) / 2.0
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    fragments = rasterize(to_screen(corners, camera)[None], faces, SIZE)
    uv = interpolate_uv(uvs, faces, fragments)[0]
    # Back-project every covered pixel centre onto the plane z = 6 + 2 y and read its uv.
    xs, ys = pixel_centres(SIZE)
    rx, ry = (xs - 20.0) / 60.0, (ys - 16.0) / 60.0  # ray direction (rx, ry, 1)
    z = 6.0 / (1.0 - 2.0 * ry)
    expected = torch.stack([(rx * z + 1.0) / 2.0, (ry * z + 1.0) / 2.0], dim=-1)
    covered = fragments.mask[0]
    assert covered.sum() > 100
    torch.testing.assert_close(uv[covered], expected[covered], atol=1e-9, rtol=0)
    # The test can tell: screen-space (affine) interpolation is off by more than a hundredth here.
    v_affine = (ys - ys[covered].min()) / (ys[covered].max() - ys[covered].min())
    assert (v_affine[covered] - expected[..., 1][covered]).abs().max() > 1e-2


def test_uv_ids_are_independent_of_vertex_ids() -> None:
    """Two triangles share an edge (vertices 0 and 2) but not its uvs: a texture seam, as OBJ allows."""
    screen, faces = quad(0.0, 0.0, 40.0, 32.0)
    texture = torch.zeros(3, 4, 8, dtype=torch.float64)
    texture[0, :, :4] = 1.0  # left half red
    texture[2, :, 4:] = 1.0  # right half blue
    uvs = torch.tensor(
        [
            [0.1, 0.2],
            [0.3, 0.2],
            [0.3, 0.8],  # inside the red half
            [0.6, 0.2],
            [0.9, 0.2],
            [0.9, 0.8],
            [0.6, 0.8],
        ],
        dtype=torch.float64,
    )  # blue half
    uv_faces = torch.tensor([[0, 1, 2], [3, 5, 6]])
    fragments = rasterize(screen, faces, SIZE)
    colours = texture_image(texture, uvs, uv_faces, fragments)[0]
    first = fragments.pix_to_face[0] == 0
    second = fragments.pix_to_face[0] == 1
    assert first.any() and second.any()
    torch.testing.assert_close(
        colours[first], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).expand(int(first.sum()), 3)
    )
    torch.testing.assert_close(
        colours[second], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(int(second.sum()), 3)
    )


def test_batched_textures_and_gradients() -> None:
    screen, faces = quad(4.0, 3.0, 36.0, 29.0)
    screen = screen.expand(2, -1, -1).clone().requires_grad_(True)
    uvs = torch.tensor([[0.25, 0.8], [0.75, 0.8], [0.75, 0.3], [0.25, 0.3]], dtype=torch.float64)
    texture = torch.stack([gradient_texture(), 2.0 * gradient_texture()]).requires_grad_(True)
    colours = texture_image(texture, uvs, faces, rasterize(screen, faces, SIZE))
    torch.testing.assert_close(colours[1], 2.0 * colours[0])
    colours.sum().backward()
    assert texture.grad.abs().sum() > 0
    # Moving the quad's right edge stretches the u gradient: the screen vertices get gradients too.
    assert screen.grad[:, 1:3, 0].abs().sum() > 0


def test_bad_tables_fail_clearly() -> None:
    screen, faces = quad(4.0, 3.0, 36.0, 29.0)
    fragments = rasterize(screen, faces, SIZE)
    uvs = torch.rand(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="uv ids in"):
        interpolate_uv(uvs, torch.tensor([[0, 1, 2], [0, 2, 4]]), fragments)
    with pytest.raises(ValueError, match="one row of uv ids per rasterized face"):
        interpolate_uv(uvs, torch.tensor([[0, 1, 2]]), fragments)
    with pytest.raises(ValueError, match=r"\(T, 2\)"):
        interpolate_uv(uvs[:, :1], faces, fragments)
    with pytest.raises(TypeError, match="floating-point"):
        sample_texture(torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(1, 2, 2, 2))
