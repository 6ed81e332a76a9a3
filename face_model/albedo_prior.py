"""A statistical albedo prior for meshes that ship without one (ICT-FaceKit has no texture model).

The prior is a Gaussian over per-vertex RGB reflectance::

    albedo(v) = mean(v) + sum_k c_k * s_k * phi_k(v) * d_k,   c_k ~ N(0, 1)

* ``phi_k`` are the smoothest functions on the face surface: eigenvectors of the cotangent Laplacian
  (generalised with the lumped mass matrix, so they do not depend on mesh density), normalised to unit
  area-weighted RMS. The first one is constant and carries the global skin tone.
* ``d_k`` is one of three orthonormal colour directions: luminance, a red-blue axis (melanin and blood
  shift skin along it) and a green-magenta axis.
* ``s_k`` is a prior standard deviation: largest for the global tone, decaying with spatial frequency as
  ``(lambda_1 / lambda_k) ** (decay / 2)``, which makes the field smoother for larger ``decay``.

Modes are sorted by ``s_k`` and truncated to ``n_modes`` (the paper's BFM uses 80). This is a smoothness
prior, not a learned distribution of real faces: it spans plausible tones and low-frequency shading of
reflectance (blush, darker brows) but not freckles or make-up. Its scale constants are documented
defaults, chosen so that ±2 sigma stays within the range of real skin albedo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

COLOUR_DIRECTIONS = np.array(
    [
        [1.0, 1.0, 1.0],
        [1.0, 0.0, -1.0],
        [1.0, -2.0, 1.0],
    ]
)
COLOUR_DIRECTIONS /= np.linalg.norm(COLOUR_DIRECTIONS, axis=1, keepdims=True)


@dataclass(frozen=True)
class AlbedoPriorConfig:
    """Prior standard deviations (albedo units, 0..1) per colour direction."""

    global_std: tuple[float, float, float] = (0.12, 0.05, 0.015)
    """Global skin tone: luminance, red-blue, green-magenta."""
    local_std: tuple[float, float, float] = (0.05, 0.02, 0.006)
    """First non-constant spatial mode; higher modes decay from there."""
    decay: float = 1.0
    n_eigen: int = 40
    """Laplacian eigenvectors computed (enough for up to 3 * n_eigen modes)."""


def cotangent_laplacian(vertices: np.ndarray, triangles: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """(V, 3) vertices, (F, 3) triangles -> positive semi-definite cotangent Laplacian L (V, V) and the
    lumped (barycentric) vertex areas (V,)."""
    v = vertices.astype(np.float64)
    n = len(v)
    weights_i, weights_j, weights_w = [], [], []
    area = np.zeros(n)
    for corner in range(3):
        i = triangles[:, corner]
        j = triangles[:, (corner + 1) % 3]
        k = triangles[:, (corner + 2) % 3]
        e1, e2 = v[j] - v[i], v[k] - v[i]
        cross = np.linalg.norm(np.cross(e1, e2), axis=1)
        cot = np.einsum("ij,ij->i", e1, e2) / np.maximum(cross, 1e-12)
        # The angle at corner i weighs the opposite edge (j, k).
        weights_i += [j, k]
        weights_j += [k, j]
        weights_w += [0.5 * cot, 0.5 * cot]
        np.add.at(area, i, cross / 6.0)
    w = sp.coo_matrix(
        (np.concatenate(weights_w), (np.concatenate(weights_i), np.concatenate(weights_j))), shape=(n, n)
    ).tocsr()
    laplacian = sp.diags(np.asarray(w.sum(axis=1)).ravel()) - w
    return laplacian.tocsr(), area


def laplacian_eigenbasis(vertices: np.ndarray, triangles: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smoothest surface functions: (k,) eigenvalues ascending and (V, k) eigenvectors with unit
    area-weighted RMS and a deterministic sign (largest-magnitude entry positive)."""
    laplacian, area = cotangent_laplacian(vertices, triangles)
    mass = sp.diags(area)
    # Shift-invert just below zero finds the smallest eigenvalues of the singular PSD matrix quickly.
    start = np.ones(len(vertices)) / np.sqrt(len(vertices))
    values, vectors = spla.eigsh(laplacian, k=k, M=mass, sigma=-1e-6, which="LM", v0=start)
    order = np.argsort(values)
    values, vectors = values[order], vectors[:, order]
    vectors = vectors * np.sqrt(area.sum())
    flip = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(k)])
    return np.maximum(values, 0.0), vectors * flip


def albedo_basis(
    vertices: np.ndarray, triangles: np.ndarray, n_modes: int, config: AlbedoPriorConfig = AlbedoPriorConfig()
) -> np.ndarray:
    """(n_modes, V, 3) albedo modes scaled by their prior standard deviation, largest first."""
    if n_modes > 3 * config.n_eigen:
        raise ValueError(f"n_modes={n_modes} exceeds 3 * n_eigen={3 * config.n_eigen}; raise n_eigen")
    if n_modes == 0:
        return np.zeros((0, len(vertices), 3), dtype=np.float32)
    # When luminance varies most, the luminance mode of eigenvector k outranks every mode of the
    # eigenvectors after k, so the top n_modes never use more than the first n_modes eigenvectors.
    lum_leads = config.local_std[0] >= max(config.local_std)
    n_eigen = min(config.n_eigen, max(n_modes, 2)) if lum_leads else config.n_eigen
    values, vectors = laplacian_eigenbasis(vertices, triangles, n_eigen)
    first_nonconstant = values[1] if values[1] > 0 else 1.0
    stds, modes = [], []
    for k in range(n_eigen):
        for c in range(3):
            if k == 0:
                std = config.global_std[c]
            else:
                std = config.local_std[c] * (first_nonconstant / values[k]) ** (config.decay / 2.0)
            stds.append(std)
            modes.append((k, c))
    order = np.argsort(-np.asarray(stds), kind="stable")[:n_modes]
    basis = np.empty((n_modes, len(vertices), 3))
    for out, idx in enumerate(order):
        k, c = modes[idx]
        basis[out] = stds[idx] * vectors[:, k : k + 1] * COLOUR_DIRECTIONS[c]
    return basis.astype(np.float32)
