"""Batch-size scaling studies: how far can a model's batch grow, and with which optimizer?

``tf-largebatch demo`` runs one offline (:mod:`tf_largebatch.study.cli`);
:func:`run` runs one on your own ``keras.Model`` builder and data. The pieces:
:mod:`~tf_largebatch.study.tasks` (data with a validation split, model, targets),
:mod:`~tf_largebatch.study.recipes` (optimizers, their scaling rules, untuned contenders),
:mod:`~tf_largebatch.study.engine` (compiled training),
:mod:`~tf_largebatch.study.grid` (the protocol: tuning, reporting seeds, sensitivity; resumable),
:mod:`~tf_largebatch.study.analysis` (steps to target, selection, noise scale),
:mod:`~tf_largebatch.study.statistics` (t intervals, paired comparisons, bootstrap),
:mod:`~tf_largebatch.study.scaling_fit` (McCandlish's fit, residuals, "does not fit"),
:mod:`~tf_largebatch.study.report` and :mod:`~tf_largebatch.study.plots` (outputs).

The names below load on first use, so the command line's flag checks
(:mod:`~tf_largebatch.study.cli`) run before TensorFlow is imported.
"""

import importlib
import typing

_NAMES = {
    "StudyResult": "api", "run": "api", "run_task": "api", "StudyConfig": "grid", "Task": "tasks",
    "cifar10_task": "tasks", "digits_task": "tasks", "make_task": "tasks", "teacher_student_task": "tasks",
}
__all__ = sorted(_NAMES)

if typing.TYPE_CHECKING:
    from tf_largebatch.study.api import StudyResult, run, run_task
    from tf_largebatch.study.grid import StudyConfig
    from tf_largebatch.study.tasks import Task, cifar10_task, digits_task, make_task, teacher_student_task


def __getattr__(name):
    if name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
