"""The synthetic 20-pose protocol of ``face3d benchmark`` (after the rendered-MICC test of Deng et al. 2019, Fig. 6).

N held-out synthetic identities, each rendered at every pose of a grid of 4 pitches x 5 yaws:

* yaws -80, -40, 0, 40, 80 degrees (the paper's Fig. 6 range, profile to profile);
* pitches -15, -5, 5, 15 degrees: inside the training prior's +-25 degrees of the embedded default, two
  looking down and two up, none exactly frontal so every picture has some pitch;
* roll 0, so the grid is exactly the stated pitch x yaw.

Pictures are ordered identity-major, then pitch, then yaw (picture ``j`` of an identity has pitch
``PITCHES_DEG[j // 5]`` and yaw ``YAWS_DEG[j % 5]``). Every picture has its own random expression, SH lighting
and albedo (albedo drawn from the full prior per picture, not one albedo per identity), background, sensor
noise and landmark noise; no occluders or other degradations.

Two looks of the same grid (`POSE_GRID_LOOKS`; same identities, poses and expressions):

* ``"matched"`` (the default): the face model's own render of its region, SH light and its albedo prior, i.e.
  exactly the appearance a fit or R-Net's photometric loss assumes;
* ``"appearance_gap"``: `datamodules.appearance.APPEARANCE_GAP`, what they do not assume: the whole head with
  eyes, ears, neck and hair, uniform skin of any tone without the prior's lips and brows, directional and
  coloured lights (not SH) with cast shadows and clamped Lambert shading, indoor backgrounds. The difference
  between the two rows of a method is what the appearance model costs it.

The ground truth is the identity's NEUTRAL shape (mean + identity, zero expression, before pose), and every
method is scored on the neutral shape of its identity estimate: `metrics.vertex_error` with "rigid"
alignment, in mm -- the metric of the training logs, restricted to identity.

Rendering is the synthetic data's (`datamodules.image_sets.SyntheticImageSetDataset`, which renders, aligns and
labels exactly as `datamodules.synthetic` does): `PoseGridDataset` only replaces its set plan (which identity,
which poses) and each picture's angles.

Seed stream: the identities are those of the image-set generator's ``test`` split with base seed
``BENCHMARK_SEED_BASE + seed``. No training split draws from ``test`` streams (R-Net's single-image data uses
other spawn keys altogether, C-Net trains on ``train`` and selects on ``val``), so the benchmark faces are
disjoint from any training data whatever the training seeds; the seed offset also keeps them apart from the
sets ``face3d train-aggregate`` evaluates on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from datamodules.appearance import APPEARANCE_GAP, AppearanceSettings
from datamodules.image_sets import ImageSetSettings, SyntheticImageSetDataset
from face_model.coefficients import Coefficients
from face_model.model import FaceModel
from face_model.sampling import CoefficientPrior

YAWS_DEG = (-80.0, -40.0, 0.0, 40.0, 80.0)
PITCHES_DEG = (-15.0, -5.0, 5.0, 15.0)
POSE_GRID_LOOKS = {"matched": AppearanceSettings(look="model"), "appearance_gap": APPEARANCE_GAP}
"""The looks the grid is rendered in (see the module docstring), by the name reports use."""
BENCHMARK_SEED_BASE = 2019_0603
"""Added to the benchmark's ``--seed`` to form the generator's base seed (see the module docstring)."""


def pose_grid(
    pitches_deg: Sequence[float] = PITCHES_DEG, yaws_deg: Sequence[float] = YAWS_DEG
) -> tuple[np.ndarray, np.ndarray]:
    """(pitch, yaw) in degrees of each picture of one identity, pitch-major: two (P * Y,) arrays."""
    pitch, yaw = np.meshgrid(np.asarray(pitches_deg, float), np.asarray(yaws_deg, float), indexing="ij")
    return pitch.ravel(), yaw.ravel()


def fit_subset(
    n_identities: int, count: int, pitches_deg: Sequence[float] = PITCHES_DEG, yaws_deg: Sequence[float] = YAWS_DEG
) -> list[tuple[int, int]]:
    """The (identity, picture) pairs fitted by analysis-by-synthesis: the first ``count`` of all pictures
    taken pitch row by pitch row, rows closest to 0 degrees first (ties: the lower pitch), and within a row
    identity by identity, every yaw of an identity in turn. So 5 pictures are identity 0's five yaws at the
    pitch nearest frontal, 10 add identity 1's, and so on."""
    rows = sorted(range(len(pitches_deg)), key=lambda p: (abs(pitches_deg[p]), pitches_deg[p]))
    order = [(i, p * len(yaws_deg) + y) for p in rows for i in range(n_identities) for y in range(len(yaws_deg))]
    return order[: max(count, 0)]


class PoseGridDataset(SyntheticImageSetDataset):
    """One set per identity holding its pictures at every pose of the grid (see the module docstring).

    Args:
        face_model: the checkpoint's face model (a CPU copy is kept).
        n_identities: number of identities (sets).
        seed: the benchmark seed; the generator's base seed is ``BENCHMARK_SEED_BASE + seed``.
        image_size: the checkpoint's crop side.
        pitches_deg, yaws_deg: the grid.
        landmark_noise_px: detector-like noise on the landmarks (used by fitting, not by R-Net).
        prior: spreads of identity, expression, albedo, lighting and translation jitter (angles come from the grid).
        look: a name of `POSE_GRID_LOOKS` ("matched" or "appearance_gap"), or any `AppearanceSettings`.
        render_batch_size, device, backend: rendering settings.
    """

    def __init__(
        self,
        face_model: FaceModel,
        n_identities: int,
        seed: int = 0,
        image_size: int = 224,
        pitches_deg: Sequence[float] = PITCHES_DEG,
        yaws_deg: Sequence[float] = YAWS_DEG,
        landmark_noise_px: float = 1.5,
        prior: CoefficientPrior = CoefficientPrior(),
        look: str | AppearanceSettings = "matched",
        render_batch_size: int = 32,
        device: str | torch.device = "cpu",
        backend: str = "auto",
    ) -> None:
        if isinstance(look, str):
            if look not in POSE_GRID_LOOKS:
                raise ValueError(
                    f"unknown pose-grid look {look!r}; choose one of {sorted(POSE_GRID_LOOKS)} or pass "
                    "AppearanceSettings"
                )
            self.look_name, appearance = look, POSE_GRID_LOOKS[look]
        else:
            self.look_name, appearance = "custom", look
        if n_identities < 1:
            raise ValueError(f"the pose-grid protocol needs at least one identity, got {n_identities}")
        if not pitches_deg or not yaws_deg:
            raise ValueError("the pose grid needs at least one pitch and one yaw")
        self.pitches_deg = tuple(float(p) for p in pitches_deg)
        self.yaws_deg = tuple(float(y) for y in yaws_deg)
        settings = ImageSetSettings(
            n_test=n_identities,
            set_size=len(self.pitches_deg) * len(self.yaws_deg),
            seed=BENCHMARK_SEED_BASE + seed,
            max_yaw_deg=max(abs(y) for y in self.yaws_deg),
            max_pitch_deg=max(abs(p) for p in self.pitches_deg),
            max_roll_deg=0.0,
            # The plan's albedo is zero, so each picture's albedo is a full draw from the prior.
            albedo_jitter=prior.albedo_std,
            degrade_probability=0.0,
            degradations=(),
            landmark_noise_px=landmark_noise_px,
            appearance=appearance,
            render_batch_size=render_batch_size,
        )
        super().__init__(
            face_model,
            settings,
            "test",
            image_size=image_size,
            cache_dir=None,
            prior=prior,
            device=device,
            backend=backend,
        )

    def generation_parameters(self) -> dict:
        return {
            **super().generation_parameters(),
            "pitches_deg": list(self.pitches_deg),
            "yaws_deg": list(self.yaws_deg),
        }

    def set_plan(self, set_index: int) -> dict:
        plan = super().set_plan(set_index)
        _, yaw = pose_grid(self.pitches_deg, self.yaws_deg)
        return {**plan, "albedo": np.zeros_like(plan["albedo"]), "yaw_deg": yaw}

    def picture_draws(self, set_index: int, image: int, plan: dict) -> tuple[Coefficients, int]:
        coeffs, kind = super().picture_draws(set_index, image, plan)
        pitch, yaw = pose_grid(self.pitches_deg, self.yaws_deg)
        angles = torch.tensor([[pitch[image], yaw[image], 0.0]], dtype=torch.float32) * (math.pi / 180.0)
        return coeffs.replace(angles=angles), kind

    def describe(self) -> dict:
        """The protocol's parameters, for the report."""
        return {
            "identities": self.n_sets,
            "pictures_per_identity": self.set_size,
            "pitches_deg": list(self.pitches_deg),
            "yaws_deg": list(self.yaws_deg),
            "roll_deg": 0.0,
            "image_size": self.image_size,
            "split": self.split,
            "generator_seed": self.seed,
            "landmark_noise_px": self.landmark_noise_px,
            "prior": dataclasses.asdict(self.prior),
            "look": self.look_name,
            "appearance": self.appearance.as_dict(),
        }
