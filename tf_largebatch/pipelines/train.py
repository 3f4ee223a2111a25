"""The training runner behind ``tf-largebatch train``: config -> ``Model.fit``.

For each phase of a validated config (:func:`tf_largebatch.config.load_config`,
which has run every config check): set the precision policy, build data,
model, optimizer (with its schedule), loss and metrics inside the strategy's
scope, and run ``fit`` in loops of ``training.steps_per_loop`` optimizer steps
(one Keras epoch each: a log line, an evaluation, a checkpoint and a backup).
The callbacks are in :mod:`~tf_largebatch.pipelines.callbacks`, the summary in
:mod:`~tf_largebatch.pipelines.summary`.

Resuming: :class:`~tf_largebatch.pipelines.backup.LoopBackup` keeps the last
two finished loops in ``<model_dir>/<phase>/backup`` (written atomically); the
same command after a preemption continues from the newest readable one. A
finished phase leaves ``final.weights.h5``, ``final.keras`` and
``summary.json`` and is skipped on a rerun. A later phase starts from the
previous phase's final weights with a new optimizer, so its schedule (and
warm-up) starts at step 0.

Every optimizer follows the schedule in optimizer updates, Keras's own
included (:mod:`~tf_largebatch.pipelines.schedule_in_updates`); AdaScale
follows it in updates of the base run (``training.base_global_batch_size``)
on its scale-invariant clock, and the phase ends when that clock reaches the
base run's updates (``StopAtScaleInvariantSteps``, added by the callbacks). Each phase's
``summary.json`` records the optimizer steps (``optimizer_steps``, what the
schedule counts), the updates applied (``optimizer_updates``; a step skipped
for a non-finite gradient is in ``skipped_updates``), the learning rate of the
last update, and the throughput measured after the first loop
(:mod:`~tf_largebatch.pipelines.throughput`). Progress is reported through
the ``logging`` logger ``tf_largebatch.pipelines.train``.
"""

import dataclasses
import logging
import math
import os

import keras
import tensorflow as tf

from tf_largebatch import config as config_lib
from tf_largebatch import strategy as strategy_lib
from tf_largebatch.config import registry
from tf_largebatch.config.building import adascale_scale, build_model, optimizer_class
from tf_largebatch.config.checks import check_gradient_samples, check_keras_accumulation
from tf_largebatch.optimizers import LossScaleOptimizer
from tf_largebatch.pipelines import synthetic, task_module, throughput
from tf_largebatch.pipelines.backup import LoopBackup
from tf_largebatch.pipelines.callbacks import LearningRateLog, build_callbacks, training_optimizer
from tf_largebatch.pipelines.schedule_in_updates import in_updates
from tf_largebatch.pipelines.summary import format_summary, phase_summary, read_json, write_json_atomically

FINAL_WEIGHTS = "final.weights.h5"
FINAL_MODEL = "final.keras"
SUMMARY = "summary.json"
BACKUP_DIR = "backup"

__all__ = ["run", "run_phase", "build_schedule", "build_optimizer", "build_model", "make_datasets", "phase_dir",
           "format_summary"]

logger = logging.getLogger(__name__)


def build_schedule(cfg):
    """The learning rate of ``cfg.schedule`` in optimizer updates: a
    ``tf_largebatch.schedules`` schedule, or a float for a constant rate without
    warm-up (the builder registered for ``schedule.name``)."""
    return registry.SCHEDULES.get(cfg.schedule.name, "schedule.name").load()(cfg)


def loss_and_metrics(cfg):
    """``(loss, metrics, weighted_metrics)`` for ``Model.compile`` (the task entry's ``objective``)."""
    return registry.TASKS.get(cfg.task, "task").load_objective()(cfg)


def make_datasets(cfg):
    """``(train, eval or None)`` of ``cfg``: synthetic (``data.synthetic``) or the task's real input."""
    if cfg.data.synthetic:
        return synthetic.make_datasets(cfg)
    return task_module(cfg.task).make_datasets(cfg)


def build_optimizer(cfg, schedule=None):
    """The optimizer of ``cfg`` with its schedule (``build_schedule(cfg)`` unless given) counted in updates
    (AdaScale: in base-run updates, on its scale-invariant clock, at ``scale`` = global / base batch)."""
    accumulation = cfg.training.gradient_accumulation_steps
    schedule = build_schedule(cfg) if schedule is None else schedule
    learning_rate = in_updates(schedule, optimizer_class(cfg.optimizer), accumulation)
    return config_lib.build_optimizer(cfg.optimizer, learning_rate, gradient_accumulation_steps=accumulation,
                                      scale=adascale_scale(cfg))


def worker_dir(strategy, directory):
    """``directory`` on the chief; a per-worker subdirectory elsewhere.

    Under ``MultiWorkerMirroredStrategy`` every worker runs the callbacks; Keras
    3's ``BackupAndRestore``/``ModelCheckpoint`` would all write the same files.
    Each non-chief worker keeps (and restores) its own copy of the identical state.
    """
    if strategy.extended.should_checkpoint:
        return directory
    task_id = getattr(getattr(strategy, "cluster_resolver", None), "task_id", 0)
    return os.path.join(directory, "workers", f"task-{task_id}")


def phase_dir(cfg):
    return os.path.join(cfg.training.model_dir, cfg.phase) if cfg.phase else cfg.training.model_dir


@dataclasses.dataclass
class _Phase:
    """What :func:`run_phase` builds before ``fit``."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer  # the one that trains (no loss-scale wrapper)
    backup: LoopBackup
    first_loop: int
    learning_rate_log: LearningRateLog


def _build_phase(cfg, strategy, own_dir, initial_weights):
    """Model, optimizer and backup in the strategy's scope; the model compiled and restored."""
    backup = LoopBackup(os.path.join(own_dir, BACKUP_DIR)) if cfg.callbacks.backup_and_restore else None
    with strategy.scope():
        model = build_model(cfg)
        if initial_weights:
            model.load_weights(initial_weights)
        schedule = build_schedule(cfg)
        optimizer = build_optimizer(cfg, schedule)
        if cfg.precision == "mixed_float16":
            # compile() would wrap it in Keras's LossScaleOptimizer, which decides
            # overflow from replica 0 only; ours agrees across replicas.
            optimizer = LossScaleOptimizer(optimizer)
        loss, metrics, weighted_metrics = loss_and_metrics(cfg)
        model.compile(
            optimizer=optimizer, loss=loss, metrics=metrics, weighted_metrics=weighted_metrics,
            steps_per_execution=cfg.training.steps_per_execution, jit_compile=cfg.training.jit_compile,
        )
        first_loop = backup.restore(model) if backup else 0
    return _Phase(model, training_optimizer(optimizer), backup, first_loop, LearningRateLog(schedule))


def _fit(cfg, phase, datasets, own_dir, timer, callbacks):
    """``Model.fit`` of the phase from its first loop; returns the history."""
    train_ds, eval_ds = datasets
    steps_per_loop = min(cfg.training.steps_per_loop, cfg.total_steps())
    has_eval = eval_ds is not None
    phase_callbacks = build_callbacks(cfg, own_dir, phase.learning_rate_log, phase.optimizer, has_eval=has_eval,
                                      extra=[timer, *callbacks])
    history = phase.model.fit(
        train_ds,
        initial_epoch=phase.first_loop,
        epochs=math.ceil(cfg.total_steps() / steps_per_loop),
        steps_per_epoch=steps_per_loop * cfg.training.gradient_accumulation_steps,
        validation_data=eval_ds,
        validation_steps=cfg.training.eval_steps if has_eval else None,
        callbacks=phase_callbacks + ([phase.backup] if phase.backup else []),
        shuffle=False,  # the datasets shuffle themselves; fit cannot shuffle a tf.data.Dataset
        verbose=cfg.training.verbose,
    )
    phase.learning_rate_log.record(phase.optimizer)  # also after a resume past the last loop
    return history


def run_phase(cfg, strategy, *, initial_weights=None, callbacks=(), data=None):
    """Trains one phase; returns its summary (also written to ``summary.json``).

    Args:
        cfg: the phase's checked config.
        strategy: the ``tf.distribute`` strategy of the run.
        initial_weights: a weights file to start from, or ``None``.
        callbacks: extra Keras callbacks.
        data: the phase's ``(train, eval)`` datasets if already built.
    """
    directory = phase_dir(cfg)
    tf.io.gfile.makedirs(directory)
    summary_path = os.path.join(directory, SUMMARY)
    if tf.io.gfile.exists(summary_path):
        summary = read_json(summary_path)
        summary["skipped"] = True
        logger.info("%s %s: already finished (%s); skipping", cfg.name, cfg.phase or "", summary_path)
        return summary

    keras.utils.set_random_seed(cfg.training.seed)
    strategy_lib.set_precision(cfg.precision)
    datasets = data or make_datasets(cfg)
    steps_per_loop = min(cfg.training.steps_per_loop, cfg.total_steps())
    own_dir = worker_dir(strategy, directory)
    phase = _build_phase(cfg, strategy, own_dir, initial_weights)
    timer = throughput.LoopTimer(steps_per_loop, cfg.training.global_batch_size)
    history = _fit(cfg, phase, datasets, own_dir, timer, callbacks)
    summary = phase_summary(
        cfg, model=phase.model, optimizer=phase.optimizer, strategy=strategy, history=history, timer=timer,
        learning_rate_log=phase.learning_rate_log, first_loop=phase.first_loop,
        loops=math.ceil(cfg.total_steps() / steps_per_loop), steps_per_loop=steps_per_loop,
        initial_weights=initial_weights,
    )
    if strategy.extended.should_checkpoint:  # the chief only, under MultiWorkerMirroredStrategy
        phase.model.save_weights(os.path.join(directory, FINAL_WEIGHTS))
        phase.model.save(os.path.join(directory, FINAL_MODEL))
        write_json_atomically(summary_path, summary)
    if phase.backup:
        phase.backup.discard()
    logger.info("%s", format_summary(summary))
    # A barrier: every worker waits for the chief's files (the next phase reads them).
    strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
    return summary


def run(configs, *, callbacks=()):
    """Trains every phase in order; returns their summaries.

    Args:
        configs: the list from :func:`tf_largebatch.config.load_config`. The
            first phase starts from ``training.initial_weights`` (if set), each
            later phase from the previous phase's final weights.
        callbacks: extra Keras callbacks for every phase.

    The global Keras dtype policy is set per phase and restored on return.
    """
    policy = keras.mixed_precision.global_policy()
    try:
        return _run(configs, callbacks)
    finally:
        keras.mixed_precision.set_global_policy(policy)  # the caller's policy, as found


def _run(configs, callbacks):
    strategy = strategy_lib.build_strategy(configs[0].strategy)
    for cfg in configs:
        # Checked when the config was loaded where the config says the replicas;
        # here for the rest (every local GPU, the workers of TF_CONFIG).
        check_keras_accumulation(cfg, strategy.num_replicas_in_sync)
        check_gradient_samples(cfg, strategy.num_replicas_in_sync)
    # Every phase's input is checked (files found, datasets loadable) before
    # the first step of the first phase.
    data = [make_datasets(cfg) for cfg in configs]
    summaries = []
    previous = configs[0].training.initial_weights
    for cfg, datasets in zip(configs, data):
        summary = run_phase(cfg, strategy, initial_weights=previous, callbacks=callbacks, data=datasets)
        summaries.append(summary)
        previous = os.path.join(phase_dir(cfg), FINAL_WEIGHTS)
    return summaries
