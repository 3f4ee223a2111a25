"""The study's training engine: many short runs, each compiled once, no per-step Python.

One :class:`CompiledTrainer` per (optimizer, batch size) builds the model and the
optimizer once and compiles (XLA, one device) two functions:

* a *chunk* of ``n`` training steps inside one ``tf.while_loop`` (minibatches drawn
  in the graph, i.i.d. with replacement, from the training set held as a tensor);
* an evaluation of the test set (a plain graph function).

The training chunk can be XLA-compiled (``jit_compile``). XLA pays only where the
per-step overhead dominates (small batches, thousands of steps); at larger
batches the matrix products dominate and the seconds XLA needs to compile buy
nothing, so the grid decides per batch size
(:meth:`tf_largebatch.study.grid.StudyConfig.jit_compile`).

The peak learning rate lives in a variable that scales a fixed schedule shape, and
every run starts by restoring the weights and the optimizer's freshly built state,
so all learning rates and seeds of one (optimizer, batch size) reuse the same
compiled functions. Optimizers that need ``k >= 2`` gradient samples per step (the
VR family) get them from ``gradient_accumulation_steps=k`` micro-batches, which the
package makes equal to ``k`` replicas.
"""


import keras
import numpy as np
import tensorflow as tf

from tf_largebatch import schedules


@keras.saving.register_keras_serializable(package="tf_largebatch")
class PeakScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``peak * shape(step)``, with ``peak`` a variable one can change between runs.

    Changing the peak learning rate then needs no new trace or compilation.

    Args:
        shape: a ``LearningRateSchedule`` peaking at 1 (e.g.
            ``tf_largebatch.schedules.WarmupCosineDecay(1.0, ...)``).
        peak: float > 0, the initial peak learning rate.
    """

    def __init__(self, shape, peak=1.0):
        super().__init__()
        self.shape = shape
        self.peak = tf.Variable(float(peak), trainable=False, dtype=tf.float32, name="peak_learning_rate")

    def __call__(self, step):
        return self.peak * self.shape(step)

    def get_config(self):
        return {"shape": keras.saving.serialize_keras_object(self.shape), "peak": float(self.peak.numpy())}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["shape"]), config["peak"])


def schedule_shape(total_steps, warmup_fraction):
    """The one schedule shape of every run: linear warm-up to 1, then cosine decay to 0.

    Args:
        total_steps: int >= 1, the run's step budget.
        warmup_fraction: float in [0, 1), the fraction of it spent warming up.
    """
    warmup_steps = int(round(warmup_fraction * total_steps))
    return schedules.WarmupCosineDecay(1.0, warmup_steps=warmup_steps, decay_steps=max(total_steps - warmup_steps, 1))


def _slices(count, size):
    return [(start, min(start + size, count)) for start in range(0, count, size)]


class CompiledTrainer:
    """Trains one model with one optimizer at one batch size, over many runs.

    Args:
        model_fn: ``model_fn() -> keras.Model``, a fresh, built model.
        optimizer_fn: ``optimizer_fn(learning_rate, gradient_accumulation_steps)
            -> keras optimizer`` (``gradient_accumulation_steps`` is None or k).
        train: ``(x, y)`` arrays of the training set.
        test: ``(x, y)`` arrays of the test set.
        batch_size: examples per optimizer step.
        total_steps: steps of every run (the schedule's length).
        warmup_fraction: fraction of ``total_steps`` in warm-up.
        gradient_samples: k micro-batches per step (1: no accumulation).
        loss_fn: ``loss_fn(y, logits)`` -> per-example losses.
        eval_batch_size: examples per slice of the test-set evaluation.
        jit_compile: compile the training chunk with XLA (True), or run it as a
            TensorFlow graph (False: no compilation time, more per-step overhead).
    """

    def __init__(self, model_fn, optimizer_fn, train, test, batch_size, total_steps, warmup_fraction=0.1,
                 gradient_samples=1, loss_fn=None, eval_batch_size=8192, jit_compile=True):
        if batch_size % gradient_samples:
            raise ValueError(
                f"batch size {batch_size} is not divisible into {gradient_samples} gradient samples"
            )
        self.batch_size = int(batch_size)
        self.total_steps = int(total_steps)
        self.gradient_samples = int(gradient_samples)
        self.loss_fn = loss_fn or keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        self.model = model_fn()
        self.schedule = PeakScaledSchedule(schedule_shape(total_steps, warmup_fraction))
        self.optimizer = optimizer_fn(self.schedule, self.gradient_samples if self.gradient_samples > 1 else None)
        self.optimizer.build(self.model.trainable_variables)
        self._initial_optimizer_state = [np.array(v.numpy()) for v in self.optimizer.variables]
        self._train_x = tf.constant(train[0])
        self._train_y = tf.constant(train[1])
        self._test_x = tf.constant(test[0])
        self._test_y = tf.constant(test[1])
        self._eval_slices = _slices(len(test[1]), eval_batch_size)
        self.jit_compile = bool(jit_compile)
        self._train_chunk = tf.function(self._train_chunk_fn, jit_compile=self.jit_compile)
        # A few dozen calls per run: compiling it would cost more than it saves.
        self._evaluate = tf.function(self._evaluate_fn)

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

    def _evaluate_fn(self):
        loss_sum, correct = 0.0, 0.0
        for start, stop in self._eval_slices:
            logits = self.model(self._test_x[start:stop], training=False)
            y = self._test_y[start:stop]
            loss_sum += tf.reduce_sum(self.loss_fn(y, logits))
            correct += tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.float32))
        count = float(self._eval_slices[-1][1])
        return loss_sum / count, correct / count

    # -------------------------------------------------------------- driving
    def reset(self, initial_weights, peak_learning_rate):
        """Restores ``initial_weights`` and the optimizer's freshly built state; sets the peak."""
        self.model.set_weights(initial_weights)
        for variable, value in zip(self.optimizer.variables, self._initial_optimizer_state):
            variable.assign(value)
        self.schedule.peak.assign(float(peak_learning_rate))

    def learning_rate(self, step):
        return float(self.schedule(tf.constant(step, tf.float32)).numpy())

    def train_steps(self, start_step, num_steps, seed):
        """Runs ``num_steps`` optimizer steps from ``start_step``; returns their mean training loss."""
        return float(self._train_chunk(tf.constant(start_step), tf.constant(num_steps), tf.constant(seed)).numpy())

    def evaluate(self):
        """``(test_loss, test_accuracy)`` of the current weights."""
        loss, accuracy = self._evaluate()
        return float(loss.numpy()), float(accuracy.numpy())
