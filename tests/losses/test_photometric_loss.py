import numpy as np
import pytest
import torch

from losses.photometric import photometric_loss, skin_attention


def _inputs(batch=3, height=5, width=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, height, width, generator=generator)
    rendered = torch.rand(batch, 3, height, width, generator=generator)
    mask = (torch.rand(batch, 1, height, width, generator=generator) > 0.3).float()
    attention = torch.rand(batch, 1, height, width, generator=generator)
    return images, rendered, mask, attention


def test_skin_attention_is_one_above_half_and_the_posterior_below():
    posterior = torch.tensor([0.0, 0.2, 0.5, 0.51, 0.9, 1.0])
    expected = torch.tensor([0.0, 0.2, 0.5, 1.0, 1.0, 1.0])
    assert torch.equal(skin_attention(posterior), expected)


def test_value_matches_numpy_per_image_normalised_then_batch_mean():
    images, rendered, mask, attention = _inputs()
    i, r, m, a = (t.numpy().astype(np.float64) for t in (images, rendered, mask, attention))
    distance = np.sqrt(((i - r) ** 2).sum(axis=1))
    weights = (m * a)[:, 0]
    expected = np.mean([(distance[b] * weights[b]).sum() / weights[b].sum() for b in range(len(i))])
    got = photometric_loss(images, rendered, mask, attention)
    assert got.shape == ()
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_zero_on_identical_images_with_finite_gradients():
    images, _, mask, attention = _inputs()
    rendered = images.clone().requires_grad_()
    loss = photometric_loss(images, rendered, mask, attention)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(rendered.grad).all()


def test_pixels_outside_the_mask_or_without_attention_do_not_count():
    images, rendered, mask, attention = _inputs()
    attention[:, :, 0, :] = 0.0
    before = photometric_loss(images, rendered, mask, attention)
    ignored = (mask == 0) | (attention == 0)
    changed = torch.where(ignored.expand_as(rendered), torch.rand_like(rendered) + 5.0, rendered)
    after = photometric_loss(images, changed, mask, attention)
    torch.testing.assert_close(after, before)


def test_empty_mask_contributes_zero_without_nan():
    images, rendered, mask, attention = _inputs(batch=2)
    single = photometric_loss(images[:1], rendered[:1], mask[:1], attention[:1])
    mask[1] = 0.0
    both = photometric_loss(images, rendered, mask, attention)
    assert torch.isfinite(both)
    torch.testing.assert_close(both, single / 2)


def test_gradient_reaches_the_render_but_not_the_weights():
    images, rendered, mask, attention = _inputs()
    rendered.requires_grad_()
    mask.requires_grad_()
    photometric_loss(images, rendered, mask, attention).backward()
    assert rendered.grad is not None and rendered.grad.abs().sum() > 0
    assert mask.grad is None


def test_bad_shapes_are_reported():
    images, rendered, mask, attention = _inputs()
    with pytest.raises(ValueError, match="mask"):
        photometric_loss(images, rendered, mask[:, :, :-1], attention)
    with pytest.raises(ValueError, match="rendered"):
        photometric_loss(images, rendered[:2], mask, attention)
