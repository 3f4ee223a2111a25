"""The training runner behind ``tf-largebatch train``: config -> ``Model.fit``.

For each phase of a validated config (:func:`tf_largebatch.config.load_config`):
set the precision policy, build data, model, optimizer (with its schedule),
loss and metrics inside the strategy's scope, and run ``fit`` in loops of
``training.steps_per_loop`` optimizer steps (one Keras epoch each: a log line,
an evaluation, a checkpoint and a backup).

Resuming: ``keras.callbacks.BackupAndRestore`` keeps the last finished loop in
``<model_dir>/<phase>/backup``; the same command after a preemption continues
from it. A finished phase leaves ``final.weights.h5`` and ``summary.json`` and
is skipped on a rerun. A later phase starts from the previous phase's final
weights with a new optimizer, so its schedule (and warm-up) starts at step 0.
"""

import json
import math
import os

import keras
import tensorflow as tf

from tf_largebatch import config as config_lib
from tf_largebatch import schedules, strategy as strategy_lib
from tf_largebatch.optimizers import LossScaleOptimizer
from tf_largebatch.pipelines import models, task_module

FINAL_WEIGHTS = "final.weights.h5"
SUMMARY = "summary.json"


def build_schedule(cfg):
    """The learning rate of ``cfg.schedule``: a ``tf_largebatch.schedules`` schedule
    (or a float for a constant rate without warm-up), in optimizer steps."""
    s = cfg.schedule
    total = cfg.total_steps()
    warmup = cfg.warmup_steps()
    decay = s.decay_steps or max(1, total - warmup)
    if s.name == "constant":
        if not warmup:
            return s.learning_rate
        return schedules.WarmupPolynomialDecay(
            s.learning_rate, warmup, 1, end_learning_rate=s.learning_rate,
            initial_learning_rate=s.initial_learning_rate,
        )
    if s.name == "warmup_polynomial":
        return schedules.WarmupPolynomialDecay(
            s.learning_rate, warmup, decay, end_learning_rate=s.end_learning_rate, power=s.power,
            initial_learning_rate=s.initial_learning_rate,
        )
    if s.name == "warmup_cosine":
        return schedules.WarmupCosineDecay(
            s.learning_rate, warmup, decay, alpha=s.alpha, initial_learning_rate=s.initial_learning_rate
        )
    if s.name == "warmup_step":
        if s.boundaries_epochs:
            boundaries = [int(round(e * cfg.steps_per_epoch())) for e in s.boundaries_epochs]
        else:
            boundaries = list(s.boundaries)
        return schedules.WarmupStepDecay(
            s.learning_rate, warmup, boundaries, decay_rate=s.decay_rate,
            initial_learning_rate=s.initial_learning_rate,
        )
    raise ValueError(f"`schedule.name` {s.name!r} is not known")


def loss_and_metrics(cfg):
    """``(loss, metrics, weighted_metrics)`` for ``Model.compile``."""
    if cfg.task == "bert_pretraining":
        loss = {
            "mlm": keras.losses.SparseCategoricalCrossentropy(from_logits=True, name="mlm_loss"),
            "nsp": keras.losses.SparseCategoricalCrossentropy(from_logits=True, name="nsp_loss"),
        }
        weighted = {
            "mlm": [keras.metrics.SparseCategoricalAccuracy("accuracy")],
            "nsp": [keras.metrics.SparseCategoricalAccuracy("accuracy")],
        }
        return loss, None, weighted
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.loss.label_smoothing)
    metrics = [keras.metrics.CategoricalAccuracy("accuracy")]
    if cfg.task == "imagenet":
        metrics.append(keras.metrics.TopKCategoricalAccuracy(5, name="top5_accuracy"))
    return loss, metrics, None


def build_model(cfg):
    builder = models.BUILDERS[cfg.model.name]
    args = dict(cfg.model.args)
    if cfg.task == "bert_pretraining":
        args.update(seq_length=cfg.data.seq_length, max_predictions_per_seq=cfg.data.max_predictions_per_seq)
    else:
        args.update(image_size=cfg.data.image_size)
    return builder(**args)


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


def build_callbacks(cfg, phase_dir, extra=()):
    callbacks = list(extra)
    c = cfg.callbacks
    if c.backup_and_restore:
        callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(phase_dir, "backup"), save_freq="epoch"))
    if c.checkpoints:
        callbacks.append(keras.callbacks.ModelCheckpoint(
            os.path.join(phase_dir, "checkpoints", "loop-{epoch:05d}.weights.h5"), save_weights_only=True
        ))
    if c.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(phase_dir, "logs"), update_freq="epoch"))
    if c.gsnr_monitor is not None:
        try:
            from tf_largebatch.callbacks import GSNRMonitor
        except ImportError as error:
            raise config_lib.ConfigError("callbacks.gsnr_monitor", f"GSNRMonitor is not available: {error}") from None
        args = dict(c.gsnr_monitor)
        args.setdefault("log_dir", os.path.join(phase_dir, "logs", "gsnr"))
        args.setdefault("global_batch_size", cfg.training.global_batch_size)
        callbacks.append(GSNRMonitor(**args))
    return callbacks


class _RunRecord(keras.callbacks.Callback):
    """Records the first loop this invocation ran (after any restore)."""

    def __init__(self):
        super().__init__()
        self.first_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch


def phase_dir(cfg):
    return os.path.join(cfg.training.model_dir, cfg.phase) if cfg.phase else cfg.training.model_dir


def run_phase(cfg, strategy, *, initial_weights=None, callbacks=(), data=None):
    """Trains one phase; returns its summary (also written to ``summary.json``).

    ``data``: the phase's ``(train, eval)`` datasets if already built.
    """
    directory = phase_dir(cfg)
    tf.io.gfile.makedirs(directory)
    summary_path = os.path.join(directory, SUMMARY)
    if tf.io.gfile.exists(summary_path):
        with tf.io.gfile.GFile(summary_path) as f:
            summary = json.load(f)
        summary["skipped"] = True
        print(f"[tf-largebatch] {cfg.name} {cfg.phase or ''}: already finished ({summary_path}); skipping")
        return summary

    keras.utils.set_random_seed(cfg.training.seed)
    strategy_lib.set_precision(cfg.precision)
    train_ds, eval_ds = data or task_module(cfg.task).make_datasets(cfg)

    accumulation = cfg.training.gradient_accumulation_steps
    total_steps = cfg.total_steps()
    steps_per_loop = min(cfg.training.steps_per_loop, total_steps)
    loops = math.ceil(total_steps / steps_per_loop)
    with strategy.scope():
        model = build_model(cfg)
        if initial_weights:
            model.load_weights(initial_weights)
        optimizer = config_lib.build_optimizer(
            cfg.optimizer, build_schedule(cfg), gradient_accumulation_steps=accumulation
        )
        if cfg.precision == "mixed_float16":
            # compile() would wrap it in Keras's LossScaleOptimizer, which decides
            # overflow from replica 0 only; ours agrees across replicas.
            optimizer = LossScaleOptimizer(optimizer)
        loss, metrics, weighted_metrics = loss_and_metrics(cfg)
        model.compile(
            optimizer=optimizer, loss=loss, metrics=metrics, weighted_metrics=weighted_metrics,
            steps_per_execution=cfg.training.steps_per_execution, jit_compile=cfg.training.jit_compile,
        )
    record = _RunRecord()
    history = model.fit(
        train_ds,
        epochs=loops,
        steps_per_epoch=steps_per_loop * accumulation,
        validation_data=eval_ds,
        validation_steps=cfg.training.eval_steps if eval_ds is not None else None,
        callbacks=build_callbacks(cfg, worker_dir(strategy, directory), [record, *callbacks]),
        verbose=cfg.training.verbose,
    )
    optimizer = model.optimizer
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):  # mixed_float16
        optimizer = optimizer.inner_optimizer
    summary = {
        "name": cfg.name,
        "phase": cfg.phase,
        "optimizer_steps": int(optimizer.iterations.numpy()),
        "planned_optimizer_steps": loops * steps_per_loop,
        "started_at_loop": record.first_epoch,
        "loops": loops,
        "final_logs": {k: float(v[-1]) for k, v in history.history.items() if v},
        "replicas": strategy.num_replicas_in_sync,
        "optimizer": type(model.optimizer).__name__,
        "precision": cfg.precision,
        "jit_compile": bool(model.jit_compile),
        "initial_weights": initial_weights,
        "skipped": False,
    }
    if strategy.extended.should_checkpoint:  # the chief only, under MultiWorkerMirroredStrategy
        model.save_weights(os.path.join(directory, FINAL_WEIGHTS))
        with tf.io.gfile.GFile(summary_path, "w") as f:
            json.dump(summary, f, indent=2)
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
    # Every phase's input is checked (files found, datasets loadable) before
    # the first step of the first phase.
    data = [task_module(cfg.task).make_datasets(cfg) for cfg in configs]
    summaries = []
    previous = configs[0].training.initial_weights
    for cfg, datasets in zip(configs, data):
        summary = run_phase(cfg, strategy, initial_weights=previous, callbacks=callbacks, data=datasets)
        summaries.append(summary)
        previous = os.path.join(phase_dir(cfg), FINAL_WEIGHTS)
    return summaries
