"""HRN's detail table on the held-out detail faces (`datamodules.detail`): each layer against the truth.

Rows: the mean face (no reconstruction, R-Net's pose), R-Net's 3DMM, + the deformation map (mid layer),
+ the displacement map (high layer); then the same layers on the true coefficients, which isolates what the detail
networks add from R-Net's own error (the "true 3DMM" row is the best any detail-free model can do). Columns:

- vertex error (mm, after rigid alignment) of the model-space mesh against the true detailed mesh;
- normal angular error (degrees) of the per-pixel normals, over the pixels both renders cover;
- depth error (mm) of the per-pixel depth, over the same pixels, after removing each image's median offset
  (a single picture fixes depth only up to a shift).

``python -m benchmarks.detail_eval [--ckpt HRN_CHECKPOINT] [--n-test N]`` prints the table; without a checkpoint
the detail layers are untrained (zero maps), which shows the 3DMM rows only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from datamodules.detail import DetailBatch, DetailFaceDataset, collate_detail
from metrics.functional import DM_TO_MM, vertex_error
from renderers.detail_renderer import DetailRender, render_detailed

ROWS = (
    "mean face",
    "3DMM (R-Net)",
    "+ deformation",
    "+ displacement",
    "true 3DMM (no detail)",
    "true 3DMM + deformation",
    "true 3DMM + displacement",
)
COLUMNS = ("vertex_mm", "normal_deg", "depth_mm")


def normal_angle_error(predicted: DetailRender, truth: DetailRender) -> torch.Tensor:
    """(B,) mean angle (degrees) between per-pixel normals where both renders cover the pixel."""
    both = (predicted.mask * truth.mask)[:, 0]
    cosine = (predicted.normals * truth.normals).sum(1).clamp(-1.0, 1.0)
    angle = torch.rad2deg(torch.acos(cosine))
    return (angle * both).flatten(1).sum(1) / both.flatten(1).sum(1).clamp_min(1.0)


def depth_error(predicted: DetailRender, truth: DetailRender) -> torch.Tensor:
    """(B,) mean absolute per-pixel depth difference (mm) after removing each image's median difference."""
    both = (predicted.mask * truth.mask)[:, 0] > 0
    out = []
    for b in range(both.shape[0]):
        diff = (predicted.depth[b, 0] - truth.depth[b, 0])[both[b]]
        out.append((diff - diff.median()).abs().mean() * DM_TO_MM if diff.numel() else diff.new_tensor(float("nan")))
    return torch.stack(out)


@dataclass(frozen=True)
class DetailScores:
    """Mean over the test faces of each row's errors: rows[row][column]; n_faces evaluated; visible_share: mean
    share of the UV charts the photos show (through R-Net's mesh; detail is predicted from the visible part)."""

    rows: dict[str, dict[str, float]]
    n_faces: int
    visible_share: float = float("nan")


@torch.no_grad()
def evaluate_detail(module, dataset: DetailFaceDataset, batch_size: int = 8) -> DetailScores:
    """Score a trained `lightning_modules.hrn_module.HRNModule` (or any object with its ``rnet`` and ``detail``)
    on a detail split."""
    detail, rnet = module.detail.eval(), module.rnet.eval()
    face_model, camera, layout = detail.face_model, detail.camera, detail.layout
    sums = {row: {column: 0.0 for column in COLUMNS} for row in ROWS}
    n, visible = 0, 0.0
    for start in range(0, len(dataset), batch_size):
        batch: DetailBatch = collate_detail([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        face = batch.face
        true_coeffs = face_model.layout.split(face.ground_truth.coefficients)
        truth = render_detailed(
            face_model, true_coeffs, camera, layout, batch.deformation, batch.displacement, backend="torch"
        )
        coeffs = rnet(face.images, face.landmarks).coeffs.to(torch.float32)
        mean_coeffs = coeffs.replace(
            identity=torch.zeros_like(coeffs.identity), expression=torch.zeros_like(coeffs.expression)
        )
        renders: dict[str, DetailRender] = {"mean face": render_detailed(face_model, mean_coeffs, camera, layout)}
        for prefix, c in (("", coeffs), ("true ", true_coeffs)):
            maps = detail(face.images, c, "torch")
            if not prefix:
                visible += float(maps.mid_input.visible_share.sum())
            base = "3DMM (R-Net)" if not prefix else "true 3DMM (no detail)"
            renders[base] = render_detailed(face_model, c, camera, layout, backend="torch")
            renders[f"{prefix}{'3DMM ' if prefix else ''}+ deformation"] = render_detailed(
                face_model, c, camera, layout, maps.deformation, backend="torch"
            )
            renders[f"{prefix}{'3DMM ' if prefix else ''}+ displacement"] = render_detailed(
                face_model, c, camera, layout, maps.deformation, maps.displacement, backend="torch"
            )
        target = face.ground_truth.vertices
        for row in ROWS:
            r = renders[row]
            sums[row]["vertex_mm"] += float(vertex_error(r.vertices, target).sum())
            sums[row]["normal_deg"] += float(normal_angle_error(r, truth).sum())
            sums[row]["depth_mm"] += float(depth_error(r, truth).nansum())
        n += face.batch_size
    rows = {row: {column: value / max(n, 1) for column, value in columns.items()} for row, columns in sums.items()}
    return DetailScores(rows=rows, n_faces=n, visible_share=visible / max(n, 1))


def format_detail_table(scores: DetailScores) -> str:
    """Markdown table with each detail layer's change relative to the layer below it."""
    lines = [
        f"HRN detail layers on {scores.n_faces} held-out synthetic detail faces",
        "",
        "| layer | vertex error (mm) | normal error (deg) | depth error (mm) |",
        "|---|---|---|---|",
    ]
    below = {
        "+ deformation": "3DMM (R-Net)",
        "+ displacement": "+ deformation",
        "true 3DMM + deformation": "true 3DMM (no detail)",
        "true 3DMM + displacement": "true 3DMM + deformation",
    }
    for row in ROWS:
        values = scores.rows[row]
        cells = []
        for column in COLUMNS:
            cell = f"{values[column]:.3f}"
            if row in below:
                reference = scores.rows[below[row]][column]
                if reference > 0:
                    cell += f" ({100 * (values[column] / reference - 1):+.1f}%)"
            cells.append(cell)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Visible share of the UV charts (mean over the photos): {100 * scores.visible_share:.0f}%.")
    lines.append(
        "Targets (issue 14): deformation >= 15% lower vertex error than the 3DMM alone; displacement >= 20% "
        "lower normal error than without it."
    )
    return "\n".join(lines)
