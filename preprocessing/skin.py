"""Naive Bayes skin classifier with the Jones & Rehg (2002) skin / non-skin RGB Gaussian mixtures.

Deng et al. 2019 weight their photometric loss by a skin probability computed this way (their ref. [26]).
Each class is a 16-component mixture with diagonal covariances over RGB in [0, 255]; the posterior is

    P(skin | c) = p(c | skin) P(skin) / (p(c | skin) P(skin) + p(c | non-skin) (1 - P(skin))),

evaluated in log space (a sigmoid of the log-likelihood ratio plus the prior's logit) so that colours far
from both mixtures do not underflow to 0 / 0.

The math is pure torch; numpy channel-last images (H, W, 3) or (N, H, W, 3) are accepted as a convenience.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

DEFAULT_MODEL_PATH = Path(__file__).parent / "assets" / "skin" / "jones_rehg_gmm.json"


@dataclass(frozen=True, eq=False)
class DiagonalGMM:
    """Gaussian mixture over RGB (0-255) with diagonal covariances.

    mean:   (K, 3) component means
    var:    (K, 3) per-channel variances (not standard deviations)
    weight: (K,) mixture weights; they need not sum exactly to 1 (the published ones sum to 0.9992),
            and are used as given so the published densities are reproduced.
    """

    mean: np.ndarray
    var: np.ndarray
    weight: np.ndarray

    def __post_init__(self) -> None:
        k = self.weight.shape[0]
        if self.mean.shape != (k, 3) or self.var.shape != (k, 3) or self.weight.shape != (k,):
            raise ValueError(
                f"GMM shapes mean {self.mean.shape}, var {self.var.shape}, weight {self.weight.shape} "
                "do not match (K, 3), (K, 3), (K,)"
            )
        if (self.var <= 0).any() or (self.weight <= 0).any():
            raise ValueError("GMM variances and weights must be positive")

    def log_density(self, rgb: torch.Tensor) -> torch.Tensor:
        """(..., 3) colours in [0, 255] -> (...) log p(colour) under the mixture.

        The squared Mahalanobis distance is expanded into a matrix product
        ``sum_d x_d^2 / v_d - 2 x_d m_d / v_d + m_d^2 / v_d`` so that large images need only an (N, K) buffer,
        not (N, K, 3).
        """
        dtype, device = rgb.dtype, rgb.device
        inv_var = torch.as_tensor(1.0 / self.var, dtype=dtype, device=device)  # (K, 3)
        mean = torch.as_tensor(self.mean, dtype=dtype, device=device)
        quadratic = torch.cat([inv_var, -2.0 * mean * inv_var], dim=1).T  # (6, K)
        const = (mean.square() * inv_var).sum(1)  # (K,)
        log_norm = torch.as_tensor(
            np.log(self.weight) - 0.5 * (3 * math.log(2 * math.pi) + np.log(self.var).sum(1)),
            dtype=dtype,
            device=device,
        )
        flat = rgb.reshape(-1, 3)
        mahalanobis = torch.cat([flat.square(), flat], dim=1) @ quadratic + const  # (N, K)
        # Rounding in the expansion can go a hair below zero for colours on a component mean.
        log_components = log_norm - 0.5 * mahalanobis.clamp_min(0.0)
        return torch.logsumexp(log_components, dim=1).reshape(rgb.shape[:-1])


@dataclass(frozen=True, eq=False)
class SkinModel:
    """Skin and non-skin colour mixtures; build with `SkinModel.default()` or `SkinModel.from_file(path)`."""

    skin: DiagonalGMM
    nonskin: DiagonalGMM

    @classmethod
    def from_file(cls, path: str | Path) -> SkinModel:
        """Read a JSON file with ``skin`` and ``nonskin`` objects, each holding ``mean``, ``var``, ``weight``."""
        data = json.loads(Path(path).read_text())

        def gmm(key: str) -> DiagonalGMM:
            part = data[key]
            return DiagonalGMM(*(np.asarray(part[name], dtype=np.float64) for name in ("mean", "var", "weight")))

        return cls(skin=gmm("skin"), nonskin=gmm("nonskin"))

    @classmethod
    def default(cls) -> SkinModel:
        """The published Jones & Rehg mixtures shipped in ``preprocessing/assets/skin``."""
        return _default_model()

    def log_likelihood_ratio(self, rgb: torch.Tensor) -> torch.Tensor:
        """(..., 3) colours in [0, 255] -> (...) ``log p(c | skin) - log p(c | non-skin)``."""
        return self.skin.log_density(rgb) - self.nonskin.log_density(rgb)


@lru_cache(maxsize=1)
def _default_model() -> SkinModel:
    return SkinModel.from_file(DEFAULT_MODEL_PATH)


def _to_255(images: torch.Tensor) -> torch.Tensor:
    # Integer images are 0-255 already; floating images follow the torchvision convention of [0, 1].
    if images.dtype.is_floating_point:
        return images * 255.0
    return images.to(torch.float32)


def skin_posterior_torch(images: torch.Tensor, prior: float = 0.5, model: SkinModel | None = None) -> torch.Tensor:
    """(B, 3, H, W) or (3, H, W) RGB images -> (B, H, W) or (H, W) P(skin | colour).

    uint8 images are read as 0-255, floating ones as [0, 1]. The result is float32 (float64 stays float64)
    on the input's device.
    """
    if not 0.0 < prior < 1.0:
        raise ValueError(f"skin prior must be in (0, 1), got {prior}")
    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"expected (B, 3, H, W) or (3, H, W) RGB images, got shape {tuple(images.shape)}")
    model = model or SkinModel.default()
    rgb = _to_255(images)
    if rgb.dtype not in (torch.float32, torch.float64):
        rgb = rgb.to(torch.float32)
    rgb = rgb.movedim(-3, -1)
    logit = model.log_likelihood_ratio(rgb) + math.log(prior / (1.0 - prior))
    return torch.sigmoid(logit)


def skin_posterior(
    images: np.ndarray | torch.Tensor, prior: float = 0.5, model: SkinModel | None = None
) -> np.ndarray | torch.Tensor:
    """P(skin | colour) per pixel.

    torch tensors are channel-first, (B, 3, H, W) or (3, H, W) -> (B, H, W) or (H, W) (see
    `skin_posterior_torch`); numpy arrays are channel-last as PIL / OpenCV give them, (N, H, W, 3) or
    (H, W, 3) -> float32 (N, H, W) or (H, W). uint8 means 0-255, floating means [0, 1].
    """
    if isinstance(images, torch.Tensor):
        return skin_posterior_torch(images, prior, model)
    array = np.asarray(images)
    if array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(f"expected channel-last (H, W, 3) or (N, H, W, 3) numpy images, got shape {array.shape}")
    if array.dtype.kind not in "uif":
        raise ValueError(f"unsupported image dtype {array.dtype}")
    if array.dtype.kind in "ui" and array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"integer images must hold 0-255 values, got {array.dtype} in [{array.min()}, {array.max()}]"
            )
        array = array.astype(np.uint8)
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        # torch.from_numpy warns on read-only memory (np.asarray of a PIL image is read-only).
        array = array.copy()
    tensor = torch.from_numpy(array).movedim(-1, -3)
    with torch.no_grad():
        posterior = skin_posterior_torch(tensor, prior, model)
    return posterior.to(torch.float32).numpy()
