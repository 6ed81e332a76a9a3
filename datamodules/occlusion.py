"""Occluded synthetic faces with exact visibility masks, for FOCUS (training and its held-out test split).

`OccludedFaceDataset` wraps a clean `datamodules.synthetic.SyntheticFaceDataset` (built with
``occluder_probability=0``) and paints zero to ``max_occluders`` occluders over each picture, chosen among
`OCCLUSION_KINDS`: hands in skin tones and sunglasses (`datamodules.backgrounds.draw_occluder`), and, drawn
here with the same supersampled painters, glasses frames, hair strands, fringes, scarves, microphones and
textured objects (stripes, noise or blob patterns). Occluders come from their own random stream, keyed by
``(OcclusionSettings.seed, split, index)``, so a picture's occluders do not depend on the dataset's size or
on other pictures and the clean twin of every occluded picture is the wrapped dataset's.

The **visibility mask** of a picture is exact: the face model's region, rasterized from the ground-truth
coefficients through the camera the picture was taken with, minus every pixel an occluder covers at least
``coverage_threshold`` (0.5: a pixel counts where the occluder's colour dominates). What the wrapped
dataset's photo look draws inside that region (eyeballs are outside it: the face model has holes there; the
hairline, beards, make-up are inside) counts as face, as the face model's region is what the evaluation
scores.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.appearance import camera_for_focal
from datamodules.backgrounds import (
    _capsule,
    _draw_supersampled,
    _ellipse,
    _face_frame,
    _shaded_fill,
    _to_canvas,
    draw_occluder,
    noise_texture,
    paint_over,
    random_colour,
    side_shape,
    stripes,
)
from datamodules.batch import FaceBatch, collate_face_samples
from datamodules.loaders import make_loader, stage_splits
from datamodules.synthetic import SyntheticFaceDataset, SyntheticFaceSettings
from face_model.model import FaceModel
from preprocessing.skin import skin_posterior_torch
from renderers.mesh_renderer import MeshRenderer

OCCLUSION_KINDS = ("hand", "sunglasses", "glasses", "hair", "fringe", "scarf", "microphone", "textured")
"""What `draw_realistic_occluder` paints; the first two are `datamodules.backgrounds.draw_occluder`'s."""

_SPLIT_TAG = {"train": 0, "val": 1, "test": 2}
_STREAM_TAG = 13  # FOCUS's occluder stream, distinct from every stream of datamodules.synthetic

# Natural hair colours (RGB in [0, 1]): black, dark and light brown, auburn, blond, grey.
_HAIR = np.array(
    [[0.05, 0.04, 0.03], [0.2, 0.13, 0.08], [0.38, 0.26, 0.16], [0.45, 0.2, 0.1], [0.75, 0.62, 0.4], [0.6, 0.6, 0.6]],
    np.float32,
)


@dataclass(frozen=True)
class OcclusionSettings:
    """probability: chance that a picture gets occluders; max_occluders: at most this many (at least one);
    kinds: what may be drawn (`OCCLUSION_KINDS`); coverage_threshold: an occluder covering a pixel at least
    this much hides it in the visibility mask; seed: the occluder stream's seed."""

    probability: float = 0.7
    max_occluders: int = 2
    kinds: tuple[str, ...] = OCCLUSION_KINDS
    coverage_threshold: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {self.probability}")
        if self.max_occluders < 1:
            raise ValueError(f"max_occluders must be >= 1, got {self.max_occluders}")
        unknown = [k for k in self.kinds if k not in OCCLUSION_KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"unknown occluder kinds {unknown}; choose among {OCCLUSION_KINDS}")
        if not 0.0 < self.coverage_threshold <= 1.0:
            raise ValueError(f"coverage_threshold must be in (0, 1], got {self.coverage_threshold}")


def _hair_colour(rng: np.random.Generator) -> np.ndarray:
    return np.clip(_HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.8, 1.2), 0.0, 1.0).astype(np.float32)


def _polyline(height: int, width: int, points: np.ndarray, thickness: float) -> np.ndarray:
    import cv2

    def draw(canvas: np.ndarray, s: int) -> None:
        cv2.polylines(canvas, [_to_canvas(points, s)], False, 255, max(1, int(round(thickness * s))), cv2.LINE_AA)

    return _draw_supersampled(height, width, draw)


def _glasses(rng, height, width, landmarks):
    """Thin frames around both eyes, a bridge and the temples towards the ears; the lenses stay clear."""
    left, right = landmarks[36:42].mean(0), landmarks[42:48].mean(0)
    _, size = _face_frame(landmarks)
    span = right - left
    lens = max(float(np.linalg.norm(span)) * 0.45, 0.12 * size) * rng.uniform(0.9, 1.15)
    angle = math.degrees(math.atan2(span[1], span[0])) if np.linalg.norm(span) > 1e-3 else 0.0
    shape = rng.uniform(0.6, 0.85)
    rim = max(1.0, size * rng.uniform(0.015, 0.03))
    alpha = np.zeros((height, width), np.float32)
    for centre in (left, right):
        outer = _ellipse(height, width, centre, (lens + rim, lens * shape + rim), angle)
        inner = _ellipse(height, width, centre, (lens, lens * shape), angle)
        alpha = np.maximum(alpha, np.clip(outer - inner, 0.0, 1.0))
    direction = span / max(float(np.linalg.norm(span)), 1e-6)
    alpha = np.maximum(alpha, _capsule(height, width, left + direction * lens, right - direction * lens, rim))
    alpha = np.maximum(alpha, _capsule(height, width, left - direction * lens, landmarks[0], rim))
    alpha = np.maximum(alpha, _capsule(height, width, right + direction * lens, landmarks[16], rim))
    colour = random_colour(rng, skin_probability=0.0) * rng.uniform(0.2, 0.8)
    return alpha, _shaded_fill(rng, height, width, colour, texture=0.02)


def _hair_strands(rng, height, width, landmarks):
    """A few curved strands falling across the forehead, an eye or a cheek."""
    _, size = _face_frame(landmarks)
    top = landmarks[17:27].mean(0) - np.array([0.0, 0.25 * size])
    alpha = np.zeros((height, width), np.float32)
    side = rng.choice([-1.0, 1.0])
    for _ in range(rng.integers(3, 9)):
        start = top + np.array([rng.normal(side * 0.15, 0.15), rng.normal(0.0, 0.05)]) * size
        length = size * rng.uniform(0.3, 0.8)
        sway = rng.normal(0.0, 0.15) * size
        t = np.linspace(0.0, 1.0, 12)[:, None]
        points = start + t * np.array([side * 0.2 * length, length]) + np.sin(t * math.pi) * np.array([sway, 0.0])
        alpha = np.maximum(alpha, _polyline(height, width, points, size * rng.uniform(0.01, 0.03)))
    return alpha, _shaded_fill(rng, height, width, _hair_colour(rng), texture=0.08)


def _fringe(rng, height, width, landmarks):
    """A fringe: hair from above the face down to the brows (or the eyes), with a jagged lower edge."""
    import cv2

    _, size = _face_frame(landmarks)
    brows = landmarks[17:27]
    low = brows[:, 1].min() + rng.uniform(-0.05, 0.12) * size
    x0, x1 = brows[:, 0].min() - 0.15 * size, brows[:, 0].max() + 0.15 * size
    xs = np.linspace(x0, x1, 14)
    edge = low + rng.normal(0.0, 0.03 * size, xs.shape) + rng.uniform(-0.1, 0.1) * size * (xs - xs.mean()) / size
    polygon = np.concatenate([np.stack([xs, edge], 1), [[x1, low - 0.8 * size], [x0, low - 0.8 * size]]])

    def draw(canvas: np.ndarray, s: int) -> None:
        cv2.fillPoly(canvas, [_to_canvas(polygon, s)], 255)

    alpha = _draw_supersampled(height, width, draw)
    return alpha, _shaded_fill(rng, height, width, _hair_colour(rng), texture=0.1)


def _scarf(rng, height, width, landmarks):
    """Fabric over the lower face, from below the chin up to the mouth or the nose, with a woven pattern."""
    import cv2

    _, size = _face_frame(landmarks)
    upper = landmarks[rng.choice([33, 51, 57])][1] + rng.uniform(-0.03, 0.05) * size
    x0, x1 = landmarks[:, 0].min() - 0.3 * size, landmarks[:, 0].max() + 0.3 * size
    xs = np.linspace(x0, x1, 10)
    droop = rng.uniform(0.0, 0.12) * size * (1.0 - ((xs - xs.mean()) / ((x1 - x0) / 2)) ** 2)
    top = upper + droop * rng.choice([-1.0, 1.0]) + rng.normal(0.0, 0.01 * size, xs.shape)
    polygon = np.concatenate([np.stack([xs, top], 1), [[x1, height + size], [x0, height + size]]])

    def draw(canvas: np.ndarray, s: int) -> None:
        cv2.fillPoly(canvas, [_to_canvas(polygon, s)], 255)

    alpha = _draw_supersampled(height, width, draw)
    pattern, _ = stripes(rng, height, width) if rng.random() < 0.6 else noise_texture(rng, height, width)
    return alpha, np.clip(pattern * rng.uniform(0.6, 1.0), 0.0, 1.0).astype(np.float32)


def _microphone(rng, height, width, landmarks):
    """A handheld microphone: a dark handle from below and a round mesh head in front of the mouth or chin."""
    _, size = _face_frame(landmarks)
    head = landmarks[rng.choice([57, 8, 48, 54])] + rng.normal(0.0, 0.06 * size, 2)
    radius = size * rng.uniform(0.1, 0.16)
    angle = rng.uniform(0.3 * math.pi, 0.7 * math.pi)
    handle_end = head + np.array([math.cos(angle), math.sin(angle)]) * size * rng.uniform(0.6, 1.2)
    handle = _capsule(height, width, head, handle_end, radius * rng.uniform(0.7, 1.0))
    ball = _ellipse(height, width, head, (radius, radius), 0.0)
    alpha = np.maximum(handle, ball)
    dark = np.full(3, rng.uniform(0.03, 0.2), np.float32)
    grille = np.clip(np.full(3, rng.uniform(0.35, 0.7), np.float32), 0.0, 1.0)
    fill = _shaded_fill(rng, height, width, dark, texture=0.03)
    mesh = _shaded_fill(rng, height, width, grille, texture=0.25)
    return alpha, np.where(ball[..., None] > 0, mesh, fill).astype(np.float32)


def _textured(rng, height, width, landmarks):
    """A flat object (book, phone, cup, paper) with a printed pattern, at a side of the face."""
    alpha = side_shape(rng, height, width, landmarks, reach=(0.3, 0.6), rectangle_probability=0.6)
    pattern, _ = stripes(rng, height, width) if rng.random() < 0.5 else noise_texture(rng, height, width)
    return alpha, pattern.astype(np.float32)


_PAINTERS = {
    "glasses": _glasses,
    "hair": _hair_strands,
    "fringe": _fringe,
    "scarf": _scarf,
    "microphone": _microphone,
    "textured": _textured,
}


def draw_realistic_occluder(
    image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator, kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one occluder of ``kind`` (`OCCLUSION_KINDS`) over a face.

    image: (H, W, 3) float32 RGB in [0, 1]; landmarks: (68, 2) pixels. Returns the new image (a copy) and the
    (H, W) float32 coverage in [0, 1]; pixels of zero coverage are unchanged (as `draw_occluder`).
    """
    if kind in ("hand", "sunglasses"):
        return draw_occluder(image, landmarks, rng, kind)
    if kind not in _PAINTERS:
        raise ValueError(f"unknown occluder kind {kind!r}; choose one of {OCCLUSION_KINDS}")
    height, width = image.shape[:2]
    return paint_over(image, *_PAINTERS[kind](rng, height, width, np.asarray(landmarks, np.float64)))


def face_regions(dataset: SyntheticFaceDataset, batch: int = 64) -> np.ndarray:
    """(N, H, W) bool: the face model's region of every picture of ``dataset``, rasterized from its ground truth
    through the camera the picture was taken with (`SyntheticFaceDataset.picture_camera`)."""
    arrays = dataset.arrays
    renderer = MeshRenderer(dataset.face_model, dataset.camera, backend=dataset.backend)
    layout = dataset.layout
    out = np.zeros((len(dataset), dataset.image_size, dataset.image_size), bool)
    scales = arrays.focal_scale
    with torch.no_grad():
        # Pictures with the same focal scale share a camera; the model look has scale 1 throughout.
        for scale in np.unique(scales):
            where = np.flatnonzero(scales == scale)
            camera = camera_for_focal(dataset.camera, float(scale))
            for start in range(0, len(where), batch):
                idx = where[start : start + batch]
                coeffs = layout.split(torch.from_numpy(arrays.coefficients[idx]))
                # Stored translations are the crop camera's equivalent (see datamodules.synthetic.place_faces).
                coeffs = coeffs.replace(translation=coeffs.translation * float(scale))
                out[idx] = renderer(coeffs, camera).mask[:, 0].numpy() > 0.5
    return out


@dataclass(frozen=True)
class FocusBatch:
    """A `FaceBatch` of (possibly occluded) pictures with what FOCUS's evaluation knows about them.

    faces:    the `FaceBatch` (images with occluders, landmarks, skin posterior of the occluded picture, truth)
    visible:  (B, 1, H, W) float, 1 where the face model's region is visible (the exact visibility mask)
    region:   (B, 1, H, W) float, the face model's region in the picture, occluded or not
    occluded: (B,) bool, whether the picture has an occluder
    """

    faces: FaceBatch
    visible: torch.Tensor
    region: torch.Tensor
    occluded: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.faces.batch_size

    def to(self, device: torch.device | str, non_blocking: bool = False) -> FocusBatch:
        return FocusBatch(*(getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)))


def collate_focus_samples(samples: list[dict]) -> FocusBatch:
    """Stack `OccludedFaceDataset` items into a `FocusBatch`."""
    return FocusBatch(
        faces=collate_face_samples(samples),
        visible=torch.stack([s["visible"] for s in samples]),
        region=torch.stack([s["region"] for s in samples]),
        occluded=torch.tensor([bool(s["occluded"]) for s in samples]),
    )


class OccludedFaceDataset(Dataset):
    """``base``'s pictures with realistic occluders and their exact visibility masks (module docstring).

    Args:
        base: a clean `SyntheticFaceDataset` (``occluder_probability=0``, else its own occluders would be
            missing from the masks).
        settings: what to draw and how often.

    Items are ``base``'s with the image and skin posterior replaced, plus ``visible`` and ``region`` (1, H, W)
    float masks and ``occluded``. Everything is computed once, on first access (`materialise`).
    """

    def __init__(self, base: SyntheticFaceDataset, settings: OcclusionSettings = OcclusionSettings()) -> None:
        if base.settings.occluder_probability != 0.0:
            raise ValueError(
                f"OccludedFaceDataset needs a clean base dataset (occluder_probability=0), got "
                f"{base.settings.occluder_probability}: the base's own occluders are not in the visibility masks"
            )
        self.base = base
        self.settings = settings
        self._images: np.ndarray | None = None
        self._skin: np.ndarray | None = None
        self._visible: np.ndarray | None = None
        self._region: np.ndarray | None = None
        self._occluded: np.ndarray | None = None
        self.kinds: list[list[str]] = []

    def __len__(self) -> int:
        return len(self.base)

    def occluder_rng(self, index: int) -> np.random.Generator:
        """The random stream of picture ``index``'s occluders (depends only on the seeds, split and index)."""
        return np.random.default_rng(
            [self.settings.seed, self.base.seed, _SPLIT_TAG[self.base.split], index, _STREAM_TAG]
        )

    def materialise(self) -> OccludedFaceDataset:
        if self._images is not None:
            return self
        arrays = self.base.arrays
        region = face_regions(self.base)
        images = arrays.images.copy()
        visible = region.copy()
        occluded = np.zeros(len(self), bool)
        self.kinds = [[] for _ in range(len(self))]
        s = self.settings
        for i in range(len(self)):
            rng = self.occluder_rng(i)
            # Both draws happen whatever the probability, so later draws do not depend on it.
            draw, count = rng.random(), int(rng.integers(1, s.max_occluders + 1))
            if draw >= s.probability:
                continue
            picture = images[i].transpose(1, 2, 0).astype(np.float32) / 255.0
            hidden = np.zeros(region.shape[1:], bool)
            for _ in range(count):
                kind = s.kinds[int(rng.integers(len(s.kinds)))]
                picture, coverage = draw_realistic_occluder(picture, arrays.clean_landmarks[i], rng, kind)
                hidden |= coverage >= s.coverage_threshold
                self.kinds[i].append(kind)
            images[i] = np.clip(np.rint(picture * 255.0), 0, 255).astype(np.uint8).transpose(2, 0, 1)
            visible[i] &= ~hidden
            occluded[i] = bool((region[i] & hidden).any())
        with torch.no_grad():
            skin = skin_posterior_torch(torch.from_numpy(images)).numpy().astype(np.float16)
        self._images, self._skin, self._visible, self._region, self._occluded = images, skin, visible, region, occluded
        return self

    def occluded_fraction(self, index: int) -> float:
        """Share of picture ``index``'s face region hidden by occluders."""
        self.materialise()
        region = self._region[index].sum()
        return float(1.0 - self._visible[index].sum() / region) if region else 0.0

    def __getitem__(self, index: int) -> dict:
        self.materialise()
        item = self.base[index]
        index = item["index"]
        item["image"] = torch.from_numpy(self._images[index]).float().div_(255.0)
        item["skin"] = torch.from_numpy(self._skin[index].astype(np.float32)).unsqueeze(0)
        item["visible"] = torch.from_numpy(self._visible[index]).float().unsqueeze(0)
        item["region"] = torch.from_numpy(self._region[index]).float().unsqueeze(0)
        item["occluded"] = bool(self._occluded[index])
        return item


class OcclusionDataModule(pl.LightningDataModule):
    """Train / val / test splits of occluded synthetic faces as `FocusBatch` loaders.

    The clean pictures are `SyntheticFaceDataset`'s (``occluder_probability=0``; same caching, so a second run
    reads them back), the occluders FOCUS's (`OcclusionSettings`); the test split is held out (its own
    identities) and occluded in every picture (``test_probability``), its clean twins are `clean_dataset`.
    """

    def __init__(
        self,
        face_model: FaceModel,
        faces: SyntheticFaceSettings,
        settings: OcclusionSettings = OcclusionSettings(),
        *,
        image_size: int = 112,
        batch_size: int = 16,
        test_probability: float = 1.0,
        cache_dir=None,
    ) -> None:
        """``faces``: the clean pictures (sizes, seed, poses, look; its own occluders are switched off here, FOCUS's
        ``settings`` replace them)."""
        super().__init__()
        self.face_model = face_model
        self.faces = dataclasses.replace(faces, occluder_probability=0.0)
        self.image_size = image_size
        self.batch_size = batch_size
        self.seed = faces.seed
        self.settings = settings
        self.test_settings = dataclasses.replace(settings, probability=test_probability)
        self.cache_dir = cache_dir
        self._clean: dict[str, SyntheticFaceDataset] = {}
        self._occluded: dict[str, OccludedFaceDataset] = {}

    def clean_dataset(self, split: str) -> SyntheticFaceDataset:
        if split not in self._clean:
            self._clean[split] = SyntheticFaceDataset(
                self.face_model, self.faces, split, image_size=self.image_size, cache_dir=self.cache_dir
            )
        return self._clean[split]

    def dataset(self, split: str) -> OccludedFaceDataset:
        if split not in self._occluded:
            settings = self.test_settings if split == "test" else self.settings
            self._occluded[split] = OccludedFaceDataset(self.clean_dataset(split), settings)
        return self._occluded[split]

    def unoccluded_dataset(self, split: str) -> OccludedFaceDataset:
        """The same pictures without occluders (visibility = region), for occluded-vs-clean comparisons."""
        return OccludedFaceDataset(self.clean_dataset(split), OcclusionSettings(probability=0.0))

    def setup(self, stage: str | None = None) -> None:
        for split in stage_splits(stage):
            self.dataset(split).materialise()

    def loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return make_loader(dataset, self.batch_size, shuffle, self.seed, 0, collate_focus_samples)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.dataset("train").materialise(), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.dataset("val").materialise(), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.dataset("test").materialise(), shuffle=False)
