"""The licensed evaluation datasets in ``face3d benchmark``: each configured one is run through its protocol,
each missing one leaves a one-line note.

A dataset is configured by ``FACE3D_DATA_<NAME>`` or ``benchmarks/datasets/paths.yaml`` (`benchmarks.datasets.paths`);
layouts and protocols are documented in the loaders (`benchmarks.datasets`). Pictures go through ``face3d prepare``'s
preprocessing (detection, 68 landmarks, alignment onto the checkpoint's crop; `reconstruction.sets.align_pictures`)
and then R-Net (`RNetPicturePredictor`); pictures without a usable face are counted, not fatal. Per dataset:

* MICC Florence: per subject and video setting, the neutral shape of the identity averaged over the frames
  (every 10th frame, at most 30; or the extracted frames under ``frames_root``), `scan_to_mesh` against the
  neutral ``frontal1`` scan (95 mm crop around the nose tip, ICP with scale, point-to-plane); one value per subject.
* BU-3DFE: the neutral F2D picture of every subject, the same `scan_to_mesh` protocol; one value per subject.
* FaceWarehouse: each training-pose picture, the shape WITH its expression (no pose), `region_point_to_point`
  against the pose's mesh. The paper's small/large regions are defined on BFM and not shipped, so the region is
  the whole predicted face; one value per picture.
* NoW (validation): each picture, the uncropped neutral shape and its 7 landmarks, `now_scan_to_mesh`; distances
  pooled over all scan points of all pictures, as NoW reports them.

The crop centre for MICC and BU-3DFE is an annotated nose tip where the data has one, else the prediction's nose
tip vertex (iBUG landmark 30) mapped through the current alignment, which starts from the centroids (the scans'
axes are assumed to match the model's: y up, z towards the viewer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from benchmarks.datasets import DatasetFormatError, open_bu3dfe, open_facewarehouse, open_micc, open_now
from benchmarks.datasets.paths import PATHS_FILE
from face_model.coefficients import Coefficients
from metrics import (
    DM_TO_MM,
    NOW_LANDMARKS_68,
    ErrorStats,
    now_scan_to_mesh,
    region_point_to_point,
    scan_to_mesh,
    summarise,
)
from preprocessing.detect import DEFAULT_DETECTOR

DATASETS = ("micc", "facewarehouse", "bu3dfe", "now")
TITLES = {"micc": "MICC Florence", "facewarehouse": "FaceWarehouse", "bu3dfe": "BU-3DFE", "now": "NoW (validation)"}
NOSE_TIP_68 = 30
MICC_EVERY = 10
MICC_MAX_FRAMES = 30


class PicturePredictor(Protocol):
    """Turns encoded pictures into coefficients: ``predict`` returns the coefficients of the pictures with a
    usable face (a batch, or None when there is none) and the (name, reason) of the others."""

    face_model: torch.nn.Module

    def predict(self, sources: Sequence[tuple[str, bytes]]) -> tuple[Coefficients | None, list[tuple[str, str]]]: ...


class RNetPicturePredictor:
    """``face3d prepare``'s preprocessing onto the checkpoint's crop, then R-Net (`PicturePredictor`).

    Args:
        rnet_module: an `RNetModule` (its ``rnet`` and ``renderer``: face model and crop camera).
        detector: face detector and landmarks (`preprocessing.detect.DETECTORS`).
        device: where R-Net runs.
    """

    def __init__(self, rnet_module, detector: str = DEFAULT_DETECTOR, device: str | torch.device = "cpu") -> None:
        from preprocessing.align import template_from_face_model
        from preprocessing.config import PrepareConfig
        from preprocessing.detect import make_detector

        camera = rnet_module.renderer.camera
        self.rnet = rnet_module.rnet.to(device).eval()
        self.face_model = rnet_module.face_model
        self.device = torch.device(device)
        self.config = PrepareConfig(detector=detector, crop_size=int(camera.image_size[0]), workers=0)
        self.template = template_from_face_model(self.face_model, camera)
        self.detector = make_detector(detector, upsample=self.config.resolved_upsample)

    @torch.no_grad()
    def predict(self, sources: Sequence[tuple[str, bytes]]) -> tuple[Coefficients | None, list[tuple[str, str]]]:
        from reconstruction.sets import align_pictures

        aligned = align_pictures(sources, self.detector, self.template, self.config)
        if not aligned.pictures:
            return None, aligned.skipped
        crops = np.stack([p.crop for p in aligned.pictures]).transpose(0, 3, 1, 2)
        images = torch.from_numpy(np.ascontiguousarray(crops)).float().div(255.0).to(self.device)
        coeffs = self.rnet(images).coeffs.to(torch.float32)
        return coeffs, aligned.skipped


@dataclass(frozen=True)
class DatasetRow:
    """One line of a dataset's table: ``stats`` in mm over ``level`` values (subjects, pictures, scan points)."""

    label: str
    level: str
    stats: ErrorStats

    def as_dict(self) -> dict:
        return {
            "label": self.label,
            "level": self.level,
            "mean_mm": self.stats.mean,
            "std_mm": self.stats.std,
            "median_mm": self.stats.median,
            "count": self.stats.count,
        }


@dataclass(frozen=True)
class DatasetResult:
    """A dataset's outcome: ``rows`` when it ran, the loader's one-line ``note`` (where it is, or why it was
    skipped), and the items that failed with their reason (no face, an alignment error)."""

    name: str
    note: str
    rows: tuple[DatasetRow, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    skipped: bool = False

    @property
    def title(self) -> str:
        return TITLES.get(self.name, self.name)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "note": self.note,
            "skipped": self.skipped,
            "rows": [row.as_dict() for row in self.rows],
            "failed": [list(f) for f in self.failed],
        }


def _mesh_mm(face_model, coeffs: Coefficients, keep_expression: bool) -> np.ndarray:
    """(V, 3) mm shape of the mean identity of ``coeffs`` (shape averaging over the batch), with zero expression
    unless ``keep_expression`` (then one picture's expression; the batch must hold one picture)."""
    identity = coeffs.identity.mean(0, keepdim=True)
    zeros = face_model.layout.zeros(1, device=identity.device)
    expression = coeffs.expression[:1] if keep_expression else zeros.expression
    with torch.no_grad():
        shape = face_model.shape(zeros.replace(identity=identity, expression=expression))
    return shape[0].double().cpu().numpy() * DM_TO_MM


def _read(paths: Iterable[Path]) -> list[tuple[str, bytes]]:
    return [(Path(p).name, Path(p).read_bytes()) for p in paths]


def _stats_rows(values: Mapping[str, list[float]], level: str) -> tuple[DatasetRow, ...]:
    return tuple(DatasetRow(label, level, summarise(v)) for label, v in values.items() if v)


def evaluate_micc(
    dataset,
    predictor: PicturePredictor,
    limit: int | None = None,
    every: int = MICC_EVERY,
    max_frames: int = MICC_MAX_FRAMES,
) -> tuple[tuple[DatasetRow, ...], list[tuple[str, str]]]:
    """Rows per video setting (mean error of each subject) and the failures (see the module docstring)."""
    from benchmarks.datasets.micc import SETTINGS
    from reconstruction.sets import frames_from_video

    faces = predictor.face_model.triangles.cpu().numpy()
    nose = int(predictor.face_model.landmark_ids[NOSE_TIP_68])
    per_setting: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    failed = []
    for sample in islice(dataset, limit):
        for setting in SETTINGS:
            item = f"{sample.subject}/{setting}"
            if setting in sample.frames:
                sources = _read(sample.frames[setting][::every][:max_frames])
            elif setting in sample.videos:
                sources = list(frames_from_video(sample.videos[setting], every, max_frames))
            else:
                continue
            try:
                coeffs, _ = predictor.predict(sources)
                if coeffs is None:
                    failed.append((item, f"no usable face in any of {len(sources)} frames"))
                    continue
                mesh = _mesh_mm(predictor.face_model, coeffs, keep_expression=False)
                errors = scan_to_mesh(
                    sample.vertices, mesh, faces, crop_center=sample.nose_tip(), mesh_crop_center=mesh[nose]
                )
            except ValueError as error:
                failed.append((item, str(error)))
                continue
            per_setting[setting].append(errors.stats.mean)
    return _stats_rows(per_setting, "subject"), failed


def evaluate_bu3dfe(
    dataset, predictor: PicturePredictor, limit: int | None = None
) -> tuple[tuple[DatasetRow, ...], list[tuple[str, str]]]:
    """One row: the mean error of each subject's neutral F2D picture (see the module docstring)."""
    faces = predictor.face_model.triangles.cpu().numpy()
    nose = int(predictor.face_model.landmark_ids[NOSE_TIP_68])
    values, failed = [], []
    for sample in islice(dataset, limit):
        try:
            coeffs, skipped = predictor.predict(_read([sample.image_path]))
            if coeffs is None:
                failed.append((sample.subject, skipped[0][1] if skipped else "no usable face"))
                continue
            mesh = _mesh_mm(predictor.face_model, coeffs, keep_expression=False)
            errors = scan_to_mesh(sample.vertices, mesh, faces, mesh_crop_center=mesh[nose])
        except ValueError as error:
            failed.append((sample.subject, str(error)))
            continue
        values.append(errors.stats.mean)
    return _stats_rows({"neutral face (NE00), frontal F2D picture": values}, "subject"), failed


def evaluate_facewarehouse(
    dataset, predictor: PicturePredictor, limit: int | None = None
) -> tuple[tuple[DatasetRow, ...], list[tuple[str, str]]]:
    """One row: the mean error of each picture, whole predicted face (see the module docstring)."""
    everything = np.arange(predictor.face_model.n_vertices)
    values, failed = [], []
    for sample in islice(dataset, limit):
        item = f"{sample.subject}/pose_{sample.pose}"
        try:
            coeffs, skipped = predictor.predict(_read([sample.image_path]))
            if coeffs is None:
                failed.append((item, skipped[0][1] if skipped else "no usable face"))
                continue
            mesh = _mesh_mm(predictor.face_model, coeffs, keep_expression=True)
            errors = region_point_to_point(mesh, sample.vertices, everything)
        except ValueError as error:
            failed.append((item, str(error)))
            continue
        values.append(errors.stats.mean)
    return _stats_rows({"whole predicted face, expression kept": values}, "picture"), failed


def evaluate_now(
    dataset, predictor: PicturePredictor, limit: int | None = None
) -> tuple[tuple[DatasetRow, ...], list[tuple[str, str]]]:
    """Rows over all pictures and per challenge: scan-point distances pooled over pictures (NoW's convention)."""
    faces = predictor.face_model.triangles.cpu().numpy()
    ids = predictor.face_model.landmark_ids.cpu().numpy()[list(NOW_LANDMARKS_68)]
    pooled: dict[str, list[np.ndarray]] = {"all challenges": []}
    failed = []
    for sample in islice(dataset, limit):
        item = sample.image.relative
        try:
            coeffs, skipped = predictor.predict(_read([sample.image.image_path]))
            if coeffs is None:
                failed.append((item, skipped[0][1] if skipped else "no usable face"))
                continue
            mesh = _mesh_mm(predictor.face_model, coeffs, keep_expression=False)
            errors = now_scan_to_mesh(sample.scan.vertices, sample.scan.landmarks, mesh, faces, mesh[ids])
        except ValueError as error:
            failed.append((item, str(error)))
            continue
        pooled["all challenges"].append(errors.distances)
        pooled.setdefault(sample.image.challenge, []).append(errors.distances)
    return tuple(
        DatasetRow(label, "scan point", summarise(np.concatenate(parts))) for label, parts in pooled.items() if parts
    ), failed


_OPEN = {"micc": open_micc, "facewarehouse": open_facewarehouse, "bu3dfe": open_bu3dfe, "now": open_now}
_EVALUATE = {
    "micc": evaluate_micc,
    "facewarehouse": evaluate_facewarehouse,
    "bu3dfe": evaluate_bu3dfe,
    "now": evaluate_now,
}


@dataclass(frozen=True)
class DatasetSettings:
    """Which licensed datasets to try and where their roots are looked up.

    names: datasets to try (`DATASETS`); limit: at most this many samples each (None: all);
    paths_file / environ: as `benchmarks.datasets.paths.locate` (None environ: the process environment).
    """

    names: tuple[str, ...] = DATASETS
    limit: int | None = None
    paths_file: str | Path | None = PATHS_FILE
    environ: Mapping[str, str] | None = field(default=None, compare=False)


def evaluate_datasets(
    settings: DatasetSettings, predictor_factory: Callable[[], PicturePredictor], log: Callable[[str], None] = print
) -> list[DatasetResult]:
    """Every dataset of ``settings``: run when configured (the predictor is built on first need), else a skip note.
    A dataset whose files do not match its documented layout is reported with the loader's error, not raised."""
    unknown = [name for name in settings.names if name not in DATASETS]
    if unknown:
        raise ValueError(f"unknown datasets {unknown}; choose from {list(DATASETS)}")
    results, predictor = [], None
    for name in settings.names:
        try:
            opened = _OPEN[name](paths_file=settings.paths_file, environ=settings.environ)
        except DatasetFormatError as error:
            results.append(DatasetResult(name, f"not evaluated, {error}", skipped=True))
            continue
        # The loaders' notes start with the dataset's name, which the report already shows.
        note = opened.note.removeprefix(f"{name}: ")
        if not opened:
            results.append(DatasetResult(name, f"{note} (see README, Evaluation datasets)", skipped=True))
            continue
        log(f"evaluating {TITLES[name]}: {note}")
        predictor = predictor or predictor_factory()
        try:
            rows, failed = _EVALUATE[name](opened.dataset, predictor, settings.limit)
        except DatasetFormatError as error:
            results.append(DatasetResult(name, f"stopped, {error}", skipped=True))
            continue
        results.append(DatasetResult(name, note, rows, tuple(failed)))
    return results
