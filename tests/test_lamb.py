"""LAMB against the NumPy reference and against keras.optimizers.Lamb."""

import keras
import numpy as np
import pytest

import reference_optimizers as ref
from reference_optimizers import RTOL, ATOL, assert_histories_close  # noqa: F401
from tf_largebatch.optimizers import LAMB, LayerwiseAdam, layerwise


LAMB_CASES = [
    dict(),
    dict(weight_decay=0.01),
    dict(weight_decay=0.1, trust_ratio_bounds=(0.5, 2.0)),
    dict(trust_ratio_bounds=(0.01, 0.05), beta_1=0.5, beta_2=0.9, epsilon=1e-3),
]


@pytest.mark.parametrize("case", LAMB_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_lamb_matches_reference(case):
    weights, gradients = ref.random_problem(steps=6)
    lr = 0.05
    history, _ = ref.run_keras(LAMB(learning_rate=lr, **case), weights, gradients)
    kwargs = dict(case)
    if "trust_ratio_bounds" in kwargs:
        kwargs["bounds"] = kwargs.pop("trust_ratio_bounds")
    expected = ref.run(ref.per_variable(ref.lamb_step), weights, gradients, lr, **kwargs)
    assert_histories_close(history, expected)
    assert all(np.all(np.isfinite(w)) for w in history[-1])


# Per variable of the test problem, a gradient scale that puts its second-moment root on one path:
# 1e-22 (gradients ~1e-25): the plain form, whose squares underflow (an error far below epsilon's
# rounding); 2e19 (gradients ~4e20): the plain form at step 1, the hypot form from step 2 on, when
# v = r**2 exceeds float32's range; 1: the plain form; 1e30: the hypot form on every step.
MIXED_SCALES = [1e-22, 2e19, 1.0, 1e30]


@pytest.mark.parametrize("cls", [LAMB, LayerwiseAdam], ids=lambda c: c.__name__)
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_default_epsilon_matches_the_reference_with_each_variable_on_its_own_second_moment_path(cls, weight_decay):
    weights, gradients = ref.random_problem(steps=5)
    weights = weights[:4]
    gradients = [[scale * g for scale, g in zip(MIXED_SCALES, gs[:4])] for gs in gradients]
    v, largest = 0.0, []
    for gs in gradients:
        v = 0.999 * v + 0.001 * np.square(gs[1])
        largest.append(np.max(v))
    assert largest[0] < np.finfo(np.float32).max < largest[1]  # the second variable switches form at step 2
    history, _ = ref.run_keras(cls(0.05, weight_decay=weight_decay), weights, gradients)
    expected = ref.run(ref.per_variable(ref.lamb_step), weights, gradients, 0.05, weight_decay=weight_decay)
    assert_histories_close(history, expected)


@pytest.fixture
def chain_compiled_alone(monkeypatch):
    """Every variable takes the XLA-compiled Adam chain in a graph-mode step (large ones do by default)."""
    monkeypatch.setattr(layerwise, "COMPILE_MIN_ELEMENTS", 0)


@pytest.mark.parametrize("case", LAMB_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_lamb_with_the_chain_compiled_alone_matches_reference(case, chain_compiled_alone):
    weights, gradients = ref.random_problem(steps=6)
    history, _ = ref.run_keras(LAMB(learning_rate=0.05, **case), weights, gradients, compiled=True)
    kwargs = dict(case)
    if "trust_ratio_bounds" in kwargs:
        kwargs["bounds"] = kwargs.pop("trust_ratio_bounds")
    expected = ref.run(ref.per_variable(ref.lamb_step), weights, gradients, 0.05, **kwargs)
    assert_histories_close(history, expected)


@pytest.mark.parametrize("cls", [LAMB, LayerwiseAdam], ids=lambda c: c.__name__)
def test_the_compiled_chain_keeps_the_overflow_and_underflow_guarantees(cls, chain_compiled_alone):
    """Gradients from 1e-25 to 1e30 (MIXED_SCALES, one scale per variable) through the XLA-compiled
    chain, with weight decay."""
    weights, gradients = ref.random_problem(steps=5)
    weights = weights[:4]
    gradients = [[scale * g for scale, g in zip(MIXED_SCALES, gs[:4])] for gs in gradients]
    history, _ = ref.run_keras(cls(0.05, weight_decay=0.01), weights, gradients, compiled=True)
    expected = ref.run(ref.per_variable(ref.lamb_step), weights, gradients, 0.05, weight_decay=0.01)
    assert_histories_close(history, expected)


def test_reference_problem_has_far_from_one_ratios():
    weights, gradients = ref.random_problem(steps=1)
    ratios = [ref.lamb_step(None, w, g, 0.05, weight_decay=0.01)[0]["last_ratio"]
              for w, g in zip(weights, gradients[0])]
    assert max(ratios) > 1.5 and min(ratios) < 0.05
    ratios = [ref.lamb_step(None, w, g, 0.05)[0]["last_ratio"] for w, g in zip(weights, gradients[0])]
    assert ratios[4] == 1.0 and ratios[5] == 1.0  # zero weight norm; zero update norm


@pytest.mark.parametrize("compiled", [False, True])
def test_agrees_with_keras_lamb_when_configured_alike(compiled):
    """keras.optimizers.Lamb is an independent implementation of the same Algorithm 2."""
    weights, gradients = ref.random_problem(steps=6, seed=3)
    ours, _ = ref.run_keras(LAMB(0.05, epsilon=1e-6), weights, gradients, compiled=compiled)
    theirs, _ = ref.run_keras(keras.optimizers.Lamb(0.05, epsilon=1e-6), weights, gradients, compiled=compiled)
    assert_histories_close(ours, theirs)


def test_weight_decay_is_inside_the_trust_ratio_not_decoupled():
    """Decay inside the ratio differs from Keras's decoupled weight decay on the same Lamb."""
    weights, gradients = ref.random_problem(steps=4)
    ours, _ = ref.run_keras(LAMB(0.05, weight_decay=0.1), weights, gradients)
    decoupled, _ = ref.run_keras(keras.optimizers.Lamb(0.05, epsilon=1e-6, weight_decay=0.1), weights, gradients)
    assert not np.allclose(ours[-1][2], decoupled[-1][2], rtol=1e-4)


# ------------------------------------------------------------------ NVLAMB
def test_nvlamb_global_norm_clipping_matches_reference():
    weights, gradients = ref.random_problem(steps=6)
    # Global gradient norms are ~30 here: clipping at 5 is active on every step.
    optimizer = LAMB(0.05, weight_decay=0.01, clip_global_norm_before_moments=5.0)
    history, _ = ref.run_keras(optimizer, weights, gradients)
    expected = ref.run(ref.nvlamb_step, weights, gradients, 0.05, max_norm=5.0, weight_decay=0.01)
    assert_histories_close(history, expected)
    # Clipping changes the result (epsilon and the moments see the clipped scale).
    unclipped = ref.run(ref.per_variable(ref.lamb_step), weights, gradients, 0.05, weight_decay=0.01)
    assert not np.allclose(expected[-1][2], unclipped[-1][2], rtol=1e-4)


def test_nvlamb_clipping_is_inactive_below_the_threshold():
    weights, gradients = ref.random_problem(steps=4)
    clipped, _ = ref.run_keras(LAMB(0.05, clip_global_norm_before_moments=1e6), weights, gradients)
    plain, _ = ref.run_keras(LAMB(0.05), weights, gradients)
    assert_histories_close(clipped, plain, rtol=1e-6, atol=1e-7)


def test_nvlamb_clipping_equals_global_clipnorm_on_the_reduced_gradient():
    """Both divide the all-reduced gradient by max(1, ||g|| / max_norm)."""
    weights, gradients = ref.random_problem(steps=4)
    a, _ = ref.run_keras(LAMB(0.05, clip_global_norm_before_moments=2.0), weights, gradients)
    b, _ = ref.run_keras(LAMB(0.05, global_clipnorm=2.0), weights, gradients)
    assert_histories_close(a, b)


# ----------------------------------------------------- exclusions, steps, config
PATHS = [
    "encoder/dense/kernel",
    "encoder/dense/bias",
    "encoder/layer_normalization/gamma",
    "encoder/conv/kernel",
    "encoder/conv/bias",
    "encoder/layer_normalization/beta",
]


def test_exclusions_match_variable_path():
    weights, gradients = ref.random_problem(steps=5)
    optimizer = LAMB(
        0.05,
        weight_decay=0.1,
        exclude_from_weight_decay=["bias", "layer_normalization"],
        exclude_from_layer_adaptation=["layer_normalization"],
    )
    history, _ = ref.run_keras(optimizer, weights, gradients, paths=PATHS)
    decay_mask = [True, False, False, True, False, False]
    adapt_mask = [True, True, False, True, True, False]
    step = ref.per_variable(ref.lamb_step, adapt_mask=adapt_mask, decay_mask=decay_mask)
    assert_histories_close(history, ref.run(step, weights, gradients, 0.05, weight_decay=0.1))


def test_bias_correction_counts_real_updates_under_gradient_accumulation():
    """With 2 micro-batches per update, t in (1 - beta**t) is the update count."""
    weights, gradients = ref.random_problem(steps=4)
    micro = []
    for gs in gradients:  # two micro-batch gradients whose mean is gs
        micro.append([1.5 * g for g in gs])
        micro.append([0.5 * g for g in gs])
    accumulated, _ = ref.run_keras(LAMB(0.05, weight_decay=0.01, gradient_accumulation_steps=2), weights, micro)
    expected = ref.run(ref.per_variable(ref.lamb_step), weights, gradients, 0.05, weight_decay=0.01)
    assert_histories_close(accumulated[1::2], expected)


@pytest.mark.parametrize("position", [0, 2])
def test_a_skipped_nonfinite_update_leaves_no_trace(position):
    """Bias corrections count applied updates: a NaN micro-batch (its update is skipped) inserted
    anywhere gives the weights and slots of the run without it."""
    weights, gradients = ref.random_problem(steps=4)
    micro = [[m * g for g in gs] for gs in gradients for m in (1.5, 0.5)]
    poisoned = [[np.full_like(g, np.nan) for g in gradients[0]], gradients[1]]
    inserted = micro[:2 * position] + poisoned + micro[2 * position:]
    runs = []
    for feed in (micro, inserted):
        optimizer = LAMB(0.05, weight_decay=0.01, gradient_accumulation_steps=2)
        history, _ = ref.run_keras(optimizer, weights, feed)
        slots = [v.numpy() for v in optimizer._momentums + optimizer._velocity_roots]
        runs.append((history[-1], slots, optimizer))
    (clean, clean_slots, clean_optimizer), (skipped, skipped_slots, skipping_optimizer) = runs
    assert skipping_optimizer.skipped_updates == 1 and clean_optimizer.skipped_updates == 0
    for a, b in zip(skipped + skipped_slots, clean + clean_slots):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    expected = ref.run(ref.per_variable(ref.lamb_step), weights, gradients, 0.05, weight_decay=0.01)
    assert_histories_close([skipped], expected[-1:])


def test_config_round_trip():
    optimizer = LAMB(
        0.002, beta_1=0.8, beta_2=0.99, epsilon=1e-7, weight_decay=0.01, trust_ratio_bounds=(0.1, 5.0),
        exclude_from_weight_decay=["bias", "LayerNorm"], exclude_from_layer_adaptation=["LayerNorm"],
        clip_global_norm_before_moments=1.0,
    )
    config = optimizer.get_config()
    assert config["exclude_from_weight_decay"] == ["bias", "LayerNorm"]
    assert config["exclude_from_layer_adaptation"] == ["LayerNorm"]
    assert config["clip_global_norm_before_moments"] == 1.0
    assert LAMB.from_config(config).get_config() == config


@pytest.mark.parametrize(
    "kwargs, argument, value",
    [
        (dict(learning_rate=-1.0), "learning_rate", "-1.0"),
        (dict(beta_1=1.0), "beta_1", "1.0"),
        (dict(beta_2=-0.1), "beta_2", "-0.1"),
        (dict(epsilon=-1e-6), "epsilon", "-1e-06"),
        (dict(trust_ratio_bounds=(3.0, 2.0)), "trust_ratio_bounds", "(3.0, 2.0)"),
        (dict(trust_ratio_bounds=(0.0, 2.0)), "trust_ratio_bounds", "0.0"),
        (dict(clip_global_norm_before_moments=0.0), "clip_global_norm_before_moments", "0.0"),
        (dict(weight_decay=-0.01), "weight_decay", "-0.01"),
    ],
)
def test_bad_hyperparameters_raise_naming_argument_and_value(kwargs, argument, value):
    with pytest.raises(ValueError) as error:
        LAMB(**kwargs)
    assert argument in str(error.value) and value in str(error.value)


def test_bfloat16_variables_follow_the_float32_trajectory():
    """In bfloat16, beta_2 = 0.999 rounds to 1: the moments must live in float32."""
    weights, gradients = ref.random_problem(steps=5)
    history, _ = ref.run_keras(LAMB(0.05, weight_decay=0.01), weights, gradients, dtype="bfloat16")
    expected = ref.run(ref.per_variable(ref.lamb_step), weights, gradients, 0.05, weight_decay=0.01)
    assert_histories_close(history, expected, rtol=3e-2, atol=1e-3)


def test_the_compiled_chain_under_mirrored_strategy_equals_one_device(chain_compiled_alone, mirrored,
                                                                      monkeypatch):
    """Two replicas run the XLA-compiled chain in Keras's per-device update (graph mode); the
    weights equal one device's inline chain on the same global-mean gradients."""
    import tensorflow as tf

    calls = []
    compiled = layerwise.compiled_adam_trust_chain
    monkeypatch.setattr(layerwise, "compiled_adam_trust_chain", lambda *a, **k: calls.append(1) or compiled(*a, **k))

    weights, gradients = ref.random_problem(steps=3)
    strategy = mirrored(2)
    with strategy.scope():
        variables = ref.make_variables(weights)
        optimizer = LAMB(0.05, weight_decay=0.01)
        optimizer.build(variables)

    @tf.function
    def step(per_replica):
        strategy.run(lambda grads: optimizer.apply(grads, variables), args=(per_replica,))

    for gs in gradients:
        # Each replica hands half the global mean gradient (Keras's 1/R loss scaling).
        halves = [tf.constant(np.asarray(g, np.float32) / 2) for g in gs]
        step(strategy.experimental_distribute_values_from_function(lambda context: halves))
    replicated = [np.asarray(v.numpy(), np.float64) for v in variables]
    layerwise.COMPILE_MIN_ELEMENTS = 2**15  # the one-device run below takes the inline chain
    history, _ = ref.run_keras(LAMB(0.05, weight_decay=0.01), weights, gradients, compiled=True)
    assert_histories_close([replicated], history[-1:])
    assert len(calls) >= len(weights)  # traced: the replicas' update took the compiled chain
