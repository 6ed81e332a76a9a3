"""Evaluation metrics: pure functions (`functional`, built on `surface`, `alignment`, `protocols`,
`stats`) and thin torchmetrics wrappers (`modules`)."""

from benchmarks.metrics.functional import (DM_TO_MM, NOW_LANDMARKS_68, AlignedErrors, ErrorStats, ICPResult,
                                           SimilarityTransform, SurfaceQuery, TriangleMesh, centroid_alignment,
                                           closest_points_on_triangles, crop_mesh, fit_similarity, icp,
                                           landmark_error, nearest_vertex, now_face_crop_mask,
                                           now_landmarks_from_68, now_scan_to_mesh, point_to_plane,
                                           point_to_surface, procrustes, radius_mask, region_point_to_point,
                                           scan_to_mesh, summarise, vertex_error, vertex_normals)
from benchmarks.metrics.modules import ErrorSummary, FractionCloser, LandmarkError, ScanToMeshError, ShapeError

__all__ = [
    "DM_TO_MM", "NOW_LANDMARKS_68", "AlignedErrors", "ErrorStats", "ErrorSummary", "FractionCloser", "ICPResult",
    "LandmarkError", "ScanToMeshError", "ShapeError", "SimilarityTransform", "SurfaceQuery", "TriangleMesh",
    "centroid_alignment", "closest_points_on_triangles", "crop_mesh", "fit_similarity", "icp",
    "landmark_error", "nearest_vertex", "now_face_crop_mask", "now_landmarks_from_68", "now_scan_to_mesh",
    "point_to_plane", "point_to_surface", "procrustes", "radius_mask", "region_point_to_point",
    "scan_to_mesh", "summarise", "vertex_error", "vertex_normals",
]
