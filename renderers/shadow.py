"""Cast shadows of distant lights by shadow mapping with the project's rasterizer.

The mesh is seen from the light: an orthographic view along the light direction, rasterized into a depth map
(`renderers.rasterizer.rasterize`); a vertex is lit when nothing in the map lies closer to the light than
the vertex itself (minus a small bias against self-shadowing). Testing a few neighbouring texels and
averaging (percentage-closer filtering) gives soft shadow edges. Visibility is per vertex, which suits
Gouraud-shaded meshes as dense as the face models.
"""

from __future__ import annotations

import torch

from renderers.rasterizer import rasterize

# Orthographic depths are offset by this much: the rasterizer interpolates depth perspective-correctly
# (linearly in 1/z), which is linear to within 1e-4 relative when z varies by a few units around 1000.
_DEPTH_OFFSET = 1000.0


def light_frame(directions: torch.Tensor) -> torch.Tensor:
    """(B, 3) unit directions towards the light -> (B, 3, 3) rotation whose rows are (u, v, d): two axes of
    the light's image plane and the direction itself (right-handed)."""
    d = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    # Any axis not parallel to d seeds the frame.
    helper = torch.where(
        (d[:, 1].abs() < 0.9).unsqueeze(-1),
        d.new_tensor([0.0, 1.0, 0.0]).expand_as(d),
        d.new_tensor([1.0, 0.0, 0.0]).expand_as(d),
    )
    u = torch.cross(helper, d, dim=-1)
    u = u / u.norm(dim=-1, keepdim=True)
    v = torch.cross(d, u, dim=-1)
    return torch.stack([u, v, d], dim=1)


def shadow_visibility(
    vertices: torch.Tensor,
    triangles: torch.Tensor,
    directions: torch.Tensor,
    map_size: int = 96,
    bias: float = 0.03,
    filter_radius: int = 1,
    normals: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Fraction of each vertex lit by a distant light.

    Args:
        vertices: (B, V, 3) positions in any right-handed frame (model units).
        triangles: (F, 3) triangles of the occluding mesh (the same mesh receives the shadow).
        directions: (B, 3) directions towards the light, in the frame of ``vertices``.
        map_size: side of the shadow map in texels; it spans the mesh's extent seen from the light.
        bias: depth tolerance in model units: surfaces within it of the closest one count as lit.
        filter_radius: texels tested on each side (0: one texel, hard edges; 1: 3x3 texels).
        normals: optional (B, V, 3) unit vertex normals; with them the bias grows where the light grazes the
            surface (by the depth change across the texels tested), which removes self-shadowing stripes there.
        backend: rasterizer backend.

    Returns:
        (B, V) in [0, 1]: 1 lit, 0 in shadow. Not differentiable (visibility is a hard decision).
    """
    with torch.no_grad():
        frame = light_frame(directions.to(vertices.dtype))
        local = vertices @ frame.transpose(1, 2)  # (B, V, 3): u, v, height along d (larger = nearer the light)
        low = local[..., :2].amin(1, keepdim=True)
        extent = (local[..., :2].amax(1, keepdim=True) - low).amax(-1, keepdim=True).clamp_min(1e-6)
        margin = 2.0 + filter_radius
        scale = (map_size - 2.0 * margin) / extent
        pixels = (local[..., :2] - low) * scale + margin
        distance = local[..., 2:3].amax(1, keepdim=True) - local[..., 2:3]  # from the light's plane, >= 0
        screen = torch.cat([pixels, distance + _DEPTH_OFFSET], dim=-1)
        fragments = rasterize(screen.float(), triangles, (map_size, map_size), backend=backend)
        depth = torch.where(
            fragments.mask, fragments.depth - _DEPTH_OFFSET, torch.full_like(fragments.depth, float("inf"))
        )
        batch, n_vertices = vertices.shape[:2]
        column = pixels[..., 0].floor().long()
        row = pixels[..., 1].floor().long()
        lit = torch.zeros(batch, n_vertices, dtype=vertices.dtype, device=vertices.device)
        count = 0
        flat = depth.reshape(batch, -1)
        tolerance = torch.full_like(distance[..., 0], bias)
        if normals is not None:
            cos = (normals.to(vertices.dtype) * frame[:, 2:3]).sum(-1).abs().clamp(0.1, 1.0)
            slope = (1.0 - cos * cos).sqrt() / cos
            tolerance = tolerance + slope * (filter_radius + 1.0) / scale[..., 0]
        for dy in range(-filter_radius, filter_radius + 1):
            for dx in range(-filter_radius, filter_radius + 1):
                index = (row + dy).clamp(0, map_size - 1) * map_size + (column + dx).clamp(0, map_size - 1)
                nearest = flat.gather(1, index)
                lit += (distance[..., 0] <= nearest.to(vertices.dtype) + tolerance).to(vertices.dtype)
                count += 1
        return lit / count


def sphere_directions(n: int) -> torch.Tensor:
    """(n, 3) unit directions spread evenly over the sphere (Fibonacci lattice), float64."""
    k = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * k / n
    r = (1.0 - z * z).sqrt()
    phi = k * torch.pi * (3.0 - 5.0**0.5)
    return torch.stack([r * phi.cos(), r * phi.sin(), z], dim=-1)


def ambient_occlusion(
    vertices: torch.Tensor,
    triangles: torch.Tensor,
    normals: torch.Tensor,
    n_directions: int = 64,
    map_size: int = 96,
    bias: float = 0.03,
    chunk: int = 16,
    backend: str = "auto",
) -> torch.Tensor:
    """(V,) fraction of the cosine-weighted sky each vertex of one mesh sees (1 = fully open).

    ``vertices`` (V, 3) and unit ``normals`` (V, 3): the mesh is shadow-mapped from ``n_directions`` distant
    lights spread over the sphere, and each light counts with weight ``max(n . d, 0)``, so the result is the
    ambient light a vertex receives from a uniform sky relative to an unoccluded one: low in creases, in the
    eye sockets, between the lips, behind the ears.
    """
    directions = sphere_directions(n_directions).to(vertices)
    weights = (normals @ directions.T).clamp_min(0.0)  # (V, D)
    seen = torch.zeros_like(weights)
    for start in range(0, n_directions, chunk):
        batch = directions[start : start + chunk]
        lit = shadow_visibility(
            vertices.expand(len(batch), -1, -1),
            triangles,
            batch,
            map_size=map_size,
            bias=bias,
            normals=normals.expand(len(batch), -1, -1),
            backend=backend,
        )
        seen[:, start : start + len(batch)] = lit.T
    return (seen * weights).sum(1) / weights.sum(1).clamp_min(1e-12)
