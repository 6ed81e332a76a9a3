"""Analysis-by-synthesis: fit face-model coefficients to aligned crops without a trained network.

The objective is the training objective, `losses.hybrid.HybridLoss` (skin-attention photometric,
weighted landmark, SFace perceptual, coefficient prior, texture flatness), minimised by Adam directly
over the coefficient tensors of each image. A cold start from the mean face at zero pose sits on a
bumpy photometric landscape, so the fit goes coarse to fine:

1. ``rigid``: angles and translation from the landmark term alone (the crop is aligned to the mean
   face's 5 points, so zero pose is already close);
2. ``shape``: identity and expression join, still landmark term plus coefficient prior only;
3. ``full``: every group under the whole hybrid loss, rendering each step.

Stages 1 and 2 project 68 landmark vertices and never rasterize, so they cost about a millisecond a
step; stage 3 renders and runs the recognition network and is where the time goes
(`FitSettings.iterations`). Each stage anneals its learning rates on a half cosine, so the last steps
are small and the result does not hover around the optimum.

Images of a batch are fitted together but do not interact: every term is a batch mean of per-image
values, and Adam scales each coefficient's step by its own gradient history, so a batch gives each image
the fit it would get alone (up to float rounding and Adam's epsilon). The result depends only on the inputs and settings: there is no randomness.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from face_model.coefficients import Coefficients
from losses.hybrid import HybridLoss, LossWeights
from losses.landmark import landmark_loss
from losses.photometric import skin_attention
from losses.regularization import coefficient_regularization
from reconstruction.contour import (
    ContourSettings,
    JawContour,
    contour_landmarks,
    jaw_contour,
    project_contour_landmarks,
)
from renderers.mesh_renderer import MeshRenderer

GROUPS = ("identity", "expression", "albedo", "angles", "lighting", "translation")
"""Coefficient groups, as the fields of `Coefficients`."""

STAGES = ("rigid", "shape", "full")

_STAGE_GROUPS = {
    "rigid": ("angles", "translation"),
    "shape": ("angles", "translation", "identity", "expression"),
    "full": GROUPS,
}

# The cosine schedule ends at this fraction of each learning rate rather than at 0, so the last steps
# still move.
_FINAL_LR_FRACTION = 0.05


@dataclass(frozen=True)
class FitSettings:
    """Iterations and Adam step sizes of the coarse-to-fine fit.

    rigid_iterations: stage 1 steps (pose from landmarks; cheap).
    rigid_starts_deg: yaw angles stage 1 starts from, all at once; each image keeps the start whose pose
                      explains its landmarks best. Adam moves an angle by about ``lr_angles`` a step, so a
                      single frontal start cannot reach a profile within stage 1, and identity then bends
                      to absorb the wrong pose (10.9 mm instead of 4.2 mm at 80 degrees of yaw).
    landmark_yaw_falloff: how fast trust in the detected landmarks falls with the yaw stage 1 found
                      (`landmark_yaw_scale`): a detector's error grows from a few pixels on a frontal face to
                      tens of pixels in profile, where its points are guesses; 0 trusts every pose equally.
    landmark_noise_px: a detector's typical landmark error on a 224-pixel crop. An image whose landmarks stage 1
                      cannot fit better than this (root mean square, scaled to 224 pixels) has its landmark term
                      scaled by (landmark_noise_px / residual)^2: a detector that is lost (a profile it draws as a
                      frontal face, an occluded or blurred face) then pulls less (`landmark_trust`).
    untrusted_identity_prior: the identity prior of an image is multiplied by ``1 + this * (1 - trust)``, trust
                      being its landmark trust (yaw and residual): when the landmarks cannot be believed, the
                      photometric term alone would bend identity to explain the appearance, so the fit stays
                      nearer the prior's centre; 0 keeps one prior for every image.
    identity_prior_centre: where the identity prior (the loss's own and the untrusted images' extra) is centred,
                      as a fraction of the starting identity (``init``): 0 is the mean face (the N(0, 1) prior),
                      1 the start itself. Started from a network's prediction (`FittingPredictor` with an
                      ``init`` predictor), 1 keeps that prediction (the fit refines pose, expression, albedo
                      and light around it) and 0 pulls it back to the mean face; half way gained the most on real
                      photographs and still helped the synthetic grids (0.25 gains more on the grids and less on
                      photographs; README, "Fitting"). Without ``init`` the start is the mean face and this
                      changes nothing.
    jaw_contour:      where the detected jaw points (iBUG 0-4 and 12-16) are matched on the model: None on fixed
                      vertices, else on the silhouette (`reconstruction.contour`, landmark marching), which a
                      detector draws on a turned face.
    shape_iterations: stage 2 steps (pose, identity, expression from landmarks; cheap).
    iterations:       stage 3 steps under the full hybrid loss (each renders and runs the perceptual
                      network: this sets the fit time).
    lr_*:             Adam step size per group, in that group's units: angles in radians, translation
                      in decimetres, the rest in prior standard deviations (identity, expression,
                      albedo) or SH coefficients (lighting). Adam moves each coefficient by at most
                      about its rate per step, so these read as step lengths.
    """

    rigid_iterations: int = 100
    rigid_starts_deg: tuple[float, ...] = (-60.0, -30.0, 0.0, 30.0, 60.0)
    landmark_yaw_falloff: float = 5.0
    landmark_noise_px: float = 4.0
    untrusted_identity_prior: float = 30.0
    identity_prior_centre: float = 0.5
    jaw_contour: ContourSettings | None = None
    shape_iterations: int = 200
    iterations: int = 100
    lr_angles: float = 0.01
    lr_translation: float = 0.01
    lr_identity: float = 0.1
    lr_expression: float = 0.1
    lr_albedo: float = 0.05
    lr_lighting: float = 0.02

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("iterations") and (int(value) != value or value < 0):
                raise ValueError(f"FitSettings.{f.name} must be a whole number >= 0, got {value!r}")
            if f.name.startswith("lr_") and not value > 0:
                raise ValueError(f"FitSettings.{f.name} must be > 0, got {value!r}")
        if self.untrusted_identity_prior < 0:
            raise ValueError(
                f"FitSettings.untrusted_identity_prior must be >= 0, got {self.untrusted_identity_prior!r}"
            )
        if not 0.0 <= self.identity_prior_centre <= 1.0:
            raise ValueError(
                f"FitSettings.identity_prior_centre must be in [0, 1] (a fraction of the starting identity), got "
                f"{self.identity_prior_centre!r}"
            )
        if not self.landmark_noise_px > 0:
            raise ValueError(f"FitSettings.landmark_noise_px must be > 0, got {self.landmark_noise_px!r}")
        if self.landmark_yaw_falloff < 0:
            raise ValueError(f"FitSettings.landmark_yaw_falloff must be >= 0, got {self.landmark_yaw_falloff!r}")
        if not self.rigid_starts_deg:
            raise ValueError("FitSettings.rigid_starts_deg needs at least one starting yaw, e.g. (0.0,)")

    def learning_rate(self, group: str) -> float:
        return getattr(self, f"lr_{group}")

    def stage_iterations(self) -> dict[str, int]:
        return {"rigid": self.rigid_iterations, "shape": self.shape_iterations, "full": self.iterations}


FIT_LOSS_WEIGHTS = LossWeights(perceptual=0.0, regularization=1e-3, nose_mouth_landmark_weight=1.0)
"""The objective of ``face3d reconstruct --fit`` (README, "Fitting": the study behind each choice).

The training loss's weights (`LossWeights()`) suit R-Net, which averages its errors over many pictures; one
picture's fit needs a prior that can hold against a detector's landmark errors: the coefficient prior 3.3x the
paper's, every landmark weighted by the detector's error in its region (`detector_landmark_weights`) instead of
20x on the nose and inner mouth, and no perceptual term (SFace's forward and backward pass doubles a fit's time
on a CPU)."""


@dataclass(frozen=True)
class StageHistory:
    """Loss values of one stage, one entry per Adam step (taken before that step).

    name:  "rigid", "shape" or "full".
    terms: term name -> (iterations,) float64: "total", the weighted terms of `HybridLoss` that the
           stage evaluates, and their unweighted values under "raw/<name>". The values are batch means.
    """

    name: str
    terms: dict[str, np.ndarray]


@dataclass(frozen=True)
class FitResult:
    """What `fit_coefficients` found.

    coeffs:  fitted `Coefficients`, (B, n) per field, detached.
    history: one `StageHistory` per stage that ran (stages with 0 iterations are left out).
    seconds: wall time of the whole fit.
    """

    coeffs: Coefficients
    history: tuple[StageHistory, ...]
    seconds: float

    def final_losses(self) -> dict[str, float]:
        """The last recorded value of every term of the last stage."""
        if not self.history:
            return {}
        return {name: float(values[-1]) for name, values in self.history[-1].terms.items() if len(values)}


class ReferenceCache(nn.Module):
    """A recognition network that embeds a repeated constant input only once.

    The perceptual term embeds the input photo under ``torch.no_grad`` at every step, and during a fit that
    input never changes; this wrapper returns the stored embedding when the no-grad input equals the last
    one (an exact comparison, far cheaper than a forward pass). Inputs that need gradients (the render)
    always go through the network. Exposes ``input_size`` and ``template`` like the wrapped network.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.input_size = net.input_size
        self._last_input: torch.Tensor | None = None
        self._last_output: torch.Tensor | None = None

    @property
    def template(self) -> torch.Tensor:
        return self.net.template

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or images.requires_grad:
            return self.net(images)
        last = self._last_input
        same = last is not None and last.shape == images.shape and last.device == images.device
        if same and torch.equal(last, images):
            return self._last_output
        output = self.net(images)
        self._last_input, self._last_output = images.detach().clone(), output.detach()
        return output


def landmark_terms(
    loss: HybridLoss,
    predicted: torch.Tensor,
    target: torch.Tensor,
    coeffs: Coefficients,
    image_size: float,
    landmark_scale: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The landmark and coefficient-prior terms of ``loss``, computed without a render.

    predicted, target: (B, 68, 2) crop pixels; image_size: the crop side in pixels; landmark_scale: (B,) factor
    on each image's landmark term, or None. Uses ``loss``'s own weights, landmark point weights and reference
    size, so these values equal the matching entries of ``loss(...)`` on a full render.
    """
    w = loss.weights
    point_weights = loss.landmark_point_weights
    if landmark_scale is not None:
        point_weights = landmark_scale[:, None] * point_weights
    raw = {
        "landmark": landmark_loss(
            predicted, target, point_weights, image_size=image_size, reference_size=loss.landmark_reference_size
        ),
    }
    if w.regularization:
        raw["regularization"] = coefficient_regularization(coeffs, w_id=w.reg_id, w_exp=w.reg_exp, w_tex=w.reg_tex)
    out = {name: getattr(w, name) * value for name, value in raw.items()}
    out["total"] = sum(out.values())
    out.update({f"raw/{name}": value for name, value in raw.items()})
    return out


def landmark_yaw_scale(yaw: torch.Tensor, falloff: float) -> torch.Tensor:
    """(B,) yaw in radians -> (B,) factor on each image's landmark term: ``1 / (1 + falloff sin^4 yaw)^2``.

    The factor is (sigma_0 / sigma(yaw))^2 for a detector noise that grows as sigma_0 (1 + falloff sin^4 yaw).
    With the default falloff 5 the noise is about 1.9x the frontal one at 40 degrees and 5.7x at 80 degrees, as
    dlib's 68 points measured on the appearance-gap renders of the pose grid (mean distance to the true
    points on 224-pixel crops: about 5 px frontal, 9 px at 40 degrees, 30-45 px at 80 degrees).
    """
    return 1.0 / (1.0 + falloff * torch.sin(yaw).pow(4)).square()


def landmark_trust(
    params: dict[str, torch.Tensor], landmarks: torch.Tensor, renderer: MeshRenderer, settings: FitSettings, batch: int
) -> torch.Tensor:
    """(B,) factor on each image's landmark term after stage 1, in (0, 1]: `landmark_yaw_scale` of the yaw found,
    times ``(landmark_noise_px / residual)^2`` when the root-mean-square distance between the posed mean face's
    landmarks and the detected ones (scaled to a 224-pixel crop) exceeds ``landmark_noise_px``.

    Measured with dlib on the appearance-gap renders: after stage 1 the residual is 3-5 px on frontal faces, 4-9 px
    at 40 degrees of yaw and up to 15 px at 80 degrees, where dlib draws a frontal-looking face that stage 1 poses
    near frontal, so the yaw alone cannot tell.
    """
    with torch.no_grad():
        coeffs = _batch_coefficients(params, batch)
        side = float(renderer.camera.image_size[0])
        projected = project_landmarks(renderer, coeffs, _contour_of(renderer, settings))
        residual = (projected - landmarks).square().sum(-1).mean(-1).sqrt() * (224.0 / side)
        noise = (settings.landmark_noise_px / residual.clamp_min(1e-6)).square().clamp(max=1.0)
        return noise * landmark_yaw_scale(coeffs.angles[:, 1], settings.landmark_yaw_falloff)


def identity_prior_terms(
    identity: torch.Tensor,
    centre: torch.Tensor,
    own_prior: float,
    extra_prior: torch.Tensor,
    settings: FitSettings,
) -> dict[str, torch.Tensor]:
    """The identity prior's additions to the loss's own ``own_prior ||identity||^2`` (batch means, scalars).

    identity, centre: (B, n_id), centre being where the prior is centred (`FitSettings.identity_prior_centre`);
    extra_prior: (B,) each image's extra prior weight (`FitSettings.untrusted_identity_prior`).

    * "prior_centre": ``own_prior (||identity - centre||^2 - ||identity||^2)``, which moves the loss's prior from
      the mean face to ``centre`` (present when ``identity_prior_centre`` > 0);
    * "untrusted_prior": ``extra_prior ||identity - centre||^2`` (present when ``untrusted_identity_prior`` > 0).
    """
    out = {}
    deviation = (identity - centre).square().sum(-1)
    if settings.identity_prior_centre and own_prior:
        out["prior_centre"] = (own_prior * (deviation - identity.square().sum(-1))).mean()
    if settings.untrusted_identity_prior:
        out["untrusted_prior"] = (extra_prior * deviation).mean()
    return out


def detector_landmark_weights() -> torch.Tensor:
    """(68,) landmark weights for fitting to a detector's points: inverse squared typical error per region,
    relative to the nose and eyes.

    dlib's mean distance to the true model points on frontal appearance-gap renders (224-pixel crops): nose 3.5,
    eyes 3.8, mouth 6.3, jaw 6.5, brows 7.5 px. The jaw points sit on a contour (their error is mostly along
    it, and turns into the silhouette on a turned face), and the brows and mouth points follow edges that the
    detector and the model place differently; the training loss's 20x weight on the nose and inner mouth would
    make a single picture's identity chase those points.
    """
    sigma = torch.empty(68)
    sigma[0:17] = 6.5
    sigma[17:27] = 7.5
    sigma[27:36] = 3.5
    sigma[36:48] = 3.8
    sigma[48:68] = 6.3
    return (3.5 / sigma).square()


def project_landmarks(renderer: MeshRenderer, coeffs: Coefficients, contour: JawContour | None) -> torch.Tensor:
    """(B, 68, 2) landmark pixels without rasterizing: `MeshRenderer.project_landmarks`, with the jaw on the
    silhouette when ``contour`` is given (`reconstruction.contour`)."""
    if contour is None:
        return renderer.project_landmarks(coeffs)
    return project_contour_landmarks(renderer, coeffs, contour)


def _contour_of(renderer: MeshRenderer, settings: FitSettings) -> JawContour | None:
    if settings.jaw_contour is None:
        return None
    model = renderer.face_model
    return jaw_contour(model.mean_shape, model.landmark_ids, settings.jaw_contour).to(model.mean_shape.device)


def _cosine_factor(step: int, total: int) -> float:
    if total <= 1:
        return 1.0
    return _FINAL_LR_FRACTION + (1.0 - _FINAL_LR_FRACTION) * 0.5 * (1.0 + math.cos(math.pi * step / (total - 1)))


def _check_inputs(images: torch.Tensor, landmarks: torch.Tensor, skin: torch.Tensor, renderer: MeshRenderer) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) RGB in [0, 1], got shape {tuple(images.shape)}")
    batch, _, height, width = images.shape
    if tuple(landmarks.shape) != (batch, 68, 2):
        raise ValueError(f"landmarks must be (B, 68, 2) crop pixels with B = {batch}, got {tuple(landmarks.shape)}")
    if tuple(skin.shape) != (batch, 1, height, width):
        raise ValueError(
            f"skin must be the crops' (B, 1, H, W) skin posterior, shape {(batch, 1, height, width)}, "
            f"got {tuple(skin.shape)}"
        )
    if tuple(renderer.camera.image_size) != (height, width):
        raise ValueError(
            f"the renderer draws {renderer.camera.image_size} images but the crops are {(height, width)}; build "
            f"it with PinholeCamera().resized({height}, {width})"
        )


def fit_coefficients(
    images: torch.Tensor,
    landmarks: torch.Tensor,
    skin: torch.Tensor,
    renderer: MeshRenderer,
    loss: HybridLoss,
    settings: FitSettings = FitSettings(),
    init: Coefficients | None = None,
    shared: tuple[str, ...] = (),
) -> FitResult:
    """Fit coefficients to a batch of aligned crops by minimising ``loss`` (see the module docstring).

    Args:
        images: (B, 3, S, S) aligned crops, RGB in [0, 1] (as `preprocessing.align.align_face` makes them
            with the face model's template, divided by 255).
        landmarks: (B, 68, 2) detected landmarks in crop pixels.
        skin: (B, 1, S, S) skin posterior P(skin | colour) of the crops (0 outside the photo); the skin
            attention of the photometric term is derived from it.
        renderer: `MeshRenderer` of the face model, with a camera of the crops' size.
        loss: the hybrid loss (with its recognition network for the perceptual term, or without).
        settings: iterations and step sizes.
        init: starting coefficients; default the mean face, frontal, at the origin, ambient light.
        shared: coefficient groups ("identity", "albedo") that are one value for the whole batch: the
            batch is then several pictures of one person (photos or video frames), fitted together with
            their own pose, expression and lighting. Every picture's evidence then bears on the shared
            groups, and their prior counts once for the person instead of once per picture.

    Returns:
        `FitResult`; the loss module and the renderer are left as they were (no parameter of theirs is
        touched, the optimiser only sees the coefficients).
    """
    _check_inputs(images, landmarks, skin, renderer)
    start = time.perf_counter()
    model = renderer.face_model
    device = model.mean_shape.device
    images = images.to(device=device, dtype=torch.float32)
    landmarks = landmarks.to(device=device, dtype=torch.float32)
    attention = skin_attention(skin.to(device=device, dtype=torch.float32))
    batch, _, height, width = images.shape
    crop_side = float(height * width) ** 0.5

    if init is None:
        init = model.layout.zeros(batch, device=device)
    unknown = sorted(set(shared) - set(_SHAREABLE))
    if unknown:
        raise ValueError(f"only {_SHAREABLE} can be shared over a batch, got {unknown}")
    params = {name: getattr(init, name).detach().to(device=device, dtype=torch.float32).clone() for name in GROUPS}
    for name in shared:
        params[name] = params[name].mean(0, keepdim=True)
    loss = _loss_for_shared(loss, shared, batch)

    contour = _contour_of(renderer, settings)
    history: list[StageHistory] = []
    if settings.rigid_iterations:
        params = _rigid_multistart(params, landmarks, renderer, loss, settings, crop_side, history)
    # Fixed after stage 1: a trust that followed the pose while it is fitted would reward turning the face away.
    scale = landmark_trust(params, landmarks, renderer, settings, batch)
    # Extra identity prior beyond the loss's own (which every image has once): images whose landmarks are not
    # believed get more.
    own_prior = loss.weights.regularization * loss.weights.reg_id
    extra_prior = own_prior * settings.untrusted_identity_prior * (1.0 - scale)
    # Stage 1 leaves identity where it started, so this is the starting identity's share.
    centre = (settings.identity_prior_centre * params["identity"]).expand(batch, -1)
    for stage, n_steps in settings.stage_iterations().items():
        if n_steps == 0 or stage == "rigid":
            continue
        groups = _STAGE_GROUPS[stage]
        for name, tensor in params.items():
            tensor.requires_grad_(name in groups)
        base_lrs = [settings.learning_rate(name) for name in groups]
        # A fresh optimiser per stage: moments gathered under the landmark-only objective do not describe
        # the full one.
        optimizer = torch.optim.Adam([{"params": [params[name]], "lr": lr} for name, lr in zip(groups, base_lrs)])
        records: dict[str, list[torch.Tensor]] = {}
        for step in range(n_steps):
            factor = _cosine_factor(step, n_steps)
            for group, lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr * factor
            coeffs = _batch_coefficients(params, batch)
            if stage == "full":
                render = renderer(coeffs)
                if contour is not None:
                    jaw = contour_landmarks(
                        render.landmarks, render.vertices_camera, coeffs.angles, contour, renderer.camera
                    )
                    render = dataclasses.replace(render, landmarks=jaw)
                terms = loss(
                    images=images,
                    render=render,
                    target_landmarks=landmarks,
                    skin_attention=attention,
                    coeffs=coeffs,
                    landmark_scale=scale,
                )
            else:
                terms = landmark_terms(
                    loss, project_landmarks(renderer, coeffs, contour), landmarks, coeffs, crop_side, scale
                )
            if "identity" in groups:
                terms.update(identity_prior_terms(coeffs.identity, centre, own_prior, extra_prior, settings))
                terms["total"] = terms["total"] + terms.get("prior_centre", 0.0) + terms.get("untrusted_prior", 0.0)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            # Kept on the device and read once per stage: a read per step would wait on a GPU every step.
            for key, value in terms.items():
                records.setdefault(key, []).append(value.detach())
        history.append(StageHistory(stage, {k: torch.stack(v).double().cpu().numpy() for k, v in records.items()}))

    fitted = _batch_coefficients({name: tensor.detach() for name, tensor in params.items()}, batch)
    return FitResult(coeffs=fitted, history=tuple(history), seconds=time.perf_counter() - start)


def _rigid_multistart(
    params: dict[str, torch.Tensor],
    landmarks: torch.Tensor,
    renderer: MeshRenderer,
    loss: HybridLoss,
    settings: FitSettings,
    crop_side: float,
    history: list[StageHistory],
) -> dict[str, torch.Tensor]:
    """Stage 1 from every start of ``settings.rigid_starts_deg`` at once (the batch repeated per start);
    each image keeps the pose of the start with the lowest weighted landmark error."""
    batch = landmarks.shape[0]
    starts = torch.tensor(settings.rigid_starts_deg, dtype=landmarks.dtype, device=landmarks.device)
    n_starts = starts.shape[0]
    contour = _contour_of(renderer, settings)
    # Start-major: rows k * batch + b are image b from start k.
    expanded = {name: tensor.detach().expand(batch, -1).repeat(n_starts, 1) for name, tensor in params.items()}
    expanded["angles"][:, 1] = expanded["angles"][:, 1] + torch.deg2rad(starts).repeat_interleave(batch)
    targets = landmarks.repeat(n_starts, 1, 1)
    for name, tensor in expanded.items():
        tensor.requires_grad_(name in _STAGE_GROUPS["rigid"])
    groups = _STAGE_GROUPS["rigid"]
    base_lrs = [settings.learning_rate(name) for name in groups]
    optimizer = torch.optim.Adam([{"params": [expanded[name]], "lr": lr} for name, lr in zip(groups, base_lrs)])
    records: dict[str, list[torch.Tensor]] = {}
    n_steps = settings.rigid_iterations
    for step in range(n_steps):
        factor = _cosine_factor(step, n_steps)
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * factor
        coeffs = Coefficients(**expanded)
        # Images and starts do not interact, and the terms are batch means: scaling by the number of
        # starts gives every image the step it would get alone.
        terms = landmark_terms(loss, project_landmarks(renderer, coeffs, contour), targets, coeffs, crop_side)
        optimizer.zero_grad(set_to_none=True)
        (terms["total"] * n_starts).backward()
        optimizer.step()
        for key, value in terms.items():
            records.setdefault(key, []).append(value.detach())
    with torch.no_grad():
        coeffs = Coefficients(**expanded)
        residual = (project_landmarks(renderer, coeffs, contour) - targets).square().sum(-1)
        per_row = (residual * loss.landmark_point_weights.to(residual)).mean(-1)
        best = per_row.reshape(n_starts, batch).argmin(0)
        rows = best * batch + torch.arange(batch, device=best.device)
    history.append(StageHistory("rigid", {k: torch.stack(v).double().cpu().numpy() for k, v in records.items()}))
    # Groups shared over the batch are not moved by this stage: they keep their single row.
    return {
        name: tensor.detach()[rows].clone() if params[name].shape[0] == batch or batch == 1 else params[name]
        for name, tensor in expanded.items()
    }


_SHAREABLE = ("identity", "albedo")


def _batch_coefficients(params: dict[str, torch.Tensor], batch: int) -> Coefficients:
    """Coefficients with every group at the batch size (shared groups are stored as one row)."""
    return Coefficients(**{name: tensor.expand(batch, -1) for name, tensor in params.items()})


def _loss_for_shared(loss: HybridLoss, shared: tuple[str, ...], batch: int) -> HybridLoss:
    """``loss`` with the prior of shared groups divided by the batch size.

    Every term is a batch mean, so the prior of a group held by each picture counts once per picture. A
    group shared by ``batch`` pictures is one unknown seen ``batch`` times: its MAP objective is the sum of
    the pictures' data terms plus its prior once, i.e. the batch mean plus prior / batch.
    """
    if not shared or batch == 1:
        return loss
    w = loss.weights
    weights = dataclasses.replace(
        w,
        reg_id=w.reg_id / batch if "identity" in shared else w.reg_id,
        reg_tex=w.reg_tex / batch if "albedo" in shared else w.reg_tex,
    )
    return HybridLoss(
        weights,
        loss.skin_mask,
        loss.recognition,
        landmark_point_weights=loss.landmark_point_weights,
        landmark_reference_size=loss.landmark_reference_size,
    )
