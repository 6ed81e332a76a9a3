"""``face3d train --config hrn``: the config, and (slow) a tiny end-to-end run on the bundled R-Net."""

from __future__ import annotations

import pytest

from experiments.cli import main
from experiments.config import load_config


def test_hrn_config_turns_hrn_on_and_fits_the_schema():
    cfg = load_config(["hrn"], ["hrn.data.high_size=64"])
    assert cfg.hrn.enabled and cfg.hrn.rnet == "bundled" and cfg.hrn.data.high_size == 64
    assert not load_config(["default"], []).hrn.enabled
    with pytest.raises(ValueError, match="hrn.loss.contur"):
        load_config(["hrn"], ["hrn.loss.contur=1"])


@pytest.mark.slow
def test_tiny_hrn_run_prints_the_detail_table(tmp_path, capsys):
    overrides = [
        "hrn.data.n_train=4",
        "hrn.data.n_val=2",
        "hrn.data.n_test=2",
        "hrn.data.mid_size=16",
        "hrn.data.high_size=32",
        "hrn.network.widths=[4,8]",
        "hrn.data.batch_size=2",
        "trainer.max_steps=2",
        f"logging.output_dir={tmp_path}",
    ]
    assert main(["train", "--config", "hrn", *overrides]) == 0
    out = capsys.readouterr().out
    assert "| + displacement |" in out and (tmp_path / "hrn" / "checkpoints" / "last.ckpt").is_file()
    assert main(["train", "--config", "hrn", *overrides]) == 2, "an existing run is not overwritten"
