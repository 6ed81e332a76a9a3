"""Image sets for C-Net (Deng et al. 2019 §5): several pictures of one identity per sample.

Two sources:

* `SyntheticImageSetDataset`: one random identity (shape and albedo) per set; each picture of it has its own
  expression, pose, lighting and a small albedo change on top of the identity's albedo, and some pictures
  are degraded (an occluder, blur, sensor noise, or a strong light from one side) so that image quality
  varies inside a set, which is what C-Net learns to see. Yaws are spread over the whole range: the range
  is cut into as many equal bins as the set has pictures and each picture takes a random yaw in its own bin,
  so every set mixes frontal and profile views. Rendering, alignment, backgrounds, occluders and labels are
  those of the single-image synthetic data (`datamodules.synthetic`), so is the look
  (`datamodules.appearance`; in the photo look an identity keeps its skin, hair and beard in every picture
  and each picture has its own light and sensor), and so is the determinism: the
  draws of set ``i`` of split ``s`` with base seed ``k`` depend only on ``(k, s, i)`` and the generation
  parameters, splits never share an identity, and generated splits are cached on disk.
* `PreparedImageSetDataset`: real photos from ONE ``face3d prepare`` output folder whose source photos
  were organised one folder per person (``people/alice/1.jpg``, ``people/bob/x.png``, ... prepared with
  ``face3d prepare --images people --out prepared``). The identity of a photo is the folder its source
  path sits in (``alice``, or ``group/alice`` for deeper trees); photos directly in the root folder have no
  identity and are skipped. One prepare run keeps prepare's cache and manifest in one place, which is why
  this layout was chosen over one prepare folder per identity. Any number of photos per identity; sets
  are sampled to ``set_size`` pictures (5 in the paper), smaller identities give smaller sets (padded).

`collate_image_sets` pads sets to the largest one of the batch and marks real pictures in `SetBatch.valid`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.appearance import (
    AppearanceSettings,
    HeadScene,
    degrade_picture,
    render_photo,
    sample_focal_scale,
    sample_identity_look,
    sample_picture_light,
    side_light,
)
from datamodules.backgrounds import draw_background, draw_occluder
from datamodules.generated_cache import CachedGeneration
from datamodules.prepared import PreparedRecord, is_validation, load_prepared_sample
from datamodules.synthetic import (
    SPLITS,
    model_digest,
    place_faces,
    project_landmarks,
    shared_head_scene,
    soft_composite,
)
from errors import InvalidInputError
from face_model.coefficients import SH_BANDS, Coefficients
from face_model.model import FaceModel
from face_model.sampling import CoefficientPrior, sample_lighting
from preprocessing.align import template_from_face_model
from preprocessing.skin import skin_posterior_torch
from renderers.camera import PinholeCamera
from renderers.mesh_renderer import MeshRenderer

DEGRADATIONS = ("none", "occluder", "blur", "noise", "side_light")
"""Per-picture degradation kinds; `SetMetadata.degradation` indexes this tuple."""

CACHE_VERSION = 2
"""Part of the cache key: bump it whenever a change here alters what given parameters generate."""

# Independent random streams; appending a name keeps existing sets unchanged.
_SET_STREAMS = ("identity", "look")
_IMAGE_STREAMS = (
    "coefficients",
    "degradation",
    "background",
    "landmarks",
    "pixels",
    "damage",
    "light",
    "sensor",
    "camera",
)
# Keeps these streams apart from the single-image data's (whose spawn keys are (split, index, stream)).
_DOMAIN = 1


def set_rng(seed: int, split: str, set_index: int, stream: str, image: int | None = None) -> np.random.Generator:
    """The NumPy generator of one random stream of set ``set_index`` (``image`` None) or of its picture
    ``image`` (see the module docstring)."""
    if image is None:
        key = (_DOMAIN, SPLITS.index(split), set_index, 0, _SET_STREAMS.index(stream))
    else:
        key = (_DOMAIN, SPLITS.index(split), set_index, 1 + image, _IMAGE_STREAMS.index(stream))
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


# ------------------------------------------------------------------------------------------------- batch


@dataclass(frozen=True)
class SetGroundTruth:
    """3D ground truth of each set's identity, where the data has it (synthetic sets).

    identity: (B, n_id) identity coefficients
    vertices: (B, V, 3) the identity's neutral shape (mean + identity, zero expression, before pose), decimetres
    """

    identity: torch.Tensor
    vertices: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SetGroundTruth:
        return SetGroundTruth(*(getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)))


@dataclass(frozen=True)
class SetMetadata:
    """What was done to each picture, for analysis (synthetic sets); padding holds zeros.

    yaw_deg:     (B, N) float head yaw in degrees (the y-axis angle of `Coefficients.angles`): 0 is frontal,
                 +-90 a full profile
    occluded:    (B, N) bool, an occluder covers part of the face
    degradation: (B, N) long index into `DEGRADATIONS` (0 = clean)
    """

    yaw_deg: torch.Tensor
    occluded: torch.Tensor
    degradation: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SetMetadata:
        return SetMetadata(*(getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)))


@dataclass(frozen=True)
class SetBatch:
    """B image sets of one identity each, padded to N pictures.

    images:       (B, N, 3, H, W) RGB float in [0, 1]; padding is 0
    landmarks:    (B, N, 68, 2) detected (or noisy synthetic) landmarks, crop pixels
    skin:         (B, N, 1, H, W) skin posterior in [0, 1]
    valid:        (B, N) bool, True for real pictures, False for padding
    index:        (B,) long, position of each set in its dataset
    ground_truth: `SetGroundTruth` or None
    metadata:     `SetMetadata` or None
    full:         True when the batch is known to hold no padding (``valid`` all True). Set on the host by
                  `collate_image_sets`, so a training step can skip selecting valid pictures without asking
                  the device; False is always safe.
    """

    images: torch.Tensor
    landmarks: torch.Tensor
    skin: torch.Tensor
    valid: torch.Tensor
    index: torch.Tensor
    ground_truth: SetGroundTruth | None = None
    metadata: SetMetadata | None = None
    full: bool = False

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    @property
    def set_size(self) -> int:
        return self.images.shape[1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SetBatch:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = value.to(device, non_blocking=non_blocking) if hasattr(value, "to") else value
        return SetBatch(**moved)


def collate_image_sets(samples: list[dict]) -> SetBatch:
    """Stack per-set dicts into a `SetBatch`, padding to the largest set.

    Keys of a sample: ``images`` (n, 3, H, W), ``landmarks`` (n, 68, 2), ``skin`` (n, 1, H, W), ``index``; with
    ground truth ``identity`` (n_id,) and ``vertices`` (V, 3); with metadata ``yaw_deg``, ``occluded`` and
    ``degradation``, each (n,).
    """
    if not samples:
        raise ValueError("cannot collate an empty list of image sets")
    sizes = [len(s["images"]) for s in samples]
    if min(sizes) < 1:
        raise ValueError("an image set has no pictures; every set needs at least one")
    n = max(sizes)

    def pad(key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        first = torch.as_tensor(samples[0][key])
        out = torch.zeros((len(samples), n, *first.shape[1:]), dtype=dtype or first.dtype)
        for b, sample in enumerate(samples):
            value = torch.as_tensor(sample[key])
            out[b, : len(value)] = value.to(out.dtype)
        return out

    valid = torch.zeros(len(samples), n, dtype=torch.bool)
    for b, size in enumerate(sizes):
        valid[b, :size] = True
    ground_truth = metadata = None
    if "identity" in samples[0]:
        ground_truth = SetGroundTruth(
            identity=torch.stack([torch.as_tensor(s["identity"]) for s in samples]),
            vertices=torch.stack([torch.as_tensor(s["vertices"]) for s in samples]),
        )
    if "yaw_deg" in samples[0]:
        metadata = SetMetadata(
            yaw_deg=pad("yaw_deg", torch.float32),
            occluded=pad("occluded", torch.bool),
            degradation=pad("degradation", torch.long),
        )
    return SetBatch(
        images=pad("images", torch.float32),
        landmarks=pad("landmarks", torch.float32),
        skin=pad("skin", torch.float32),
        valid=valid,
        index=torch.tensor([int(s["index"]) for s in samples], dtype=torch.long),
        ground_truth=ground_truth,
        metadata=metadata,
        full=min(sizes) == n,
    )


# ---------------------------------------------------------------------------------------- synthetic sets


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticSetArrays:
    """A generated split of image sets, pictures stored flat (what the cache file holds).

    offsets:      (S + 1,) int64, pictures of set i are rows offsets[i]:offsets[i + 1]
    images:       (M, 3, H, W) uint8 RGB
    skin:         (M, H, W) float16 skin posterior of the final picture
    landmarks:    (M, 68, 2) float32 noisy landmarks, pixels
    coefficients: (M, layout.size) float32 flat coefficients that generated each picture (same identity in a set)
    degradation:  (M,) int8 index into `DEGRADATIONS`
    """

    offsets: np.ndarray
    images: np.ndarray
    skin: np.ndarray
    landmarks: np.ndarray
    coefficients: np.ndarray
    degradation: np.ndarray


@dataclass(frozen=True)
class Degradation:
    """Strengths of the per-picture degradations of synthetic sets.

    blur_sigma_px:    range of the Gaussian blur's sigma, in pixels of a 224 crop
    noise_std:        range of the added Gaussian noise's std (colour values in [0, 1])
    side_light:       strength of the one-sided light: the lateral first-order SH band is set to +- this
                      (the other bands keep their draws)
    side_ambient:     offset added to the ambient band under a side light (negative: the far side goes dark)
    """

    blur_sigma_px: tuple[float, float] = (2.5, 5.0)
    noise_std: tuple[float, float] = (0.08, 0.16)
    side_light: float = 0.6
    side_ambient: float = -0.35


class SyntheticImageSetDataset(CachedGeneration, Dataset):
    """Rendered image sets of random identities with 3D ground truth (see the module docstring).

    Args:
        face_model: the morphable model (the dataset keeps a CPU copy).
        n_sets: number of sets (identities).
        set_size: pictures per set (5 in the paper).
        min_set_size: None for fixed-size sets; else each set's size is drawn uniformly in
            [min_set_size, set_size] (variable set sizes, padded in batches).
        split: "train", "val" or "test"; splits never share an identity.
        seed: base seed; (seed, split, set index) fixes a set.
        image_size: side of the square crops (Deep3D's 224 camera resized).
        max_yaw_deg: yaws are spread over [-max, +max] (stratified, see the module docstring).
        max_pitch_deg, max_roll_deg: pitch and roll are uniform in +- these.
        albedo_jitter: std of the per-picture albedo change on top of the identity's albedo (prior units).
        degrade_probability: chance that a picture gets one degradation, of a kind drawn from ``degradations``.
        degradations: kinds to draw from (subset of `DEGRADATIONS` without "none").
        degradation: strengths of the degradations.
        landmark_noise_px: std of the landmark noise in pixels of this image size.
        pixel_noise_std: sensor noise of every picture.
        prior: spreads of identity, expression, albedo, lighting and translation jitter.
        cache_dir: where to keep generated splits (``.npz`` keyed by every parameter); None = memory only.
        appearance: how pictures look (`datamodules.appearance.AppearanceSettings`, photo-like by default;
            ``look="model"`` for the face model's own SH render). In the photo look a side-light degradation is
            a hard directional light from that side (`datamodules.appearance.side_light`), and
            ``pixel_noise_std`` gives way to the settings' sensor noise.
        render_batch_size, device, backend: rendering settings.

    Generation runs once, on the first `materialise` (called by `__getitem__`); call it in the main process
    before handing the dataset to DataLoader workers.
    """

    array_type = SyntheticSetArrays

    def __init__(
        self,
        face_model: FaceModel,
        n_sets: int,
        set_size: int = 5,
        min_set_size: int | None = None,
        split: str = "train",
        seed: int = 0,
        image_size: int = 224,
        max_yaw_deg: float = 80.0,
        max_pitch_deg: float = 20.0,
        max_roll_deg: float = 10.0,
        albedo_jitter: float = 0.2,
        degrade_probability: float = 0.5,
        degradations: Sequence[str] = ("occluder", "blur", "noise", "side_light"),
        degradation: Degradation = Degradation(),
        landmark_noise_px: float = 2.0,
        pixel_noise_std: float = 0.01,
        prior: CoefficientPrior = CoefficientPrior(),
        cache_dir: str | Path | None = None,
        appearance: AppearanceSettings = AppearanceSettings(),
        render_batch_size: int = 32,
        device: str | torch.device = "cpu",
        backend: str = "auto",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        if n_sets < 0 or seed < 0:
            raise ValueError(f"n_sets and seed must be >= 0, got {n_sets} and {seed}")
        if set_size < 1 or (min_set_size is not None and not 1 <= min_set_size <= set_size):
            raise ValueError(
                f"need 1 <= min_set_size <= set_size, got min_set_size={min_set_size}, set_size={set_size}"
            )
        unknown = [k for k in degradations if k not in DEGRADATIONS[1:]]
        if unknown:
            raise ValueError(f"unknown degradations {unknown}; choose from {DEGRADATIONS[1:]}")
        if not 0.0 <= degrade_probability <= 1.0 or (degrade_probability > 0 and not degradations):
            raise ValueError(
                f"degrade_probability must be in [0, 1] (and needs degradations to draw from), got "
                f"{degrade_probability} with {tuple(degradations)}"
            )
        if image_size < 8 or render_batch_size < 1:
            raise ValueError(
                f"image_size must be >= 8 and render_batch_size >= 1, got {image_size}, {render_batch_size}"
            )
        self.face_model = copy.deepcopy(face_model).cpu()
        self.layout = self.face_model.layout
        self.n_sets = n_sets
        self.set_size = set_size
        self.min_set_size = min_set_size
        self.split = split
        self.seed = seed
        self.image_size = image_size
        self.albedo_jitter = albedo_jitter
        self.degrade_probability = degrade_probability
        self.degradations = tuple(degradations)
        self.degradation = degradation
        self.landmark_noise_px = landmark_noise_px
        self.pixel_noise_std = pixel_noise_std
        self.prior = dataclasses.replace(prior, yaw_deg=max_yaw_deg, pitch_deg=max_pitch_deg, roll_deg=max_roll_deg)
        self.camera = PinholeCamera().resized(image_size, image_size)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.appearance = appearance
        self._scene: HeadScene | None = None
        self.render_batch_size = render_batch_size
        self.device = torch.device(device)
        self.backend = backend
        self._arrays: SyntheticSetArrays | None = None
        self._cache_key: str | None = None
        self.generation_seconds: float | None = None

    # ------------------------------------------------------------------------------------------ cache

    def generation_parameters(self) -> dict:
        """Everything that decides the generated pictures (the cache key hashes it)."""
        return {
            "version": CACHE_VERSION,
            "n_sets": self.n_sets,
            "set_size": self.set_size,
            "min_set_size": self.min_set_size,
            "split": self.split,
            "seed": self.seed,
            "image_size": self.image_size,
            "albedo_jitter": self.albedo_jitter,
            "degrade_probability": self.degrade_probability,
            "degradations": list(self.degradations),
            "degradation": dataclasses.asdict(self.degradation),
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

    def cache_stem(self) -> str:
        size = f"{self.n_sets}x{self.set_size}x{self.image_size}"
        return f"imagesets-{self.face_model.name}-{self.split}-{size}"

    def describe(self) -> str:
        return (
            f"{self.n_sets} synthetic {self.split} image sets of up to {self.set_size} pictures at "
            f"{self.image_size}x{self.image_size}"
        )

    def matches(self, arrays: SyntheticSetArrays) -> bool:
        return len(arrays.offsets) == self.n_sets + 1

    # ------------------------------------------------------------------------------------- generation

    def set_plan(self, set_index: int) -> dict:
        """The set-level draws of one set: ``identity`` (n_id,), ``albedo`` (n_tex,), ``yaw_deg`` (n,)."""
        rng = set_rng(self.seed, self.split, set_index, "identity")
        identity = rng.standard_normal(self.layout.n_id) * self.prior.identity_std
        albedo = rng.standard_normal(self.layout.n_tex) * self.prior.albedo_std
        # Drawn whatever min_set_size is, so that the later draws do not depend on it.
        size_draw = rng.random()
        size = (
            self.set_size
            if self.min_set_size is None
            else self.min_set_size + int(size_draw * (self.set_size - self.min_set_size + 1))
        )
        # Stratified yaws: one picture per equal bin of [-max, max], in random order.
        bins = rng.permutation(size)
        yaw = (-1.0 + 2.0 * (bins + rng.random(size)) / size) * self.prior.yaw_deg
        return {"identity": identity, "albedo": albedo, "yaw_deg": yaw}

    def picture_draws(self, set_index: int, image: int, plan: dict) -> tuple[Coefficients, int]:
        """Coefficients (batch of 1, translation = jitter only) and degradation index of one picture."""
        rng = set_rng(self.seed, self.split, set_index, "coefficients", image)
        layout, prior, deg = self.layout, self.prior, math.pi / 180.0
        expression = rng.standard_normal(layout.n_exp) * prior.expression_std
        albedo = plan["albedo"] + rng.standard_normal(layout.n_tex) * self.albedo_jitter
        pitch, roll = rng.uniform(-1.0, 1.0, 2) * (prior.pitch_deg, prior.roll_deg)
        angles = np.array([pitch, plan["yaw_deg"][image], roll]) * deg
        generator = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
        lighting = sample_lighting(1, layout.sh_channels, prior, generator)
        translation = rng.standard_normal(3) * prior.translation_std

        decision = set_rng(self.seed, self.split, set_index, "degradation", image)
        kind = 0
        # All draws happen whatever the probability, so the stream does not depend on it.
        degrade, choice, side = decision.random(), int(decision.integers(1 << 30)), decision.choice([-1.0, 1.0])
        if degrade < self.degrade_probability:
            kind = DEGRADATIONS.index(self.degradations[choice % len(self.degradations)])
        if DEGRADATIONS[kind] == "side_light":
            lighting = side_lit(
                lighting, side * self.degradation.side_light, self.degradation.side_ambient, layout.sh_channels
            )
        as_row = lambda values: torch.as_tensor(np.asarray(values), dtype=torch.float32).reshape(1, -1)  # noqa: E731
        coeffs = Coefficients(
            identity=as_row(plan["identity"]),
            expression=as_row(expression),
            albedo=as_row(albedo),
            angles=as_row(angles),
            lighting=lighting.float(),
            translation=as_row(translation),
        )
        return coeffs, kind

    def generate(self) -> SyntheticSetArrays:
        jobs, sizes = [], []
        for i in range(self.n_sets):
            plan = self.set_plan(i)
            sizes.append(len(plan["yaw_deg"]))
            jobs += [(i, j, *self.picture_draws(i, j, plan)) for j in range(len(plan["yaw_deg"]))]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        model = self.face_model if self.device.type == "cpu" else copy.deepcopy(self.face_model).to(self.device)
        renderer = MeshRenderer(model, self.camera, backend=self.backend)
        template = template_from_face_model(model, self.camera)
        parts = [
            self._generate_batch(renderer, template, jobs[start : start + self.render_batch_size])
            for start in range(0, len(jobs), self.render_batch_size)
        ]
        size = self.image_size
        if not parts:
            return SyntheticSetArrays(
                offsets,
                np.zeros((0, 3, size, size), np.uint8),
                np.zeros((0, size, size), np.float16),
                np.zeros((0, 68, 2), np.float32),
                np.zeros((0, self.layout.size), np.float32),
                np.zeros((0,), np.int8),
            )
        return SyntheticSetArrays(offsets, *(np.concatenate([p[k] for p in parts]) for k in range(5)))

    @property
    def scene(self) -> HeadScene:
        """What the photo look renders (built on first use, shared by datasets of the same face model)."""
        if self._scene is None:
            self._scene = shared_head_scene(self.face_model, self.appearance.full_head).to(self.device)
        return self._scene

    def _render(
        self, renderer: MeshRenderer, coeffs: Coefficients, cameras: list[PinholeCamera], jobs: list
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(B, 3, H, W) render in [0, 1], (B, 1, H, W) mask and (B, 68, 2) clean landmarks, in the chosen look."""
        if self.appearance.look == "model":
            with torch.no_grad():
                out = renderer(coeffs)
            return out.image.clamp(0.0, 1.0).float().cpu(), out.mask.float().cpu(), out.landmarks.float().cpu().numpy()
        settings = self.appearance
        looks: dict[int, object] = {}
        lights = []
        for k, (i, j, _, kind) in enumerate(jobs):
            if i not in looks:
                looks[i] = sample_identity_look(set_rng(self.seed, self.split, i, "look"), settings)
            light = sample_picture_light(set_rng(self.seed, self.split, i, "light", j), settings)
            if DEGRADATIONS[kind] == "side_light":
                # side_lit set the x band to +-strength; a positive x band brightens the -x side.
                band = float(coeffs.lighting[k].reshape(-1, SH_BANDS)[0, 3])
                light = side_light(light, -1.0 if band > 0 else 1.0)
            lights.append(light)
        image, mask = render_photo(
            self.scene,
            renderer.face_model,
            coeffs,
            [looks[job[0]] for job in jobs],
            lights,
            cameras,
            settings,
            self.backend,
        )
        return image, mask, project_landmarks(renderer, coeffs, cameras)

    def _generate_batch(self, renderer: MeshRenderer, template: np.ndarray, jobs: list) -> tuple:
        size = self.image_size
        focal = [
            1.0
            if self.appearance.look == "model"
            else sample_focal_scale(set_rng(self.seed, self.split, i, "camera", j), self.appearance)
            for i, j, _, _ in jobs
        ]
        drawn = Coefficients.cat([job[2] for job in jobs]).to(self.device)
        shown, coeffs, cameras = place_faces(renderer.face_model, drawn, self.camera, template, focal)
        render, mask, clean = self._render(renderer, shown, cameras, jobs)
        style = "procedural" if self.appearance.look == "model" else self.appearance.background
        backgrounds = np.stack(
            [
                draw_background(set_rng(self.seed, self.split, i, "background", j), size, size, style)
                for i, j, _, _ in jobs
            ]
        )
        images = soft_composite(render, mask, torch.from_numpy(backgrounds).permute(0, 3, 1, 2))
        images = images.permute(0, 2, 3, 1).numpy().copy()
        noisy = np.empty_like(clean)
        kinds = np.array([job[3] for job in jobs], np.int8)
        images_u8 = np.empty((len(jobs), size, size, 3), np.uint8)
        for k, (i, j, _, kind) in enumerate(jobs):
            damage = set_rng(self.seed, self.split, i, "damage", j)
            images[k] = self._degrade(images[k], clean[k], DEGRADATIONS[kind], damage)
            if self.appearance.look == "model":
                pixels = set_rng(self.seed, self.split, i, "pixels", j)
                images[k] = images[k] + pixels.normal(0.0, self.pixel_noise_std, images[k].shape).astype(np.float32)
                images_u8[k] = np.clip(np.rint(images[k] * 255.0), 0, 255).astype(np.uint8)
            else:
                images_u8[k] = degrade_picture(
                    np.clip(images[k], 0.0, 1.0), set_rng(self.seed, self.split, i, "sensor", j), self.appearance
                )
            noisy[k] = clean[k] + set_rng(self.seed, self.split, i, "landmarks", j).normal(
                0.0, self.landmark_noise_px, clean[k].shape
            )
        images_u8 = images_u8.transpose(0, 3, 1, 2)
        with torch.no_grad():
            skin = skin_posterior_torch(torch.from_numpy(images_u8))
        return (
            np.ascontiguousarray(images_u8),
            skin.numpy().astype(np.float16),
            noisy.astype(np.float32),
            self.layout.join(coeffs).float().cpu().numpy(),
            kinds,
        )

    def _degrade(self, image: np.ndarray, landmarks: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
        """Apply a picture-level degradation to an (H, W, 3) float32 image; side light is in the coefficients."""
        scale = self.image_size / 224.0
        if kind == "occluder":
            return draw_occluder(image, landmarks, rng)[0]
        if kind == "blur":
            sigma = rng.uniform(*self.degradation.blur_sigma_px) * scale
            return cv2.GaussianBlur(image, (0, 0), sigma)
        if kind == "noise":
            return image + rng.normal(0.0, rng.uniform(*self.degradation.noise_std), image.shape).astype(np.float32)
        return image

    # ------------------------------------------------------------------------------------------ access

    def __len__(self) -> int:
        return self.n_sets

    def identity_vertices(self, identity: torch.Tensor) -> torch.Tensor:
        """(B, n_id) identity coefficients -> (B, V, 3) neutral shapes, on the CPU."""
        zeros = self.layout.zeros(identity.shape[0])
        with torch.no_grad():
            return self.face_model.shape(zeros.replace(identity=identity.float()))

    def __getitem__(self, index: int) -> dict:
        arrays = self.arrays
        if not -self.n_sets <= index < self.n_sets:
            raise IndexError(f"set {index} out of range for {self.n_sets} sets")
        index %= self.n_sets
        rows = slice(int(arrays.offsets[index]), int(arrays.offsets[index + 1]))
        coefficients = torch.from_numpy(arrays.coefficients[rows])
        coeffs = self.layout.split(coefficients)
        degradation = torch.from_numpy(arrays.degradation[rows].astype(np.int64))
        return {
            "images": torch.from_numpy(arrays.images[rows]).float().div_(255.0),
            "landmarks": torch.from_numpy(arrays.landmarks[rows]),
            "skin": torch.from_numpy(arrays.skin[rows].astype(np.float32)).unsqueeze(1),
            "index": index,
            "identity": coeffs.identity[0],
            "vertices": self.identity_vertices(coeffs.identity[:1])[0],
            "yaw_deg": torch.rad2deg(coeffs.angles[:, 1]),
            "occluded": degradation == DEGRADATIONS.index("occluder"),
            "degradation": degradation,
        }


def side_lit(lighting: torch.Tensor, strength: float, ambient_offset: float, sh_channels: int) -> torch.Tensor:
    """(1, 9 * sh_channels) SH offsets -> the same light with a strong lateral component: the x-direction
    first-order band (index 3 in Deep3D's order) set to ``strength`` and ``ambient_offset`` added to the
    ambient band, in every colour channel, so one side of the face is bright and the other dark."""
    out = lighting.clone().reshape(1, sh_channels, SH_BANDS)
    out[:, :, 3] = strength
    out[:, :, 0] = out[:, :, 0] + ambient_offset
    return out.reshape(1, sh_channels * SH_BANDS)


# ----------------------------------------------------------------------------------------- prepared sets


def identity_of(source: str) -> str | None:
    """The identity of a prepared photo: the folder of its source path (None for photos in the root)."""
    parent = PurePosixPath(source).parent
    return None if str(parent) in ("", ".") else str(parent)


def group_by_identity(records: Sequence[PreparedRecord], min_images: int = 1) -> dict[str, list[PreparedRecord]]:
    """Prepared records grouped by `identity_of` their source, identities with fewer than ``min_images`` photos
    dropped, sorted by name. Raises ValueError when no identity is left, naming the layout it expects."""
    groups: dict[str, list[PreparedRecord]] = {}
    loose = 0
    for record in records:
        name = identity_of(record.source)
        if name is None:
            loose += 1
            continue
        groups.setdefault(name, []).append(record)
    kept = {
        name: sorted(group, key=lambda r: r.source)
        for name, group in sorted(groups.items())
        if len(group) >= min_images
    }
    if not kept:
        raise InvalidInputError(
            f"no identity with at least {min_images} photos among {len(records)} prepared photos ({loose} lie in "
            "the root folder and have no identity). Image sets need one folder per person: prepare "
            "`people/<name>/*.jpg` with `face3d prepare --images people --out DIR`."
        )
    return kept


def split_identities(
    groups: Mapping[str, Sequence[PreparedRecord]],
    val_fraction: float,
) -> tuple[dict[str, list[PreparedRecord]], dict[str, list[PreparedRecord]]]:
    """(train, val) by a hash of the identity's name, so a person is never in both and the split is stable."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train = {k: list(v) for k, v in groups.items() if not is_validation(k, val_fraction)}
    val = {k: list(v) for k, v in groups.items() if is_validation(k, val_fraction)}
    return train, val


class PreparedImageSetDataset(Dataset):
    """Sets of real photos of one identity each (see the module docstring; no ground truth).

    Args:
        groups: identity name -> its prepared records (`group_by_identity`, `split_identities`).
        set_size: pictures per set; identities with fewer photos give all of theirs.
        image_size: side to resize crops to; None keeps prepare's size.
        sets_per_identity: sets served per identity and epoch (an epoch has len(groups) x this sets).
        random_sets: draw each set's pictures at random on every access (training, using torch's global
            generator, which DataLoader seeds per worker); False picks a fixed subset per (identity, k)
            from ``seed`` (validation, analysis).
        seed: seeds the fixed subsets.
    """

    def __init__(
        self,
        groups: Mapping[str, Sequence[PreparedRecord]],
        set_size: int = 5,
        image_size: int | None = 224,
        sets_per_identity: int = 1,
        random_sets: bool = True,
        seed: int = 0,
    ) -> None:
        if set_size < 1 or sets_per_identity < 1:
            raise ValueError(f"set_size and sets_per_identity must be >= 1, got {set_size}, {sets_per_identity}")
        self.names = sorted(groups)
        self.groups = {name: list(groups[name]) for name in self.names}
        self.set_size = set_size
        self.image_size = image_size
        self.sets_per_identity = sets_per_identity
        self.random_sets = random_sets
        self.seed = seed

    def __len__(self) -> int:
        return len(self.names) * self.sets_per_identity

    def choose(self, index: int) -> list[PreparedRecord]:
        """The records of set ``index``."""
        name = self.names[index // self.sets_per_identity]
        records = self.groups[name]
        n = min(self.set_size, len(records))
        if self.random_sets:
            picks = torch.randperm(len(records))[:n].tolist()
        else:
            key = int.from_bytes(
                hashlib.sha256(f"{name}/{index % self.sets_per_identity}".encode()).digest()[:8], "big"
            )
            picks = np.random.default_rng([self.seed, key]).permutation(len(records))[:n].tolist()
        return [records[k] for k in sorted(picks)]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"set {index} out of range for {len(self)} sets")
        crops, landmarks, skins = zip(*(load_prepared_sample(r, self.image_size) for r in self.choose(index)))
        images = torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy()).float().div_(255.0)
        return {
            "images": images,
            "landmarks": torch.from_numpy(np.stack(landmarks)),
            "skin": torch.from_numpy(np.stack(skins)).unsqueeze(1),
            "index": index,
        }


# ------------------------------------------------------------------------------------------- datamodule


class ImageSetDataModule(pl.LightningDataModule):
    """Loaders of `SetBatch` over given datasets (built in `experiments.build`).

    Args:
        datasets: split name ("train", "val", "test") -> a dataset of set dicts (`collate_image_sets`).
        batch_size: sets per batch.
        num_workers: DataLoader workers.
        seed: seeds the training shuffle.

    Synthetic datasets are generated (or read from their cache) in `setup`, in the main process.
    """

    def __init__(
        self, datasets: Mapping[str, Dataset], batch_size: int = 4, num_workers: int = 0, seed: int = 0
    ) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        unknown = set(datasets) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown splits {sorted(unknown)}; use {SPLITS}")
        self.datasets = dict(datasets)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage, SPLITS) if stage is not None else SPLITS:
            dataset = self.datasets.get(split)
            if hasattr(dataset, "materialise"):
                dataset.materialise()

    def dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            raise ValueError(f"this data module has no {split!r} split (it has {sorted(self.datasets)})")
        return self.datasets[split]

    def loader(self, split: str, shuffle: bool = False) -> DataLoader:
        dataset = self.dataset(split)
        if hasattr(dataset, "materialise"):
            # Generating inside workers would repeat the work in each of them.
            dataset.materialise()
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            # A last batch of a single set (a few pictures) makes noisy batch-norm statistics in C-Net.
            drop_last=shuffle and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_image_sets,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
