"""``face3d sweep``: run a W&B sweep file (experiments/sweeps/*.yaml) offline, one W&B offline run per
configuration, and rank the runs in summary.md / summary.csv (see `experiments.sweeping`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run a W&B sweep file offline (grid or random) and rank the runs",
        description="Expand a W&B sweep file (method grid or random) and train each configuration as a W&B "
        "offline run in OUT/<run id>; OUT/summary.md and summary.csv rank the runs by the sweep's "
        "metric. Re-running skips completed runs. Online, the same file works with "
        "`wandb sweep FILE` then `wandb agent ENTITY/PROJECT/ID`.",
    )
    p.add_argument(
        "sweep",
        metavar="SWEEP_YAML",
        help="sweep file, as a path or a name under experiments/sweeps/ (e.g. table1_cpu)",
    )
    p.add_argument("--out", type=Path, default=None, help="sweep directory (default: outputs/sweeps/<sweep name>)")
    p.add_argument(
        "--count",
        type=int,
        default=None,
        help="number of runs: draws for random search (default: the file's run_cap), the first N "
        "configurations for grid search",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random search's draws (default 0)")
    p.add_argument("--dry-run", action="store_true", help="print the expanded runs and exit")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="train in this process instead of one child process per run (for debugging: a crash then ends the sweep)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from experiments.sweeping import (
        InProcessExecutor,
        completed_result,
        default_out_dir,
        load_sweep,
        plan,
        run_sweep,
        wandb_token,
    )

    sweep = load_sweep(args.sweep)
    out_dir = args.out if args.out is not None else default_out_dir(sweep)
    if args.dry_run:
        runs = plan(sweep, args.count, args.seed)
        print(
            f"sweep {sweep.name} ({sweep.method}, {sweep.metric.goal} {sweep.metric.name}): {len(runs)} runs "
            f"in {out_dir}/"
        )
        fixed = [wandb_token(k, v) for k, v in sweep.fixed().items()]
        print(
            f"each: face3d train {' '.join('--config ' + c for c in sweep.config_files)} "
            f"{' '.join([*sweep.command_overrides, *fixed])} SWEPT_PARAMETERS logging.output_dir={out_dir} "
            "logging.run_name=RUN_ID logging.wandb_mode=offline"
        )
        for run_ in runs:
            done = completed_result(out_dir.resolve() / run_.run_id, run_.overrides)
            if run_.config_error:
                state = run_.config_error
            elif run_.skip_reason:
                state = f"skip: {run_.skip_reason}"
            elif done is not None:
                state = f"done: {sweep.metric.name}={done['metric']:.4g}"
            else:
                state = "to run"
            params = " ".join(wandb_token(k, run_.params[k]) for k in sweep.swept())
            print(f"  {run_.run_id}  {params}  [{state}]")
        return 0
    executor = InProcessExecutor() if args.in_process else None
    records = run_sweep(sweep, out_dir, count=args.count, seed=args.seed, executor=executor)
    print("\n" + (out_dir / "summary.md").read_text())
    print(f"summary: {out_dir / 'summary.md'} and {out_dir / 'summary.csv'}")
    failed = [r for r in records if r.status == "failed"]
    if failed:
        print(
            f"{len(failed)} of {len(records)} runs failed (errors in the summary; each run's log is "
            f"<run dir>/train.log); re-running the sweep retries them and skips the completed ones"
        )
        return 1
    return 0
