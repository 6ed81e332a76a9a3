"""Synthetic image sets for C-Net (Deng et al. 2019 §5): rendered pictures of one random identity per set.

Each set has one random identity (shape and albedo); each picture of it has its own expression, pose, lighting
and a small albedo change on top of the identity's albedo, and some pictures are degraded (an occluder, blur,
sensor noise, or a strong light from one side) so that image quality varies inside a set, which is what C-Net
learns to see. Yaws are spread over the whole range: the range is cut into as many equal bins as the set has
pictures and each picture takes a random yaw in its own bin, so every set mixes frontal and profile views.
Rendering, alignment, backgrounds, occluders and labels are those of the single-image synthetic data
(`datamodules.synthetic`), so is the look (`datamodules.appearance`; in the photo look an identity keeps its skin,
hair and beard in every picture and each picture has its own light and sensor), and so is the determinism: the
draws of set ``i`` of split ``s`` with base seed ``k`` depend only on ``(k, s, i)`` and the generation
parameters, splits never share an identity, and generated splits are cached on disk.

What is generated is set by `datamodules.image_sets.ImageSetSettings`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from datamodules.appearance import (
    degrade_picture,
    render_photo,
    sample_focal_scale,
    sample_identity_look,
    sample_picture_light,
    side_light,
)
from datamodules.backgrounds import draw_background, draw_occluder
from datamodules.loaders import SPLITS
from datamodules.synthetic import RenderedFaceDataset, place_faces, project_landmarks, soft_composite
from face_model.coefficients import SH_BANDS, Coefficients
from face_model.sampling import sample_lighting
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


class SyntheticImageSetDataset(RenderedFaceDataset):
    """Rendered image sets of random identities with 3D ground truth (see the module docstring).

    Args:
        face_model: the morphable model (the dataset keeps a CPU copy).
        settings: what to generate (`datamodules.image_sets.ImageSetSettings`); the split's number of sets is
            ``settings.size(split)``.
        split: "train", "val" or "test"; splits never share an identity.
        image_size: side of the square crops (Deep3D's 224 camera resized).
        cache_dir: where to keep generated splits (``.npz`` keyed by every parameter); None = memory only.
        prior: spreads of identity, expression, albedo, lighting and translation jitter (its angle ranges are
            replaced by the settings' ``max_*_deg``).
        device, backend: where and with which rasterizer to render.

    Generation runs once, on the first `materialise` (called by `__getitem__`); call it in the main process
    before handing the dataset to DataLoader workers.
    """

    array_type = SyntheticSetArrays
    cache_version = CACHE_VERSION

    @property
    def n_sets(self) -> int:
        return self.settings.size(self.split)

    @property
    def set_size(self) -> int:
        return self.settings.set_size

    # ------------------------------------------------------------------------------------------ cache

    def generation_parameters(self) -> dict:
        settings = self.settings
        return {
            **super().generation_parameters(),
            "n_sets": self.n_sets,
            "set_size": self.set_size,
            "min_set_size": settings.min_set_size,
            "albedo_jitter": settings.albedo_jitter,
            "degrade_probability": settings.degrade_probability,
            "degradations": list(settings.degradations),
            "degradation": dataclasses.asdict(settings.degradation),
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
            if self.settings.min_set_size is None
            else self.settings.min_set_size + int(size_draw * (self.set_size - self.settings.min_set_size + 1))
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
        albedo = plan["albedo"] + rng.standard_normal(layout.n_tex) * self.settings.albedo_jitter
        pitch, roll = rng.uniform(-1.0, 1.0, 2) * (prior.pitch_deg, prior.roll_deg)
        angles = np.array([pitch, plan["yaw_deg"][image], roll]) * deg
        generator = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
        lighting = sample_lighting(1, layout.sh_channels, prior, generator)
        translation = rng.standard_normal(3) * prior.translation_std

        decision = set_rng(self.seed, self.split, set_index, "degradation", image)
        kind = 0
        # All draws happen whatever the probability, so the stream does not depend on it.
        degrade, choice, side = decision.random(), int(decision.integers(1 << 30)), decision.choice([-1.0, 1.0])
        if degrade < self.settings.degrade_probability:
            kind = DEGRADATIONS.index(self.settings.degradations[choice % len(self.settings.degradations)])
        if DEGRADATIONS[kind] == "side_light":
            lighting = side_lit(
                lighting,
                side * self.settings.degradation.side_light,
                self.settings.degradation.side_ambient,
                layout.sh_channels,
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
        renderer, template = self.renderer_and_template()
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

    def _render(
        self, renderer: MeshRenderer, coeffs: Coefficients, cameras: list[PinholeCamera], jobs: list
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(B, 3, H, W) render in [0, 1], (B, 1, H, W) mask and (B, 68, 2) clean landmarks, in the chosen look."""
        if self.appearance.look == "model":
            return self.render_model_look(renderer, coeffs)
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
        style = self.background_style()
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
            sigma = rng.uniform(*self.settings.degradation.blur_sigma_px) * scale
            return cv2.GaussianBlur(image, (0, 0), sigma)
        if kind == "noise":
            return image + rng.normal(0.0, rng.uniform(*self.settings.degradation.noise_std), image.shape).astype(
                np.float32
            )
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
