"""R-Net -> ONNX: the network as one graph, with what a runtime needs to use it stored beside it.

`export_rnet_onnx` writes an R-Net as an ONNX model (opset 17 by default) with one input and one output:

    images        (batch, 3, S, S) float32 RGB in [0, 1], not normalised (R-Net's convention, `networks.rnet`)
    coefficients  (batch, N) float32, the flat vector in `CoeffLayout` order

The batch axis is dynamic; the crop side S is fixed (the heads were trained on one crop size). Everything
needed to turn the flat vector back into a face is stored in the model's ``metadata_props`` (`RNetOnnxMetadata`):
the coefficient layout, the face model (loader, name, file name and digest, vertex count), the camera and
the crop size. `reconstruction.onnx_predictor` reads them, rebuilds the face model and renderer, and refuses
a model whose metadata, inputs or outputs do not fit.

The face model digest is the sha256 of the file the model is built from (the bundled ICT npz, or your
``BFM_model_front.mat``), not of the tensors: the bases are computed at load time (PCA, albedo prior) and
their last bits differ between BLAS builds, while the file does not.

``quantize="int8"`` quantizes the weights of the exported graph with onnxruntime's dynamic quantization
(activations stay float and are quantized on the fly): a file a quarter the size, with slightly different
coefficients (`reconstruction.onnx_predictor.coefficient_deviation` measures by how much). It is not faster
on a CPU: onnxruntime's integer convolution (ConvInteger) is slower than its float one for this network.
Half precision is not offered: onnxruntime's CPU provider has few float16 kernels and runs them slower.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from face_model.coefficients import CoeffLayout
from renderers.camera import PinholeCamera

FORMAT = "face3d-rnet-onnx/1"
"""Version of the metadata schema; a runtime refuses other versions."""

INPUT_NAME = "images"
OUTPUT_NAME = "coefficients"
DEFAULT_OPSET = 17
QUANTIZATIONS = ("int8",)
METADATA_PREFIX = "face3d."


@dataclass(frozen=True)
class FaceModelSource:
    """How to rebuild a face model: ``face_model.load_face_model(loader, path, **layout sizes)``.

    loader: "ict" or "bfm" (`face_model.FACE_MODELS`)
    path:   the model file; None for the bundled ICT model
    """

    loader: str
    path: str | None = None

    def file(self) -> Path:
        """The file the face model is built from (the bundled ICT npz when ``path`` is None)."""
        if self.path is not None:
            return Path(self.path).expanduser()
        if self.loader == "ict":
            from face_model.ict import default_ict_path

            return default_ict_path()
        raise ValueError(f"the {self.loader!r} face model is not bundled: its file path is needed")

    def digest(self) -> str:
        """sha256 of `file` (see the module docstring for why not of the tensors)."""
        return file_sha256(self.file())


def file_sha256(path: Path) -> str:
    """Hex sha256 of a face model file; FileNotFoundError naming it when it is missing."""
    if not path.is_file():
        raise FileNotFoundError(
            f"face model file {path} not found; give the path of the face model file the R-Net "
            "was trained with (for BFM, the BFM_model_front.mat built by `face3d prepare-bfm`)"
        )
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class RNetOnnxMetadata:
    """What an exported R-Net stores in its ONNX ``metadata_props`` (all as strings, keys ``face3d.<field>``).

    layout:             the coefficient layout of the output vector
    face_model_loader:  "ict" or "bfm" (how to rebuild it)
    face_model_name:    `FaceModel.name` of the model trained with ("ict", "bfm09")
    face_model_file:    the model file's name (where it was on the exporting machine, for messages)
    face_model_digest:  sha256 of that file
    n_vertices:         vertex count of the face model (a cheap second check)
    camera:             the renderer's camera; ``camera.image_size`` is the crop the network reads
    precision:          "fp32" or "int8"
    source:             what was exported (the checkpoint's file name)
    """

    layout: CoeffLayout
    face_model_loader: str
    face_model_name: str
    face_model_file: str
    face_model_digest: str
    n_vertices: int
    camera: PinholeCamera
    precision: str = "fp32"
    source: str = ""

    @property
    def crop_size(self) -> int:
        return int(self.camera.image_size[0])

    def to_props(self) -> dict[str, str]:
        """The metadata as the string key/value pairs of ONNX ``metadata_props``."""
        layout = {**dataclasses.asdict(self.layout), "order": list(self.layout.slices), "size": self.layout.size}
        camera = dataclasses.asdict(self.camera)
        values = {
            "format": FORMAT,
            "coeff_layout": json.dumps(layout, sort_keys=True),
            "face_model": self.face_model_loader,
            "face_model_name": self.face_model_name,
            "face_model_file": self.face_model_file,
            "face_model_digest": self.face_model_digest,
            "n_vertices": str(self.n_vertices),
            "camera": json.dumps(camera, sort_keys=True),
            "crop_size": str(self.crop_size),
            "precision": self.precision,
            "source": self.source,
            "input": f"{INPUT_NAME}: (batch, 3, {self.crop_size}, {self.crop_size}) float32 RGB in [0, 1]",
            "output": f"{OUTPUT_NAME}: (batch, {self.layout.size}) float32 in the order of coeff_layout",
        }
        return {METADATA_PREFIX + key: value for key, value in values.items()}

    @staticmethod
    def from_props(props: dict[str, str], where: str) -> RNetOnnxMetadata:
        """Parse ``metadata_props``; ValueError naming ``where`` (the file) when they are not an R-Net's."""
        ours = {key[len(METADATA_PREFIX) :]: value for key, value in props.items() if key.startswith(METADATA_PREFIX)}
        if not ours:
            raise ValueError(
                f"{where} is not a face3d R-Net ONNX model: it has no face3d metadata (found keys "
                f"{sorted(props)[:6]}); export one with `face3d export-onnx --ckpt CKPT --out FILE`"
            )
        if ours.get("format") != FORMAT:
            raise ValueError(
                f"{where} has face3d metadata format {ours.get('format')!r}, this version reads "
                f"{FORMAT!r}; export it again with this version's `face3d export-onnx`"
            )
        try:
            layout = json.loads(ours["coeff_layout"])
            coeff_layout = CoeffLayout(
                n_id=int(layout["n_id"]),
                n_exp=int(layout["n_exp"]),
                n_tex=int(layout["n_tex"]),
                sh_channels=int(layout["sh_channels"]),
            )
            if layout.get("order") != list(coeff_layout.slices):
                raise ValueError(f"coefficient order {layout.get('order')} differs from {list(coeff_layout.slices)}")
            if coeff_layout.size != int(layout["size"]):
                raise ValueError(f"layout sizes add up to {coeff_layout.size}, the metadata says {layout['size']}")
            camera = json.loads(ours["camera"])
            metadata = RNetOnnxMetadata(
                layout=coeff_layout,
                face_model_loader=ours["face_model"],
                face_model_name=ours["face_model_name"],
                face_model_file=ours["face_model_file"],
                face_model_digest=ours["face_model_digest"],
                n_vertices=int(ours["n_vertices"]),
                camera=PinholeCamera(
                    focal=float(camera["focal"]),
                    principal_point=tuple(float(v) for v in camera["principal_point"]),
                    image_size=tuple(int(v) for v in camera["image_size"]),
                    camera_distance=float(camera["camera_distance"]),
                ),
                precision=ours.get("precision", "fp32"),
                source=ours.get("source", ""),
            )
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
            detail = f"missing key {METADATA_PREFIX}{err.args[0]}" if isinstance(err, KeyError) else str(err)
            raise ValueError(
                f"{where} has broken face3d metadata ({detail}); export it again with `face3d export-onnx`"
            ) from None
        if str(metadata.crop_size) != ours.get("crop_size", str(metadata.crop_size)):
            raise ValueError(
                f"{where}: metadata crop_size {ours['crop_size']} disagrees with its camera "
                f"({metadata.camera.image_size}); export it again"
            )
        return metadata


def rnet_metadata(face_model, source: FaceModelSource, crop_size: int, name: str = "") -> RNetOnnxMetadata:
    """The metadata of an R-Net trained with ``face_model`` (built from ``source``) on ``crop_size`` crops seen by
    the default camera (`experiments.build.build_camera`); ``name`` says what was exported."""
    return RNetOnnxMetadata(
        layout=face_model.layout,
        face_model_loader=source.loader,
        face_model_name=face_model.name,
        face_model_file=source.file().name,
        face_model_digest=source.digest(),
        n_vertices=face_model.n_vertices,
        camera=PinholeCamera().resized(crop_size, crop_size),
        source=name,
    )


class FlatCoefficients(nn.Module):
    """R-Net reduced to ``images -> flat coefficients`` (the features C-Net reads are not exported)."""

    def __init__(self, rnet: nn.Module) -> None:
        super().__init__()
        self.rnet = rnet

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.rnet(images).flat


def export_rnet_onnx(
    rnet: nn.Module,
    metadata: RNetOnnxMetadata,
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
) -> Path:
    """Write ``rnet`` (an `networks.rnet.RNet`, or anything whose output has ``.flat``) to ``out`` as ONNX with
    ``metadata`` in its ``metadata_props``; ``quantize="int8"`` writes the weight-quantized model instead
    (``metadata.precision`` says which). ``rnet`` is put in eval mode on the CPU. Returns ``out``."""
    import onnx

    if opset < 17:
        raise ValueError(f"opset {opset} is too old: the exported R-Net needs opset >= 17")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantize!r}; choose one of {QUANTIZATIONS}")
    layout = getattr(rnet, "layout", None)
    if layout is not None and layout != metadata.layout:
        raise ValueError(f"the R-Net predicts layout {layout} but the metadata says {metadata.layout}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = FlatCoefficients(rnet).eval().to("cpu", torch.float32)
    size = metadata.crop_size
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    kwargs = dict(
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        do_constant_folding=True,
    )
    # The TorchScript exporter: the torch.export-based one needs the extra onnxscript package and gives the
    # same graph for this plain feed-forward network. Older torch versions have no ``dynamo`` argument.
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    # Written beside ``out`` first, so a failed export never leaves a half-written model under the final name.
    staged = out.with_name(out.name + ".staging")
    try:
        with warnings.catch_warnings(), _export_rules(opset):
            # Shape checks in R-Net's forward become constants in the trace: the crop size is fixed anyway.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            with torch.no_grad():
                torch.onnx.export(wrapper, (example,), str(staged), **kwargs)
        precision = "fp32"
        if quantize == "int8":
            model = onnx.load(str(staged))
            _inline_identities(model)
            onnx.save(model, str(staged))
            _quantize_int8(staged)
            precision = "int8"
        model = onnx.load(str(staged))
        _set_metadata(model, dataclasses.replace(metadata, precision=precision))
        onnx.checker.check_model(model)
        onnx.save(model, str(staged))
        staged.replace(out)
    finally:
        staged.unlink(missing_ok=True)
    return out


@contextlib.contextmanager
def _export_rules(opset: int):
    """Export two operators differently while the context lasts (the TorchScript exporter's custom symbolics).

    ``adaptive_avg_pool2d``: the SFace backbone averages its 7x7 map over a 2x2 grid, whose bins overlap
    (rows 0-3 and 3-6), and the stock exporter only handles output sizes that divide the input. The spatial
    size is fixed by the crop size, so every bin is a constant slice: average each row bin, then each column
    bin (the mean of a rectangle is the mean of its row means), exactly what PyTorch computes.

    ``prelu``: written as ``(1 - slope) * relu(x) + slope * x`` (the same values up to rounding). onnxruntime's
    PRelu kernel broadcasts the per-channel slope element by element and took half of the SFace R-Net's
    time; this form it fuses into the preceding convolution (14.5 instead of 35 ms of CPU per face at 112
    pixels, against 20.5 ms for ``relu(x) + slope * min(x, 0)``, which it does not fuse).
    """
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "is")
    def adaptive_avg_pool2d(g, x, output_size):
        sizes = x.type().varyingSizes()
        if sizes is None or len(sizes) != 4 or sizes[2] is None or sizes[3] is None:
            raise ValueError("adaptive average pooling needs a fixed spatial input size to export")
        for axis, n, k in ((2, sizes[2], output_size[0]), (3, sizes[3], output_size[1])):
            bins = []
            for i in range(k):
                start, end = (i * n) // k, -(-((i + 1) * n) // k)
                piece = g.op(
                    "Slice",
                    x,
                    g.op("Constant", value_t=torch.tensor([start])),
                    g.op("Constant", value_t=torch.tensor([end])),
                    g.op("Constant", value_t=torch.tensor([axis])),
                )
                if opset >= 18:
                    bins.append(g.op("ReduceMean", piece, g.op("Constant", value_t=torch.tensor([axis])), keepdims_i=1))
                else:
                    bins.append(g.op("ReduceMean", piece, axes_i=[axis], keepdims_i=1))
            x = bins[0] if k == 1 else g.op("Concat", *bins, axis_i=axis)
        return x

    @symbolic_helper.parse_args("v", "v")
    def prelu(g, x, slope):
        rank = len(x.type().varyingSizes() or ())
        if rank > 2:
            # (C,) slopes apply along dimension 1: make them (C, 1, ..., 1) to broadcast over the rest. Constant
            # folding turns the slope arithmetic into stored tensors.
            slope = g.op("Unsqueeze", slope, g.op("Constant", value_t=torch.tensor(list(range(1, rank - 1)))))
        keep = g.op("Sub", g.op("Constant", value_t=torch.tensor(1.0)), slope)
        return g.op("Add", g.op("Mul", g.op("Relu", x), keep), g.op("Mul", x, slope))

    rules = {"aten::adaptive_avg_pool2d": adaptive_avg_pool2d, "aten::prelu": prelu}
    for name, symbolic in rules.items():
        torch.onnx.register_custom_op_symbolic(name, symbolic, opset)
    try:
        yield
    finally:
        for name in rules:
            torch.onnx.unregister_custom_op_symbolic(name, opset)


def _set_metadata(model, metadata: RNetOnnxMetadata) -> None:
    others = {prop.key: prop.value for prop in model.metadata_props if not prop.key.startswith(METADATA_PREFIX)}
    import onnx

    onnx.helper.set_model_props(model, {**others, **metadata.to_props()})
    model.producer_name = "face3d-lightning"


def _inline_identities(model) -> None:
    """Remove Identity nodes that merely rename a weight, in place.

    The exporter stores identical weights once and feeds the copies through Identity nodes (an untrained
    R-Net's zero heads of equal size, say); the quantizer needs every convolution weight to be a stored
    tensor itself.
    """
    graph = model.graph
    stored = {tensor.name for tensor in graph.initializer}
    outputs = {value.name for value in graph.output}
    renames = {
        node.output[0]: node.input[0]
        for node in graph.node
        if node.op_type == "Identity" and node.input[0] in stored and node.output[0] not in outputs
    }
    if not renames:
        return
    kept = [node for node in graph.node if not (node.op_type == "Identity" and node.output[0] in renames)]
    for node in kept:
        for index, name in enumerate(node.input):
            if name in renames:
                node.input[index] = renames[name]
    del graph.node[:]
    graph.node.extend(kept)


def _quantize_int8(path: Path) -> None:
    """Dynamic int8 quantization of the convolution weights of the model at ``path``, in place."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = path.with_name(path.name + ".int8")
    root = logging.getLogger()
    level = root.level
    # The quantizer logs a suggestion to run its shape-inference pre-pass; this graph's shapes are all static.
    root.setLevel(max(level, logging.ERROR))
    try:
        # Unsigned weights: onnxruntime's CPU ConvInteger kernel takes uint8 weights only.
        quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QUInt8)
        quantized.replace(path)
    finally:
        root.setLevel(level)
        quantized.unlink(missing_ok=True)
