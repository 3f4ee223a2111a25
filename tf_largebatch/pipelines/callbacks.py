"""The runner's Keras callbacks: checkpoints, the best checkpoint, TensorBoard,
GSNR monitoring, EMA weights for evaluation, the learning rate of each update,
and AdaScale's stop at the base run's updates.

:func:`build_callbacks` assembles them for one phase from ``cfg.callbacks``
(checked when the config was loaded, :mod:`tf_largebatch.config.checks`);
the loop backup (:mod:`~tf_largebatch.pipelines.backup`) is added by the runner.
"""

import os

import keras
import tensorflow as tf

from tf_largebatch.optimizers.adascale import AdaScale, StopAtScaleInvariantSteps

CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.weights.h5"


def training_optimizer(optimizer):
    """The optimizer that trains: ``optimizer`` itself, or the one inside a loss-scale wrapper.

    Only ``LossScaleOptimizer`` (Keras's or this package's) is unwrapped: a VR
    optimizer is the optimizer that trains (it owns ``use_ema``, ``iterations``
    and the skipped-update count), not its ``inner_optimizer``.
    """
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


class LearningRateLog(keras.callbacks.Callback):
    """Records the learning rate of the last optimizer update, after every Keras step.

    The rate is the schedule (counted in optimizer updates) at the last
    update's step, ``schedule(iterations - 1)``: what every optimizer of the
    runner applies there (this package's evaluate the schedule at
    ``iterations``; Keras's get it wrapped in ``ScheduleInUpdates``), except
    for AdaScale: the rate it applied, ``r_t * schedule(tau_t)``.

    Args:
        learning_rate: the schedule in optimizer updates, or a float.

    Attributes:
        last_update: the number of the last update recorded (``None`` before any).
        learning_rate: its learning rate (``None`` before any update).
    """

    def __init__(self, learning_rate):
        super().__init__()
        self.schedule = learning_rate
        self.last_update = None
        self.learning_rate = None

    def record(self, optimizer):
        """Records the learning rate of ``optimizer``'s last update (the model's, by default)."""
        updates = int(keras.ops.convert_to_numpy(training_optimizer(optimizer).iterations))
        if updates == 0 or updates == self.last_update:
            return
        self.last_update = updates
        trainer = training_optimizer(optimizer)
        if isinstance(trainer, AdaScale):  # what it applied: r_t * schedule(tau_t)
            self.learning_rate = trainer.scaled_learning_rate
        elif isinstance(self.schedule, keras.optimizers.schedules.LearningRateSchedule):
            self.learning_rate = float(keras.ops.convert_to_numpy(self.schedule(updates - 1)))
        else:
            self.learning_rate = float(self.schedule)

    def on_train_batch_end(self, batch, logs=None):
        self.record(self.model.optimizer)


class _WithoutWrappedOptimizers:
    """``optimizer`` with its ``inner_optimizer``/``optimizers`` hidden, everything else delegated."""

    _HIDDEN = ("inner_optimizer", "optimizers")

    def __init__(self, optimizer):
        self._optimizer = optimizer

    def __getattr__(self, name):
        if name in self._HIDDEN:
            raise AttributeError(name)
        return getattr(self._optimizer, name)


class _ModelView:
    """What ``keras.callbacks.SwapEMAWeights`` reads of a model: its ``optimizer``."""

    def __init__(self, optimizer):
        self.optimizer = _WithoutWrappedOptimizers(optimizer)


class SwapEMAWeights(keras.callbacks.SwapEMAWeights):
    """``keras.callbacks.SwapEMAWeights`` on the optimizer that keeps the EMA, named explicitly.

    Keras's callback takes any optimizer with an ``inner_optimizer`` for a
    ``LossScaleOptimizer`` and swaps the inner optimizer's averages; a VR
    optimizer keeps the averages itself (its inner optimizer has none), so
    Keras's callback would fail on it. This one is given the optimizer that
    trains (:func:`training_optimizer`) and shows Keras's callback only that.

    Args:
        optimizer: the optimizer created with ``use_ema=True``.
        swap_on_epoch: as in ``keras.callbacks.SwapEMAWeights``.
    """

    def __init__(self, optimizer, swap_on_epoch=False):
        super().__init__(swap_on_epoch=swap_on_epoch)
        self._view = _ModelView(optimizer)

    @property
    def model(self):
        return self._view


class LoopCheckpoints(keras.callbacks.Callback):
    """Model and optimizer state after every loop, through ``tf.train.CheckpointManager``.

    The manager keeps the newest ``max_to_keep`` checkpoints
    (``ckpt-<loop>.index``/``.data-*``) and writes each atomically; the
    checkpoint also holds the loop number (``loop``). Restore one with
    :func:`restore_loop_checkpoint`.

    Args:
        directory: where the checkpoints are written.
        max_to_keep: how many are kept (the newest).
    """

    def __init__(self, directory, max_to_keep):
        super().__init__()
        self.directory = directory
        self.max_to_keep = max_to_keep
        self._manager = None
        self._loop = None

    def _manager_for_model(self):
        if self._manager is None:
            self._loop = tf.Variable(0, dtype=tf.int64, trainable=False, name="loop")
            checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer, loop=self._loop)
            self._manager = tf.train.CheckpointManager(checkpoint, self.directory, max_to_keep=self.max_to_keep)
        return self._manager

    def on_epoch_end(self, epoch, logs=None):
        manager = self._manager_for_model()
        self._loop.assign(epoch + 1)
        manager.save(checkpoint_number=epoch + 1)


def restore_loop_checkpoint(model, path):
    """Loads a checkpoint of :class:`LoopCheckpoints` (``.../ckpt-<loop>``) into ``model``; returns its loop.

    The model's weights are restored (its optimizer's too, if it has one that
    is built); other state of the checkpoint is left unread.
    """
    loop = tf.Variable(0, dtype=tf.int64, trainable=False, name="loop")
    objects = {"model": model, "loop": loop}
    optimizer = getattr(model, "optimizer", None)  # an uncompiled model has none
    if optimizer is not None and optimizer.built:
        objects["optimizer"] = optimizer
    tf.train.Checkpoint(**objects).restore(path).expect_partial().assert_existing_objects_matched()
    return int(loop.numpy())


def build_callbacks(cfg, phase_dir, learning_rate_log, optimizer, *, has_eval=True, extra=()):
    """The phase's Keras callbacks (after ``extra``), except the backup.

    Args:
        cfg: the phase's config.
        phase_dir: where this worker writes (checkpoints, logs).
        learning_rate_log: the phase's :class:`LearningRateLog`.
        optimizer: the optimizer that trains (:func:`training_optimizer`); if
            it keeps EMA weights (``use_ema``), evaluation uses them.
        has_eval: whether ``fit`` evaluates.
        extra: the caller's callbacks, first.
    """
    callbacks = [*extra, learning_rate_log]
    c = cfg.callbacks
    if optimizer.use_ema and has_eval:
        # Evaluate with the EMA weights (fit's final weights are the EMA ones too).
        callbacks.append(SwapEMAWeights(optimizer))
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
        from tf_largebatch.callbacks import GSNRMonitor

        args = dict(c.gsnr_monitor)
        args.setdefault("log_dir", os.path.join(phase_dir, "logs", "gsnr"))
        args.setdefault("global_batch_size", cfg.training.global_batch_size)
        callbacks.append(GSNRMonitor(**args))
    if isinstance(optimizer, AdaScale):
        # AdaScale: the phase's steps are base-run updates; stop when its clock gets there.
        callbacks.append(StopAtScaleInvariantSteps(cfg.total_steps()))
    return callbacks
