"""The sync-free rasterizer path (`rasterize(sync_free=True)`, the CUDA default) and the R-Net training step
never wait for the device.

On the CPU a host sync cannot be observed directly, so `experiments.device_check.HostSyncCounter` records every
operation that would be one on CUDA (``.item()``, ``nonzero``, boolean masks, ``unique``, ``torch.tensor``
copies, ``tolist``, ...). The GPU test checks the same under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import collections
import importlib

import pytest
import torch

from experiments.device_check import HostSyncCounter
from renderers.rasterizer import interpolate, rasterize

rasterize_module = importlib.import_module("renderers.rasterizer.rasterize")


def test_the_counter_sees_each_kind_of_sync_and_nothing_else():
    x = torch.tensor([1.0, -2.0, 3.0])
    with HostSyncCounter() as counter:
        x.sum().item()
        bool(x[0] > 0)
        x[x > 0]
        x.nonzero()
        torch.unique(x)
        x.tolist()
        torch.tensor([1.0])
        torch.repeat_interleave(torch.tensor([1, 2]))
        torch.where(x > 0, x, 0).index_select(0, torch.arange(2)).cumsum(0)
        torch.repeat_interleave(torch.arange(2), torch.full((2,), 2), output_size=4)
    ops = collections.Counter(op for op, _ in counter.hits.elements())
    assert ops["aten._local_scalar_dense"] == 2 and ops["aten.lift_fresh"] == 2 and ops["Tensor.tolist"] == 1
    assert ops["aten.index"] == 1 and ops["aten.nonzero"] == 1 and ops["aten.repeat_interleave"] == 1
    assert {"aten.unique", "aten._unique2"} & set(ops), ops
    assert sum(ops.values()) == 9, ops  # the where, index_select, cumsum and sized repeat_interleave: none


def _soup(batch=2, n_faces=40, size=48, seed=0):
    """Random triangles of every size up to the whole image (many boxes past the 4-pixel grid), overlapping
    in depth, some behind the near plane."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, n_faces, 1, 2, generator=gen) * size
    spread = torch.rand(batch, n_faces, 1, 1, generator=gen) ** 3 * size
    xy = centres + (torch.rand(batch, n_faces, 3, 2, generator=gen) - 0.5) * spread
    z = 1 + torch.rand(batch, n_faces, 3, 1, generator=gen)
    z[:, :3] -= 1.5  # a few faces reach behind the camera plane
    screen = torch.cat([xy, z], dim=-1).reshape(batch, 3 * n_faces, 3).double()
    faces = torch.arange(3 * n_faces).view(n_faces, 3)
    return screen, faces


def _render(screen, faces, size, **kwargs):
    screen = screen.detach().requires_grad_(True)
    colors = torch.linspace(0, 1, screen.shape[1] * 3, dtype=screen.dtype).view(1, -1, 3)
    colors = colors.expand(screen.shape[0], -1, -1).clone().requires_grad_(True)
    fragments = rasterize(screen, faces, (size, size + 5), **kwargs)
    image = interpolate(colors, faces, fragments)
    (image.square().sum() + fragments.depth.sum()).backward()
    return fragments, image.detach(), screen.grad, colors.grad


@pytest.mark.parametrize("dtype, cull_backfaces", [(torch.float64, False), (torch.float32, True)])
def test_the_sync_free_path_is_bit_identical_to_the_data_sized_one(dtype, cull_backfaces):
    screen, faces = _soup()
    screen = screen.to(dtype)
    exact = _render(screen, faces, 48, sync_free=False, cull_backfaces=cull_backfaces)
    fixed = _render(screen, faces, 48, sync_free=True, cull_backfaces=cull_backfaces)
    assert exact[0].dropped_pairs is None and int(fixed[0].dropped_pairs) == 0
    assert (exact[0].pix_to_face >= 0).float().mean() > 0.1
    for name in ("pix_to_face", "bary", "depth"):
        assert torch.equal(getattr(exact[0], name), getattr(fixed[0], name)), name
    for a, b in zip(exact[1:], fixed[1:]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-6)


def test_the_pair_budget_counts_what_it_could_not_draw():
    screen, faces = _soup(seed=1)
    exact = rasterize(screen, faces, (48, 53), sync_free=False).pix_to_face
    total = int(rasterize(screen, faces, (48, 53), sync_free=True, pair_budget=0).dropped_pairs)
    assert total > 1000, "the soup must have boxes past the 4-pixel grid"
    enough = rasterize(screen, faces, (48, 53), sync_free=True, pair_budget=total, max_pairs=777)
    assert int(enough.dropped_pairs) == 0 and torch.equal(enough.pix_to_face, exact)
    short = rasterize(screen, faces, (48, 53), sync_free=True, pair_budget=total - 5, max_pairs=777)
    assert int(short.dropped_pairs) == 5
    with pytest.raises(ValueError, match="pair_budget"):
        rasterize(screen, faces, (48, 53), sync_free=True, pair_budget=-1)


def test_a_remembered_face_list_is_checked_again_once_modified():
    screen, faces = _soup(n_faces=4)
    rasterize(screen, faces, (8, 8), sync_free=True)
    faces[0, 0] = 99
    with pytest.raises(ValueError, match="faces index vertices"):
        rasterize(screen, faces, (8, 8), sync_free=True)


def test_rasterizing_forward_and_backward_has_no_host_sync():
    screen, faces = _soup()
    _render(screen, faces, 48, sync_free=True)  # the face list's index range is checked once, here
    with HostSyncCounter() as counter:
        _render(screen, faces, 48, sync_free=True)
    assert not counter.hits, dict(counter.hits)
    with HostSyncCounter() as counter:  # the counter sees the data-sized path's syncs
        _render(screen, faces, 48, sync_free=False)
    assert {name for name, _ in counter.hits} >= {"aten.nonzero", "Tensor.tolist"}, dict(counter.hits)


def _smoke_module_and_batch(tmp_path, *overrides):
    from datamodules.batch import FaceBatch
    from experiments.build import build_rnet_module
    from experiments.config import load_config

    cfg = load_config(["default", "smoke"], [f"logging.output_dir={tmp_path}", "renderer.backend=torch", *overrides])
    module = build_rnet_module(cfg)
    size, batch = cfg.renderer.image_size, cfg.data.batch_size
    gen = torch.Generator().manual_seed(0)
    # Targets at the mean face's landmarks, so the landmark term is of the usual size.
    landmarks = module.renderer.project_landmarks(module.rnet.layout.zeros(batch)).detach()
    faces = FaceBatch(
        images=torch.rand(batch, 3, size, size, generator=gen),
        landmarks=landmarks,
        skin=torch.rand(batch, 1, size, size, generator=gen),
        index=torch.arange(batch),
    )
    return module, faces


def test_one_training_step_has_no_host_sync(tmp_path):
    """The CUDA training step's path (`sync_free` is what CUDA tensors get), run on the CPU."""
    torch.manual_seed(0)
    # With the perceptual term (off in the smoke config): its alignment runs in the step too.
    module, batch = _smoke_module_and_batch(tmp_path, "loss.perceptual=0.2")
    with rasterize_module.sync_free_everywhere():
        module.training_step(batch, 0).backward()  # warm-up: the face list's range check
        with HostSyncCounter() as counter:
            loss = module.training_step(batch, 1)
            loss.backward()
    assert not counter.hits, dict(counter.hits)
    with HostSyncCounter() as counter:  # outside the block the CPU takes the data-sized path, which syncs
        module.training_step(batch, 2)
    assert ("aten.nonzero", "rasterizer/triangles.py:135") in counter.hits, dict(counter.hits)


@pytest.mark.gpu
def test_rasterizer_and_training_step_run_under_cuda_sync_debug_error(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from benchmarks.bench_renderer import DEFAULT_CAMERA, bfm_sized_mesh, posed_screen

    vertices, faces = bfm_sized_mesh()
    screen = posed_screen(vertices, 8, DEFAULT_CAMERA.resized(224, 224)).cuda()
    faces = faces.cuda()
    module, batch = _smoke_module_and_batch(tmp_path, "renderer.image_size=112", "loss.perceptual=0.2")
    module, batch = module.cuda(), batch.to("cuda")
    _render(screen, faces, 224)
    module.training_step(batch, 0).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fragments = _render(screen, faces, 224)[0]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = module.training_step(batch, 1)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(fragments.dropped_pairs) == 0 and torch.isfinite(loss)
