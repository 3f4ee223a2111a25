"""Backups that survive an interruption at any moment: written atomically, with a fallback.

Keras's ``BackupAndRestore`` writes ``latest.weights.h5`` in place and the
loop number in a separate ``training_metadata.json``: a kill while the
weights are written leaves a truncated file that every rerun fails on, and a
kill between the two files resumes newer weights at an older loop (one loop
of optimizer steps too many). :class:`LoopBackup` keeps the loop number in the
file name of one weights file (model and optimizer state), writes it under a
temporary name and renames it into place, keeps the previous backup, and on
restore falls back from an unreadable backup to the one before, with a warning.
"""

import logging
import os
import re

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)

_INCOMING = "incoming.weights.h5"
_BACKUP = re.compile(r"^loop-(\d+)\.weights\.h5$")


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

    def backups(self):
        """``[(loop, path), ...]`` of the backups present, newest first."""
        if not tf.io.gfile.isdir(self.directory):
            return []
        found = []
        for name in tf.io.gfile.listdir(self.directory):
            match = _BACKUP.match(name)
            if match:
                found.append((int(match.group(1)), os.path.join(self.directory, name)))
        return sorted(found, reverse=True)

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
        for loop, path in found:
            try:
                model.load_weights(path)
            except Exception as error:  # noqa: BLE001 - h5py/Keras raise several kinds for a damaged file
                message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                logger.warning("backup %s is unreadable (%s); falling back to the previous backup", path, message)
                continue
            logger.info("resuming after loop %d from %s", loop, path)
            return loop
        raise RuntimeError(
            f"no backup in {self.directory} can be read ({', '.join(p for _, p in found)}); "
            "delete the directory to start the phase over"
        )

    def save(self, loop):
        """Writes the backup of ``loop`` atomically, then drops backups beyond ``keep``."""
        tf.io.gfile.makedirs(self.directory)
        incoming = os.path.join(self.directory, _INCOMING)
        self.model.save_weights(incoming, overwrite=True)
        tf.io.gfile.rename(incoming, os.path.join(self.directory, f"loop-{loop:06d}.weights.h5"), overwrite=True)
        for _, path in self.backups()[self.keep:]:
            tf.io.gfile.remove(path)

    def on_epoch_end(self, epoch, logs=None):
        self.save(epoch + 1)

    def discard(self):
        """Removes the directory (once the phase's final files are written)."""
        if tf.io.gfile.isdir(self.directory):
            tf.io.gfile.rmtree(self.directory)
