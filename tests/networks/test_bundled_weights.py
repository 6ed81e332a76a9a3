"""Weights folders (`networks.bundled_weights`): round trip, checksum, and the messages for a damaged copy."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import networks.bundled_weights as bw


def state() -> dict:
    return {"a.weight": torch.randn(3, 4), "a.bias": torch.randn(3), "bn.num_batches_tracked": torch.tensor(7)}


def test_round_trip_stores_half_precision_and_a_card_with_the_files_checksum(tmp_path):
    original = state()
    path = bw.write_weights(tmp_path, original, "name: x\n", {"training": {"steps": 5}}, step=5, epoch=1)
    card = json.loads((tmp_path / bw.CARD_NAME).read_text())
    assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card["bytes"] == path.stat().st_size and card["dtype"] == "float16" and card["training"]["steps"] == 5
    assert "SHA-256" in (tmp_path / bw.CARD_MARKDOWN_NAME).read_text()
    loaded = bw.read_weights(tmp_path)
    assert loaded.config_yaml == "name: x\n" and loaded.path == path
    assert loaded.state_dict["a.weight"].dtype == torch.float16
    torch.testing.assert_close(loaded.state_dict["a.weight"].float(), original["a.weight"], atol=2e-3, rtol=1e-3)
    assert loaded.state_dict["bn.num_batches_tracked"].item() == 7
    # The counters sit where a Lightning checkpoint keeps them (the benchmark report reads them).
    raw = torch.load(path, weights_only=True)
    assert raw["global_step"] == 5 and raw["epoch"] == 1


def test_a_modified_file_fails_the_checksum_naming_the_file_and_the_fix(tmp_path, monkeypatch):
    path = bw.write_weights(tmp_path, state(), "name: x\n", {})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{path}.*fails its SHA-256 check.*face3d export-weights"):
        bw.read_weights(tmp_path)
    # The bundled copy: restore it from git.
    monkeypatch.setattr(bw, "BUNDLED_DIR", tmp_path.resolve())
    with pytest.raises(ValueError, match=r"fails its SHA-256 check.*git checkout -- .*rnet\.pt"):
        bw.read_weights(tmp_path)


def test_missing_and_foreign_files(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="rnet.pt not found.*face3d export-weights"):
        bw.read_weights(tmp_path)
    monkeypatch.setattr(bw, "BUNDLED_DIR", tmp_path.resolve())
    with pytest.raises(FileNotFoundError, match="bundled R-Net is missing.*git checkout --.*--config shipped"):
        bw.read_weights(tmp_path)
    # A file that matches its card's checksum but is not R-Net weights.
    torch.save({"something": torch.zeros(2)}, tmp_path / bw.WEIGHTS_NAME)
    (tmp_path / bw.CARD_NAME).write_text(json.dumps({"sha256": bw.sha256_file(tmp_path / bw.WEIGHTS_NAME)}))
    with pytest.raises(ValueError, match="not an R-Net weights file"):
        bw.read_weights(tmp_path)
    (tmp_path / bw.CARD_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        bw.read_weights(tmp_path)


def test_values_beyond_half_precision_are_refused_not_stored_as_infinity(tmp_path):
    with pytest.raises(ValueError, match="store float32"):
        bw.write_weights(tmp_path, {"bn.running_var": torch.tensor([1.0, 1e6])}, "", {})
    bw.write_weights(tmp_path, {"bn.running_var": torch.tensor([1.0, 1e6])}, "", {}, dtype=torch.float32)
    assert bw.read_weights(tmp_path).state_dict["bn.running_var"][1] == 1e6
