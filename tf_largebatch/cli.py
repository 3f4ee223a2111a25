"""The ``tf-largebatch`` command.

Subcommands:

``tf-largebatch train (--config FILE | --experiment NAME) [--set key.path=value ...] [--smoke]``
    ``--experiment`` runs a config shipped with the package by name
    (``tf-largebatch train --help`` lists them). Validates the config (every error names its key path and stops before
    anything is built), then trains it: see :mod:`tf_largebatch.pipelines.train`.
    ``--set`` values are read as YAML (``--set optimizer.args.momentum=0.95``,
    ``--set strategy.type=tpu --set strategy.tpu=my-pod``); ``phases.<i>.``
    addresses one phase. ``--smoke`` shrinks model, data and steps to run on a
    CPU in seconds. ``--dry-run`` only validates and prints the resolved config.

``tf-largebatch demo ...``
    A batch-size scaling study, offline: see :mod:`tf_largebatch.study.cli`.

Startup. Under the console script (``tf_largebatch_cli``) the package defers its
imports, so parsing the command line, ``--help`` and ``--version`` never load
TensorFlow. A subcommand that trains starts TensorFlow through
:func:`~tf_largebatch.startup.start_tensorflow`, which first quiets TensorFlow's C++ and Python logging
(``--verbose`` keeps it) and then imports the whole package, so every class is
registered with Keras as after ``import tf_largebatch``.
"""

import argparse
import importlib.util
import logging
import sys

from tf_largebatch._version import __version__
from tf_largebatch import startup
from tf_largebatch.startup import start_tensorflow  # noqa: F401 - also tf_largebatch.cli.start_tensorflow

logger = logging.getLogger("tf_largebatch")


def _configure_logging(verbose):
    """The package's own messages (``tf_largebatch.*`` loggers) go to stderr, once.

    They do not propagate to the root logger, where absl installs its own handler
    when TensorFlow loads (each line would be printed twice). A handler already
    on the ``tf_largebatch`` logger (an application embedding the command) is kept.
    """
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("tf-largebatch: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


# ------------------------------------------------------------------- train
def _add_train(subparsers):
    from tf_largebatch.config.experiments import experiment_names  # no TensorFlow import

    names = experiment_names()
    parser = subparsers.add_parser(
        "train",
        help="train a model from a YAML config or a shipped experiment",
        description="Train a model from a YAML config (--config FILE) or a shipped experiment (--experiment NAME).",
        epilog="shipped experiments (--experiment NAME): " + (", ".join(names) or "none found"),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="YAML config file")
    source.add_argument("--experiment", metavar="NAME",
                        help="a config shipped with the package, by name (listed below)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="override a config value (YAML-typed); repeatable; phases.<i>.KEY for one phase",
    )
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model, data and step counts: an end-to-end check on a CPU; synthetic data "
                             "where the real data is not on this machine (unless --set chooses data.synthetic, "
                             "data.train_files, data.eval_files, data.name or data.data_dir)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and print the resolved config; no training (and no checks of this machine)")
    _add_verbose(parser, default=argparse.SUPPRESS)
    parser.set_defaults(handler=_train)


def _load_train_configs(args, config_lib):
    """The checked phases of ``args``; raises ConfigError before anything is built."""
    path = config_lib.experiment_path(args.experiment) if args.experiment else args.config
    configs = config_lib.load_config(path, overrides=args.overrides, smoke=args.smoke)
    if args.dry_run:
        return configs
    if args.smoke and not any(_chooses_data(text) for text in args.overrides):
        from tf_largebatch.pipelines import synthetic

        configs = synthetic.where_data_is_missing(configs)
    config_lib.check_environment(configs, smoke=args.smoke)
    return configs


def _missing_extra(command, extra, modules):
    """A message if a module of ``extra`` is not installed, else ``None``."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        return (f"tf-largebatch {command} needs the {extra} extra, and {', '.join(missing)} is not installed: "
                f"pip install \"tf_largebatch[{extra}]\"")
    return None


_DATA_CHOICES = ("synthetic", "train_files", "eval_files", "name", "data_dir")


def _chooses_data(override):
    """Whether a ``--set`` text chooses the data (``data.synthetic`` or where the
    real data is), for every phase or one: then ``--smoke`` keeps that choice."""
    key = override.partition("=")[0].strip().split(".")
    if key[:1] == ["phases"]:
        key = key[2:]
    return len(key) == 2 and key[0] == "data" and key[1] in _DATA_CHOICES


def _train(args):
    missing = _missing_extra("train", "pipelines", ["yaml"])
    if missing:
        print(f"tf-largebatch: error: {missing}", file=sys.stderr)
        return 2
    # Validating a config builds its optimizer, so TensorFlow starts (quietly) first.
    startup.start_tensorflow(args.verbose)
    from tf_largebatch import config as config_lib

    try:
        configs = _load_train_configs(args, config_lib)
    except config_lib.ConfigError as error:
        print(f"tf-largebatch: config error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        import yaml

        # One YAML document per phase, each opened by '---' (yaml.safe_load_all reads them back).
        print(yaml.safe_dump_all([config_lib.to_dict(cfg) for cfg in configs], sort_keys=False,
                                 explicit_start=True), end="")
        return 0
    from tf_largebatch.pipelines import train

    try:
        summaries = train.run(configs)
    except config_lib.ConfigError as error:
        print(f"tf-largebatch: config error: {error}", file=sys.stderr)
        return 2
    for summary in summaries:
        phase = f" [{summary['phase']}]" if summary.get("phase") else ""
        print(f"tf-largebatch: {summary['name']}{phase}: final logs after {summary['optimizer_updates']} optimizer "
              f"updates: {summary['final_logs']}")
    return 0


# -------------------------------------------------------------------- demo
def _add_demo(subparsers):
    # Listed here for --help; its own arguments are defined by tf_largebatch.study.cli.
    parser = subparsers.add_parser("demo", help="batch-size scaling study of the optimizers (tf-largebatch demo "
                                   "--help)", add_help=False)
    parser.set_defaults(handler=_demo)


def _demo(args):
    from tf_largebatch.study import cli as study_cli  # flags and their checks: no TensorFlow

    # --verbose may also follow the subcommand; the study's own parser does not know it.
    verbose_flags = {"-v", "--verbose"}
    args.verbose = args.verbose or any(arg in verbose_flags for arg in args.rest)
    return study_cli.main([arg for arg in args.rest if arg not in verbose_flags], verbose=args.verbose)


# -------------------------------------------------------------------- main
def _add_verbose(parser, default):
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="show TensorFlow's own log lines and the package's debug messages")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tf-largebatch",
        description="Large-batch training with tf_largebatch: reference pipelines and demos.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_verbose(parser, default=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    _add_train(subparsers)
    _add_demo(subparsers)
    return parser


def main(argv=None):
    """Runs ``tf-largebatch`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = build_parser().parse_known_args(argv)
    if args.command == "demo":
        args.rest = rest
    elif rest:
        build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
    _configure_logging(args.verbose)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
