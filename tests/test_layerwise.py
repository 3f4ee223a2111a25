"""Layer-wise (+ bound-ratio) SGD/AdaGrad/RMSprop/Adam (Limit of the Batch Size, Table 3)."""

import keras
import numpy as np
import pytest

import reference_optimizers as ref
from reference_optimizers import RTOL, ATOL, assert_histories_close  # noqa: F401
from tf_largebatch.optimizers import (
    LAMB,
    LARS,
    LayerwiseAdagrad,
    LayerwiseAdam,
    LayerwiseRMSprop,
    LayerwiseSGD,
)
from tf_largebatch.optimizers.layerwise import LayerwiseOptimizer


# (optimizer class, reference base rule, base-rule hyperparameters)
BASES = [
    (LayerwiseSGD, "sgd", dict()),
    (LayerwiseSGD, "sgd", dict(momentum=0.9, nesterov=True)),
    (LayerwiseAdagrad, "adagrad", dict(initial_accumulator_value=0.2)),
    (LayerwiseRMSprop, "rmsprop", dict(rho=0.8)),
    (LayerwiseRMSprop, "rmsprop", dict(momentum=0.5, centered=True)),
    (LayerwiseAdam, "adam", dict(beta_1=0.8, beta_2=0.95)),
]
VARIANTS = [
    dict(),  # "+ layer-wise"
    dict(trust_ratio_bounds=(0.5, 2.0)),  # "+ layer-wise and bound-ratio"
    dict(trust_ratio_bounds=(0.05, 0.5), weight_decay=0.01, trust_coefficient=0.5),
]


def _id(value):
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, dict):
        return "-".join(f"{k}={v}" for k, v in value.items()) or "plain"
    return str(value)


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
@pytest.mark.parametrize("cls, base, base_kwargs", BASES, ids=_id)
def test_layerwise_matches_reference(cls, base, base_kwargs, variant):
    weights, gradients = ref.random_problem(steps=5)
    lr = 0.05
    history, _ = ref.run_keras(cls(learning_rate=lr, **base_kwargs, **variant), weights, gradients)
    kwargs = dict(variant)
    if "trust_ratio_bounds" in kwargs:
        kwargs["bounds"] = kwargs.pop("trust_ratio_bounds")
    expected = ref.run(ref.per_variable(ref.layerwise_step), weights, gradients, lr, base=base, **base_kwargs,
                       **kwargs)
    assert_histories_close(history, expected)
    assert all(np.all(np.isfinite(w)) for w in history[-1])


def test_bound_ratio_is_active_on_the_test_problem():
    """The bounds (0.5, 2.0) clip ||w|| of several variables, so the variants differ."""
    weights, gradients = ref.random_problem(steps=3)
    plain, _ = ref.run_keras(LayerwiseAdam(0.05), weights, gradients)
    bounded, _ = ref.run_keras(LayerwiseAdam(0.05, trust_ratio_bounds=(0.5, 2.0)), weights, gradients)
    for index in (0, 1, 3):  # ||w|| = 3, ~0.03, ~0.85 -> clipped to 2, 0.5; 0.85 unclipped
        changed = not np.allclose(plain[-1][index], bounded[-1][index], rtol=1e-4)
        assert changed == (index != 3), index


# Without layer adaptation (every variable excluded) the directions are the plain
# Keras optimizers' own updates: an independent check of each base rule.
KERAS_TWINS = [
    (LayerwiseSGD, dict(), keras.optimizers.SGD),
    (LayerwiseAdagrad, dict(), keras.optimizers.Adagrad),
    (LayerwiseRMSprop, dict(centered=True), keras.optimizers.RMSprop),
    (LayerwiseAdam, dict(epsilon=0.0), keras.optimizers.Adam),
]


@pytest.mark.parametrize("ours, kwargs, twin", KERAS_TWINS, ids=_id)
def test_without_layer_adaptation_equals_the_keras_base_optimizer(ours, kwargs, twin):
    weights, gradients = ref.random_problem(steps=5, seed=1)
    # Drop the always-zero-gradient variable: Adam with epsilon=0 would divide 0 by 0.
    weights, gradients = weights[:5], [gs[:5] for gs in gradients]
    a, _ = ref.run_keras(ours(0.05, exclude_from_layer_adaptation=[".*"], **kwargs), weights, gradients)
    keras_twin = twin(0.05, **kwargs)
    b, _ = ref.run_keras(keras_twin, weights, gradients)
    assert_histories_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [LayerwiseAdam, LAMB], ids=_id)
def test_layerwise_adam_with_weight_decay_and_lamb_match_the_lamb_reference(cls):
    """Limit of the Batch Size, Sec. 3: Adam + layer-wise + bound-ratio is a special case of LAMB
    (each against the NumPy LAMB of You et al. 2020, Algorithm 2)."""
    weights, gradients = ref.random_problem(steps=4)
    kwargs = dict(weight_decay=0.01, epsilon=1e-6)
    history, _ = ref.run_keras(cls(0.05, trust_ratio_bounds=(0.1, 3.0), **kwargs), weights, gradients)
    expected = ref.run(ref.per_variable(ref.lamb_step), weights, gradients, 0.05, bounds=(0.1, 3.0), **kwargs)
    assert_histories_close(history, expected)


# ------------------------------------------------------- extreme gradient scales
SCALE_FREE = [
    (LARS, dict()),
    (LayerwiseSGD, dict(momentum=0.9)),
    (LayerwiseAdagrad, dict(initial_accumulator_value=0.0, epsilon=0.0)),
    (LayerwiseRMSprop, dict(epsilon=0.0, centered=True, momentum=0.5)),
    (LayerwiseAdam, dict(epsilon=0.0)),
    (LAMB, dict(epsilon=0.0, trust_ratio_bounds=(0.1, 3.0))),
]


@pytest.mark.parametrize("cls, kwargs", SCALE_FREE, ids=_id)
@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_scale_free_configurations_take_the_same_steps_from_1e_minus30_to_1e30(cls, kwargs, scale):
    """Without epsilon every trust-ratio step is invariant to the gradients' scale; float32 squares
    and norms of 1e30 overflow and of 1e-30 underflow, so norms and second moments are kept scaled."""
    weights, gradients = ref.random_problem(steps=4)
    # Not the zero-initialised bias: ratio 1 there, so LARS's step is lr * g (scale-dependent by design).
    weights, gradients = weights[:4], [gs[:4] for gs in gradients]
    reference, _ = ref.run_keras(cls(0.05, **kwargs), weights, gradients)
    scaled, _ = ref.run_keras(cls(0.05, **kwargs), weights, [[scale * g for g in gs] for gs in gradients])
    assert_histories_close(scaled, reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls", [LARS, LAMB, LayerwiseSGD, LayerwiseAdagrad, LayerwiseRMSprop, LayerwiseAdam],
                         ids=_id)
@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_default_configurations_take_a_finite_step_at_extreme_scales(cls, scale):
    weights, gradients = ref.random_problem(steps=2)
    weights, gradients = weights[:4], [gs[:4] for gs in gradients]
    optimizer = cls(0.05, weight_decay=1e-4)
    history, _ = ref.run_keras(optimizer, weights, [[scale * g for g in gs] for gs in gradients])
    assert optimizer.skipped_updates == 0
    for before, after in zip(weights, history[-1]):
        assert np.all(np.isfinite(after))
        assert np.any(after != before)


@pytest.mark.parametrize("cls", [LayerwiseAdam, LAMB], ids=_id)
def test_epsilon_zero_with_an_exactly_zero_gradient_element_stays_finite(cls):
    """m = v = 0 for an element that never had a gradient: its Adam direction is 0, not 0/0."""
    weights, gradients = ref.random_problem(steps=4)
    weights, gradients = weights[:4], [[g.copy() for g in gs[:4]] for gs in gradients]
    for gs in gradients:
        gs[2][1, 2] = 0.0
    history, _ = ref.run_keras(cls(0.05, epsilon=0.0, weight_decay=0.01), weights, gradients)
    expected = ref.run(ref.per_variable(ref.lamb_step), weights, gradients, 0.05, epsilon=0.0, weight_decay=0.01)
    assert_histories_close(history, expected)
    assert all(np.all(np.isfinite(w)) for step in history for w in step)


def test_all_layerwise_optimizers_share_one_trust_ratio_step():
    for cls in (LayerwiseSGD, LayerwiseAdagrad, LayerwiseRMSprop, LayerwiseAdam, LAMB):
        assert issubclass(cls, LayerwiseOptimizer)
        assert "update_step" not in vars(cls)


def test_trains_a_model_with_fit():
    """A real Keras model trains with ``model.fit``."""
    x = np.random.normal(size=(64, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=LayerwiseSGD(0.2, momentum=0.5, trust_ratio_bounds=(0.1, 10.0)), loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=15, verbose=0)
    assert history.history["loss"][-1] < 0.1 * history.history["loss"][0]


@pytest.mark.parametrize(
    "cls, kwargs, argument, value",
    [
        (LayerwiseSGD, dict(learning_rate=-1.0), "learning_rate", "-1.0"),
        (LayerwiseSGD, dict(momentum=1.5), "momentum", "1.5"),
        (LayerwiseAdagrad, dict(initial_accumulator_value=-0.1), "initial_accumulator_value", "-0.1"),
        (LayerwiseRMSprop, dict(rho=1.0), "rho", "1.0"),
        (LayerwiseAdam, dict(beta_2=1.0), "beta_2", "1.0"),
        (LayerwiseAdam, dict(trust_ratio_bounds=(2.0, 1.0)), "trust_ratio_bounds", "(2.0, 1.0)"),
        (LayerwiseAdam, dict(trust_ratio_bounds=(-1.0, 1.0)), "trust_ratio_bounds", "-1.0"),
        (LayerwiseRMSprop, dict(trust_coefficient=-1.0), "trust_coefficient", "-1.0"),
    ],
)
def test_bad_hyperparameters_raise_naming_argument_and_value(cls, kwargs, argument, value):
    with pytest.raises(ValueError) as error:
        cls(**kwargs)
    assert argument in str(error.value) and value in str(error.value)


@pytest.mark.parametrize("cls", [LayerwiseSGD, LayerwiseAdagrad, LayerwiseRMSprop, LayerwiseAdam])
def test_config_round_trip(cls):
    optimizer = cls(0.01, trust_ratio_bounds=(0.2, 4.0), weight_decay=1e-3,
                    exclude_from_weight_decay=["bias"], exclude_from_layer_adaptation=["layer_normalization"])
    config = optimizer.get_config()
    assert config["trust_ratio_bounds"] == [0.2, 4.0]
    assert config["exclude_from_layer_adaptation"] == ["layer_normalization"]
    assert cls.from_config(config).get_config() == config


@pytest.mark.parametrize("cls, base, base_kwargs", [BASES[1], BASES[2], BASES[4], BASES[5]], ids=_id)
def test_bfloat16_variables_follow_the_float32_trajectory(cls, base, base_kwargs):
    """State and update math are float32 for bfloat16 variables (only the weights round)."""
    weights, gradients = ref.random_problem(steps=5)
    history, _ = ref.run_keras(cls(0.05, **base_kwargs), weights, gradients, dtype="bfloat16")
    expected = ref.run(ref.per_variable(ref.layerwise_step), weights, gradients, 0.05, base=base, **base_kwargs)
    assert_histories_close(history, expected, rtol=3e-2, atol=1e-3)
