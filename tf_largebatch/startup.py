"""Starting TensorFlow for a subcommand of ``tf-largebatch``, quietly.

Shared by the command (:mod:`tf_largebatch.cli`) and the study's subcommand
(:mod:`tf_largebatch.study.cli`), which both import it; neither imports the
other's module for it. Importing this module does not load TensorFlow.
"""

import contextlib
import logging
import os
import sys


@contextlib.contextmanager
def _stderr_to_devnull():
    """Sends file descriptor 2 to /dev/null inside the block (C++ writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def start_tensorflow(verbose=False):
    """Imports TensorFlow and the whole package, quietly unless ``verbose``.

    Quiet means: ``TF_CPP_MIN_LOG_LEVEL=3`` (unless the user set it) for the C++
    logging after start-up, the ``tensorflow`` and ``absl`` Python loggers at
    ERROR, and file descriptor 2 silenced while TensorFlow's shared libraries
    load: they log a few lines before absl's C++ logging is initialised, which no
    setting suppresses. A failing import still raises its Python exception, after
    stderr is restored. Must run before anything imports TensorFlow to have an
    effect on its start-up lines.

    Args:
        verbose: bool, keep TensorFlow's own logging settings.
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if verbose:
        import tensorflow  # noqa: F401
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        for name in ("tensorflow", "absl"):
            logging.getLogger(name).setLevel(logging.ERROR)
        with _stderr_to_devnull():
            import tensorflow  # noqa: F401
    import tf_largebatch

    tf_largebatch._import_all()
