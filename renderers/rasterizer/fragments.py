"""What the rasterizer hands to shading: the visible face per pixel and where on it the pixel falls."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class CoveredPixels:
    """The covered pixels of a `Fragments` as flat arrays, N = number of covered pixels.

    index:       (N,) long, ascending flat indices into (B * H * W)
    corner_ids:  (3, N) int32 or long, ids of each pixel's face corners into the batch-flattened
                 (B * V) vertices, corner-major
    bary:        (3, N) the pixels' barycentrics, corner-major, in the autograd graph
    n_vertices:  V of the screen vertices the corner ids refer to
    pix_to_face: the (B, H, W) tensor these were derived from
    full_bary:   the (B, H, W, 3) tensor scattered from ``bary``
    """

    index: torch.Tensor
    corner_ids: torch.Tensor
    bary: torch.Tensor
    n_vertices: int
    pix_to_face: torch.Tensor
    full_bary: torch.Tensor


@dataclass(frozen=True)
class Fragments:
    """Per-pixel rasterization result for a batch of B images of H x W pixels.

    pix_to_face: (B, H, W) long, index into ``faces`` of the nearest triangle covering the pixel
                 centre, -1 on background. Not differentiable (visibility is a hard decision).
    bary:        (B, H, W, 3) perspective-correct barycentric weights of the pixel centre on that
                 triangle, in the triangle's own vertex order; they sum to 1 on covered pixels and are
                 0 on background. Differentiable with respect to the screen vertices (x, y and depth).
    depth:       (B, H, W) camera-space depth (z) of the surface at the pixel centre, interpolated
                 perspective-correctly; 0 on background (not +inf, so that masked products and their
                 gradients stay finite). Differentiable like ``bary``.
    covered:     the covered pixels as `rasterize` found them, so that `interpolate` need not search
                 again; None for fragments made by hand. Ignored unless it was derived from these very
                 ``pix_to_face`` and ``bary`` tensors (see `covered_pixels`).
    dropped_pairs: () long tensor from a sync-free rasterization: candidate (face, pixel) pairs past
                 its budget that were not drawn, 0 when ``pix_to_face`` is exact; None otherwise.
                 Reading it is a host sync, so check it outside the training step.
    """

    pix_to_face: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    covered: CoveredPixels | None = field(default=None, repr=False, compare=False)
    dropped_pairs: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def mask(self) -> torch.Tensor:
        """(B, H, W) bool, True where a triangle covers the pixel centre."""
        return self.pix_to_face >= 0

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return self.pix_to_face.shape[1], self.pix_to_face.shape[2]

    def covered_pixels(self) -> CoveredPixels | None:
        """``covered`` if it still describes this object's tensors (not after ``dataclasses.replace``)."""
        c = self.covered
        if c is not None and c.pix_to_face is self.pix_to_face and c.full_bary is self.bary:
            return c
        return None
