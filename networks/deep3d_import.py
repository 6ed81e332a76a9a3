"""Load and write Deep3DFaceRecon_pytorch R-Net checkpoints (``epoch_20.pth``).

Deep3D saves one dict per epoch: ``{"net_recon": state_dict, "opt_00": ..., "sched_00": ...}``. Its
``net_recon`` is a ``ReconNetWrapper`` whose keys are ``backbone.<torchvision ResNet key without fc>``
and ``final_layers.{0..6}.{weight,bias}`` (1x1 convolutions of 80, 64, 80, 3, 27, 2 and 1 channels).
`RNet` uses the same module names, so the state_dict loads as is once the layout and backbone agree.
Checkpoints saved from a DataParallel/DDP wrapper may carry a ``module.`` prefix, which is stripped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from errors import InvalidInputError
from face_model.coefficients import CoeffLayout
from networks.resnet import load_state_dict_checked, load_torch_file
from networks.rnet import RNet, head_sizes

DEEP3D_LAYOUT = CoeffLayout(n_id=80, n_exp=64, n_tex=80, sh_channels=3)
"""The 257-dim BFM09 layout every Deep3DFaceRecon_pytorch checkpoint regresses."""

DEEP3D_HEAD_SIZES = (80, 64, 80, 3, 27, 2, 1)
"""Output channels of Deep3D's ``final_layers``: id, exp, tex, angle, gamma (RGB SH), tx-ty, tz."""

PRETRAINED_HINT = (
    "download the pretrained model (checkpoints/face_recon_feat0.2_augment/epoch_20.pth) linked from "
    "https://github.com/sicxu/Deep3DFaceRecon_pytorch#inference-with-a-pre-trained-model"
)

_BACKBONE_BY_CHANNELS = {512: "resnet18", 2048: "resnet50"}


def _check_layout(rnet: RNet) -> None:
    sizes = head_sizes(rnet.layout)
    if sizes != DEEP3D_HEAD_SIZES:
        raise InvalidInputError(
            f"Deep3D checkpoints regress the 257-dim BFM layout with heads {DEEP3D_HEAD_SIZES}, but this RNet "
            f"has layout {rnet.layout} (size {rnet.layout.size}, heads {sizes}); build it with "
            f"RNet(CoeffLayout(n_id=80, n_exp=64, n_tex=80, sh_channels=3), ...)"
        )


def _net_recon_state(checkpoint: object, path: Path) -> dict[str, torch.Tensor]:
    """The R-Net state_dict out of a whole Deep3D checkpoint or a bare ``net_recon`` state_dict."""
    if not isinstance(checkpoint, Mapping):
        raise InvalidInputError(
            f"{path} should hold a dict with a 'net_recon' state_dict, got {type(checkpoint).__name__}"
        )
    state = checkpoint.get("net_recon", checkpoint)
    if not isinstance(state, Mapping):
        raise InvalidInputError(f"{path}: 'net_recon' should be a state_dict, got {type(state).__name__}")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    if not any(k.startswith("backbone.") for k in state):
        raise InvalidInputError(
            f"{path} is not a Deep3DFaceRecon checkpoint: expected a 'net_recon' entry or 'backbone.*' keys, "
            f"found top-level keys {sorted(map(str, checkpoint))[:12]}"
        )
    return state


def load_deep3d_checkpoint(rnet: RNet, path: str | Path, weights_only: bool = True) -> None:
    """Load the R-Net weights of a Deep3DFaceRecon_pytorch checkpoint into ``rnet``, in place.

    ``rnet`` must use the BFM 257 layout (`DEEP3D_LAYOUT`) and the checkpoint's backbone (ResNet-50 for
    the released model). ``weights_only=False`` lets torch.load unpickle arbitrary objects; use it only
    for a file you trust that the safe loader refuses. Raises FileNotFoundError when the file is absent
    and ValueError when the layout, the backbone or any key does not match; nothing is loaded then.
    """
    path = Path(path)
    _check_layout(rnet)
    state = _net_recon_state(load_torch_file(path, "Deep3DFaceRecon checkpoint", PRETRAINED_HINT, weights_only), path)
    if "backbone.fc.weight" in state:
        raise InvalidInputError(
            f"{path} was trained with Deep3D's --use_last_fc (one fc layer instead of final_layers), which "
            "RNet does not support; use a checkpoint trained with the default --use_last_fc False"
        )
    found, index = [], 0
    while f"final_layers.{index}.weight" in state:
        found.append(state[f"final_layers.{index}.weight"].shape[0])
        index += 1
    if tuple(found) != DEEP3D_HEAD_SIZES:
        raise InvalidInputError(
            f"{path}: the checkpoint's output heads have sizes {tuple(found)} (total {sum(found)}), expected "
            f"Deep3D's {DEEP3D_HEAD_SIZES} (total {sum(DEEP3D_HEAD_SIZES)}) for the BFM 257 layout"
        )
    channels = state["final_layers.0.weight"].shape[1]
    if channels != rnet.backbone.out_channels:
        guess = _BACKBONE_BY_CHANNELS.get(channels, f"a backbone with {channels} output channels")
        raise InvalidInputError(
            f"{path} was trained with {guess} ({channels} feature channels), but this RNet uses "
            f"{rnet.backbone_name} ({rnet.backbone.out_channels}); build RNet(..., backbone={guess!r})"
        )
    load_state_dict_checked(rnet, state, f"Deep3D checkpoint {path}")


def export_deep3d_checkpoint(rnet: RNet, path: str | Path) -> None:
    """Write ``rnet`` as ``{"net_recon": state_dict}``, which Deep3D's test-time loader reads.

    Deep3D's resumed training also expects optimiser and scheduler entries (``opt_00``, ``sched_00``),
    which are not written.
    """
    _check_layout(rnet)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in rnet.state_dict().items()}
    torch.save({"net_recon": state}, path)
