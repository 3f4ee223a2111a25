"""The study's training engine: many short runs, each compiled once, no per-step Python.

One :class:`CompiledTrainer` per (optimizer, batch size) builds the model and the
optimizer once and compiles (XLA, one device) two functions:

* a *chunk* of ``n`` training steps inside one ``tf.while_loop`` (minibatches drawn
  in the graph, i.i.d. with replacement, from the training set held as a tensor);
* an evaluation of a held-out split (a plain graph function).

The training chunk can be XLA-compiled (``jit_compile``). XLA pays only where the
per-step overhead dominates (small batches, thousands of steps); at larger
batches the matrix products dominate and the seconds XLA needs to compile buy
nothing, so the grid decides per batch size
(:meth:`tf_largebatch.study.grid.StudyConfig.jit_compile`).

The peak learning rate and the schedule's length live in variables
(:class:`RunSchedule`), and every run starts by restoring the weights and the
optimizer's freshly built state, so all learning rates, schedule lengths and seeds
of one (optimizer, batch size) reuse the same compiled functions. Evaluation runs
on named splits (validation for selection, test for reporting), and
:meth:`CompiledTrainer.gradient_noise` measures the gradient noise scale at the
current weights. Optimizers that need ``k >= 2`` gradient samples per step (the
VR family) get them from ``gradient_accumulation_steps=k`` micro-batches, which the
package makes equal to ``k`` replicas.
"""


import functools
import math

import keras
import numpy as np
import tensorflow as tf



@keras.saving.register_keras_serializable(package="tf_largebatch")
class RunSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak``, then cosine decay to 0 at ``length``; both are variables.

    With ``w = round(warmup_fraction * length)`` and ``d = max(length - w, 1)``::

        lr(s) = peak * s / w                                   s < w
        lr(s) = peak * (1 + cos(pi * min(s - w, d) / d)) / 2   otherwise

    (the shape of :class:`tf_largebatch.schedules.WarmupCosineDecay`). Changing the
    peak or the length between runs needs no new trace or compilation.

    Args:
        peak: float > 0, the peak learning rate.
        length: int >= 1, the schedule's length in steps.
        warmup_fraction: float in [0, 1), the fraction of ``length`` spent warming up.
    """

    def __init__(self, peak=1.0, length=1, warmup_fraction=0.1):
        super().__init__()
        self.warmup_fraction = float(warmup_fraction)
        self.peak = tf.Variable(float(peak), trainable=False, dtype=tf.float32, name="peak_learning_rate")
        self.length = tf.Variable(float(length), trainable=False, dtype=tf.float32, name="schedule_length")

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.round(self.warmup_fraction * self.length)
        decay = tf.maximum(self.length - warmup, 1.0)
        rising = step / tf.maximum(warmup, 1.0)
        falling = 0.5 * (1.0 + tf.cos(np.pi * tf.minimum(step - warmup, decay) / decay))
        return self.peak * tf.where(step < warmup, rising, falling)

    def get_config(self):
        return {"peak": float(self.peak.numpy()), "length": int(self.length.numpy()),
                "warmup_fraction": self.warmup_fraction}


def _slices(count, size):
    return [(start, min(start + size, count)) for start in range(0, count, size)]


class CompiledTrainer:
    """Trains one model with one optimizer at one batch size, over many runs.

    Args:
        model_fn: ``model_fn() -> keras.Model``, a fresh, built model.
        optimizer_fn: ``optimizer_fn(learning_rate, gradient_accumulation_steps)
            -> keras optimizer`` (``gradient_accumulation_steps`` is None or k).
        train: ``(x, y)`` arrays of the training set.
        splits: ``{name: (x, y)}`` of the held-out splits to evaluate (e.g.
            ``validation`` and ``test``).
        batch_size: examples per optimizer step.
        warmup_fraction: fraction of each run's schedule length in warm-up.
        gradient_samples: k micro-batches per step (1: no accumulation).
        loss_fn: ``loss_fn(y, logits)`` -> per-example losses.
        eval_batch_size: examples per slice of the test-set evaluation.
        jit_compile: compile the training chunk with XLA (True), or run it as a
            TensorFlow graph (False: no compilation time, more per-step overhead).
    """

    def __init__(self, model_fn, optimizer_fn, train, splits, batch_size, warmup_fraction=0.1,
                 gradient_samples=1, loss_fn=None, eval_batch_size=8192, jit_compile=True):
        if batch_size % gradient_samples:
            raise ValueError(
                f"batch size {batch_size} is not divisible into {gradient_samples} gradient samples"
            )
        self.batch_size = int(batch_size)
        self.gradient_samples = int(gradient_samples)
        self.loss_fn = loss_fn or keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        self.model = model_fn()
        self.schedule = RunSchedule(warmup_fraction=warmup_fraction)
        self.optimizer = optimizer_fn(self.schedule, self.gradient_samples if self.gradient_samples > 1 else None)
        self.optimizer.build(self.model.trainable_variables)
        self._initial_optimizer_state = [np.array(v.numpy()) for v in self.optimizer.variables]
        self._train_x = tf.constant(train[0])
        self._train_y = tf.constant(train[1])
        self._splits = {name: (tf.constant(x), tf.constant(y), _slices(len(y), eval_batch_size))
                        for name, (x, y) in splits.items()}
        self.jit_compile = bool(jit_compile)
        self._train_chunk = tf.function(self._train_chunk_fn, jit_compile=self.jit_compile)
        # Many short calls per run: compiling them would cost more than it saves.
        self._evaluate = {name: tf.function(functools.partial(self._evaluate_fn, name)) for name in self._splits}
        self._gradient_noise = tf.function(self._gradient_noise_fn)

    # ----------------------------------------------------------- graph code
    def _loss(self, x, y):
        logits = self.model(x, training=True)
        return tf.reduce_mean(self.loss_fn(y, logits))

    def _one_step(self, step, seed):
        num_train = tf.shape(self._train_y)[0]
        indices = tf.random.stateless_uniform(
            [self.batch_size], seed=tf.stack([seed, step]), maxval=num_train, dtype=tf.int32
        )
        x = tf.gather(self._train_x, indices)
        y = tf.gather(self._train_y, indices)
        if self.gradient_samples == 1:
            return self._apply_gradient_of(x, y)
        # k micro-batches, one traced body: the optimizer accumulates them into one update.
        micro = self.batch_size // self.gradient_samples
        x = tf.reshape(x, [self.gradient_samples, micro, *x.shape[1:]])
        y = tf.reshape(y, [self.gradient_samples, micro, *y.shape[1:]])

        def body(j, loss_sum):
            return j + 1, loss_sum + self._apply_gradient_of(x[j], y[j])

        _, loss_sum = tf.while_loop(lambda j, _: j < self.gradient_samples, body, (tf.constant(0), tf.constant(0.0)))
        return loss_sum / self.gradient_samples

    def _apply_gradient_of(self, x, y):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            loss = self._loss(x, y)
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    def _train_chunk_fn(self, start_step, num_steps, seed):
        def body(i, loss_sum):
            return i + 1, loss_sum + self._one_step(start_step + i, seed)

        _, loss_sum = tf.while_loop(lambda i, _: i < num_steps, body, (tf.constant(0), tf.constant(0.0)))
        return loss_sum / tf.cast(num_steps, tf.float32)

    def _evaluate_fn(self, name):
        x_all, y_all, slices = self._splits[name]
        loss_sum, correct = 0.0, 0.0
        for start, stop in slices:
            logits = self.model(x_all[start:stop], training=False)
            y = y_all[start:stop]
            loss_sum += tf.reduce_sum(self.loss_fn(y, logits))
            correct += tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.float32))
        count = float(slices[-1][1])
        return loss_sum / count, correct / count

    def _gradient_noise_fn(self, seed, step, probes, samples, micro_batch):
        variables = self.model.trainable_variables
        num_train = tf.shape(self._train_y)[0]

        def probe(p, big, small):
            def sample(j, total, square_sum):
                indices = tf.random.stateless_uniform([micro_batch], seed=tf.stack([seed, step * 1024 + p * 64 + j]),
                                                      maxval=num_train, dtype=tf.int32)
                with tf.GradientTape() as tape:
                    logits = self.model(tf.gather(self._train_x, indices), training=False)
                    loss = tf.reduce_mean(self.loss_fn(tf.gather(self._train_y, indices), logits))
                grads = tape.gradient(loss, variables)
                return (j + 1, [t + g for t, g in zip(total, grads)],
                        square_sum + tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads]))

            zeros = [tf.zeros_like(v) for v in variables]
            _, total, square_sum = tf.while_loop(lambda j, *_: j < samples, sample, (0, zeros, tf.constant(0.0)))
            k = tf.cast(samples, tf.float32)
            big_square = tf.add_n([tf.reduce_sum(tf.square(t / k)) for t in total])
            return p + 1, big.write(p, big_square), small.write(p, square_sum / k)

        _, big, small = tf.while_loop(
            lambda p, *_: p < probes, probe,
            (0, tf.TensorArray(tf.float32, size=probes), tf.TensorArray(tf.float32, size=probes)))
        return big.stack(), small.stack()

    # -------------------------------------------------------------- driving
    def reset(self, initial_weights, peak_learning_rate, length):
        """Restores ``initial_weights`` and the optimizer's freshly built state; sets the schedule."""
        self.model.set_weights(initial_weights)
        for variable, value in zip(self.optimizer.variables, self._initial_optimizer_state):
            variable.assign(value)
        self.schedule.peak.assign(float(peak_learning_rate))
        self.schedule.length.assign(float(length))

    @property
    def clocked(self):
        """Whether the optimizer runs the schedule on its own scale-invariant clock (AdaScale's ``tau``)."""
        from tf_largebatch.optimizers import AdaScale

        return isinstance(self.optimizer, AdaScale)

    def learning_rate(self, step):
        """The learning rate the update after ``step`` runs: the schedule at ``step``; with a clock,
        AdaScale's scaled rate ``r * eta(tau)`` at the current ``tau`` with the last gain ``r``
        (1 before any update), which is the next update's if the gain stays."""
        if self.clocked:
            base = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))  # eta(tau)
            return self.optimizer.gain * base
        return float(self.schedule(tf.constant(step, tf.float32)).numpy())

    def steps_within_budget(self, length):
        """How many more steps the run may take before its schedule of ``length`` steps ends.

        Without a clock: ``length`` (the caller's steps bound the run). With
        AdaScale's clock: 0 once ``tau >= length``, else
        ``max(1, floor((length - tau) / r))`` with ``r`` the last gain, so that
        steps of about that gain bring ``tau`` to ``length`` without passing it
        by more than the last update.
        """
        if not self.clocked:
            return int(length)
        remaining = float(length) - self.optimizer.scale_invariant_steps
        if remaining <= 0.0:
            return 0
        return max(1, int(math.floor(remaining / max(self.optimizer.gain, 1.0))))

    def train_steps(self, start_step, num_steps, seed):
        """Runs ``num_steps`` optimizer steps from ``start_step``; returns their mean training loss."""
        return float(self._train_chunk(tf.constant(start_step), tf.constant(num_steps), tf.constant(seed)).numpy())

    def evaluate(self, split):
        """``(loss, accuracy)`` of the current weights on the held-out ``split`` (a name of ``splits``)."""
        loss, accuracy = self._evaluate[split]()
        return float(loss.numpy()), float(accuracy.numpy())

    def gradient_noise(self, seed, step, probes=4, samples=4, micro_batch=32):
        """Squared gradient norms at the current weights, for the noise scale (no update is made).

        Each of ``probes`` independent probes draws ``samples`` micro-batches of
        ``micro_batch`` training examples (stateless in ``seed``, ``step``) and
        returns ``|G_big|^2`` (the norm of their mean, ``samples * micro_batch``
        examples) and the mean of ``|G_small|^2`` over the micro-batches, the
        inputs of :func:`tf_largebatch.callbacks.unbiased_noise_estimates`.

        Returns:
            ``(big_square_norms, small_square_norms)``, NumPy arrays of length ``probes``.
        """
        big, small = self._gradient_noise(tf.constant(seed), tf.constant(step), tf.constant(probes),
                                          tf.constant(samples), tf.constant(micro_batch))
        return big.numpy(), small.numpy()
