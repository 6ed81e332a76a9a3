"""``face3d train``: train R-Net from experiment configs (schema in `experiments.config`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train R-Net (configs under experiments/configs/, overrides as key=value)",
        description="Train R-Net. Configs merge in order (schema defaults, each --config, then key=value "
        "overrides); unknown keys fail.",
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME_OR_PATH",
        help="config name under experiments/configs/ (e.g. default, paper_ict, ablations/no_perceptual) "
        "or a YAML path; repeatable",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run's last.ckpt if it exists (start fresh otherwise)"
    )
    p.add_argument("--fast-dev-run", action="store_true", help="one train and one val batch, no checkpoints")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from experiments.config import load_config, to_yaml

    cfg = load_config(args.config or ["default"], args.overrides)
    if args.print_config:
        print(to_yaml(cfg))
        return 0
    if cfg.focus.enabled:
        from experiments.train_focus import train_focus

        print("\n" + train_focus(cfg, resume=args.resume).summary())
        return 0
    from experiments.train import train

    result = train(cfg, resume=args.resume, fast_dev_run=args.fast_dev_run)
    print("\n" + result.summary())
    return 0
