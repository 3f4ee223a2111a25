"""Resume exactness: an interrupted ``fit`` resumed from its backup ends where an
uninterrupted run ends (weights *and* every optimizer variable).

What Keras 3.15's ``keras.callbacks.BackupAndRestore`` restores, read from
``keras/src/callbacks/backup_and_restore.py``: the weights file it writes
(``model.save_weights``: model and optimizer variables, including our
replica-local accumulators and GSNR momentum) and the *epoch* number. It also
writes the batch position of a mid-epoch save (``save_freq=<int>``) but never
reads it back: a resumed ``fit`` restarts that epoch from its first batch, on top
of state that has already seen some of its batches. So:

* with ``save_freq="epoch"`` the resume is exact wherever the interruption
  happens (the partial epoch is redone from the last epoch's state). With an odd
  number of batches per epoch and ``gradient_accumulation_steps=2``, the epoch
  boundary is *in the middle of an accumulation cycle*: the backup holds pending
  partial sums, which must survive;
* with ``save_freq=<batches>`` the state saved mid-epoch (mid-accumulation) is
  restored exactly, and the resumed run replays the epoch's first batches;
  ``test_integer_save_freq_restores_mid_epoch_state_and_replays_the_epoch``
  pins that trajectory down so nobody mistakes it for an exact mid-epoch resume.
  For that, checkpoint with ``tf.train.Checkpoint`` (last tests) or use short
  epochs (``steps_per_epoch``) with ``save_freq="epoch"``.

Every resumed model starts from *different* random weights and a fresh
optimizer, so a restore that misses anything cannot pass (zeroing the restored
partial sums, for one, fails it). ``fit`` runs eagerly here: the optimizer code
is the same, and for a few tiny batches that is cheaper than tracing.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from distribute_utils import release_interrupted_fit
from optimizer_zoo import ENTRIES, ZOO, assert_weights_close, initial_weights, regression_data, tiny_model

BATCH = 16
BATCHES_PER_EPOCH = 3  # odd: every epoch boundary is mid-accumulation with accumulation 2
EPOCHS = 3
ACCUMULATION = 2
# Eager steps are cheaper than tracing a train function for a handful of tiny batches.
RUN_EAGERLY = True
MIRRORED_SUBSET = ["SNGM", "LAMB", "VRLAMB", "VRLARS"]


class Preempted(Exception):
    """Stands in for the process being killed (as in Keras's own BackupAndRestore tests)."""


class InterruptAtBatch(keras.callbacks.Callback):
    """Raises after the ``at``-th batch (1-based, counted across epochs) has been applied."""

    def __init__(self, at):
        super().__init__()
        self.at = at
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            raise Preempted(f"interrupted after batch {self.at}")


class RecordStart(keras.callbacks.Callback):
    """Records the optimizer's micro-step counter once BackupAndRestore has restored."""

    def on_train_begin(self, logs=None):
        self.micro_steps = int(self.model.optimizer._iterations.numpy())


def _data():
    return regression_data(num_examples=BATCH * BATCHES_PER_EPOCH)


def _compiled_model(entry, strategy, seed, **overrides):
    with strategy.scope():
        model = tiny_model()
        if seed is None:
            model.set_weights(initial_weights())
        else:
            keras.utils.set_random_seed(seed)
            model.set_weights(tiny_model().get_weights())
        model.compile(optimizer=entry.make(gradient_accumulation_steps=ACCUMULATION, **overrides), loss="mse",
                      run_eagerly=RUN_EAGERLY)
    return model


def _state(model):
    """Weights and every optimizer variable, with the optimizer variables' shapes and dtypes
    (their names carry the model's auto-generated name)."""
    optimizer = model.optimizer
    return [w.numpy() for w in model.weights], [(tuple(v.shape), str(v.dtype)) for v in optimizer.variables], [
        np.asarray(v.numpy()) for v in optimizer.variables
    ]


def _assert_same_state(resumed, reference):
    weights, names, slots = _state(resumed)
    ref_weights, ref_names, ref_slots = _state(reference)
    assert names == ref_names
    assert_weights_close(weights, ref_weights, rtol=1e-5, atol=1e-6, what="weights")
    assert_weights_close(slots, ref_slots, rtol=1e-5, atol=1e-6, what="optimizer variables")
    # The comparison covers real state: some slot besides the counters is non-zero.
    assert any(np.any(s != 0) for s in ref_slots if s.dtype.kind == "f")


def _fit(model, callbacks, epochs=EPOCHS):
    x, y = _data()
    return model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks)


def _interrupted_then_resumed(entry, strategy, backup_dir, interrupt_at, save_freq="epoch"):
    first = _compiled_model(entry, strategy, seed=None)
    with pytest.raises(Preempted):
        _fit(first, [keras.callbacks.BackupAndRestore(backup_dir, save_freq=save_freq), InterruptAtBatch(interrupt_at)])
    release_interrupted_fit()
    resumed = _compiled_model(entry, strategy, seed=99)
    start = RecordStart()
    history = _fit(resumed, [keras.callbacks.BackupAndRestore(backup_dir, save_freq=save_freq), start])
    return resumed, start, history


def _resume_matches_uninterrupted(entry, strategy, tmp_path):
    reference = _compiled_model(entry, strategy, seed=None)
    _fit(reference, [keras.callbacks.BackupAndRestore(str(tmp_path / "reference"))])

    # Interrupted after the 2nd batch of epoch 1 (5 micro-steps): the backup is the
    # end of epoch 0, 3 micro-steps = one update + one pending partial sum.
    resumed, start, history = _interrupted_then_resumed(
        entry, strategy, str(tmp_path / "backup"), interrupt_at=BATCHES_PER_EPOCH + 2
    )
    assert start.micro_steps == BATCHES_PER_EPOCH and start.micro_steps % ACCUMULATION == 1
    assert len(history.history["loss"]) == EPOCHS - 1
    _assert_same_state(resumed, reference)
    assert int(resumed.optimizer.iterations.numpy()) == (EPOCHS * BATCHES_PER_EPOCH) // ACCUMULATION


@pytest.mark.parametrize("entry", ZOO)
def test_backup_and_restore_mid_epoch_and_mid_accumulation_is_exact(entry, tmp_path):
    _resume_matches_uninterrupted(entry, tf.distribute.get_strategy(), tmp_path)


@pytest.mark.parametrize("name", MIRRORED_SUBSET)
def test_backup_and_restore_is_exact_under_mirrored_strategy(name, mirrored, tmp_path):
    _resume_matches_uninterrupted(ENTRIES[name], mirrored(2), tmp_path)


def test_integer_save_freq_restores_mid_epoch_state_and_replays_the_epoch(tmp_path):
    """``save_freq=5``: the last backup before the interruption (7th batch) is after
    batch 5 = epoch 1, batch 1: mid-epoch and mid-accumulation (5 micro-steps).
    Keras 3.15 restores that state exactly and restarts epoch 1 from its first
    batch, so the resumed run equals: epoch 0, the first two batches of epoch 1,
    then epochs 1 and 2 in full."""
    entry = ENTRIES["VRLAMB"]
    backup = tmp_path / "backup"
    first = _compiled_model(entry, tf.distribute.get_strategy(), seed=None)
    with pytest.raises(Preempted):
        _fit(first, [keras.callbacks.BackupAndRestore(str(backup), save_freq=5), InterruptAtBatch(7)])
    release_interrupted_fit()
    metadata = json.loads((backup / "training_metadata.json").read_text())
    assert metadata == {"epoch": 1, "batch": 1}

    resumed = _compiled_model(entry, tf.distribute.get_strategy(), seed=99)
    start = RecordStart()
    _fit(resumed, [keras.callbacks.BackupAndRestore(str(backup), save_freq=5), start])
    assert start.micro_steps == 5

    x, y = _data()
    replayed = _compiled_model(entry, tf.distribute.get_strategy(), seed=None)
    replayed.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    replayed.fit(x[: 2 * BATCH], y[: 2 * BATCH], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    replayed.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    _assert_same_state(resumed, replayed)


@pytest.mark.parametrize("name", ["LAMB", "VRLARS"])
def test_checkpoint_mid_epoch_mid_accumulation_under_mirrored_strategy(name, mirrored, tmp_path):
    """``fit`` on 2 replicas for 3 batches (accumulation 2: a partial sum pending on
    each replica), ``tf.train.Checkpoint``, fresh model and optimizer, restore, ``fit``
    the remaining batches of the epoch: same weights and optimizer state as straight
    through. (``test_vr.py`` does it with a custom loop for VRAdam.)"""
    entry = ENTRIES[name]
    strategy = mirrored(2)
    x, y = regression_data(num_examples=BATCH * 6)
    cut = 3 * BATCH

    def fit(model, start, stop):
        model.fit(x[start:stop], y[start:stop], batch_size=BATCH, shuffle=False, verbose=0)

    reference = _compiled_model(entry, strategy, seed=None)
    fit(reference, 0, len(x))

    first = _compiled_model(entry, strategy, seed=None)
    fit(first, 0, cut)
    path = tf.train.Checkpoint(model=first, optimizer=first.optimizer).save(str(tmp_path / "ckpt"))

    resumed = _compiled_model(entry, strategy, seed=99)
    with strategy.scope():
        resumed.optimizer.build(resumed.trainable_variables)
    tf.train.Checkpoint(model=resumed, optimizer=resumed.optimizer).restore(path).assert_existing_objects_matched()
    assert int(resumed.optimizer._iterations.numpy()) == 3
    fit(resumed, cut, len(x))
    _assert_same_state(resumed, reference)
