"""Backups that survive an interruption at any moment, through ``tf.train.CheckpointManager``.

After every loop :class:`LoopBackup` writes model and optimizer state with the
loop number inside the same checkpoint (``backup/ckpt-<loop>``).
``tf.train.CheckpointManager`` writes each checkpoint completely before it
records it in its state file (``backup/checkpoint``, itself replaced
atomically) and keeps the newest ``keep`` (2: the current and a fallback). On
restore, a checkpoint that cannot be read (a file truncated or damaged after
it was recorded) is skipped with a warning for the one before; a checkpoint
whose write a kill interrupted was never recorded and is not considered.

Why not ``keras.callbacks.BackupAndRestore``: Keras 3.15 writes
``latest.weights.h5`` in place and the loop number in a separate
``training_metadata.json``, so a kill while the weights are written leaves a
truncated file that every rerun fails on, and a kill between the two files
resumes newer weights at an older loop (one loop of optimizer steps too many);
it keeps no previous backup to fall back to. ``CheckpointManager`` serves
every one of these: atomic recording, the step in the checkpoint, retention.
"""

import logging

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)


class LoopBackup(keras.callbacks.Callback):
    """Backs up model and optimizer after every loop; restores the newest readable backup.

    Call :meth:`restore` once the model is compiled and before ``fit``; pass
    the returned loop to ``fit(initial_epoch=...)``; :meth:`discard` once the
    run's final files are written (not before: a kill in between would
    otherwise start the run over).

    Args:
        directory: where backups live (used for nothing else).
        keep: backups kept, newest first (2: the current and a fallback).
    """

    def __init__(self, directory, keep=2):
        super().__init__()
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"`keep` must be an integer >= 1. Received: keep={keep!r}")
        self.directory = directory
        self.keep = keep
        self._loop = None
        self._manager = None

    def _manager_for(self, model):
        if self._manager is None:
            self._loop = tf.Variable(0, dtype=tf.int64, trainable=False, name="loop")
            checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, loop=self._loop)
            self._manager = tf.train.CheckpointManager(checkpoint, self.directory, max_to_keep=self.keep)
        return self._manager

    def backups(self):
        """Paths of the recorded backups (``.../ckpt-<loop>``), newest first."""
        state = tf.train.get_checkpoint_state(self.directory) if tf.io.gfile.isdir(self.directory) else None
        return list(reversed(state.all_model_checkpoint_paths)) if state else []

    def restore(self, model):
        """Loads the newest readable backup into ``model``; returns its loop (0 if none).

        Raises:
            RuntimeError: if backups exist but none can be read (naming the directory).
        """
        found = self.backups()
        if not found:
            return 0
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # so its state is restored too
        manager = self._manager_for(model)
        for path in found:
            try:
                manager.checkpoint.restore(path).assert_existing_objects_matched()
            except Exception as error:  # noqa: BLE001 - TensorFlow raises several kinds for a damaged file
                message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                logger.warning("backup %s is unreadable (%s); falling back to the previous backup", path, message)
                continue
            loop = int(self._loop.numpy())
            logger.info("resuming after loop %d from %s", loop, path)
            return loop
        raise RuntimeError(
            f"no backup in {self.directory} can be read ({', '.join(found)}); "
            "delete the directory to start the phase over"
        )

    def save(self, loop):
        """Writes the backup of ``loop`` (recorded once complete), then drops backups beyond ``keep``."""
        manager = self._manager_for(self.model)
        self._loop.assign(loop)
        manager.save(checkpoint_number=loop)

    def on_epoch_end(self, epoch, logs=None):
        self.save(epoch + 1)

    def discard(self):
        """Removes the directory (once the phase's final files are written)."""
        if tf.io.gfile.isdir(self.directory):
            tf.io.gfile.rmtree(self.directory)
