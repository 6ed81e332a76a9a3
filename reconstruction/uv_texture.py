"""UV layouts of face-model meshes and per-vertex colours baked into a UV texture (the textured outputs)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from geometry.mesh_io import UVLayout, colour_bytes
from renderers.rasterizer import interpolate, rasterize

# Texels this far (in pixels) outside the UV charts get the nearest chart colour, so that bilinear and
# mip-mapped lookups at a chart's border do not blend in the background.
_TEXTURE_PADDING = 8


def ict_uv_layout(
    triangles: np.ndarray | torch.Tensor, n_vertices: int, npz_path: str | Path | None = None
) -> UVLayout | None:
    """The bundled ICT-FaceKit UVs for a model loaded from it, or None if ``triangles`` are not its mesh.

    The ICT loader keeps the triangles whose vertices all lie below its vertex count (the "narrow" face
    by default); the same mask selects the rows of ``tri_uv``. The triangles are compared with the
    file's, so a model from elsewhere is never given wrong UVs.
    """
    from face_model.ict import default_ict_path

    path = Path(npz_path) if npz_path is not None else default_ict_path()
    if not path.is_file():
        return None
    with np.load(path) as data:
        if not {"tri", "uv", "tri_uv"} <= set(data.files):
            return None
        tri, uv, tri_uv = data["tri"].astype(np.int64), data["uv"].astype(np.float64), data["tri_uv"].astype(np.int64)
    keep = (tri < n_vertices).all(axis=1)
    triangles = np.asarray(triangles, dtype=np.int64)
    if tri[keep].shape != triangles.shape or not np.array_equal(tri[keep], triangles):
        return None
    return UVLayout(uv=uv, tri_uv=tri_uv[keep])


def uv_to_vertex(triangles: np.ndarray, tri_uv: np.ndarray, n_uv: int) -> np.ndarray:
    """(T,) mesh vertex of every UV vertex (-1 for UV vertices no triangle uses).

    Raises ValueError when a UV vertex sits on two mesh vertices: such a layout cannot carry per-vertex
    colours without ambiguity.
    """
    triangles, tri_uv = np.asarray(triangles, np.int64), np.asarray(tri_uv, np.int64)
    if triangles.shape != tri_uv.shape:
        raise ValueError(f"tri_uv {tri_uv.shape} must have one row per triangle {triangles.shape}")
    mapping = np.full(n_uv, -1, dtype=np.int64)
    mapping[tri_uv.ravel()] = triangles.ravel()
    if not np.array_equal(mapping[tri_uv], triangles):
        raise ValueError("the UV layout maps one UV vertex to several mesh vertices")
    return mapping


def bake_texture(
    vertex_colors: np.ndarray | torch.Tensor,
    triangles: np.ndarray,
    layout: UVLayout,
    size: int,
    background: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterize per-vertex colours into UV space.

    Every texel centre inside a UV triangle gets the barycentric blend of its corners' colours (the UV
    triangles are rasterized as screen triangles at constant depth, with the project's rasterizer).
    Texels up to `_TEXTURE_PADDING` pixels outside the charts take the nearest chart colour; the rest get
    ``background`` (default: the mean colour).

    Args:
        vertex_colors: (V, 3) colours in [0, 1].
        triangles: (F, 3) mesh triangles.
        layout: the mesh's `UVLayout`.
        size: texture side in pixels.

    Returns:
        (size, size, 3) uint8 RGB image, row 0 at v = 1 (image top, as OBJ's ``map_Kd`` expects), and the
        (size, size) bool chart coverage.
    """
    colors = torch.as_tensor(np.asarray(vertex_colors, dtype=np.float32))
    mapping = uv_to_vertex(triangles, layout.tri_uv, len(layout.uv))
    uv_colors = colors[torch.from_numpy(np.maximum(mapping, 0))]
    uv = torch.as_tensor(layout.uv, dtype=torch.float32)
    # Texel (row i, col j) is centred at u = (j + 0.5) / size, v = 1 - (i + 0.5) / size.
    screen = torch.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size, torch.ones_like(uv[:, 0])], dim=-1)
    faces = torch.as_tensor(layout.tri_uv, dtype=torch.long)
    with torch.no_grad():
        fragments = rasterize(screen.unsqueeze(0), faces, (size, size), backend="torch")
        texture = interpolate(uv_colors.unsqueeze(0), faces, fragments)[0].numpy()
    coverage = fragments.mask[0].numpy()
    texture = _pad_charts(texture, coverage, _TEXTURE_PADDING)
    filled = coverage | (
        cv2.dilate(coverage.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=_TEXTURE_PADDING) > 0
    )
    fill = colors.mean(0).numpy() if background is None else np.asarray(background, dtype=np.float32)
    texture[~filled] = fill
    return colour_bytes(texture), coverage


def _pad_charts(texture: np.ndarray, coverage: np.ndarray, steps: int) -> np.ndarray:
    """Grow the covered texels outwards by ``steps`` pixels, each new texel the mean of its covered 3x3
    neighbours."""
    texture = texture.astype(np.float32).copy()
    known = coverage.astype(np.float32)
    for _ in range(steps):
        total = cv2.boxFilter(texture * known[..., None], -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
        count = cv2.boxFilter(known, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
        grow = (known == 0) & (count > 0)
        texture[grow] = total[grow] / count[grow][:, None]
        known[grow] = 1.0
    return texture
