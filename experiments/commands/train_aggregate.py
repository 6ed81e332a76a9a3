"""``face3d train-aggregate``: train C-Net on a frozen R-Net and compare the aggregation strategies."""

from __future__ import annotations

import argparse

from experiments.commands.common import add_run_arguments, print_config_if_asked


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-aggregate",
        help="train C-Net (image-set aggregation) on a frozen R-Net and print the strategy table",
        description="Train C-Net (Deng et al. 2019 §5) on image sets with a frozen R-Net: by default the latest "
        "`make train-single` checkpoint, trained first if there is none. Trains the S4 (element-wise) "
        "and S1 (global) C-Nets, then prints and saves the shape-error table (mean per-image error, "
        "shape averaging, S1-S4) on held-out synthetic identities, and confidence plots. Configs merge "
        "in order (R-Net checkpoint's model and loss, each --config, then key=value overrides).",
    )
    p.add_argument(
        "--rnet-ckpt",
        default=None,
        metavar="PATH",
        help="R-Net checkpoint written by `face3d train` (default: outputs/train-single/checkpoints/"
        "best-*.ckpt, else last.ckpt)",
    )
    add_run_arguments(
        p,
        config_help="config name under experiments/configs/ or a YAML path; repeatable (default: aggregate)",
        resume_help="continue each strategy's last.ckpt if it exists (a finished run is only re-evaluated)",
        fast_dev_run_help="one train and one val batch per C-Net, no checkpoints",
        print_config_help="print the merged config (before the R-Net's sections are filled in) and exit",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from experiments.train_aggregate import DEFAULT_CONFIGS, train_aggregate

    files = args.config or list(DEFAULT_CONFIGS)
    if print_config_if_asked(args, files):
        return 0
    result = train_aggregate(
        files, args.overrides, rnet_checkpoint=args.rnet_ckpt, resume=args.resume, fast_dev_run=args.fast_dev_run
    )
    print("\n" + result.summary())
    return 0
