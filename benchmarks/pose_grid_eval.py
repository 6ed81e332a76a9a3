"""Scoring the synthetic 20-pose protocol (`benchmarks.pose_grid`): methods, table rows, error-vs-yaw plot.

Every error is the shape error of a NEUTRAL identity shape against the ground-truth identity shape, after rigid
alignment, in mm (`metrics.vertex_error` with "rigid"). Methods:

* ``mean_face``: the model's mean shape (no reconstruction at all), one value per identity repeated for its
  pictures;
* ``rnet``: R-Net on each picture alone (its identity coefficients);
* ``averaging``: the mean of R-Net's identity coefficients over an identity's pictures (shape averaging);
* ``s1`` / ``s4``: C-Net aggregation of the same identities (when a C-Net checkpoint trained on this R-Net is
  given);
* ``fit`` and ``rnet_fit_subset``: analysis-by-synthesis (`reconstruction.fit.fit_coefficients` with the objective
  and settings of ``face3d reconstruct --fit``, a `reconstruction.pipeline.FittingPredictor`, started where it
  starts: from its ``init`` predictor's answer, the R-Net, or else from the mean face)
  on a subset of pictures covering every yaw, and R-Net on the same pictures for a paired comparison;
* ``fit_set`` and ``fit_averaging``: the same pictures grouped by identity, fitted together with one shared
  identity (`fit_coefficients(..., shared=("identity",))`), and the mean of the single-picture fits' identities.

Every row is also read as a share of the possible gain, ``(mean face - method) / (mean face - ceiling)``. The
ceiling is the face model fitted to the true shape in 3D; here the truth is itself a face-model identity, so the
ceiling is 0 mm and the share is the fraction of the mean face's error a method removes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.ceiling import share_of_gain as ceiling_share
from benchmarks.cnet_analysis import collect_set_evaluation, neutral_shape, strategy_errors
from benchmarks.pose_grid import PoseGridDataset, fit_subset, pose_grid
from datamodules.image_sets import collate_image_sets
from metrics import ErrorStats, summarise, vertex_error

METHODS = (
    ("mean_face", "mean face (no reconstruction)", "picture"),
    ("rnet", "R-Net, single image", "picture"),
    ("averaging", "R-Net + shape averaging (mean identity of the 20 pictures)", "identity"),
    ("s1", "R-Net + C-Net S1 (global confidence) over the 20 pictures", "identity"),
    ("s4", "R-Net + C-Net S4 (element-wise confidences) over the 20 pictures", "identity"),
    ("rnet_fit_subset", "R-Net, single image, on the fitted subset", "picture"),
    ("fit", "fitting (analysis-by-synthesis), single image", "picture"),
    ("fit_averaging", "fitting, mean identity of an identity's single-image fits", "identity"),
    ("fit_set", "fitting, one identity shared by an identity's fitted pictures", "identity"),
)
"""(key, name, level) of every method, in table order; ``level`` says what one error value is."""

_COLOURS = {
    "mean_face": "grey",
    "rnet": "tab:blue",
    "averaging": "tab:green",
    "s1": "tab:purple",
    "s4": "tab:red",
    "rnet_fit_subset": "tab:cyan",
    "fit": "tab:orange",
    "fit_averaging": "tab:olive",
    "fit_set": "tab:brown",
}

CEILING_MM = 0.0
"""The model's ceiling on this protocol: the truth is a face-model identity, so fitting it in 3D is exact."""


@dataclass(frozen=True)
class MethodRow:
    """One line of the accuracy table: ``stats`` over pictures or identities (``level``), in mm."""

    key: str
    name: str
    level: str
    stats: ErrorStats

    share_of_gain: float | None = None
    """(mean face - this row) / (mean face - ceiling), both on the same pictures (identities)."""

    @property
    def standard_error(self) -> float:
        return self.stats.std / max(self.stats.count, 1) ** 0.5

    def as_dict(self) -> dict:
        return {
            "key": self.key,
            "name": self.name,
            "level": self.level,
            "mean_mm": self.stats.mean,
            "std_mm": self.stats.std,
            "standard_error_mm": self.standard_error,
            "median_mm": self.stats.median,
            "count": self.stats.count,
            "share_of_gain": self.share_of_gain,
        }


@dataclass(frozen=True, eq=False)
class PoseGridResult:
    """Errors of every method on the pose grid (mm), and what the report needs.

    protocol:        the dataset's parameters (`PoseGridDataset.describe`) plus the fit settings
    identity:        (M,) identity of each picture, M = identities x 20, pictures in dataset order
    pitch_deg, yaw_deg: (M,) the picture's pose
    picture_errors:  picture-level method -> (M,) errors, NaN for pictures a method did not run on (fit)
    identity_errors: identity-level method -> (N,) errors, plus "mean_face"
    rows:            the table, in `METHODS` order, for the methods that ran
    notes:           one line per method left out, and why
    fit_seconds:     wall time of the fit per picture (a timing: reported with the speed rows only)
    """

    protocol: dict
    identity: np.ndarray
    pitch_deg: np.ndarray
    yaw_deg: np.ndarray
    picture_errors: dict[str, np.ndarray]
    identity_errors: dict[str, np.ndarray]
    rows: tuple[MethodRow, ...]
    notes: tuple[str, ...] = ()
    fit_seconds: float | None = None

    def accuracy_dict(self) -> dict:
        """Everything deterministic (no timing), as plain JSON types."""
        return {
            "protocol": self.protocol,
            "rows": [row.as_dict() for row in self.rows],
            "per_yaw": per_yaw_table(self)[1],
            "pictures": {
                "identity": self.identity.tolist(),
                "pitch_deg": self.pitch_deg.tolist(),
                "yaw_deg": self.yaw_deg.tolist(),
                **{
                    key: [None if np.isnan(v) else float(v) for v in values]
                    for key, values in self.picture_errors.items()
                },
            },
            "identities": {key: values.tolist() for key, values in self.identity_errors.items()},
            "notes": list(self.notes),
        }


def share_of_gain(mean_face: np.ndarray, method: np.ndarray, ceiling: float = CEILING_MM) -> float | None:
    """`benchmarks.ceiling.share_of_gain` of the mean errors over the entries both arrays have (NaN = missing);
    None when there are none or the mean face is already at the ceiling."""
    keep = ~np.isnan(method) & ~np.isnan(mean_face)
    if not keep.any():
        return None
    return ceiling_share(float(mean_face[keep].mean()), float(method[keep].mean()), ceiling)


def rows_from(
    picture_errors: Mapping[str, np.ndarray], identity_errors: Mapping[str, np.ndarray]
) -> tuple[MethodRow, ...]:
    """Table rows of the methods present, in `METHODS` order (NaN entries = pictures a method skipped), each with
    its share of the possible gain against the mean face on the same entries."""
    rows = []
    for key, name, level in METHODS:
        source = picture_errors if level == "picture" else identity_errors
        if key in source:
            values = np.asarray(source[key], float)
            present = values[~np.isnan(values)]
            if present.size:
                share = share_of_gain(np.asarray(source["mean_face"], float), values) if "mean_face" in source else None
                rows.append(MethodRow(key, name, level, summarise(present), share))
    return tuple(rows)


def evaluate_pose_grid(
    dataset: PoseGridDataset,
    modules: Mapping[str, torch.nn.Module],
    fitter=None,
    fit_count: int = 0,
    fit_dataset: PoseGridDataset | None = None,
    device: str | torch.device = "cpu",
    sets_per_batch: int = 2,
    notes: Sequence[str] = (),
) -> PoseGridResult:
    """Run every method on ``dataset`` and score it.

    Args:
        dataset: the pose grid.
        modules: strategy -> `lightning_modules.cnet_module.CNetModule`, all on the same R-Net: "mean" (shape
            averaging, no C-Net) first, then optionally "s4" or "s1" with their trained C-Nets.
        fitter: a `reconstruction.pipeline.FittingPredictor` (renderer at the fitting crop size, objective and
            settings of ``face3d reconstruct --fit``); needed when ``fit_count`` > 0.
        fit_count: pictures fitted by analysis-by-synthesis (`benchmarks.pose_grid.fit_subset`); 0 for none.
        fit_dataset: the same grid rendered at the fitter's crop size (same seed and identities); default
            ``dataset``.
        device: where to run.
        sets_per_batch: identities per R-Net batch (20 pictures each).
        notes: lines carried into the result (methods left out by the caller).
    """
    if "mean" not in modules or next(iter(modules)) != "mean":
        raise ValueError("modules must start with the 'mean' strategy (plain R-Net, shape averaging)")
    dataset.materialise()
    loader = DataLoader(dataset, batch_size=sets_per_batch, shuffle=False, collate_fn=collate_image_sets)
    evaluation = collect_set_evaluation(modules, loader, device=device)
    face_model = modules["mean"].face_model.to(device)
    errors = strategy_errors(evaluation, face_model)
    n_sets, set_size = evaluation.valid.shape
    pitch, yaw = pose_grid(dataset.pitches_deg, dataset.yaws_deg)
    identity_index = np.repeat(np.arange(n_sets), set_size)

    identity_errors = {"mean_face": errors["mean_face"], "averaging": errors["mean"]}
    identity_errors.update({key: errors[key] for key in ("s1", "s4") if key in errors})
    picture_errors = {"mean_face": identity_errors["mean_face"][identity_index], "rnet": errors["per_image"]}

    fit_seconds = None
    subset = fit_subset(n_sets, fit_count, dataset.pitches_deg, dataset.yaws_deg)
    if subset:
        if fitter is None:
            raise ValueError("fitting needs a FittingPredictor; pass fitter=")
        fit_dataset = fit_dataset if fit_dataset is not None else dataset
        single, per_set, averaged, fit_seconds = _fit_errors(fit_dataset, subset, fitter, evaluation.truth_vertices)
        positions = np.array([i * set_size + j for i, j in subset])
        picture_errors["fit"] = np.full(len(identity_index), np.nan)
        picture_errors["fit"][positions] = single
        picture_errors["rnet_fit_subset"] = np.full(len(identity_index), np.nan)
        picture_errors["rnet_fit_subset"][positions] = errors["per_image"][positions]
        for key, values in (("fit_set", per_set), ("fit_averaging", averaged)):
            identity_errors[key] = np.full(n_sets, np.nan)
            for i, value in values.items():
                identity_errors[key][i] = value

    protocol = dataset.describe()
    protocol["ceiling_mm"] = CEILING_MM
    if subset:
        protocol["fit"] = {
            "pictures": [
                {"identity": i, "picture": j, "pitch_deg": float(pitch[j]), "yaw_deg": float(yaw[j])} for i, j in subset
            ],
            "settings": dataclasses.asdict(fitter.settings),
            "weights": dataclasses.asdict(fitter.loss.weights),
            "crop_size": int(fitter.renderer.camera.image_size[0]),
            "objective": "the objective of `face3d reconstruct --fit`",
            "start": "mean face" if getattr(fitter, "init", None) is None else f"{fitter.init.name}'s prediction",
        }
    return PoseGridResult(
        protocol=protocol,
        identity=identity_index,
        pitch_deg=np.tile(pitch, n_sets),
        yaw_deg=np.tile(yaw, n_sets),
        picture_errors=picture_errors,
        identity_errors=identity_errors,
        rows=rows_from(picture_errors, identity_errors),
        notes=tuple(notes),
        fit_seconds=fit_seconds,
    )


def _fit_errors(
    dataset: PoseGridDataset, subset: list[tuple[int, int]], fitter, truth: torch.Tensor
) -> tuple[np.ndarray, dict[int, float], dict[int, float], float]:
    """Fit the subset's pictures one by one (as one batch: pictures do not interact, see `reconstruction.fit`),
    then each identity's pictures with one shared identity.

    Returns (K,) single-picture errors in mm, identity -> error of the shared-identity fit, identity -> error of
    the mean single-picture identity, and the wall time of a single-picture fit per picture.
    """
    from reconstruction.fit import fit_coefficients

    device = fitter.renderer.face_model.mean_shape.device
    samples = {i: dataset[i] for i in sorted({i for i, _ in subset})}

    def stack(key: str, pairs) -> torch.Tensor:
        return torch.stack([samples[i][key][j] for i, j in pairs]).to(device)

    def score(identity: torch.Tensor, identities: list[int]) -> np.ndarray:
        with torch.no_grad():
            shapes = neutral_shape(fitter.renderer.face_model, identity)
            return vertex_error(shapes, truth[identities].to(shapes)).cpu().numpy()

    from reconstruction.pipeline import CropBatch

    crops = CropBatch(stack("images", subset), stack("landmarks", subset), stack("skin", subset))
    result = fitter.predict(crops)
    fitter_seconds = result.details["seconds"]
    single = score(result.coeffs.identity, [i for i, _ in subset])
    per_set, averaged = {}, {}
    for identity in samples:
        pairs = [(i, j) for i, j in subset if i == identity]
        rows = [k for k, (i, _) in enumerate(subset) if i == identity]
        averaged[identity] = float(score(result.coeffs.identity[rows].mean(0, keepdim=True), [identity])[0])
        if len(pairs) < 2:
            continue
        group = CropBatch(stack("images", pairs), stack("landmarks", pairs), stack("skin", pairs))
        first = fitter.start(group)
        together = fit_coefficients(
            group.images,
            group.landmarks,
            group.skin,
            fitter.renderer,
            fitter.loss,
            fitter.settings,
            init=None if first is None else first.coeffs,
            shared=("identity",),
        )
        per_set[identity] = float(score(together.coeffs.identity[:1], [identity])[0])
    return single, per_set, averaged, fitter_seconds / len(subset)


# ------------------------------------------------------------------------------------------------- tables


def _yaw_label(yaw: float) -> str:
    return f"{yaw:+.0f}°" if yaw else "0°"


def per_yaw_table(result: PoseGridResult) -> tuple[list[str], list[list]]:
    """(columns, rows) of the mean error (mm) per yaw of every picture-level method; None where a method has no
    picture at a yaw."""
    yaws = sorted(set(result.yaw_deg.tolist()))
    columns = ["method", *[_yaw_label(y) for y in yaws], "all", "share of gain (%)"]
    rows = []
    for key, name, level in METHODS:
        if level != "picture" or key not in result.picture_errors:
            continue
        values = result.picture_errors[key]
        line: list = [name]
        for yaw in yaws:
            chosen = values[(result.yaw_deg == yaw) & ~np.isnan(values)]
            line.append(float(chosen.mean()) if chosen.size else None)
        line.append(float(np.nanmean(values)))
        share = share_of_gain(np.asarray(result.picture_errors["mean_face"], float), values)
        line.append(None if share is None else round(100.0 * share, 1))
        rows.append(line)
    return columns, rows


def per_yaw_share_table(result: PoseGridResult) -> tuple[list[str], list[list]]:
    """(columns, rows) of every picture-level method's share of the possible gain (%) per yaw: (mean face - method)
    / (mean face - ceiling) on the pictures the method ran on at that yaw."""
    yaws = sorted(set(result.yaw_deg.tolist()))
    mean_face = np.asarray(result.picture_errors["mean_face"], float)
    rows = []
    for key, name, level in METHODS:
        if level != "picture" or key == "mean_face" or key not in result.picture_errors:
            continue
        values = np.asarray(result.picture_errors[key], float)
        line: list = [name]
        for yaw in yaws:
            at = result.yaw_deg == yaw
            share = share_of_gain(mean_face[at], values[at])
            line.append(None if share is None else round(100.0 * share, 1))
        rows.append(line)
    return ["method", *[_yaw_label(y) for y in yaws]], rows


def pitch_yaw_table(result: PoseGridResult, key: str = "rnet") -> tuple[list[str], list[list]]:
    """(columns, rows) of ``key``'s mean error (mm) per pitch (rows) and yaw (columns)."""
    yaws = sorted(set(result.yaw_deg.tolist()))
    pitches = sorted(set(result.pitch_deg.tolist()))
    values = result.picture_errors[key]
    rows = []
    for pitch in pitches:
        line: list = [f"{pitch:+.0f}°"]
        for yaw in yaws:
            chosen = values[(result.pitch_deg == pitch) & (result.yaw_deg == yaw) & ~np.isnan(values)]
            line.append(float(chosen.mean()) if chosen.size else None)
        rows.append(line)
    return ["pitch \\ yaw", *[_yaw_label(y) for y in yaws]], rows


def plot_error_vs_yaw(result: PoseGridResult, path: str | Path) -> Path:
    """Mean shape error per yaw, one line per method (as the paper's Fig. 6): picture-level methods with their
    standard error over pictures, identity-level aggregates as dashed horizontal lines (one value per
    identity, whatever the yaw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yaws = np.array(sorted(set(result.yaw_deg.tolist())))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key, name, level in METHODS:
        if level == "picture" and key in result.picture_errors:
            values = result.picture_errors[key]
            mean, sem, present = [], [], []
            for yaw in yaws:
                chosen = values[(result.yaw_deg == yaw) & ~np.isnan(values)]
                if chosen.size:
                    present.append(yaw)
                    mean.append(chosen.mean())
                    sem.append(chosen.std() / np.sqrt(chosen.size))
            ax.errorbar(
                present,
                mean,
                yerr=sem,
                marker="o",
                ms=4,
                capsize=3,
                label=name,
                color=_COLOURS[key],
                linestyle=":" if key == "mean_face" else "-",
            )
        elif level == "identity" and key in result.identity_errors:
            ax.axhline(
                float(np.mean(result.identity_errors[key])),
                linestyle="--",
                linewidth=1.2,
                label=name,
                color=_COLOURS[key],
            )
    ax.set(
        xlabel="yaw (degrees)",
        ylabel="shape error (mm, rigid alignment)",
        xticks=yaws,
        title=f"neutral identity shape error vs yaw ({len(np.unique(result.identity))} identities)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
