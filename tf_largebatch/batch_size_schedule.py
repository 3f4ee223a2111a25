"""Batch-size scheduling: phases of (epochs, batch size, learning rate) with ``model.fit``.

"Don't decay the learning rate, increase the batch size" (Smith, Kindermans,
Ying and Le, 2018): the SGD noise scale is ``lr * N / B``, so multiplying the
batch size by ``k`` has the effect of dividing the learning rate by ``k`` with
``k`` times fewer updates. Gao and Zhong ("Study on the Large Batch Size
Training of Neural Networks Based on the Second Order Gradient", §3.2) go the
other way at the start: their first epoch runs at batch 512 and learning rate
0.005, then training continues at 8192 and 0.05, which enlarges the early
update steps.

:func:`fit_with_batch_size_schedule` runs such phases on one compiled model: the
same model, optimizer (slot variables, iteration counter) and callbacks, one
``model.fit`` call per phase with the dataset re-batched, the learning rate
assigned to the optimizer's own learning-rate variable, and ``initial_epoch``
so epoch numbers and logs (TensorBoard, CSVLogger) continue.

:func:`fit_with_adaptive_batch_size` chooses the batch size during training
instead: every few updates it reads the gradient noise scale from an
:class:`~tf_largebatch.optimizers.AdaScale` optimizer and the measured step
time, and moves to the batch of largest predicted goodput (Pollux,
:mod:`tf_largebatch.goodput`), while AdaScale keeps the learning rate right
for the batch in use.
"""

import dataclasses
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tf_largebatch import goodput, validation
from tf_largebatch.optimizers import keras_seam


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of a batch-size schedule.

    Attributes:
        epochs: int >= 1, epochs (passes over the data) in this phase.
        batch_size: int >= 1, the global batch size of this phase.
        learning_rate: float >= 0 to assign to the optimizer at the start of the
            phase, or ``None`` to keep the current one.
    """

    epochs: int
    batch_size: int
    learning_rate: float = None

    def __post_init__(self):
        validation.check_positive_int("epochs", self.epochs)
        validation.check_positive_int("batch_size", self.batch_size)
        validation.check_number("learning_rate", self.learning_rate, low=0.0, allow_none=True)


def as_phase(phase):
    """A :class:`Phase` from a ``Phase``, a dict, or a tuple ``(epochs, batch_size[, learning_rate])``."""
    if isinstance(phase, Phase):
        return phase
    if isinstance(phase, dict):
        return Phase(**phase)
    if isinstance(phase, (tuple, list)) and len(phase) in (2, 3):
        return Phase(*phase)
    raise ValueError(
        "Each phase must be a Phase, a dict with keys epochs/batch_size/learning_rate, or a "
        f"tuple (epochs, batch_size[, learning_rate]). Received: phase={phase!r}"
    )


def as_unbatched_dataset(data):
    """An unbatched ``tf.data.Dataset`` of examples from a dataset or a tuple of arrays."""
    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, (tuple, list)) and 1 <= len(data) <= 3:
        return tf.data.Dataset.from_tensor_slices(tuple(data))
    raise ValueError(
        "`data` must be an unbatched tf.data.Dataset of examples or a tuple (x, y[, sample_weight]) "
        f"of arrays. Received: data of type {type(data).__name__}"
    )


def set_learning_rate(optimizer, learning_rate):
    """Assigns a float learning rate to the optimizer's learning-rate variable.

    Keras keeps a float learning rate in a variable that the compiled train
    function reads, so assigning it needs no retracing. An optimizer driven by
    a ``LearningRateSchedule`` (or a callable) has no such variable; replacing
    the schedule would silently drop it, so that is an error.
    """
    from tf_largebatch.optimizers.adascale import AdaScale

    current = keras_seam.stored_learning_rate(optimizer)
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None and not isinstance(optimizer, AdaScale):  # AdaScale keeps the base rate itself
        current = keras_seam.stored_learning_rate(inner)
    if callable(current) and not isinstance(current, keras.Variable):
        raise ValueError(
            "A phase sets `learning_rate`, but the optimizer follows a schedule "
            f"({type(current).__name__}). Use learning_rate=None in the phases to keep the "
            f"schedule, or compile with a float learning rate. Received: learning_rate={learning_rate!r}"
        )
    optimizer.learning_rate = float(learning_rate)


def increase_batch_size_instead_of_decay(
    total_epochs, boundaries, batch_size, learning_rate, factor=5, max_batch_size=None
):
    """Phases replacing a step learning-rate decay by batch-size increases.

    The step schedule "``learning_rate`` divided by ``factor`` at each epoch in
    ``boundaries``" becomes: multiply the batch size by ``factor`` instead, up
    to ``max_batch_size``; past that cap, decay the learning rate by what the
    batch size could not absorb. Each phase keeps the SGD noise scale
    ``lr / B`` of the step schedule (Smith et al., eq. (1): ``g = lr N / B``)::

        lr_i = learning_rate / factor**i                     (the step schedule)
        B_i  = min(batch_size * factor**i, max_batch_size)
        phase i: (batch B_i, learning rate lr_i * B_i / batch_size)

    Args:
        total_epochs: int >= 1, the length of training.
        boundaries: increasing epochs in ``(0, total_epochs)`` where the step
            schedule would decay.
        batch_size: int >= 1, the initial batch size.
        learning_rate: float > 0, the initial learning rate.
        factor: int >= 2, the decay factor of the step schedule.
        max_batch_size: optional int >= ``batch_size``, the largest batch
            that fits (Smith et al.'s "hybrid" schedule once it is reached).

    Returns:
        A list of :class:`Phase`, one per interval between boundaries.

    References:
        Smith, Kindermans, Ying and Le, "Don't Decay the Learning Rate,
        Increase the Batch Size", ICLR 2018, §2 (eq. 1) and §5.1.
    """
    validation.check_positive_int("total_epochs", total_epochs)
    validation.check_positive_int("batch_size", batch_size)
    validation.check_number("learning_rate", learning_rate, low=0.0, low_inclusive=False)
    validation.check_positive_int("factor", factor, minimum=2)
    max_batch_size = validation.check_positive_int(
        "max_batch_size", max_batch_size, minimum=batch_size, allow_none=True
    )
    edges = [0] + list(boundaries) + [total_epochs]
    if any(not isinstance(e, int) or isinstance(e, bool) for e in edges) or any(
        b <= a for a, b in zip(edges, edges[1:])
    ):
        raise ValueError(
            "`boundaries` must be increasing integers strictly between 0 and total_epochs "
            f"({total_epochs}). Received: boundaries={boundaries!r}"
        )
    phases = []
    for i, (start, end) in enumerate(zip(edges, edges[1:])):
        size = batch_size * factor**i
        if max_batch_size is not None:
            size = min(size, max_batch_size)
        rate = learning_rate / factor**i * size / batch_size
        phases.append(Phase(epochs=end - start, batch_size=size, learning_rate=rate))
    return phases


def fit_with_batch_size_schedule(
    model,
    data,
    phases,
    *,
    shuffle_buffer_size=None,
    drop_remainder=False,
    initial_epoch=0,
    callbacks=None,
    validation_data=None,
    validation_batch_size=None,
    verbose="auto",
    **fit_kwargs,
):
    """Trains ``model`` through phases of (epochs, batch size, learning rate).

    For each phase, in order: the learning rate (if given) is assigned to the
    optimizer, the unbatched ``data`` is (optionally shuffled and) batched with
    the phase's batch size, and ``model.fit`` runs ``phase.epochs`` epochs
    starting at ``initial_epoch`` = the epochs done so far. Nothing is rebuilt:
    weights, optimizer slots and ``optimizer.iterations`` carry over, and
    learning-rate schedules keep counting optimizer updates. The model must be
    compiled. Under a ``tf.distribute`` strategy, ``batch_size`` is the global
    batch size (split over replicas by ``fit``).

    Args:
        model: a compiled ``keras.Model``.
        data: an *unbatched* ``tf.data.Dataset`` of ``(x, y[, sample_weight])``
            examples, or a tuple of arrays ``(x, y[, sample_weight])``.
        phases: sequence of :class:`Phase` (or ``(epochs, batch_size[,
            learning_rate])`` tuples, or dicts).
        shuffle_buffer_size: optional int: shuffle the examples with this
            buffer (reshuffled every epoch) before batching.
        drop_remainder: drop the last incomplete batch of each epoch (needed
            for static shapes, e.g. on TPUs or with ghost batch norm).
        initial_epoch: epoch number the first phase starts at (resuming).
        callbacks: callbacks shared by all phases.
        validation_data: passed to every ``fit`` call (an unbatched dataset
            is batched with ``validation_batch_size``, default the phase's
            batch size).
        validation_batch_size: batch size for unbatched validation data.
        verbose: passed to ``fit``.
        **fit_kwargs: any other ``model.fit`` argument except ``x``, ``y``,
            ``batch_size``, ``epochs``, ``initial_epoch`` and ``shuffle``.

    Returns:
        A ``keras.callbacks.History`` whose ``history`` holds every phase's
        per-epoch logs concatenated, plus ``"batch_size"`` and
        ``"learning_rate"`` per epoch, and whose ``epoch`` lists the epoch numbers.

    References:
        Smith et al., "Don't Decay the Learning Rate, Increase the Batch Size",
        ICLR 2018, §2-3; the curvature paper, §3.2.
    """
    examples = _check_fit_arguments(model, data, initial_epoch, shuffle_buffer_size, fit_kwargs)
    phases = [as_phase(p) for p in phases]
    if not phases:
        raise ValueError(f"`phases` must contain at least one phase. Received: phases={phases!r}")
    merged = _empty_history(model)
    epoch = initial_epoch
    for phase in phases:
        if phase.learning_rate is not None:
            set_learning_rate(model.optimizer, phase.learning_rate)
        dataset = _batched(examples, phase.batch_size, shuffle_buffer_size, drop_remainder)
        history = model.fit(
            dataset,
            epochs=epoch + phase.epochs,
            initial_epoch=epoch,
            callbacks=callbacks,
            validation_data=_batched_validation(validation_data, validation_batch_size or phase.batch_size),
            verbose=verbose,
            shuffle=False,  # a dataset is not shuffled by fit; see shuffle_buffer_size
            **fit_kwargs,
        )
        _merge_phase(merged, history, model.optimizer, phase.batch_size)
        epoch += phase.epochs
        if getattr(model, "stop_training", False) and len(history.epoch) < phase.epochs:
            break  # a callback (e.g. EarlyStopping) ended training
    model.history = merged
    return merged


def _check_fit_arguments(model, data, initial_epoch, shuffle_buffer_size, fit_kwargs, reserved=()):
    """Checks what every batch-size loop needs; returns the unbatched examples."""
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ValueError("`model` must be compiled before fitting with a batch-size schedule.")
    validation.check_positive_int("initial_epoch", initial_epoch, minimum=0)
    validation.check_positive_int("shuffle_buffer_size", shuffle_buffer_size, allow_none=True)
    for name in ("x", "y", "batch_size", "epochs", "initial_epoch", "shuffle") + tuple(reserved):
        if name in fit_kwargs:
            raise ValueError(
                f"`{name}` is set by the batch-size schedule; do not pass it. Received: {name}={fit_kwargs[name]!r}"
            )
    return as_unbatched_dataset(data)


def _batched(examples, batch_size, shuffle_buffer_size, drop_remainder):
    """``examples``, optionally shuffled (every epoch), in batches of ``batch_size``."""
    if shuffle_buffer_size:
        examples = examples.shuffle(shuffle_buffer_size, reshuffle_each_iteration=True)
    return examples.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def _empty_history(model):
    merged = keras.callbacks.History()
    merged.set_model(model)
    merged.epoch = []
    return merged


def _merge_phase(merged, history, optimizer, batch_size):
    """Appends one ``fit`` call's per-epoch logs, its batch size and learning rate to ``merged``."""
    done = len(history.epoch)
    lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    for key, values in history.history.items():
        merged.history.setdefault(key, []).extend(values)
    merged.history.setdefault("batch_size", []).extend([batch_size] * done)
    if "learning_rate" not in history.history:
        merged.history.setdefault("learning_rate", []).extend([lr] * done)
    merged.epoch.extend(history.epoch)


# ----------------------------------------------------------- adaptive batch size
@dataclasses.dataclass(frozen=True)
class Decision:
    """One decision of :func:`fit_with_adaptive_batch_size`, made after a round of updates.

    Attributes:
        round: 0-based round number (one ``fit`` epoch each).
        batch_size: the update batch ``M`` of the round (examples per update).
        noise_scale: the gradient noise scale ``B_simple`` in examples, from
            AdaScale's averages at the end of the round (``inf``: no signal measured).
        gain: AdaScale's gain ratio of the round's last update.
        step_time: seconds per update at ``batch_size`` (measured or given).
        next_batch_size: the batch chosen for the next round.
        predicted_efficiency: Pollux's statistical efficiency of ``next_batch_size``.
        scale_invariant_steps: AdaScale's ``tau`` at the end of the round.
        probe: whether the next batch was chosen to measure a second step time
            (the step-time model needs two batch sizes) rather than by goodput.
    """

    round: int
    batch_size: int
    noise_scale: float
    gain: float
    step_time: float
    next_batch_size: int
    predicted_efficiency: float
    scale_invariant_steps: float
    probe: bool


def fit_with_adaptive_batch_size(
    model,
    data,
    *,
    base_batch_size,
    scale_invariant_steps,
    min_batch_size,
    max_batch_size,
    updates_per_decision=20,
    initial_batch_size=None,
    step_time=None,
    shuffle_buffer_size=None,
    callbacks=None,
    log_dir=None,
    verbose=0,
    **fit_kwargs,
):
    """Trains with the batch size Pollux's goodput model picks, and AdaScale's learning rate.

    ``model`` is compiled with :class:`~tf_largebatch.optimizers.AdaScale`
    around the base recipe (learning rate and schedule at ``base_batch_size``).
    Training runs in rounds of ``updates_per_decision`` updates (one ``fit``
    epoch each) at an update batch ``M``, with AdaScale's scale set to ``M /
    base_batch_size``; after each round the next ``M`` is chosen (see
    :func:`_decide`: largest predicted goodput, after one probe round). It
    stops when AdaScale's clock reaches ``scale_invariant_steps``. Candidates
    are the multiples of replicas x ``gradient_accumulation_steps`` in
    ``[min_batch_size, max_batch_size]`` (equal gradient samples); ``fit`` sees
    batches of ``M / gradient_accumulation_steps``. The data repeat, each round
    continuing where the last stopped (for a dataset of known length).

    Args:
        model: a ``keras.Model`` compiled with ``AdaScale`` (possibly inside a
            ``LossScaleOptimizer``).
        data: an unbatched ``tf.data.Dataset`` of examples or a tuple of arrays.
        base_batch_size: int ``M_0``, the base recipe's batch (``<= min_batch_size``).
        scale_invariant_steps: float > 0, the base run's number of updates.
        min_batch_size, max_batch_size: int bounds on the update batch.
        updates_per_decision: int >= 1, updates per round.
        initial_batch_size: a candidate, or ``None`` for the smallest.
        step_time: ``None`` (wall-clock seconds per update: the median over the
            round without its first batch, which traces) or ``M -> seconds``.
        shuffle_buffer_size: optional int, shuffle the examples (every pass).
        callbacks: callbacks for every ``fit`` call.
        log_dir: optional directory for TensorBoard scalars
            ``adaptive_batch_size/*`` (at the optimizer's ``iterations``).
        verbose: passed to ``fit``.
        **fit_kwargs: other ``model.fit`` arguments (not ``x``, ``y``,
            ``batch_size``, ``epochs``, ``initial_epoch``, ``shuffle``, ``steps_per_epoch``).

    Returns:
        A ``keras.callbacks.History``: per round the ``fit`` logs and the
        fields of :class:`Decision` (but ``round``); ``history.decisions``
        holds the :class:`Decision` objects.

    References:
        Qiao et al., "Pollux", OSDI 2021, Section 3; Johnson et al.,
        "AdaScale SGD", ICML 2020, Algorithm 1.
    """
    examples = _check_fit_arguments(model, data, 0, shuffle_buffer_size, fit_kwargs, reserved=("steps_per_epoch",))
    optimizer, candidates, batch_size = _adaptive_setup(model, base_batch_size, min_batch_size, max_batch_size,
                                                        updates_per_decision, initial_batch_size)
    accumulation = optimizer.gradient_accumulation_steps or 1
    callbacks = list(callbacks or []) + [_stop_callback(scale_invariant_steps)]
    merged = _empty_history(model)
    merged.decisions = []
    writer = tf.summary.create_file_writer(os.path.join(log_dir, "adaptive_batch_size")) if log_dir else None
    consumed, observations = 0, []
    while True:
        round_number = len(merged.decisions)
        optimizer.set_scale(batch_size / base_batch_size)
        timer = _UpdateTimer(accumulation)
        history = model.fit(
            _round_dataset(examples, batch_size // accumulation, consumed, shuffle_buffer_size),
            epochs=round_number + 1, initial_epoch=round_number, steps_per_epoch=updates_per_decision * accumulation,
            callbacks=callbacks + [timer], verbose=verbose, shuffle=False, **fit_kwargs,
        )
        consumed += batch_size * timer.updates
        observations.append((batch_size, step_time(batch_size) if step_time else timer.seconds_per_update()))
        decision = _decide(round_number, observations, candidates, optimizer, base_batch_size)
        _log_decision(merged, history, decision, writer, int(optimizer.iterations.numpy()))
        if getattr(model, "stop_training", False) or not timer.updates:
            break
        batch_size = decision.next_batch_size
    model.history = merged
    return merged


def _adaptive_setup(model, base_batch_size, min_batch_size, max_batch_size, updates_per_decision,
                    initial_batch_size):
    """Checks the arguments; returns ``(AdaScale optimizer, candidate batches, first batch)``."""
    optimizer = _adascale_of(model)
    multiple = (keras_seam.distribution_strategy(optimizer).num_replicas_in_sync
                * (optimizer.gradient_accumulation_steps or 1))
    validation.check_positive_int("base_batch_size", base_batch_size)
    validation.check_positive_int("min_batch_size", min_batch_size, minimum=base_batch_size)
    validation.check_positive_int("max_batch_size", max_batch_size, minimum=min_batch_size)
    validation.check_positive_int("updates_per_decision", updates_per_decision)
    candidates = goodput.candidate_batch_sizes(min_batch_size, max_batch_size, multiple)
    batch_size = candidates[0] if initial_batch_size is None else initial_batch_size
    if batch_size not in candidates:
        raise ValueError(f"`initial_batch_size` must be one of the candidates {candidates}. "
                         f"Received: initial_batch_size={initial_batch_size!r}")
    return optimizer, candidates, batch_size


def _adascale_of(model):
    from tf_largebatch.optimizers.adascale import AdaScale

    optimizer = model.optimizer
    if not isinstance(optimizer, AdaScale):
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    if not isinstance(optimizer, AdaScale):
        raise ValueError(
            "fit_with_adaptive_batch_size needs a model compiled with tf_largebatch.optimizers.AdaScale (it keeps "
            f"the learning rate right at every batch size). Received: {type(model.optimizer).__name__}"
        )
    if not optimizer.built:  # its scale is set before the first fit
        with keras_seam.distribution_strategy(optimizer).scope():
            optimizer.build(model.trainable_variables)
    return optimizer


def _stop_callback(steps):
    from tf_largebatch.optimizers.adascale import StopAtScaleInvariantSteps

    return StopAtScaleInvariantSteps(steps)


def _round_dataset(examples, batch_size, consumed, shuffle_buffer_size):
    """The repeated examples from where the last round stopped, in ``fit`` batches."""
    if shuffle_buffer_size:
        examples = examples.shuffle(shuffle_buffer_size, reshuffle_each_iteration=True)
    size = int(examples.cardinality().numpy())
    examples = examples.repeat()
    if size > 0:
        examples = examples.skip(consumed % size)
    return examples.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


class _UpdateTimer(keras.callbacks.Callback):
    """Wall-clock seconds per ``fit`` batch; an update is ``accumulation`` batches."""

    def __init__(self, accumulation):
        super().__init__()
        self.accumulation = accumulation
        self.durations = []
        self._start = None

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.durations.append(time.perf_counter() - self._start)

    @property
    def updates(self):
        return len(self.durations) // self.accumulation

    def seconds_per_update(self):
        """Median batch time without the first batch (which traces a new shape), x accumulation."""
        durations = self.durations[1:] or self.durations
        return float(np.median(durations)) * self.accumulation


def _decide(round_number, observations, candidates, optimizer, base_batch_size):
    """The next batch: the candidate of largest ``goodput(M) = M / step_time(M) * (phi + M_0) / (phi + M)``.

    ``phi`` is AdaScale's noise scale now; ``step_time(M) = alpha + beta M``
    is fitted to every round's ``(M, seconds per update)``
    (:mod:`tf_largebatch.goodput`). Until two batch sizes have been timed the
    model cannot be fitted, and the next round probes the smallest candidate
    ``>= 2 M`` (else the next larger, else the largest smaller one).
    """
    batch_size, seconds = observations[-1]
    noise_scale = optimizer.noise_scale(base_batch_size)
    sizes = sorted({size for size, _ in observations})
    probe = len(sizes) < 2
    if probe:
        others = [c for c in candidates if c != batch_size]
        upward = [c for c in others if c >= 2 * batch_size] or [c for c in others if c > batch_size]
        following = upward[0] if upward else (others[-1] if others else batch_size)
    else:
        alpha, beta = goodput.fit_step_time(*zip(*observations))
        following = goodput.best_batch_size(candidates, noise_scale, base_batch_size, alpha, beta)
    return Decision(
        round=round_number, batch_size=batch_size, noise_scale=noise_scale, gain=optimizer.gain, step_time=seconds,
        next_batch_size=following,
        predicted_efficiency=float(goodput.statistical_efficiency(following, noise_scale, base_batch_size)),
        scale_invariant_steps=optimizer.scale_invariant_steps, probe=probe,
    )


def _log_decision(merged, history, decision, writer, step):
    """The round's fit logs and the decision into the History (and TensorBoard)."""
    for key, values in history.history.items():
        merged.history.setdefault(key, []).extend(values)
    merged.epoch.extend(history.epoch)
    merged.decisions.append(decision)
    fields = {key: value for key, value in dataclasses.asdict(decision).items() if key != "round"}
    for key, value in fields.items():
        merged.history.setdefault(key, []).append(value)
    if writer is not None:
        with writer.as_default():
            for key, value in fields.items():
                tf.summary.scalar(f"adaptive_batch_size/{key}", float(value), step=step)
        writer.flush()


def _batched_validation(validation_data, batch_size):
    if isinstance(validation_data, tf.data.Dataset) and _is_unbatched(validation_data):
        return validation_data.batch(batch_size)
    return validation_data


def _is_unbatched(dataset):
    spec = dataset.element_spec
    first = tf.nest.flatten(spec)[0]
    return not (first.shape.rank and first.shape[0] is None)


__all__ = [
    "Decision",
    "Phase",
    "fit_with_adaptive_batch_size",
    "as_phase",
    "fit_with_batch_size_schedule",
    "increase_batch_size_instead_of_decay",
    "set_learning_rate",
]
