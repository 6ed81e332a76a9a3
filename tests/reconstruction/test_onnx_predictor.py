"""The onnxruntime R-Net predictor: same coefficients as PyTorch, and every foreign file refused by name."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from face_model.ict import default_ict_path  # noqa: E402
from reconstruction.onnx_export import FaceModelSource, export_rnet_onnx, rnet_metadata  # noqa: E402
from reconstruction.onnx_predictor import (  # noqa: E402
    OnnxRNet,
    OnnxRNetPredictor,
    check_compatible,
    coefficient_deviation,
)
from reconstruction.pipeline import CropBatch  # noqa: E402


@pytest.fixture(scope="module")
def exported(smoke_rnet, tmp_path_factory):
    rnet, face_model, cfg = smoke_rnet
    metadata = rnet_metadata(face_model, FaceModelSource("ict"), cfg.renderer.image_size, name="smoke")
    return export_rnet_onnx(rnet, metadata, tmp_path_factory.mktemp("onnx") / "r_net.onnx")


def edited(source, target, **changes):
    """Copy of an ONNX file with metadata keys ``face3d.<key>`` set (None removes the key)."""
    model = onnx.load(str(source))
    props = {prop.key: prop.value for prop in model.metadata_props}
    for key, value in changes.items():
        if value is None:
            props.pop(f"face3d.{key}", None)
        else:
            props[f"face3d.{key}"] = value
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(target))
    return target


def test_predictor_rebuilds_the_face_model_and_matches_pytorch(exported, smoke_rnet):
    rnet, face_model, _ = smoke_rnet
    predictor = OnnxRNetPredictor(exported)
    assert predictor.name == "onnx:r_net.onnx"
    model = predictor.renderer.face_model
    assert model.layout == face_model.layout and model.n_vertices == face_model.n_vertices
    torch.testing.assert_close(model.mean_shape, face_model.mean_shape)
    assert predictor.renderer.camera.image_size == (64, 64)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    crops = CropBatch(images=images, landmarks=torch.zeros(2, 68, 2), skin=torch.ones(2, 1, 64, 64))
    predicted = predictor.predict(crops)
    with torch.no_grad():
        reference = rnet(images).coeffs
    for field in dataclasses.fields(reference):
        torch.testing.assert_close(
            getattr(predicted.coeffs, field.name), getattr(reference, field.name), rtol=1e-4, atol=1e-5
        )
    assert predicted.details["seconds"] > 0


def test_predictor_with_a_given_face_model_checks_it(exported, smoke_rnet, ict_small):
    _, face_model, _ = smoke_rnet
    assert OnnxRNetPredictor(exported, face_model=face_model, crop_size=64).renderer.face_model is face_model
    with pytest.raises(ValueError, match=r"r_net.onnx predicts the coefficient layout"):
        OnnxRNetPredictor(exported, face_model=ict_small)
    with pytest.raises(ValueError, match=r"r_net.onnx reads 64-pixel crops, not 112"):
        OnnxRNetPredictor(exported, face_model=face_model, crop_size=112)


def test_a_missing_or_unreadable_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.onnx not found; export an R-Net"):
        OnnxRNet(tmp_path / "nothing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf")
    with pytest.raises(ValueError, match="garbage.onnx could not be loaded as an ONNX model"):
        OnnxRNet(garbage)


def test_an_onnx_model_of_another_kind_is_refused(tmp_path):
    """A valid ONNX model that is not an R-Net: no face3d metadata."""
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "other",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 10])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.helper.set_model_props(model, {"author": "someone"})
    path = tmp_path / "classifier.onnx"
    onnx.save(model, str(path))
    with pytest.raises(
        ValueError,
        match=r"classifier.onnx is not a face3d R-Net ONNX model: it has no face3d "
        r"metadata \(found keys \['author'\]\)",
    ):
        OnnxRNet(path)


def test_metadata_that_disagrees_with_the_graph_is_refused(exported, tmp_path):
    layout = json.loads({p.key: p.value for p in onnx.load(str(exported)).metadata_props}["face3d.coeff_layout"])
    wider = edited(exported, tmp_path / "wider.onnx", coeff_layout=json.dumps({**layout, "n_id": 9, "size": 56}))
    with pytest.raises(
        ValueError,
        match=r"wider.onnx does not match its own face3d metadata: outputs .*expected one "
        r"float \(batch, 56\)",
    ):
        OnnxRNet(wider)
    camera = json.dumps(
        {
            "focal": 1015.0 * 112 / 224,
            "principal_point": [56.0, 56.0],
            "image_size": [112, 112],
            "camera_distance": 10.0,
        }
    )
    bigger = edited(exported, tmp_path / "bigger.onnx", camera=camera, crop_size="112")
    with pytest.raises(
        ValueError,
        match=r"bigger.onnx does not match its own face3d metadata: inputs .*\(batch, 3, "
        r"112, 112\)",
    ):
        OnnxRNet(bigger)


def test_broken_or_foreign_metadata_is_refused(exported, tmp_path):
    with pytest.raises(ValueError, match=r"old.onnx has face3d metadata format 'face3d-rnet-onnx/0'"):
        OnnxRNet(edited(exported, tmp_path / "old.onnx", format="face3d-rnet-onnx/0"))
    with pytest.raises(
        ValueError,
        match=r"nolayout.onnx has broken face3d metadata \(missing key "
        r"face3d.coeff_layout\)",
    ):
        OnnxRNet(edited(exported, tmp_path / "nolayout.onnx", coeff_layout=None))
    with pytest.raises(ValueError, match=r"order.onnx has broken face3d metadata \(coefficient order"):
        layout = {
            "n_id": 8,
            "n_exp": 8,
            "n_tex": 6,
            "sh_channels": 3,
            "size": 55,
            "order": ["expression", "identity", "albedo", "angles", "lighting", "translation"],
        }
        OnnxRNet(edited(exported, tmp_path / "order.onnx", coeff_layout=json.dumps(layout)))


def test_a_network_of_another_face_model_file_is_refused(exported, tmp_path):
    other = edited(exported, tmp_path / "other.onnx", face_model_digest="0" * 64)
    net = OnnxRNet(other)  # the network itself is fine
    assert net.metadata.face_model_digest == "0" * 64
    with pytest.raises(
        ValueError,
        match=r"other.onnx was trained with ict_face.npz of sha256 000000000000\.\.\., "
        r"but .*ict_face.npz has sha256",
    ):
        OnnxRNetPredictor(other)
    bfm = edited(
        exported,
        tmp_path / "bfm.onnx",
        face_model="bfm",
        face_model_name="bfm09",
        face_model_file="BFM_model_front.mat",
    )
    with pytest.raises(ValueError, match=r"bfm.onnx was trained with the 'bfm09' face model .*--bfm-path FILE"):
        OnnxRNetPredictor(bfm)
    with pytest.raises(FileNotFoundError, match=r"face model file .*nope.mat not found; give the path"):
        OnnxRNetPredictor(bfm, face_model_path=tmp_path / "nope.mat")
    with pytest.raises(ValueError, match=r"bfm.onnx was trained for the 'bfm09' face model, not 'ict'"):
        check_compatible(OnnxRNet(bfm).metadata, str(bfm), face_model=OnnxRNetPredictor(exported).renderer.face_model)
    assert default_ict_path().is_file()


def test_predictor_refuses_crops_of_another_size(exported):
    predictor = OnnxRNetPredictor(exported)
    crops = CropBatch(images=torch.rand(1, 3, 32, 32), landmarks=torch.zeros(1, 68, 2), skin=torch.ones(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"r_net.onnx reads \(B, 3, 64, 64\) crops, got \(1, 3, 32, 32\)"):
        predictor.predict(crops)


def test_coefficient_deviation_against_a_hand_computed_shift(ict_small):
    layout = ict_small.layout
    reference = torch.randn(3, layout.size, generator=torch.Generator().manual_seed(0))
    zero = coefficient_deviation(reference, reference, ict_small)
    assert zero["max_abs"] == 0 and zero["rel_rms"] == 0 and zero["shape_mm"] == 0
    shifted = reference.clone()
    shifted[:, layout.slices["identity"].start] += 0.5
    deviation = coefficient_deviation(shifted, reference, ict_small)
    assert deviation["max_abs"] == pytest.approx(0.5) and deviation["max_abs/identity"] == pytest.approx(0.5)
    assert deviation["max_abs/expression"] == 0
    # Half of the first identity mode moves each vertex by half that mode's displacement (dm -> mm).
    expected = float((0.5 * ict_small.id_basis[0]).reshape(-1, 3).norm(dim=-1).mean() * 100)
    assert deviation["shape_mm"] == pytest.approx(expected, rel=1e-4)
    spread = float((reference.double() - reference.double().mean(0)).pow(2).mean().sqrt())
    assert deviation["rel_rms"] == pytest.approx(float(np.sqrt(0.25 / layout.size)) / spread, rel=1e-6)
