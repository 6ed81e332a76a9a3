"""Evaluation metrics: pure functions (`functional` for correspondences, `surface`, `alignment` and
`protocols` for scans, `stats`) and thin torchmetrics wrappers over them (`modules`). Similarity transforms
and normals are `geometry`'s."""

from metrics.alignment import ICPResult, centroid_alignment, icp
from metrics.functional import DM_TO_MM, landmark_error, vertex_error
from metrics.modules import ErrorSummary, FractionCloser, LandmarkError, ScanToMeshError, ShapeError
from metrics.protocols import (
    NOW_LANDMARKS_68,
    AlignedErrors,
    now_face_crop_mask,
    now_landmarks_from_68,
    now_scan_to_mesh,
    region_point_to_point,
    scan_to_mesh,
)
from metrics.stats import ErrorStats, summarise
from metrics.surface import (
    SurfaceQuery,
    TriangleMesh,
    closest_points_on_triangles,
    crop_mesh,
    nearest_vertex,
    point_to_plane,
    point_to_surface,
    radius_mask,
)

__all__ = [
    "DM_TO_MM",
    "NOW_LANDMARKS_68",
    "AlignedErrors",
    "ErrorStats",
    "ErrorSummary",
    "FractionCloser",
    "ICPResult",
    "LandmarkError",
    "ScanToMeshError",
    "ShapeError",
    "SurfaceQuery",
    "TriangleMesh",
    "centroid_alignment",
    "closest_points_on_triangles",
    "crop_mesh",
    "icp",
    "landmark_error",
    "nearest_vertex",
    "now_face_crop_mask",
    "now_landmarks_from_68",
    "now_scan_to_mesh",
    "point_to_plane",
    "point_to_surface",
    "radius_mask",
    "region_point_to_point",
    "scan_to_mesh",
    "summarise",
    "vertex_error",
]
