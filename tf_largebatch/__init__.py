"""tf_largebatch: large-batch training optimizers and recipe for TensorFlow/Keras 3.

Importing the package registers every optimizer, schedule and layer with Keras's
serialization, so ``keras.saving.load_model`` finds them in a fresh process after
only ``import tf_largebatch``. It needs Keras's TensorFlow backend.

The one exception is the ``tf-largebatch`` command: its launcher
(``tf_largebatch_cli``) is imported first, and then this module defers its
submodules until they are used, so the command's ``--help`` and ``--version`` do
not load TensorFlow. See ``docs/design.md``, "The command and import time".
"""

import importlib
import os
import sys
import typing

from tf_largebatch._version import __version__

_SUBMODULES = ("batch_size_schedule", "callbacks", "layers", "losses", "optimizers", "scaling", "schedules")
_OPTIMIZERS = (
    "AdaScale", "LAMB", "LARS", "MCLR", "SNGM", "VR", "VRSGD", "LayerwiseAdagrad", "LayerwiseAdam", "LayerwiseRMSprop",
    "LayerwiseSGD", "LossScaleOptimizer", "PercentDelta", "VRAdam", "VRLAMB", "VRLARS", "VRMomentum",
)
__all__ = ["__version__", *_SUBMODULES, *_OPTIMIZERS]

if typing.TYPE_CHECKING:  # what _import_all() binds, spelled out for IDEs and type checkers
    from tf_largebatch import batch_size_schedule, callbacks, layers, losses, optimizers, scaling, schedules
    from tf_largebatch.optimizers import (
        AdaScale, LAMB, LARS, MCLR, SNGM, VR, VRSGD, LayerwiseAdagrad, LayerwiseAdam, LayerwiseRMSprop,
        LayerwiseSGD, LossScaleOptimizer, PercentDelta, VRAdam, VRLAMB, VRLARS, VRMomentum,
    )


def _import_keras():
    """Imports Keras; a non-TensorFlow backend whose own dependencies are missing fails
    inside Keras with an unrelated message, so name the backend then. (A backend that
    imports is refused by ``optimizers.keras_seam.check_backend``.)"""
    try:
        import keras  # noqa: F401
    except ImportError as error:
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        if backend != "tensorflow":
            raise ImportError(
                "tf_largebatch needs Keras's TensorFlow backend, and importing Keras with the "
                f"{backend!r} backend failed. Set KERAS_BACKEND=tensorflow before importing keras."
            ) from error
        raise


def _import_all():
    """Imports every submodule, so every class is registered with Keras serialization.

    ``import tf_largebatch`` does this itself; the ``tf-largebatch`` command calls it
    when a subcommand starts TensorFlow.
    """
    _import_keras()
    for name in _SUBMODULES:
        globals()[name] = importlib.import_module(f"{__name__}.{name}")
    for name in _OPTIMIZERS:
        globals()[name] = getattr(globals()["optimizers"], name)


def __getattr__(name):
    # Reached only while a name has not been imported yet: under the tf-largebatch launcher.
    if name in _SUBMODULES or name in _OPTIMIZERS:
        _import_all()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


if "tf_largebatch_cli" not in sys.modules:
    _import_all()
