import math

import numpy as np
import pytest
import torch

from losses.perceptual import (
    composite,
    identity_loss,
    perceptual_loss,
    similarity_transform,
    warp_affine,
)


def _umeyama_numpy(src, dst):
    """Umeyama (1991) with the reflection correction, written directly from the paper."""
    n = len(src)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, yd = src - mu_s, dst - mu_d
    u, s, vt = np.linalg.svd(yd.T @ xs / n)
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / ((xs**2).sum() / n)
    return np.hstack([scale * rotation, (mu_d - scale * rotation @ mu_s)[:, None]])


def _warp_numpy(image, matrix, out_size):
    """Inverse-map every output pixel centre and sample bilinearly, zero outside (pixel centres at +0.5)."""
    channels, height, width = image.shape
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))
    out = np.zeros((channels, *out_size))
    for i in range(out_size[0]):
        for j in range(out_size[1]):
            x, y, _ = inverse @ np.array([j + 0.5, i + 0.5, 1.0])
            u, v = x - 0.5, y - 0.5
            j0, i0 = math.floor(u), math.floor(v)
            fu, fv = u - j0, v - i0
            for ii, jj, weight in (
                (i0, j0, (1 - fu) * (1 - fv)),
                (i0, j0 + 1, fu * (1 - fv)),
                (i0 + 1, j0, (1 - fu) * fv),
                (i0 + 1, j0 + 1, fu * fv),
            ):
                if 0 <= ii < height and 0 <= jj < width:
                    out[:, i, j] += weight * image[:, ii, jj]
    return out


def _similarity(scale, angle, tx, ty):
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def test_similarity_transform_recovers_a_known_transform():
    generator = torch.Generator().manual_seed(0)
    src = torch.rand(2, 5, 2, generator=generator, dtype=torch.float64) * 100
    truth = np.stack([_similarity(1.3, 0.4, 5.0, -2.0), _similarity(0.5, -2.5, 30.0, 7.0)])
    linear, translation = torch.from_numpy(truth[:, :, :2]), torch.from_numpy(truth[:, :, 2])
    dst = torch.einsum("bij,bnj->bni", linear, src) + translation[:, None]
    got = similarity_transform(src, dst)
    assert got.shape == (2, 2, 3)
    np.testing.assert_allclose(got.numpy(), truth, atol=1e-9)


@pytest.mark.parametrize("mirror", [False, True])
def test_similarity_transform_matches_numpy_umeyama_on_noisy_points(mirror):
    generator = torch.Generator().manual_seed(1)
    src = torch.rand(4, 5, 2, generator=generator, dtype=torch.float64) * 200
    dst = torch.rand(5, 2, generator=generator, dtype=torch.float64) * 112
    if mirror:  # a reflection would fit best; both must return the best proper similarity instead
        src = src * torch.tensor([-1.0, 1.0], dtype=torch.float64)
    got = similarity_transform(src, dst).numpy()
    for b in range(4):
        np.testing.assert_allclose(got[b], _umeyama_numpy(src[b].numpy(), dst.numpy()), atol=1e-8)


def test_similarity_transform_rejects_bad_shapes():
    with pytest.raises(ValueError, match="dst_points"):
        similarity_transform(torch.rand(2, 5, 2), torch.rand(4, 2))
    with pytest.raises(ValueError, match="src_points"):
        similarity_transform(torch.rand(5, 2), torch.rand(5, 2))


def test_warp_affine_identity_returns_the_image():
    images = torch.rand(2, 3, 6, 7)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(2, 2, 3)
    torch.testing.assert_close(warp_affine(images, identity, (6, 7)), images)


def test_warp_affine_translation_moves_a_pixel_where_expected():
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 2, 3] = 1.0  # row 2, col 3: centre (3.5, 2.5)
    shift = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]]])  # x + 2, y + 1
    out = warp_affine(image, shift, (8, 8))
    expected = torch.zeros(1, 1, 8, 8)
    expected[0, 0, 3, 5] = 1.0
    torch.testing.assert_close(out, expected)


def test_warp_affine_matches_numpy_bilinear_reference():
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 10, 12, generator=generator, dtype=torch.float64)
    matrices = np.stack([_similarity(1.4, 0.3, -2.0, 1.5), _similarity(0.7, -1.0, 3.0, 8.0)])
    got = warp_affine(images, torch.from_numpy(matrices), (9, 11))
    assert got.shape == (2, 3, 9, 11)
    for b in range(2):
        expected = _warp_numpy(images[b].numpy(), matrices[b], (9, 11))
        np.testing.assert_allclose(got[b].numpy(), expected, atol=1e-10)


def test_warp_affine_is_differentiable_in_the_image():
    images = torch.rand(1, 3, 8, 8, requires_grad=True)
    matrix = torch.from_numpy(_similarity(1.1, 0.2, 0.5, -0.5)).float()[None]
    warp_affine(images, matrix, (8, 8)).sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_composite_takes_the_render_inside_the_mask():
    images, rendered = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    torch.testing.assert_close(composite(rendered, mask, images), mask.expand(1, 3, 2, 2))


def test_identity_loss_matches_numpy():
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 8, generator=generator), torch.randn(4, 8, generator=generator)
    an, bn = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
    cosine = (an * bn).sum(1) / np.linalg.norm(an, axis=1) / np.linalg.norm(bn, axis=1)
    np.testing.assert_allclose(identity_loss(a, b).numpy(), (1 - cosine).mean(), rtol=1e-5)
    assert identity_loss(a, 3.0 * a).item() == pytest.approx(0.0, abs=1e-6)


def _perceptual_inputs(recognition, batch=2, size=16, seed=4):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=generator)
    rendered = torch.rand(batch, 3, size, size, generator=generator).requires_grad_()
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, 4:12, 3:13] = 1.0
    five_points = (recognition.template * 1.25 + 0.5).expand(batch, 5, 2).clone()
    five_points[1] += 0.7
    return images, rendered, mask, five_points


def test_perceptual_loss_vanishes_when_the_composite_is_the_input(recognition):
    recognition.requires_grad_(False).eval()
    images, rendered, mask, five_points = _perceptual_inputs(recognition)
    empty = perceptual_loss(images, rendered, torch.zeros_like(mask), five_points, recognition)
    same = perceptual_loss(images, images.clone(), mask, five_points, recognition)
    assert empty.item() == pytest.approx(0.0, abs=1e-6)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_perceptual_loss_is_positive_and_trains_only_the_render(recognition):
    recognition.requires_grad_(False).eval()
    images, rendered, mask, five_points = _perceptual_inputs(recognition)
    loss = perceptual_loss(images, rendered, mask, five_points, recognition)
    assert loss.item() > 1e-4
    loss.backward()
    assert torch.isfinite(rendered.grad).all()
    assert rendered.grad.abs().sum() > 0
    # Only pixels inside the mask reach the composite.
    assert rendered.grad[mask.expand_as(rendered) == 0].abs().sum() == 0
    assert all(p.grad is None for p in recognition.parameters())


def test_perceptual_loss_rejects_bad_five_points(recognition):
    images, rendered, mask, five_points = _perceptual_inputs(recognition)
    with pytest.raises(ValueError, match="five_points"):
        perceptual_loss(images, rendered, mask, five_points[:, :4], recognition)
