"""The one registry of optimizer names: this package's and Keras's, and which of them train.

Configs (``optimizer.name``), the study (its recipes) and the command line look
optimizers up here. Each entry says where the class comes from and its role:

* ``"trains"``: an optimizer to train with (``SNGM``, ``VRAdam``, Keras's ``Adam``),
  including those that wrap an inner optimizer but are themselves what the
  model is compiled with and a config names (``VR``, ``AdaScale``);
* ``"wrapper"``: a class that wraps another optimizer or is a base
  (``LossScaleOptimizer``, ``LargeBatchOptimizer``, Keras's ``MultiOptimizer``,
  ``Optimizer``): it is never offered as a name to train with, and an
  unknown-name message never lists it.

This package's optimizers are listed once, below. Keras's are read from
``keras.optimizers`` (every public ``keras.optimizers.Optimizer`` subclass),
so a Keras release that adds one needs no change here; only its wrappers are
named (:data:`KERAS_WRAPPERS`).
"""

import collections
import difflib

import keras

from tf_largebatch.optimizers.adascale import AdaScale
from tf_largebatch.optimizers.base import LargeBatchOptimizer
from tf_largebatch.optimizers.curvature import MCLR, PercentDelta
from tf_largebatch.optimizers.lamb import LAMB
from tf_largebatch.optimizers.lars import LARS
from tf_largebatch.optimizers.layerwise import LayerwiseAdagrad, LayerwiseAdam, LayerwiseRMSprop, LayerwiseSGD
from tf_largebatch.optimizers.loss_scale import LossScaleOptimizer
from tf_largebatch.optimizers.sngm import SNGM
from tf_largebatch.optimizers.vr import VR, VRSGD, VRAdam, VRLAMB, VRLARS, VRMomentum

TRAINS, WRAPPER = "trains", "wrapper"
PACKAGE, KERAS = "tf_largebatch", "keras"

#: ``name``: the public name; ``cls``: the class; ``source``: ``"tf_largebatch"``
#: or ``"keras"``; ``role``: ``"trains"`` or ``"wrapper"``.
OptimizerEntry = collections.namedtuple("OptimizerEntry", ["name", "cls", "source", "role"])

#: This package's optimizer classes and their roles.
PACKAGE_OPTIMIZERS = (
    (SNGM, TRAINS), (LARS, TRAINS), (LAMB, TRAINS),
    (LayerwiseSGD, TRAINS), (LayerwiseAdagrad, TRAINS), (LayerwiseRMSprop, TRAINS), (LayerwiseAdam, TRAINS),
    (MCLR, TRAINS), (PercentDelta, TRAINS),
    (VR, TRAINS), (VRSGD, TRAINS), (VRMomentum, TRAINS), (VRAdam, TRAINS), (VRLAMB, TRAINS), (VRLARS, TRAINS),
    (AdaScale, TRAINS),
    (LargeBatchOptimizer, WRAPPER), (LossScaleOptimizer, WRAPPER),
)

#: Classes of ``keras.optimizers`` that wrap another optimizer or are its base.
KERAS_WRAPPERS = ("Optimizer", "LossScaleOptimizer", "MultiOptimizer")


def _keras_entries():
    entries = []
    for name in sorted(dir(keras.optimizers)):
        value = getattr(keras.optimizers, name)
        if not name.startswith("_") and isinstance(value, type) and issubclass(value, keras.optimizers.Optimizer):
            entries.append(OptimizerEntry(name, value, KERAS, WRAPPER if name in KERAS_WRAPPERS else TRAINS))
    return tuple(entries)


#: Every entry: this package's first, then Keras's (a name of both resolves to this package's).
ENTRIES = tuple(OptimizerEntry(cls.__name__, cls, PACKAGE, role) for cls, role in PACKAGE_OPTIMIZERS) + \
    _keras_entries()


def entries(source=None, role=TRAINS):
    """The entries of ``source`` (``None``: both) with ``role`` (``None``: any), in registry order."""
    return [e for e in ENTRIES if source in (None, e.source) and role in (None, e.role)]


def names(source=None, role=TRAINS):
    """Sorted names of :func:`entries` (by default: what trains)."""
    return sorted({e.name for e in entries(source, role)})


def classes(source=PACKAGE, role=TRAINS):
    """``{name: class}`` of :func:`entries` (by default: this package's optimizers, e.g. for
    ``keras.saving.custom_object_scope``)."""
    return {e.name: e.cls for e in entries(source, role)}


def lookup(name, *, ignore_case=False):
    """The entry called ``name`` (this package's first), of any role; ``None`` if there is none.

    Args:
        name: a class name such as ``"VRAdam"`` or ``"Adam"``.
        ignore_case: also match ``"vradam"`` (an exact match still wins).
    """
    for entry in ENTRIES:
        if entry.name == name:
            return entry
    if ignore_case:
        for entry in ENTRIES:
            if entry.name.lower() == str(name).lower():
                return entry
    return None


def unknown_name_message(name):
    """``unknown optimizer 'x' (did you mean ...?); expected one of ...``, offering trainable names only."""
    ours, theirs = names(PACKAGE), names(KERAS)
    close = difflib.get_close_matches(str(name), ours + theirs, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (f"unknown optimizer {name!r}{hint}; expected one of tf_largebatch.optimizers ({', '.join(ours)}) "
            f"or keras.optimizers ({', '.join(theirs)})")
