"""Distances from points to point sets and triangle meshes (NumPy, float64), and radius crops.

Three distances, from cheapest to most faithful to a surface:

- point-to-point: distance to the nearest vertex (`nearest_vertex`);
- point-to-plane: distance to the tangent plane at the nearest vertex, ``|(p - q) . n_q|``
  (`point_to_plane`); exact for points over a flat region, an under-estimate near edges and borders;
- point-to-surface: distance to the closest point on any triangle (`point_to_surface`), the
  "scan-to-mesh" distance of NoW and of Genova et al.

Everything accepts NumPy arrays or (CPU or GPU) torch tensors and returns NumPy arrays: the nearest
neighbour structure is SciPy's cKDTree, which runs on the CPU in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree

from geometry.normals import vertex_normals
from geometry.points import as_faces, as_points

# Triangles (nearest centroids first) examined per query point in the first round of `closest_points`.
_INITIAL_CANDIDATES = 8
# Point-triangle pairs evaluated at once: bounds the temporary memory to some 100 MB.
_PAIR_CHUNK = 1 << 18


@dataclass(frozen=True)
class SurfaceQuery:
    """Closest points on a mesh surface for a set of query points.

    distances: (N,) Euclidean distance from each query point to the surface
    closest:   (N, 3) the closest surface point
    triangle:  (N,) int64 id of a triangle containing it
    """

    distances: np.ndarray
    closest: np.ndarray
    triangle: np.ndarray


def closest_points_on_triangles(points: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Closest point of triangle ``(a[i], b[i], c[i])`` to ``points[i]``: all (P, 3) -> (P, 3).

    Classifies each point into the Voronoi region of a vertex, an edge or the face of its triangle
    (tested in that order, as in Ericson, Real-Time Collision Detection, 5.1.5) and writes the answer
    as ``a + s (b - a) + t (c - a)``. Degenerate (zero-area) triangles have no face region; for those
    the nearest of the closest points on the three edges is taken instead.
    """
    ab, ac = b - a, c - a
    ap, bp, cp = points - a, points - b, points - c
    d1, d2 = _dot(ab, ap), _dot(ac, ap)
    d3, d4 = _dot(ab, bp), _dot(ac, bp)
    d5, d6 = _dot(ab, cp), _dot(ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    area_sq = va + vb + vc  # = |ab x ac|^2 (Lagrange's identity)
    with np.errstate(divide="ignore", invalid="ignore"):
        v_ab = d1 / (d1 - d3)
        w_ac = d2 / (d2 - d6)
        w_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        v_face, w_face = vb / area_sq, vc / area_sq
    regions = [
        (d1 <= 0) & (d2 <= 0),  # vertex a
        (d3 >= 0) & (d4 <= d3),  # vertex b
        (vc <= 0) & (d1 >= 0) & (d3 <= 0),  # edge ab
        (d6 >= 0) & (d5 <= d6),  # vertex c
        (vb <= 0) & (d2 >= 0) & (d6 <= 0),  # edge ac
        (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0),  # edge bc
    ]
    zero, one = np.zeros_like(d1), np.ones_like(d1)
    s = np.select(regions, [zero, one, v_ab, zero, zero, 1.0 - w_bc], v_face)
    t = np.select(regions, [zero, zero, zero, one, w_ac, w_bc], w_face)
    closest = a + s[:, None] * ab + t[:, None] * ac
    scale = _dot(ab, ab) * _dot(ac, ac)
    # A sliver whose area vanishes at float64 precision has no reliable face region.
    degenerate = area_sq <= 1e-12 * np.maximum(scale, np.finfo(np.float64).tiny)
    if degenerate.any():
        closest[degenerate] = _closest_on_edges(points[degenerate], a[degenerate], b[degenerate], c[degenerate])
    return closest


def _closest_on_edges(points: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    best = _closest_on_segment(points, a, b)
    best_sq = _squared_norm(points - best)
    for start, end in ((b, c), (c, a)):
        candidate = _closest_on_segment(points, start, end)
        closer = _squared_norm(points - candidate) < best_sq
        best[closer] = candidate[closer]
        best_sq = np.where(closer, _squared_norm(points - candidate), best_sq)
    return best


def _closest_on_segment(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    direction = end - start
    length_sq = _squared_norm(direction)
    t = np.einsum("ij,ij->i", points - start, direction) / np.where(length_sq > 0.0, length_sq, 1.0)
    t = np.clip(np.where(length_sq > 0.0, t, 0.0), 0.0, 1.0)
    return start + t[:, None] * direction


def _dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, y)


def _squared_norm(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


class TriangleMesh:
    """A static triangle mesh with the search structures for repeated closest-point queries.

    vertices: (V, 3) float64; faces: (F, 3) int64. Build it once and query many point sets (ICP).
    """

    def __init__(self, vertices: Any, faces: Any) -> None:
        self.vertices = as_points(vertices, "mesh vertices")
        self.faces = as_faces(faces, len(self.vertices), "mesh faces")
        self._corners = self.vertices[self.faces]  # (F, 3 corners, 3)
        self._centroids = self._corners.mean(axis=1)
        # Every point of a triangle lies within this radius of its centroid: the pruning bounds below.
        self._radii = np.sqrt(((self._corners - self._centroids[:, None]) ** 2).sum(-1)).max(axis=1)
        self._tree = cKDTree(self._centroids)
        edges = self._corners[:, 1:] - self._corners[:, :1]
        normals = np.cross(edges[:, 0], edges[:, 1])
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        # (F, 3) unit face normals (zero for degenerate faces), for point-to-plane ICP.
        self.face_normals = np.divide(normals, length, out=np.zeros_like(normals), where=length > 0)

    def closest_points(self, points: Any) -> SurfaceQuery:
        """(N, 3) query points -> exact closest points on the surface (see `SurfaceQuery`).

        Triangles are visited in order of centroid distance, in rounds of doubling size. A triangle
        whose centroid is at distance D from the point is at least D - radius away, so once the best
        distance found is within (k-th centroid distance - largest radius) no unvisited triangle can be
        closer and the point is done: exact, and for points near the surface one round suffices.
        """
        points = as_points(points)
        n, n_faces = len(points), len(self.faces)
        r_max = self._radii.max()
        k = min(_INITIAL_CANDIDATES, n_faces)
        centroid_dist, near = self._tree.query(points, k=k)
        centroid_dist, near = centroid_dist.reshape(n, k), near.reshape(n, k)
        best_sq, best_tri, best_pt = self._best_of_pairs(points, np.repeat(np.arange(n), k), near.ravel(), n)
        pending = np.arange(n)
        last = centroid_dist[:, -1].copy()
        visited = k
        while visited < n_faces:
            pending = pending[np.sqrt(best_sq[pending]) > last[pending] - r_max]
            if pending.size == 0:
                break
            k_next = min(2 * visited, n_faces)
            # Points far from a small mesh can need thousands of candidates: bound (points x k) per chunk.
            step = max(1, _PAIR_CHUNK // k_next)
            for lo in range(0, pending.size, step):
                chunk = pending[lo : lo + step]
                dist, idx = self._tree.query(points[chunk], k=k_next)
                dist, idx = dist[:, visited:], idx[:, visited:]
                # Per-triangle version of the bound drops most new candidates before the exact test.
                keep = dist <= np.sqrt(best_sq[chunk])[:, None] + self._radii[idx]
                rows = np.broadcast_to(chunk[:, None], idx.shape)[keep]
                if rows.size:
                    sq, tri, pt = self._best_of_pairs(points, rows, idx[keep], n)
                    better = sq < best_sq
                    best_sq = np.where(better, sq, best_sq)
                    best_tri = np.where(better, tri, best_tri)
                    best_pt[better] = pt[better]
                last[chunk] = dist[:, -1]
            visited = k_next
        return SurfaceQuery(np.sqrt(best_sq), best_pt, best_tri)

    def _best_of_pairs(
        self, points: np.ndarray, rows: np.ndarray, tris: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per query point, the best of its (row, triangle) pairs; ``rows`` must be non-decreasing.
        Rows without pairs get +inf."""
        best_sq = np.full(n, np.inf)
        best_tri = np.zeros(n, dtype=np.int64)
        best_pt = np.zeros((n, 3))
        for lo in range(0, len(rows), _PAIR_CHUNK):
            r, t = rows[lo : lo + _PAIR_CHUNK], tris[lo : lo + _PAIR_CHUNK]
            corners = self._corners[t]
            closest = closest_points_on_triangles(points[r], corners[:, 0], corners[:, 1], corners[:, 2])
            sq = _squared_norm(points[r] - closest)
            # Rows are grouped: the group minimum, then the first pair attaining it, in linear time.
            starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
            group_min = np.minimum.reduceat(sq, starts)
            hits = np.flatnonzero(sq == np.repeat(group_min, np.diff(np.r_[starts, len(r)])))
            pick = hits[np.r_[True, r[hits][1:] != r[hits][:-1]]]
            rr = r[pick]
            better = sq[pick] < best_sq[rr]
            rr, pick = rr[better], pick[better]
            best_sq[rr] = sq[pick]
            best_tri[rr] = t[pick]
            best_pt[rr] = closest[pick]
        return best_sq, best_tri, best_pt


def point_to_surface(points: Any, vertices: Any, faces: Any) -> SurfaceQuery:
    """Exact distance from each of (N, 3) points to the (V, 3) / (F, 3) triangle mesh surface."""
    return TriangleMesh(vertices, faces).closest_points(points)


def nearest_vertex(points: Any, vertices: Any) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) points and (V, 3) vertices -> (N,) point-to-point distances and (N,) nearest vertex ids."""
    distances, ids = cKDTree(as_points(vertices, "vertices")).query(as_points(points))
    return distances, ids.astype(np.int64)


def point_to_plane(
    points: Any, vertices: Any, faces: Any | None = None, normals: Any | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) distance of each point to the tangent plane at its nearest vertex, and that vertex id.

    Normals come from ``normals`` (V, 3) or are computed from ``faces``; one of them is required.
    """
    vertices = as_points(vertices, "vertices")
    if normals is None:
        if faces is None:
            raise ValueError("point_to_plane needs faces or per-vertex normals")
        faces = as_faces(faces, len(vertices))
        normals = vertex_normals(torch.from_numpy(vertices)[None], torch.from_numpy(faces), area_weighted=True)
        normals = normals[0].numpy()
    else:
        normals = as_points(normals, "normals")
        if len(normals) != len(vertices):
            raise ValueError(f"{len(normals)} normals for {len(vertices)} vertices")
    points = as_points(points)
    _, ids = nearest_vertex(points, vertices)
    offset = points - vertices[ids]
    return np.abs(np.einsum("ij,ij->i", offset, normals[ids])), ids


def radius_mask(points: Any, center: Any, radius: float) -> np.ndarray:
    """(N,) bool: points within ``radius`` (inclusive) of the (3,) ``center``."""
    if not radius > 0:
        raise ValueError(f"crop radius must be positive, got {radius}")
    points = as_points(points)
    center = np.asarray(center.detach().cpu() if hasattr(center, "detach") else center, dtype=np.float64)
    if center.shape != (3,):
        raise ValueError(f"crop centre must have shape (3,), got {center.shape}")
    return np.linalg.norm(points - center, axis=1) <= radius


def crop_mesh(vertices: Any, faces: Any | None, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Keep the vertices where ``mask`` is true and the faces whose three vertices are all kept.

    Returns (K, 3) vertices and (F', 3) faces re-indexed into them (None when ``faces`` is None).
    """
    vertices = as_points(vertices, "vertices")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (len(vertices),):
        raise ValueError(f"mask has shape {mask.shape}, expected ({len(vertices)},)")
    if faces is None:
        return vertices[mask], None
    faces = as_faces(faces, len(vertices))
    new_id = np.cumsum(mask) - 1
    kept = mask[faces].all(axis=1)
    return vertices[mask], new_id[faces[kept]]
