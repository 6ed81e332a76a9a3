"""Identity aggregation over an image set (Deng et al. 2019 §5), as pure functions.

Every image j of a set has its own identity estimate alpha_j (from R-Net) and a confidence c_j; the set's
identity is the confidence-weighted mean

    alpha_agg = (sum_j c_j * alpha_j) / (sum_j c_j)

taken per coefficient. Only the identity is aggregated: expression, pose, lighting and albedo stay per image.
Sets are padded to a common size in a batch; ``valid`` marks the real images, and padding never counts.

The strategies compared in the paper's Table 5 differ only in the weights:

* ``mean``: c_j = 1 (shape averaging);
* ``s1``:   one scalar per image from C-Net's global head;
* ``s2``:   one scalar per image, the sum of the element-wise confidence vector;
* ``s3``:   the single image with the largest confidence sum (weight 1, all others 0);
* ``s4``:   the element-wise confidence vector itself (the paper's choice).

Shapes: B sets, N images per set (padded), n identity coefficients. Confidences are (B, N, n) for the
element-wise head and (B, N, 1) for the global head.
"""

from __future__ import annotations

import torch

STRATEGIES = ("mean", "s1", "s2", "s3", "s4")
ELEMENTWISE_STRATEGIES = ("s2", "s3", "s4")
"""Strategies computed from the element-wise (per-coefficient) confidences."""
GLOBAL_STRATEGIES = ("s1",)
"""Strategies computed from the global (one scalar per image) confidence."""

MIN_WEIGHT_SUM = 1e-12
"""Below this total weight a set falls back to the plain mean of its valid images (see `weighted_identity`)."""


def _check_set_shapes(identity: torch.Tensor, valid: torch.Tensor) -> None:
    if identity.ndim != 3:
        raise ValueError(f"identity must be (B, N, n) per-image coefficients, got shape {tuple(identity.shape)}")
    if valid.shape != identity.shape[:2] or valid.dtype != torch.bool:
        raise ValueError(
            f"valid must be a (B, N) = {tuple(identity.shape[:2])} bool mask, got {tuple(valid.shape)} {valid.dtype}"
        )


def _check_confidence(name: str, confidence: torch.Tensor, identity: torch.Tensor, width: int | None) -> None:
    expected = (*identity.shape[:2], identity.shape[2] if width is None else width)
    if tuple(confidence.shape) != expected:
        raise ValueError(f"{name} confidences must have shape {expected}, got {tuple(confidence.shape)}")


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, N, n) values, (B, N) mask -> (B, n) mean over the valid images (zeros for a set without any).

    Padding is replaced by zeros rather than multiplied by them, so even NaN padding cannot leak in."""
    mask = valid.unsqueeze(-1)
    total = torch.where(mask, values, torch.zeros_like(values)).sum(1)
    return total / mask.sum(1).clamp_min(1).to(values.dtype)


def weighted_identity(identity: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, N, n) identities, (B, N, n) or (B, N, 1) non-negative weights, (B, N) mask -> (B, n) weighted mean.

    Padded images are zeroed before summing, so whatever they hold (even NaN) never reaches the result.
    A coefficient whose total weight is below `MIN_WEIGHT_SUM` (every confidence of the set saturated at 0)
    takes the plain mean of the valid images instead of dividing by zero; the division is guarded on both
    branches so that no NaN reaches the gradient either. A set with no valid image gives zeros (the mean face).
    """
    _check_set_shapes(identity, valid)
    if weights.ndim != 3 or weights.shape[:2] != identity.shape[:2] or weights.shape[2] not in (1, identity.shape[2]):
        raise ValueError(
            f"weights must be (B, N, n) or (B, N, 1) for identities of shape {tuple(identity.shape)}, "
            f"got {tuple(weights.shape)}"
        )
    mask = valid.unsqueeze(-1)
    identity = torch.where(mask, identity, torch.zeros_like(identity))
    weights = torch.where(mask, weights, torch.zeros_like(weights)).to(identity.dtype)
    total = weights.sum(1)
    enough = total > MIN_WEIGHT_SUM
    weighted = (weights * identity).sum(1) / torch.where(enough, total, torch.ones_like(total))
    return torch.where(enough, weighted, masked_mean(identity, valid))


def mean_aggregate(identity: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Shape averaging: (B, N, n), (B, N) -> (B, n)."""
    _check_set_shapes(identity, valid)
    return masked_mean(identity, valid)


def s1_aggregate(identity: torch.Tensor, global_confidence: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """S1: one scalar confidence per image, (B, N, 1), from C-Net's global head -> (B, n)."""
    _check_set_shapes(identity, valid)
    _check_confidence("S1 (global)", global_confidence, identity, 1)
    return weighted_identity(identity, global_confidence, valid)


def confidence_sum(confidence: torch.Tensor) -> torch.Tensor:
    """(B, N, n) element-wise confidences -> (B, N, 1) their sum, S2's and S3's per-image score."""
    return confidence.sum(-1, keepdim=True)


def s2_aggregate(identity: torch.Tensor, confidence: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """S2: the element-wise confidences (B, N, n) summed into one scalar per image -> (B, n)."""
    _check_set_shapes(identity, valid)
    _check_confidence("S2 (element-wise)", confidence, identity, None)
    return weighted_identity(identity, confidence_sum(confidence), valid)


def most_confident_image(confidence: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, N, n) element-wise confidences, (B, N) mask -> (B, N, 1) one-hot weights on the valid image with
    the largest confidence sum (the first one on ties)."""
    score = confidence_sum(confidence).squeeze(-1)
    score = torch.where(valid, score, torch.full_like(score, -torch.inf))
    choice = score.argmax(dim=1)
    return torch.nn.functional.one_hot(choice, valid.shape[1]).to(confidence.dtype).unsqueeze(-1)


def s3_aggregate(identity: torch.Tensor, confidence: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """S3: the identity of the single image with the largest confidence sum -> (B, n).

    A selection, so no gradient reaches the confidences; train the element-wise head with S4 (or S2).
    """
    _check_set_shapes(identity, valid)
    _check_confidence("S3 (element-wise)", confidence, identity, None)
    return weighted_identity(identity, most_confident_image(confidence, valid), valid)


def s4_aggregate(identity: torch.Tensor, confidence: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """S4: element-wise confidences (B, N, n), each identity coefficient weighted on its own -> (B, n)."""
    _check_set_shapes(identity, valid)
    _check_confidence("S4 (element-wise)", confidence, identity, None)
    return weighted_identity(identity, confidence, valid)


def aggregate(
    strategy: str, identity: torch.Tensor, valid: torch.Tensor, confidence: torch.Tensor | None = None
) -> torch.Tensor:
    """Aggregate by strategy name (one of `STRATEGIES`). ``confidence`` is (B, N, 1) for ``s1``, (B, N, n) for
    ``s2``/``s3``/``s4`` and unused for ``mean``."""
    if strategy == "mean":
        return mean_aggregate(identity, valid)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown aggregation strategy {strategy!r}; choose one of {STRATEGIES}")
    if confidence is None:
        head = "global (S1)" if strategy in GLOBAL_STRATEGIES else "element-wise"
        raise ValueError(f"strategy {strategy!r} needs the C-Net's {head} confidences, got none")
    function = {"s1": s1_aggregate, "s2": s2_aggregate, "s3": s3_aggregate, "s4": s4_aggregate}[strategy]
    return function(identity, confidence, valid)
