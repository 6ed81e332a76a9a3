"""Hand-made inputs shared by the loss tests: a tiny stand-in recognition network and renders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from face_model.coefficients import Coefficients
from renderers.mesh_renderer import RenderOutput


class TinyRecognition(nn.Module):
    """The interface `perceptual_loss` expects, with a few random layers (and a BatchNorm to watch)."""

    def __init__(self, input_size: tuple[int, int] = (12, 12)) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.input_size = input_size
        self.register_buffer("template", torch.tensor([[3.5, 4.0], [8.5, 4.0], [6.0, 6.5], [4.0, 9.0], [8.0, 9.0]]))
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * input_size[0] * input_size[1], 8)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(torch.tanh(self.norm(self.conv(2.0 * images - 1.0))).flatten(1))


@pytest.fixture
def recognition() -> TinyRecognition:
    return TinyRecognition()


def _make_render(batch: int = 2, size: int = 16, n_vertices: int = 10, seed: int = 0) -> RenderOutput:
    """A RenderOutput of random leaf tensors that require grad (the mask is a centred square)."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.rand(*shape, generator=generator) * scale).requires_grad_()

    return RenderOutput(
        image=leaf(batch, 3, size, size),
        mask=mask,
        landmarks=leaf(batch, 68, 2, scale=float(size)),
        vertices_camera=leaf(batch, n_vertices, 3),
        vertex_colors=leaf(batch, n_vertices, 3),
        albedo=leaf(batch, n_vertices, 3),
    )


def _make_coeffs(batch: int = 2, sh_channels: int = 3, seed: int = 1) -> Coefficients:
    generator = torch.Generator().manual_seed(seed)
    sizes = dict(identity=4, expression=3, albedo=5, angles=3, lighting=9 * sh_channels, translation=3)
    return Coefficients(
        **{name: torch.randn(batch, n, generator=generator).requires_grad_() for name, n in sizes.items()}
    )


@pytest.fixture
def make_render():
    return _make_render


@pytest.fixture
def make_coeffs():
    return _make_coeffs
