"""R-Net through ONNX Runtime: coefficients without PyTorch's network code or a checkpoint.

`OnnxRNet` opens a model written by ``face3d export-onnx`` (`reconstruction.onnx_export`) and checks, before
anything runs, that it is one: face3d metadata of the known format, one float input (batch, 3, S, S) with S
the stored crop size, one output (batch, N) with N the stored layout's size. Anything else is refused with
a ValueError naming the file and what differs.

`OnnxRNetPredictor` is the `reconstruction.pipeline.Predictor` over it: it rebuilds the face model the network
was trained with from the metadata (the bundled ICT model needs nothing; BFM needs the path of your
``BFM_model_front.mat``), checks that model file's sha256 against the stored digest, and renders with the
stored camera. Given a face model or a crop size of its own (``face_model=``, ``crop_size=``), it refuses a
network trained for another face model, layout or crop size.

The session runs on onnxruntime's CPU provider with ``threads`` intra-op threads (1 by default, for the same
reason as the rest of ``face3d reconstruct``: a single face gains little from more on a busy machine).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from errors import InvalidInputError, MissingFileError
from face_model.coefficients import CoeffLayout
from face_model.model import FaceModel
from reconstruction.onnx_export import FaceModelSource, RNetOnnxMetadata
from reconstruction.pipeline import CropBatch, Predicted
from renderers.mesh_renderer import MeshRenderer

EXPORT_HINT = "export an R-Net with `face3d export-onnx --ckpt CKPT --out FILE`"


class OnnxRNet:
    """An exported R-Net in an onnxruntime session: ``(B, 3, S, S)`` float32 images -> ``(B, N)`` coefficients.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads.

    Raises FileNotFoundError for a missing file, ValueError for a file that is not a face3d R-Net (see the
    module docstring).
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise MissingFileError(f"ONNX model {self.path} not found; {EXPORT_HINT}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for unreadable files
            first_line = (str(err).strip().splitlines() or [""])[0]
            raise InvalidInputError(
                f"{self.path} could not be loaded as an ONNX model ({type(err).__name__}: {first_line}); {EXPORT_HINT}"
            ) from None
        self.metadata = RNetOnnxMetadata.from_props(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        self.input_name, self.output_name = self._check_signature()

    @property
    def layout(self) -> CoeffLayout:
        return self.metadata.layout

    @property
    def crop_size(self) -> int:
        return self.metadata.crop_size

    def _check_signature(self) -> tuple[str, str]:
        """(input name, output name) after checking they are what the metadata promises."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        size, n = self.metadata.crop_size, self.metadata.layout.size

        def shape_text(arg) -> str:
            return f"{arg.name} {arg.type} {list(arg.shape)}"

        def fits(shape, expected) -> bool:
            # Symbolic dimensions (the batch, named "batch") come back as strings or None: anything fits them.
            return len(shape) == len(expected) and all(
                e is None or not isinstance(s, int) or s == e for s, e in zip(shape, expected)
            )

        problems = []
        if len(inputs) != 1 or inputs[0].type != "tensor(float)" or not fits(inputs[0].shape, (None, 3, size, size)):
            problems.append(f"inputs {[shape_text(a) for a in inputs]}, expected one float (batch, 3, {size}, {size})")
        if len(outputs) != 1 or outputs[0].type != "tensor(float)" or not fits(outputs[0].shape, (None, n)):
            problems.append(
                f"outputs {[shape_text(a) for a in outputs]}, expected one float (batch, {n}) for "
                f"the layout {self.metadata.layout}"
            )
        if problems:
            raise InvalidInputError(
                f"{self.path} does not match its own face3d metadata: {'; '.join(problems)}. It was "
                f"not written by `face3d export-onnx` or was edited since; {EXPORT_HINT}"
            )
        return inputs[0].name, outputs[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) RGB in [0, 1] -> (B, N) flat coefficients, float32 numpy."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        size = self.metadata.crop_size
        if images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(f"{self.path.name} reads (B, 3, {size}, {size}) crops, got {tuple(images.shape)}")
        return self.session.run([self.output_name], {self.input_name: images})[0]


def check_compatible(
    metadata: RNetOnnxMetadata, where: str, face_model: FaceModel | None = None, crop_size: int | None = None
) -> None:
    """Refuse (ValueError naming ``where``) an exported R-Net trained for another face model, layout or crop."""
    if face_model is not None:
        if face_model.name != metadata.face_model_name:
            raise InvalidInputError(
                f"{where} was trained for the {metadata.face_model_name!r} face model, not "
                f"{face_model.name!r}; use a model exported for {face_model.name!r}"
            )
        if face_model.layout != metadata.layout:
            raise InvalidInputError(
                f"{where} predicts the coefficient layout {metadata.layout}, the face model has "
                f"{face_model.layout}; build the face model with the network's basis sizes"
            )
        if face_model.n_vertices != metadata.n_vertices:
            raise InvalidInputError(
                f"{where} was trained on a {metadata.n_vertices}-vertex {metadata.face_model_name!r} "
                f"model, this one has {face_model.n_vertices} vertices (another region or version)"
            )
    if crop_size is not None and crop_size != metadata.crop_size:
        raise InvalidInputError(
            f"{where} reads {metadata.crop_size}-pixel crops, not {crop_size}; align the photos at "
            f"{metadata.crop_size} pixels"
        )


def face_model_from_metadata(metadata: RNetOnnxMetadata, where: str, path: str | Path | None = None) -> FaceModel:
    """Rebuild the face model an exported R-Net was trained with and check it is the same one.

    ``path``: the model file (needed for BFM, which does not ship; optional for ICT, whose bundled copy is the
    default). ValueError naming ``where`` when the file's sha256 differs from the stored digest.
    """
    from face_model import load_face_model

    if path is None and metadata.face_model_loader != "ict":
        raise InvalidInputError(
            f"{where} was trained with the {metadata.face_model_name!r} face model "
            f"({metadata.face_model_file}, sha256 {metadata.face_model_digest[:12]}...), which does not "
            "ship: pass the path of your copy (`face3d reconstruct --onnx MODEL --bfm-path FILE`)"
        )
    source = FaceModelSource(metadata.face_model_loader, None if path is None else str(path))
    digest = source.digest()
    if digest != metadata.face_model_digest:
        raise InvalidInputError(
            f"{where} was trained with {metadata.face_model_file} of sha256 "
            f"{metadata.face_model_digest[:12]}..., but {source.file()} has sha256 {digest[:12]}...: "
            "another face model file, whose coefficients mean other shapes; use the file the network "
            "was trained with, or export a network trained on this one"
        )
    layout = metadata.layout
    face_model = load_face_model(
        metadata.face_model_loader,
        path=source.path,
        n_id=layout.n_id,
        n_exp=layout.n_exp,
        n_tex=layout.n_tex,
        sh_channels=layout.sh_channels,
    )
    check_compatible(metadata, where, face_model=face_model)
    return face_model


class OnnxRNetPredictor:
    """`reconstruction.pipeline.Predictor` over an exported R-Net (module docstring).

    Args:
        path: the ``.onnx`` file from ``face3d export-onnx``.
        face_model_path: the face model file for a BFM network (ICT: the bundled copy by default).
        threads: onnxruntime intra-op threads.
        face_model: use this face model instead of rebuilding one (checked for name, layout and vertex count;
            its file digest cannot be checked).
        crop_size: refuse a network that reads another crop size.
    """

    def __init__(
        self,
        path: str | Path,
        face_model_path: str | Path | None = None,
        threads: int = 1,
        face_model: FaceModel | None = None,
        crop_size: int | None = None,
    ) -> None:
        self.net = OnnxRNet(path, threads=threads)
        metadata, where = self.net.metadata, str(self.net.path)
        check_compatible(metadata, where, face_model=face_model, crop_size=crop_size)
        if face_model is None:
            face_model = face_model_from_metadata(metadata, where, face_model_path)
        self.renderer = MeshRenderer(face_model, metadata.camera)
        precision = "" if metadata.precision == "fp32" else f"-{metadata.precision}"
        self.name = f"onnx{precision}:{self.net.path.name}"

    def predict(self, crops: CropBatch) -> Predicted:
        start = time.perf_counter()
        flat = self.net(crops.images.detach().to("cpu", torch.float32).numpy())
        coeffs = self.net.layout.split(torch.from_numpy(flat).to(crops.images.device))
        return Predicted(coeffs, {"seconds": time.perf_counter() - start})


def coefficient_deviation(flat: torch.Tensor, reference: torch.Tensor, face_model: FaceModel) -> dict[str, float]:
    """How far coefficients ``flat`` (B, N) are from ``reference`` (B, N), e.g. ONNX (or int8) vs PyTorch.

    Returns ``max_abs`` (largest coefficient difference), ``max_abs/<group>`` per layout group, ``rel_rms``
    (RMS difference over the RMS spread of the reference around its mean, across the batch: 0 = identical,
    1 = as different as two faces of the batch) and ``shape_mm`` (mean vertex distance between the two
    neutral-pose shapes, identity and expression, in millimetres).
    """
    layout = face_model.layout
    flat, reference = flat.detach().double().cpu(), reference.detach().double().cpu()
    difference = flat - reference
    out = {"max_abs": float(difference.abs().max())}
    for name, part in layout.slices.items():
        if part.stop > part.start:
            out[f"max_abs/{name}"] = float(difference[:, part].abs().max())
    spread = (reference - reference.mean(0)).pow(2).mean().sqrt()
    out["rel_rms"] = float(difference.pow(2).mean().sqrt() / spread) if spread > 0 else float("nan")
    device = face_model.mean_shape.device
    with torch.no_grad():
        shapes = [face_model.shape(layout.split(x.float().to(device))) for x in (flat, reference)]
    # Model units are decimetres.
    out["shape_mm"] = float((shapes[0] - shapes[1]).norm(dim=-1).mean() * 100.0)
    return out


def check_crops(renderer: MeshRenderer, count: int = 4, seed: int = 0) -> torch.Tensor:
    """(count, 3, S, S) faces of ``renderer``'s model with prior-sampled coefficients on a grey background:
    inputs that look like what R-Net reads, for comparing two versions of a network."""
    from face_model.sampling import sample_coefficients

    device = renderer.face_model.mean_shape.device
    coeffs = sample_coefficients(renderer.face_model.layout, count, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        render = renderer(coeffs.to(device))
    return (render.image * render.mask + 0.5 * (1.0 - render.mask)).clamp(0.0, 1.0).cpu()


def compare_with_pytorch(
    rnet: torch.nn.Module, net: OnnxRNet, face_model: FaceModel, crops: torch.Tensor
) -> dict[str, float]:
    """`coefficient_deviation` of the exported ``net`` from the PyTorch ``rnet`` (eval mode, CPU) on ``crops``."""
    with torch.no_grad():
        reference = rnet.eval().to("cpu")(crops).flat
    return coefficient_deviation(torch.from_numpy(net(crops.numpy())), reference, face_model)
