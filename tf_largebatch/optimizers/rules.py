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
    """Euclidean norm of a whole tensor, in float32, free of overflow and underflow.

    Squaring a float32 above ~1.8e19 overflows and below ~1e-19 underflows, so
    the plain ``sqrt(sum(x**2))`` gives ``inf`` for gradients around 1e30 and
    ``0`` for gradients around 1e-30. The plain sum is used when it is finite
    and large enough that underflowed squares cannot matter (``>= size * 1e-30``,
    so they are below 1e-7 of it); otherwise the norm is computed as
    ``s * sqrt(sum((x / s)**2))`` with ``s = max|x|`` (the scaling of LAPACK's
    ``nrm2``), exact to float32 rounding from the smallest to the largest normal
    float32. Only one of the two runs (``tf.cond``). The result overflows only
    when the true norm exceeds float32's range. A zero tensor has norm 0; a
    non-finite element gives a non-finite norm.

    Args:
        x: a tensor of any shape and float dtype.

    Returns:
        A float32 scalar.
    """
    x = as_float32(x)
    sum_of_squares = tf.reduce_sum(tf.square(x))
    size = x.shape.num_elements()
    size = tf.cast(tf.size(x), tf.float32) if size is None else float(size)
    representable = tf.math.is_finite(sum_of_squares) & (sum_of_squares >= size * 1e-30)

    def scaled():
        scale = tf.reduce_max(tf.abs(x))
        safe = tf.where(scale > 0, scale, tf.ones_like(scale))
        return safe * tf.sqrt(tf.reduce_sum(tf.square(x / safe)))

    return tf.cond(representable, lambda: tf.sqrt(sum_of_squares), scaled)


def global_norm(tensors):
    """Euclidean norm of the concatenation of ``tensors`` (float32, overflow-free).

    The norm of the vector of per-tensor :func:`l2_norm` values, so each level
    is scaled and nothing overflows or underflows before the final result.

    Args:
        tensors: a non-empty list of tensors.

    Returns:
        A float32 scalar.
    """
    return l2_norm(tf.stack([l2_norm(t) for t in tensors]))


def normalize(x, norm):
    """``x / norm``, and zeros where ``norm == 0`` (a zero gradient has no direction)."""
    norm = tf.cast(norm, x.dtype)
    safe = tf.where(norm > 0, norm, tf.ones_like(norm))
    return tf.where(norm > 0, x / safe, tf.zeros_like(x))


def add_weight_decay(gradient, variable, weight_decay):
    """Coupled (L2) weight decay: ``g + wd * w``."""
    return gradient + tf.cast(weight_decay, gradient.dtype) * tf.cast(variable, gradient.dtype)


def trust_ratio(weight_norm, update_norm, *, trust_coefficient=1.0, bounds=None, epsilon=0.0,
                weight_decay=0.0):
    """Layer-wise trust ratio ``c * phi(||w||) / (||u|| + wd * ||w|| + eps)``.

    ``phi`` is the identity, or ``clip(., low, high)`` when ``bounds=(low, high)``
    (the SNGM paper's scale function ``phi(z) = min(max(z, low), high)``). Where
    either norm is zero the ratio is 1: a zero weight (fresh bias) or a zero
    update gets the plain learning rate rather than a zero or infinite one.

    ``weight_decay`` selects the denominator of LARS: with ``u = g + wd * w`` and
    ``weight_decay=0`` it is ``||g + wd * w||`` (LAMB, Algorithm 2 of You et al.
    2020); with ``u = g`` and ``weight_decay=wd`` it is ``||g|| + wd * ||w||``
    (LARS, Algorithm 1 of You et al. 2017, and eq. 2 of "The Limit of the Batch
    Size"; MLPerf's ResNet-50 reference), whose zero-norm rule then looks at
    ``||g||`` alone, as MLPerf's does.

    Args:
        weight_norm: ``||w||`` (scalar).
        update_norm: ``||u||`` (scalar).
        trust_coefficient: ``c`` (LARS's eta).
        bounds: ``None`` or ``(low, high)``.
        epsilon: float >= 0 added to the denominator.
        weight_decay: float >= 0, the ``wd`` of ``wd * ||w||`` in the denominator.

    Returns:
        A float32 scalar.

    References:
        You, Gitman, Ginsburg 2017, "Large Batch Training of Convolutional
        Networks" (LARS), Algorithm 1.
        You et al. 2020, "Large Batch Optimization for Deep Learning: Training
        BERT in 76 minutes" (LAMB), Algorithms 1-2.
        Zhao, Xie, Li, "Stochastic Normalized Gradient Descent with Momentum for
        Large-Batch Training" (SNGM), Sec. 4.2 (phi).
    """
    weight_norm = as_float32(weight_norm)
    update_norm = as_float32(update_norm)
    phi = weight_norm if bounds is None else tf.clip_by_value(weight_norm, bounds[0], bounds[1])
    denominator = update_norm + weight_decay * weight_norm + epsilon
    safe = tf.where(denominator > 0, denominator, tf.ones_like(denominator))
    ratio = trust_coefficient * (phi / safe)
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


def hypot(a, b):
    """``sqrt(a**2 + b**2)`` element-wise, without forming the squares.

    ``max * sqrt(1 + (min / max)**2)``: exact to rounding wherever the result is
    a normal float, where the plain form overflows for ``|a|`` above ~1.8e19 and
    underflows to 0 below ~1e-19 in float32.
    """
    a, b = tf.abs(a), tf.abs(b)
    large, small = tf.maximum(a, b), tf.minimum(a, b)
    safe = tf.where(large > 0, large, tf.ones_like(large))
    return large * tf.sqrt(1.0 + tf.square(small / safe))


def root_moving_average(root, value, decay):
    """``sqrt(decay * r**2 + (1 - decay) * x**2)``: a moving average of ``x**2`` kept as its root.

    The second moments of Adam and RMSprop hold squared gradients, which float32
    cannot represent for gradients beyond ~1.8e19 (overflow to inf) or below
    ~1e-19 (underflow to 0); their square roots have the gradients' own range.
    ``root`` is ``sqrt(v)`` of the plain moving average ``v``.
    """
    decay = tf.cast(decay, value.dtype)
    return hypot(tf.sqrt(decay) * root, tf.sqrt(1.0 - decay) * value)


def root_bias_correction(root, decay, step):
    """``r / sqrt(1 - decay**step)``: :func:`bias_correction` of ``r**2``, as its root."""
    step = tf.cast(step, root.dtype)
    return root / tf.sqrt(1.0 - tf.pow(tf.cast(decay, root.dtype), step))


def adam_direction(first_moment, second_moment_root, epsilon):
    """``m / (sqrt(v) + eps)`` from ``sqrt(v)`` (moments already bias-corrected); 0 where it is ``0 / 0``.

    With ``epsilon=0`` an element whose gradient has always been exactly 0 has
    ``m = v = 0``: its direction is 0 (it has no gradient to follow), not NaN.
    """
    return tf.math.divide_no_nan(first_moment, second_moment_root + tf.cast(epsilon, first_moment.dtype))
