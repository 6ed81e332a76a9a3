"""The child process of `experiments.sweeping.executors.SubprocessExecutor`: ``python -m experiments.sweeping.worker
REQUEST`` trains one configuration and writes its result file."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from experiments.config import load_config
from experiments.sweeping.executors import error_text


def main(request_path: Path) -> int:
    """Train one configuration (the child process of SubprocessExecutor) and write its result file."""
    request = json.loads(Path(request_path).read_text())
    result_path = Path(request["result"])
    try:
        cfg = load_config(request["config_files"], request["overrides"])
        from experiments.train import train

        # resume: an interrupted run continues from its last.ckpt; a fresh run has none and starts over.
        metrics = dict(train(cfg, resume=True).test_metrics)
    except Exception as err:  # noqa: BLE001 -- reported to the parent, which records the run as failed
        traceback.print_exc()
        result_path.write_text(json.dumps({"error": error_text(err)}))
        return 1
    result_path.write_text(json.dumps({"test_metrics": metrics}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m experiments.sweeping.worker REQUEST_JSON (the child process of a sweep run)")
    sys.exit(main(Path(sys.argv[1])))
