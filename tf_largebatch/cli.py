"""The ``tf-largebatch`` console script.

Subcommands:

``tf-largebatch train --config FILE [--set key.path=value ...] [--smoke]``
    Validates the config (every error names its key path and stops before
    anything is built), then trains it: see :mod:`tf_largebatch.pipelines.train`.
    ``--set`` values are read as YAML (``--set optimizer.args.momentum=0.95``,
    ``--set strategy.type=tpu --set strategy.tpu=my-pod``); ``phases.<i>.``
    addresses one phase. ``--smoke`` shrinks model, data and steps to run on a
    CPU in seconds. ``--dry-run`` only validates and prints the resolved config.

``tf-largebatch demo ...``
    A batch-size scaling study, offline: see :mod:`tf_largebatch.study.cli`.

TensorFlow is imported only by the subcommand that needs it, so ``--help`` is fast.
"""

import argparse
import sys


def _add_train(subparsers):
    parser = subparsers.add_parser(
        "train",
        help="train a model from a YAML config (see tpu_configs/)",
        description="Train a model from a YAML config (see tpu_configs/).",
    )
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="override a config value (YAML-typed); repeatable; phases.<i>.KEY for one phase",
    )
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model, data and step counts: an end-to-end check on a CPU")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the resolved config; no training")
    parser.set_defaults(handler=_train)


def _train(args):
    from tf_largebatch import config as config_lib

    try:
        configs = config_lib.load_config(args.config, overrides=args.overrides, smoke=args.smoke)
    except config_lib.ConfigError as error:
        print(f"tf-largebatch: config error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        import yaml

        for cfg in configs:
            print(yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False))
        return 0
    from tf_largebatch.pipelines import train

    try:
        summaries = train.run(configs)
    except config_lib.ConfigError as error:
        print(f"tf-largebatch: config error: {error}", file=sys.stderr)
        return 2
    for summary in summaries:
        phase = f" [{summary['phase']}]" if summary.get("phase") else ""
        print(f"tf-largebatch: {summary['name']}{phase}: {summary['optimizer_steps']} optimizer steps, "
              f"final {summary['final_logs']}")
    return 0


def _add_demo(subparsers):
    # Listed here for --help; main() hands its arguments to tf_largebatch.study.cli.
    subparsers.add_parser("demo", help="batch-size scaling study of the optimizers (tf-largebatch demo --help)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tf-largebatch",
        description="Large-batch training with tf_largebatch: reference pipelines and demos.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    _add_train(subparsers)
    _add_demo(subparsers)
    return parser


def main(argv=None):
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "demo":
        # The study's flags come from tf_largebatch.study.cli; TensorFlow loads only once they are valid.
        from tf_largebatch.study import cli as study_cli

        return int(study_cli.main(argv[1:]) or 0)
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
