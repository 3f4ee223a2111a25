"""The training runner behind ``tf-largebatch train``: config -> ``Model.fit``.

For each phase of a validated config (:func:`tf_largebatch.config.load_config`):
set the precision policy, build data, model, optimizer (with its schedule),
loss and metrics inside the strategy's scope, and run ``fit`` in loops of
``training.steps_per_loop`` optimizer steps (one Keras epoch each: a log line,
an evaluation, a checkpoint and a backup).

Resuming: :class:`~tf_largebatch.pipelines.backup.LoopBackup` keeps the last
two finished loops in ``<model_dir>/<phase>/backup`` (written atomically); the
same command after a preemption continues from the newest readable one. A
finished phase leaves ``final.weights.h5``, ``final.keras`` and
``summary.json`` and is skipped on a rerun. A later phase starts from the
previous phase's final weights with a new optimizer, so its schedule (and
warm-up) starts at step 0.

Every optimizer follows the schedule in optimizer updates, Keras's own
included (:mod:`~tf_largebatch.pipelines.schedule_in_updates`). Each phase's
``summary.json`` records the updates run, the learning rate of the last one,
and the throughput measured after the first loop
(:mod:`~tf_largebatch.pipelines.throughput`). Progress is reported through
the ``logging`` logger ``tf_largebatch.pipelines.train``.
"""

import json
import logging
import math
import os

import keras
import tensorflow as tf

from tf_largebatch import config as config_lib
from tf_largebatch.config.building import build_model, optimizer_class
from tf_largebatch import schedules, strategy as strategy_lib
from tf_largebatch.optimizers import LossScaleOptimizer, keras_seam
from tf_largebatch.pipelines import synthetic, task_module, throughput
from tf_largebatch.pipelines.backup import LoopBackup
from tf_largebatch.pipelines.schedule_in_updates import counts_micro_steps, in_updates

FINAL_WEIGHTS = "final.weights.h5"
FINAL_MODEL = "final.keras"
SUMMARY = "summary.json"
BACKUP_DIR = "backup"
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.weights.h5"

logger = logging.getLogger(__name__)


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


def make_datasets(cfg):
    """``(train, eval or None)`` of ``cfg``: synthetic (``data.synthetic``) or the task's real input."""
    if cfg.data.synthetic:
        return synthetic.make_datasets(cfg)
    return task_module(cfg.task).make_datasets(cfg)


def build_optimizer(cfg):
    """The optimizer of ``cfg`` with its schedule counted in optimizer updates."""
    accumulation = cfg.training.gradient_accumulation_steps
    learning_rate = in_updates(build_schedule(cfg), optimizer_class(cfg.optimizer), accumulation)
    return config_lib.build_optimizer(cfg.optimizer, learning_rate, gradient_accumulation_steps=accumulation)


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


class LoopCheckpoints(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` of every loop's weights that keeps only the newest ``max_to_keep``."""

    def __init__(self, directory, max_to_keep):
        super().__init__(os.path.join(directory, "loop-{epoch:05d}.weights.h5"), save_weights_only=True)
        self.directory = directory
        self.max_to_keep = max_to_keep

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        names = sorted(n for n in tf.io.gfile.listdir(self.directory) if n.startswith("loop-"))
        for name in names[: max(0, len(names) - self.max_to_keep)]:
            tf.io.gfile.remove(os.path.join(self.directory, name))


def metric_names(cfg):
    """The names ``fit`` logs for ``cfg``'s task (without the ``val_`` prefix)."""
    if cfg.task == "bert_pretraining":
        return ["loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy"]
    return ["loss", "accuracy"] + (["top5_accuracy"] if cfg.task == "imagenet" else [])


def check_callbacks(cfg):
    """A ConfigError for a ``callbacks.best_metric`` the task does not log (before anything is built).

    A ``val_`` best metric in a phase without evaluation keeps no best
    checkpoint (the default, ``val_loss``, is not an error there).
    """
    best = cfg.callbacks.best_metric
    if best is not None:
        names = metric_names(cfg)
        allowed = names + [f"val_{n}" for n in names]
        if best not in allowed:
            raise config_lib.ConfigError(
                "callbacks.best_metric", f"{best!r} is not a metric of task {cfg.task!r}; expected one "
                f"of {', '.join(allowed)}, or null for no best checkpoint"
            )


def build_callbacks(cfg, phase_dir, extra=(), *, has_eval=True, use_ema=False):
    """The phase's Keras callbacks (after ``extra``), except the backup."""
    callbacks = list(extra)
    c = cfg.callbacks
    if use_ema and has_eval:
        # Evaluate with the EMA weights (fit's final weights are the EMA ones too).
        callbacks.append(keras.callbacks.SwapEMAWeights())
    if c.checkpoints:
        directory = os.path.join(phase_dir, CHECKPOINT_DIR)
        callbacks.append(LoopCheckpoints(directory, c.max_to_keep))
        if c.best_metric is not None and (has_eval or not c.best_metric.startswith("val_")):
            callbacks.append(keras.callbacks.ModelCheckpoint(
                os.path.join(directory, BEST_CHECKPOINT), monitor=c.best_metric, save_best_only=True,
                save_weights_only=True,
            ))
    if c.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(
            os.path.join(phase_dir, "logs"), update_freq="epoch", profile_batch=c.profile_batch or 0
        ))
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


def phase_dir(cfg):
    return os.path.join(cfg.training.model_dir, cfg.phase) if cfg.phase else cfg.training.model_dir


def _inner(optimizer):
    """The optimizer doing the updates (inside a loss-scale wrapper, if any)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def last_update_learning_rate(optimizer):
    """The learning rate the optimizer applied at its last update (``None`` before any).

    Reads ``optimizer.learning_rate`` with the micro-step counter set back to
    the last update's last micro-step (where the update was applied), through
    the optimizer's own rule: Keras's evaluates a schedule at the micro-step
    counter, this package's at ``iterations``.
    """
    counter = keras_seam.micro_step_counter(_inner(optimizer))
    micro_steps = int(counter.numpy())
    if micro_steps == 0:
        return None
    counter.assign(micro_steps - 1)
    try:
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    finally:
        counter.assign(micro_steps)


def _read_summary(path):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _write_json(path, value):
    """Writes ``value`` to ``path`` atomically (a temporary file renamed into place)."""
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def run_phase(cfg, strategy, *, initial_weights=None, callbacks=(), data=None):
    """Trains one phase; returns its summary (also written to ``summary.json``).

    ``data``: the phase's ``(train, eval)`` datasets if already built.
    """
    directory = phase_dir(cfg)
    tf.io.gfile.makedirs(directory)
    summary_path = os.path.join(directory, SUMMARY)
    if tf.io.gfile.exists(summary_path):
        summary = _read_summary(summary_path)
        summary["skipped"] = True
        logger.info("%s %s: already finished (%s); skipping", cfg.name, cfg.phase or "", summary_path)
        return summary

    keras.utils.set_random_seed(cfg.training.seed)
    strategy_lib.set_precision(cfg.precision)
    train_ds, eval_ds = data or make_datasets(cfg)

    accumulation = cfg.training.gradient_accumulation_steps
    total_steps = cfg.total_steps()
    steps_per_loop = min(cfg.training.steps_per_loop, total_steps)
    loops = math.ceil(total_steps / steps_per_loop)
    own_dir = worker_dir(strategy, directory)
    backup = LoopBackup(os.path.join(own_dir, BACKUP_DIR)) if cfg.callbacks.backup_and_restore else None
    with strategy.scope():
        model = build_model(cfg)
        if initial_weights:
            model.load_weights(initial_weights)
        optimizer = build_optimizer(cfg)
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
    timer = throughput.LoopTimer(steps_per_loop, cfg.training.global_batch_size)
    has_eval = eval_ds is not None
    phase_callbacks = build_callbacks(
        cfg, own_dir, [timer, *callbacks], has_eval=has_eval, use_ema=bool(_inner(optimizer).use_ema)
    )
    history = model.fit(
        train_ds,
        initial_epoch=first_loop,
        epochs=loops,
        steps_per_epoch=steps_per_loop * accumulation,
        validation_data=eval_ds,
        validation_steps=cfg.training.eval_steps if has_eval else None,
        callbacks=phase_callbacks + ([backup] if backup else []),
        verbose=cfg.training.verbose,
    )
    updates = int(_inner(model.optimizer).iterations.numpy())
    summary = {
        "name": cfg.name,
        "phase": cfg.phase,
        "optimizer_steps": updates,
        "optimizer_updates": updates,
        "planned_optimizer_steps": loops * steps_per_loop,
        "final_learning_rate": last_update_learning_rate(model.optimizer),
        **timer.rates(),
        "global_batch_size": cfg.training.global_batch_size,
        **throughput.device_description(strategy),
        "synthetic_data": cfg.data.synthetic,
        "started_at_loop": first_loop,
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
        model.save(os.path.join(directory, FINAL_MODEL))
        _write_json(summary_path, summary)
    if backup:
        backup.discard()
    logger.info("%s", format_summary(summary))
    # A barrier: every worker waits for the chief's files (the next phase reads them).
    strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
    return summary


def format_summary(summary):
    """One line: the phase, its updates, the final learning rate and the throughput."""
    phase = f" [{summary['phase']}]" if summary.get("phase") else ""
    line = f"{summary['name']}{phase}: {summary['optimizer_updates']} optimizer updates"
    if summary.get("final_learning_rate") is not None:
        line += f", final learning rate {summary['final_learning_rate']:.6g}"
    if summary.get("examples_per_second"):
        data = "synthetic data" if summary.get("synthetic_data") else "real data"
        line += (f", {summary['examples_per_second']:.1f} examples/s ({summary['seconds_per_step'] * 1000:.1f} "
                 f"ms/step over {summary['measured_steps']} steps after the first loop; {summary['device_count']} x "
                 f"{summary['device_kind']}; {data})")
    else:
        line += ", throughput not measured (it needs at least two loops: the first includes compilation)"
    return line


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


def check_keras_accumulation(cfg, strategy):
    """A ConfigError for a Keras optimizer with gradient accumulation over several
    ``MirroredStrategy`` replicas: Keras 3 all-reduces inside a ``tf.cond`` there,
    which fails at the first step ("merge_call called while defining a new graph").
    This package's optimizers accumulate differently and are not affected."""
    accumulation = cfg.training.gradient_accumulation_steps
    cls = optimizer_class(cfg.optimizer)
    mirrored = isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy))
    if accumulation > 1 and counts_micro_steps(cls) and mirrored and strategy.num_replicas_in_sync > 1:
        raise config_lib.ConfigError(
            "training.gradient_accumulation_steps",
            f"Keras's {cls.__name__} cannot accumulate gradients over {strategy.num_replicas_in_sync} "
            f"MirroredStrategy replicas (Keras all-reduces inside a tf.cond, which fails at the first step); use "
            f"1, one replica, or an optimizer of this package; got {accumulation}",
        )


def _run(configs, callbacks):
    strategy = strategy_lib.build_strategy(configs[0].strategy)
    for cfg in configs:
        check_callbacks(cfg)
        check_keras_accumulation(cfg, strategy)
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
