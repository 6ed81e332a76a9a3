"""C-Net evaluation and analysis (Deng et al. 2019 §6.2.1 and Table 5) on image sets with ground truth.

`collect_set_evaluation` runs trained `CNetModule`s over a loader and keeps what the analysis needs (per-picture
identities, each C-Net's confidences, the ground truth and the per-picture metadata) on the CPU.
`strategy_errors` / `strategy_table` give the Table-5 comparison: the mean error of single-picture
reconstructions, shape averaging, and S1-S4 (S2, S3 and S4 from the element-wise C-Net, S1 from the global
one), as shape error in mm after rigid alignment of neutral identity shapes. `plot_confidence_vs_yaw` and
`plot_confidence_vs_occlusion` draw how confidences depend on pose and on occlusion. `analyse` does all of it
and writes the files.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from datamodules.image_sets import DEGRADATIONS, SetBatch
from metrics import vertex_error
from networks.aggregation import aggregate, mean_aggregate

if TYPE_CHECKING:
    from lightning_modules.cnet_module import CNetModule

ELEMENTWISE_SOURCES = ("s4", "s2")
"""Trained strategies whose element-wise confidences give the S2/S3/S4 rows (the first one present)."""

TABLE_ROWS = (
    ("mean_face", "mean face (no reconstruction)"),
    ("per_image", "mean per-image error"),
    ("mean", "shape averaging"),
    ("s1", "S1: global confidence"),
    ("s2", "S2: sum of element-wise confidences"),
    ("s3", "S3: most confident single image"),
    ("s4", "S4: element-wise confidences"),
)


@dataclass(frozen=True)
class SetEvaluation:
    """Predictions for S sets padded to N pictures, on the CPU.

    identity:      (S, N, n_id) R-Net's per-picture identities (zeros on padding)
    valid:         (S, N) bool
    confidences:   trained strategy ("s4", "s1", ...) -> (S, N, n_out) its C-Net's confidences
    truth_vertices: (S, V, 3) ground-truth neutral identity shapes, or None
    yaw_deg, occluded, degradation: (S, N) per-picture metadata, or None
    """

    identity: torch.Tensor
    valid: torch.Tensor
    confidences: dict[str, torch.Tensor]
    truth_vertices: torch.Tensor | None
    yaw_deg: torch.Tensor | None
    occluded: torch.Tensor | None
    degradation: torch.Tensor | None

    @property
    def elementwise(self) -> torch.Tensor | None:
        """(S, N, n_id) element-wise confidences used for S2/S3/S4, or None."""
        return next((self.confidences[s] for s in ELEMENTWISE_SOURCES if s in self.confidences), None)


def _pad_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate (B_k, N_k, ...) along sets, padding N with zeros."""
    n = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, [0, 0] * (p.ndim - 2) + [0, n - p.shape[1]]) for p in parts])


@torch.no_grad()
def collect_set_evaluation(
    modules: Mapping[str, CNetModule], batches: Iterable[SetBatch], device: str | torch.device = "cpu"
) -> SetEvaluation:
    """Run every module (strategy -> trained `CNetModule`, all on the same R-Net) over ``batches``.

    The identities come from the first module (R-Net is shared); confidences from each module's C-Net.
    """
    if not modules:
        raise ValueError("collect_set_evaluation needs at least one trained CNetModule")
    for module in modules.values():
        module.to(device).eval()
    identity, valid, truth, meta = [], [], [], {"yaw_deg": [], "occluded": [], "degradation": []}
    confidences: dict[str, list[torch.Tensor]] = {s: [] for s, m in modules.items() if m.cnet is not None}
    for batch in batches:
        batch = batch.to(device)
        first = True
        for strategy, module in modules.items():
            prediction = module(batch.images, batch.valid, batch.full, render=False)
            if first:
                identity.append(prediction.identity.cpu())
                first = False
            if prediction.confidence is not None:
                confidences[strategy].append(prediction.confidence.cpu())
        valid.append(batch.valid.cpu())
        if batch.ground_truth is not None:
            truth.append(batch.ground_truth.vertices.cpu())
        if batch.metadata is not None:
            for name in meta:
                meta[name].append(getattr(batch.metadata, name).cpu())
    return SetEvaluation(
        identity=_pad_cat(identity),
        valid=_pad_cat(valid),
        confidences={s: _pad_cat(c) for s, c in confidences.items()},
        truth_vertices=torch.cat(truth) if len(truth) == len(valid) else None,
        **{name: _pad_cat(parts) if len(parts) == len(valid) else None for name, parts in meta.items()},
    )


def neutral_shape(face_model, identity: torch.Tensor) -> torch.Tensor:
    """(K, n_id) identities -> (K, V, 3) neutral shapes of ``face_model`` (on its device)."""
    identity = identity.to(face_model.mean_shape)
    zeros = face_model.layout.zeros(identity.shape[0], device=identity.device)
    return face_model.shape(zeros.replace(identity=identity))


@torch.no_grad()
def strategy_errors(evaluation: SetEvaluation, face_model, chunk: int = 64) -> dict[str, np.ndarray]:
    """Shape errors in mm: "per_image" (one per valid picture, in set order), "per_image_by_set" (their mean per
    set), then one per set for "mean_face" (the model's mean shape: what identities no better than the prior
    score), "mean" and every strategy the evaluation has confidences for (s1; s2, s3, s4 from the element-wise
    C-Net). Per-set arrays share the set order, so strategies can be compared set by set."""
    if evaluation.truth_vertices is None:
        raise ValueError("these sets have no 3D ground truth (real photos?); shape errors need synthetic sets")
    ev = evaluation
    aggregated = {"mean_face": torch.zeros_like(ev.identity[:, 0]), "mean": mean_aggregate(ev.identity, ev.valid)}
    if "s1" in ev.confidences:
        aggregated["s1"] = aggregate("s1", ev.identity, ev.valid, ev.confidences["s1"])
    if ev.elementwise is not None:
        for strategy in ("s2", "s3", "s4"):
            aggregated[strategy] = aggregate(strategy, ev.identity, ev.valid, ev.elementwise)

    def errors(identity: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
        out = [
            vertex_error(
                neutral_shape(face_model, identity[k : k + chunk]), truth[k : k + chunk].to(face_model.mean_shape)
            )
            for k in range(0, len(identity), chunk)
        ]
        return torch.cat(out).cpu().numpy() if out else np.zeros(0)

    per_picture = ev.identity[ev.valid]
    truth_per_picture = ev.truth_vertices.unsqueeze(1).expand(-1, ev.valid.shape[1], -1, -1)[ev.valid]
    result = {"per_image": errors(per_picture, truth_per_picture)}
    set_of_picture = torch.arange(len(ev.valid)).unsqueeze(1).expand_as(ev.valid)[ev.valid].numpy()
    counts = np.bincount(set_of_picture, minlength=len(ev.valid))
    result["per_image_by_set"] = np.bincount(
        set_of_picture, weights=result["per_image"], minlength=len(ev.valid)
    ) / np.maximum(counts, 1)
    result.update({name: errors(identity, ev.truth_vertices) for name, identity in aggregated.items()})
    return result


@dataclass(frozen=True)
class TableRow:
    """One line of the strategy table: errors in mm over ``count`` sets (pictures for the per-image row), and
    the set-by-set difference to shape averaging (mean and its standard error; None for averaging itself)."""

    key: str
    name: str
    mean_mm: float
    std_mm: float
    count: int
    diff_mm: float | None = None
    diff_se_mm: float | None = None


def strategy_table(errors: Mapping[str, np.ndarray]) -> list[TableRow]:
    """Rows in the paper's order for the strategies present in ``errors``."""
    rows = []
    for key, name in TABLE_ROWS:
        if key not in errors or not len(errors[key]):
            continue
        diff = diff_se = None
        paired = errors.get("per_image_by_set") if key == "per_image" else errors[key]
        if key != "mean" and "mean" in errors and paired is not None and len(paired) == len(errors["mean"]):
            delta = paired - errors["mean"]
            diff = float(delta.mean())
            diff_se = float(delta.std(ddof=1) / np.sqrt(len(delta))) if len(delta) > 1 else float("nan")
        rows.append(
            TableRow(
                key, name, float(np.mean(errors[key])), float(np.std(errors[key])), len(errors[key]), diff, diff_se
            )
        )
    return rows


def table_markdown(rows: list[TableRow]) -> str:
    baseline = next((r.mean_mm for r in rows if r.key == "mean"), None)
    lines = [
        "| strategy | shape error (mm), mean ± std | vs shape averaging, per set (mm, mean ± s.e.) | n |",
        "|---|---|---|---|",
    ]
    for r in rows:
        change = ""
        if r.diff_mm is not None and baseline:
            change = f"{r.diff_mm:+.3f} ± {r.diff_se_mm:.3f} ({100.0 * r.diff_mm / baseline:+.1f}%)"
        lines.append(f"| {r.name} | {r.mean_mm:.3f} ± {r.std_mm:.3f} | {change} | {r.count} |")
    return "\n".join(lines) + "\n"


def write_table(rows: list[TableRow], markdown_path: Path, csv_path: Path) -> None:
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text(table_markdown(rows))
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["strategy", "name", "mean_mm", "std_mm", "count", "diff_vs_averaging_mm", "diff_se_mm"])
        for r in rows:
            writer.writerow(
                [
                    r.key,
                    r.name,
                    f"{r.mean_mm:.4f}",
                    f"{r.std_mm:.4f}",
                    r.count,
                    "" if r.diff_mm is None else f"{r.diff_mm:.4f}",
                    "" if r.diff_se_mm is None else f"{r.diff_se_mm:.4f}",
                ]
            )


# ------------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def yaw_bins(yaw_deg: np.ndarray, edges: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of (K, ...) ``values`` per yaw bin -> (n_bins, ...) each (NaN for empty bins)."""
    index = np.digitize(yaw_deg, edges[1:-1])
    shape = (len(edges) - 1, *values.shape[1:])
    mean, sem = np.full(shape, np.nan), np.full(shape, np.nan)
    for b in range(len(edges) - 1):
        chosen = values[index == b]
        if len(chosen):
            mean[b] = chosen.mean(0)
            sem[b] = chosen.std(0) / np.sqrt(len(chosen))
    return mean, sem


def plot_confidence_vs_yaw(
    evaluation: SetEvaluation,
    path: Path,
    coefficients: tuple[int, ...] = (0, 1, 2, 3, 4),
    n_bins: int = 8,
    clean_only: bool = True,
) -> Path:
    """Mean confidence per yaw bin: a few identity coefficients, their sum (S2/S3's score), S1's scalar, and a
    heatmap of every coefficient's confidence relative to its own mean (profile vs frontal at a glance).

    ``clean_only`` keeps undegraded pictures, so the curves show pose alone."""
    ev = evaluation
    if ev.yaw_deg is None:
        raise ValueError("these sets carry no yaw metadata (synthetic sets do)")
    keep = ev.valid.clone()
    if clean_only and ev.degradation is not None:
        keep &= ev.degradation == 0
    yaw = ev.yaw_deg[keep].numpy()
    limit = max(float(ev.yaw_deg[ev.valid].abs().max()), 1.0)
    edges = np.linspace(-limit, limit, n_bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2.0
    plt = _pyplot()
    elementwise = ev.elementwise
    panels = 3 if elementwise is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), squeeze=False)
    axes = axes[0]
    if elementwise is not None:
        conf = elementwise[keep].numpy()
        coefficients = tuple(c for c in coefficients if c < conf.shape[1])
        mean, sem = yaw_bins(yaw, edges, conf[:, list(coefficients)])
        for k, c in enumerate(coefficients):
            axes[0].errorbar(centres, mean[:, k], yerr=sem[:, k], marker="o", ms=3, capsize=2, label=f"identity {c}")
        axes[0].set(xlabel="yaw (degrees)", ylabel="confidence", title="element-wise confidence vs yaw")
        axes[0].legend(fontsize=8)
        total_mean, total_sem = yaw_bins(yaw, edges, conf.sum(1))
        axes[1].errorbar(centres, total_mean, yerr=total_sem, marker="o", capsize=2, color="k", label="sum (S2/S3)")
        axes[1].set(xlabel="yaw (degrees)", ylabel="sum of confidences", title="confidence sum vs yaw")
        relative, _ = yaw_bins(yaw, edges, conf / np.maximum(conf.mean(0, keepdims=True), 1e-12))
        image = axes[2].imshow(
            relative.T,
            aspect="auto",
            cmap="coolwarm",
            vmin=0.5,
            vmax=1.5,
            extent=(edges[0], edges[-1], conf.shape[1] - 0.5, -0.5),
        )
        axes[2].set(xlabel="yaw (degrees)", ylabel="identity coefficient", title="confidence / its mean")
        fig.colorbar(image, ax=axes[2])
    if "s1" in ev.confidences:
        s1_mean, s1_sem = yaw_bins(yaw, edges, ev.confidences["s1"][keep].numpy()[:, 0])
        target = axes[1] if elementwise is not None else axes[0]
        twin = target.twinx() if elementwise is not None else target
        twin.errorbar(centres, s1_mean, yerr=s1_sem, marker="s", capsize=2, color="tab:red", label="S1 scalar")
        twin.set_ylabel("S1 confidence", color="tab:red")
        if elementwise is None:
            target.set(xlabel="yaw (degrees)", title="S1 confidence vs yaw")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confidence_by_degradation(evaluation: SetEvaluation) -> dict[str, dict[str, tuple[float, float]]]:
    """How much each C-Net trusts degraded pictures: score name ("S4 sum of element-wise", "S1 scalar") -> kind of
    degradation (`DEGRADATIONS`, those present) -> (mean, standard error) of the pictures' confidence divided by
    the clean pictures' mean confidence; 1 for clean pictures by construction, below 1 where C-Net distrusts."""
    ev = evaluation
    if ev.degradation is None:
        raise ValueError("these sets carry no degradation metadata (synthetic sets do)")
    scores = {}
    if ev.elementwise is not None:
        scores["S4 sum of element-wise"] = ev.elementwise.sum(-1)
    if "s1" in ev.confidences:
        scores["S1 scalar"] = ev.confidences["s1"][..., 0]
    clean = (ev.degradation == 0) & ev.valid
    result = {}
    for name, score in scores.items():
        reference = score[clean].mean() if bool(clean.any()) else score[ev.valid].mean()
        result[name] = {}
        for k, kind in enumerate(DEGRADATIONS):
            chosen = (score[(ev.degradation == k) & ev.valid] / reference).numpy()
            if len(chosen):
                result[name][kind] = (float(chosen.mean()), float(chosen.std() / np.sqrt(len(chosen))))
    return result


def plot_confidence_vs_occlusion(evaluation: SetEvaluation, path: Path, n_coefficients: int = 20) -> Path:
    """Confidence of clean vs occluded pictures (and every other degradation): the mean confidence sum and S1
    scalar per kind, each relative to clean pictures, and the per-coefficient ratio occluded / clean."""
    ev = evaluation
    if ev.degradation is None or ev.occluded is None:
        raise ValueError("these sets carry no degradation metadata (synthetic sets do)")
    by_kind = confidence_by_degradation(ev)
    kinds = [kind for kind in DEGRADATIONS if any(kind in values for values in by_kind.values())]
    plt = _pyplot()
    elementwise = ev.elementwise
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(len(by_kind), 1)
    clean = (ev.degradation == 0) & ev.valid
    for s, (name, values) in enumerate(by_kind.items()):
        means = [values[kind][0] for kind in kinds]
        errs = [values[kind][1] for kind in kinds]
        axes[0].bar(np.arange(len(kinds)) + s * width, means, width, yerr=errs, capsize=2, label=name)
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set_xticks(np.arange(len(kinds)) + width * (len(by_kind) - 1) / 2)
    axes[0].set_xticklabels(kinds)
    axes[0].set(ylabel="confidence / clean pictures' mean", title="confidence by degradation")
    axes[0].legend(fontsize=8)
    occluded = ev.occluded & ev.valid
    if elementwise is not None and bool(occluded.any()) and bool(clean.any()):
        n = min(n_coefficients, elementwise.shape[-1])
        ratio = (elementwise[occluded].mean(0) / elementwise[clean].mean(0).clamp_min(1e-12))[:n].numpy()
        axes[1].bar(np.arange(n), ratio, color=np.where(ratio < 1.0, "tab:blue", "tab:orange"))
        axes[1].axhline(1.0, color="grey", lw=0.8)
        axes[1].set(
            xlabel="identity coefficient", ylabel="occluded / clean", title="element-wise confidence, occluded vs clean"
        )
    else:
        axes[1].set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class AnalysisResult:
    """What `analyse` wrote; ``rows`` is the strategy table."""

    rows: list[TableRow]
    table_markdown: Path
    table_csv: Path
    plots: list[Path]
    confidence_by_degradation: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)


def analyse(evaluation: SetEvaluation, face_model, out_dir: str | Path, plots: bool = True) -> AnalysisResult:
    """Strategy table (markdown + CSV) and, with metadata and ``plots``, the confidence plots, under ``out_dir``."""
    out_dir = Path(out_dir)
    rows = strategy_table(strategy_errors(evaluation, face_model))
    md, table_csv = out_dir / "strategy_table.md", out_dir / "strategy_table.csv"
    write_table(rows, md, table_csv)
    written = []
    trust = confidence_by_degradation(evaluation) if evaluation.degradation is not None else {}
    if plots and evaluation.confidences and evaluation.yaw_deg is not None:
        written.append(plot_confidence_vs_yaw(evaluation, out_dir / "confidence_vs_yaw.png"))
        written.append(plot_confidence_vs_occlusion(evaluation, out_dir / "confidence_vs_occlusion.png"))
    return AnalysisResult(
        rows=rows, table_markdown=md, table_csv=table_csv, plots=written, confidence_by_degradation=trust
    )
