"""SFace: the torch port against OpenCV running the same ONNX file, and the alignment convention."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from networks.recognition import RecognitionNet
from networks.sface import SFace, _dequantize, bundled_sface_path, load_sface_onnx


@pytest.fixture(scope="module")
def opencv_sface() -> cv2.FaceRecognizerSF:
    return cv2.FaceRecognizerSF.create(str(bundled_sface_path()), "")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _torch_embeddings(net: RecognitionNet, crops_rgb_uint8: list[np.ndarray]) -> np.ndarray:
    batch = torch.from_numpy(np.stack(crops_rgb_uint8)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return net(batch).numpy()


def _aligned_uint8(photo_tools: SimpleNamespace, name: str, net: RecognitionNet) -> np.ndarray:
    crop = photo_tools.align(photo_tools.load(name), net.template, net.input_size)
    return np.round(crop * 255.0).astype(np.uint8)


def _opencv_face_row(photo_tools: SimpleNamespace, photo) -> np.ndarray:
    """A YuNet-style detection row (box, five landmarks, score) holding the photo's five points."""
    face = np.zeros((1, 15), dtype=np.float32)
    face[0, 4:14] = photo_tools.five_points(photo.landmarks).ravel()
    return face


def test_matches_opencv_on_identical_inputs(
    sface_views: dict[str, list[np.ndarray]],
    sface_embeddings: dict[str, torch.Tensor],
    opencv_sface: cv2.FaceRecognizerSF,
) -> None:
    """Same aligned crops (the photos and their mirrors) through OpenCV's runtime and through the port."""
    for name, views in sface_views.items():
        for view in (0, 1):
            crop = np.round(views[view] * 255.0).astype(np.uint8)  # the crops are uint8 / 255: exact
            reference = opencv_sface.feature(np.ascontiguousarray(crop[:, :, ::-1]))  # OpenCV takes BGR
            assert _cosine(sface_embeddings[name][view].numpy(), reference) > 0.999, (name, view)


@pytest.mark.parametrize("name", ["takeo", "breakingbad"])
def test_matches_opencv_pipeline_with_its_own_alignment(
    name: str, sface: RecognitionNet, opencv_sface: cv2.FaceRecognizerSF, photo_tools: SimpleNamespace
) -> None:
    """OpenCV aligns (alignCrop) and embeds; we align with the module's template and embed: same result."""
    photo = photo_tools.load(name)
    bgr = np.ascontiguousarray(photo.image[:, :, ::-1])
    reference = opencv_sface.feature(opencv_sface.alignCrop(bgr, _opencv_face_row(photo_tools, photo)))
    ours = _torch_embeddings(sface, [_aligned_uint8(photo_tools, name, sface)])
    assert _cosine(ours, reference) > 0.99


def test_template_convention_matches_opencv_aligncrop(
    sface: RecognitionNet, opencv_sface: cv2.FaceRecognizerSF, photo_tools: SimpleNamespace
) -> None:
    """The template is ArcFace's + 0.5 (half-pixel centres): OpenCV's crop equals ours, a 1 px shift does not."""
    photo = photo_tools.load("breakingbad")
    bgr = np.ascontiguousarray(photo.image[:, :, ::-1])
    theirs = opencv_sface.alignCrop(bgr, _opencv_face_row(photo_tools, photo))[:, :, ::-1].astype(np.float32)
    ours = photo_tools.align(photo, sface.template, sface.input_size) * 255.0
    shifted = photo_tools.align(photo, sface.template + 1.0, sface.input_size) * 255.0
    error = np.abs(ours - theirs).mean()
    assert error < 1.0
    assert np.abs(shifted - theirs).mean() > 3.0 * error


def test_blocked_dequantisation_with_short_last_block() -> None:
    quantized = np.arange(-5, 5, dtype=np.int8).reshape(2, 5)
    scale = np.array([[0.5, 2.0], [1.0, 3.0]], dtype=np.float32)
    zero_point = np.array([[1, -1], [0, 2]], dtype=np.int8)
    out = _dequantize(quantized, scale, zero_point, axis=1, block=3)
    expected = np.empty((2, 5), dtype=np.float32)
    for row in range(2):
        for col in range(5):
            block = col // 3
            expected[row, col] = (float(quantized[row, col]) - zero_point[row, block]) * scale[row, block]
    np.testing.assert_allclose(out, expected)
    per_axis = _dequantize(quantized, np.array([1.0, 2.0], np.float32), None, axis=0, block=0)
    np.testing.assert_allclose(per_axis, quantized * np.array([[1.0], [2.0]]))


def test_loader_refuses_a_different_architecture() -> None:
    model = SFace()
    model.body[3].conv.stride = (1, 1)  # conv_3_dw downsamples in the real graph
    with pytest.raises(ValueError, match="conv_3_dw"):
        load_sface_onnx(model, bundled_sface_path())
