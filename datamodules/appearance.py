"""Photo-like looks for the synthetic faces: whole head, per-identity colouring, non-SH lights, camera effects.

The face model's own render (``look="model"``) is a mask-only face with holes at the eyes, lit by
second-order SH and coloured by the albedo prior's mean (the same red lips and dark brows on everyone):
exactly what a fit assumes, and far from a photograph. ``look="photo"`` renders instead:

* **Geometry** (`HeadScene`): the whole ICT face area with ears and neck plus the eyeballs
  (`face_model.ict.ict_head_geometry`, driven by the face model's own identity and expression coefficients),
  a dark mouth socket behind the lips and a skull cap that carries the hair. Extra vertices follow the
  nearest face-area vertices, so identity and expression move them consistently. Only the face model's
  region is ever predicted or scored; the rest only makes the picture.
* **Colouring** (`sample_identity_look`, `vertex_albedo`): a skin tone from very light to very dark, smooth
  low-frequency blotches, redder cheeks, nose and ears, lips and brows of random colour and strength
  (sometimes none), beards, stubble or moustaches, hair (or a bald scalp) on the cap, the hairline and the
  temples, eyes with sclera, iris and pupil.
* **Light** (`sample_picture_light`, `shade_vertices`): a directional key light (clamped Lambert) with an
  optional cast shadow (`renderers.shadow`), an optional fill light, a sky/ground ambient, coloured or
  tinted lights, a Blinn-Phong sheen; shading in linear RGB with a display gamma. With probability
  ``sh_probability`` the picture is lit by the face model's SH coefficients instead (the old light).
* **Camera and sensor** (`degrade_picture`): focal lengths other than the crop's (the face keeps its size,
  the perspective changes), blur, noise and JPEG compression.

`AppearanceSettings` holds every default. The pure functions take NumPy generators and tensors; the datasets
(`datamodules.synthetic`, `datamodules.image_sets`, `benchmarks.pose_grid`) draw them from their own
per-sample streams, so a picture depends only on its (seed, split, index).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from matplotlib.path import Path as Polygon
from scipy.spatial import cKDTree

from datamodules.backgrounds import BACKGROUND_STYLES
from face_model.coefficients import Coefficients
from face_model.ict import ICTHeadGeometry, ict_head_geometry
from face_model.model import FaceModel
from geometry.normals import vertex_normals
from renderers.camera import PinholeCamera, euler_to_rotation, model_to_camera, rigid_transform, to_screen
from renderers.lighting import blinn_phong, hemisphere_ambient, irradiance, lambert
from renderers.rasterizer import interpolate, rasterize
from renderers.shadow import ambient_occlusion, shadow_visibility

LOOKS = ("photo", "model")
"""``photo``: this module's pictures; ``model``: the face model's own render (mask-only face, SH light)."""
FACIAL_HAIR = ("none", "stubble", "moustache", "goatee", "beard")

# Linear-ish sRGB skin reflectances from very light to very dark (display values, before the gamma).
SKIN_PALETTE = np.array(
    [
        [0.98, 0.84, 0.75],
        [0.93, 0.74, 0.62],
        [0.85, 0.64, 0.50],
        [0.74, 0.53, 0.39],
        [0.60, 0.41, 0.29],
        [0.45, 0.30, 0.21],
        [0.30, 0.20, 0.14],
        [0.20, 0.13, 0.10],
    ],
    dtype=np.float64,
)
HAIR_PALETTE = np.array(
    [
        [0.04, 0.035, 0.03],
        [0.12, 0.08, 0.05],
        [0.25, 0.16, 0.09],
        [0.42, 0.28, 0.16],
        [0.70, 0.55, 0.34],
        [0.55, 0.25, 0.10],
        [0.55, 0.53, 0.50],
        [0.85, 0.84, 0.80],
    ],
    dtype=np.float64,
)
"""Black, dark brown, brown, light brown, blond, red, grey, white."""
_HAIR_WEIGHTS = np.array([0.25, 0.22, 0.17, 0.1, 0.08, 0.05, 0.08, 0.05])
IRIS_PALETTE = np.array(
    [[0.20, 0.11, 0.05], [0.35, 0.22, 0.10], [0.25, 0.35, 0.45], [0.30, 0.38, 0.25], [0.40, 0.50, 0.60]],
    dtype=np.float64,
)
GAMMA = 2.2
LOOK_VERSION = 2
"""Part of the datasets' cache keys: bump it whenever a change here alters the pictures given the same settings."""
_LOWEST_HAIRLINE_DM = 0.3
"""Hairlines are drawn between this and 0.5 dm above the brows."""


@dataclass(frozen=True)
class AppearanceSettings:
    """How synthetic pictures look (every default in one place). Ranges are (low, high) of uniform draws.

    look: "photo" (this module) or "model" (the face model's own SH render of its region, the old look;
        every other field is then ignored).
    full_head: render the whole face area, eyeballs, mouth socket and skull cap; False renders only the face
        model's region (with this module's colouring and light).
    skin_palette_range: indices into `SKIN_PALETTE` (0 very light .. 7 very dark) the skin tone is drawn
        between.
    blotch_strength: relative amplitude of smooth skin-tone variation over the head.
    skin_grain: std of per-vertex luminance noise (pores, fine blemishes), relative.
    redness: range of extra red on cheeks, nose and ears.
    lip_strength, brow_strength: how far lips and brows move from the skin to their own colour (0 = skin).
    facial_hair_probability: chance of stubble, a moustache, a goatee or a beard (male-looking faces).
    hair_probability: chance of hair on the cap (else a bald scalp of skin colour).
    sh_probability: chance that a picture is lit by the face model's SH coefficients instead of lights.
    shadow_probability: chance that the key light casts shadows.
    fill_probability: chance of a second, weaker light from another side.
    coloured_light_probability: chance of saturated light colours (else white to warm/cool tints).
    key_elevation_deg, key_azimuth_deg: key light direction: elevation above the horizon, azimuth from the
        camera axis (either side).
    key_intensity, ambient_intensity: irradiance of the key light and the ambient (before exposure).
    specular: strength of the skin sheen.
    exposure: overall gain after shading (after the auto-exposure).
    auto_exposure: how far the exposure is corrected towards a mid-grey face, as a camera meters (in log terms;
        0: no correction, 1: every face equally bright whatever its tone and light).
    focal_scale: focal length relative to the crop's camera (the face keeps its size in the crop): < 1 is a
        wide angle close up, > 1 a tele lens from afar. (1, 1) keeps the crop's camera.
    blur_probability, blur_sigma_px: defocus/motion-free Gaussian blur, sigma in pixels of a 224 crop.
    noise_std: range of the sensor noise std (colour values in [0, 1]).
    jpeg_probability, jpeg_quality: JPEG compression and its quality range.
    shadow_map_size: texels of the shadow map's side.
    background: style of the backgrounds (`datamodules.backgrounds.BACKGROUND_STYLES`).
    """

    look: str = "photo"
    full_head: bool = True
    skin_palette_range: tuple[float, float] = (0.0, 7.0)
    blotch_strength: float = 0.06
    skin_grain: float = 0.025
    redness: tuple[float, float] = (0.0, 0.12)
    lip_strength: tuple[float, float] = (0.1, 0.9)
    brow_strength: tuple[float, float] = (0.3, 1.0)
    facial_hair_probability: float = 0.35
    hair_probability: float = 0.9
    sh_probability: float = 0.15
    shadow_probability: float = 0.6
    fill_probability: float = 0.5
    coloured_light_probability: float = 0.12
    key_elevation_deg: tuple[float, float] = (-15.0, 60.0)
    key_azimuth_deg: tuple[float, float] = (0.0, 100.0)
    key_intensity: tuple[float, float] = (0.6, 1.2)
    ambient_intensity: tuple[float, float] = (0.15, 0.6)
    specular: tuple[float, float] = (0.0, 0.25)
    exposure: tuple[float, float] = (0.85, 1.25)
    auto_exposure: float = 0.7
    focal_scale: tuple[float, float] = (0.6, 2.0)
    blur_probability: float = 0.3
    blur_sigma_px: tuple[float, float] = (0.4, 1.6)
    noise_std: tuple[float, float] = (0.004, 0.03)
    jpeg_probability: float = 0.5
    jpeg_quality: tuple[int, int] = (35, 95)
    shadow_map_size: int = 96
    background: str = "mixed"

    def __post_init__(self) -> None:
        if self.look not in LOOKS:
            raise ValueError(f"unknown look {self.look!r}; choose one of {LOOKS}")
        for name in (
            "auto_exposure",
            "facial_hair_probability",
            "hair_probability",
            "sh_probability",
            "shadow_probability",
            "fill_probability",
            "coloured_light_probability",
            "blur_probability",
            "jpeg_probability",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in (
            "skin_palette_range",
            "redness",
            "lip_strength",
            "brow_strength",
            "key_intensity",
            "ambient_intensity",
            "specular",
            "exposure",
            "focal_scale",
            "blur_sigma_px",
            "noise_std",
            "jpeg_quality",
            "key_elevation_deg",
            "key_azimuth_deg",
        ):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {(low, high)}")
        low, high = self.skin_palette_range
        if low < 0 or high > len(SKIN_PALETTE) - 1:
            raise ValueError(f"skin_palette_range must lie in [0, {len(SKIN_PALETTE) - 1}], got {(low, high)}")
        if self.focal_scale[0] <= 0:
            raise ValueError(f"focal_scale must be positive, got {self.focal_scale}")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality must be within [1, 100], got {self.jpeg_quality}")
        if self.background not in BACKGROUND_STYLES:
            raise ValueError(f"unknown background style {self.background!r}; choose one of {BACKGROUND_STYLES}")
        if self.shadow_map_size < 16:
            raise ValueError(f"shadow_map_size must be at least 16 texels, got {self.shadow_map_size}")

    def as_dict(self) -> dict:
        """The settings with `LOOK_VERSION`, for cache keys and reports."""
        return {**dataclasses.asdict(self), "look_version": LOOK_VERSION}


APPEARANCE_GAP = AppearanceSettings(
    lip_strength=(0.0, 0.0),
    brow_strength=(0.0, 0.25),
    blotch_strength=0.0,
    redness=(0.0, 0.0),
    facial_hair_probability=0.2,
    sh_probability=0.0,
    shadow_probability=0.8,
    fill_probability=0.3,
    coloured_light_probability=0.4,
    key_azimuth_deg=(20.0, 90.0),
    blur_probability=0.0,
    jpeg_probability=0.0,
    noise_std=(0.005, 0.01),
    background="indoor",
    focal_scale=(1.0, 1.0),
)
"""The benchmark's appearance-gap look: what a fit does not assume. Uniform skin of any tone without the prior's
lips and brows (faint brows at most), lights from the side that SH cannot represent, most with cast shadows,
coloured lights, eyes and hair rendered, indoor backgrounds (training's are mostly procedural patterns); no blur
or compression, so the gap is appearance only."""


# ------------------------------------------------------------------------------------------ the scene


@dataclass(frozen=True, eq=False)
class HeadScene:
    """Everything rendered for ``look="photo"``: the head geometry plus derived vertices, and vertex regions.

    Vertices: the head's (`ICTHeadGeometry`, V_head) then E extra ones (skull cap, mouth socket). Extra vertex
    ``e`` sits at ``rest[e] + sum_k weights[e, k] * (head[anchors[e, k]] - head_mean[anchors[e, k]])``: it
    moves with the displacement of its anchors, so expressions and identities carry it along.

    head:      `ICTHeadGeometry`, or None when only the face model's region is rendered
    mean:      (V, 3) neutral mean of all vertices (head, then extra), decimetres
    triangles: (F, 3) all triangles
    anchors:   (E, K) long head-vertex ids of each extra vertex
    weights:   (E, K) their weights (rows sum to 1)
    regions:   name -> (V,) float32 weights in [0, 1] on the mean (see `scene_regions`)
    n_face:    vertices shared with the face model (a prefix)
    """

    head: ICTHeadGeometry | None
    mean: torch.Tensor
    triangles: torch.Tensor
    anchors: torch.Tensor
    weights: torch.Tensor
    regions: dict[str, np.ndarray]
    n_face: int

    @property
    def n_vertices(self) -> int:
        return self.mean.shape[0]

    def to(self, device: torch.device | str) -> HeadScene:
        """The scene with its tensors on ``device`` (itself when they are there already)."""
        if self.mean.device == torch.device(device):
            return self
        return dataclasses.replace(
            self,
            head=None if self.head is None else self.head.to(device),
            mean=self.mean.to(device),
            triangles=self.triangles.to(device),
            anchors=self.anchors.to(device),
            weights=self.weights.to(device),
        )

    def vertices(self, face_model: FaceModel, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """(B, n_id), (B, n_exp) -> (B, V, 3) model-space vertices of the whole scene."""
        if self.head is None:
            zeros = face_model.layout.zeros(identity.shape[0], device=identity.device)
            return face_model.shape(zeros.replace(identity=identity, expression=expression))
        head = self.head.shape(identity, expression)
        if self.anchors.shape[0] == 0:
            return head
        n_head = head.shape[1]
        displacement = head - self.head.mean_shape.to(head)
        extra = self.mean[n_head:].to(head) + (displacement[:, self.anchors] * self.weights.to(head)[..., None]).sum(2)
        return torch.cat([head, extra], dim=1)


def _boundary_loops(triangles: np.ndarray) -> list[np.ndarray]:
    """Closed loops of boundary edges (edges of one triangle), each an ordered array of vertex ids."""
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    key = np.sort(edges, axis=1)
    unique, counts = np.unique(key, axis=0, return_counts=True)
    boundary = unique[counts == 1]
    neighbours: dict[int, list[int]] = {}
    for a, b in boundary:
        neighbours.setdefault(int(a), []).append(int(b))
        neighbours.setdefault(int(b), []).append(int(a))
    seen: set[int] = set()
    loops = []
    for start in sorted(neighbours):
        if start in seen:
            continue
        loop, previous, current = [start], -1, start
        seen.add(start)
        while True:
            following = [n for n in neighbours[current] if n != previous and n not in seen]
            if not following:
                break
            previous, current = current, following[0]
            loop.append(current)
            seen.add(current)
        loops.append(np.asarray(loop))
    return loops


def _nearest_anchors(points: np.ndarray, reference: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """K nearest reference vertices of each point and inverse-distance weights (rows sum to 1)."""
    near, anchors = cKDTree(reference).query(points, k=k)
    weights = 1.0 / np.maximum(near, 1e-3) ** 2
    return anchors.astype(np.int64), weights / weights.sum(1, keepdims=True)


def _skull_cap(
    head_mean: np.ndarray, n_area: int, landmarks: np.ndarray, rings: int = 18, segments: int = 40
) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) vertices and (T, 3) triangles of an ellipsoidal skull cap behind the face area (decimetres).

    Sized from the landmarks with adult head proportions (top of the head about 11 cm above the brows, head
    length about 19 cm from the forehead back), centred above the ears, and kept behind the face below the
    highest hairline the colouring draws (so it only ever pokes through forehead that is hair anyway). Only
    its upper part is kept, down to a little below the ears.
    """
    area = head_mean[:n_area]
    lm = head_mean[landmarks]
    brow_top = lm[17:27, 1].max()
    ear_level = lm[[0, 16], 1].mean()
    forehead = area[(np.abs(area[:, 0]) < 0.2) & (np.abs(area[:, 1] - (brow_top + 0.2)) < 0.05)]
    z_front = forehead[:, 2].max() if len(forehead) else lm[27, 2]
    centre = np.array([0.0, ear_level + 0.15, z_front - 0.95])
    top = brow_top + 1.15
    half_width = np.abs(area[(area[:, 1] > ear_level + 0.25), 0]).max() + 0.03
    radii = np.array([half_width, top - centre[1], 0.0])
    front = area[(area[:, 1] < brow_top + _LOWEST_HAIRLINE_DM) & (area[:, 2] > centre[2])]
    lateral = (front[:, 0] / radii[0]) ** 2 + ((front[:, 1] - centre[1]) / radii[1]) ** 2
    room = (front[:, 2] - centre[2]) / np.sqrt(np.clip(1.0 - lateral, 1e-3, None))
    radii[2] = min(0.98 * np.min(room[lateral < 0.98]), 1.0)
    theta = np.linspace(0.0, 0.66 * math.pi, rings + 1)[1:]  # polar angle from the top
    phi = np.linspace(0.0, 2.0 * math.pi, segments, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    unit = np.stack([np.sin(t) * np.sin(p), np.cos(t), np.sin(t) * np.cos(p)], -1).reshape(-1, 3)
    vertices = np.concatenate([[[0.0, 1.0, 0.0]], unit]) * radii + centre
    triangles = [[0, 1 + s, 1 + (s + 1) % segments] for s in range(segments)]
    for r in range(rings - 1):
        for s in range(segments):
            a, b = 1 + r * segments + s, 1 + r * segments + (s + 1) % segments
            c, d = a + segments, b + segments
            triangles += [[a, c, d], [a, d, b]]
    return vertices, np.asarray(triangles)


def _mouth_socket(head_mean: np.ndarray, loop: np.ndarray) -> np.ndarray:
    """(R + 1, 3) vertices of a dark pocket behind the lips: a ring of R vertices inside the mouth loop, a little
    behind it, and a deep centre."""
    ring_depth, centre_depth = 0.08, 0.25  # decimetres behind the lips
    points = head_mean[loop]
    middle = points.mean(0)
    ring = middle + 0.7 * (points - middle) - np.array([0.0, 0.0, ring_depth])
    centre = middle - np.array([0.0, 0.0, centre_depth])
    return np.concatenate([ring, centre[None]])


def _occlusion(mean: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(V,) float32 ambient occlusion of the neutral mean (`renderers.shadow.ambient_occlusion`): identities and
    expressions change it little, so it is computed once."""
    vertices = torch.from_numpy(np.asarray(mean, np.float32))
    faces = torch.from_numpy(np.asarray(triangles, np.int64))
    normals = vertex_normals(vertices[None], faces)[0]
    return ambient_occlusion(vertices, faces, normals, n_directions=64, map_size=128).numpy().astype(np.float32)


def build_head_scene(face_model: FaceModel, full_head: bool = True) -> HeadScene:
    """The `HeadScene` of a face model: the full ICT head when possible, else the model's own mesh."""
    if full_head and face_model.name == "ict":
        head = ict_head_geometry(face_model)
    else:
        head = None
    if head is None:
        mean = face_model.mean_shape.detach().cpu().double().numpy()
        triangles = face_model.triangles.cpu().numpy()
        empty_long, empty = np.zeros((0, 1), np.int64), np.zeros((0, 1))
        regions = scene_regions(
            mean, face_model.landmark_ids.cpu().numpy(), mean.shape[0], mean.shape[0], n_cap=0, n_socket=0
        )
        regions["occlusion"] = _occlusion(mean, triangles)
        return HeadScene(
            None,
            torch.from_numpy(mean).float(),
            torch.from_numpy(triangles),
            torch.from_numpy(empty_long),
            torch.from_numpy(empty).float(),
            regions,
            face_model.n_vertices,
        )
    head_mean = head.mean_shape.double().numpy()
    head_triangles = head.triangles.numpy()
    area_triangles = head_triangles[: len(head_triangles) - head.eye_triangles]
    n_head = head_mean.shape[0]
    # The mouth hole is the face-area loop around the lips' inner edge.
    landmarks = head.landmark_ids.numpy()
    inner_lips = head_mean[landmarks[60:68]].mean(0)
    loops = [lp for lp in _boundary_loops(area_triangles) if len(lp) >= 8]
    mouth = min(loops, key=lambda lp: np.linalg.norm(head_mean[lp].mean(0) - inner_lips))
    cap_vertices, cap_triangles = _skull_cap(head_mean, head.n_area, landmarks)
    cap_anchors, cap_weights = _nearest_anchors(cap_vertices, head_mean[: head.n_area], k=8)
    socket_vertices = _mouth_socket(head_mean, mouth)
    n_ring = len(mouth)
    # Ring vertex i follows loop vertex i; the centre follows 8 loop vertices spread around the loop.
    k = cap_anchors.shape[1]
    ring_anchors = np.repeat(mouth[:, None], k, axis=1)
    ring_weights = np.full((n_ring, k), 1.0 / k)
    spread = mouth[np.linspace(0, n_ring, k, endpoint=False).astype(int)]
    socket_anchors = np.concatenate([ring_anchors, spread[None]])
    socket_weights = np.concatenate([ring_weights, np.full((1, k), 1.0 / k)])
    cap_start = n_head
    socket_start = n_head + len(cap_vertices)
    ring_ids = socket_start + np.arange(n_ring)
    centre_id = socket_start + n_ring
    socket_triangles = []
    for i in range(n_ring):
        j = (i + 1) % n_ring
        # Winding chosen so the pocket faces the camera (its inside is what shows through the lips).
        socket_triangles += [
            [mouth[i], ring_ids[i], mouth[j]],
            [mouth[j], ring_ids[i], ring_ids[j]],
            [ring_ids[i], centre_id, ring_ids[j]],
        ]
    mean = np.concatenate([head_mean, cap_vertices, socket_vertices])
    regions = scene_regions(
        mean, landmarks, head.n_area, n_head, n_cap=len(cap_vertices), n_socket=len(socket_vertices)
    )
    # The back half of each eyeball never shows through the lids; dropping it saves a tenth of the work.
    eye_triangles = head_triangles[len(area_triangles) :]
    eye_triangles = eye_triangles[(regions["iris_angle"][eye_triangles] < 0.6 * math.pi).any(axis=1)]
    triangles = np.concatenate([area_triangles, eye_triangles, cap_triangles + cap_start, np.asarray(socket_triangles)])
    regions["occlusion"] = _occlusion(mean, triangles)
    anchors = np.concatenate([cap_anchors, socket_anchors])
    weights = np.concatenate([cap_weights, socket_weights])
    return HeadScene(
        head,
        torch.from_numpy(mean).float(),
        torch.from_numpy(triangles.astype(np.int64)),
        torch.from_numpy(anchors.astype(np.int64)),
        torch.from_numpy(weights).float(),
        regions,
        head.n_face,
    )


# ----------------------------------------------------------------------------------------- regions


def _polyline_distance(points: np.ndarray, polyline: np.ndarray, closed: bool = False) -> np.ndarray:
    """(N, 3) points -> (N,) distance to the polyline's nearest segment."""
    starts = polyline if closed else polyline[:-1]
    ends = np.roll(polyline, -1, axis=0) if closed else polyline[1:]
    seg = ends - starts
    rel = points[:, None, :] - starts[None]
    t = np.clip(np.einsum("nkd,kd->nk", rel, seg) / np.maximum((seg * seg).sum(-1), 1e-12), 0.0, 1.0)
    return np.linalg.norm(rel - t[..., None] * seg[None], axis=-1).min(axis=1)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def scene_regions(
    mean: np.ndarray, landmarks: np.ndarray, n_area: int, n_head: int, n_cap: int, n_socket: int
) -> dict[str, np.ndarray]:
    """Soft (V,) weights of the regions the colouring uses, measured on the neutral mean (decimetres).

    ``lips``, ``brows``, ``moustache``, ``beard`` (chin, jaw, lower cheeks), ``hairline`` (face-area vertices
    above the forehead, as a height above the brows in dm for a per-identity threshold: ``hair_height``),
    ``temples`` (sides above the ears), ``sides`` (ears and sides down to the jaw, for long hair), ``red`` (cheeks, nose, ears), ``eye`` (eyeball vertices),
    ``iris_angle`` (angle in radians from each eyeball's forward axis), ``cap``, ``socket``.
    """
    n = mean.shape[0]
    cm = mean * 10.0  # the shapes below are easier to state in centimetres
    lm = cm[landmarks]
    x, y, z = cm.T
    area = np.zeros(n, bool)
    area[:n_area] = True
    front = area & (z > lm[:, 2].min() - 3.0)

    outer = lm[48:60]
    inside = Polygon(outer[:, :2]).contains_points(cm[:, :2]) & (z > outer[:, 2].min() - 1.0) & area
    d_lip = _polyline_distance(cm, outer, closed=True)
    lips = np.where(inside, 1.0, np.exp(-0.5 * (d_lip / 0.12) ** 2)) * area

    brow_distance = np.minimum(_polyline_distance(cm, lm[17:22]), _polyline_distance(cm, lm[22:27]))
    # Brows are wider near the nose than at their tails.
    brow_along = np.abs(x) / max(np.abs(lm[[17, 26], 0]).max(), 1e-6)
    brow_width = 0.45 - 0.2 * np.clip(brow_along, 0, 1)
    brows = _smoothstep(1.0, 0.55, brow_distance / brow_width) * front

    nose_base, upper_lip = lm[33], lm[51]
    mouth_corner = np.abs(lm[[48, 54], 0]).mean()
    moustache = (
        _smoothstep(mouth_corner + 0.8, mouth_corner - 0.2, np.abs(x))
        * _smoothstep(nose_base[1] + 0.3, nose_base[1] - 0.3, y)
        * _smoothstep(upper_lip[1] - 0.6, upper_lip[1] - 0.1, y)
        * front
    ) * (1.0 - lips)

    # Beard: below a line from the mouth corners up to the sideburns, above the neck's middle.
    jaw_top = np.interp(
        np.abs(x),
        [0.0, mouth_corner, mouth_corner + 2.0, 6.0, 7.5],
        [lm[57, 1] - 0.2, lm[48, 1] - 0.5, lm[48, 1] + 0.5, lm[2, 1] + 2.0, lm[0, 1] + 2.5],
    )
    chin = lm[8, 1]
    beard = (
        _smoothstep(jaw_top + 0.3, jaw_top - 0.5, y)
        * _smoothstep(chin - 4.5, chin - 2.5, y)
        * area
        * (1.0 - lips)
        * (z > -1.0)
    )

    brow_top = lm[17:27, 1].max()
    # Height above the brows in decimetres; the colouring thresholds it per identity.
    hair_height = np.where(area, (y - brow_top) / 10.0, -1.0)
    ear_top = lm[0, 1] + 2.5
    temples = _smoothstep(5.5, 6.5, np.abs(x)) * _smoothstep(ear_top, ear_top + 1.0, y) * area
    # Long hair falls over the ears and the sides of the head down to the jaw.
    sides = (
        _smoothstep(5.2, 6.4, np.abs(x)) * _smoothstep(lm[4, 1] - 0.5, lm[4, 1] + 1.5, y) * area * (z < lm[0, 2] + 1.5)
    )

    cheeks = np.minimum(
        np.linalg.norm(cm - (lm[3] + lm[31]) / 2 - [0, 0.5, 0.5], axis=1),
        np.linalg.norm(cm - (lm[13] + lm[35]) / 2 - [0, 0.5, 0.5], axis=1),
    )
    nose = np.linalg.norm(cm - lm[30], axis=1)
    ears = _smoothstep(7.0, 8.2, np.abs(x)) * area
    red = np.maximum.reduce([np.exp(-0.5 * (cheeks / 1.6) ** 2), 0.7 * np.exp(-0.5 * (nose / 1.0) ** 2), ears]) * area

    eye = np.zeros(n)
    eye[n_area:n_head] = 1.0
    iris_angle = np.full(n, math.pi)
    if n_head > n_area:
        half = n_area + (n_head - n_area) // 2
        for start, stop in ((n_area, half), (half, n_head)):
            ball = cm[start:stop]
            centre = ball.mean(0)
            # The cornea bulges forward, so the vertex mean sits a little ahead of the eyeball's centre.
            radius = np.median(np.linalg.norm(ball - centre, axis=1))
            centre = centre - np.array([0.0, 0.0, 0.1 * radius])
            offset = ball - centre
            iris_angle[start:stop] = np.arccos(np.clip(offset[:, 2] / np.linalg.norm(offset, axis=1), -1, 1))
    cap = np.zeros(n)
    cap[n_head : n_head + n_cap] = 1.0
    socket = np.zeros(n)
    socket[n_head + n_cap : n_head + n_cap + n_socket] = 1.0
    # The socket's deep centre is darkest; its ring a little lighter (inner lips).
    if n_socket:
        socket[n_head + n_cap + n_socket - 1] = 2.0
    out = {
        "lips": lips,
        "brows": brows,
        "moustache": moustache,
        "beard": beard,
        "hair_height": hair_height,
        "temples": temples,
        "sides": sides,
        "red": red,
        "eye": eye,
        "iris_angle": iris_angle,
        "cap": cap,
        "socket": socket,
        "x": x / 10.0,
        "y": y / 10.0,
        "z": z / 10.0,
    }
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


# ------------------------------------------------------------------------------------------ colouring


@dataclass(frozen=True)
class IdentityLook:
    """Per-identity colouring draws (display RGB in [0, 1])."""

    skin: np.ndarray
    redness: float
    lip_colour: np.ndarray
    lip_strength: float
    hair_colour: np.ndarray
    brow_strength: float
    facial_hair: str
    facial_hair_strength: float
    bald: bool
    hairline_dm: float
    temples: float
    long_hair: bool
    iris: np.ndarray
    blotch_phase: np.ndarray
    blotch_frequency: np.ndarray
    blotch_amplitude: np.ndarray
    grain_seed: int


def sample_identity_look(rng: np.random.Generator, settings: AppearanceSettings) -> IdentityLook:
    """Draw one identity's colouring. Always makes the same number of draws, whatever the settings."""
    u = rng.uniform(*settings.skin_palette_range)
    k = min(int(u), len(SKIN_PALETTE) - 2)
    skin = (1 - (u - k)) * SKIN_PALETTE[k] + (u - k) * SKIN_PALETTE[k + 1]
    skin = np.clip(skin * (1.0 + rng.normal(0.0, 0.04, 3)), 0.02, 1.0)
    redness = rng.uniform(*settings.redness)
    lip_strength = rng.uniform(*settings.lip_strength)
    # Lips: darker and redder than the skin, or pinkish-brown on dark skin.
    lip_colour = np.clip(skin * np.array([0.85, 0.58, 0.6]) * rng.uniform(0.75, 1.05), 0, 1)
    hair_colour = HAIR_PALETTE[rng.choice(len(HAIR_PALETTE), p=_HAIR_WEIGHTS)]
    hair_colour = np.clip(hair_colour * rng.uniform(0.8, 1.2) + rng.normal(0, 0.015, 3), 0.01, 1.0)
    brow_strength = rng.uniform(*settings.brow_strength)
    has_facial_hair = rng.random() < settings.facial_hair_probability
    kind = FACIAL_HAIR[1 + int(rng.integers(len(FACIAL_HAIR) - 1))]
    facial_hair = kind if has_facial_hair else "none"
    facial_hair_strength = rng.uniform(0.4, 1.0)
    bald = rng.random() >= settings.hair_probability
    hairline_dm = rng.uniform(_LOWEST_HAIRLINE_DM, 0.5)
    temples = rng.uniform(0.0, 1.0)
    long_hair = bool(rng.random() < 0.3)
    # Light eyes are common only with light skin.
    darkness = float(1.0 - skin.mean())
    light_eyes = 0.45 * max(0.0, 1.0 - 2.0 * darkness)
    iris_p = np.array([1.0 - light_eyes, 0.0, light_eyes / 3, light_eyes / 3, light_eyes / 3])
    iris_p[1] = iris_p[0] * 0.4
    iris_p[0] *= 0.6
    iris = IRIS_PALETTE[rng.choice(len(IRIS_PALETTE), p=iris_p / iris_p.sum())] * rng.uniform(0.7, 1.2)
    blotch_frequency = rng.normal(0.0, 4.0, (6, 3))  # cycles per decimetre along random directions
    blotch_phase = rng.uniform(0.0, 2.0 * math.pi, 6)
    blotch_amplitude = rng.normal(0.0, 1.0, (6, 2))  # luminance, redness
    grain_seed = int(rng.integers(2**31))
    return IdentityLook(
        skin,
        redness,
        lip_colour,
        lip_strength,
        hair_colour,
        brow_strength,
        facial_hair,
        facial_hair_strength,
        bald,
        hairline_dm,
        temples,
        long_hair,
        iris,
        blotch_phase,
        blotch_frequency,
        blotch_amplitude,
        grain_seed,
    )


def _mix(base: np.ndarray, colour: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return base + np.clip(weight, 0.0, 1.0)[:, None] * (colour - base)


def vertex_albedo(regions: dict[str, np.ndarray], look: IdentityLook, settings: AppearanceSettings) -> np.ndarray:
    """(V, 3) float32 display-RGB reflectance in [0, 1] of every scene vertex for one identity."""
    n = len(regions["lips"])
    position = np.stack([regions["x"], regions["y"], regions["z"]], 1).astype(np.float64)
    waves = np.sin(position @ look.blotch_frequency.T + look.blotch_phase) / math.sqrt(len(look.blotch_phase))
    luminance = 1.0 + settings.blotch_strength * (waves @ look.blotch_amplitude[:, 0])
    grain = np.random.default_rng(look.grain_seed).normal(0.0, settings.skin_grain, n)
    skin = np.clip(look.skin[None] * (luminance + grain)[:, None], 0.0, 1.0)
    red = look.redness * regions["red"] + 0.5 * settings.blotch_strength * (waves @ look.blotch_amplitude[:, 1])
    red = np.clip(red, -0.1, 0.3)
    skin = skin * (1.0 + red[:, None] * np.array([0.35, -0.25, -0.2]))
    albedo = _mix(skin, look.lip_colour, look.lip_strength * regions["lips"])
    brow = look.hair_colour * 0.9 + 0.1 * look.skin
    albedo = _mix(albedo, brow, look.brow_strength * regions["brows"])

    hair_grain = np.random.default_rng(look.grain_seed + 1).normal(0.0, 0.12, n)
    hair = np.clip(look.hair_colour[None] * (1.0 + hair_grain)[:, None], 0.0, 1.0)
    if look.facial_hair != "none":
        weight = {
            "stubble": regions["beard"] + regions["moustache"],
            "moustache": regions["moustache"],
            "goatee": regions["moustache"] + regions["beard"] * (np.abs(regions["x"]) < 0.25) * (regions["y"] < 0),
            "beard": regions["beard"] + regions["moustache"],
        }[look.facial_hair]
        strength = look.facial_hair_strength * (0.45 if look.facial_hair == "stubble" else 1.0)
        # Stubble darkens and greys the skin; a beard takes the hair colour with its strand noise.
        albedo = _mix(albedo, hair, strength * np.clip(weight, 0, 1) * (0.5 + 0.5 * np.abs(hair_grain) / 0.12))
    scalp = skin if look.bald else hair
    hairline = _smoothstep(look.hairline_dm - 0.04, look.hairline_dm + 0.02, regions["hair_height"])
    temples = np.maximum(regions["temples"] * look.temples, regions["sides"] * look.long_hair)
    on_head = np.clip(np.maximum(hairline, temples), 0, 1) * (0.0 if look.bald else 1.0)
    albedo = _mix(albedo, hair, on_head)
    albedo = np.where(regions["cap"][:, None] > 0, scalp * (0.97 if look.bald else 1.0), albedo)

    eye = regions["eye"] > 0
    angle = regions["iris_angle"]
    sclera = np.array([0.68, 0.62, 0.58]) * look.skin.mean() ** 0.1
    iris = _mix(np.repeat(sclera[None], n, 0), look.iris, _smoothstep(0.58, 0.5, angle))
    iris = _mix(iris, np.array([0.02, 0.02, 0.02]), _smoothstep(0.2, 0.16, angle))
    albedo = np.where(eye[:, None], iris, albedo)
    socket = regions["socket"]
    inner = np.where(socket[:, None] > 1.5, np.array([0.02, 0.01, 0.01]), look.lip_colour * 0.3)
    albedo = np.where(socket[:, None] > 0, inner, albedo)
    return np.clip(albedo, 0.0, 1.0).astype(np.float32)


def specular_weights(regions: dict[str, np.ndarray]) -> np.ndarray:
    """(V,) relative sheen: skin 1, eyes wet and shiny, hair and the mouth socket dull."""
    weight = np.ones_like(regions["lips"])
    weight = np.where(regions["eye"] > 0, 4.0, weight)
    weight = np.where((regions["cap"] > 0) | (regions["socket"] > 0), 0.2, weight)
    return weight.astype(np.float32)


# ------------------------------------------------------------------------------------------ lighting


@dataclass(frozen=True)
class PictureLight:
    """One picture's light, in posed model space (x right, y up, z towards the camera).

    directions: (2, 3) unit directions towards the key and fill lights
    colours:    (2, 3) their RGB irradiance (the fill's is zero when there is none)
    sky, ground: (3,) RGB ambient from above and below
    shadow:     the key light casts shadows
    specular:   sheen strength; shininess: its Blinn-Phong exponent
    exposure:   gain applied after shading
    use_sh:     light the picture with the face model's SH coefficients instead
    """

    directions: np.ndarray
    colours: np.ndarray
    sky: np.ndarray
    ground: np.ndarray
    shadow: bool
    specular: float
    shininess: float
    exposure: float
    use_sh: bool


def _direction(elevation_deg: float, azimuth_deg: float) -> np.ndarray:
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    return np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])


def _light_colour(rng: np.random.Generator, coloured: bool) -> np.ndarray:
    """(3,) RGB of unit mean: a saturated colour, or white tinted from warm (tungsten) to cool (shade).
    Three draws either way."""
    hue, saturation, t = rng.uniform(0.0, 1.0), rng.uniform(60.0, 150.0), rng.uniform(-1.0, 1.0)
    if coloured:
        hsv = np.array([[[hue * 179, saturation, 255]]], np.uint8)
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0] / 255.0
    else:
        rgb = np.array([1.0 + 0.18 * t, 1.0, 1.0 - 0.25 * t])
    return rgb / rgb.mean()


def sample_picture_light(rng: np.random.Generator, settings: AppearanceSettings) -> PictureLight:
    """Draw one picture's light. Always makes the same number of draws, whatever the settings."""
    use_sh = rng.random() < settings.sh_probability
    side = rng.choice([-1.0, 1.0])
    key = _direction(rng.uniform(*settings.key_elevation_deg), side * rng.uniform(*settings.key_azimuth_deg))
    fill = _direction(rng.uniform(-10.0, 40.0), -side * rng.uniform(20.0, 90.0))
    coloured = rng.random() < settings.coloured_light_probability
    key_colour = _light_colour(rng, coloured) * rng.uniform(*settings.key_intensity)
    has_fill = rng.random() < settings.fill_probability
    fill_coloured = rng.random() < 0.5
    fill_colour = _light_colour(rng, coloured and fill_coloured) * rng.uniform(0.15, 0.45) * has_fill
    ambient = rng.uniform(*settings.ambient_intensity)
    sky = ambient * _light_colour(rng, False) * rng.uniform(1.0, 1.4)
    ground = ambient * _light_colour(rng, False) * rng.uniform(0.4, 0.9)
    shadow = bool(rng.random() < settings.shadow_probability)
    specular = rng.uniform(*settings.specular)
    shininess = rng.uniform(8.0, 40.0)
    exposure = rng.uniform(*settings.exposure)
    return PictureLight(
        np.stack([key, fill]),
        np.stack([key_colour, fill_colour]),
        sky,
        ground,
        shadow,
        specular,
        shininess,
        exposure,
        bool(use_sh),
    )


def shade_vertices(
    albedo: torch.Tensor,
    normals: torch.Tensor,
    vertices: torch.Tensor,
    lights: list[PictureLight],
    sh_lighting: torch.Tensor,
    specular_weight: torch.Tensor,
    visibility: torch.Tensor,
    camera_distance: float | torch.Tensor,
    occlusion: torch.Tensor | None = None,
    metering: torch.Tensor | None = None,
    metering_target: float = 0.45,
    metering_strength: float = 0.7,
) -> torch.Tensor:
    """Per-vertex display colour of B pictures.

    albedo (B, V, 3) display RGB; normals (B, V, 3) unit, posed model space; vertices (B, V, 3) posed model
    space; lights: B `PictureLight`; sh_lighting (B, 9 | 27) SH offsets used where ``use_sh``;
    specular_weight (V,); visibility (B, V) of the key light (1 = lit); camera_distance a float or (B,) (the
    camera sits at (0, 0, distance)); occlusion (V,) share of the ambient
    each vertex receives (1 = open; None for all open).

    Shading is linear in ``albedo ** GAMMA``, the result goes back through ``1 / GAMMA``. With ``metering``
    ((V,) bool, the vertices a camera meters on) the exposure is first corrected towards a mean display
    brightness of ``metering_target`` over the metered vertices that face the camera, by the fraction
    ``metering_strength`` (in log terms) of the way, as a camera's auto-exposure would; then each light's
    ``exposure`` applies. Returns (B, V, 3), not clipped.
    """
    dtype = albedo.dtype

    def as_tensor(key: str) -> torch.Tensor:
        return torch.as_tensor(np.stack([getattr(light, key) for light in lights]), dtype=dtype, device=albedo.device)

    directions, colours = as_tensor("directions"), as_tensor("colours")
    linear = albedo.clamp(0.0, 1.0) ** GAMMA
    cosines = lambert(normals, directions)  # (B, V, 2)
    cosines = torch.stack([cosines[..., 0] * visibility, cosines[..., 1]], dim=-1)
    direct = cosines @ colours  # (B, V, 3)
    ambient = hemisphere_ambient(normals, as_tensor("sky"), as_tensor("ground"))
    if occlusion is not None:
        ambient = ambient * occlusion.to(dtype)[None, :, None]
    distance = torch.as_tensor(camera_distance, dtype=dtype, device=albedo.device).reshape(-1, 1)
    eye = torch.cat([torch.zeros(distance.shape[0], 2, dtype=dtype, device=albedo.device), distance], 1)
    view = eye[:, None] - vertices
    view = view / view.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    highlight = blinn_phong(normals, directions[:, :1], view, as_tensor("shininess"))[..., 0]
    sheen = (as_tensor("specular")[:, None] * specular_weight[None] * highlight * visibility)[..., None] * colours[
        :, 0:1
    ]
    radiance = linear * (direct + ambient) + sheen
    use_sh = torch.tensor([light.use_sh for light in lights], device=albedo.device)
    if bool(use_sh.any()):
        sh = irradiance(normals, sh_lighting.to(dtype)).clamp_min(0.0)
        radiance = torch.where(use_sh[:, None, None], linear * sh**GAMMA, radiance)
    gain = as_tensor("exposure")
    if metering is not None:
        weight = metering.to(dtype)[None] * ((normals * view).sum(-1) > 0.3).to(dtype)  # (B, V)
        brightness = (radiance.mean(-1) * weight).sum(1) / weight.sum(1).clamp_min(1.0)
        correction = (metering_target**GAMMA / brightness.clamp_min(1e-4)) ** metering_strength
        gain = gain * correction.clamp(0.25, 8.0)
    return (radiance * gain[:, None, None]).clamp_min(0.0) ** (1.0 / GAMMA)


# ------------------------------------------------------------------------------------------ rendering


def sample_focal_scale(rng: np.random.Generator, settings: AppearanceSettings) -> float:
    """One picture's focal length relative to the crop's, log-uniform in ``settings.focal_scale`` (one draw)."""
    low, high = settings.focal_scale
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def camera_for_focal(camera: PinholeCamera, focal_scale: float) -> PinholeCamera:
    """The crop's camera with its focal length scaled and its distance scaled alike, so a face at the
    model-space origin keeps its size in the crop while the perspective changes."""
    return dataclasses.replace(
        camera, focal=camera.focal * focal_scale, camera_distance=camera.camera_distance * focal_scale
    )


def render_scene(
    scene: HeadScene,
    face_model: FaceModel,
    identity: torch.Tensor,
    expression: torch.Tensor,
    angles: torch.Tensor,
    translation: torch.Tensor,
    albedo: torch.Tensor,
    lights: list[PictureLight],
    sh_lighting: torch.Tensor,
    camera: PinholeCamera | list[PinholeCamera],
    shadow_map_size: int = 96,
    auto_exposure: float = 0.7,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render B pictures of the scene.

    identity (B, n_id), expression (B, n_exp), angles (B, 3), translation (B, 3) are the face model's
    coefficients (posed exactly like `renderers.mesh_renderer.MeshRenderer` poses the face); albedo (B, V, 3)
    per scene vertex; ``camera`` one camera for all pictures or one per picture (same image size, e.g.
    `camera_for_focal` of the crop's camera); ``auto_exposure`` the metering strength of `shade_vertices` (on the face model's
    vertices). Returns the (B, 3, H, W) display-RGB picture (0 on background) and the (B, 1, H, W) mask.
    """
    cameras = list(camera) if isinstance(camera, (list, tuple)) else [camera] * identity.shape[0]
    if len({c.image_size for c in cameras}) != 1 or len(cameras) != identity.shape[0]:
        raise ValueError("render_scene needs one camera, or one per picture, all of the same image size")
    with torch.no_grad():
        vertices = scene.vertices(face_model, identity, expression)
        posed = rigid_transform(vertices, euler_to_rotation(angles), translation)
        triangles = scene.triangles.to(posed.device)
        normals = vertex_normals(posed, triangles)
        visibility = torch.ones(posed.shape[:2], dtype=posed.dtype, device=posed.device)
        casting = [b for b, light in enumerate(lights) if light.shadow and not light.use_sh]
        if casting:
            key = torch.as_tensor(
                np.stack([lights[b].directions[0] for b in casting]), dtype=posed.dtype, device=posed.device
            )
            visibility[casting] = shadow_visibility(
                posed[casting], triangles, key, map_size=shadow_map_size, normals=normals[casting], backend=backend
            )
        weights = torch.as_tensor(specular_weights(scene.regions), dtype=posed.dtype, device=posed.device)
        occlusion = torch.as_tensor(scene.regions["occlusion"], dtype=posed.dtype, device=posed.device)
        metering = torch.zeros(posed.shape[1], dtype=torch.bool, device=posed.device)
        metering[: scene.n_face] = True
        colours = shade_vertices(
            albedo.to(posed),
            normals,
            posed,
            lights,
            sh_lighting.to(posed),
            weights,
            visibility,
            torch.tensor([c.camera_distance for c in cameras]),
            occlusion=occlusion,
            metering=metering,
            metering_strength=auto_exposure,
        )
        screen = torch.cat(
            [to_screen(model_to_camera(posed[b : b + 1], c.camera_distance), c) for b, c in enumerate(cameras)]
        )
        fragments = rasterize(screen, triangles, cameras[0].image_size, backend=backend)
        image = interpolate(colours, triangles, fragments).permute(0, 3, 1, 2)
        return image, fragments.mask.unsqueeze(1).to(image.dtype)


def side_light(light: PictureLight, side: float) -> PictureLight:
    """The same picture lit hard from one side (``side`` -1: from the subject's right, image left; +1 the
    other): a key light 80 degrees off the camera axis with shadows, no fill, a dim ambient. The directional
    counterpart of `datamodules.image_sets.side_lit`."""
    key = _direction(10.0, 80.0 * side)
    colours = light.colours.copy()
    colours[1] = 0.0
    return dataclasses.replace(
        light,
        directions=np.stack([key, light.directions[1]]),
        colours=colours,
        sky=light.sky * 0.3,
        ground=light.ground * 0.3,
        shadow=True,
        use_sh=False,
    )


def render_photo(
    scene: HeadScene,
    face_model: FaceModel,
    coeffs: Coefficients,
    looks: list[IdentityLook],
    lights: list[PictureLight],
    camera: PinholeCamera | list[PinholeCamera],
    settings: AppearanceSettings,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`render_scene` of B pictures given their coefficients (translation already aligned), one `IdentityLook`
    and one `PictureLight` each: (B, 3, H, W) display RGB clipped to [0, 1] (0 on background) and the (B, 1, H, W)
    mask, on the CPU. Pictures sharing a look object share its albedo computation."""
    albedo_of: dict[int, np.ndarray] = {}
    for look in looks:
        if id(look) not in albedo_of:
            albedo_of[id(look)] = vertex_albedo(scene.regions, look, settings)
    albedo = torch.from_numpy(np.stack([albedo_of[id(look)] for look in looks])).to(coeffs.identity.device)
    image, mask = render_scene(
        scene,
        face_model,
        coeffs.identity,
        coeffs.expression,
        coeffs.angles,
        coeffs.translation,
        albedo,
        lights,
        coeffs.lighting,
        camera,
        settings.shadow_map_size,
        settings.auto_exposure,
        backend,
    )
    return image.clamp(0.0, 1.0).float().cpu(), mask.float().cpu()


# ------------------------------------------------------------------------------------- camera and sensor


def degrade_picture(image: np.ndarray, rng: np.random.Generator, settings: AppearanceSettings) -> np.ndarray:
    """(H, W, 3) float32 picture in [0, 1] -> blurred, noisy, JPEG-compressed copy as (H, W, 3) uint8.

    Always makes the same number of draws, whatever the settings.
    """
    size = image.shape[0]
    blur, sigma = rng.random() < settings.blur_probability, rng.uniform(*settings.blur_sigma_px) * size / 224.0
    noise = rng.uniform(*settings.noise_std)
    jpeg, quality = (
        rng.random() < settings.jpeg_probability,
        int(rng.integers(settings.jpeg_quality[0], settings.jpeg_quality[1] + 1)),
    )
    noise_seed = int(rng.integers(2**31))
    out = image
    if blur and sigma > 0.15:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    # Sensor noise is stronger in the dark (shot noise) and slightly correlated between channels.
    grain = np.random.default_rng(noise_seed).normal(0.0, 1.0, out.shape).astype(np.float32)
    grain = 0.7 * grain + 0.3 * grain.mean(-1, keepdims=True)
    out = out + noise * grain * (0.6 + 0.8 * np.sqrt(np.clip(1.0 - out, 0.0, 1.0)))
    out = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    if jpeg:
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            out = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return out
