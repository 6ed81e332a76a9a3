"""The ``hrn`` section of the experiment config (schema; `experiments.config.ExperimentConfig.hrn`).

The values become the frozen settings of the core components in `experiments.train_hrn` (`HRNSettings`,
`HRNLossWeights`, `DetailDataSettings`); the shared loss weights (photometric, landmark, perceptual) come from
the config's ``loss`` section and the step budget from ``trainer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class HRNConfig:
    enabled: bool = False
    """True makes ``face3d train`` train HRN's detail layers (the ``hrn`` config sets it)."""
    rnet: str = "bundled"
    """The frozen R-Net under the detail layers: 'bundled', an exported weights folder or a train checkpoint."""
    n_train: int = 512
    n_val: int = 16
    n_test: int = 64
    mid_size: int = 64
    """Side of the deformation map (the paper's 64)."""
    high_size: int = 128
    """Side of the displacement map (the paper's 256; 128 for a CPU)."""
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    max_deformation: float = 0.1
    max_displacement: float = 0.01
    lr: float = 1e-3
    contour: float = 1.0
    tv: float = 1.0
    deformation: float = 10.0
    displacement: float = 1.0
    reflectance: float = 0.2
    contour_max_gap: float = 0.08
