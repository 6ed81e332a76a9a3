"""The embedded default data: faces rendered from random coefficients, with exact 3D ground truth.

Every sample is drawn from the face model's priors (identity, expression, albedo, SH lighting, pose),
rendered over a procedural background (`datamodules.backgrounds`), optionally partly covered by an occluder,
and given the weak labels real photos get: 68 landmarks
(the projected ground truth plus detector-like Gaussian noise) and a skin posterior computed from the
final picture by the Jones & Rehg model of `preprocessing.skin`. How the picture looks is set by
`datamodules.appearance.AppearanceSettings`: photo-like by default (whole head with eyes, hair and beards,
per-identity skin, lip and brow colours, directional and coloured lights with cast shadows, blur, noise and
JPEG), or the face model's own SH render of its region (``look="model"``). Either way the stored coefficients
and vertices are the face model's, on its region.

Crops look like what ``face3d prepare`` makes of a photo: the face is moved (translation, including
depth) so that its 5 alignment points fit the alignment template exactly as `preprocessing.align` would
fit them, then jittered by the prior's small translation, so the mean face at zero pose lands on the
template and a wide or turned face is rescaled and recentred as a real crop would be.

Randomness is per sample: the draws of sample ``i`` of split ``s`` with base seed ``k`` depend only on
``(k, s, i)`` and the generation parameters, so a smaller dataset starts with the same faces (up to float
rounding in pixels, as renders are batched differently), train/val/test never share an identity, and
switching occluders off changes nothing but the occluded pixels (and the skin there; with blur and JPEG
compression also their neighbours).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datamodules.appearance import (
    AppearanceSettings,
    HeadScene,
    build_head_scene,
    camera_for_focal,
    degrade_picture,
    render_photo,
    sample_focal_scale,
    sample_identity_look,
    sample_picture_light,
)
from datamodules.backgrounds import OCCLUDER_KINDS, draw_background, draw_occluder
from datamodules.batch import collate_face_samples
from datamodules.generated_cache import CachedGeneration
from datamodules.loaders import SPLITS, check_loader_args, make_loader, stage_splits
from face_model.coefficients import SH_BANDS, Coefficients, CoeffLayout
from face_model.model import FaceModel, five_points_from_68
from face_model.sampling import CoefficientPrior, sample_coefficients
from preprocessing.align import fit_scale_translation, template_from_face_model
from preprocessing.skin import skin_posterior_torch
from renderers.camera import PinholeCamera, euler_to_rotation, model_to_camera, project, rigid_transform
from renderers.mesh_renderer import MeshRenderer

# Independent random streams of one sample; appending a stream keeps existing samples unchanged.
_STREAMS = ("coefficients", "background", "occluder", "landmarks", "pixels", "look", "light", "sensor", "camera")
CACHE_VERSION = 2
"""Part of the cache key: bump it whenever a change here alters what a given set of parameters generates."""
_ALIGN_ITERATIONS = 4


def sample_rng(seed: int, split: str, index: int, stream: str) -> np.random.Generator:
    """The NumPy generator of one random stream of one sample (see the module docstring)."""
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index, _STREAMS.index(stream)))
    )


def _torch_generator(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))


def coefficient_prior_std(layout: CoeffLayout, prior: CoefficientPrior) -> torch.Tensor:
    """(layout.size,) standard deviation of each flat coefficient under ``prior``, to express ground-truth
    errors in prior units.

    Angles are uniform in +-limit, so their std is limit / sqrt(3) (radians). Lighting uses the
    per-band spread of `face_model.sampling.sample_lighting` (the small colour tint is ignored).
    Translation is the prior's jitter around the aligned position, not the spread of the aligned
    position itself (which depends on pose and identity).
    """
    deg = math.pi / 180.0
    band = [prior.ambient_std] + [prior.directional_std] * 3 + [prior.higher_order_std] * (SH_BANDS - 4)
    parts = {
        "identity": [prior.identity_std] * layout.n_id,
        "expression": [prior.expression_std] * layout.n_exp,
        "albedo": [prior.albedo_std] * layout.n_tex,
        "angles": [limit * deg / math.sqrt(3.0) for limit in (prior.pitch_deg, prior.yaw_deg, prior.roll_deg)],
        "lighting": band * layout.sh_channels,
        "translation": [prior.translation_std] * 3,
    }
    return torch.tensor([v for name in layout.slices for v in parts[name]], dtype=torch.float32)


def aligned_translation(
    face_model: FaceModel,
    coeffs: Coefficients,
    camera: PinholeCamera,
    template: np.ndarray,
    iterations: int = _ALIGN_ITERATIONS,
) -> torch.Tensor:
    """(B, 3) model-space translation that puts each face's 5 alignment points onto ``template``.

    ``face3d prepare`` fits a scale and a 2D shift from the detected 5 points to the template; here the
    same fit (`preprocessing.align.fit_scale_translation`) is measured on the projected points and
    undone by moving the face: a scale s means the face should sit at 1/s of its depth, a shift k
    (after the scaling about the principal point) means a lateral move of k * depth / (s * focal).
    Depth differs between the 5 points, so the update is repeated a few times; ``coeffs.translation``
    is ignored.
    """
    with torch.no_grad():
        points = face_model.shape(coeffs)[:, face_model.landmark_ids]
        rotation = euler_to_rotation(coeffs.angles)
        translation = torch.zeros_like(coeffs.translation, dtype=torch.float64)
        principal = np.asarray(camera.principal_point, dtype=np.float64)
        for _ in range(iterations):
            posed = rigid_transform(points.double(), rotation.double(), translation)
            cam = model_to_camera(posed, camera.camera_distance)
            five = five_points_from_68(project(cam, camera)).cpu().numpy()
            depth = five_points_from_68(cam)[..., 2].mean(-1).cpu().numpy()
            update = np.zeros((len(five), 3))
            for b in range(len(five)):
                scale, shift = fit_scale_translation(five[b], template)
                lateral = ((scale - 1.0) * principal + shift) * depth[b] / (scale * camera.focal)
                # Camera y points down and depth = distance - z, hence the signs.
                update[b] = (lateral[0], -lateral[1], depth[b] - depth[b] / scale)
            translation = translation + torch.from_numpy(update).to(translation)
        return translation.to(coeffs.translation.dtype)


def place_faces(
    face_model: FaceModel, coeffs: Coefficients, camera: PinholeCamera, template: np.ndarray, focal_scales: list[float]
) -> tuple[Coefficients, Coefficients, list[PinholeCamera]]:
    """Align B faces to the crop template through per-picture focal lengths.

    ``coeffs.translation`` holds the prior's jitter only. Picture b is taken with
    `datamodules.appearance.camera_for_focal` of ``camera`` (focal and distance times ``focal_scales[b]``),
    aligned by `aligned_translation` through that camera, with the jitter scaled alike. Returns the
    coefficients to render with those cameras, the coefficients to store (translation divided by the focal
    scale: the same face size and centre under ``camera``, only the perspective differs) and the cameras.
    With every scale 1 both coefficient sets are those of one `aligned_translation` under ``camera``.
    """
    if all(k == 1.0 for k in focal_scales):
        placed = coeffs.replace(
            translation=aligned_translation(face_model, coeffs, camera, template) + coeffs.translation
        )
        return placed, placed, [camera] * len(focal_scales)
    cameras = [camera_for_focal(camera, k) for k in focal_scales]
    translation = torch.cat(
        [
            aligned_translation(face_model, coeffs.index(slice(b, b + 1)), cameras[b], template)
            + focal_scales[b] * coeffs.translation[b : b + 1]
            for b in range(len(cameras))
        ]
    )
    scales = torch.tensor(focal_scales, dtype=translation.dtype, device=translation.device)[:, None]
    return coeffs.replace(translation=translation), coeffs.replace(translation=translation / scales), cameras


def project_landmarks(renderer: MeshRenderer, coeffs: Coefficients, cameras: list[PinholeCamera]) -> np.ndarray:
    """(B, 68, 2) landmark pixels of B faces, each through its own camera."""
    with torch.no_grad():
        if all(c is cameras[0] for c in cameras):
            return renderer.project_landmarks(coeffs, cameras[0]).float().cpu().numpy()
        return (
            torch.cat([renderer.project_landmarks(coeffs.index(slice(b, b + 1)), c) for b, c in enumerate(cameras)])
            .float()
            .cpu()
            .numpy()
        )


def soft_composite(render: torch.Tensor, mask: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) render over a background through its hard (B, 1, H, W) mask, with a one-pixel soft edge.

    The rasterizer's mask is binary; a real photo has no staircase silhouette for the network to latch
    onto. The coverage is box-filtered over 3x3 pixels, and pixels just outside the face take the mean
    colour of their face neighbours (the render is black there).
    """
    alpha = F.avg_pool2d(mask, 3, stride=1, padding=1, count_include_pad=False)
    spread = F.avg_pool2d(render * mask, 3, stride=1, padding=1, count_include_pad=False)
    colour = torch.where(mask > 0, render, spread / alpha.clamp_min(1e-6))
    return alpha * colour + (1.0 - alpha) * background


@dataclasses.dataclass(frozen=True)
class SyntheticFaceSettings:
    """What the synthetic faces are (`SyntheticFaceDataset`, `SyntheticFaceDataModule`; the ``data.synthetic``
    section of the experiment config). Every default lives here.

    n_train, n_val, n_test: faces per split.
    seed:                 base seed; (seed, split, index) fixes a sample.
    max_yaw_deg, max_pitch_deg, max_roll_deg: pose angles are uniform in +- these (they replace the angle
                          ranges of the coefficient prior).
    occluder_probability: chance that a face gets one occluder (hand, sunglasses, bar, object), in [0, 1].
    landmark_noise_px:    std of the Gaussian noise on the projected landmarks, mimicking a detector, in pixels
                          of the crop.
    pixel_noise_std:      sensor noise of the model look (colour values in [0, 1]); the photo look uses the
                          appearance's sensor model instead.
    render_batch_size:    faces rendered at once.
    appearance:           how the pictures look (`datamodules.appearance.AppearanceSettings`): photo-like by
                          default; ``look="model"`` is the face model's own SH render of its region. In the photo
                          look the stored albedo and lighting coefficients are the prior's draws, not what
                          coloured and lit the picture (the SH light is used for its ``sh_probability`` share).
    """

    n_train: int = 4000
    n_val: int = 256
    n_test: int = 256
    seed: int = 0
    max_yaw_deg: float = 80.0
    max_pitch_deg: float = 25.0
    max_roll_deg: float = 15.0
    occluder_probability: float = 0.3
    landmark_noise_px: float = 1.5
    pixel_noise_std: float = 0.01
    render_batch_size: int = 32
    appearance: AppearanceSettings = dataclasses.field(default_factory=AppearanceSettings)

    def __post_init__(self) -> None:
        if min(self.n_train, self.n_val, self.n_test, self.seed) < 0:
            raise ValueError(
                f"n_train, n_val, n_test and seed must be >= 0, got {self.n_train}, {self.n_val}, {self.n_test}, "
                f"{self.seed}"
            )
        if not 0.0 <= self.occluder_probability <= 1.0:
            raise ValueError(f"occluder_probability must be in [0, 1], got {self.occluder_probability}")
        if self.landmark_noise_px < 0 or self.pixel_noise_std < 0:
            raise ValueError("landmark_noise_px and pixel_noise_std must be >= 0")
        if self.render_batch_size < 1:
            raise ValueError(f"render_batch_size must be >= 1, got {self.render_batch_size}")

    def size(self, split: str) -> int:
        """Faces in ``split``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticArrays:
    """A generated split, stored compactly (what the cache file holds).

    images:          (N, 3, H, W) uint8 RGB
    skin:            (N, H, W) float16 skin posterior of the final image
    landmarks:       (N, 68, 2) float32 noisy landmarks (what a detector would report), pixels
    clean_landmarks: (N, 68, 2) float32 projected ground-truth landmarks, pixels
    coefficients:    (N, layout.size) float32 flat coefficients that generated each image
    occluder:        (N,) int8, -1 for none, else the index into `OCCLUDER_KINDS`
    occlusion:       (N, ceil(H * W / 8)) uint8, ``np.packbits`` of the pixels an occluder touched
    focal_scale:     (N,) float32 focal length of each picture's camera relative to the crop's camera (the
                     stored translation is the equivalent one under the crop's camera; see `place_faces`)
    """

    images: np.ndarray
    skin: np.ndarray
    landmarks: np.ndarray
    clean_landmarks: np.ndarray
    coefficients: np.ndarray
    occluder: np.ndarray
    occlusion: np.ndarray
    focal_scale: np.ndarray

    @staticmethod
    def concatenate(parts: list[SyntheticArrays]) -> SyntheticArrays:
        return SyntheticArrays(
            *(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(SyntheticArrays))
        )


class RenderedFaceDataset(CachedGeneration, Dataset):
    """What the rendered datasets share (`SyntheticFaceDataset` here, `datamodules.synthetic_sets`' image sets): a
    private CPU copy of the face model, the crop's camera, the prior with the settings' angle ranges, the look, and
    how and where to render.

    ``settings`` is the subclass's settings dataclass; it has ``seed``, ``max_yaw_deg``, ``max_pitch_deg``,
    ``max_roll_deg``, ``landmark_noise_px``, ``pixel_noise_std``, ``render_batch_size`` and ``appearance``.
    """

    cache_version: int
    """Part of the cache key: each subclass bumps its own whenever a change alters what given settings generate."""

    def __init__(
        self,
        face_model: FaceModel,
        settings,
        split: str = "train",
        *,
        image_size: int,
        cache_dir: str | Path | None = None,
        prior: CoefficientPrior = CoefficientPrior(),
        device: str | torch.device = "cpu",
        backend: str = "auto",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
        # A private CPU copy: the caller's model may move to a GPU with the LightningModule that shares it,
        # while ground-truth vertices are computed here, possibly in DataLoader workers.
        self.face_model = copy.deepcopy(face_model).cpu()
        self.settings = settings
        self.split = split
        self.seed = settings.seed
        self.image_size = image_size
        self.landmark_noise_px = settings.landmark_noise_px
        self.pixel_noise_std = settings.pixel_noise_std
        self.prior = dataclasses.replace(
            prior, yaw_deg=settings.max_yaw_deg, pitch_deg=settings.max_pitch_deg, roll_deg=settings.max_roll_deg
        )
        self.camera = PinholeCamera().resized(image_size, image_size)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.appearance = settings.appearance
        self.render_batch_size = settings.render_batch_size
        self.device = torch.device(device)
        self.backend = backend
        self._scene: HeadScene | None = None
        self.generation_seconds: float | None = None
        """Wall time of the generation, None until generated (or when read from the cache)."""
        self._arrays = None
        self._cache_key: str | None = None

    @property
    def layout(self) -> CoeffLayout:
        return self.face_model.layout

    def generation_parameters(self) -> dict:
        """What every rendered dataset's pictures depend on; subclasses add their own (the cache key hashes it)."""
        return {
            "version": self.cache_version,
            "split": self.split,
            "seed": self.seed,
            "image_size": self.image_size,
            "landmark_noise_px": self.landmark_noise_px,
            "pixel_noise_std": self.pixel_noise_std,
            "prior": dataclasses.asdict(self.prior),
            "appearance": self.appearance.as_dict(),
            "face_model": {
                "name": self.face_model.name,
                "layout": dataclasses.asdict(self.layout),
                "digest": model_digest(self.face_model),
            },
        }

    @property
    def scene(self) -> HeadScene:
        """What the photo look renders (built on first use, shared by datasets of the same face model)."""
        if self._scene is None:
            self._scene = shared_head_scene(self.face_model, self.appearance.full_head).to(self.device)
        return self._scene

    def renderer_and_template(self) -> tuple[MeshRenderer, np.ndarray]:
        """The renderer on the generation device and the crop's alignment template."""
        model = self.face_model if self.device.type == "cpu" else copy.deepcopy(self.face_model).to(self.device)
        return MeshRenderer(model, self.camera, backend=self.backend), template_from_face_model(model, self.camera)

    def render_model_look(
        self, renderer: MeshRenderer, coeffs: Coefficients
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """The face model's own render: (B, 3, H, W) image in [0, 1], (B, 1, H, W) mask, (B, 68, 2) landmarks."""
        with torch.no_grad():
            out = renderer(coeffs)
        return out.image.clamp(0.0, 1.0).float().cpu(), out.mask.float().cpu(), out.landmarks.float().cpu().numpy()

    def background_style(self) -> str:
        # The model look keeps its procedural backgrounds (what it always had).
        return "procedural" if self.appearance.look == "model" else self.appearance.background


class SyntheticFaceDataset(RenderedFaceDataset):
    """Rendered random faces with weak labels and 3D ground truth (see the module docstring).

    Generated once, on first access, and cached under ``cache_dir`` (`datamodules.generated_cache`).

    Args:
        face_model: the morphable model to sample and render (any `FaceModel`; the dataset keeps a CPU copy).
        settings: what to generate (`SyntheticFaceSettings`); the split's size is ``settings.size(split)``.
        split: "train", "val" or "test"; each split has its own random streams, so no shared identities.
        image_size: side of the square crops; the camera is Deep3D's 224 camera resized.
        cache_dir: where to keep the generated arrays as ``.npz`` keyed by all generation parameters and the
            face model's content; None keeps them in memory only.
        prior: spreads of identity, expression, albedo, lighting and translation jitter (its angle ranges are
            replaced by the settings' ``max_*_deg``).
        device: where to render (a CUDA device renders much faster); samples are stored on the CPU.
        backend: rasterizer backend for `MeshRenderer`.

    Generation runs once, on the first `materialise` (which `__getitem__` calls); call it in the main
    process before handing the dataset to DataLoader workers, otherwise each worker generates its own copy.
    """

    array_type = SyntheticArrays
    cache_version = CACHE_VERSION

    @property
    def n_samples(self) -> int:
        return self.settings.size(self.split)

    # ----------------------------------------------------------------------------------- cache identity

    def generation_parameters(self) -> dict:
        params = super().generation_parameters()
        params["face_model"].update(
            vertices=self.face_model.n_vertices, triangles=int(self.face_model.triangles.shape[0])
        )
        return {**params, "n_samples": self.n_samples, "occluder_probability": self.settings.occluder_probability}

    def cache_stem(self) -> str:
        return f"synthetic-{self.face_model.name}-{self.split}-{self.n_samples}x{self.image_size}"

    def describe(self) -> str:
        return f"{self.n_samples} synthetic {self.split} faces at {self.image_size}x{self.image_size} on {self.device}"

    # ---------------------------------------------------------------------------------------- generation

    def matches(self, arrays: SyntheticArrays) -> bool:
        size = self.image_size
        return arrays.images.shape == (self.n_samples, 3, size, size) and arrays.coefficients.shape == (
            self.n_samples,
            self.layout.size,
        )

    def generate(self) -> SyntheticArrays:
        renderer, template = self.renderer_and_template()
        parts = []
        # tqdm hides itself when the output is not a terminal (logs, CI).
        with tqdm(total=self.n_samples, desc=f"synthetic {self.split}", unit="face", disable=None, leave=False) as bar:
            for start in range(0, self.n_samples, self.render_batch_size):
                indices = range(start, min(start + self.render_batch_size, self.n_samples))
                parts.append(self._generate_batch(renderer, template, indices))
                bar.update(len(indices))
        if not parts:
            return self._empty_arrays()
        return SyntheticArrays.concatenate(parts)

    def _empty_arrays(self) -> SyntheticArrays:
        size = self.image_size
        return SyntheticArrays(
            images=np.zeros((0, 3, size, size), np.uint8),
            skin=np.zeros((0, size, size), np.float16),
            landmarks=np.zeros((0, 68, 2), np.float32),
            clean_landmarks=np.zeros((0, 68, 2), np.float32),
            coefficients=np.zeros((0, self.layout.size), np.float32),
            occluder=np.zeros((0,), np.int8),
            occlusion=np.zeros((0, (size * size + 7) // 8), np.uint8),
            focal_scale=np.zeros((0,), np.float32),
        )

    def sample_coefficients(self, indices: range | list[int]) -> Coefficients:
        """Coefficients of the given samples before alignment (translation = the prior's jitter only)."""
        return Coefficients.cat(
            [
                sample_coefficients(
                    self.layout, 1, self.prior, _torch_generator(sample_rng(self.seed, self.split, i, "coefficients"))
                )
                for i in indices
            ]
        )

    def focal_scales(self, indices: range | list[int]) -> list[float]:
        """Each sample's focal length relative to the crop's camera (1 in the model look)."""
        if self.appearance.look == "model":
            return [1.0] * len(indices)
        return [sample_focal_scale(sample_rng(self.seed, self.split, i, "camera"), self.appearance) for i in indices]

    def _render(
        self, renderer: MeshRenderer, coeffs: Coefficients, cameras: list[PinholeCamera], indices: range
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(B, 3, H, W) render in [0, 1], (B, 1, H, W) mask and (B, 68, 2) clean landmarks, in the chosen look."""
        if self.appearance.look == "model":
            return self.render_model_look(renderer, coeffs)
        settings = self.appearance
        looks = [sample_identity_look(sample_rng(self.seed, self.split, i, "look"), settings) for i in indices]
        lights = [sample_picture_light(sample_rng(self.seed, self.split, i, "light"), settings) for i in indices]
        image, mask = render_photo(
            self.scene, renderer.face_model, coeffs, looks, lights, cameras, settings, self.backend
        )
        return image, mask, project_landmarks(renderer, coeffs, cameras)

    def _generate_batch(self, renderer: MeshRenderer, template: np.ndarray, indices: range) -> SyntheticArrays:
        size = self.image_size
        focal = self.focal_scales(indices)
        shown, coeffs, cameras = place_faces(
            renderer.face_model, self.sample_coefficients(indices).to(self.device), self.camera, template, focal
        )
        render, mask, clean = self._render(renderer, shown, cameras, indices)
        style = self.background_style()
        backgrounds = np.stack(
            [draw_background(sample_rng(self.seed, self.split, i, "background"), size, size, style) for i in indices]
        )
        images = soft_composite(render, mask, torch.from_numpy(backgrounds).permute(0, 3, 1, 2))
        images = images.permute(0, 2, 3, 1).numpy()

        n = len(indices)
        occluder = np.full(n, -1, np.int8)
        occlusion = np.zeros((n, size, size), bool)
        noisy = np.empty_like(clean)
        for k, i in enumerate(indices):
            rng = sample_rng(self.seed, self.split, i, "occluder")
            # The decision is drawn whatever the probability, so the stream's later draws do not depend on it.
            if rng.random() < self.settings.occluder_probability:
                kind = int(rng.integers(len(OCCLUDER_KINDS)))
                images[k], coverage = draw_occluder(images[k], clean[k], rng, OCCLUDER_KINDS[kind])
                occluder[k], occlusion[k] = kind, coverage > 0
            landmark_rng = sample_rng(self.seed, self.split, i, "landmarks")
            noisy[k] = clean[k] + landmark_rng.normal(0.0, self.landmark_noise_px, clean[k].shape)
        if self.appearance.look == "model":
            for k, i in enumerate(indices):
                pixels = sample_rng(self.seed, self.split, i, "pixels")
                images[k] = images[k] + pixels.normal(0.0, self.pixel_noise_std, images[k].shape).astype(np.float32)
            images_u8 = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)
        else:
            images_u8 = np.stack(
                [
                    degrade_picture(images[k], sample_rng(self.seed, self.split, i, "sensor"), self.appearance)
                    for k, i in enumerate(indices)
                ]
            ).transpose(0, 3, 1, 2)
        with torch.no_grad():
            skin = skin_posterior_torch(torch.from_numpy(images_u8))
        return SyntheticArrays(
            images=np.ascontiguousarray(images_u8),
            skin=skin.numpy().astype(np.float16),
            landmarks=noisy.astype(np.float32),
            clean_landmarks=clean.astype(np.float32),
            coefficients=self.layout.join(coeffs).float().cpu().numpy(),
            occluder=occluder,
            occlusion=np.packbits(occlusion.reshape(n, -1), axis=1),
            focal_scale=np.asarray(focal, np.float32),
        )

    # ------------------------------------------------------------------------------------------- access

    def __len__(self) -> int:
        return self.n_samples

    def occlusion_mask(self, index: int) -> np.ndarray:
        """(H, W) bool: the pixels of sample ``index`` that its occluder touched (all False without one)."""
        size = self.image_size
        return np.unpackbits(self.arrays.occlusion[index], count=size * size).reshape(size, size).astype(bool)

    def picture_camera(self, index: int) -> PinholeCamera:
        """The camera sample ``index`` was taken with (the crop's camera unless its focal length varies); its
        clean landmarks are the face model's landmarks posed with the stored angles and the stored translation
        times the focal scale, projected through this camera."""
        return camera_for_focal(self.camera, float(self.arrays.focal_scale[index]))

    def vertices(self, coefficients: torch.Tensor) -> torch.Tensor:
        """(B, layout.size) flat coefficients -> (B, V, 3) model-space shape, on the CPU."""
        with torch.no_grad():
            return self.face_model.shape(self.layout.split(coefficients))

    def __getitem__(self, index: int) -> dict:
        arrays = self.arrays
        if not -self.n_samples <= index < self.n_samples:
            raise IndexError(f"index {index} out of range for {self.n_samples} samples")
        index = index % self.n_samples
        coefficients = torch.from_numpy(arrays.coefficients[index])
        return {
            "image": torch.from_numpy(arrays.images[index]).float().div_(255.0),
            "landmarks": torch.from_numpy(arrays.landmarks[index]),
            "skin": torch.from_numpy(arrays.skin[index].astype(np.float32)).unsqueeze(0),
            "index": index,
            "coefficients": coefficients,
            "vertices": self.vertices(coefficients.unsqueeze(0))[0],
        }


_SCENES: dict[tuple[str, bool], HeadScene] = {}


def shared_head_scene(face_model: FaceModel, full_head: bool) -> HeadScene:
    """`datamodules.appearance.build_head_scene`, built once per face model content (splits and image-set
    datasets of one model share it; building takes a second or two)."""
    key = (model_digest(face_model), full_head)
    if key not in _SCENES:
        _SCENES[key] = build_head_scene(face_model, full_head)
    return _SCENES[key]


def model_digest(face_model: FaceModel) -> str:
    """Short hash of a face model's buffers: two models with the same name but other bases differ."""
    digest = hashlib.sha256()
    for name, buffer in sorted(face_model.named_buffers()):
        digest.update(name.encode())
        digest.update(buffer.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class SyntheticFaceDataModule(pl.LightningDataModule):
    """Train / val / test splits of `SyntheticFaceDataset` as `FaceBatch` loaders.

    Args:
        face_model, settings, image_size, cache_dir, prior, device, backend: those of `SyntheticFaceDataset`.
        batch_size: faces per batch.
        num_workers: DataLoader workers (-1: one per spare CPU; see `datamodules.loaders.resolve_num_workers`).

    With a ``cache_dir`` missing splits are generated and written in `prepare_data` (on one process), and the
    other processes read them in `setup`; without one every process generates the splits its stage needs in
    `setup`.
    """

    def __init__(
        self,
        face_model: FaceModel,
        settings: SyntheticFaceSettings = SyntheticFaceSettings(),
        *,
        image_size: int,
        batch_size: int,
        num_workers: int = 0,
        cache_dir: str | Path | None = None,
        prior: CoefficientPrior = CoefficientPrior(),
        device: str | torch.device = "cpu",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_loader_args(batch_size, num_workers)
        self.face_model = face_model
        self.settings = settings
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = settings.seed
        self.sizes = {split: settings.size(split) for split in SPLITS}
        self._dataset_args = dict(
            image_size=image_size, cache_dir=cache_dir, prior=prior, device=device, backend=backend
        )
        self.cache_dir = cache_dir
        self.datasets: dict[str, SyntheticFaceDataset] = {}

    def dataset(self, split: str) -> SyntheticFaceDataset:
        """The split's dataset, built (not yet generated) on first use."""
        if split not in self.datasets:
            self.datasets[split] = SyntheticFaceDataset(self.face_model, self.settings, split, **self._dataset_args)
        return self.datasets[split]

    @property
    def prior(self) -> CoefficientPrior:
        """The prior the ground-truth coefficients were drawn from (angle ranges included)."""
        return self.dataset("train").prior

    @property
    def coefficient_std(self) -> torch.Tensor:
        """(layout.size,) prior std of each ground-truth coefficient (`coefficient_prior_std`)."""
        return coefficient_prior_std(self.face_model.layout, self.prior)

    def prepare_data(self) -> None:
        if self.cache_dir is None:
            return
        for split in SPLITS:
            dataset = self.dataset(split)
            # An existing cache is read in `setup`; reading it here too would load it twice.
            if not dataset.cache_path.is_file():
                dataset.materialise()

    def setup(self, stage: str | None = None) -> None:
        for split in stage_splits(stage):
            self.dataset(split).materialise()

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        # Generating inside DataLoader workers would repeat the work in each of them.
        dataset.materialise()
        return make_loader(dataset, self.batch_size, shuffle, self.seed, self.num_workers, collate_face_samples)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
