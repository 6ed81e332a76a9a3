"""``face3d train``: train R-Net from experiment configs (schema in `experiments.config`)."""

from __future__ import annotations

import argparse

from experiments.commands.common import add_run_arguments, print_config_if_asked


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train R-Net (configs under experiments/configs/, overrides as key=value)",
        description="Train R-Net. Configs merge in order (schema defaults, each --config, then key=value "
        "overrides); unknown keys fail.",
    )
    add_run_arguments(
        p,
        config_help="config name under experiments/configs/ (e.g. default, paper_ict, ablations/no_perceptual) "
        "or a YAML path; repeatable",
        resume_help="continue the run's last.ckpt if it exists (start fresh otherwise)",
        fast_dev_run_help="one train and one val batch, no checkpoints",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    files = args.config or ["default"]
    if print_config_if_asked(args, files):
        return 0
    from experiments.config import load_config
    from experiments.train import train

    cfg = load_config(files, args.overrides)
    if cfg.focus.enabled:
        from experiments.train_focus import train_focus

        print("\n" + train_focus(cfg, resume=args.resume).summary())
        return 0
    if cfg.hrn.enabled:
        from experiments.train_hrn import train_hrn

        print("\n" + train_hrn(cfg, resume=args.resume).summary())
        return 0
    result = train(cfg, resume=args.resume, fast_dev_run=args.fast_dev_run)
    print("\n" + result.summary())
    return 0
