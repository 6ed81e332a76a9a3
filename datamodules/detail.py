"""Ground truth for HRN's detail layers: synthetic faces whose true geometry carries detail beyond the morphable
model, as known maps in the model's UV space.

Every face is a sample of `datamodules.synthetic.SyntheticFaceDataset` (same coefficients, same alignment to the
crop template, same split streams, so train / val / test never share an identity) plus two maps drawn per face:

- **mid frequency**, a 3-channel deformation map (model-space offsets, decimetres): nasolabial folds of random
  depth, and a few broad bumps and dents of random size and sign (asymmetries of cheeks, brow, chin), mostly
  along the surface normal with a random sideways part;
- **high frequency**, a 1-channel displacement map along the normal: forehead wrinkles of random period,
  amplitude and waviness, fine creases along the folds, and band-passed skin relief.

Features are placed from the mean face's landmarks through its position map, so a fold sits beside the nose on
every face. The picture is rendered by `renderers.detail_renderer.render_detailed` (the face model's own SH look,
per-pixel normals), composited over a procedural background, with noisy landmarks and the skin posterior, as the
model look of the synthetic data is.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from datamodules.appearance import AppearanceSettings
from datamodules.backgrounds import draw_background
from datamodules.batch import FaceBatch, GroundTruth
from datamodules.loaders import make_loader
from datamodules.synthetic import SPLITS, SyntheticFaceDataset, SyntheticFaceSettings, place_faces, soft_composite
from face_model.coefficients import Coefficients
from face_model.ict_uv import ict_uv_tables
from face_model.model import FaceModel
from geometry.normals import vertex_normals
from preprocessing.align import template_from_face_model
from preprocessing.skin import skin_posterior_torch
from renderers.camera import PinholeCamera
from renderers.detail_renderer import DetailLayout, render_detailed
from renderers.uv import build_uv_atlas, position_map

MM = 0.01
"""One millimetre in model units (decimetres)."""
_DETAIL_STREAM = 1000
"""Spawn key of the detail draws, apart from the synthetic data's own streams."""


@dataclass(frozen=True)
class DetailSettings:
    """Spreads of the true detail (lengths in millimetres).

    fold_depth_mm: depth range of the nasolabial folds (uniform)
    fold_width_mm: their Gaussian half-width
    n_bumps: range of the number of broad bumps / dents
    bump_radius_mm: range of their Gaussian radius
    bump_height_mm: std of their height along the normal (sign random)
    sideways: std of the sideways part relative to the height
    wrinkle_amplitude_mm, wrinkle_period_mm: forehead wrinkles (uniform ranges)
    crease_depth_mm: depth of the fine creases along the folds
    relief_mm: std of the skin relief
    """

    fold_depth_mm: tuple[float, float] = (1.0, 3.0)
    fold_width_mm: float = 6.0
    n_bumps: tuple[int, int] = (3, 6)
    bump_radius_mm: tuple[float, float] = (10.0, 25.0)
    bump_height_mm: float = 1.5
    sideways: float = 0.4
    wrinkle_amplitude_mm: tuple[float, float] = (0.2, 0.5)
    wrinkle_period_mm: tuple[float, float] = (6.0, 10.0)
    crease_depth_mm: float = 0.4
    relief_mm: float = 0.05


@dataclass(frozen=True)
class DetailDataSettings:
    """The detail data set (sizes, picture, poses, map resolutions).

    mid_size / high_size: sides of the deformation and displacement maps (64 and 128 here; HRN uses 64/256)
    """

    n_train: int = 256
    n_val: int = 16
    n_test: int = 64
    image_size: int = 112
    seed: int = 0
    max_yaw_deg: float = 45.0
    max_pitch_deg: float = 15.0
    max_roll_deg: float = 8.0
    landmark_noise_px: float = 1.0
    pixel_noise_std: float = 0.01
    mid_size: int = 64
    high_size: int = 128
    batch_size: int = 8
    detail: DetailSettings = field(default_factory=DetailSettings)


def detail_layout(face_model: FaceModel, mid_size: int, high_size: int) -> DetailLayout:
    """The ICT UV layout of ``face_model`` with its two atlases."""
    uvs, uv_faces = ict_uv_tables(face_model)
    triangles = face_model.triangles.cpu()
    return DetailLayout(
        uvs=uvs,
        uv_faces=uv_faces,
        mid=build_uv_atlas(triangles, uvs, uv_faces, mid_size),
        high=build_uv_atlas(triangles, uvs, uv_faces, high_size),
    ).to(face_model.mean_shape.device)


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(..., 2) points -> (...) distance to the segment ab."""
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[..., None] * ab), axis=-1)


class DetailSampler:
    """Draws true detail maps for one face model (its mean face places the features)."""

    def __init__(
        self, face_model: FaceModel, layout: DetailLayout, settings: DetailSettings = DetailSettings()
    ) -> None:
        self.settings = settings
        mean = face_model.mean_shape.detach().cpu()[None]
        layout = layout.to("cpu")
        normals = vertex_normals(mean, face_model.triangles.cpu())
        self.mid_mask = layout.mid.mask.numpy()
        self.high_mask = layout.high.mask.numpy()
        self.mid_xy = position_map(mean, layout.mid)[0, :2].permute(1, 2, 0).numpy()
        self.high_xy = position_map(mean, layout.high)[0, :2].permute(1, 2, 0).numpy()
        self.mid_normals = F.normalize(position_map(normals, layout.mid), dim=1)[0].numpy()
        marks = mean[0, face_model.landmark_ids.cpu()].numpy()[:, :2]
        self.nose_wings = (marks[31], marks[35])
        self.mouth_corners = (marks[48], marks[54])
        self.brow_top = float(marks[17:27, 1].max())
        self.face_centre = marks[27:36].mean(0)
        self.face_half_width = float(np.abs(marks[0:17, 0] - self.face_centre[0]).max())

    def _folds(self, xy: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list]:
        """Distance of every texel to the two nasolabial fold lines (nose wing to below the mouth corner)."""
        lines = []
        for wing, corner in zip(self.nose_wings, self.mouth_corners):
            outward = np.sign(corner[0] - self.face_centre[0])
            start = wing + np.array([outward * 0.05, -0.02]) + rng.normal(0, 0.02, 2)
            end = corner + np.array([outward * 0.08, -0.15]) + rng.normal(0, 0.03, 2)
            lines.append(_segment_distance(xy, start, end))
        return np.stack(lines), lines

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(3, Sm, Sm) deformation and (1, Sh, Sh) displacement maps, float32, decimetres, 0 outside the charts."""
        s = self.settings
        # Mid frequency: folds and bumps as a height along the mean face's normal, plus a sideways part.
        distances, _ = self._folds(self.mid_xy, rng)
        depths = rng.uniform(*s.fold_depth_mm, size=2) * MM
        height = -(depths[:, None, None] * np.exp(-0.5 * (distances / (s.fold_width_mm * MM)) ** 2)).sum(0)
        sideways = np.zeros_like(self.mid_xy)
        for _ in range(int(rng.integers(s.n_bumps[0], s.n_bumps[1] + 1))):
            centre = self.face_centre + rng.uniform(-1, 1, 2) * np.array([self.face_half_width, 0.9])
            radius = rng.uniform(*s.bump_radius_mm) * MM
            bump = np.exp(-0.5 * ((self.mid_xy - centre) ** 2).sum(-1) / radius**2)
            amplitude = rng.normal(0.0, s.bump_height_mm) * MM
            height += amplitude * bump
            sideways += (amplitude * s.sideways * rng.normal(0, 1, 2))[None, None] * bump[..., None]
        deformation = height[None] * self.mid_normals
        deformation[:2] += sideways.transpose(2, 0, 1)
        deformation *= self.mid_mask[None]

        # High frequency: forehead wrinkles, creases along the folds, skin relief.
        x, y = self.high_xy[..., 0], self.high_xy[..., 1]
        period = rng.uniform(*s.wrinkle_period_mm) * MM
        amplitude = rng.uniform(*s.wrinkle_amplitude_mm) * MM
        wave = y + 0.3 * period * np.sin(x / (rng.uniform(0.3, 0.6)) + rng.uniform(0, 2 * np.pi))
        above = y - self.brow_top
        window = np.clip(above / 0.08, 0, 1) * np.clip((0.55 - above) / 0.1, 0, 1)
        window *= np.clip((0.7 * self.face_half_width - np.abs(x - self.face_centre[0])) / 0.1, 0, 1)
        displacement = amplitude * window * np.sin(2 * np.pi * wave / period + rng.uniform(0, 2 * np.pi))
        distances, _ = self._folds(self.high_xy, rng)
        displacement -= s.crease_depth_mm * MM * np.exp(-0.5 * (distances / (1.5 * MM)) ** 2).sum(0)
        relief = torch.from_numpy(rng.normal(0.0, 1.0, self.high_xy.shape[:2]).astype(np.float32))[None, None]
        relief = relief - F.avg_pool2d(relief, 5, stride=1, padding=2, count_include_pad=False)
        relief = (relief / relief.std().clamp_min(1e-6))[0, 0].numpy()
        displacement += s.relief_mm * MM * relief
        displacement *= self.high_mask
        return deformation.astype(np.float32), displacement[None].astype(np.float32)


@dataclass(frozen=True)
class DetailBatch:
    """A batch of detail faces.

    face:        `FaceBatch`; its ground truth holds the coefficients and the true detailed model-space vertices
    deformation: (B, 3, Sm, Sm) true deformation map, decimetres
    displacement:(B, 1, Sh, Sh) true displacement map, decimetres
    """

    face: FaceBatch
    deformation: torch.Tensor
    displacement: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.face.batch_size

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DetailBatch:
        return DetailBatch(
            self.face.to(device, non_blocking),
            self.deformation.to(device, non_blocking=non_blocking),
            self.displacement.to(device, non_blocking=non_blocking),
        )


def collate_detail(samples: list[dict]) -> DetailBatch:
    stack = lambda key: torch.stack([torch.as_tensor(s[key]) for s in samples])  # noqa: E731
    face = FaceBatch(
        images=stack("image"),
        landmarks=stack("landmarks"),
        skin=stack("skin"),
        index=stack("index").long(),
        ground_truth=GroundTruth(coefficients=stack("coefficients"), vertices=stack("vertices")),
    )
    return DetailBatch(face=face, deformation=stack("deformation"), displacement=stack("displacement"))


class DetailFaceDataset(Dataset):
    """One split of detail faces, generated in memory on first access (see the module docstring)."""

    def __init__(self, face_model: FaceModel, split: str, settings: DetailDataSettings = DetailDataSettings()) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        self.face_model = copy.deepcopy(face_model).cpu()
        self.split = split
        self.settings = settings
        self.n_samples = {"train": settings.n_train, "val": settings.n_val, "test": settings.n_test}[split]
        faces = SyntheticFaceSettings(
            n_train=settings.n_train,
            n_val=settings.n_val,
            n_test=settings.n_test,
            seed=settings.seed,
            max_yaw_deg=settings.max_yaw_deg,
            max_pitch_deg=settings.max_pitch_deg,
            max_roll_deg=settings.max_roll_deg,
            occluder_probability=0.0,
            landmark_noise_px=settings.landmark_noise_px,
            appearance=AppearanceSettings(look="model"),
        )
        self.faces = SyntheticFaceDataset(self.face_model, faces, split, image_size=settings.image_size)
        self.camera = PinholeCamera().resized(settings.image_size, settings.image_size)
        self.layout = detail_layout(self.face_model, settings.mid_size, settings.high_size)
        self._arrays: dict[str, np.ndarray] | None = None

    def detail_rng(self, index: int) -> np.random.Generator:
        seq = np.random.SeedSequence(self.settings.seed, spawn_key=(SPLITS.index(self.split), index, _DETAIL_STREAM))
        return np.random.default_rng(seq)

    def generate(self, chunk: int = 16) -> dict[str, np.ndarray]:
        sampler = DetailSampler(self.face_model, self.layout, self.settings.detail)
        template = template_from_face_model(self.face_model, self.camera)
        size = self.settings.image_size
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, self.n_samples, chunk):
            indices = list(range(start, min(start + chunk, self.n_samples)))
            rngs = [self.detail_rng(i) for i in indices]
            maps = [sampler.sample(rng) for rng in rngs]
            deformation = torch.from_numpy(np.stack([m[0] for m in maps]))
            displacement = torch.from_numpy(np.stack([m[1] for m in maps]))
            raw = self.faces.sample_coefficients(indices)
            _, coeffs, _ = place_faces(self.face_model, raw, self.camera, template, [1.0] * len(indices))
            with torch.no_grad():
                out = render_detailed(self.face_model, coeffs, self.camera, self.layout, deformation, displacement)
            backgrounds = np.stack([draw_background(rng, size, size) for rng in rngs])
            images = soft_composite(
                out.image.clamp(0, 1), out.mask, torch.from_numpy(backgrounds).permute(0, 3, 1, 2)
            ).numpy()
            for k, rng in enumerate(rngs):
                images[k] += rng.normal(0.0, self.settings.pixel_noise_std, images[k].shape).astype(np.float32)
            images_u8 = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
            landmarks = out.landmarks.numpy() + np.stack(
                [rng.normal(0.0, self.settings.landmark_noise_px, (68, 2)) for rng in rngs]
            )
            values = {
                "images": images_u8,
                "skin": skin_posterior_torch(torch.from_numpy(images_u8)).numpy().astype(np.float16),
                "landmarks": landmarks.astype(np.float32),
                "coefficients": self.face_model.layout.join(coeffs).numpy().astype(np.float32),
                "vertices": out.vertices.numpy().astype(np.float32),
                "deformation": deformation.numpy(),
                "displacement": displacement.numpy(),
            }
            for key, value in values.items():
                parts.setdefault(key, []).append(value)
        return {key: np.concatenate(value) for key, value in parts.items()}

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = self.generate()
        return self._arrays

    def coefficients(self, index: int) -> Coefficients:
        return self.face_model.layout.split(torch.from_numpy(self.arrays["coefficients"][index : index + 1]))

    def __len__(self) -> int:
        return self.n_samples

    def __getitem__(self, index: int) -> dict:
        a = self.arrays
        return {
            "image": torch.from_numpy(a["images"][index]).float().div_(255.0),
            "landmarks": torch.from_numpy(a["landmarks"][index]),
            "skin": torch.from_numpy(a["skin"][index].astype(np.float32)).unsqueeze(0),
            "index": index,
            "coefficients": torch.from_numpy(a["coefficients"][index]),
            "vertices": torch.from_numpy(a["vertices"][index]),
            "deformation": torch.from_numpy(a["deformation"][index]),
            "displacement": torch.from_numpy(a["displacement"][index]),
        }


class DetailDataModule(pl.LightningDataModule):
    """Train / val / test splits of `DetailFaceDataset` as `DetailBatch` loaders."""

    def __init__(self, face_model: FaceModel, settings: DetailDataSettings = DetailDataSettings()) -> None:
        super().__init__()
        self.face_model = face_model
        self.settings = settings
        self.datasets: dict[str, DetailFaceDataset] = {}

    def dataset(self, split: str) -> DetailFaceDataset:
        if split not in self.datasets:
            self.datasets[split] = DetailFaceDataset(self.face_model, split, self.settings)
        return self.datasets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return make_loader(
            self.dataset(split), self.settings.batch_size, shuffle, self.settings.seed, 0, collate_detail
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
