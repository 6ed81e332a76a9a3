"""UV texture mapping on top of the rasterizer's `Fragments`, as pure functions.

A textured mesh (OBJ style) has its own texture-coordinate table, separate from the vertices: every
face corner names a vertex id (``faces``) and a uv id (``uv_faces``), so a vertex on a texture seam
can carry several uvs. UVs follow OBJ's convention: ``u`` from the left edge of the texture image (0)
to its right edge (1), ``v`` from the BOTTOM edge (0) to the top (1); a uv names a point of the
continuous image (texel ``(row i, col j)`` is centred at ``((j + 0.5) / W, 1 - (i + 0.5) / H)``).

`interpolate_uv` blends the uvs of each pixel's face corners with the fragments' barycentrics (the
barycentrics are perspective-correct, so the texture is too), `sample_texture` looks the texture up
bilinearly (``torch.nn.functional.grid_sample``), and `texture_image` does both. All three are
differentiable with respect to the texture and, through the barycentrics, the screen vertices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from renderers.rasterizer.fragments import Fragments


def _check_uv_tables(uvs: torch.Tensor, uv_faces: torch.Tensor, n_faces: int | None = None) -> None:
    if uvs.ndim != 2 or uvs.shape[1] != 2 or not uvs.is_floating_point():
        raise ValueError(f"uvs must be a float (T, 2) table of texture coordinates, got {tuple(uvs.shape)} {uvs.dtype}")
    if uv_faces.ndim != 2 or uv_faces.shape[1] != 3 or uv_faces.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"uv_faces must be an integer (F, 3) table of uv ids per face corner, got "
            f"{tuple(uv_faces.shape)} {uv_faces.dtype}"
        )
    if n_faces is not None and uv_faces.shape[0] != n_faces:
        raise ValueError(
            f"uv_faces has {uv_faces.shape[0]} rows but the mesh has {n_faces} faces: give one "
            "row of uv ids per face, in the order of the faces given to rasterize"
        )
    if uv_faces.numel() and (int(uv_faces.min()) < 0 or int(uv_faces.max()) >= uvs.shape[0]):
        raise ValueError(
            f"uv_faces refer to uv ids in [{int(uv_faces.min())}, {int(uv_faces.max())}] but "
            f"there are {uvs.shape[0]} uvs"
        )


def interpolate_uv(uvs: torch.Tensor, uv_faces: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """Texture coordinates at every pixel.

    Args:
        uvs: (T, 2) texture coordinates (u, v), OBJ convention (module docstring).
        uv_faces: (F, 3) uv ids of each face's corners, in the same corner order as the faces that
            were rasterized (OBJ's ``f v/vt`` pairs split into two tables).
        fragments: `renderers.rasterizer.rasterize`'s result for those faces.

    Returns:
        (B, H, W, 2) uv per pixel, 0 on background.
    """
    _check_uv_tables(uvs, uv_faces)
    pix_to_face = fragments.pix_to_face
    if pix_to_face.numel() and int(pix_to_face.max()) >= uv_faces.shape[0]:
        raise ValueError(
            f"the fragments refer to face {int(pix_to_face.max())} but uv_faces has only "
            f"{uv_faces.shape[0]} rows: give one row of uv ids per rasterized face"
        )
    covered = pix_to_face >= 0
    corners = uvs.to(fragments.bary.dtype)[uv_faces.long()[pix_to_face.clamp(min=0)]]  # (B, H, W, 3, 2)
    uv = (fragments.bary.unsqueeze(-1) * corners).sum(-2)
    return uv * covered.unsqueeze(-1).to(uv.dtype)


def sample_texture(texture: torch.Tensor, uv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bilinear texture look-up.

    Args:
        texture: (B, C, Ht, Wt) or (C, Ht, Wt) image (shared by the batch when unbatched), row 0 at the top.
        uv: (B, H, W, 2) texture coordinates, OBJ convention; outside [0, 1] the border texel repeats.
        mask: optional (B, H, W) bool; pixels outside it are set to 0.

    Returns:
        (B, H, W, C) colours.
    """
    if uv.ndim != 4 or uv.shape[-1] != 2:
        raise ValueError(f"uv must be (B, H, W, 2), got {tuple(uv.shape)}")
    if texture.ndim == 3:
        texture = texture.unsqueeze(0).expand(uv.shape[0], -1, -1, -1)
    if texture.ndim != 4 or texture.shape[0] != uv.shape[0]:
        raise ValueError(
            f"texture must be (C, Ht, Wt) or (B, C, Ht, Wt) with B = {uv.shape[0]}, got {tuple(texture.shape)}"
        )
    if not texture.is_floating_point():
        raise TypeError(
            f"texture must be a floating-point tensor, got {texture.dtype}; convert uint8 images with .float() / 255"
        )
    # grid_sample's grid runs from -1 (left / top edge) to 1 (right / bottom edge) with
    # align_corners=False, which is exactly the continuous-image convention of the uvs; v points up.
    grid = torch.stack([2.0 * uv[..., 0] - 1.0, 1.0 - 2.0 * uv[..., 1]], dim=-1).to(texture.dtype)
    colours = F.grid_sample(texture, grid, mode="bilinear", padding_mode="border", align_corners=False)
    colours = colours.permute(0, 2, 3, 1)
    if mask is not None:
        colours = colours * mask.unsqueeze(-1).to(colours.dtype)
    return colours


def texture_image(
    texture: torch.Tensor, uvs: torch.Tensor, uv_faces: torch.Tensor, fragments: Fragments
) -> torch.Tensor:
    """(B, H, W, C) texture colour of the visible surface at every pixel, 0 on background
    (`interpolate_uv` then `sample_texture`)."""
    uv = interpolate_uv(uvs, uv_faces, fragments)
    return sample_texture(texture, uv, fragments.mask)
