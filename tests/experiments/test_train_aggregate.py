"""`experiments.train_aggregate` pieces that need no training (the end-to-end run is in test_reconstruct_set)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from errors import ExistingOutputError
from experiments.train_aggregate import check_same_rnet
from networks.rnet import same_rnet


def _linear(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


def test_same_rnet_compares_names_shapes_and_values_of_modules_or_state_dicts():
    a, b = _linear(0), _linear(0)
    assert same_rnet(a, b) and same_rnet(a.state_dict(), b)
    assert not same_rnet(a, _linear(1))
    with torch.no_grad():
        b[1].running_mean += 1.0  # buffers count: a C-Net saw the R-Net's BatchNorm statistics
    assert not same_rnet(a, b)
    fewer = {k: v for k, v in a.state_dict().items() if k != "0.bias"}
    assert not same_rnet(fewer, a)


def test_resuming_a_cnet_of_another_rnet_is_refused(tmp_path):
    rnet = _linear(0)
    checkpoint = tmp_path / "last.ckpt"
    state = {f"rnet.{k}": v for k, v in rnet.state_dict().items()}
    torch.save({"state_dict": {**state, "cnet.head.weight": torch.zeros(1)}}, checkpoint)
    check_same_rnet(checkpoint, SimpleNamespace(rnet=rnet))
    with pytest.raises(ExistingOutputError, match="another R-Net"):
        check_same_rnet(checkpoint, SimpleNamespace(rnet=_linear(1)))
