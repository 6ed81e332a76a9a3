"""Scale-out through Lightning's DDP strategy: two CPU processes (gloo) train a few steps."""

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    from pathlib import Path

    import pytorch_lightning as pl
    import torch

    from experiments.config import load_config
    from experiments.train import train

    out = Path(sys.argv[1])

    class Recorder(pl.Callback):
        def __init__(self):
            self.indices = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.indices.append(batch.index.tolist())

        def on_train_end(self, trainer, module):
            digest = hashlib.sha256()
            for p in module.rnet.parameters():
                digest.update(p.detach().cpu().numpy().tobytes())
            rank = trainer.global_rank
            (out / f"rank{rank}.json").write_text(json.dumps(
                {"rank": rank, "world": trainer.world_size, "indices": self.indices, "weights": digest.hexdigest()}))

    cfg = load_config(["default", "smoke"], [
        "data.batch_size=2", "data.synthetic.n_train=16",
        "trainer.max_steps=3", "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.strategy=ddp", f"logging.output_dir={out}",
    ])
    train(cfg, extra_callbacks=[Recorder()])
    """
)


@pytest.mark.slow
def test_two_cpu_processes_see_different_data_and_end_with_identical_weights(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    assert len(ranks[0]["indices"]) == len(ranks[1]["indices"]) == 3
    for step0, step1 in zip(ranks[0]["indices"], ranks[1]["indices"]):
        assert not set(step0) & set(step1), "each rank must get its own shard of the data"
    assert ranks[0]["weights"] == ranks[1]["weights"], "gradients are all-reduced, so weights stay identical"
