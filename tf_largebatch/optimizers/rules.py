"""Pure update-rule math shared by the optimizers.

Every function here is a small, stateless TensorFlow function with a NumPy twin
in the tests. Optimizers are short chains of these steps (optax style): weight
decay -> moments -> trust ratio -> scale by -lr. Nothing here branches in Python
on tensor values, so everything compiles under XLA.
"""

import tensorflow as tf


def as_float32(x):
    """Statistics are computed in float32 even for float16/bfloat16 variables."""
    return tf.cast(x, tf.float32)


def l2_norm(x):
    """Euclidean norm of a whole tensor, in float32."""
    x = as_float32(x)
    return tf.sqrt(tf.reduce_sum(tf.square(x)))


def global_norm(tensors):
    """Euclidean norm of the concatenation of ``tensors`` (float32)."""
    squares = [tf.reduce_sum(tf.square(as_float32(t))) for t in tensors]
    return tf.sqrt(tf.add_n(squares))


def normalize(x, norm):
    """``x / norm``, and zeros where ``norm == 0`` (a zero gradient has no direction)."""
    norm = tf.cast(norm, x.dtype)
    safe = tf.where(norm > 0, norm, tf.ones_like(norm))
    return tf.where(norm > 0, x / safe, tf.zeros_like(x))


def add_weight_decay(gradient, variable, weight_decay):
    """Coupled (L2) weight decay: ``g + wd * w``."""
    return gradient + tf.cast(weight_decay, gradient.dtype) * tf.cast(variable, gradient.dtype)


def trust_ratio(weight_norm, update_norm, *, trust_coefficient=1.0, bounds=None, epsilon=0.0):
    """Layer-wise trust ratio ``c * phi(||w||) / (||u|| + eps)``.

    ``phi`` is the identity, or ``clip(., low, high)`` when ``bounds=(low, high)``
    (the SNGM paper's scale function, eq. before (10)). Where either norm is zero
    the ratio is 1: a zero weight (fresh bias) or a zero update gets the plain
    learning rate rather than a zero or infinite one.

    References:
        You et al. 2017, "Large Batch Training of Convolutional Networks" (LARS).
        You et al. 2020, "Large Batch Optimization for Deep Learning" (LAMB).
    """
    weight_norm = as_float32(weight_norm)
    update_norm = as_float32(update_norm)
    phi = weight_norm if bounds is None else tf.clip_by_value(weight_norm, bounds[0], bounds[1])
    denominator = update_norm + epsilon
    safe = tf.where(denominator > 0, denominator, tf.ones_like(denominator))
    ratio = trust_coefficient * phi / safe
    return tf.where((weight_norm > 0) & (update_norm > 0), ratio, tf.ones_like(ratio))


def heavy_ball(momentum, update, beta):
    """``beta * m + u`` (SGD-style momentum, as SNGM and LARS use)."""
    return tf.cast(beta, update.dtype) * momentum + update


def moving_average(average, value, decay):
    """``decay * a + (1 - decay) * x`` (Adam's first and second moments)."""
    decay = tf.cast(decay, value.dtype)
    return decay * average + (1.0 - decay) * value


def bias_correction(average, decay, step):
    """``a / (1 - decay**step)`` for a 1-based step; exact for ``decay == 0``."""
    step = tf.cast(step, average.dtype)
    return average / (1.0 - tf.pow(tf.cast(decay, average.dtype), step))


def adam_direction(first_moment, second_moment, epsilon):
    """``m / (sqrt(v) + eps)`` (moments already bias-corrected)."""
    return first_moment / (tf.sqrt(second_moment) + tf.cast(epsilon, first_moment.dtype))
