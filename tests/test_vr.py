"""The VR family against a NumPy implementation of the VRGD paper, and its replica paths.

The reference below is written from Algorithms 1, 3 and 5 of Jiang et al.,
"Accelerating Large Batch Training via Gradient Signal to Noise Ratio (GSNR)"; the inner update rules come from
``tests/reference_optimizers.py``. Nothing here imports the package's GSNR code.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras
import reference_optimizers as ref
import tf_largebatch.optimizers as tlb_opt

# ----------------------------------------------------------- NumPy reference


def np_gsnr_factor(samples, gamma, upper=1.0):
    """Algorithm 1 lines 'Compute gradient variance' .. 'Confine max/min' for one variable.

    Only the non-degenerate case (every element has variance > 0) is written
    from the paper; degenerate cases have their own tests.
    """
    samples = np.asarray(samples, np.float64)
    mean = samples.mean(axis=0)
    variance = (samples**2).mean(axis=0) - mean**2
    assert np.all(variance > 0), "reference covers the non-degenerate case"
    r = mean**2 / variance
    r = r / r.mean()
    return np.clip(r, gamma, upper), mean


class NumpyVR:
    """VR-X for a list of variables: GSNR factor -> GSNR momentum -> inner rule."""

    def __init__(self, inner_step, gamma=0.1, beta3=0.0, upper=1.0, **inner_hp):
        self.inner_step = inner_step
        self.gamma, self.beta3, self.upper = gamma, beta3, upper
        self.inner_hp = inner_hp
        self.t = 0
        self.p = None
        self.state = None

    def adapted_gradients(self, samples_per_variable):
        self.t += 1
        out = []
        if self.p is None:
            self.p = [0.0] * len(samples_per_variable)
        for i, samples in enumerate(samples_per_variable):
            r, mean = np_gsnr_factor(samples, self.gamma, self.upper)
            self.p[i] = self.beta3 * self.p[i] + (1 - self.beta3) * r
            p_hat = self.p[i] / (1 - self.beta3**self.t)
            out.append(p_hat * mean)
        return out

    def step(self, weights, samples_per_variable, lr):
        adapted = self.adapted_gradients(samples_per_variable)
        if self.state is None:
            self.state = [None] * len(weights)
        new = []
        for i, (w, g) in enumerate(zip(weights, adapted)):
            self.state[i], w = self.inner_step(self.state[i], w, g, lr, **self.inner_hp)
            new.append(w)
        return new


# VR variant -> (constructor kwargs, NumPy inner step, its hyperparameters, beta3)
VARIANTS = {
    "VRSGD": (dict(learning_rate=0.1), ref.sgd_momentum_step, dict(momentum=0.0), 0.0),
    "VRMomentum": (dict(learning_rate=0.05, momentum=0.9), ref.sgd_momentum_step, dict(momentum=0.9), 0.0),
    "VRAdam": (dict(learning_rate=0.01, epsilon=1e-7), ref.adam_step, dict(epsilon=1e-7), 0.9),
    "VRLAMB": (dict(learning_rate=0.01, weight_decay=0.01, epsilon=1e-6), ref.lamb_step,
               dict(weight_decay=0.01, epsilon=1e-6), 0.9),
    "VRLARS": (dict(learning_rate=0.5, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.01),
               ref.lars_step, dict(momentum=0.9, weight_decay=1e-3, trust_coefficient=0.01), 0.0),
}

SHAPES = [(1,), (7,), (4, 5), (3, 3, 2, 4)]
NUM_SAMPLES = 4
NUM_STEPS = 5


def make_samples(rng, shapes, num_steps, k, scale=1.0):
    """samples[t][v] has shape (k, *shape): k gradient samples of variable v at step t."""
    return [
        [scale * (rng.normal(size=(k,) + s) + rng.normal(size=s)) for s in shapes]
        for _ in range(num_steps)
    ]


def make_variables(rng, shapes):
    return [keras.Variable(rng.normal(size=s).astype("float32"), name=f"w{i}") for i, s in enumerate(shapes)]


def run_accumulated(optimizer, variables, samples):
    """Feeds each sample as one micro-batch on a single device (k = accumulation steps)."""
    for step_samples in samples:
        k = step_samples[0].shape[0]
        for i in range(k):
            optimizer.apply([tf.constant(s[i], tf.float32) for s in step_samples], variables)
    return [v.numpy() for v in variables]


def numpy_trajectory(name, weights, samples, gamma=0.1, upper=1.0):
    kwargs, inner_step, inner_hp, beta3 = VARIANTS[name]
    vr = NumpyVR(inner_step, gamma=gamma, beta3=beta3, upper=upper, **inner_hp)
    ws = [np.asarray(w, np.float64) for w in weights]
    for step_samples in samples:
        ws = vr.step(ws, step_samples, kwargs["learning_rate"])
    return ws


# ------------------------------------------------------------------- math


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("upper", [1.0, 3.0])
def test_variant_matches_numpy_reference(name, upper):
    rng = np.random.default_rng(7)
    variables = make_variables(rng, SHAPES)
    initial = [v.numpy() for v in variables]
    samples = make_samples(rng, SHAPES, NUM_STEPS, NUM_SAMPLES)
    kwargs = VARIANTS[name][0]
    optimizer = getattr(tlb_opt, name)(
        gradient_accumulation_steps=NUM_SAMPLES, gsnr_upper_bound=upper, **kwargs
    )
    got = run_accumulated(optimizer, variables, samples)
    expected = numpy_trajectory(name, initial, samples, upper=upper)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
    assert int(optimizer.iterations) == NUM_STEPS


def test_vr_wraps_any_keras_optimizer():
    """The generic wrapper around Keras's own AdamW (decoupled weight decay on g_hat)."""
    rng = np.random.default_rng(3)
    variables = make_variables(rng, SHAPES[:3])
    initial = [v.numpy() for v in variables]
    samples = make_samples(rng, SHAPES[:3], NUM_STEPS, 2)
    inner = keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.05)
    optimizer = tlb_opt.VR(inner, gamma=0.2, gsnr_momentum=0.5, gradient_accumulation_steps=2)
    got = run_accumulated(optimizer, variables, samples)

    vr = NumpyVR(None, gamma=0.2, beta3=0.5)
    ws = [np.asarray(w, np.float64) for w in initial]
    states = [None] * len(ws)
    for step_samples in samples:
        adapted = vr.adapted_gradients(step_samples)
        ws = [w * (1 - 0.01 * 0.05) for w in ws]  # AdamW: decoupled decay before the Adam step
        for i, g in enumerate(adapted):
            states[i], ws[i] = ref.adam_step(states[i], ws[i], g, 0.01)
    for g, e in zip(got, ws):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("inner_factory", [
    lambda: keras.optimizers.Adam(0.01),
    lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    lambda: keras.optimizers.Lion(0.001),
])
def test_gamma_one_gives_the_inner_optimizer_exactly(inner_factory):
    """The paper's sanity check: gamma = 1 clips every factor to 1, so VR-X == X."""
    rng = np.random.default_rng(11)
    shapes = SHAPES[1:3]
    samples = make_samples(rng, shapes, NUM_STEPS, 3)
    start = [rng.normal(size=s).astype("float32") for s in shapes]

    vr_vars = [keras.Variable(w) for w in start]
    run_accumulated(tlb_opt.VR(inner_factory(), gamma=1.0, gradient_accumulation_steps=3), vr_vars, samples)

    plain_vars = [keras.Variable(w) for w in start]
    plain = inner_factory()
    for step_samples in samples:
        plain.apply([tf.constant(s.mean(axis=0), tf.float32) for s in step_samples], plain_vars)
    for a, b in zip(vr_vars, plain_vars):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 1e3, 1e6])
def test_scale_free(scale):
    """Multiplying every gradient by c changes nothing but the scale of g_hat."""
    rng = np.random.default_rng(5)
    shapes = SHAPES[1:]
    base_samples = make_samples(rng, shapes, 1, NUM_SAMPLES)
    steps = {}
    for c in (1.0, scale):
        variables = [keras.Variable(np.zeros(s, np.float32)) for s in shapes]
        samples = [[c * s for s in step] for step in base_samples]
        run_accumulated(tlb_opt.VRSGD(learning_rate=1.0, gradient_accumulation_steps=NUM_SAMPLES), variables,
                        samples)
        steps[c] = [-v.numpy() / c for v in variables]  # g_hat / c
    for a, b in zip(steps[1.0], steps[scale]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7 * np.abs(a).max())


# ------------------------------------------------------------ degenerate


def test_identical_samples_give_the_upper_bound_factor():
    """sigma^2 = 0 everywhere (identical replicas): factor = upper bound, finite."""
    rng = np.random.default_rng(2)
    g = rng.normal(size=(4, 3)).astype("float32")
    for upper in (1.0, 2.0):
        variable = keras.Variable(np.zeros((4, 3), np.float32))
        optimizer = tlb_opt.VRSGD(learning_rate=1.0, gsnr_upper_bound=upper, gradient_accumulation_steps=2,
                                  record_gradient_statistics=True)
        run_accumulated(optimizer, [variable], [[np.stack([g, g])]])
        np.testing.assert_allclose(variable.numpy(), -upper * g, rtol=1e-6)
        stats = optimizer.gradient_statistics()[variable.path]
        assert stats["variance"] == 0.0 and stats["fraction_at_upper"] == 1.0


def test_partially_identical_samples_are_finite_and_normalised_without_them():
    """Elements with zero variance get the upper bound; the others are normalised among themselves."""
    rng = np.random.default_rng(4)
    samples = rng.normal(size=(4, 10)) + 0.5
    samples[:, :3] = samples[0, :3]  # three elements with identical samples
    variable = keras.Variable(np.zeros(10, np.float32))
    run_accumulated(tlb_opt.VRSGD(learning_rate=1.0, gamma=0.1, gradient_accumulation_steps=4), [variable],
                    [[samples]])
    factor, mean = np_gsnr_factor(samples[:, 3:], 0.1)
    expected = np.concatenate([samples[0, :3], factor * mean])
    np.testing.assert_allclose(-variable.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_zero_gradients_and_single_element_variables_are_finite():
    """A zero gradient gives a zero step; a single element has normalised GSNR 1 (the base step)."""
    rng = np.random.default_rng(8)
    zero = keras.Variable(np.ones((3, 2), np.float32))
    single = keras.Variable(np.zeros((1,), np.float32))
    optimizer = tlb_opt.VRAdam(learning_rate=0.1, gradient_accumulation_steps=2, record_gradient_statistics=True)
    single_samples = rng.normal(size=(2, 1))
    for _ in range(3):
        run_accumulated(optimizer, [zero, single], [[np.zeros((2, 3, 2)), single_samples]])
    np.testing.assert_array_equal(zero.numpy(), np.ones((3, 2), np.float32))
    state = [None]
    w = np.zeros(1)
    for _ in range(3):
        state[0], w = ref.adam_step(state[0], w, single_samples.mean(axis=0), 0.1)
    np.testing.assert_allclose(single.numpy(), w, rtol=1e-5)
    for stats in optimizer.gradient_statistics().values():
        assert all(np.isfinite(list(stats.values())))


def test_building_inside_the_first_step_under_mirrored_strategy_is_a_clear_error(mirrored):
    strategy = mirrored(2)
    with strategy.scope():
        variable = keras.Variable(np.ones(3, np.float32))
        optimizer = tlb_opt.VRAdam(0.1)

    @tf.function
    def step():
        strategy.run(lambda: optimizer.apply([tf.ones(3)], [variable]))

    with pytest.raises(ValueError, match=r"optimizer.build\(model.trainable_variables\)"):
        step()


def test_a_single_sample_is_a_clear_error():
    variable = keras.Variable(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"k >= 2.*gradient_accumulation_steps >= 2"):
        tlb_opt.VRSGD(learning_rate=0.1).apply([tf.ones(3)], [variable])


@pytest.mark.parametrize("bad", [
    dict(gamma=0.0), dict(gamma=1.5), dict(gsnr_momentum=1.0), dict(gsnr_momentum=-0.1),
    dict(gamma=0.5, gsnr_upper_bound=0.4),
])
def test_bad_hyperparameters_name_the_argument(bad):
    name = next(iter(bad)) if "gsnr_upper_bound" not in bad else "gsnr_upper_bound"
    with pytest.raises(ValueError, match=name):
        tlb_opt.VRSGD(learning_rate=0.1, **bad)


def test_inner_arguments_belong_to_the_inner_optimizer():
    with pytest.raises(ValueError, match="clipnorm"):
        tlb_opt.VR(keras.optimizers.SGD(0.1), clipnorm=1.0)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        tlb_opt.VR(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2))


# ------------------------------------------------------------ replicas


def feed_micro_steps(strategy, optimizer, variables, samples, schedule, accumulation):
    """One traced micro-step per ``(t, a)`` of ``schedule``: replica d feeds
    h = g_d / R (Keras's convention) of sample ``d * accumulation + a`` of step ``t``."""
    num_replicas = strategy.num_replicas_in_sync

    @tf.function
    def micro_step(per_replica):
        strategy.run(lambda grads: optimizer.apply(grads, variables), args=(per_replica,))

    for t, a in schedule:
        def value_fn(context, t=t, a=a):
            sample = context.replica_id_in_sync_group * accumulation + a
            return [tf.constant(s[sample] / num_replicas, tf.float32) for s in samples[t]]

        micro_step(strategy.experimental_distribute_values_from_function(value_fn))


def run_replicated(strategy, make_optimizer, start, samples, accumulation):
    """Every step of ``samples``, micro-batch by micro-batch (:func:`feed_micro_steps`)."""
    with strategy.scope():
        variables = [keras.Variable(w) for w in start]
        optimizer = make_optimizer()
        optimizer.build(variables)
    schedule = [(t, a) for t in range(len(samples)) for a in range(accumulation)]
    feed_micro_steps(strategy, optimizer, variables, samples, schedule, accumulation)
    return [v.numpy() for v in variables], optimizer


@pytest.mark.parametrize("name", ["VRAdam", "VRLARS"])
@pytest.mark.parametrize("replicas,accumulation", [(4, 1), (2, 2)])
def test_replicas_equal_single_device_on_the_same_samples(name, replicas, accumulation, mirrored):
    rng = np.random.default_rng(13)
    shapes = SHAPES
    start = [rng.normal(size=s).astype("float32") for s in shapes]
    samples = make_samples(rng, shapes, 3, 4)
    kwargs = VARIANTS[name][0]

    single = [keras.Variable(w) for w in start]
    run_accumulated(getattr(tlb_opt, name)(gradient_accumulation_steps=4, **kwargs), single, samples)

    extra = {"gradient_accumulation_steps": accumulation} if accumulation > 1 else {}
    got, optimizer = run_replicated(
        mirrored(replicas), lambda: getattr(tlb_opt, name)(**kwargs, **extra), start, samples, accumulation
    )
    assert optimizer.num_gradient_samples == 4
    for g, s in zip(got, single):
        np.testing.assert_allclose(g, s.numpy(), rtol=1e-4, atol=1e-5)
    expected = numpy_trajectory(name, start, samples)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def count_all_reduces(monkeypatch):
    """Counts ``ReplicaContext.all_reduce`` calls: a list that gets, per call, the number
    of tensors it carried."""
    calls = []
    original = tf.distribute.ReplicaContext.all_reduce

    def counting_all_reduce(self, reduce_op, value, options=None):
        calls.append(len(tf.nest.flatten(value)))
        return original(self, reduce_op, value, options)

    monkeypatch.setattr(tf.distribute.ReplicaContext, "all_reduce", counting_all_reduce)
    return calls


def test_one_all_reduce_per_step_carries_both_moments(mirrored, monkeypatch):
    """Exactly one all-reduce call per replica per update, carrying 2 x (number of variables) tensors."""
    calls = count_all_reduces(monkeypatch)
    rng = np.random.default_rng(0)
    start = [rng.normal(size=s).astype("float32") for s in SHAPES]
    run_replicated(mirrored(2), lambda: tlb_opt.VRLAMB(learning_rate=0.01), start,
                   make_samples(rng, SHAPES, 2, 2), 1)
    # One traced call per replica (the function is traced once and reused).
    assert calls == [2 * len(SHAPES)] * 2


def test_fit_replicas_accumulation_and_both_agree(mirrored):
    """model.fit: 4 replicas == 1 device x 4 micro-batches == 2 replicas x 2 micro-batches."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.normal(size=(64, 3)).astype("float32")

    def fit(replicas, accumulation):
        strategy = mirrored(replicas) if replicas > 1 else tf.distribute.get_strategy()
        with strategy.scope():
            keras.utils.set_random_seed(1)
            model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="tanh"),
                                      keras.layers.Dense(3)])
            extra = {"gradient_accumulation_steps": accumulation} if accumulation > 1 else {}
            model.compile(optimizer=tlb_opt.VRLAMB(learning_rate=0.01, **extra), loss="mse")
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16 // accumulation)
        model.fit(data, epochs=2, verbose=0, shuffle=False)
        return [w.numpy() for w in model.trainable_weights]

    reference = fit(4, 1)
    for replicas, accumulation in [(1, 4), (2, 2)]:
        for a, b in zip(reference, fit(replicas, accumulation)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("replicas", [1, 2])
def test_checkpoint_mid_accumulation_restores_the_same_trajectory(replicas, mirrored, tmp_path):
    """Saved after an odd number of micro-steps (partial sums pending), restored into fresh objects."""
    rng = np.random.default_rng(21)
    start = [rng.normal(size=s).astype("float32") for s in SHAPES[1:3]]
    samples = make_samples(rng, SHAPES[1:3], 4, 4)
    accumulation = 4 // replicas
    strategy = mirrored(replicas) if replicas > 1 else tf.distribute.get_strategy()

    def make():
        with strategy.scope():
            variables = [keras.Variable(w) for w in start]
            optimizer = tlb_opt.VRAdam(learning_rate=0.01, gradient_accumulation_steps=accumulation)
            optimizer.build(variables)
        return variables, optimizer

    def micro_steps(variables, optimizer, pairs):
        feed_micro_steps(strategy, optimizer, variables, samples, pairs, accumulation)

    schedule = [(t, a) for t in range(4) for a in range(accumulation)]
    cut = len(schedule) // 2 + 1 if accumulation > 1 else len(schedule) // 2

    straight_vars, straight_opt = make()
    micro_steps(straight_vars, straight_opt, schedule)

    first_vars, first_opt = make()
    micro_steps(first_vars, first_opt, schedule[:cut])
    path = tf.train.Checkpoint(variables=first_vars, optimizer=first_opt).save(str(tmp_path / "ckpt"))

    resumed_vars, resumed_opt = make()
    tf.train.Checkpoint(variables=resumed_vars, optimizer=resumed_opt).restore(path).assert_consumed()
    micro_steps(resumed_vars, resumed_opt, schedule[cut:])
    for a, b in zip(straight_vars, resumed_vars):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------ Keras surface


def test_serialization_round_trip_of_wrapper_and_variants():
    wrapper = tlb_opt.VR(keras.optimizers.Lion(0.002), gamma=0.2, gsnr_momentum=0.5, gsnr_upper_bound=2.0,
                         gradient_accumulation_steps=2)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(wrapper))
    assert isinstance(clone.inner_optimizer, keras.optimizers.Lion)
    assert clone.get_config() == wrapper.get_config()

    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, 10, 0.9)
    variant = tlb_opt.VRAdam(learning_rate=schedule, beta_1=0.8, gamma=0.3, weight_decay=0.01,
                             gradient_accumulation_steps=3)
    config = variant.get_config()
    assert config["beta_1"] == 0.8 and config["gradient_accumulation_steps"] == 3
    clone = tlb_opt.VRAdam.from_config(config)
    assert keras.optimizers.serialize(clone) == keras.optimizers.serialize(variant)
    assert clone.inner_optimizer.weight_decay == 0.01


@pytest.mark.parametrize("every_update", [True, False], ids=["every_update", "requested"])
def test_statistics_are_readable_and_match_the_samples(every_update):
    """With record_gradient_statistics=True every update records; by default only the
    update after request_gradient_statistics() does (here the second of three)."""
    rng = np.random.default_rng(9)
    variables = make_variables(rng, SHAPES[1:3])
    samples = make_samples(rng, SHAPES[1:3], 3, 4)
    optimizer = tlb_opt.VRSGD(learning_rate=0.1, gradient_accumulation_steps=4,
                              record_gradient_statistics=every_update)
    run_accumulated(optimizer, variables, samples[:1])
    assert optimizer.gradient_statistics_step == (1 if every_update else 0)
    optimizer.request_gradient_statistics()
    run_accumulated(optimizer, variables, samples[1:2])
    assert optimizer.gradient_statistics_step == 2
    run_accumulated(optimizer, variables, samples[2:])
    assert optimizer.gradient_statistics_step == (3 if every_update else 2)
    stats = optimizer.gradient_statistics()
    assert optimizer.num_gradient_samples == 4
    for variable, s in zip(variables, samples[2 if every_update else 1]):
        mean = s.mean(axis=0)
        variance = (s**2).mean(axis=0) - mean**2
        got = stats[variable.path]
        np.testing.assert_allclose(got["mean_square"], np.sum(mean**2), rtol=1e-5)
        np.testing.assert_allclose(got["variance"], np.sum(variance), rtol=1e-5)
        np.testing.assert_allclose(got["gsnr_mean"], np.mean(mean**2 / variance), rtol=1e-4)
        factor, _ = np_gsnr_factor(s, 0.1)
        np.testing.assert_allclose(got["fraction_at_lower"], np.mean(factor <= 0.1), atol=1e-6)


# ------------------------------------------------------------ explicit classes

VARIANT_CLASSES = ["VRSGD", "VRMomentum", "VRAdam", "VRLAMB", "VRLARS"]


@pytest.mark.parametrize("name", VARIANT_CLASSES)
def test_variants_are_explicit_classes_with_real_signatures(name):
    import inspect

    cls = getattr(tlb_opt, name)
    assert cls.__module__ == "tf_largebatch.optimizers.vr" and issubclass(cls, tlb_opt.VR)
    parameters = inspect.signature(cls.__init__).parameters
    for argument in ("learning_rate", "gamma", "gsnr_momentum", "gsnr_upper_bound", "name"):
        assert argument in parameters, argument
    # Every named argument of the base optimizer's own constructor is in the variant's signature.
    base_init = inspect.signature(cls.inner_optimizer_class().__init__).parameters
    own = {p for p, v in base_init.items() if v.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD} - {"self", "name"}
    base_keywords = {"weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema", "ema_momentum",
                     "ema_overwrite_frequency", "loss_scale_factor", "gradient_accumulation_steps"}
    assert own - base_keywords - set(parameters) == set()
    assert "Args:" in cls.__doc__ and "References:" in cls.__doc__ and "{{" not in cls.__doc__
    assert "k >= 8" in cls.__doc__


@pytest.mark.parametrize("name,inner,defaults", [
    ("VRSGD", keras.optimizers.SGD, dict(momentum=0.0, gsnr_momentum=0.0, name="vrsgd")),
    ("VRMomentum", keras.optimizers.SGD, dict(momentum=0.9, gsnr_momentum=0.0, name="vrmomentum")),
    ("VRAdam", keras.optimizers.Adam, dict(epsilon=1e-7, gsnr_momentum=0.9, name="vradam")),
    ("VRLAMB", tlb_opt.LAMB, dict(epsilon=1e-6, gsnr_momentum=0.9, name="vrlamb")),
    ("VRLARS", tlb_opt.LARS, dict(trust_coefficient=0.001, gsnr_momentum=0.0, name="vrlars")),
])
def test_variant_signatures_follow_their_inner_class(name, inner, defaults):
    """inspect.signature (what help() prints) lists the inner class's arguments in its order, then
    the VR ones, with the variant's defaults; the constructor builds exactly that inner class."""
    import inspect

    cls = getattr(tlb_opt, name)
    signature = inspect.signature(cls)
    assert inspect.signature(cls.__init__).parameters.keys() - {"self"} == signature.parameters.keys()
    assert cls.inner_optimizer_class() is inner
    names = list(signature.parameters)
    inner_names = [p for p in inspect.signature(inner.__init__).parameters if p in names and p not in ("name", "kwargs")]
    assert names[:len(inner_names)] == inner_names
    assert names[len(inner_names):] == ["gamma", "gsnr_momentum", "gsnr_upper_bound", "second_moment_dtype",
                                        "gsnr_refresh_every", "name", "kwargs"]
    for argument, value in defaults.items():
        assert signature.parameters[argument].default == value, argument
    optimizer = cls()
    assert type(optimizer.inner_optimizer) is inner and optimizer.name == defaults["name"]
    with pytest.raises(TypeError):
        cls(1.0, learning_rate=2.0)  # bound against the real signature


@pytest.mark.parametrize("name", VARIANT_CLASSES)
def test_variant_config_round_trip_keeps_every_argument(name):
    kwargs, _, _, _ = VARIANTS[name]
    optimizer = getattr(tlb_opt, name)(gamma=0.3, gsnr_upper_bound=2.0, gradient_accumulation_steps=3,
                                       nonfinite_gradients="raise", **kwargs)
    config = optimizer.get_config()
    clone = getattr(tlb_opt, name).from_config(config)
    assert type(clone) is type(optimizer)
    assert clone.get_config() == config
    assert keras.optimizers.serialize(keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))) == \
        keras.optimizers.serialize(optimizer)
    for key, value in kwargs.items():
        assert config[key] == pytest.approx(value, rel=1e-7), key  # Keras keeps the rate as float32
    assert config["gamma"] == 0.3 and config["gradient_accumulation_steps"] == 3
    assert config["nonfinite_gradients"] == "raise"


# ------------------------------------------------------------ skipped updates


def _run_with_optional_skips(make_optimizer, samples, skip_before):
    """One device, accumulation 2; before the updates in ``skip_before`` a window
    of two micro-batches, the first non-finite, is fed (and must be skipped)."""
    rng = np.random.default_rng(5)
    variables = make_variables(rng, SHAPES[1:3])
    optimizer = make_optimizer()
    optimizer.build(variables)
    for t, step_samples in enumerate(samples):
        if t in skip_before:
            bad = [np.full(s.shape[1:], np.nan) for s in step_samples]
            for micro in (bad, [s[0] for s in step_samples]):
                optimizer.apply([tf.constant(g, tf.float32) for g in micro], variables)
        for i in range(2):
            optimizer.apply([tf.constant(s[i], tf.float32) for s in step_samples], variables)
    floats = [v.numpy() for v in optimizer.variables if v.dtype not in ("int32", "int64")]
    return [v.numpy() for v in variables], floats, optimizer


@pytest.mark.parametrize("make_optimizer", [
    lambda: tlb_opt.VRAdam(learning_rate=0.01, gradient_accumulation_steps=2),
    lambda: tlb_opt.VRLAMB(learning_rate=0.01, weight_decay=0.01, gradient_accumulation_steps=2),
    lambda: tlb_opt.VR(keras.optimizers.Adam(0.01), gsnr_momentum=0.9, gradient_accumulation_steps=2),
], ids=["VRAdam", "VRLAMB", "VR(Adam)"])
def test_a_skipped_update_leaves_no_trace(make_optimizer):
    samples = make_samples(np.random.default_rng(6), SHAPES[1:3], 6, 2)
    clean_weights, clean_state, clean = _run_with_optional_skips(make_optimizer, samples, ())
    weights, state, skipped = _run_with_optional_skips(make_optimizer, samples, (0, 3))
    assert skipped.skipped_updates == 2 and clean.skipped_updates == 0
    assert int(skipped.inner_optimizer.iterations) == int(clean.inner_optimizer.iterations) == 6
    for a, b in zip(clean_weights + clean_state, weights + state):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize("make, argument", [
    (lambda: tlb_opt.VRSGD(nesterov="False"), "nesterov"),
    (lambda: tlb_opt.VRMomentum(nesterov="no"), "nesterov"),
    (lambda: tlb_opt.VRAdam(amsgrad="False"), "amsgrad"),
    (lambda: tlb_opt.VRAdam(epsilon=None), "epsilon"),
    (lambda: tlb_opt.VRAdam(epsilon=0.0), "epsilon"),
    (lambda: tlb_opt.VRLAMB(epsilon=0), "epsilon"),
    (lambda: tlb_opt.VRLAMB(epsilon=-1e-6), "epsilon"),
    (lambda: tlb_opt.VRAdam(beta_1=1.0), "beta_1"),
    (lambda: tlb_opt.VRMomentum(momentum=1.5), "momentum"),
    (lambda: tlb_opt.VR(keras.optimizers.SGD(0.1), learning_rate=0.5), "learning_rate"),
])
def test_bad_inner_arguments_are_errors_naming_the_argument(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


def test_wrapping_an_optimizer_built_on_other_variables_is_an_error():
    inner = keras.optimizers.Adam(0.01)
    inner.build([keras.Variable(np.zeros(3, np.float32))])
    with pytest.raises(ValueError, match="already built.*fresh"):
        tlb_opt.VR(inner, gradient_accumulation_steps=2)


@pytest.mark.parametrize("name", VARIANT_CLASSES)
def test_float64_variables_train(name):
    rng = np.random.default_rng(1)
    variables = [keras.Variable(rng.normal(size=s), dtype="float64") for s in SHAPES[1:3]]
    start = [v.numpy() for v in variables]
    samples = make_samples(rng, SHAPES[1:3], 3, 2)
    optimizer = getattr(tlb_opt, name)(gradient_accumulation_steps=2, **VARIANTS[name][0])
    for step_samples in samples:
        for i in range(2):
            optimizer.apply([tf.constant(s[i], tf.float64) for s in step_samples], variables)
    expected = numpy_trajectory(name, start, samples)
    for v, e in zip(variables, expected):
        assert v.dtype == "float64"
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", VARIANT_CLASSES)
def test_a_zero_size_variable_is_left_alone(name):
    rng = np.random.default_rng(1)  # (seed 2 draws a float32 near-tie at k = 2)
    empty = keras.Variable(np.zeros((0, 3), np.float32), name="empty")
    variables = [empty] + make_variables(rng, SHAPES[1:3])
    start = [v.numpy() for v in variables[1:]]
    samples = make_samples(rng, SHAPES[1:3], 3, 2)
    optimizer = getattr(tlb_opt, name)(gradient_accumulation_steps=2, record_gradient_statistics=True,
                                       **VARIANTS[name][0])
    for step_samples in samples:
        for i in range(2):
            optimizer.apply([tf.zeros((0, 3))] + [tf.constant(s[i], tf.float32) for s in step_samples], variables)
    assert empty.shape == (0, 3)
    for v, e in zip(variables[1:], numpy_trajectory(name, start, samples)):
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-4, atol=1e-5)
    assert all(np.isfinite(list(s.values())).all() for s in optimizer.gradient_statistics().values())


def test_without_monitoring_statistics_the_update_is_the_same():
    rng = np.random.default_rng(12)
    start = [rng.normal(size=s).astype("float32") for s in SHAPES[1:3]]
    samples = make_samples(rng, SHAPES[1:3], 3, 2)
    results = []
    for record, requested in ((True, False), (False, True), (False, False)):
        variables = [keras.Variable(w) for w in start]
        optimizer = tlb_opt.VRAdam(learning_rate=0.01, gradient_accumulation_steps=2,
                                   record_gradient_statistics=record)
        run_accumulated(optimizer, variables, samples[:1])
        if requested:
            optimizer.request_gradient_statistics()
        run_accumulated(optimizer, variables, samples[1:])
        results.append([v.numpy() for v in variables])
        assert optimizer.get_config()["record_gradient_statistics"] is record
        assert optimizer.gradient_statistics_step == (3 if record else 2 if requested else 0)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="record_gradient_statistics=False"):
        optimizer.gradient_statistics()


def test_statistics_are_recorded_on_request_only_and_off_by_default():
    """The default records nothing; a request is kept through a skipped (non-finite)
    update and fulfilled by the next applied one, whose statistics equal those of an
    optimizer recording every update."""
    assert tlb_opt.VRAdam().record_gradient_statistics is False
    assert tlb_opt.VR(keras.optimizers.SGD(0.1)).record_gradient_statistics is False
    rng = np.random.default_rng(13)
    start = [rng.normal(size=s).astype("float32") for s in SHAPES[1:3]]
    samples = make_samples(rng, SHAPES[1:3], 2, 2)
    nan_step = [np.full_like(s, np.nan) for s in samples[0]]
    recorded = {}
    for record in (True, False):
        variables = [keras.Variable(w) for w in start]
        optimizer = tlb_opt.VRAdam(learning_rate=0.01, gradient_accumulation_steps=2,
                                   record_gradient_statistics=record)
        with pytest.raises(ValueError, match="before requesting"):
            optimizer.request_gradient_statistics()
        run_accumulated(optimizer, variables, samples[:1])
        optimizer.request_gradient_statistics()
        run_accumulated(optimizer, variables, [nan_step])
        assert optimizer.skipped_updates == 1
        assert optimizer.gradient_statistics_step == (1 if record else 0)
        run_accumulated(optimizer, variables, samples[1:])
        assert optimizer.gradient_statistics_step == 3
        recorded[record] = [optimizer.gradient_statistics()[v.path] for v in variables]
    assert recorded[True] == recorded[False]
    mean = samples[1][0].mean(axis=0)
    np.testing.assert_allclose(recorded[False][0]["mean_square"], np.sum(mean**2), rtol=1e-5)


def test_optimizers_that_record_no_statistics_refuse_a_request():
    optimizer = tlb_opt.SNGM(0.1)
    optimizer.build([keras.Variable(np.zeros(3, np.float32))])
    with pytest.raises(ValueError, match="record_gradient_statistics=True"):
        optimizer.request_gradient_statistics()


def test_the_compiled_gsnr_step_outlives_an_optimizer_and_runs_under_keras_xla():
    """The compiled per-variable function is shared: it must hold no optimizer's variable."""
    import gc

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")

    def fit(jit_compile):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile(optimizer=tlb_opt.VRAdam(0.01, gradient_accumulation_steps=2), loss="mse",
                      jit_compile=jit_compile)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        return model

    first = fit(False)
    del first
    gc.collect()
    model = fit(True)
    assert all(np.isfinite(w.numpy()).all() for w in model.trainable_weights)


def test_a_large_variable_takes_the_compiled_path_and_matches_numpy(monkeypatch):
    """Variables of >= COMPILE_MIN_ELEMENTS elements run the XLA-compiled GSNR step (on CPUs and
    GPUs), and its numbers are the NumPy reference's."""
    from tf_largebatch.optimizers import vr

    assert "CPU" in vr.COMPILE_ON_DEVICE_TYPES
    compiled = []
    monkeypatch.setattr(vr, "_compiled_adapted_gradient",
                        lambda *a, **k: compiled.append(1) or tf.function(vr.adapted_gradient,
                                                                          jit_compile=True)(*a, **k))
    shapes = [(256, 160), (7,)]
    assert np.prod(shapes[0]) >= vr.COMPILE_MIN_ELEMENTS > np.prod(shapes[1])
    rng = np.random.default_rng(14)
    variables = make_variables(rng, shapes)
    start = [v.numpy() for v in variables]
    samples = make_samples(rng, shapes, 3, 4)
    run_accumulated(tlb_opt.VRAdam(learning_rate=0.01, gradient_accumulation_steps=4), variables, samples)
    assert len(compiled) == 3  # the large variable, once per update
    for v, e in zip(variables, numpy_trajectory("VRAdam", start, samples)):
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-4, atol=1e-5)


def test_the_compiled_path_under_mirrored_strategy_equals_numpy(mirrored, monkeypatch):
    """Each replica runs its own compiled GSNR step on a large variable (float32 tolerance)."""
    from tf_largebatch.optimizers import vr

    compiled = []
    monkeypatch.setattr(vr, "_compiled_adapted_gradient",
                        lambda *a, **k: compiled.append(1) or tf.function(vr.adapted_gradient,
                                                                          jit_compile=True)(*a, **k))
    shapes = [(180, 200), (5,)]
    rng = np.random.default_rng(15)
    start = [rng.normal(size=s).astype("float32") for s in shapes]
    samples = make_samples(rng, shapes, 3, 4)
    got, _ = run_replicated(mirrored(4), lambda: tlb_opt.VRAdam(learning_rate=0.01), start, samples, 1)
    assert compiled  # traced for the large variable
    for g, e in zip(got, numpy_trajectory("VRAdam", start, samples)):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------ large k


def large_k_samples(rng, k, num_steps, size=16):
    """For each step, k float32 samples of ``size`` elements whose GSNR (mean**2 / variance)
    spans 1e-2 .. 1e3; the distribution is the same at every step (a mean gradient that
    moves little between updates compared with the per-sample noise)."""
    gsnr_target = np.logspace(-2, 3, size)
    sigma = np.exp(rng.uniform(-1, 1, size))
    mean = np.sqrt(gsnr_target) * sigma * rng.choice([-1.0, 1.0], size)
    return [(mean + sigma * rng.normal(size=(k, size))).astype(np.float32) for _ in range(num_steps)]


def eq8_factor(samples):
    """Eq. 8's normalised GSNR in float64 (no clipping: gamma 1e-6, upper 1e9 in the optimizer)."""
    samples = samples.astype(np.float64)
    r = samples.mean(axis=0) ** 2 / samples.var(axis=0)
    return r / r.mean()


def _large_k_factors(strategy, replicas, accumulation, steps_samples):
    """VRSGD(lr=1, gamma=1e-6, upper=1e9): each update moves w by -factor * gbar; returns the factors."""
    with strategy.scope():
        variable = keras.Variable(np.zeros(steps_samples[0].shape[1], np.float32))
        optimizer = tlb_opt.VRSGD(learning_rate=1.0, gamma=1e-6, gsnr_upper_bound=1e9,
                                  gradient_accumulation_steps=accumulation)
        optimizer.build([variable])

    @tf.function
    def micro_step(per_replica):
        strategy.run(lambda g: optimizer.apply([g], [variable]), args=(per_replica,))

    factors = []
    for samples in steps_samples:
        variable.assign(tf.zeros_like(variable))  # (a 1e9 step of the first update would absorb the next)
        for a in range(accumulation):
            def value_fn(context, a=a):
                sample = context.replica_id_in_sync_group * accumulation + a
                return tf.constant(samples[sample] / replicas, tf.float32)

            micro_step(strategy.experimental_distribute_values_from_function(value_fn))
        factors.append(-variable.numpy() / samples.astype(np.float64).mean(axis=0))
    return factors


@pytest.mark.parametrize("replicas,accumulation", [(1, 4096), (4, 1024)])
def test_gsnr_up_to_1e3_gets_eq8_factor_within_5_percent_at_k_4096(replicas, accumulation, mirrored):
    rng = np.random.default_rng(15)
    k = replicas * accumulation
    steps = large_k_samples(rng, k, 2)
    strategy = mirrored(replicas) if replicas > 1 else tf.distribute.get_strategy()
    factors = _large_k_factors(strategy, replicas, accumulation, steps)
    # The first update has no previous mean to shift by (documented); from the second on:
    np.testing.assert_allclose(factors[1], eq8_factor(steps[1]), rtol=0.05)


def test_identical_samples_still_give_the_upper_bound_with_shifted_moments():
    from tf_largebatch.optimizers import moments

    k = moments.SHIFTED_MOMENTS_MIN_SAMPLES
    rng = np.random.default_rng(16)
    g = rng.normal(size=(1, 6)).astype(np.float32)
    steps = [np.repeat(g + i, k, axis=0) for i in range(2)]
    factors = _large_k_factors(tf.distribute.get_strategy(), 1, k, steps)
    for factor in factors:
        np.testing.assert_allclose(factor, 1e9, rtol=1e-6)


def test_shifted_moments_keep_one_collective_and_restore_exactly(mirrored, monkeypatch, tmp_path):
    """2 replicas x 32 micro-batches (k = 64, shifted): one all-reduce of 2 x variables per
    update; a checkpoint mid-accumulation resumes to the uninterrupted trajectory."""
    calls = count_all_reduces(monkeypatch)
    rng = np.random.default_rng(17)
    shapes = SHAPES[1:3]
    start = [rng.normal(size=s).astype("float32") for s in shapes]
    samples = make_samples(rng, shapes, 3, 64)
    strategy = mirrored(2)

    def make():
        with strategy.scope():
            variables = [keras.Variable(w) for w in start]
            optimizer = tlb_opt.VRAdam(learning_rate=0.01, gradient_accumulation_steps=32)
            optimizer.build(variables)
        assert optimizer.moments_recorder.shifts is not None
        return variables, optimizer

    def micro_steps(variables, optimizer, pairs):
        feed_micro_steps(strategy, optimizer, variables, samples, pairs, 32)

    schedule = [(t, a) for t in range(3) for a in range(32)]
    straight_vars, straight_opt = make()
    micro_steps(straight_vars, straight_opt, schedule)
    assert calls == [2 * len(shapes)] * 2  # traced once, one call per replica

    cut = 32 + 17
    first_vars, first_opt = make()
    micro_steps(first_vars, first_opt, schedule[:cut])
    path = tf.train.Checkpoint(variables=first_vars, optimizer=first_opt).save(str(tmp_path / "ckpt"))
    resumed_vars, resumed_opt = make()
    tf.train.Checkpoint(variables=resumed_vars, optimizer=resumed_opt).restore(path).assert_consumed()
    micro_steps(resumed_vars, resumed_opt, schedule[cut:])
    for a, b in zip(straight_vars, resumed_vars):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    expected = numpy_trajectory("VRAdam", start, samples)
    for a, e in zip(straight_vars, expected):
        np.testing.assert_allclose(a.numpy(), e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("argument,value", [("clipnorm", -1.0), ("global_clipnorm", float("nan")),
                                            ("clipvalue", -1.0), ("loss_scale_factor", -2.0),
                                            ("use_ema", "yes")])
def test_a_keras_inner_optimizer_with_a_bad_base_keyword_is_refused(argument, value):
    # Keras's own optimizers accept these and then clip nothing, ascend, or average.
    inner = keras.optimizers.SGD(0.1, **{argument: value})
    with pytest.raises(ValueError, match=rf"`{argument}`"):
        tlb_opt.VR(inner, gradient_accumulation_steps=2)
