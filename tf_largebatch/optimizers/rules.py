"""Pure update-rule math shared by the optimizers.

Every function here is a small, stateless TensorFlow function with a NumPy twin
in the tests, except :func:`apply_heavy_ball`, which writes the weight and its
momentum in one training kernel. Optimizers are short chains of these steps
(optax style): weight decay -> moments -> trust ratio -> scale by -lr. Nothing
here branches in Python on tensor values, so everything compiles under XLA;
where XLA:CPU runs one form of a computation much faster than the other, the
form is chosen when the step is traced
(:func:`~tf_largebatch.optimizers.keras_seam.tracing_for_xla`), and both forms
give the same result.
"""

import math

import tensorflow as tf

from tf_largebatch.optimizers import keras_seam


def as_float32(x):
    """Statistics are computed in float32 even for float16/bfloat16 variables."""
    return tf.cast(x, tf.float32)


#: float32's smallest normal number; TensorFlow flushes smaller results to 0 on CPU.
FLOAT32_TINY = 1.1754944e-38


def sum_of_squares(x):
    """``sum(x**2)`` of a whole tensor in float32, in one pass over ``x``.

    Two forms with the same result, chosen at trace time:

    - in graph mode and eagerly, ``tf.nn.l2_loss`` (``sum(x**2) / 2``), which
      squares and sums in one kernel where ``reduce_sum(square(x))`` writes and
      reads a squared copy first;
    - in a trace that XLA compiles (``jit_compile=True``, TPU;
      :func:`~tf_largebatch.optimizers.keras_seam.tracing_for_xla`), the row
      sums of the squares as a matrix-vector product with a vector of ones
      (:func:`_sum_of_squares_by_rows`): XLA:CPU runs a sum fused with the
      squaring as one sequential loop, about four times slower than reading the
      tensor, and hands a matrix-vector product to Eigen, which runs at the speed
      of the read.

    Either form overflows to ``inf`` above ~1.8e19 per element and flushes
    squares below ~1e-19 to 0, like the plain sum; see :func:`l2_norm` for the
    overflow-free norm.

    Args:
        x: a tensor of any shape and float dtype.

    Returns:
        A float32 scalar.
    """
    x = as_float32(x)
    if keras_seam.tracing_for_xla():
        rows = _rows_view(x)
        if rows is not None:
            return _sum_of_squares_by_rows(rows)
    return 2.0 * tf.nn.l2_loss(x)


#: Row lengths tried, longest first, for a tensor whose last axis is too short to be one.
_ROW_LENGTHS = (1024, 512, 256, 128, 64, 32, 16, 8)


def _rows_view(x):
    """``x`` reshaped to ``[rows, columns]`` for a matrix-vector product, or ``None``.

    The columns are the last axis when it has at least 8 elements (a dense or
    convolution kernel's output units), else the longest of :data:`_ROW_LENGTHS`
    that divides the size. ``None`` when the shape is not static or no length
    fits (a short or oddly sized vector, where the form makes no difference).
    """
    if not x.shape.is_fully_defined() or x.shape.rank == 0:
        return None
    size = x.shape.num_elements()
    columns = x.shape[-1] if x.shape.rank >= 2 and x.shape[-1] >= 8 else None
    if columns is None:
        columns = next((n for n in _ROW_LENGTHS if size % n == 0 and size > n), None)
    return None if columns is None or size == columns else tf.reshape(x, [size // columns, columns])


def _sum_of_squares_by_rows(rows):
    """``sum(rows**2)`` of a float32 matrix as ``sum(square(rows) @ ones)``."""
    ones = tf.ones([rows.shape[-1]], tf.float32)
    return tf.reduce_sum(tf.linalg.matvec(tf.square(rows), ones))


def _num_elements(x):
    size = x.shape.num_elements()
    return tf.cast(tf.size(x), tf.float32) if size is None else float(size)


def squares_representable(sum_of_squares_, size):
    """Whether ``sqrt(sum_of_squares_)`` is the norm to float32 rounding.

    It is when the sum is finite and so large that squares flushed to 0 (each
    below :data:`FLOAT32_TINY`, ``size`` of them at most) are below 1e-7 of it.
    """
    return tf.math.is_finite(sum_of_squares_) & (sum_of_squares_ >= size * 1e-30)


def _scaled_l2_norm(x):
    """``s * sqrt(sum((x / s)**2))`` with ``s = max|x|`` (LAPACK ``nrm2``'s scaling); 0 for a zero tensor."""
    scale = tf.reduce_max(tf.abs(x))
    safe = tf.where(scale > 0, scale, tf.ones_like(scale))
    return safe * tf.sqrt(sum_of_squares(x / safe))


def l2_norm(x, plain_sum_of_squares=None):
    """Euclidean norm of a whole tensor, in float32, free of overflow and underflow.

    Squaring a float32 above ~1.8e19 overflows and below ~1e-19 underflows, so
    the plain ``sqrt(sum(x**2))`` gives ``inf`` for gradients around 1e30 and
    ``0`` for gradients around 1e-30. The plain sum (:func:`sum_of_squares`, one
    pass) is used when it is finite and large enough that underflowed squares
    cannot matter (``>= size * 1e-30``, so they are below 1e-7 of it); otherwise
    the norm is computed as ``s * sqrt(sum((x / s)**2))`` with ``s = max|x|``
    (the scaling of LAPACK's ``nrm2``), exact to float32 rounding from the
    smallest to the largest normal float32. Only one of the two runs
    (``tf.cond``). The result overflows only when the true norm exceeds
    float32's range. A zero tensor has norm 0; a non-finite element gives a
    non-finite norm.

    Args:
        x: a tensor of any shape and float dtype.
        plain_sum_of_squares: ``None``, or :func:`sum_of_squares` of ``x``
            already computed (it is then not computed again).

    Returns:
        A float32 scalar.
    """
    x = as_float32(x)
    plain = sum_of_squares(x) if plain_sum_of_squares is None else plain_sum_of_squares
    if keras_seam.tracing_for_xla():
        return _norm_from_sum_of_squares(plain, _num_elements(x), lambda: _scaled_l2_norm(x))
    return _guarded_l2_norm(plain, tf.reshape(x, [-1]), _num_elements(x))


@tf.function(input_signature=[tf.TensorSpec([], tf.float32), tf.TensorSpec([None], tf.float32),
                              tf.TensorSpec([], tf.float32)], autograph=False)
def _guarded_l2_norm(plain, flat, size):
    """:func:`l2_norm`'s guard in graph mode, traced once for tensors of every size.

    A step calls it once per norm (a layer-wise optimizer: twice per
    variable); as one function of a flat vector of any length it is traced
    once, and each call adds one call op to the step's graph instead of a
    ``tf.cond`` with both branches' ops: building LARS's step for ResNet-50's
    214 variables took 45 s against Keras SGD's 14 s, and 31 s with it
    (``benchmarks/step_build_time.py``). Graph
    mode inlines the call, so the step runs the same kernels. In a trace that
    XLA compiles the guard stays inline (:func:`l2_norm`): there the call of a
    function of a vector of unknown length made LAMB's step about 1.3 times
    slower.
    """
    return _norm_from_sum_of_squares(plain, size, lambda: _scaled_l2_norm(flat))


def global_norm(tensors, plain_sums_of_squares=None):
    """Euclidean norm of the concatenation of ``tensors`` (float32, overflow-free).

    The plain form sums every tensor's :func:`sum_of_squares` and takes one
    square root; when that total is not representable (the test of
    :func:`l2_norm`, on the total), the norm is that of the vector of the
    per-tensor scaled norms, so nothing overflows or underflows before the
    final result. One ``tf.cond`` for all the tensors.

    Args:
        tensors: a non-empty list of tensors.
        plain_sums_of_squares: ``None``, or a list parallel to ``tensors`` of
            their :func:`sum_of_squares` where already computed (``None``
            entries are computed here).

    Returns:
        A float32 scalar.
    """
    tensors = [as_float32(t) for t in tensors]
    known = plain_sums_of_squares or [None] * len(tensors)
    plain = tf.add_n([sum_of_squares(t) if total is None else total for t, total in zip(tensors, known)])
    size = sum(_num_elements(t) for t in tensors)
    return _norm_from_sum_of_squares(plain, size, lambda: l2_norm(tf.stack([_scaled_l2_norm(t) for t in tensors])))


def _norm_from_sum_of_squares(plain, size, scaled_norm):
    """``sqrt(plain)`` when :func:`squares_representable`, else ``scaled_norm()``; only one runs (``tf.cond``).

    The one guard of :func:`l2_norm` and :func:`global_norm`: ``plain`` is the
    plain sum of squares of ``size`` elements, ``scaled_norm`` the overflow-free
    form of the same norm.
    """
    return tf.cond(squares_representable(plain, size), lambda: tf.sqrt(plain), scaled_norm)


def normalize(x, norm):
    """``x / norm``, and zeros where ``norm == 0`` (a zero gradient has no direction).

    One element-wise pass: a zero norm divides by ``inf`` instead (``x`` is then
    zero, or made of values flushed to zero). A NaN norm also divides by ``inf``,
    so NaN elements stay NaN.
    """
    norm = tf.cast(norm, x.dtype)
    return x / tf.where(norm > 0, norm, tf.constant(float("inf"), x.dtype))


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


def apply_heavy_ball(variable, velocity, update, learning_rate, beta, nesterov=False):
    """``u <- beta * u + update``, then ``w <- w - lr * u``, as one TensorFlow training kernel.

    The one function of this module that writes variables. The same step as
    TensorFlow ops (:func:`heavy_ball`, then ``w - lr * u``) is four element-wise
    passes and two assignments in graph mode, each a kernel that reads and
    writes whole tensors; ``tf.raw_ops.ResourceApplyMomentum`` reads ``w``,
    ``u`` and the update once and writes ``w`` and ``u`` in place, the bytes of
    a fused loop (under XLA both become the same fused loop). The result is the
    same to float32 rounding.

    Args:
        variable: the weight ``w`` (a ``tf.Variable`` or ``keras.Variable``).
        velocity: the momentum slot ``u``, same dtype and shape as ``variable``.
        update: the step's direction, same shape (cast to the variable's dtype).
        learning_rate: ``lr``, a scalar.
        beta: the momentum coefficient.
        nesterov: bool; ``True`` steps by ``lr * (update + beta * u)`` with the new ``u``.

    Raises:
        ValueError: if ``velocity`` and ``variable`` have different dtypes (e.g.
            float32 state for a bfloat16 variable): apply the step as ops then.
    """
    dtype = tf.as_dtype(variable.dtype)
    if tf.as_dtype(velocity.dtype) != dtype:
        raise ValueError(f"apply_heavy_ball needs the velocity in the variable's dtype {dtype.name}. "
                         f"Received: {tf.as_dtype(velocity.dtype).name}")

    def scalar(value):  # a Python float straight to the dtype (tf.cast would round it to float32 first)
        return tf.cast(tf.convert_to_tensor(value, dtype_hint=dtype), dtype)

    tf.raw_ops.ResourceApplyMomentum(
        var=variable.handle, accum=velocity.handle, lr=scalar(learning_rate), grad=tf.cast(update, dtype),
        momentum=scalar(beta), use_locking=False, use_nesterov=bool(nesterov))


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


def root_underflow_error(decay):
    """Bound on the absolute error of the plain form of :func:`root_moving_average`.

    The plain form squares ``sqrt(decay) * r`` and ``sqrt(1 - decay) * x``; each
    square below :data:`FLOAT32_TINY` is flushed to 0, which loses less than
    ``2 * tiny`` of ``v = r**2`` per update. Those losses decay with ``decay``,
    so over any number of updates ``v`` is low by less than
    ``2 * tiny / (1 - decay)`` and the root by less than
    ``sqrt(2 * tiny / (1 - decay))`` (about 4.8e-18 for ``decay = 0.999``).
    Beyond that, both forms round alike.
    """
    return math.sqrt(2.0 * FLOAT32_TINY / (1.0 - decay))


def root_moving_average(root, value, decay, *, underflow_tolerance=0.0):
    """``sqrt(decay * r**2 + (1 - decay) * x**2)``: a moving average of ``x**2`` kept as its root.

    The second moments of Adam and RMSprop hold squared gradients, which float32
    cannot represent for gradients beyond ~1.8e19 (overflow to inf) or below
    ~1e-19 (underflow to 0); their square roots have the gradients' own range.
    ``root`` is ``sqrt(v)`` of the plain moving average ``v``.

    Two forms compute it. The hypot form (:func:`hypot`) is exact to rounding
    wherever the result is a normal float32, at about twice the element-wise
    passes of the plain form ``sqrt((sqrt(decay) * r)**2 + (sqrt(1 - decay) * x)**2)``.
    The plain form is exact unless a square overflows (then an element of the
    result is ``inf``) or underflows (an absolute error below
    :func:`root_underflow_error`). So: when ``underflow_tolerance`` (an absolute
    error of the root the caller can accept, a Python float) is at least
    :func:`root_underflow_error`, the plain form runs unless it could overflow,
    judged from the largest ``r`` and the largest ``|x|`` of the tensor (one
    ``tf.cond``), and the hypot form then; otherwise the hypot form always
    runs. In a trace that XLA compiles the hypot form always runs: it fuses with
    the element-wise work around it, where the plain form's reductions and
    ``tf.cond`` cost more than the divisions they save. Either way the result is within ``underflow_tolerance`` of the exact
    root, and exact to rounding for roots above ~1e-19.

    Args:
        root: the current root, ``sqrt(v)``.
        value: the new value ``x`` (a gradient), same shape.
        decay: a float in [0, 1).
        underflow_tolerance: float >= 0 (default 0: always the hypot form).

    Returns:
        The new root, shape and dtype of ``value``.
    """
    tensor_decay = tf.cast(decay, value.dtype)
    kept, added = tf.sqrt(tensor_decay) * root, tf.sqrt(1.0 - tensor_decay) * value
    if underflow_tolerance < root_underflow_error(decay) or keras_seam.tracing_for_xla():
        # Under XLA the branch-free hypot form fuses with its neighbours; the plain form's three
        # reductions and its tf.cond cost more than the divisions it saves.
        return hypot(kept, added)
    # The largest plain value is at most decay * max(r)**2 + (1 - decay) * max|x|**2: reductions of the
    # inputs themselves, fast and vectorised. (One reduction of the plain v instead, outside the
    # tf.cond, measured slower in graph mode: v, kept and added then stay alive across the cond, so no
    # element-wise op can reuse its input's buffer.)
    largest_kept = tf.sqrt(tensor_decay) * tf.reduce_max(root)
    largest_added = tf.sqrt(1.0 - tensor_decay) * tf.maximum(tf.reduce_max(value), -tf.reduce_min(value))
    largest = tf.square(largest_kept) + tf.square(largest_added)
    return tf.cond(tf.math.is_finite(largest), lambda: tf.sqrt(tf.square(kept) + tf.square(added)),
                   lambda: hypot(kept, added))


def adam_root_tolerance(epsilon, beta_2):
    """The error of ``sqrt(v)`` below which Adam's direction ``m_hat / (sqrt(v_hat) + eps)`` does not change.

    ``sqrt(v_hat) = sqrt(v) / sqrt(1 - beta_2**t)`` multiplies an error of the
    root by at most ``1 / sqrt(1 - beta_2)``; after that it must stay below
    float32 rounding of ``eps`` (a relative 2**-24). For :func:`root_moving_average`'s
    ``underflow_tolerance``: with ``beta_2 = 0.999`` the plain form qualifies
    for ``epsilon`` from about 2.6e-9 (so for the defaults 1e-6 of LAMB and
    1e-7 of Keras's Adam), and never for ``epsilon = 0``.
    """
    return epsilon * math.sqrt(1.0 - beta_2) * 2.0 ** -24


def bias_corrected_adam_direction(first_moment, second_moment_root, beta_1, beta_2, step, epsilon):
    """``m_hat / (sqrt(v_hat) + eps)`` from the raw ``m`` and ``sqrt(v)`` at the 1-based ``step``; 0 where ``0 / 0``.

    With ``a = 1 - beta_1**t`` and ``b = sqrt(1 - beta_2**t)`` it is
    ``(m / a) / (r / b + eps) = (b / a) * m / (r + b * eps)``: the bias
    corrections become one scalar, three element-wise passes instead of five.
    With ``epsilon=0`` an element whose gradient has always been exactly 0 has
    ``m = v = 0``: its direction is 0 (it has no gradient to follow), not NaN.
    """
    dtype = first_moment.dtype
    step = tf.cast(step, dtype)
    a = 1.0 - tf.pow(tf.cast(beta_1, dtype), step)
    b = tf.sqrt(1.0 - tf.pow(tf.cast(beta_2, dtype), step))
    return tf.math.divide_no_nan(first_moment, second_moment_root + b * tf.cast(epsilon, dtype)) * (b / a)
