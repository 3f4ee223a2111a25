"""Batch-size scaling studies: how far can a model's batch grow, and with which optimizer?

``tf-largebatch demo`` runs one offline (:mod:`tf_largebatch.study.cli`);
:func:`run` runs one on your own ``keras.Model`` builder and data. The pieces:
:mod:`~tf_largebatch.study.tasks` (data, model, target),
:mod:`~tf_largebatch.study.recipes` (optimizers and their scaling rules),
:mod:`~tf_largebatch.study.engine` (compiled training),
:mod:`~tf_largebatch.study.grid` (the learning-rate grid, resumable),
:mod:`~tf_largebatch.study.analysis` (steps to target, critical batch, noise scale),
:mod:`~tf_largebatch.study.report` and :mod:`~tf_largebatch.study.plots` (outputs).
"""

from tf_largebatch.study.api import StudyResult, run, run_task  # noqa: F401
from tf_largebatch.study.grid import StudyConfig  # noqa: F401
from tf_largebatch.study.tasks import Task, cifar10_task, make_task, teacher_student_task  # noqa: F401
