"""UV-space tools for detail maps (HRN): texel look-up tables, position maps, visibility-aware unwrapping of a
photo, sampling UV maps back to vertices, normals of a displaced surface and a subdivided detail mesh.

Conventions follow `renderers.texture`: uvs in OBJ's convention (u right, v up, in [0, 1]); a UV map is a
(B, C, S, S) image whose row 0 is v = 1, texel (row i, col j) centred at ``((j + 0.5) / S, 1 - (i + 0.5) / S)``.
Screen points are the rasterizer's (pixel x right, pixel y down, pixel (i, j) centred at (j + 0.5, i + 0.5)).

Everything is plain PyTorch and differentiable with respect to vertices, images and maps (the texel-to-triangle
table and visibility are hard decisions, as in the rasterizer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from geometry.normals import vertex_normals
from renderers.camera import PinholeCamera, to_screen
from renderers.rasterizer import rasterize


@dataclass(frozen=True, eq=False)
class UVAtlas:
    """Where every texel of a square UV map lies on a mesh (built once per layout and size).

    face:      (S, S) long, mesh triangle under the texel centre, -1 outside the UV charts
    bary:      (S, S, 3) barycentrics of the texel centre in that triangle (0 outside the charts)
    triangles: (F, 3) long mesh triangles (vertex ids)
    vertex_uv: (V, 2) one uv per mesh vertex (a vertex on a seam takes the uv of its first corner)
    """

    face: torch.Tensor
    bary: torch.Tensor
    triangles: torch.Tensor
    vertex_uv: torch.Tensor

    @property
    def size(self) -> int:
        return self.face.shape[0]

    @property
    def mask(self) -> torch.Tensor:
        """(S, S) bool, True on texels covered by a chart."""
        return self.face >= 0

    def to(self, device: torch.device | str) -> UVAtlas:
        return UVAtlas(*(t.to(device) for t in (self.face, self.bary, self.triangles, self.vertex_uv)))


def build_uv_atlas(triangles: torch.Tensor, uvs: torch.Tensor, uv_faces: torch.Tensor, size: int) -> UVAtlas:
    """Rasterize a UV layout into a (size, size) texel table.

    Args:
        triangles: (F, 3) mesh vertex ids per triangle.
        uvs: (T, 2) texture coordinates, OBJ convention.
        uv_faces: (F, 3) uv ids of each triangle's corners (rows match ``triangles``).
        size: side of the UV maps in texels.
    """
    triangles, uv_faces = torch.as_tensor(triangles).long(), torch.as_tensor(uv_faces).long()
    uvs = torch.as_tensor(uvs, dtype=torch.float32)
    if triangles.shape != uv_faces.shape or triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ValueError(
            f"triangles {tuple(triangles.shape)} and uv_faces {tuple(uv_faces.shape)} must both be (F, 3), "
            "one row of uv ids per mesh triangle"
        )
    if size < 2:
        raise ValueError(f"a UV map needs at least 2x2 texels, got size {size}")
    # UV triangles drawn as screen triangles at constant depth: barycentrics are then affine in uv.
    screen = torch.stack([uvs[:, 0] * size, (1.0 - uvs[:, 1]) * size, torch.ones_like(uvs[:, 0])], dim=-1)
    with torch.no_grad():
        fragments = rasterize(screen.unsqueeze(0), uv_faces, (size, size), backend="torch")
    n_vertices = int(triangles.max()) + 1
    vertex_uv = torch.zeros(n_vertices, 2)
    # Reverse order so that the first corner naming a vertex is the one written last (index_copy keeps the last).
    flat_v, flat_uv = triangles.reshape(-1).flip(0), uv_faces.reshape(-1).flip(0)
    vertex_uv[flat_v] = uvs[flat_uv]
    return UVAtlas(
        face=fragments.pix_to_face[0].long(),
        bary=fragments.bary[0].detach().float(),
        triangles=triangles,
        vertex_uv=vertex_uv,
    )


def attribute_map(values: torch.Tensor, atlas: UVAtlas) -> torch.Tensor:
    """(B, V, C) per-vertex values -> (B, C, S, S) their barycentric blend at every texel, 0 outside the charts."""
    if values.ndim != 3:
        raise ValueError(f"values must be (B, V, C), got {tuple(values.shape)}")
    face = atlas.face.clamp(min=0)
    corners = values[:, atlas.triangles[face]]  # (B, S, S, 3, C)
    blended = (atlas.bary.to(values.dtype)[None, ..., None] * corners).sum(-2)
    blended = blended * atlas.mask[None, ..., None].to(values.dtype)
    return blended.permute(0, 3, 1, 2)


def position_map(vertices: torch.Tensor, atlas: UVAtlas) -> torch.Tensor:
    """(B, V, 3) vertices -> (B, 3, S, S) the surface point under every texel (HRN's position map)."""
    return attribute_map(vertices, atlas)


def sample_uv_map(uv_map: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear look-up of a UV map at given uvs.

    Args:
        uv_map: (B, C, S, S) map, row 0 at v = 1.
        uv: (N, 2) uvs shared by the batch (e.g. `UVAtlas.vertex_uv`) or (B, N, 2).

    Returns:
        (B, N, C) values (the border texel repeats outside [0, 1]).
    """
    if uv_map.ndim != 4:
        raise ValueError(f"uv_map must be (B, C, S, S), got {tuple(uv_map.shape)}")
    if uv.ndim == 2:
        uv = uv.unsqueeze(0).expand(uv_map.shape[0], -1, -1)
    grid = torch.stack([2.0 * uv[..., 0] - 1.0, 1.0 - 2.0 * uv[..., 1]], dim=-1).to(uv_map.dtype)
    sampled = F.grid_sample(uv_map, grid.unsqueeze(1), mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[:, :, 0].transpose(1, 2)


def sample_at_pixels(image: torch.Tensor, points: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """(B, C, H, W) image, (B, ..., 2) pixel coordinates (x right, y down) -> (B, C, ...) values there."""
    batch, _, height, width = image.shape
    flat = points.reshape(batch, 1, -1, 2)
    grid = torch.stack([2.0 * flat[..., 0] / width - 1.0, 2.0 * flat[..., 1] / height - 1.0], dim=-1)
    out = F.grid_sample(image, grid.to(image.dtype), mode=mode, padding_mode="border", align_corners=False)
    return out.reshape(batch, image.shape[1], *points.shape[1:-1])


@dataclass(frozen=True)
class UnwrapSettings:
    """How a photo is unwrapped into UV.

    depth_tolerance: a texel counts as visible when its depth is within this of the nearest surface at its
        pixel (camera units, decimetres; 0.05 = 5 mm), which absorbs the depth buffer's pixel quantisation
    min_facing: texels whose surface turns away from the camera by more than arccos(min_facing) are invisible
        (grazing views smear the photo over the map)
    """

    depth_tolerance: float = 0.05
    min_facing: float = 0.1


@dataclass(frozen=True)
class Unwrapped:
    """A photo unwrapped into UV.

    texture:    (B, 3, S, S) the photo's colour at every visible texel, 0 elsewhere
    visibility: (B, 1, S, S) 1 where the texel is seen (in the charts, in front, facing the camera), else 0
    visible_share: (B,) share of the chart texels that are visible (a profile view sees about half)
    """

    texture: torch.Tensor
    visibility: torch.Tensor
    visible_share: torch.Tensor


def unwrap_image(
    image: torch.Tensor,
    vertices_camera: torch.Tensor,
    camera: PinholeCamera,
    atlas: UVAtlas,
    settings: UnwrapSettings = UnwrapSettings(),
    backend: str = "auto",
) -> Unwrapped:
    """Visibility-aware unwrapping of a photo into UV through the posed mesh.

    Args:
        image: (B, 3, H, W) photo.
        vertices_camera: (B, V, 3) the mesh in the photo's OpenCV camera space (`model_to_camera`).
        camera: the photo's camera (its image size must be the photo's).
        atlas: the mesh's `UVAtlas`.

    A texel is visible where its surface point is the nearest surface at its pixel (the mesh's own depth
    buffer) and faces the camera; hidden texels get 0 and visibility 0, so that nothing of a self-occluded
    or out-of-frame region is copied from the wrong surface.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
    if vertices_camera.shape[0] != image.shape[0]:
        raise ValueError(f"{vertices_camera.shape[0]} meshes for {image.shape[0]} images")
    height, width = image.shape[-2:]
    if tuple(camera.image_size) != (height, width):
        raise ValueError(f"the camera's image size {camera.image_size} is not the photo's {(height, width)}")
    screen = to_screen(vertices_camera, camera)
    fragments = rasterize(screen.detach(), atlas.triangles, (height, width), backend=backend)
    texel_screen = attribute_map(screen, atlas)  # (B, 3, S, S)
    points = texel_screen[:, :2].permute(0, 2, 3, 1)
    texture = sample_at_pixels(image, points)
    # The depth buffer read at the nearest pixel: bilinear reading would blend across silhouettes.
    nearest = sample_at_pixels(fragments.depth.unsqueeze(1).detach(), points.detach(), mode="nearest")[:, 0]
    texel_depth = texel_screen[:, 2].detach()
    p = points.detach()
    inside = (p[..., 0] >= 0) & (p[..., 0] < width) & (p[..., 1] >= 0) & (p[..., 1] < height)
    in_front = (nearest > 0) & (texel_depth <= nearest + settings.depth_tolerance)
    facing = texel_facing(vertices_camera.detach(), atlas)
    visible = atlas.mask & inside & in_front & (facing > settings.min_facing)
    visibility = visible.unsqueeze(1).to(image.dtype)
    share = visible.flatten(1).sum(1).to(image.dtype) / atlas.mask.sum().clamp(min=1).to(image.dtype)
    return Unwrapped(texture=texture * visibility, visibility=visibility, visible_share=share)


def texel_facing(vertices_camera: torch.Tensor, atlas: UVAtlas) -> torch.Tensor:
    """(B, S, S) cosine between each texel's outward normal and the direction towards the camera (positive
    when the surface faces the camera), from camera-space vertices."""
    normals = vertex_normals(vertices_camera, atlas.triangles)
    texel_normals = F.normalize(attribute_map(normals, atlas), dim=1)
    texel_rays = F.normalize(attribute_map(vertices_camera, atlas), dim=1)
    return -(texel_normals * texel_rays).sum(1)


def displaced_normal_map(
    positions: torch.Tensor, normals: torch.Tensor, displacement: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Unit normals of the surface ``P + d N`` at every texel (HRN's high-frequency layer).

    Args:
        positions: (B, 3, S, S) position map P.
        normals: (B, 3, S, S) unit normal map N of the undisplaced surface.
        displacement: (B, 1, S, S) displacement d along N (same units as P).
        mask: (S, S) bool chart texels.

    Returns:
        (B, 3, S, S) unit normals, from central differences of the displaced surface along u and v, oriented
        like N; where a neighbour leaves the charts the one-sided difference is used, and texels with no
        neighbour inside along an axis keep N.
    """
    surface = positions + displacement * normals
    valid = mask.to(positions.dtype)[None, None]
    du = _masked_difference(surface, valid, dim=-1)
    dv = _masked_difference(surface, valid, dim=-2)
    cross = torch.cross(du, dv, dim=1)
    length = cross.norm(dim=1, keepdim=True)
    cross = cross * torch.sign((cross * normals).sum(1, keepdim=True) + 1e-12)
    ok = (length > 1e-9) & (valid > 0)
    result = torch.where(ok, cross / length.clamp_min(1e-12), normals)
    return result * valid


def _masked_difference(surface: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    """Derivative of ``surface`` along one texel axis, using only neighbours inside the charts."""
    forward = torch.roll(surface, -1, dims=dim) - surface
    backward = surface - torch.roll(surface, 1, dims=dim)
    has_forward = valid * torch.roll(valid, -1, dims=dim)
    has_backward = valid * torch.roll(valid, 1, dims=dim)
    # roll wraps around the map's border; those pairs are not neighbours.
    edge = torch.ones_like(valid)
    index = [slice(None)] * 4
    index[dim] = -1
    edge_f = edge.clone()
    edge_f[tuple(index)] = 0
    index[dim] = 0
    edge_b = edge.clone()
    edge_b[tuple(index)] = 0
    has_forward, has_backward = has_forward * edge_f, has_backward * edge_b
    count = (has_forward + has_backward).clamp(min=1)
    return (forward * has_forward + backward * has_backward) / count


@dataclass(frozen=True)
class SubdividedMesh:
    """A mesh after midpoint subdivision, with its UV layout.

    vertices:  (B, V', 3)
    triangles: (4F, 3) long
    uvs:       (T', 2)
    uv_faces:  (4F, 3) long
    parents:   (V', 2) long, the two original vertices each vertex lies between (both the same for originals)
    """

    vertices: torch.Tensor
    triangles: torch.Tensor
    uvs: torch.Tensor
    uv_faces: torch.Tensor
    parents: torch.Tensor


def _midpoint_split(faces: torch.Tensor, n_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, 3) faces over n_points -> ((E, 2) unique edges, (4F, 3) faces over n_points + E points)."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=0).sort(dim=1).values
    unique, inverse = torch.unique(edges, dim=0, return_inverse=True)
    n_faces = faces.shape[0]
    m01, m12, m20 = (inverse[k * n_faces : (k + 1) * n_faces] + n_points for k in range(3))
    a, b, c = faces.unbind(1)
    new_faces = torch.cat(
        [
            torch.stack([a, m01, m20], 1),
            torch.stack([m01, b, m12], 1),
            torch.stack([m20, m12, c], 1),
            torch.stack([m01, m12, m20], 1),
        ]
    )
    return unique, new_faces


def subdivide(
    vertices: torch.Tensor, triangles: torch.Tensor, uvs: torch.Tensor, uv_faces: torch.Tensor
) -> SubdividedMesh:
    """Midpoint subdivision (every triangle into four, new vertices at edge midpoints), of the mesh and of its
    UV layout alike, so a displacement map can be applied at four times the triangle density."""
    triangles, uv_faces = triangles.long(), uv_faces.long()
    edges, faces = _midpoint_split(triangles, vertices.shape[1])
    uv_edges, new_uv_faces = _midpoint_split(uv_faces, uvs.shape[0])
    mid = 0.5 * (vertices[:, edges[:, 0]] + vertices[:, edges[:, 1]])
    uv_mid = 0.5 * (uvs[uv_edges[:, 0]] + uvs[uv_edges[:, 1]])
    own = torch.arange(vertices.shape[1], device=vertices.device)
    return SubdividedMesh(
        vertices=torch.cat([vertices, mid], dim=1),
        triangles=faces,
        uvs=torch.cat([uvs, uv_mid]),
        uv_faces=new_uv_faces,
        parents=torch.cat([torch.stack([own, own], 1), edges]),
    )


def displace_mesh(
    mesh: SubdividedMesh, displacement: torch.Tensor, deformation: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, V', 3) vertices of a (subdivided) mesh moved by a deformation map (3 channels, added) and then by a
    displacement map (1 channel, along the vertex normals), both sampled at each vertex's uv."""
    atlas_uv = torch.zeros(mesh.vertices.shape[1], 2, dtype=mesh.uvs.dtype, device=mesh.uvs.device)
    atlas_uv[mesh.triangles.reshape(-1).flip(0)] = mesh.uvs[mesh.uv_faces.reshape(-1).flip(0)]
    vertices = mesh.vertices
    if deformation is not None:
        vertices = vertices + sample_uv_map(deformation, atlas_uv)
    normals = vertex_normals(vertices, mesh.triangles)
    return vertices + sample_uv_map(displacement, atlas_uv) * normals
