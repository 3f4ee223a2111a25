"""Independent NumPy implementations of the update rules, written from the papers.

Nothing here imports ``tf_largebatch``: these are the references the Keras
optimizers are tested against. Everything is float64 NumPy.

Two layers:

* **Per-variable pure steps** ``state, new_w = step(state, w, g, lr, **hp)``:
  ``state`` is ``None`` before the first step (the step initialises it) and an
  opaque dict afterwards; ``w`` and ``g`` are arrays of one variable. Each call
  advances that variable's own step counter ``state["t"]`` (1-based inside the
  step). A VR optimizer's reference feeds these steps its modified gradient.
* **Whole-model steps** ``state, new_ws = step(state, ws, gs, lr, **hp)`` over
  lists of arrays, for rules with a cross-variable part (SNGM's global norm,
  NVLAMB's global-norm clipping). :func:`per_variable` lifts any per-variable step
  to this form, so :func:`run` drives either kind.

:func:`run` applies a whole-model step for several steps and returns the
weights after each step.

References:
    Keras 3 ``SGD``/``Adam``/``Adagrad``/``RMSprop`` (semantics reproduced here).
    Zhao et al., "Stochastic Normalized Gradient Descent with Momentum for
        Large-Batch Training" (SNGM), Algorithm 1 and eq. (13)-(14).
    You, Gitman, Ginsburg 2017, "Large Batch Training of Convolutional Networks"
        (LARS, Algorithm 1: trust ratio on the gradient, before momentum).
    You et al. 2020, "Large Batch Optimization for Deep Learning" (LAMB paper;
        its Algorithm 1 is LARS with the trust ratio on the momentum, Algorithm 2
        is LAMB). The VRGD paper's Algorithm 6 quotes the same LAMB.
    You et al. 2020, "The Limit of the Batch Size", Sec. 3 / Table 3 (layer-wise
        and layer-wise + bound-ratio SGD, AdaGrad, RMSprop, Adam).
"""

import numpy as np

# --------------------------------------------------------------------- helpers


def norm(x):
    """Euclidean norm of a whole array."""
    return float(np.sqrt(np.sum(np.square(np.asarray(x, dtype=np.float64)))))


def trust_ratio(w_norm, u_norm, trust_coefficient=1.0, bounds=None, epsilon=0.0):
    """``c * phi(||w||) / (||u|| + eps)``; 1 when either norm is 0.

    ``phi`` is the identity or ``clip(., low, high)`` with ``bounds=(low, high)``
    (SNGM paper, Sec. 4.2; LAMB paper, Algorithms 1-2).
    """
    if w_norm == 0.0 or u_norm == 0.0:
        return 1.0
    phi = w_norm if bounds is None else min(max(w_norm, bounds[0]), bounds[1])
    return trust_coefficient * phi / (u_norm + epsilon)


def _f(x):
    return np.asarray(x, dtype=np.float64)


def _new_state(state, w, **slots):
    if state is not None:
        return dict(state)
    state = {"t": 0}
    for name, init in slots.items():
        state[name] = np.full_like(_f(w), init)
    return state


# ------------------------------------------------------ plain Keras semantics


def sgd_momentum_step(state, w, g, lr, momentum=0.0, nesterov=False):
    """Keras ``SGD``: ``m <- momentum*m - lr*g``; ``w <- w + m``
    (nesterov: ``w <- w + momentum*m - lr*g``); ``momentum=0``: ``w - lr*g``."""
    w, g = _f(w), _f(g)
    state = _new_state(state, w, m=0.0)
    state["t"] += 1
    if momentum == 0:
        return state, w - lr * g
    state["m"] = momentum * state["m"] - lr * g
    if nesterov:
        return state, w + momentum * state["m"] - lr * g
    return state, w + state["m"]


def adam_step(state, w, g, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False):
    """Keras ``Adam``: ``w <- w - lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps)``
    (epsilon outside the bias correction, as Keras does)."""
    w, g = _f(w), _f(g)
    state = _new_state(state, w, m=0.0, v=0.0, v_max=0.0)
    state["t"] += 1
    t = state["t"]
    state["m"] = beta_1 * state["m"] + (1 - beta_1) * g
    state["v"] = beta_2 * state["v"] + (1 - beta_2) * g * g
    v = state["v"]
    if amsgrad:
        state["v_max"] = np.maximum(state["v_max"], v)
        v = state["v_max"]
    alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
    return state, w - alpha * state["m"] / (np.sqrt(v) + epsilon)


def adagrad_step(state, w, g, lr, initial_accumulator_value=0.1, epsilon=1e-7):
    """Keras ``Adagrad``: ``a <- a + g^2``; ``w <- w - lr*g/sqrt(a+eps)``."""
    w, g = _f(w), _f(g)
    state, direction = adagrad_direction(state, w, g, initial_accumulator_value, epsilon)
    return state, w - lr * direction


def rmsprop_step(state, w, g, lr, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False):
    """Keras ``RMSprop`` (lr inside the momentum, as Keras)."""
    w, g = _f(w), _f(g)
    state, direction = rmsprop_direction(state, w, g, rho, 0.0, epsilon, centered)
    increment = lr * direction
    if momentum > 0:
        state["mom_lr"] = state.get("mom_lr", np.zeros_like(w))
        state["mom_lr"] = momentum * state["mom_lr"] + increment
        increment = state["mom_lr"]
    return state, w - increment


# ------------------------------------ base-rule directions (per unit of lr)
# Each returns (state, d) with the update w <- w - lr * d for the plain rule.


def sgd_direction(state, w, g, momentum=0.0, nesterov=False):
    """Heavy ball with lr outside: ``m <- momentum*m + g``; ``d = m``
    (nesterov: ``d = g + momentum*m``)."""
    state = _new_state(state, w, m=0.0)
    state["t"] += 1
    if momentum == 0:
        return state, _f(g)
    state["m"] = momentum * state["m"] + g
    return state, (g + momentum * state["m"]) if nesterov else state["m"]


def adagrad_direction(state, w, g, initial_accumulator_value=0.1, epsilon=1e-7):
    """``a <- a + g^2``; ``d = g / sqrt(a + eps)`` (Keras's epsilon placement)."""
    state = _new_state(state, w, a=initial_accumulator_value)
    state["t"] += 1
    state["a"] = state["a"] + g * g
    return state, g / np.sqrt(state["a"] + epsilon)


def rmsprop_direction(state, w, g, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False):
    """``v <- rho*v + (1-rho)*g^2``; ``d = g / sqrt(v [- mg^2] + eps)``; then
    heavy-ball momentum on ``d`` (lr outside) when ``momentum > 0``."""
    state = _new_state(state, w, v=0.0, mg=0.0, mom=0.0)
    state["t"] += 1
    state["v"] = rho * state["v"] + (1 - rho) * g * g
    denominator = state["v"] + epsilon
    if centered:
        state["mg"] = rho * state["mg"] + (1 - rho) * g
        denominator = state["v"] - state["mg"] ** 2 + epsilon
    d = g / np.sqrt(denominator)
    if momentum > 0:
        state["mom"] = momentum * state["mom"] + d
        d = state["mom"]
    return state, d


def adam_direction(state, w, g, beta_1=0.9, beta_2=0.999, epsilon=1e-6):
    """Paper form (LAMB paper Alg. 2, VRGD Alg. 4/6): bias-corrected moments,
    ``d = m_hat / (sqrt(v_hat) + eps)``."""
    state = _new_state(state, w, m=0.0, v=0.0)
    state["t"] += 1
    t = state["t"]
    state["m"] = beta_1 * state["m"] + (1 - beta_1) * g
    state["v"] = beta_2 * state["v"] + (1 - beta_2) * g * g
    m_hat = state["m"] / (1 - beta_1**t)
    v_hat = state["v"] / (1 - beta_2**t)
    denominator = np.sqrt(v_hat) + epsilon
    # epsilon = 0 and a gradient that was always 0 (m = v = 0): direction 0.
    return state, np.divide(m_hat, denominator, out=np.zeros_like(m_hat), where=denominator > 0)


DIRECTIONS = {
    "sgd": sgd_direction,
    "adagrad": adagrad_direction,
    "rmsprop": rmsprop_direction,
    "adam": adam_direction,
}


def layerwise_step(state, w, g, lr, base="sgd", weight_decay=0.0, trust_coefficient=1.0,
                   bounds=None, adapt=True, decay=True, **base_hp):
    """Layer-wise (+ bound-ratio) version of a base rule (Limit of the Batch Size,
    Sec. 3, Table 3):

        d = base direction (per unit lr);  u = d + wd*w
        w <- w - lr * c*phi(||w||)/||u|| * u

    ``adapt=False`` (excluded from layer adaptation) gives ratio 1; ``decay=False``
    (excluded from weight decay) drops ``wd*w``. With ``base="adam"`` this is LAMB.
    """
    w, g = _f(w), _f(g)
    state, d = DIRECTIONS[base](state, w, g, **base_hp)
    u = d + weight_decay * w if (decay and weight_decay) else d
    ratio = trust_ratio(norm(w), norm(u), trust_coefficient, bounds) if adapt else 1.0
    state["last_ratio"] = ratio
    return state, w - lr * ratio * u


# ------------------------------------------------------------------ LAMB


def lamb_step(state, w, g, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-6, weight_decay=0.0,
              bounds=None, adapt=True, decay=True):
    """LAMB (You et al. 2020, Algorithm 2):

        m <- b1*m + (1-b1)*g;  v <- b2*v + (1-b2)*g^2
        m_hat = m/(1-b1^t);  v_hat = v/(1-b2^t)
        u = m_hat/(sqrt(v_hat)+eps) + wd*w
        w <- w - lr * phi(||w||)/||u|| * u
    """
    w, g = _f(w), _f(g)
    state, d = adam_direction(state, w, g, beta_1, beta_2, epsilon)
    u = d + weight_decay * w if (decay and weight_decay) else d
    ratio = trust_ratio(norm(w), norm(u), 1.0, bounds) if adapt else 1.0
    state["last_ratio"] = ratio
    return state, w - lr * ratio * u


def clip_by_global_norm(gs, max_norm):
    """NVLAMB pre-moment clipping: ``g / max(1, ||g||_global / max_norm)``."""
    gs = [_f(g) for g in gs]
    total = np.sqrt(sum(np.sum(g * g) for g in gs))
    return [g / max(1.0, total / max_norm) for g in gs]


def nvlamb_step(state, ws, gs, lr, max_norm=1.0, adapt_mask=None, decay_mask=None, **hp):
    """Whole-model NVLAMB: global-norm clipping of the gradient, then LAMB."""
    return per_variable(lamb_step, adapt_mask=adapt_mask, decay_mask=decay_mask)(
        state, ws, clip_by_global_norm(gs, max_norm), lr, **hp
    )


# ------------------------------------------------------------------ LARS


def lars_step(state, w, g, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001,
              epsilon=0.0, nesterov=False, bounds=None, trust_ratio_on="gradient",
              adapt=True, decay=True, denominator="norm_of_sum"):
    """LARS, both versions of the SNGM paper's footnote 1.

    ``trust_ratio_on="gradient"`` (You, Gitman, Ginsburg 2017, Algorithm 1)::

        u = g + wd*w;  r = c*phi(||w||)/(||u|| + eps)
        v <- momentum*v + lr*r*u;  w <- w - v
        (nesterov: w <- w - (momentum*v + lr*r*u))

    ``denominator="sum_of_norms"`` (the 2017 paper's Algorithm 1 as written,
    Limit of the Batch Size eq. 2, MLPerf's ResNet-50 reference)::

        r = c*phi(||w||)/(||g|| + wd*||w|| + eps), and 1 where ||w|| = 0 or ||g|| = 0

    ``trust_ratio_on="momentum"`` (You et al. 2020, LAMB paper Algorithm 1)::

        m <- momentum*m + (1-momentum)*(g + wd*w)
        d = m  (nesterov: d = momentum*m + (1-momentum)*(g + wd*w))
        w <- w - lr * c*phi(||w||)/(||d|| + eps) * d
    """
    w, g = _f(w), _f(g)
    state = _new_state(state, w, m=0.0)
    state["t"] += 1
    u = g + weight_decay * w if (decay and weight_decay) else g
    if trust_ratio_on == "gradient":
        if not adapt:
            ratio = 1.0
        elif denominator == "sum_of_norms":
            wd = weight_decay if (decay and weight_decay) else 0.0
            w_norm, g_norm = norm(w), norm(g)
            phi = w_norm if bounds is None else min(max(w_norm, bounds[0]), bounds[1])
            ratio = trust_coefficient * phi / (g_norm + wd * w_norm + epsilon) if (w_norm > 0 and g_norm > 0) else 1.0
        else:
            ratio = trust_ratio(norm(w), norm(u), trust_coefficient, bounds, epsilon)
        scaled = lr * ratio * u
        state["m"] = momentum * state["m"] + scaled
        step = momentum * state["m"] + scaled if nesterov else state["m"]
    elif trust_ratio_on == "momentum":
        state["m"] = momentum * state["m"] + (1 - momentum) * u
        d = momentum * state["m"] + (1 - momentum) * u if nesterov else state["m"]
        ratio = trust_ratio(norm(w), norm(d), trust_coefficient, bounds, epsilon) if adapt else 1.0
        step = lr * ratio * d
    else:
        raise ValueError(trust_ratio_on)
    state["last_ratio"] = ratio
    return state, w - step


# ------------------------------------------------------------------ SNGM


def sngm_step(state, ws, gs, lr, momentum=0.9, weight_decay=0.0, layerwise=False, decay_mask=None):
    """SNGM (Algorithm 1), whole model::

        g <- g + wd*w                (coupled, where decay_mask allows)
        u <- momentum*u + g/||g||    (||g|| global; per variable if layerwise, eq. 13-14)
        w <- w - lr*u

    A zero norm gives a zero direction (u decays).
    """
    ws = [_f(w) for w in ws]
    gs = [_f(g) for g in gs]
    if decay_mask is None:
        decay_mask = [True] * len(ws)
    if state is None:
        state = {"t": 0, "u": [np.zeros_like(w) for w in ws]}
    state = {"t": state["t"] + 1, "u": list(state["u"])}
    gs = [g + weight_decay * w if (d and weight_decay) else g for g, w, d in zip(gs, ws, decay_mask)]
    if layerwise:
        norms = [norm(g) for g in gs]
    else:
        norms = [np.sqrt(sum(np.sum(g * g) for g in gs))] * len(gs)
    directions = [g / n if n > 0 else np.zeros_like(g) for g, n in zip(gs, norms)]
    state["u"] = [momentum * u + d for u, d in zip(state["u"], directions)]
    return state, [w - lr * u for w, u in zip(ws, state["u"])]


# ------------------------------------------------------------------ drivers

#: float32 tolerance for a Keras optimizer's trajectory against these references.
RTOL, ATOL = 2e-5, 2e-6


def assert_histories_close(actual, expected, rtol=RTOL, atol=ATOL):
    """Weights after each step (lists of lists of arrays) agree, step by step."""
    assert len(actual) == len(expected)
    for step, (a_step, e_step) in enumerate(zip(actual, expected)):
        for index, (a, e) in enumerate(zip(a_step, e_step)):
            np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=f"step {step}, variable {index}")



def per_variable(step, adapt_mask=None, decay_mask=None):
    """Lifts a per-variable step to a whole-model step over lists.

    ``adapt_mask``/``decay_mask`` (lists of bools) are passed as ``adapt=``/
    ``decay=`` to steps that take them (variables excluded from layer adaptation
    or weight decay).
    """

    def whole(state, ws, gs, lr, **hp):
        if state is None:
            state = [None] * len(ws)
        new_state, new_ws = [], []
        for i, (s, w, g) in enumerate(zip(state, ws, gs)):
            extra = {}
            if adapt_mask is not None:
                extra["adapt"] = adapt_mask[i]
            if decay_mask is not None:
                extra["decay"] = decay_mask[i]
            s, w = step(s, w, g, lr, **hp, **extra)
            new_state.append(s)
            new_ws.append(w)
        return new_state, new_ws

    return whole


def run(step, weights, gradients, lr, num_steps=None, **hp):
    """Runs a whole-model ``step`` and returns the weights after each step.

    Args:
        step: ``state, new_ws = step(state, ws, gs, lr_t, **hp)``; wrap a
            per-variable step with :func:`per_variable`.
        weights: list of initial arrays.
        gradients: list (over steps) of lists of per-variable gradients, or a
            function ``grad_fn(t, ws) -> list`` (``t`` 0-based) for gradients that
            depend on the current weights.
        lr: float, or a function of the 0-based step.
        num_steps: required when ``gradients`` is a function.

    Returns:
        ``history``: list over steps of lists of float64 arrays.
    """
    ws = [_f(w) for w in weights]
    state = None
    history = []
    steps = len(gradients) if num_steps is None else num_steps
    for t in range(steps):
        gs = gradients(t, ws) if callable(gradients) else gradients[t]
        lr_t = lr(t) if callable(lr) else lr
        state, ws = step(state, ws, [_f(g) for g in gs], lr_t, **hp)
        history.append([w.copy() for w in ws])
    return history


# ------------------------------------------------- driving a Keras optimizer
# (Test harness, not a reference: it runs any Keras optimizer on the same inputs.)


def make_variables(weights, paths=None, dtype="float32"):
    """``keras.Variable``s (float32 unless ``dtype``) holding ``weights``, named by ``paths``.

    ``paths`` such as ``"encoder/layer_normalization/gamma"`` become nested
    ``keras.name_scope``s, so ``variable.path`` is exactly that string.
    """
    import keras

    if paths is None:
        paths = [f"variable_{i}" for i in range(len(weights))]
    variables = []
    for weight, path in zip(weights, paths):
        *scopes, name = path.split("/")
        scope_stack = [keras.name_scope(s) for s in scopes]
        for scope in scope_stack:
            scope.__enter__()
        try:
            variables.append(keras.Variable(np.asarray(weight, dtype=np.float32), dtype=dtype, name=name))
        finally:
            for scope in reversed(scope_stack):
                scope.__exit__(None, None, None)
    return variables


def run_keras(optimizer, weights, gradients, num_steps=None, paths=None, compiled=False, dtype="float32"):
    """Runs ``optimizer.apply(grads, variables)`` step by step, like :func:`run`.

    Args:
        optimizer: any Keras optimizer.
        weights, gradients, num_steps: as in :func:`run` (a gradient function
            receives the current weights as float64 arrays).
        paths: optional variable paths (see :func:`make_variables`).
        compiled: run each step in a ``tf.function`` instead of eagerly.
        dtype: the variables' dtype (gradients are fed in the same dtype).

    Returns:
        ``(history, variables)``: weights (float64 copies) after each step, and the
        ``keras.Variable``s.
    """
    import tensorflow as tf

    variables = make_variables(weights, paths, dtype)
    optimizer.build(variables)

    def apply(grads):
        optimizer.apply(grads, variables)

    if compiled:
        apply = tf.function(apply)
    history = []
    steps = len(gradients) if num_steps is None else num_steps
    for t in range(steps):
        ws = [np.asarray(v.numpy(), dtype=np.float64) for v in variables]
        gs = gradients(t, ws) if callable(gradients) else gradients[t]
        apply([tf.cast(tf.constant(np.asarray(g, dtype=np.float32)), dtype) for g in gs])
        history.append([np.asarray(v.numpy(), dtype=np.float64) for v in variables])
    return history, variables


def random_problem(steps=6, seed=0):
    """Weights and per-step gradients that exercise trust ratios far from 1 and zero norms.

    Six variables: a ``(1,)`` scalar-like weight with tiny gradients (ratio >> 1),
    a vector of tiny weights with huge gradients (ratio << 1), a matrix, a conv
    kernel ``(3, 3, 2, 4)`` whose gradient is all zero at step 2, a zero-initialised
    bias (``||w|| = 0``), and a matrix whose gradient is always zero.
    """
    rng = np.random.default_rng(seed)
    specs = [  # (shape, weight scale, gradient scale)
        ((1,), None, 1e-3),
        ((7,), 0.01, 10.0),
        ((4, 3), 1.0, 0.1),
        ((3, 3, 2, 4), 0.1, 1.0),
        ((5,), 0.0, 1.0),
        ((2, 3), 1.0, 0.0),
    ]
    weights = []
    for shape, w_scale, _ in specs:
        weights.append(np.array([3.0]) if w_scale is None else w_scale * rng.normal(size=shape))
    gradients = []
    for t in range(steps):
        gs = [g_scale * rng.normal(size=shape) for shape, _, g_scale in specs]
        if t == 2:
            gs[3] = np.zeros_like(gs[3])
        gradients.append(gs)
    return weights, gradients
