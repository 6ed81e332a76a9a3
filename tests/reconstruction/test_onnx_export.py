"""R-Net -> ONNX: graph, metadata, exactness against PyTorch, int8 variant."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from face_model.ict import default_ict_path  # noqa: E402
from reconstruction.onnx_export import (  # noqa: E402
    FORMAT,
    FaceModelSource,
    RNetOnnxMetadata,
    _export_rules,
    export_rnet_onnx,
    rnet_metadata,
)


@pytest.fixture(scope="module")
def exported(smoke_rnet, tmp_path_factory):
    rnet, face_model, cfg = smoke_rnet
    metadata = rnet_metadata(face_model, FaceModelSource("ict"), cfg.renderer.image_size, name="smoke")
    return export_rnet_onnx(rnet, metadata, tmp_path_factory.mktemp("onnx") / "r_net.onnx"), metadata


def run_onnx(path, images: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]


def test_graph_has_opset_17_a_dynamic_batch_and_the_metadata(exported):
    path, metadata = exported
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 64, 64]
    assert [d.dim_param or d.dim_value for d in graph_output.type.tensor_type.shape.dim] == ["batch", 55]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["face3d.format"] == FORMAT and props["face3d.crop_size"] == "64"
    assert props["face3d.face_model"] == "ict" and props["face3d.face_model_name"] == "ict"
    # The digest is the bundled file's sha256, computed here independently.
    assert props["face3d.face_model_digest"] == hashlib.sha256(default_ict_path().read_bytes()).hexdigest()
    layout = json.loads(props["face3d.coeff_layout"])
    assert (layout["n_id"], layout["n_exp"], layout["n_tex"], layout["sh_channels"], layout["size"]) == (8, 8, 6, 3, 55)
    assert layout["order"] == ["identity", "expression", "albedo", "angles", "lighting", "translation"]
    assert RNetOnnxMetadata.from_props(props, "x") == metadata


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_coefficients_match_pytorch(exported, smoke_rnet, batch):
    path, _ = exported
    rnet = smoke_rnet[0]
    images = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        reference = rnet(images).flat.numpy()
    assert reference.std() > 0.05, "the test network must not predict constants"
    np.testing.assert_allclose(run_onnx(path, images), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "size,grid,opset", [(7, (2, 2), 17), (5, (2, 3), 17), (6, (3, 3), 17), (4, (1, 1), 17), (7, (2, 2), 18)]
)
def test_adaptive_pooling_exports_exactly_with_overlapping_bins(tmp_path, size, grid, opset):
    """SFace's 7x7 map pooled to 2x2 has overlapping bins, which the stock exporter refuses."""

    class Pool(torch.nn.Module):
        def forward(self, x):
            return F.adaptive_avg_pool2d(x, grid)

    x = torch.randn(2, 4, size, size)
    path = tmp_path / "pool.onnx"
    with _export_rules(opset), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            Pool(),
            (x,),
            str(path),
            opset_version=opset,
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    np.testing.assert_allclose(run_onnx(path, x), F.adaptive_avg_pool2d(x, grid).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels,shape", [(4, (2, 4, 5, 5)), (1, (2, 4, 5, 5)), (3, (2, 3))])
def test_prelu_exports_as_elementwise_operations_with_the_same_values(tmp_path, channels, shape):
    """PReLU becomes (1 - slope) relu(x) + slope x (onnxruntime's PRelu kernel is slow), per channel or shared."""
    prelu = torch.nn.PReLU(channels)
    with torch.no_grad():
        prelu.weight.copy_(torch.linspace(-0.5, 0.7, channels))
    x = torch.randn(*shape)
    path = tmp_path / "prelu.onnx"
    with _export_rules(17), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            prelu, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}}
        )
    assert "PRelu" not in {node.op_type for node in onnx.load(str(path)).graph.node}
    with torch.no_grad():
        np.testing.assert_allclose(run_onnx(path, x), prelu(x).numpy(), rtol=1e-6, atol=1e-6)


def test_sface_backbone_exports_with_its_pooled_grid(tmp_path, ict_small):
    """The default's backbone at 112 pixels (7x7 final map, 2x2 grid), random weights with real statistics."""
    from networks.rnet import RNet

    rnet = RNet(ict_small.layout, backbone="sface", pooled_grid=2)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in rnet.final_layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator))
    rnet.eval()
    images = torch.rand(2, 3, 112, 112, generator=generator)
    with torch.no_grad():
        features = rnet.backbone.forward_features(images).pooled
        # Random trunk weights shrink the features; rescale the heads so the outputs are of order one.
        for layer in rnet.final_layers:
            layer.weight.div_(features.abs().max())
        reference = rnet(images).flat.numpy()
    metadata = rnet_metadata(ict_small, FaceModelSource("ict"), 112)
    path = export_rnet_onnx(rnet, metadata, tmp_path / "sface.onnx")
    assert np.abs(reference).max() > 0.1
    np.testing.assert_allclose(run_onnx(path, images), reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_int8_variant_is_smaller_and_close(exported, smoke_rnet, tmp_path):
    from reconstruction.onnx_predictor import OnnxRNet, compare_with_pytorch

    path, metadata = exported
    rnet, face_model, _ = smoke_rnet
    quantized = export_rnet_onnx(rnet, metadata, tmp_path / "r_net_int8.onnx", quantize="int8")
    assert quantized.stat().st_size < 0.35 * path.stat().st_size
    net = OnnxRNet(quantized)
    assert net.metadata == dataclasses.replace(metadata, precision="int8")
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    deviation = compare_with_pytorch(rnet, net, face_model, images)
    # Quantization changes the numbers a little (about 0.06 at most and 0.14 mm here), never to another face.
    assert 0 < deviation["max_abs"] < 0.2
    assert deviation["shape_mm"] < 0.5
    exact = compare_with_pytorch(rnet, OnnxRNet(path), face_model, images)
    assert exact["rel_rms"] < 1e-4 and exact["shape_mm"] < 1e-3


def test_export_refuses_bad_requests(exported, smoke_rnet, tmp_path):
    rnet, face_model, _ = smoke_rnet
    _, metadata = exported
    with pytest.raises(ValueError, match="opset 13 is too old"):
        export_rnet_onnx(rnet, metadata, tmp_path / "a.onnx", opset=13)
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        export_rnet_onnx(rnet, metadata, tmp_path / "a.onnx", quantize="int4")
    other = dataclasses.replace(metadata, layout=dataclasses.replace(metadata.layout, n_id=9))
    with pytest.raises(ValueError, match="layout"):
        export_rnet_onnx(rnet, other, tmp_path / "a.onnx")
    assert not list(tmp_path.iterdir()), "a refused export writes nothing"
    with pytest.raises(ValueError, match="not bundled"):
        FaceModelSource("bfm").file()
