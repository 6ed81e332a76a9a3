"""Deep3D-style training augmentation as pure functions on (image, landmarks, skin).

One random similarity transform per sample (shift, scale and rotation about the image centre, optionally
preceded by a horizontal flip) is applied to the image and the skin map with a single bilinear warp and
to the landmarks with the same matrix, so the weak labels stay on the pixels they describe. A flip also
re-orders the 68 landmarks, because the subject's left eye becomes the right one in the picture.

Coordinates follow `renderers.camera`: x right, y down, pixel ``(row i, col j)`` centred at
``(j + 0.5, i + 0.5)``, so an (H, W) image spans [0, W] x [0, H]. Matrices are (2, 3) float64, mapping
input pixel coordinates to output ones: ``q = A[:, :2] @ p + A[:, 2]``. Pixels that come from outside the
input are 0 (black image, no skin), as in the aligned crops of `preprocessing.align`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

# The iBUG 68-point mirror permutation: position i of a flipped face holds old landmark FLIP_PERMUTATION_68[i].
# Jaw 0..16 reverses; brows 17..21 <-> 26..22; the nose bridge 27..30 and the centre points 33, 51, 57, 62, 66
# map to themselves; nostrils 31..35 reverse; eyes swap with their corners mirrored (36 <-> 45: outer
# corners); the outer and inner lips reverse about the vertical axis.
FLIP_PERMUTATION_68: tuple[int, ...] = (
    16,
    15,
    14,
    13,
    12,
    11,
    10,
    9,
    8,
    7,
    6,
    5,
    4,
    3,
    2,
    1,
    0,  # jaw
    26,
    25,
    24,
    23,
    22,
    21,
    20,
    19,
    18,
    17,  # brows
    27,
    28,
    29,
    30,  # nose bridge
    35,
    34,
    33,
    32,
    31,  # nostrils
    45,
    44,
    43,
    42,
    47,
    46,  # right eye (image left) <- left eye
    39,
    38,
    37,
    36,
    41,
    40,  # left eye <- right eye
    54,
    53,
    52,
    51,
    50,
    49,
    48,  # outer lip, top
    59,
    58,
    57,
    56,
    55,  # outer lip, bottom
    64,
    63,
    62,
    61,
    60,  # inner lip, top
    67,
    66,
    65,  # inner lip, bottom
)


@dataclass(frozen=True)
class Augmentation:
    """One sample's random transform.

    matrix:  (2, 3) float64 input pixels -> output pixels (the flip, when there is one, included)
    flipped: whether the transform mirrors the image, so the landmarks must be re-ordered
    """

    matrix: torch.Tensor
    flipped: bool


def similarity_matrix(
    height: int,
    width: int,
    shift: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    rotation_deg: float = 0.0,
    flip: bool = False,
) -> torch.Tensor:
    """(2, 3) float64 transform: optional mirror about the vertical centre line, then rotation and scale
    about the image centre, then ``shift`` pixels (x, y). Positive rotations turn the picture
    counter-clockwise as seen on screen."""
    centre = torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64)
    angle = math.radians(rotation_deg)
    cos, sin = math.cos(angle), math.sin(angle)
    # With y pointing down, a counter-clockwise turn on screen is [[cos, sin], [-sin, cos]].
    linear = scale * torch.tensor([[cos, sin], [-sin, cos]], dtype=torch.float64)
    if flip:
        linear = linear @ torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    offset = centre + torch.tensor(shift, dtype=torch.float64) - linear @ centre
    return torch.cat([linear, offset[:, None]], dim=1)


REFERENCE_CROP_SIZE = 224
"""Crop side that `AugmentSettings.max_shift_px` is given for (Deep3D's)."""


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges of the random transform (Deep3D's at 224x224).

    max_shift_px:     shift uniform in +- this per axis, in pixels of a `REFERENCE_CROP_SIZE` crop (`for_width`
                      scales it to another crop)
    max_scale:        scale uniform in 1 +- this, in [0, 1)
    max_rotation_deg: rotation uniform in +- this
    flip_probability: chance of a horizontal flip, in [0, 1]
    """

    max_shift_px: float = 10.0
    max_scale: float = 0.1
    max_rotation_deg: float = 10.0
    flip_probability: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"flip_probability must be in [0, 1], got {self.flip_probability}")
        if not 0.0 <= self.max_scale < 1.0:
            raise ValueError(f"max_scale must be in [0, 1), got {self.max_scale}")

    def for_width(self, width: int) -> AugmentSettings:
        """The same ranges for a crop ``width`` pixels wide (the shift scales with the crop)."""
        return replace(self, max_shift_px=self.max_shift_px * width / REFERENCE_CROP_SIZE)


def sample_augmentation(
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    settings: AugmentSettings = AugmentSettings(),
) -> Augmentation:
    """Draw a transform within ``settings``' ranges; its shift is taken as pixels of the image being augmented
    (see `AugmentSettings.for_width`). ``generator`` None uses torch's global generator, which DataLoader seeds
    differently in every worker."""
    u = torch.rand(5, generator=generator, dtype=torch.float64) * 2.0 - 1.0
    flip = bool(torch.rand(1, generator=generator).item() < settings.flip_probability)
    return Augmentation(
        matrix=similarity_matrix(
            height,
            width,
            shift=(float(u[0]) * settings.max_shift_px, float(u[1]) * settings.max_shift_px),
            scale=1.0 + float(u[2]) * settings.max_scale,
            rotation_deg=float(u[3]) * settings.max_rotation_deg,
            flip=flip,
        ),
        flipped=flip,
    )


def warp_images(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Resample (C, H, W) or (B, C, H, W) float images through (2, 3) or (B, 2, 3) input->output matrices,
    bilinearly, onto the same size; samples from outside the input are 0."""
    single = images.ndim == 3
    batch = images.unsqueeze(0) if single else images
    matrices = matrix.unsqueeze(0) if matrix.ndim == 2 else matrix
    if batch.ndim != 4 or matrices.shape[1:] != (2, 3) or matrices.shape[0] not in (1, batch.shape[0]):
        raise ValueError(
            f"expected (C, H, W) / (B, C, H, W) images with (2, 3) / (B, 2, 3) matrices, got "
            f"{tuple(images.shape)} and {tuple(matrix.shape)}"
        )
    height, width = batch.shape[-2:]
    matrices = matrices.to(device=batch.device, dtype=torch.float64).expand(batch.shape[0], 2, 3)
    # Each output pixel centre q reads the input at p = L^-1 (q - b).
    inverse = torch.linalg.inv(matrices[:, :, :2])
    ys = torch.arange(height, device=batch.device, dtype=torch.float64) + 0.5
    xs = torch.arange(width, device=batch.device, dtype=torch.float64) + 0.5
    q = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2)
    p = torch.einsum("bij,bhwj->bhwi", inverse, q.unsqueeze(0) - matrices[:, None, None, :, 2])
    # With align_corners=False, -1 and +1 are the outer edges of the border pixels: u = 2 x / W - 1.
    grid = torch.stack([2.0 * p[..., 0] / width - 1.0, 2.0 * p[..., 1] / height - 1.0], dim=-1)
    out = F.grid_sample(batch, grid.to(batch.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.squeeze(0) if single else out


def transform_landmarks(landmarks: torch.Tensor, augmentation: Augmentation) -> torch.Tensor:
    """(..., 68, 2) pixel landmarks -> the same points on the augmented image, re-ordered after a flip."""
    matrix = augmentation.matrix.to(device=landmarks.device, dtype=torch.float64)
    moved = landmarks.to(torch.float64) @ matrix[:, :2].T + matrix[:, 2]
    if augmentation.flipped:
        moved = moved[..., list(FLIP_PERMUTATION_68), :]
    return moved.to(landmarks.dtype)


def apply_augmentation(
    image: torch.Tensor, landmarks: torch.Tensor, skin: torch.Tensor, augmentation: Augmentation
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply one transform to a sample: image (3, H, W), landmarks (68, 2), skin (1, H, W) -> same shapes.

    Image and skin go through one warp (stacked as channels), so they stay pixel-aligned.
    """
    if image.shape[-2:] != skin.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and skin {tuple(skin.shape)} differ in size")
    channels = image.shape[-3]
    warped = warp_images(torch.cat([image, skin.to(image.dtype)], dim=-3), augmentation.matrix)
    return (
        warped[..., :channels, :, :],
        transform_landmarks(landmarks, augmentation),
        warped[..., channels:, :, :].to(skin.dtype),
    )


def augment_sample(
    image: torch.Tensor,
    landmarks: torch.Tensor,
    skin: torch.Tensor,
    generator: torch.Generator | None = None,
    settings: AugmentSettings = AugmentSettings(),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw a transform (`sample_augmentation`) and apply it (`apply_augmentation`)."""
    height, width = image.shape[-2:]
    return apply_augmentation(image, landmarks, skin, sample_augmentation(height, width, generator, settings))
