"""Property-based tests (hypothesis) of the update rules' documented invariances.

Random shapes, gradient scales ``c`` in 1e-6 .. 1e6, float32 and bfloat16
variables:

* GSNR is scale-free: the clipped normalised factor of ``c * g`` equals that of
  ``g``, and a VR-SGD step taken on ``c * g`` is ``c`` times the step on ``g``
  (docs/vr.md; Jiang et al., "Accelerating Large Batch Training via
  Gradient Signal to Noise Ratio (GSNR)"); the factor lies in ``[gamma, 1]``;
* the trust ratio (``rules.trust_ratio``) with bounds ``(low, high)`` lies in
  ``[c low / ||u||, c high / ||u||]``, is ``c ||w|| / ||u||`` without bounds,
  and is 1 when either norm is 0;
* SNGM's momentum obeys ``||u_t|| <= (1 - beta**t) / (1 - beta) < 1 / (1 - beta)``
  (SNGM paper, Lemma 2) whatever the gradients, zero gradients included;
* every optimizer of the zoo keeps weights and state finite.

Random arrays come from a NumPy generator seeded by hypothesis (hypothesis picks
shapes, scales, seeds and dtypes; NumPy draws the values), so examples are
well-conditioned draws rather than adversarial near-cancellations that no
float32 computation could keep scale-free. Examples are derandomized (the same
on every run) and few (TensorFlow's eager ops are slow per call).
"""

import keras
import numpy as np
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import tf_largebatch as tlb
from optimizer_zoo import ENTRIES
from tf_largebatch.optimizers import gsnr, rules

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)
log_scales = st.floats(-6.0, 6.0)
# Powers of two from about 1e-6 to 1e6: scaling by them is exact in float32, so the
# factor must be *equal*; a decimal scale rounds every sample, and at k = 2 the
# raw-moment variance of an element with GSNR ~1e4 amplifies that rounding enough
# to move the normalising mean by ~0.3 % (a float32 conditioning limit, not a
# scale dependence of the method; moments are shifted only from k >= 64).
scale_exponents = st.integers(-20, 20)
seeds = st.integers(0, 2**32 - 1)


def _samples(seed, shape, k):
    """k gradient samples: a common signal plus per-sample noise of similar size."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=shape)
    noise = rng.uniform(0.2, 2.0) * rng.normal(size=(k,) + shape)
    return (signal + noise).astype("float32")


def _factor(samples, gamma):
    samples = tf.constant(samples)
    mean = tf.reduce_mean(samples, axis=0)
    second_moment = tf.reduce_mean(tf.square(samples), axis=0)
    variance = gsnr.sample_variance(mean, second_moment, samples.shape[0])
    factor, _ = gsnr.gsnr_factor(mean, variance, gamma, 1.0)
    return factor.numpy()


@SETTINGS
@given(shape=shapes, k=st.integers(2, 6), exponent=scale_exponents, seed=seeds,
       gamma=st.sampled_from([0.1, 0.5, 1.0]))
def test_gsnr_factor_is_scale_free_and_clipped(shape, k, exponent, seed, gamma):
    samples = _samples(seed, shape, k)
    scale = np.float32(2.0**exponent)
    factor = _factor(samples, gamma)
    scaled = _factor(samples * scale, gamma)
    assert np.all(np.isfinite(factor)) and np.all(np.isfinite(scaled))
    assert np.all(factor >= gamma - 1e-6) and np.all(factor <= 1.0 + 1e-6)
    np.testing.assert_allclose(scaled, factor, rtol=1e-4, atol=1e-6)


def _vr_sgd_step(samples, dtype, start):
    """One VR-SGD update from ``k`` micro-batch samples (gradient accumulation)."""
    variable = keras.Variable(start, dtype=dtype)
    optimizer = tlb.VRSGD(learning_rate=0.1, gradient_accumulation_steps=len(samples))
    optimizer.build([variable])
    for sample in samples:
        optimizer.apply([tf.constant(sample, dtype)], [variable])
    assert int(optimizer.iterations.numpy()) == 1
    return np.asarray(variable.numpy(), np.float64) - np.asarray(start, np.float64), optimizer


@SETTINGS
@given(shape=shapes, k=st.integers(2, 4), log_scale=log_scales, seed=seeds)
def test_vr_sgd_step_is_scale_free(shape, k, log_scale, seed):
    """``step(c g) = c step(g)``: no absolute epsilon dominates small gradients."""
    samples = _samples(seed, shape, k)
    start = np.zeros(shape, "float32")  # the step itself, without weight round-off
    scale = np.float32(10.0**log_scale)
    step, _ = _vr_sgd_step(samples, "float32", start)
    scaled_step, _ = _vr_sgd_step(samples * scale, "float32", start)
    assert np.all(np.isfinite(scaled_step))
    np.testing.assert_allclose(scaled_step / scale, step, rtol=1e-4, atol=1e-6 * np.max(np.abs(step)))
    # The factor lies in [gamma, 1]: |step| between 0.1 * lr |gbar| and lr |gbar|.
    gbar = np.mean(samples.astype(np.float64), axis=0)
    assert np.all(np.abs(step) <= 0.1 * np.abs(gbar) * (1 + 1e-5) + 1e-7)
    assert np.all(np.abs(step) >= 0.1 * 0.1 * np.abs(gbar) * (1 - 1e-5) - 1e-7)


@SETTINGS
@given(shape=shapes, k=st.integers(2, 4), log_scale=log_scales, seed=seeds)
def test_vr_sgd_on_bfloat16_variables_is_finite_and_follows_float32(shape, k, log_scale, seed):
    """bfloat16 weights and gradients: state in float32, and the step equals the
    float32 step on the same (bfloat16-representable) values up to the rounding
    of the new weights to bfloat16."""

    def bf16_values(x):
        return np.asarray(tf.cast(tf.cast(x, tf.bfloat16), tf.float32))

    samples = bf16_values(_samples(seed, shape, k) * np.float32(10.0**log_scale))
    start_bf16 = bf16_values(np.random.default_rng(seed).normal(size=shape).astype("float32"))
    step_bf16, optimizer = _vr_sgd_step(samples, "bfloat16", start_bf16)
    step_f32, _ = _vr_sgd_step(samples, "float32", start_bf16)
    assert np.all(np.isfinite(step_bf16))
    assert all(v.dtype != "bfloat16" for v in optimizer.variables)
    # bfloat16 keeps 8 significant bits: the step is rounded, then the new weight.
    rounding = 2.0**-8 * (np.abs(step_f32) + np.abs(start_bf16 + step_f32))
    assert np.all(np.abs(step_bf16 - step_f32) <= rounding)


positive = st.floats(-6.0, 6.0).map(lambda e: 10.0**e)
norms = st.one_of(st.just(0.0), positive)


@SETTINGS
@given(weight_norm=norms, update_norm=norms, low=positive, spread=st.floats(1.0, 1e3),
       coefficient=st.floats(1e-3, 10.0), bounded=st.booleans())
def test_trust_ratio_respects_its_bounds(weight_norm, update_norm, low, spread, coefficient, bounded):
    high = low * spread
    bounds = (low, high) if bounded else None
    ratio = float(rules.trust_ratio(tf.constant(weight_norm, tf.float32), tf.constant(update_norm, tf.float32),
                                    trust_coefficient=coefficient, bounds=bounds))
    assert np.isfinite(ratio)
    if weight_norm == 0 or update_norm == 0:
        assert ratio == 1.0
    elif bounded:
        assert coefficient * low / update_norm * (1 - 1e-5) <= ratio <= coefficient * high / update_norm * (1 + 1e-5)
    else:
        np.testing.assert_allclose(ratio, coefficient * weight_norm / update_norm, rtol=1e-5)


@SETTINGS
@given(shapes_=st.lists(shapes, min_size=1, max_size=3), steps=st.integers(1, 6),
       log_scales_=st.lists(st.one_of(st.none(), log_scales), min_size=6, max_size=6),
       beta=st.sampled_from([0.0, 0.5, 0.9, 0.99]), layerwise=st.booleans(),
       dtype=st.sampled_from(["float32", "bfloat16"]), seed=seeds)
def test_sngm_momentum_norm_is_bounded(shapes_, steps, log_scales_, beta, layerwise, dtype, seed):
    """Each step adds a unit-norm (or zero) vector to ``beta * u`` (a ``None`` scale
    is an all-zero gradient): ``||u_t|| <= sum_{i<t} beta**i``. Block-wise SNGM
    normalises per variable, so each variable's momentum obeys the bound."""
    rng = np.random.default_rng(seed)
    variables = [keras.Variable(rng.normal(size=s).astype("float32"), dtype=dtype) for s in shapes_]
    optimizer = tlb.SNGM(learning_rate=0.01, momentum=beta, layerwise=layerwise)
    optimizer.build(variables)
    for t in range(1, steps + 1):
        log_scale = log_scales_[t - 1]
        scale = 0.0 if log_scale is None else 10.0**log_scale
        grads = [tf.constant(scale * rng.normal(size=s), dtype) for s in shapes_]
        optimizer.apply(grads, variables)
        momenta = [np.asarray(optimizer._slot(optimizer.momentums, v).numpy(), np.float64) for v in variables]
        bound = sum(beta**i for i in range(t)) * (1 + 1e-5)
        assert all(np.all(np.isfinite(m)) for m in momenta)
        assert all(np.all(np.isfinite(np.asarray(v.numpy(), np.float64))) for v in variables)
        if layerwise:
            assert all(np.linalg.norm(m) <= bound for m in momenta)
        else:
            assert np.sqrt(sum(np.sum(m**2) for m in momenta)) <= bound
        assert bound <= 1.0 / (1.0 - beta) * (1 + 1e-5)


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(name=st.sampled_from(sorted(ENTRIES)), shape=shapes, log_scale=log_scales,
       dtype=st.sampled_from(["float32", "bfloat16"]), seed=seeds)
def test_every_optimizer_keeps_weights_and_state_finite(name, shape, log_scale, dtype, seed):
    """Two updates (VR: two micro-batches each) with gradients of scale 1e-6 .. 1e6."""
    rng = np.random.default_rng(seed)
    entry = ENTRIES[name]
    variables = [keras.Variable(rng.normal(size=shape).astype("float32"), dtype=dtype, name="kernel"),
                 keras.Variable(np.zeros(shape[-1:], "float32"), dtype=dtype, name="bias")]
    optimizer = entry.single_device()
    optimizer.build(variables)
    micro = (optimizer.gradient_accumulation_steps or 1)
    for _ in range(2 * micro):
        grads = [tf.constant(10.0**log_scale * rng.normal(size=v.shape), dtype) for v in variables]
        optimizer.apply(grads, variables)
    assert int(optimizer.iterations.numpy()) == 2
    for v in list(variables) + list(optimizer.variables):
        assert np.all(np.isfinite(np.asarray(v.numpy(), np.float64))), v.path
