"""Turning renders into pictures a person can check: composites, landmarks, grids (NumPy/OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

LANDMARK_COLOUR = (40, 220, 40)
TARGET_COLOUR = (230, 40, 40)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float image in [0, 1] -> (H, W, 3) uint8 RGB."""
    return (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def composite(render: torch.Tensor, mask: torch.Tensor, background: torch.Tensor | float) -> torch.Tensor:
    """(B, 3, H, W) render over a background image or grey level, through its (B, 1, H, W) mask."""
    return mask * render + (1.0 - mask) * background


def draw_landmarks(image: np.ndarray, points: np.ndarray, colour: tuple[int, int, int] = LANDMARK_COLOUR,
                   radius: int | None = None) -> np.ndarray:
    """Draw (N, 2) pixel points (centre convention: pixel (i, j) at (j + 0.5, i + 0.5)) on a copy."""
    out = np.ascontiguousarray(image.copy())
    radius = radius or max(1, round(min(image.shape[:2]) / 160))
    for x, y in np.asarray(points, dtype=np.float64) - 0.5:
        if np.isfinite(x) and np.isfinite(y):
            cv2.circle(out, (int(round(x)), int(round(y))), radius, colour, -1, lineType=cv2.LINE_AA)
    return out


def label(image: np.ndarray, text: str) -> np.ndarray:
    """Write a short caption in the top-left corner of a copy."""
    out = np.ascontiguousarray(image.copy())
    scale = min(image.shape[:2]) / 450.0
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(out, text, (4, int(16 * scale * 1.6)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour,
                    thickness, cv2.LINE_AA)
    return out


def image_grid(tiles: list[np.ndarray], n_cols: int, pad: int = 2) -> np.ndarray:
    """Equal-size (H, W, 3) uint8 tiles -> one grid image, row-major, white padding."""
    if not tiles:
        raise ValueError("image_grid needs at least one tile")
    h, w = tiles[0].shape[:2]
    n_rows = -(-len(tiles) // n_cols)
    grid = np.full((n_rows * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, n_cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = tile
    return grid


def save_png(path, image: np.ndarray) -> None:
    """Write an RGB uint8 image; raises OSError naming the path if it cannot be written."""
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image {path} (does its folder exist and is it writable?)")
