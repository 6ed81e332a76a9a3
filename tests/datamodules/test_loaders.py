"""What the DataModules share: worker counts that follow the machine, the loader, the hash split."""

from __future__ import annotations

import warnings

import pytest
import torch

from datamodules.loaders import (
    AUTO_WORKERS,
    hash_fraction,
    make_loader,
    resolve_num_workers,
    split_by_hash,
    stage_splits,
)


def test_worker_count_follows_the_cpu_count():
    # The paper's 4 workers on a 2-core machine: one (the other core trains), with a warning saying so.
    with pytest.warns(UserWarning, match="data.num_workers=4.*2 CPUs.*using 1"):
        assert resolve_num_workers(4, cpus=2) == 1
    with pytest.warns(UserWarning):
        assert resolve_num_workers(4, cpus=1) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_num_workers(4, cpus=16) == 4
        assert resolve_num_workers(0, cpus=2) == 0
        assert resolve_num_workers(AUTO_WORKERS, cpus=16) == 15
        assert resolve_num_workers(AUTO_WORKERS, cpus=1) == 0
    with pytest.raises(ValueError, match="num_workers"):
        resolve_num_workers(-2, cpus=4)


def test_the_loader_uses_the_resolved_worker_count(monkeypatch):
    monkeypatch.setattr("datamodules.loaders.available_cpus", lambda: 1)
    data = [torch.tensor([float(i)]) for i in range(5)]
    loader = make_loader(data, batch_size=2, shuffle=True, seed=0, num_workers=AUTO_WORKERS, collate_fn=torch.stack)
    assert loader.num_workers == 0 and loader.drop_last
    assert sum(len(batch) for batch in loader) == 4  # the shuffled remainder of one is dropped
    assert not make_loader(data, 2, False, 0, 0, torch.stack).drop_last


def test_stages_read_their_splits():
    assert stage_splits("fit") == ("train", "val") and stage_splits("test") == ("test",)
    assert stage_splits(None) == ("train", "val", "test")


def test_hash_split_is_stable_and_always_validates_when_it_can():
    names = [f"person{i}" for i in range(200)]
    train, val = split_by_hash(names, str, 0.25, "people")
    assert 30 < len(val) < 70 and set(train) | set(val) == set(names) and not set(train) & set(val)
    assert all((hash_fraction(name) < 0.25) == (name in val) for name in names)
    # A few items at a small share: the hash alone holds out none, so the one closest to the threshold goes.
    few = [name for name in names if hash_fraction(name) >= 0.05][:3]
    with pytest.warns(UserWarning, match="holding out one"):
        train, val = split_by_hash(few, str, 0.05, "people")
    assert val == [min(few, key=hash_fraction)] and len(train) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert split_by_hash(few, str, 0.0, "people") == (few, [])
    with pytest.warns(UserWarning, match="nothing is validated"):
        assert split_by_hash(few[:1], str, 0.05, "people") == (few[:1], [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_hash(few, str, 1.0, "people")
