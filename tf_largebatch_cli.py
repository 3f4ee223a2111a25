"""Console entry point of ``tf-largebatch``; the command itself is :mod:`tf_largebatch.cli`.

A console script imports its module's package first, and ``import tf_largebatch``
imports TensorFlow: every optimizer, schedule and layer must be registered with
Keras serialization by then, because ``keras.saving.load_model`` (Keras 3.15,
``serialization_lib._retrieve_class_or_fn``) imports the module recorded in a saved
config only for Keras's own packages, never for ours. This launcher lives beside the
package so that it runs first: while it is imported, ``tf_largebatch/__init__.py``
defers its submodules (PEP 562 ``__getattr__``), ``tf-largebatch --help`` and
``--version`` answer without TensorFlow, and :mod:`tf_largebatch.cli` imports
TensorFlow only for a subcommand that trains, after quieting its logging.
"""

import sys


def main(argv=None):
    """Runs ``tf-largebatch``; returns the process exit code."""
    from tf_largebatch import cli

    return cli.main(argv)


if __name__ == "__main__":
    # ``python -m tf_largebatch_cli``: import this file under its own name too, so the
    # package sees the launcher as it does under the console script.
    import tf_largebatch_cli

    sys.exit(tf_largebatch_cli.main())
