"""The typed coefficient vector of a face model.

`CoeffLayout` is the only place that knows how the flat regression vector of R-Net is laid out; every
other module works with the named fields of `Coefficients`. The order follows Deep3DFaceRecon
(identity, expression, albedo, angles, lighting, translation) so that its 257-dimensional BFM
checkpoints map onto ``CoeffLayout(80, 64, 80, sh_channels=3)`` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

SH_BANDS = 9
"""Second-order spherical harmonics: 1 + 3 + 5 basis functions."""
DEFAULT_AMBIENT = 0.8
"""Added to the constant SH band of every colour channel by the shading (`renderers.lighting`), so lighting
coefficients are offsets from a uniform ambient light and start at zero."""

_FIELD_ORDER = ("identity", "expression", "albedo", "angles", "lighting", "translation")


@dataclass(frozen=True)
class Coefficients:
    """Per-image face parameters; every field is (B, n) with n given by the `CoeffLayout`.

    identity:    (B, n_id) shape coefficients, prior N(0, 1)
    expression:  (B, n_exp) expression coefficients, prior N(0, 1)
    albedo:      (B, n_tex) albedo (reflectance) coefficients, prior N(0, 1)
    angles:      (B, 3) Euler angles in radians (pitch about x, yaw about y, roll about z); R = Rz Ry Rx
    lighting:    (B, 9 * sh_channels) SH coefficients as offsets from the ambient default;
                 RGB is laid out channel-major (9 for red, then green, then blue), as Deep3D
    translation: (B, 3) model-space translation applied after rotation, in model units (decimetres)
    """

    identity: torch.Tensor
    expression: torch.Tensor
    albedo: torch.Tensor
    angles: torch.Tensor
    lighting: torch.Tensor
    translation: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.identity.shape[0]

    def replace(self, **changes: torch.Tensor) -> Coefficients:
        """A copy with some fields replaced (e.g. an aggregated identity)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        unknown = set(changes) - set(values)
        if unknown:
            raise KeyError(f"unknown coefficient fields {sorted(unknown)}; fields are {list(_FIELD_ORDER)}")
        values.update(changes)
        return Coefficients(**values)

    def to(self, *args, **kwargs) -> Coefficients:
        return Coefficients(**{f.name: getattr(self, f.name).to(*args, **kwargs) for f in fields(self)})

    def detach(self) -> Coefficients:
        return Coefficients(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def index(self, idx: torch.Tensor | slice | int) -> Coefficients:
        """Select images of the batch, keeping the batch dimension for an int index."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return Coefficients(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @staticmethod
    def cat(items: list[Coefficients]) -> Coefficients:
        return Coefficients(**{name: torch.cat([getattr(c, name) for c in items], dim=0) for name in _FIELD_ORDER})


@dataclass(frozen=True)
class CoeffLayout:
    """Sizes of each coefficient group, and the mapping to and from the flat vector."""

    n_id: int
    n_exp: int
    n_tex: int
    sh_channels: int = 3

    def __post_init__(self) -> None:
        for name in ("n_id", "n_exp", "n_tex"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.sh_channels not in (1, 3):
            raise ValueError(
                f"sh_channels must be 3 (RGB lighting, as Deep3D) or 1 (monochrome, as the paper), "
                f"got {self.sh_channels}"
            )

    @property
    def sizes(self) -> dict[str, int]:
        return {
            "identity": self.n_id,
            "expression": self.n_exp,
            "albedo": self.n_tex,
            "angles": 3,
            "lighting": SH_BANDS * self.sh_channels,
            "translation": 3,
        }

    @property
    def size(self) -> int:
        return sum(self.sizes.values())

    @property
    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name in _FIELD_ORDER:
            out[name] = slice(start, start + self.sizes[name])
            start += self.sizes[name]
        return out

    def split(self, flat: torch.Tensor) -> Coefficients:
        """(B, size) flat vector -> `Coefficients`."""
        if flat.ndim != 2 or flat.shape[1] != self.size:
            raise ValueError(
                f"expected a flat coefficient tensor of shape (B, {self.size}) for {self}, got {tuple(flat.shape)}"
            )
        return Coefficients(**{name: flat[:, s] for name, s in self.slices.items()})

    def join(self, coeffs: Coefficients) -> torch.Tensor:
        """`Coefficients` -> (B, size) flat vector."""
        parts = []
        for name in _FIELD_ORDER:
            value = getattr(coeffs, name)
            if value.shape[-1] != self.sizes[name]:
                raise ValueError(f"{name} has {value.shape[-1]} entries, layout expects {self.sizes[name]}")
            parts.append(value)
        return torch.cat(parts, dim=1)

    def zeros(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> Coefficients:
        """The mean face, frontal, at the origin, under the default ambient light."""
        return self.split(torch.zeros(batch_size, self.size, device=device, dtype=dtype))
