"""Turning renders into pictures a person can check: composites, landmarks, grids (NumPy/OpenCV)."""

from __future__ import annotations

from dataclasses import dataclass

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


def draw_landmarks(
    image: np.ndarray, points: np.ndarray, colour: tuple[int, int, int] = LANDMARK_COLOUR, radius: int | None = None
) -> np.ndarray:
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
        cv2.putText(
            out, text, (4, int(16 * scale * 1.6)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA
        )
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
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = tile
    return grid


def save_png(path, image: np.ndarray) -> None:
    """Write an RGB uint8 image; raises OSError naming the path if it cannot be written."""
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image {path} (does its folder exist and is it writable?)")


# ------------------------------------------------------------------------------------- reconstruction overlay

OVERLAY_PANEL = 512
"""Default side of each panel of a reconstruction overlay, pixels: large enough to judge a fit by eye."""

GEOMETRY_GREY = 0.72
GEOMETRY_BACKGROUND = (38, 38, 38)
GEOMETRY_LIGHT = (-0.35, -0.45, -1.0)
"""Direction towards the fixed light of the geometry panel, camera space (OpenCV: x right, y down, z forward):
up, left, and from the camera's side, so every face pose is lit from the front."""


@dataclass(frozen=True, eq=False)
class OverlayViews:
    """What a reconstruction overlay shows, every array at the panel size P.

    image:     (P, P, 3) uint8 RGB input (the aligned crop at P pixels)
    render:    (P, P, 3) float in [0, 1], the textured, lit reconstruction
    mask:      (P, P) bool, where the reconstruction covers the panel
    geometry:  (P, P, 3) uint8 RGB, the same mesh and pose in a neutral grey material under a fixed light
    landmarks: (68, 2) the reconstruction's projected landmarks, panel pixels
    detected:  (N, 2) the detector's landmarks, panel pixels (N = 0 when there are none)
    """

    image: np.ndarray
    render: np.ndarray
    mask: np.ndarray
    geometry: np.ndarray
    landmarks: np.ndarray
    detected: np.ndarray


def grey_shading(
    screen: torch.Tensor,
    normals_camera: torch.Tensor,
    triangles: torch.Tensor,
    size: tuple[int, int],
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Grey material under `GEOMETRY_LIGHT`: Lambert plus a small Blinn highlight, per pixel.

    Args:
        screen: (V, 3) screen vertices (pixel x, pixel y, depth), as `renderers.camera.to_screen` returns.
        normals_camera: (V, 3) unit vertex normals in camera space.
        triangles: (F, 3) vertex ids.
        size: (height, width) of the image.

    Returns:
        (H, W, 3) uint8 RGB shaded geometry on `GEOMETRY_BACKGROUND`, and the (H, W) bool coverage.
    """
    from renderers.rasterizer import interpolate, rasterize

    with torch.no_grad():
        fragments = rasterize(screen[None].float(), triangles, size, backend=backend)
        normals = interpolate(normals_camera[None].float(), triangles, fragments)[0]
        normals = normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        light = torch.tensor(GEOMETRY_LIGHT, dtype=normals.dtype, device=normals.device)
        light = light / light.norm()
        # Normals face the camera (negative z) on the visible side; the viewer looks along +z.
        half = light + torch.tensor([0.0, 0.0, -1.0], dtype=normals.dtype, device=normals.device)
        half = half / half.norm()
        diffuse = (normals @ light).clamp_min(0.0)
        specular = (normals @ half).clamp_min(0.0) ** 32
        value = (GEOMETRY_GREY * (0.18 + 0.82 * diffuse) + 0.15 * specular).clamp(0.0, 1.0)
        mask = fragments.mask[0].cpu().numpy()
    grey = (value.cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    image = np.empty((*size, 3), np.uint8)
    image[:] = GEOMETRY_BACKGROUND
    image[mask] = grey[mask][:, None]
    return image, mask


def render_overlay_views(
    renderer, coeffs, image: np.ndarray, detected: np.ndarray | None = None, panel: int = OVERLAY_PANEL
) -> OverlayViews:
    """Render one reconstruction (``coeffs`` with batch 1) for the overlay at ``panel`` pixels.

    Args:
        renderer: the `renderers.mesh_renderer.MeshRenderer` the coefficients were predicted for (its camera
            draws the crop; the panel is the same view at ``panel`` pixels).
        coeffs: `face_model.coefficients.Coefficients`, batch 1.
        image: the input at panel size (P, P, 3) uint8, or the crop at the renderer's size (enlarged here).
        detected: (N, 2) detected landmarks in crop pixels, or None.
        panel: panel side P in pixels.
    """
    from geometry.normals import vertex_normals
    from renderers.camera import to_screen

    crop_size = renderer.camera.image_size[0]
    factor = panel / crop_size
    camera = renderer.camera.resized(panel, panel)
    image = np.asarray(image, np.uint8)
    if image.shape[:2] != (panel, panel):
        # Pixel centres at +0.5 make a resize a pure scale of coordinates, as for the landmarks below.
        image = cv2.resize(image, (panel, panel), interpolation=cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA)
    with torch.no_grad():
        out = renderer(coeffs, camera=camera)
        model = renderer.face_model
        posed = renderer.pose(model.shape(coeffs), coeffs)
        # Model space (y up, z to the camera) -> camera space (y down, z forward): flip y and z.
        normals = vertex_normals(posed, model.triangles)[0] * torch.tensor([1.0, -1.0, -1.0], device=posed.device)
        geometry, _ = grey_shading(
            to_screen(out.vertices_camera[0], camera), normals, model.triangles, (panel, panel), renderer.backend
        )
    detected = np.zeros((0, 2)) if detected is None else np.asarray(detected, np.float64) * factor
    return OverlayViews(
        image=np.ascontiguousarray(image),
        render=out.image[0].permute(1, 2, 0).clamp(0, 1).cpu().double().numpy(),
        mask=out.mask[0, 0].cpu().numpy() > 0.5,
        geometry=geometry,
        landmarks=out.landmarks[0].cpu().double().numpy(),
        detected=detected,
    )


def overlay_panels(views: OverlayViews) -> np.ndarray:
    """(P, 4P, 3) uint8 strip: input | textured reconstruction over the input | grey geometry alone (same pose,
    fixed light) | input with the detected (red) and the reconstruction's (green) landmarks."""
    image = views.image
    render = (np.clip(views.render, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    over = np.where(views.mask[..., None], render, image)
    points = draw_landmarks(draw_landmarks(image, views.detected, TARGET_COLOUR), views.landmarks, LANDMARK_COLOUR)
    return np.concatenate(
        [
            label(image, "input"),
            label(over, "reconstruction"),
            label(views.geometry, "geometry"),
            label(points, "red detected, green model"),
        ],
        axis=1,
    )
