"""LARS against the NumPy reference (both versions, Nesterov, bounds, exclusions)."""

import numpy as np
import pytest

import reference_optimizers as ref
from reference_optimizers import RTOL, ATOL, assert_histories_close  # noqa: F401
from tf_largebatch.optimizers import LARS, SNGM


LARS_CASES = [
    dict(trust_ratio_on="gradient"),
    dict(trust_ratio_on="gradient", nesterov=True, weight_decay=1e-2),
    dict(trust_ratio_on="gradient", trust_ratio_bounds=(0.5, 2.0), weight_decay=1e-3, epsilon=1e-4),
    dict(trust_ratio_on="gradient", trust_coefficient=1.0, momentum=0.0),
    dict(trust_ratio_on="momentum", trust_coefficient=1.0),
    dict(trust_ratio_on="momentum", nesterov=True, weight_decay=1e-2, trust_coefficient=0.02),
    dict(trust_ratio_on="momentum", trust_ratio_bounds=(0.05, 0.5), trust_coefficient=1.0),
    dict(trust_ratio_denominator="sum_of_norms", weight_decay=5e-2, trust_coefficient=0.02),
    dict(trust_ratio_denominator="sum_of_norms", weight_decay=1e-2, nesterov=True, epsilon=1e-4,
         trust_ratio_bounds=(0.05, 2.0)),
]


def _reference_kwargs(case):
    kwargs = dict(case)
    if "trust_ratio_bounds" in kwargs:
        kwargs["bounds"] = kwargs.pop("trust_ratio_bounds")
    if "trust_ratio_denominator" in kwargs:
        kwargs["denominator"] = kwargs.pop("trust_ratio_denominator")
    return kwargs


@pytest.mark.parametrize("case", LARS_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_lars_matches_reference(case):
    weights, gradients = ref.random_problem(steps=6)
    lr = 0.5
    history, _ = ref.run_keras(LARS(learning_rate=lr, **case), weights, gradients)
    expected = ref.run(ref.per_variable(ref.lars_step), weights, gradients, lr, **_reference_kwargs(case))
    assert_histories_close(history, expected)
    assert all(np.all(np.isfinite(w)) for w in history[-1])


def test_problem_has_trust_ratios_far_from_one_and_zero_norms():
    """The reference problem really exercises large, small and degenerate ratios."""
    weights, gradients = ref.random_problem(steps=6)
    ratios = []
    for w, g in zip(weights, gradients[0]):
        state, _ = ref.lars_step(None, w, g, 0.5, trust_coefficient=1.0)
        ratios.append(state["last_ratio"])
    assert max(ratios) > 100 and min(ratios) < 1e-2
    assert ratios[4] == 1.0 and ratios[5] == 1.0  # zero weight norm, zero gradient norm


def test_denominators_differ_with_weight_decay_and_agree_without():
    """||g|| + wd ||w|| (2017 Algorithm 1, MLPerf) is larger than ||g + wd w|| unless g and w are parallel."""
    weights, gradients = ref.random_problem(steps=4)
    runs = {}
    for weight_decay in (0.0, 0.05):
        for denominator in ("norm_of_sum", "sum_of_norms"):
            optimizer = LARS(0.5, weight_decay=weight_decay, trust_coefficient=0.02,
                             trust_ratio_denominator=denominator)
            runs[weight_decay, denominator], _ = ref.run_keras(optimizer, weights, gradients)
    assert_histories_close(runs[0.0, "norm_of_sum"], runs[0.0, "sum_of_norms"])
    assert not np.allclose(runs[0.05, "norm_of_sum"][-1][2], runs[0.05, "sum_of_norms"][-1][2], rtol=1e-4)


def test_sum_of_norms_zero_gradient_gives_ratio_one_as_mlperf():
    """With ||g|| = 0 and wd > 0 the ratio is 1 (MLPerf), not 1/wd: the step is lr * wd * w."""
    weights = [np.array([3.0, 4.0])]
    history, _ = ref.run_keras(LARS(0.5, momentum=0.0, weight_decay=0.1, trust_ratio_denominator="sum_of_norms"),
                               weights, [[np.zeros(2)]])
    np.testing.assert_allclose(history[0][0], weights[0] - 0.5 * 0.1 * weights[0], rtol=1e-6)


def test_versions_agree_without_momentum_and_weight_decay():
    """SNGM paper, footnote 1: with beta = 0 and no weight decay the two versions coincide."""
    weights, gradients = ref.random_problem(steps=5)
    a, _ = ref.run_keras(LARS(0.3, momentum=0.0, trust_ratio_on="gradient"), weights, gradients)
    b, _ = ref.run_keras(LARS(0.3, momentum=0.0, trust_ratio_on="momentum"), weights, gradients)
    assert_histories_close(a, b)


def test_versions_differ_with_momentum():
    weights, gradients = ref.random_problem(steps=5)
    a, _ = ref.run_keras(LARS(0.3, trust_ratio_on="gradient"), weights, gradients)
    b, _ = ref.run_keras(LARS(0.3, trust_ratio_on="momentum"), weights, gradients)
    assert not np.allclose(a[-1][2], b[-1][2], rtol=1e-3)


def test_compiled_step_matches_reference():
    weights, gradients = ref.random_problem(steps=5)
    case = dict(trust_ratio_on="momentum", nesterov=True, weight_decay=1e-2, trust_ratio_bounds=(0.05, 2.0))
    history, _ = ref.run_keras(LARS(0.5, **case), weights, gradients, compiled=True)
    expected = ref.run(ref.per_variable(ref.lars_step), weights, gradients, 0.5, **_reference_kwargs(case))
    assert_histories_close(history, expected)


# ----------------------------------------------------------------- exclusions
PATHS = [
    "dense/kernel",
    "dense/bias",
    "encoder/layer_normalization/gamma",
    "conv/kernel",
    "conv/bias",
    "encoder/layer_normalization/beta",
]


@pytest.mark.parametrize("version", ["gradient", "momentum"])
def test_exclusions_match_variable_path(version):
    weights, gradients = ref.random_problem(steps=5)
    optimizer = LARS(
        0.5,
        weight_decay=1e-2,
        trust_coefficient=0.01,
        trust_ratio_on=version,
        exclude_from_weight_decay=["bias", "layer_normalization"],
        exclude_from_layer_adaptation=["layer_normalization"],
    )
    history, _ = ref.run_keras(optimizer, weights, gradients, paths=PATHS)
    decay_mask = [True, False, False, True, False, False]
    adapt_mask = [True, True, False, True, True, False]
    step = ref.per_variable(ref.lars_step, adapt_mask=adapt_mask, decay_mask=decay_mask)
    expected = ref.run(step, weights, gradients, 0.5, weight_decay=1e-2, trust_coefficient=0.01,
                       trust_ratio_on=version)
    assert_histories_close(history, expected)
    # And the exclusion matters: without it, gamma (index 2) moves differently.
    unexcluded = ref.run(ref.per_variable(ref.lars_step, decay_mask=decay_mask), weights, gradients, 0.5,
                         weight_decay=1e-2, trust_coefficient=0.01, trust_ratio_on=version)
    assert not np.allclose(history[-1][2], unexcluded[-1][2], rtol=1e-3)


def test_layer_adaptation_exclusions_default_to_weight_decay_list():
    optimizer = LARS(1.0, weight_decay=1e-4, exclude_from_weight_decay=["bias", "batch_normalization"])
    assert optimizer.get_config()["exclude_from_layer_adaptation"] == ["bias", "batch_normalization"]
    weights, gradients = ref.random_problem(steps=4)
    history, _ = ref.run_keras(optimizer, weights, gradients, paths=PATHS)
    mask = [True, False, True, True, False, True]
    step = ref.per_variable(ref.lars_step, adapt_mask=mask, decay_mask=mask)
    assert_histories_close(history, ref.run(step, weights, gradients, 1.0, weight_decay=1e-4))


def test_config_round_trip_keeps_patterns_and_arguments():
    optimizer = LARS(
        2.0, momentum=0.8, weight_decay=1e-4, trust_coefficient=0.002, epsilon=1e-9, nesterov=True,
        trust_ratio_on="momentum", trust_ratio_bounds=(0.1, 10.0),
        exclude_from_weight_decay=["bias"], exclude_from_layer_adaptation=["LayerNorm", "layer_norm"],
        trust_ratio_denominator="norm_of_sum",
    )
    config = optimizer.get_config()
    assert config["trust_ratio_denominator"] == "norm_of_sum"
    assert LARS.from_config(dict(config, trust_ratio_denominator="sum_of_norms", trust_ratio_on="gradient")
                            ).get_config()["trust_ratio_denominator"] == "sum_of_norms"
    assert config["exclude_from_weight_decay"] == ["bias"]
    assert config["exclude_from_layer_adaptation"] == ["LayerNorm", "layer_norm"]
    assert config["trust_ratio_bounds"] == [0.1, 10.0]
    restored = LARS.from_config(config)
    assert restored.get_config() == config


# ----------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, argument, value",
    [
        (dict(learning_rate=-0.1), "learning_rate", "-0.1"),
        (dict(momentum=1.0), "momentum", "1.0"),
        (dict(momentum=-0.5), "momentum", "-0.5"),
        (dict(trust_ratio_bounds=(2.0, 1.0)), "trust_ratio_bounds", "(2.0, 1.0)"),
        (dict(trust_ratio_bounds=(0.0, 1.0)), "trust_ratio_bounds", "0.0"),
        (dict(trust_ratio_bounds=(-1.0, 1.0)), "trust_ratio_bounds", "-1.0"),
        (dict(trust_ratio_on="weights"), "trust_ratio_on", "'weights'"),
        (dict(trust_coefficient=0.0), "trust_coefficient", "0.0"),
        (dict(epsilon=-1e-3), "epsilon", "-0.001"),
        (dict(weight_decay=-1e-4), "weight_decay", "-0.0001"),
        (dict(exclude_from_layer_adaptation="bias"), "exclude_from_layer_adaptation", "bias"),
        (dict(trust_ratio_denominator="l2"), "trust_ratio_denominator", "'l2'"),
        (dict(trust_ratio_denominator="sum_of_norms", trust_ratio_on="momentum"), "trust_ratio_on", "'momentum'"),
    ],
)
def test_bad_hyperparameters_raise_naming_argument_and_value(kwargs, argument, value):
    with pytest.raises(ValueError) as error:
        LARS(**kwargs)
    assert argument in str(error.value) and value in str(error.value)


# ------------------------------------------------- SNGM paper, eq. (10)
def _quadratic_gradient(t, ws):
    """F(x) = 0.5 (x + 1)^2, minimum at x* = -1."""
    return [ws[0] + 1.0]


def test_lars_with_identity_phi_goes_to_zero_not_to_the_minimum():
    """SNGM paper eq. (10): with phi(z) = z, x <- (1 - eta) x from x0 > 0, so x -> 0, not -1."""
    x0 = [np.array([2.0])]
    lars = LARS(0.1, momentum=0.0, trust_coefficient=1.0)
    history, _ = ref.run_keras(lars, x0, _quadratic_gradient, num_steps=150, compiled=True)
    xs = np.array([h[0][0] for h in history])
    assert np.all(xs > 0)
    np.testing.assert_allclose(xs, 2.0 * 0.9 ** np.arange(1, 151), rtol=1e-4)
    assert xs[-1] < 1e-6

    sngm, _ = ref.run_keras(SNGM(0.1, momentum=0.0), x0, _quadratic_gradient, num_steps=150, compiled=True)
    assert abs(sngm[-1][0][0] + 1.0) <= 0.1 + 1e-6  # within one step of the minimum


def test_lars_with_bounded_phi_crosses_zero_towards_the_minimum():
    """SNGM paper Sec. 4.2: with 0 < low <= phi <= high, LARS is a block-wise SNGM and reaches -1."""
    x0 = [np.array([2.0])]
    lars = LARS(0.1, momentum=0.0, trust_coefficient=1.0, trust_ratio_bounds=(0.5, 10.0))
    history, _ = ref.run_keras(lars, x0, _quadratic_gradient, num_steps=150, compiled=True)
    assert abs(history[-1][0][0] + 1.0) <= 0.1 + 1e-6


@pytest.mark.parametrize("version", ["gradient", "momentum"])
def test_bfloat16_variables_follow_the_float32_trajectory(version):
    weights, gradients = ref.random_problem(steps=5)
    case = dict(trust_ratio_on=version, trust_coefficient=0.1, weight_decay=1e-2)
    history, _ = ref.run_keras(LARS(0.5, **case), weights, gradients, dtype="bfloat16")
    expected = ref.run(ref.per_variable(ref.lars_step), weights, gradients, 0.5, **case)
    assert_histories_close(history, expected, rtol=3e-2, atol=1e-3)


# Per variable of the test problem: gradients whose squares underflow (1e-30), overflow (1e30,
# so the finiteness check's sum of squares is infinite and the exact check decides), or neither.
GRADIENT_SCALES = [1e-30, 1e30, 1.0, 1e-25, 1e25, 1.0]


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("case", [dict(), dict(weight_decay=1e-2, nesterov=True),
                                  dict(trust_ratio_denominator="sum_of_norms", weight_decay=5e-2,
                                       trust_coefficient=0.02)],
                         ids=["norm_of_sum", "norm_of_sum-weight_decay", "sum_of_norms"])
def test_gradients_from_1e_minus_30_to_1e30_match_the_reference(case, jit_compile):
    """The gradient's norm starts from the skip policy's sum of squares; where that sum under- or
    overflows, the scaled norm and the exact finiteness check take over: same steps as float64,
    and no update is skipped."""
    import tensorflow as tf

    weights, gradients = ref.random_problem(steps=4)
    gradients = [[scale * g for scale, g in zip(GRADIENT_SCALES, gs)] for gs in gradients]
    variables = ref.make_variables(weights)
    optimizer = LARS(0.5, **case)
    optimizer.build(variables)
    apply = tf.function(lambda grads: optimizer.apply(grads, variables), jit_compile=jit_compile)
    history = []
    for gs in gradients:
        apply([tf.constant(np.asarray(g, np.float32)) for g in gs])
        history.append([np.asarray(v.numpy(), np.float64) for v in variables])
    expected = ref.run(ref.per_variable(ref.lars_step), weights, gradients, 0.5, **_reference_kwargs(case))
    assert_histories_close(history, expected)
    assert optimizer.skipped_updates == 0
