"""Image-set reconstruction: one identity from several pictures of a person (Deng et al. 2019 §5).

`reconstruct_set` runs R-Net on every aligned picture, C-Net on R-Net's features, aggregates the identity
(`networks.aggregation`) and writes, under its output folder:

* ``identity.obj`` / ``identity.ply`` / ``identity.glb``: the aggregated identity, neutral expression, model
  space (mm by default; the binary glTF in metres, glTF's unit), coloured with the set's mean albedo;
* ``pictures/<name>.obj``, ``pictures/<name>.glb`` and ``pictures/<name>_overlay.png``: every picture's mesh with
  the shared identity and its own expression and pose (posed model space, coloured with its own albedo), and
  its four-panel overlay (512 px panels: input, reconstruction over it, grey geometry, landmarks);
* ``confidences.csv``: one row per picture: its share of the aggregate, its confidence sum (or S1 scalar),
  the detector (stage) that found its face, and every per-coefficient confidence, so a user sees which
  pictures were trusted;
* ``confidences.png``: the pictures with their shares, a bar plot of the shares and, for element-wise
  confidences, a pictures x coefficients heatmap;
* ``coefficients.npz``: the aggregated identity, every picture's own coefficients and the confidences.

`frames_from_video` (every k-th frame, OpenCV) and `frames_from_folder` turn a video or a folder of frames
into encoded pictures, and `align_pictures` runs them through the ``face3d prepare`` preprocessing
(`preprocessing.image.process_image`), skipping frames without a face.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from errors import InvalidInputError, MissingFileError
from face_model.coefficients import Coefficients
from geometry.mesh_io import write_glb, write_obj, write_ply
from networks.aggregation import GLOBAL_STRATEGIES, STRATEGIES, aggregate
from reconstruction.units import GLB_SCALE, UNIT_SCALES
from renderers.visualize import OVERLAY_PANEL, overlay_panels, render_overlay_views, save_png

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})


@dataclass(frozen=True, eq=False)
class SetPicture:
    """One aligned picture of a set.

    name:      a short unique name (used for output file names)
    crop:      (S, S, 3) uint8 RGB aligned crop (any square size; resized to R-Net's)
    landmarks: (68, 2) float32 detected landmarks in crop pixels, or None (drawn on the overlay when given)
    overlay_input: (P, P, 3) uint8 the same view as ``crop`` at the overlay's panel size, re-sampled from the
                   photo (sharper than the enlarged crop, which the overlay uses without it), or None
    detected_by:   the detector (cascade stage) that found the face, e.g. "dlib-hog", or None
    """

    name: str
    crop: np.ndarray
    landmarks: np.ndarray | None = None
    overlay_input: np.ndarray | None = None
    detected_by: str | None = None


@dataclass(frozen=True)
class SetReconstruction:
    """What `reconstruct_set` computed and wrote.

    names:      picture names, in input order
    strategy:   the aggregation used
    identity:   (n_id,) aggregated identity coefficients
    coeffs:     the pictures' own R-Net coefficients (batch of n pictures)
    confidence: (n, n_out) C-Net confidences (n_out = n_id or 1), None for shape averaging
    share:      (n,) each picture's share of the aggregate (its normalised weight, averaged over the
                identity coefficients); sums to 1
    files:      output name -> path
    detected_by: per picture, the detector (stage) that found its face, or None where not known
    """

    names: list[str]
    strategy: str
    identity: torch.Tensor
    coeffs: Coefficients
    confidence: torch.Tensor | None
    share: torch.Tensor
    files: dict[str, Path] = field(default_factory=dict)
    detected_by: tuple[str | None, ...] = ()


def default_strategy(cnet) -> str:
    """S4 for an element-wise C-Net, S1 for a global one, shape averaging without one."""
    if cnet is None:
        return "mean"
    return "s4" if cnet.kind == "elementwise" else "s1"


def aggregation_share(strategy: str, confidence: torch.Tensor, n_id: int) -> torch.Tensor:
    """(n,) share of each picture in the aggregated identity (its normalised weight averaged over the n_id
    coefficients), for (n, n_out) confidences (n_out = n_id, or 1 for S1).

    Computed by aggregating indicator "identities": in set b, picture b holds 1 and the others 0, so the
    aggregate of set b is picture b's weight, whatever the strategy."""
    n = confidence.shape[0]
    indicator = torch.eye(n, dtype=confidence.dtype).unsqueeze(-1).expand(n, n, n_id)
    valid = torch.ones(n, n, dtype=torch.bool)
    return aggregate(strategy, indicator, valid, confidence.unsqueeze(0).expand(n, -1, -1)).mean(-1)


def _resize(picture: SetPicture, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    crop = np.asarray(picture.crop, dtype=np.uint8)
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] != crop.shape[1]:
        raise ValueError(f"picture {picture.name!r}: expected a square (S, S, 3) RGB crop, got shape {crop.shape}")
    landmarks = None if picture.landmarks is None else np.asarray(picture.landmarks, np.float32)
    if crop.shape[0] != size:
        interpolation = cv2.INTER_AREA if size < crop.shape[0] else cv2.INTER_LINEAR
        factor = size / crop.shape[0]
        crop = cv2.resize(crop, (size, size), interpolation=interpolation)
        # Pixel centres sit at +0.5, so resizing scales coordinates exactly.
        landmarks = None if landmarks is None else landmarks * np.float32(factor)
    return crop, landmarks


@torch.no_grad()
def reconstruct_set(
    pictures: Sequence[SetPicture],
    rnet_module,
    cnet,
    out_dir: str | Path,
    strategy: str | None = None,
    units: str = "mm",
    plots: bool = True,
    overlay_size: int = OVERLAY_PANEL,
) -> SetReconstruction:
    """Aggregate the identity of ``pictures`` (aligned crops of one person) and write the outputs listed in the
    module docstring under ``out_dir``.

    Args:
        pictures: the set (at least one picture; names must be unique).
        rnet_module: a module with ``rnet`` and ``renderer`` (an `RNetModule` or `CNetModule`).
        cnet: the trained `networks.cnet.CNet` for ``rnet_module``'s R-Net, or None for shape averaging.
        strategy: one of `networks.aggregation.STRATEGIES`; default `default_strategy` of ``cnet``.
        units: "mm" (default) or "dm" for the meshes.
        plots: also draw ``confidences.png`` (matplotlib).
        overlay_size: side of each overlay panel (at least R-Net's crop size).
    """
    if not pictures:
        raise InvalidInputError("an image set needs at least one picture; none was given (no face found?)")
    names = [p.name for p in pictures]
    if len(set(names)) != len(names):
        raise ValueError(f"picture names must be unique (they name the output files), got {names}")
    if units not in UNIT_SCALES:
        raise ValueError(f"units must be one of {sorted(UNIT_SCALES)}, got {units!r}")
    strategy = strategy or default_strategy(cnet)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if strategy != "mean":
        needed = "global" if strategy in GLOBAL_STRATEGIES else "elementwise"
        if cnet is None or cnet.kind != needed:
            raise ValueError(
                f"strategy {strategy!r} needs a C-Net with {needed} confidences (a C-Net trained for "
                f"{'s1' if needed == 'global' else 's4'}), got "
                f"{'none' if cnet is None else cnet.kind}; use strategy 'mean' without one"
            )

    renderer = rnet_module.renderer
    device = next(rnet_module.rnet.parameters()).device
    size = renderer.camera.image_size[0]
    resized = [_resize(p, size) for p in pictures]
    images = torch.from_numpy(np.stack([c for c, _ in resized]).transpose(0, 3, 1, 2).copy()).float().div(255.0)
    rnet_module.rnet.eval()
    out = rnet_module.rnet(images.to(device))
    coeffs = out.coeffs.to(torch.float32)
    confidence = None
    if cnet is not None and strategy != "mean":
        cnet.eval()
        confidence = cnet.from_features(out.features).float()
    n, n_id = len(pictures), coeffs.identity.shape[1]
    valid = torch.ones(1, n, dtype=torch.bool, device=device)
    identity = aggregate(
        strategy, coeffs.identity.unsqueeze(0), valid, None if confidence is None else confidence.unsqueeze(0)
    )[0]
    share = torch.full((n,), 1.0 / n) if confidence is None else aggregation_share(strategy, confidence.cpu(), n_id)
    shared = coeffs.replace(identity=identity.expand(n, -1))
    result = SetReconstruction(
        names=names,
        strategy=strategy,
        identity=identity.cpu(),
        coeffs=coeffs.detach().to("cpu"),
        confidence=None if confidence is None else confidence.cpu(),
        share=share,
        detected_by=tuple(p.detected_by for p in pictures),
    )
    panel = max(int(overlay_size), size)
    inputs = [
        p.overlay_input if p.overlay_input is not None and p.overlay_input.shape[:2] == (panel, panel) else c
        for p, (c, _) in zip(pictures, resized)
    ]
    files = _write_outputs(
        Path(out_dir),
        result,
        shared,
        [c for c, _ in resized],
        [lm for _, lm in resized],
        renderer,
        UNIT_SCALES[units],
        plots,
        inputs,
        panel,
    )
    return replace(result, files=files)


def fit_set(
    pictures: Sequence[SetPicture],
    fitter,
    out_dir: str | Path,
    units: str = "mm",
    plots: bool = True,
    overlay_size: int = OVERLAY_PANEL,
) -> SetReconstruction:
    """Fit one identity and one albedo to all ``pictures`` (aligned crops of one person, e.g. the frames of a video),
    each picture with its own pose, expression and lighting (`reconstruction.fit.fit_coefficients` with
    ``shared=("identity", "albedo")``), and write the outputs of `reconstruct_set` (strategy "fit": every picture
    weighs the same, there are no confidences).

    Args:
        pictures: the set (at least one picture with landmarks; names must be unique).
        fitter: a `reconstruction.pipeline.FittingPredictor` (renderer at the crop size to fit at, objective and
            settings).
        units, plots, overlay_size: as `reconstruct_set`.
    """
    from preprocessing.skin import skin_posterior_torch
    from reconstruction.fit import fit_coefficients
    from reconstruction.pipeline import CropBatch

    if not pictures:
        raise InvalidInputError("an image set needs at least one picture; none was given (no face found?)")
    names = [p.name for p in pictures]
    if len(set(names)) != len(names):
        raise ValueError(f"picture names must be unique (they name the output files), got {names}")
    missing = [p.name for p in pictures if p.landmarks is None]
    if missing:
        raise InvalidInputError(f"fitting needs each picture's 68 detected landmarks; {missing} have none")
    if units not in UNIT_SCALES:
        raise ValueError(f"units must be one of {sorted(UNIT_SCALES)}, got {units!r}")
    renderer = fitter.renderer
    device = renderer.face_model.mean_shape.device
    size = renderer.camera.image_size[0]
    resized = [_resize(p, size) for p in pictures]
    crops = np.stack([c for c, _ in resized])
    images = torch.from_numpy(crops.transpose(0, 3, 1, 2).copy()).float().div(255.0).to(device)
    landmarks = torch.from_numpy(np.stack([lm for _, lm in resized])).float().to(device)
    skin = skin_posterior_torch(images).unsqueeze(1)
    # Started as the single-picture fit starts: from the fitter's init predictor (the shared groups from the mean
    # of its answers), or from the mean face.
    first = fitter.start(CropBatch(images, landmarks, skin)) if hasattr(fitter, "start") else None
    fitted = fit_coefficients(
        images,
        landmarks,
        skin,
        renderer,
        fitter.loss,
        fitter.settings,
        init=None if first is None else first.coeffs,
        shared=("identity", "albedo"),
    ).coeffs
    n = len(pictures)
    result = SetReconstruction(
        names=names,
        strategy="fit",
        identity=fitted.identity[0].cpu(),
        coeffs=fitted.detach().to("cpu"),
        confidence=None,
        share=torch.full((n,), 1.0 / n),
        detected_by=tuple(p.detected_by for p in pictures),
    )
    panel = max(int(overlay_size), size)
    inputs = [
        p.overlay_input if p.overlay_input is not None and p.overlay_input.shape[:2] == (panel, panel) else c
        for p, (c, _) in zip(pictures, resized)
    ]
    with torch.no_grad():
        files = _write_outputs(
            Path(out_dir),
            result,
            fitted,
            list(crops),
            [lm for _, lm in resized],
            renderer,
            UNIT_SCALES[units],
            plots,
            inputs,
            panel,
        )
    return replace(result, files=files)


def _write_outputs(
    out_dir: Path,
    result: SetReconstruction,
    shared: Coefficients,
    crops: list[np.ndarray],
    landmarks: list[np.ndarray | None],
    renderer,
    scale: float,
    plots: bool,
    overlay_inputs: list[np.ndarray],
    panel: int,
) -> dict[str, Path]:
    face_model = renderer.face_model
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pictures").mkdir(exist_ok=True)
    triangles = face_model.triangles.cpu().numpy()
    files: dict[str, Path] = {}

    neutral = face_model.layout.zeros(1, device=shared.identity.device).replace(
        identity=shared.identity[:1], albedo=shared.albedo.mean(0, keepdim=True)
    )
    mesh = face_model(neutral)
    vertices = (mesh.vertices[0] * scale).cpu().numpy()
    albedo = mesh.albedo[0].clamp(0, 1).cpu().numpy()
    files["identity_obj"] = write_obj(out_dir / "identity.obj", vertices, triangles, albedo)
    files["identity_ply"] = write_ply(out_dir / "identity.ply", vertices, triangles, albedo)
    files["identity_glb"] = write_glb(out_dir / "identity.glb", vertices / scale * GLB_SCALE, triangles, albedo)

    posed = renderer.pose(face_model.shape(shared), shared)
    picture_albedo = face_model.albedo(shared).clamp(0, 1)
    for k, name in enumerate(result.names):
        picture_vertices = posed[k].cpu().numpy()
        picture_colours = picture_albedo[k].cpu().numpy()
        files[f"picture_{name}_obj"] = write_obj(
            out_dir / "pictures" / f"{name}.obj", picture_vertices * scale, triangles, picture_colours
        )
        files[f"picture_{name}_glb"] = write_glb(
            out_dir / "pictures" / f"{name}.glb", picture_vertices * GLB_SCALE, triangles, picture_colours
        )
        views = render_overlay_views(renderer, shared.index(k), overlay_inputs[k], landmarks[k], panel)
        path = out_dir / "pictures" / f"{name}_overlay.png"
        save_png(path, overlay_panels(views))
        files[f"picture_{name}_overlay"] = path

    files["confidences_csv"] = write_confidence_table(out_dir / "confidences.csv", result)
    if plots:
        files["confidences_png"] = plot_confidences(out_dir / "confidences.png", result, crops)
    layout = face_model.layout
    np.savez(
        out_dir / "coefficients.npz",
        identity=result.identity.numpy(),
        pictures=layout.join(result.coeffs).numpy(),
        names=np.array(result.names),
        confidence=np.zeros((0,)) if result.confidence is None else result.confidence.numpy(),
        share=result.share.numpy(),
        strategy=result.strategy,
    )
    files["coefficients"] = out_dir / "coefficients.npz"
    return files


def write_confidence_table(path: Path, result: SetReconstruction) -> Path:
    """CSV with one row per picture: name, share, score (confidence sum or S1 scalar), the detector that found
    the face (empty when not known), per-coefficient values."""
    conf = result.confidence
    width = 0 if conf is None else conf.shape[1]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        score_name = "s1_confidence" if width == 1 else "confidence_sum"
        writer.writerow(
            ["picture", "share", score_name, "detected_by"] + [f"c{k:03d}" for k in range(width if width > 1 else 0)]
        )
        for j, name in enumerate(result.names):
            row = [name, f"{float(result.share[j]):.6f}"]
            detector = result.detected_by[j] if j < len(result.detected_by) else None
            if conf is None:
                row += ["", detector or ""]
            else:
                row += [f"{float(conf[j].sum()):.6f}", detector or ""]
                if width > 1:
                    row += [f"{float(v):.6f}" for v in conf[j]]
            writer.writerow(row)
    return path


def plot_confidences(path: Path, result: SetReconstruction, crops: list[np.ndarray]) -> Path:
    """Thumbnails labelled with their shares, the shares as bars, and (element-wise) the confidence heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result.names)
    heatmap = result.confidence is not None and result.confidence.shape[1] > 1
    rows = 3 if heatmap else 2
    fig = plt.figure(figsize=(max(6.0, 1.3 * n), 2.0 + 2.4 * (rows - 1)))
    grid = fig.add_gridspec(rows, n, height_ratios=[1.0] + [1.4] * (rows - 1))
    top = float(result.share.max())
    for j in range(n):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(crops[j])
        ax.set_title(
            f"{result.names[j][:14]}\n{100 * float(result.share[j]):.0f}%",
            fontsize=8,
            color="tab:green" if float(result.share[j]) >= top - 1e-9 else "black",
        )
        ax.axis("off")
    bars = fig.add_subplot(grid[1, :])
    bars.bar(np.arange(n), result.share.numpy() * 100.0, color="tab:blue")
    bars.axhline(100.0 / n, color="grey", lw=0.8, ls="--", label="plain average")
    bars.set_xticks(np.arange(n))
    bars.set_xticklabels([name[:14] for name in result.names], rotation=30, ha="right", fontsize=7)
    bars.set_ylabel("share of the identity (%)")
    bars.set_title(f"aggregation {result.strategy.upper()}")
    bars.legend(fontsize=7)
    if heatmap:
        ax = fig.add_subplot(grid[2, :])
        image = ax.imshow(result.confidence.numpy(), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_yticks(np.arange(n))
        ax.set_yticklabels([name[:14] for name in result.names], fontsize=7)
        ax.set_xlabel("identity coefficient")
        ax.set_title("element-wise confidence")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------- inputs and frames


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def frames_from_video(path: str | Path, every: int = 10, max_frames: int | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, PNG bytes) of every ``every``-th frame of a video file (OpenCV), at most ``max_frames`` of them."""
    path = Path(path)
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if not path.is_file():
        raise MissingFileError(f"video {path} not found")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InvalidInputError(f"OpenCV cannot open {path} as a video (unsupported codec or not a video file)")
    try:
        index = kept = 0
        while max_frames is None or kept < max_frames:
            # grab() skips decoding the frames that are not kept.
            if not capture.grab():
                break
            if index % every == 0:
                ok, frame = capture.retrieve()
                if ok:
                    encoded_ok, encoded = cv2.imencode(".png", frame)
                    if encoded_ok:
                        kept += 1
                        yield f"frame_{index:06d}", encoded.tobytes()
            index += 1
    finally:
        capture.release()


def frames_from_folder(folder: str | Path) -> Iterator[tuple[str, bytes]]:
    """(name, file bytes) of every image under ``folder`` (recursive, sorted; as ``face3d prepare`` lists them)."""
    from preprocessing.pipeline import list_images

    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"{folder} is neither a folder of pictures nor a video file")
    relatives, _ = list_images(folder)
    for relative in relatives:
        yield Path(relative).with_suffix("").as_posix().replace("/", "__"), (folder / relative).read_bytes()


@dataclass(frozen=True)
class AlignedPictures:
    """`align_pictures`' result: the aligned pictures and the (name, reason) of every skipped one."""

    pictures: list[SetPicture]
    skipped: list[tuple[str, str]]


def align_pictures(
    sources: Iterable[tuple[str, bytes]], detector, template: np.ndarray, config, overlay_size: int = OVERLAY_PANEL
) -> AlignedPictures:
    """Run ``face3d prepare``'s per-image preprocessing (`preprocessing.image.process_image`) on encoded
    pictures; pictures without a usable face are skipped with their reason. Each picture also keeps its
    overlay input: the crop's view re-sampled from the photo at ``overlay_size`` (at least the crop's)."""
    from preprocessing.align import warp_image
    from preprocessing.image import OK, process_image

    pictures, skipped = [], []
    for name, data in sources:
        result = process_image(data, detector, template, config)
        if result.status != OK:
            skipped.append((name, result.reason or result.status))
            continue
        aligned = result.aligned
        panel = max(int(overlay_size), aligned.crop.shape[0])
        # Pixel centres at +0.5: the panel is the crop scaled by panel / crop side, a pure scale of the warp.
        overlay_input, _ = warp_image(
            result.image.rgb, aligned.transform * (panel / aligned.crop.shape[0]), (panel, panel)
        )
        pictures.append(
            SetPicture(
                name=name,
                crop=aligned.crop,
                landmarks=aligned.landmarks68,
                overlay_input=overlay_input,
                detected_by=result.detection.detector,
            )
        )
    return AlignedPictures(pictures, skipped)
