"""Photos -> 3D faces: detect, align, predict coefficients, write every output, report per image.

`reconstruct_images(paths, out_dir, predictor)` takes image files and folders (searched recursively, as
``face3d prepare`` does). Each image is decoded, its largest face detected and given 68 landmarks, and
the photo aligned in memory onto the crop of the predictor's face model (its projected mean 5 points,
`preprocessing.align.template_from_face_model`, at the predictor's crop size). A predictor turns the crop
into coefficients:

* `RNetPredictor`: a trained R-Net (``face3d train`` checkpoint), one forward pass;
* `FittingPredictor`: analysis-by-synthesis with the hybrid loss (`reconstruction.fit`), from the mean face or
  from another predictor's answer (``init``, e.g. an R-Net: test-time refinement);
* anything else with a ``renderer`` and a ``predict(crops)`` method (`Predictor`).

Outputs go to ``out_dir/<image>/`` where ``<image>`` is the file's path relative to the folder it was
found in (or its name, for a file given directly), extension kept so ``a.jpg`` and ``a.png`` never
share a folder: meshes in model space (albedo colours) and posed in camera space (shaded colours), in
millimetres unless ``ExportOptions(units="dm")``; a textured OBJ for the ICT model; coefficients
(.npz, and Deep3D's .mat for BFM); a binary glTF (mesh.glb); landmarks; pose.json; overlay.png (four 512 px
panels: input, reconstruction over it, grey geometry, landmarks). `reconstruction.export` documents
each file and the frames.

Every image gets a record with a ``status`` (`REPORT_STATUSES`: those of `preprocessing.image.STATUSES`,
ok, unreadable, too_small, too_large, no_face, bad_landmarks, error, plus ``diverged``) and a ``reason``; a bad
image never stops the run. Records are
appended to ``out_dir/report.jsonl`` as soon as each image is done, so an interrupted run keeps
everything it finished (a new run into the same folder starts a new report); ``out_dir/summary.json`` is
written at the end. An ok record also holds the output files, ``landmark_error_px`` (mean distance between
the reconstruction's projected landmarks and the detected ones, in crop pixels) and the predictor's
``details`` (seconds, final loss terms of a fit); every record with a face names the detector stage that
found it (``detected_by``) and its time (``detect_seconds``).

**Diverged predictions.** Whatever the predictor, its answer is checked before anything is written
(`divergence_reasons`, limits in `DivergenceLimits`): non-finite coefficients or details (a fit's loss
terms), projected landmarks far from the detected ones, or identity / expression / albedo coefficients far
outside their N(0, 1) prior. Such an image gets status ``diverged``, the reasons, and its ``checks`` (the
measured values; ok records carry them too), and no output files. **Outputs are atomic**: an image's files
are written into a hidden sibling folder (``.<name>.partial``) that is renamed onto ``<name>`` only when
complete, so an error or an interrupted run never leaves a half-written folder (a stale ``.partial`` folder
is removed by the next run of that image).

Images go through one at a time. On a CPU, one image's tensors are small enough that extra torch threads
gain little, and on a busy machine they mostly wait for each other (a fit step measured ten times slower
with two threads than with one on a loaded 2-core machine); ``face3d reconstruct`` therefore runs with
one thread unless told otherwise (``--threads``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from errors import InvalidInputError
from face_model.coefficients import Coefficients
from face_model.model import FaceModel
from geometry.mesh_io import UVLayout
from losses.hybrid import HybridLoss, LossWeights
from preprocessing.align import AlignedFace, template_from_face_model, warp_image
from preprocessing.config import PrepareConfig
from preprocessing.detect import DEFAULT_DETECTOR, FaceDetector, make_detector
from preprocessing.image import ERROR, OK, STATUSES, UNREADABLE, process_image
from preprocessing.pipeline import list_images
from reconstruction.coefficient_io import COEFFICIENT_FIELDS
from reconstruction.export import ExportOptions, Reconstruction, write_reconstruction
from reconstruction.fit import (
    FIT_LOSS_WEIGHTS,
    FitResult,
    FitSettings,
    ReferenceCache,
    detector_landmark_weights,
    fit_coefficients,
)
from reconstruction.uv_texture import ict_uv_layout
from renderers.camera import PinholeCamera
from renderers.mesh_renderer import MeshRenderer
from renderers.visualize import OVERLAY_PANEL, render_overlay_views

T = TypeVar("T")

REPORT_NAME = "report.jsonl"
SUMMARY_NAME = "summary.json"
DIVERGED = "diverged"
REPORT_STATUSES = (*STATUSES, DIVERGED)
"""Statuses of report records: preprocessing's, and ``diverged`` for predictions that fail the checks."""
_PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class DivergenceLimits:
    """When a prediction counts as diverged (`divergence_reasons`); any one limit exceeded is enough.

    max_landmark_error: mean distance between the projected and the detected 68 landmarks, as a fraction of
        the crop side. Fits and trained R-Nets stay within ~0.03 (a few pixels at 224) and the mean face
        with the pose of the template within ~0.08 even on turned heads; 0.15 (34 px at 224) means the face
        is elsewhere.
    max_coefficient_std: largest |coefficient| allowed for identity, expression and albedo, whose priors are
        N(0, 1) (`face_model.coefficients.Coefficients`): a value beyond 6 standard deviations has
        probability ~2e-9 under the prior, so it is the optimiser, not the face. Fits of real photos
        (takeo, lenna, renders of a head scan at 60-75 degrees yaw) stayed below 4.
    max_coefficient_rms: largest root-mean-square of each of those groups: many coefficients each a little
        inside the first limit can still put the face far outside the prior (the RMS of N(0, 1) values is
        about 1; 3 is a squared Mahalanobis distance of 9 per coefficient).
    """

    max_landmark_error: float = 0.15
    max_coefficient_std: float = 6.0
    max_coefficient_rms: float = 3.0

    def __post_init__(self) -> None:
        if not (self.max_landmark_error > 0 and self.max_coefficient_std > 0 and self.max_coefficient_rms > 0):
            raise ValueError(f"divergence limits must be positive, got {self}")


_PRIOR_FIELDS = ("identity", "expression", "albedo")


def prediction_checks(
    coeffs: Coefficients,
    landmarks: np.ndarray,
    detected: np.ndarray,
    crop_size: int,
    details: dict[str, float] | None = None,
) -> dict[str, float]:
    """The numbers `divergence_reasons` judges, for one prediction (batch 1): ``landmark_error_px`` (mean
    distance between (68, 2) ``landmarks`` and ``detected``, crop pixels; NaN when any is non-finite),
    ``landmark_error_fraction`` (the same / ``crop_size``), ``max_abs_<field>`` and ``rms_<field>`` for
    identity, expression and albedo, and ``non_finite`` (how many coefficients and details are NaN or
    infinite)."""
    landmarks, detected = np.asarray(landmarks, np.float64), np.asarray(detected, np.float64)
    error = float(np.linalg.norm(landmarks - detected, axis=1).mean())
    checks = {"landmark_error_px": error, "landmark_error_fraction": error / crop_size}
    non_finite = 0
    for name in COEFFICIENT_FIELDS:
        values = getattr(coeffs, name).detach().double().cpu()
        non_finite += int((~torch.isfinite(values)).sum())
        if name in _PRIOR_FIELDS and values.numel():
            checks[f"max_abs_{name}"] = float(values.abs().max())
            checks[f"rms_{name}"] = float(values.pow(2).mean().sqrt())
    non_finite += sum(1 for value in (details or {}).values() if not math.isfinite(float(value)))
    checks["non_finite"] = float(non_finite)
    return checks


def divergence_reasons(
    checks: dict[str, float], details: dict[str, float] | None = None, limits: DivergenceLimits = DivergenceLimits()
) -> list[str]:
    """Why a prediction is unusable, from its `prediction_checks` (empty list: usable)."""
    reasons = []
    bad_details = sorted(k for k, v in (details or {}).items() if not math.isfinite(float(v)))
    if bad_details:
        reasons.append(f"non-finite {', '.join(bad_details)}")
    if checks["non_finite"] > len(bad_details):
        reasons.append(f"{int(checks['non_finite']) - len(bad_details)} non-finite coefficients")
    fraction = checks["landmark_error_fraction"]
    if not math.isfinite(fraction):
        reasons.append("projected landmarks are not finite")
    elif fraction > limits.max_landmark_error:
        reasons.append(
            f"projected landmarks are {checks['landmark_error_px']:.1f} px from the detected ones on "
            f"average ({100 * fraction:.0f}% of the crop, limit {100 * limits.max_landmark_error:.0f}%)"
        )
    for name in _PRIOR_FIELDS:
        value = checks.get(f"max_abs_{name}", 0.0)
        if math.isfinite(value) and value > limits.max_coefficient_std:
            reasons.append(
                f"{name} coefficient at {value:.1f} standard deviations of its prior "
                f"(limit {limits.max_coefficient_std:g})"
            )
        rms = checks.get(f"rms_{name}", 0.0)
        if math.isfinite(rms) and rms > limits.max_coefficient_rms:
            reasons.append(
                f"{name} coefficients at {rms:.1f} standard deviations on average (root mean square; "
                f"limit {limits.max_coefficient_rms:g})"
            )
    return reasons


@dataclass(frozen=True)
class CropBatch:
    """Aligned crops and their weak labels, on the predictor's device.

    images:    (B, 3, S, S) RGB in [0, 1]
    landmarks: (B, 68, 2) detected landmarks, crop pixels
    skin:      (B, 1, S, S) skin posterior (0 outside the photo)
    """

    images: torch.Tensor
    landmarks: torch.Tensor
    skin: torch.Tensor

    @staticmethod
    def from_aligned(aligned: AlignedFace, skin: np.ndarray, device: torch.device | str) -> CropBatch:
        return CropBatch(
            images=torch.from_numpy(np.ascontiguousarray(aligned.crop.transpose(2, 0, 1)))
            .float()
            .div(255.0)
            .unsqueeze(0)
            .to(device),
            landmarks=torch.from_numpy(np.asarray(aligned.landmarks68, np.float32))[None].to(device),
            skin=torch.from_numpy(np.asarray(skin, np.float32))[None, None].to(device),
        )

    def resized(self, size: int) -> CropBatch:
        """The same crops at ``size`` x ``size`` (area-like antialiased resampling; landmarks scaled, pixel
        centres at half-integers as `renderers.camera` has them), as an aligner at that crop size would give."""
        side = self.images.shape[-1]
        if size == side:
            return self

        def resample(x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", antialias=size < side, align_corners=False
            )

        return CropBatch(resample(self.images), self.landmarks * (size / side), resample(self.skin))


@dataclass(frozen=True)
class Predicted:
    """A predictor's answer: coefficients (B, n) and a few numbers worth reporting (seconds, losses)."""

    coeffs: Coefficients
    details: dict[str, float] = field(default_factory=dict)


class Predictor(Protocol):
    """Turns aligned crops into coefficients.

    ``renderer`` holds the face model and the camera; its ``camera.image_size`` is the crop size the
    predictor wants. ``name`` appears in the report.
    """

    name: str
    renderer: MeshRenderer

    def predict(self, crops: CropBatch) -> Predicted: ...


CheckpointLoader = Callable[..., tuple[torch.nn.Module, Any]]
"""``(path, map_location=device) -> (module, config)``: rebuilds a trained module from a file."""


class RNetPredictor:
    """A trained R-Net: coefficients in one forward pass.

    Args:
        module: a callable ``(images (B, 3, S, S), landmarks (B, 68, 2)) -> object with .coeffs`` with a
            ``renderer`` attribute, e.g. the `lightning_modules.rnet_module.RNetModule` of a checkpoint.
        name: how the report names it.
    """

    def __init__(self, module: torch.nn.Module, name: str = "rnet") -> None:
        self.module = module.eval()
        self.renderer: MeshRenderer = module.renderer
        self.name = name

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, load: CheckpointLoader, device: str | torch.device = "cpu"
    ) -> RNetPredictor:
        """The R-Net that ``load(path, map_location=device)`` rebuilds, named after the file.

        ``load`` is given by the entry point (``experiments.build.load_rnet_checkpoint`` for ``face3d train``
        checkpoints and exported weights): rebuilding a module needs the experiment configs, which this package
        does not import. Its errors (FileNotFoundError, ValueError naming the problem) pass through.
        """
        module, _ = load(path, map_location=device)
        return cls(module.to(device), name=f"rnet:{Path(path).name}")

    def predict(self, crops: CropBatch) -> Predicted:
        start = time.perf_counter()
        with torch.no_grad():
            # The landmarks matter only to an R-Net trained with landmark input; the others ignore them.
            coeffs = self.module(crops.images, crops.landmarks).coeffs
        return Predicted(coeffs.detach(), {"seconds": time.perf_counter() - start})


class FittingPredictor:
    """Analysis-by-synthesis fitting of each crop (`reconstruction.fit.fit_coefficients`).

    Args:
        renderer: the face model's renderer at the crop size to fit at.
        loss: the hybrid loss (build one with `FittingPredictor.build`).
        settings: iterations and step sizes.
        init: a predictor whose answer the fit starts from (an `RNetPredictor`: test-time refinement of a
            network's prediction, as Deep3D's), run on the crops resized to its own crop size; None starts
            from the mean face. It must share the face model's coefficient layout and see the crop through the
            same camera (coefficients then mean the same at any crop size).
    """

    def __init__(
        self,
        renderer: MeshRenderer,
        loss: HybridLoss,
        settings: FitSettings = FitSettings(),
        init: Predictor | None = None,
    ) -> None:
        if init is not None:
            _check_same_view(init.renderer, renderer)
        self.renderer = renderer
        self.loss = loss
        self.settings = settings
        self.init = init
        self.name = "fit" if init is None else f"fit from {init.name}"
        self.last_result: FitResult | None = None

    @classmethod
    def build(
        cls,
        face_model: FaceModel,
        settings: FitSettings = FitSettings(),
        crop_size: int = 224,
        weights: LossWeights = FIT_LOSS_WEIGHTS,
        recognition: str | None = "sface",
        recognition_weights: str | Path | None = None,
        device: str | torch.device = "cpu",
        detector_weights: bool = True,
        init: Predictor | None = None,
    ) -> FittingPredictor:
        """The fitting objective (`reconstruction.fit.FIT_LOSS_WEIGHTS` by default; pass ``LossWeights()`` for the
        training loss's), with the SFace perceptual network when ``weights.perceptual`` > 0 (``recognition`` None
        leaves it out) and, with ``detector_weights``, landmarks weighted by a detector's error per region
        (`reconstruction.fit.detector_landmark_weights`; else the loss's nose and inner-mouth weighting); ``init``
        as in the class docstring."""
        net = None
        if recognition is not None and weights.perceptual > 0:
            from networks.recognition import build_recognition_net

            net = ReferenceCache(build_recognition_net(recognition, recognition_weights))
        point_weights = detector_landmark_weights() if detector_weights else None
        loss = HybridLoss(weights, face_model.skin_mask, net, landmark_point_weights=point_weights).to(device)
        renderer = MeshRenderer(face_model, PinholeCamera().resized(crop_size, crop_size)).to(device)
        return cls(renderer, loss, settings, init)

    def start(self, crops: CropBatch) -> Predicted | None:
        """The ``init`` predictor's answer for ``crops`` (run at its own crop size), or None without one."""
        if self.init is None:
            return None
        return self.init.predict(crops.resized(int(self.init.renderer.camera.image_size[0])))

    def predict(self, crops: CropBatch) -> Predicted:
        first = self.start(crops)
        details = {} if first is None else {"init_seconds": first.details.get("seconds", 0.0)}
        result = fit_coefficients(
            crops.images,
            crops.landmarks,
            crops.skin,
            self.renderer,
            self.loss,
            self.settings,
            init=None if first is None else first.coeffs,
        )
        self.last_result = result
        details["seconds"] = result.seconds + details.get("init_seconds", 0.0)
        details.update({f"loss/{k}": v for k, v in result.final_losses().items() if not k.startswith("raw/")})
        return Predicted(result.coeffs, details)


def _check_same_view(init: MeshRenderer, fit: MeshRenderer) -> None:
    """Raise InvalidInputError unless coefficients of ``init`` mean the same under ``fit``: one coefficient layout and one
    camera up to the crop's resolution."""
    if init.face_model.layout != fit.face_model.layout:
        raise InvalidInputError(
            f"the fit cannot start from a predictor of another face model (its coefficients {init.face_model.layout}, "
            f"the fit's {fit.face_model.layout}); build the fit with the predictor's face model"
        )
    seen = init.camera.resized(*fit.camera.image_size)
    numbers = (seen.focal, *seen.principal_point, seen.camera_distance)
    wanted = (fit.camera.focal, *fit.camera.principal_point, fit.camera.camera_distance)
    if not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(numbers, wanted)):
        raise InvalidInputError(
            f"the fit's camera {fit.camera} is not the starting predictor's {init.camera} at another resolution; "
            "build the fit with PinholeCamera().resized(size, size) of the predictor's camera"
        )


@dataclass(frozen=True)
class ImageJob:
    """One input: ``source`` the file, ``key`` its output folder name under out_dir (posix, unique)."""

    source: Path
    key: str


@dataclass(frozen=True)
class ReconstructionSummary:
    """What `reconstruct_images` did.

    records:       one dict per input, in input order (the lines of report.jsonl).
    status_counts: status -> number of images.
    out_dir:       the output folder.
    seconds:       wall time of the run.
    """

    records: tuple[dict, ...]
    status_counts: dict[str, int]
    out_dir: Path
    seconds: float

    @property
    def n_ok(self) -> int:
        return self.status_counts.get(OK, 0)

    @property
    def n_failed(self) -> int:
        return len(self.records) - self.n_ok


def collect_images(paths: list[str | Path], exclude: Path | None = None) -> list[ImageJob]:
    """Expand files and folders into jobs with unique output keys, in the order given (folders sorted).

    A path that does not exist still becomes a job (it is reported as unreadable, with the others
    processed). Files inside folders are keyed by their path relative to the folder; files given
    directly by their name; clashes get ``-2``, ``-3``... appended. ``exclude``: a folder not to search
    (the output folder, whose PNGs would otherwise be read as photos when it lies inside an input folder).
    """
    found: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            relatives, _ = list_images(path, exclude=exclude)
            found.extend((path / rel, rel) for rel in relatives)
        else:
            found.append((path, path.name or str(path)))
    jobs, used = [], set()
    for source, key in found:
        unique, n = key, 1
        while unique in used:
            n += 1
            unique = f"{key}-{n}"
        used.add(unique)
        jobs.append(ImageJob(source, unique))
    return jobs


def make_reconstruction(
    renderer: MeshRenderer,
    coeffs: Coefficients,
    aligned: AlignedFace,
    image_size: tuple[int, int],
    source: np.ndarray | None = None,
    overlay_size: int = OVERLAY_PANEL,
) -> Reconstruction:
    """Render one image's coefficients (batch 1) and gather what the writers need.

    source: the (H, W, 3) uint8 photo the crop was aligned from; the overlay's input panel is re-sampled
    from it at ``overlay_size`` (sharper than the enlarged crop, which is used without it).
    overlay_size: side of the overlay panels (at least the crop's).
    """
    model = renderer.face_model
    crop_size = int(renderer.camera.image_size[0])
    panel = max(int(overlay_size), crop_size)
    if source is not None:
        # Pixel centres at +0.5: the panel is the crop scaled by panel / crop_size, a pure scale of the warp.
        panel_image, _ = warp_image(
            source, np.asarray(aligned.transform, np.float64) * (panel / crop_size), (panel, panel)
        )
    else:
        panel_image = aligned.crop
    with torch.no_grad():
        render = renderer(coeffs)
        vertices = model.shape(coeffs)
        views = render_overlay_views(renderer, coeffs, panel_image, aligned.landmarks68, panel)
    coeffs = coeffs.detach().to("cpu")
    return Reconstruction(
        coeffs=coeffs,
        layout=model.layout,
        face_model_name=model.name,
        vertices_model=vertices[0].cpu().double().numpy(),
        vertices_camera=render.vertices_camera[0].cpu().double().numpy(),
        triangles=model.triangles.cpu().numpy(),
        albedo=render.albedo[0].cpu().double().numpy(),
        shaded=render.vertex_colors[0].cpu().double().numpy(),
        landmarks=render.landmarks[0].cpu().double().numpy(),
        detected=np.asarray(aligned.landmarks68, np.float64),
        crop=aligned.crop,
        render=render.image[0].permute(1, 2, 0).cpu().double().numpy(),
        mask=render.mask[0, 0].cpu().numpy() > 0.5,
        transform=np.asarray(aligned.transform, np.float64),
        image_size=(int(image_size[0]), int(image_size[1])),
        camera=renderer.camera,
        views=views,
    )


def _reason_from(err: Exception) -> str:
    last = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    where = f" ({Path(last.filename).name}:{last.lineno})" if last else ""
    return f"{type(err).__name__}: {err}{where}"


def reconstruct_images(
    paths: list[str | Path],
    out_dir: str | Path,
    predictor: Predictor,
    *,
    detector: str = DEFAULT_DETECTOR,
    options: ExportOptions = ExportOptions(),
    limits: DivergenceLimits = DivergenceLimits(),
    on_record: Callable[[dict], None] | None = None,
) -> ReconstructionSummary:
    """Reconstruct every face photo under ``paths`` into ``out_dir`` (see the module docstring).

    Args:
        paths: image files and/or folders (searched recursively for image extensions).
        out_dir: output folder (created).
        predictor: `RNetPredictor`, `FittingPredictor` or any `Predictor`.
        detector: face detector + landmarks, `preprocessing.detect.DETECTORS` (dlib-cascade by default: HOG,
            then MMOD where HOG finds nothing).
        options: units, PLY encoding, texture size.
        limits: when a prediction counts as diverged (reported, nothing written).
        on_record: called with each image's record as soon as it is done (e.g. to print a line).

    Returns:
        `ReconstructionSummary`. Raises only for problems of the whole run (a detector that cannot be
        built, an output folder that cannot be written); per-image problems are records.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    renderer = predictor.renderer
    camera = renderer.camera
    crop_size = int(camera.image_size[0])
    if camera.image_size[0] != camera.image_size[1]:
        raise ValueError(f"the predictor's camera draws {camera.image_size} images; aligned crops are square")
    config = PrepareConfig(detector=detector, crop_size=crop_size, workers=0)
    template = template_from_face_model(renderer.face_model, camera)
    face_detector = make_detector(detector, upsample=config.resolved_upsample)
    device = renderer.face_model.mean_shape.device
    uv_layout = _uv_layout_for(renderer.face_model)

    jobs = collect_images(paths, exclude=out_dir)
    records: list[dict] = []
    report_path = out_dir / REPORT_NAME
    with report_path.open("w") as report:
        for job in jobs:
            record = _reconstruct_one(
                job, out_dir, predictor, face_detector, template, config, device, options, uv_layout, limits
            )
            records.append(record)
            report.write(json.dumps(record, sort_keys=True) + "\n")
            report.flush()
            if on_record is not None:
                on_record(record)

    counts = Counter(record["status"] for record in records)
    summary = ReconstructionSummary(
        records=tuple(records),
        status_counts={status: counts[status] for status in REPORT_STATUSES if counts[status]},
        out_dir=out_dir,
        seconds=time.perf_counter() - start,
    )
    (out_dir / SUMMARY_NAME).write_text(
        json.dumps(
            {
                "predictor": predictor.name,
                "face_model": renderer.face_model.name,
                "crop_size": crop_size,
                "detector": detector,
                "units": options.units,
                "n_images": len(records),
                "status_counts": summary.status_counts,
                "seconds": round(summary.seconds, 3),
                "report": REPORT_NAME,
            },
            indent=2,
        )
        + "\n"
    )
    return summary


def _uv_layout_for(face_model: FaceModel) -> UVLayout | None:
    if face_model.name != "ict":
        return None
    return ict_uv_layout(face_model.triangles.cpu().numpy(), face_model.n_vertices)


def _reconstruct_one(
    job: ImageJob,
    out_dir: Path,
    predictor: Predictor,
    face_detector: FaceDetector,
    template: np.ndarray,
    config: PrepareConfig,
    device: torch.device,
    options: ExportOptions,
    uv_layout: UVLayout | None,
    limits: DivergenceLimits = DivergenceLimits(),
) -> dict:
    """Process one image into its record; every exception becomes a status, so a run never stops."""
    start = time.perf_counter()
    record: dict = {"source": str(job.source), "key": job.key, "predictor": predictor.name}

    def finish(status: str, reason: str | None) -> dict:
        record.update(status=status, reason=reason, seconds=round(time.perf_counter() - start, 3))
        return record

    try:
        data = job.source.read_bytes()
    except OSError as err:
        return finish(UNREADABLE, f"cannot read file: {type(err).__name__}: {err}")
    try:
        result = process_image(data, face_detector, template, config)
    except Exception as err:  # noqa: BLE001 - one broken image (or a library bug on it) must not end the run
        return finish(ERROR, _reason_from(err))
    if result.image is not None:
        record["image_size"] = list(result.image.rgb.shape[:2])
    if result.n_faces is not None:
        record["n_faces"] = result.n_faces
    if result.detection is not None:
        record.update(detected_by=result.detection.detector, detect_seconds=round(result.detection.seconds, 4))
    if result.status != OK:
        return finish(result.status, result.reason)
    record["align_scale"] = round(float(result.aligned.scale), 4)
    try:
        predicted = predictor.predict(CropBatch.from_aligned(result.aligned, result.skin, device))
        record["details"] = {k: _rounded(v, 5) for k, v in predicted.details.items()}
        recon = make_reconstruction(
            predictor.renderer,
            predicted.coeffs,
            result.aligned,
            result.image.rgb.shape[:2],
            result.image.rgb,
            options.overlay_size,
        )
        checks = prediction_checks(
            predicted.coeffs, recon.landmarks, recon.detected, recon.crop.shape[0], predicted.details
        )
        record["checks"] = {k: _rounded(v, 4) for k, v in checks.items()}
        reasons = divergence_reasons(checks, predicted.details, limits)
        if reasons:
            return finish(DIVERGED, "; ".join(reasons))
        folder = out_dir / job.key
        written = write_atomically(folder, lambda partial: write_reconstruction(partial, recon, options, uv_layout))
    except Exception as err:  # noqa: BLE001 - as above; the report keeps the reason
        return finish(ERROR, _reason_from(err))
    record.update(
        output_dir=str(folder),
        files={
            key: (folder / path.relative_to(partial_folder(folder))).relative_to(out_dir).as_posix()
            for key, path in written.items()
        },
        landmark_error_px=round(checks["landmark_error_px"], 3),
    )
    return finish(OK, None)


def _rounded(value: float, digits: int) -> float | None:
    """JSON has no NaN or infinity: such values are reported as null."""
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def partial_folder(folder: Path) -> Path:
    """The hidden sibling an output folder is written into before it is renamed into place."""
    return folder.with_name(f".{folder.name}{_PARTIAL_SUFFIX}")


def write_atomically(folder: str | Path, write: Callable[[Path], T]) -> T:
    """Run ``write(partial)`` on an empty hidden sibling folder of ``folder`` (`partial_folder`) and rename it
    onto ``folder`` once ``write`` returns, so ``folder`` is either absent, the previous complete result, or
    the new complete one; never half-written. A previous ``folder`` is replaced; on an exception the partial
    folder is removed and the exception re-raised (``folder`` untouched). Returns what ``write`` returned
    (paths in it point into the partial folder: map them with ``relative_to(partial_folder(folder))``)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_folder(folder)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        result = write(partial)
        _fsync_folder(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if folder.exists():
        # rename() replaces only an empty folder: move the old result aside, then drop it.
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(partial, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, folder)
    return result


def _fsync_folder(folder: Path) -> None:
    """Flush the files' data before the rename publishes them (a crash must not leave renamed empty files)."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
