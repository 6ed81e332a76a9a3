"""The ``hrn`` section of the experiment config (schema; `experiments.config.ExperimentConfig.hrn`).

Its subsections are the core components' own settings, so every default lives once, beside its component:
``hrn.network`` is `networks.hrn.HRNSettings`, ``hrn.loss`` is `losses.hrn.HRNLossWeights` and ``hrn.data`` is
`datamodules.detail.DetailDataSettings` (its ``image_size`` follows the R-Net's crop). The shared loss weights
(photometric, landmark, perceptual) come from the config's ``loss`` section and the step budget from ``trainer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datamodules.detail import DetailDataSettings
from losses.hrn import HRNLossWeights
from networks.hrn import HRNSettings


@dataclass
class HRNConfig:
    enabled: bool = False
    """True makes ``face3d train`` train HRN's detail layers (the ``hrn`` config sets it)."""
    rnet: str = "bundled"
    """The frozen R-Net under the detail layers: 'bundled', an exported weights folder or a train checkpoint."""
    lr: float = 1e-3
    """Adam's step size for the two detail networks."""
    network: HRNSettings = field(default_factory=HRNSettings)
    loss: HRNLossWeights = field(default_factory=HRNLossWeights)
    data: DetailDataSettings = field(default_factory=DetailDataSettings)
