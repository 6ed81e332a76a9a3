"""Scoring the synthetic 20-pose protocol (`benchmarks.pose_grid`): methods, table rows, error-vs-yaw plot.

Every error is the shape error of a NEUTRAL identity shape against the ground-truth identity shape, after rigid
alignment, in mm (`benchmarks.metrics.vertex_error` with "rigid"). Methods:

* ``mean_face``: the model's mean shape (no reconstruction at all), one value per identity repeated for its
  pictures;
* ``rnet``: R-Net on each picture alone (its identity coefficients);
* ``averaging``: the mean of R-Net's identity coefficients over an identity's pictures (shape averaging);
* ``s1`` / ``s4``: C-Net aggregation of the same identities (when a C-Net checkpoint trained on this R-Net is
  given);
* ``fit`` and ``rnet_fit_subset``: analysis-by-synthesis (`reconstruction.fit.fit_coefficients`, from the mean
  face, minimising the checkpoint's own training objective) on a small subset of pictures, and R-Net on the
  same pictures for a paired comparison.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.cnet_analysis import collect_set_evaluation, neutral_shape, strategy_errors
from benchmarks.metrics import ErrorStats, summarise, vertex_error
from benchmarks.pose_grid import PoseGridDataset, fit_subset, pose_grid
from datamodules.image_sets import collate_image_sets

METHODS = (
    ("mean_face", "mean face (no reconstruction)", "picture"),
    ("rnet", "R-Net, single image", "picture"),
    ("averaging", "R-Net + shape averaging (mean identity of the 20 pictures)", "identity"),
    ("s1", "R-Net + C-Net S1 (global confidence) over the 20 pictures", "identity"),
    ("s4", "R-Net + C-Net S4 (element-wise confidences) over the 20 pictures", "identity"),
    ("rnet_fit_subset", "R-Net, single image, on the fitted subset", "picture"),
    ("fit", "fitting (analysis-by-synthesis), single image", "picture"),
)
"""(key, name, level) of every method, in table order; ``level`` says what one error value is."""

_COLOURS = {"mean_face": "grey", "rnet": "tab:blue", "averaging": "tab:green", "s1": "tab:purple", "s4": "tab:red",
            "rnet_fit_subset": "tab:cyan", "fit": "tab:orange"}


@dataclass(frozen=True)
class MethodRow:
    """One line of the accuracy table: ``stats`` over pictures or identities (``level``), in mm."""

    key: str
    name: str
    level: str
    stats: ErrorStats

    def as_dict(self) -> dict:
        return {"key": self.key, "name": self.name, "level": self.level, "mean_mm": self.stats.mean,
                "std_mm": self.stats.std, "median_mm": self.stats.median, "count": self.stats.count}


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
    fit_seconds: Optional[float] = None

    def accuracy_dict(self) -> dict:
        """Everything deterministic (no timing), as plain JSON types."""
        return {
            "protocol": self.protocol,
            "rows": [row.as_dict() for row in self.rows],
            "per_yaw": per_yaw_table(self)[1],
            "pictures": {"identity": self.identity.tolist(), "pitch_deg": self.pitch_deg.tolist(),
                         "yaw_deg": self.yaw_deg.tolist(),
                         **{key: [None if np.isnan(v) else float(v) for v in values]
                            for key, values in self.picture_errors.items()}},
            "identities": {key: values.tolist() for key, values in self.identity_errors.items()},
            "notes": list(self.notes),
        }


def rows_from(picture_errors: Mapping[str, np.ndarray], identity_errors: Mapping[str, np.ndarray]) -> tuple[MethodRow, ...]:
    """Table rows of the methods present, in `METHODS` order (NaN entries = pictures a method skipped)."""
    rows = []
    for key, name, level in METHODS:
        source = picture_errors if level == "picture" else identity_errors
        if key in source:
            values = np.asarray(source[key], float)
            values = values[~np.isnan(values)]
            if values.size:
                rows.append(MethodRow(key, name, level, summarise(values)))
    return tuple(rows)


def fitting_loss(loss):
    """The checkpoint's hybrid loss with its recognition network (if any) behind a `ReferenceCache`, which
    embeds the unchanging input pictures once per fit instead of once per step."""
    from losses.hybrid import HybridLoss
    from reconstruction.fit import ReferenceCache

    if loss.recognition is None:
        return loss
    return HybridLoss(loss.weights, loss.skin_mask, ReferenceCache(loss.recognition),
                      landmark_point_weights=loss.landmark_point_weights,
                      landmark_reference_size=loss.landmark_reference_size).to(loss.skin_mask.device)


def evaluate_pose_grid(dataset: PoseGridDataset, modules: Mapping[str, torch.nn.Module], loss=None,
                       fit_count: int = 0, fit_settings=None, device: str | torch.device = "cpu",
                       sets_per_batch: int = 2, notes: Sequence[str] = ()) -> PoseGridResult:
    """Run every method on ``dataset`` and score it.

    Args:
        dataset: the pose grid.
        modules: strategy -> `lightning_modules.cnet_module.CNetModule`, all on the same R-Net: "mean" (shape
            averaging, no C-Net) first, then optionally "s4" or "s1" with their trained C-Nets.
        loss: the hybrid loss to fit with (the checkpoint's); needed when ``fit_count`` > 0.
        fit_count: pictures fitted by analysis-by-synthesis (`benchmarks.pose_grid.fit_subset`); 0 for none.
        fit_settings: `reconstruction.fit.FitSettings` for the fit.
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
        if loss is None:
            raise ValueError("fitting needs the hybrid loss to minimise; pass loss=")
        fitted, fit_seconds = _fit_errors(dataset, subset, modules["mean"].renderer.to(device),
                                          fitting_loss(loss.to(device)), fit_settings, evaluation.truth_vertices)
        positions = np.array([i * set_size + j for i, j in subset])
        picture_errors["fit"] = np.full(len(identity_index), np.nan)
        picture_errors["fit"][positions] = fitted
        picture_errors["rnet_fit_subset"] = np.full(len(identity_index), np.nan)
        picture_errors["rnet_fit_subset"][positions] = errors["per_image"][positions]

    protocol = dataset.describe()
    if subset:
        from reconstruction.fit import FitSettings

        protocol["fit"] = {"pictures": [{"identity": i, "picture": j, "pitch_deg": float(pitch[j]),
                                         "yaw_deg": float(yaw[j])} for i, j in subset],
                           "settings": dataclasses.asdict(fit_settings or FitSettings()),
                           "objective": "the checkpoint's hybrid loss"}
    return PoseGridResult(protocol=protocol, identity=identity_index, pitch_deg=np.tile(pitch, n_sets),
                          yaw_deg=np.tile(yaw, n_sets), picture_errors=picture_errors,
                          identity_errors=identity_errors, rows=rows_from(picture_errors, identity_errors),
                          notes=tuple(notes), fit_seconds=fit_seconds)


def _fit_errors(dataset: PoseGridDataset, subset: list[tuple[int, int]], renderer, loss, settings,
                truth: torch.Tensor) -> tuple[np.ndarray, float]:
    """Fit the subset's pictures (one batch: pictures do not interact, see `reconstruction.fit`) -> (K,) errors
    in mm and the wall time per picture."""
    from reconstruction.fit import FitSettings, fit_coefficients

    samples = {i: dataset[i] for i in sorted({i for i, _ in subset})}
    images = torch.stack([samples[i]["images"][j] for i, j in subset])
    landmarks = torch.stack([samples[i]["landmarks"][j] for i, j in subset])
    skin = torch.stack([samples[i]["skin"][j] for i, j in subset])
    result = fit_coefficients(images, landmarks, skin, renderer, loss, settings or FitSettings())
    with torch.no_grad():
        shapes = neutral_shape(renderer.face_model, result.coeffs.identity)
        target = truth[[i for i, _ in subset]].to(shapes)
        errors = vertex_error(shapes, target).cpu().numpy()
    return errors, result.seconds / len(subset)


# ------------------------------------------------------------------------------------------------- tables


def _yaw_label(yaw: float) -> str:
    return f"{yaw:+.0f}°" if yaw else "0°"


def per_yaw_table(result: PoseGridResult) -> tuple[list[str], list[list]]:
    """(columns, rows) of the mean error (mm) per yaw of every picture-level method; None where a method has no
    picture at a yaw."""
    yaws = sorted(set(result.yaw_deg.tolist()))
    columns = ["method", *[_yaw_label(y) for y in yaws], "all"]
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
        rows.append(line)
    return columns, rows


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
            ax.errorbar(present, mean, yerr=sem, marker="o", ms=4, capsize=3, label=name, color=_COLOURS[key],
                        linestyle=":" if key == "mean_face" else "-")
        elif level == "identity" and key in result.identity_errors:
            ax.axhline(float(np.mean(result.identity_errors[key])), linestyle="--", linewidth=1.2, label=name,
                       color=_COLOURS[key])
    ax.set(xlabel="yaw (degrees)", ylabel="shape error (mm, rigid alignment)", xticks=yaws,
           title=f"neutral identity shape error vs yaw ({len(np.unique(result.identity))} identities)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
