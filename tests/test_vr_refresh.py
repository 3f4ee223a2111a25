"""``gsnr_refresh_every``: the GSNR refreshed every n updates, the GSNR momentum carrying it between.

The reference below is written from Algorithm 1/3 of Jiang et al., "Accelerating Large Batch
Training via Gradient Signal to Noise Ratio (GSNR)", plus the refresh cadence documented on
:class:`tf_largebatch.optimizers.VR`: on the updates ``t = 0, n, 2n, ...`` (0-based applied
updates) the clipped normalised GSNR ``r`` moves ``p``; every update uses
``g_hat = p_j / (1 - beta_3**j) * gbar`` with ``j`` the refreshes so far. Nothing here imports
the package's GSNR code; the inner rules come from ``tests/reference_optimizers.py``.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras
import reference_optimizers as ref
import tf_largebatch.optimizers as tlb_opt
from test_vr import count_all_reduces

SHAPES = [(7,), (4, 5), (3, 2, 2)]

# variant -> (constructor kwargs, NumPy inner step, its hyperparameters, beta_3)
VARIANTS = {
    "VRAdam": (dict(learning_rate=0.01, epsilon=1e-7), ref.adam_step, dict(epsilon=1e-7), 0.9),
    "VRMomentum": (dict(learning_rate=0.05, momentum=0.9), ref.sgd_momentum_step, dict(momentum=0.9), 0.0),
    "VRLAMB": (dict(learning_rate=0.01, weight_decay=0.01, epsilon=1e-6), ref.lamb_step,
               dict(weight_decay=0.01, epsilon=1e-6), 0.9),
    "VRLARS": (dict(learning_rate=0.5, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.01), ref.lars_step,
               dict(momentum=0.9, weight_decay=1e-3, trust_coefficient=0.01), 0.0),
}


def np_clipped_gsnr(samples, gamma=0.1, upper=1.0):
    """Eq. (7)-(9) for one variable's k samples (non-degenerate: every variance > 0)."""
    samples = np.asarray(samples, np.float64)
    mean = samples.mean(axis=0)
    variance = (samples**2).mean(axis=0) - mean**2
    assert np.all(variance > 0)
    r = mean**2 / variance
    return np.clip(r / r.mean(), gamma, upper)


def np_refresh_trajectory(name, weights, samples, refresh_every):
    """Weights after every step of ``samples`` (``samples[t][v]``: k samples of variable v)."""
    kwargs, inner_step, inner_hp, beta3 = VARIANTS[name]
    ws = [np.asarray(w, np.float64) for w in weights]
    p = [np.zeros_like(w) for w in ws]
    states = [None] * len(ws)
    refreshes = 0
    for t, step_samples in enumerate(samples):
        if t % refresh_every == 0:
            refreshes += 1
            p = [beta3 * p_v + (1 - beta3) * np_clipped_gsnr(s) for p_v, s in zip(p, step_samples)]
        for v, s in enumerate(step_samples):
            g_hat = p[v] / (1 - beta3**refreshes) * np.asarray(s, np.float64).mean(axis=0)
            states[v], ws[v] = inner_step(states[v], ws[v], g_hat, kwargs["learning_rate"], **inner_hp)
    return ws


def make_samples(rng, num_steps, k, shapes=SHAPES):
    return [[rng.normal(size=(k,) + s) + rng.normal(size=s) for s in shapes] for _ in range(num_steps)]


def run_accumulated(optimizer, variables, samples):
    """One device: each sample is one micro-batch (k = accumulation steps)."""
    for step_samples in samples:
        for i in range(step_samples[0].shape[0]):
            optimizer.apply([tf.constant(s[i], tf.float32) for s in step_samples], variables)
    return [v.numpy() for v in variables]


def float_state(optimizer):
    return [v.numpy() for v in optimizer.variables if v.dtype not in ("int32", "int64")]


# ------------------------------------------------------------------- math


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("refresh_every", [1, 3])
def test_refresh_matches_the_numpy_reference(name, refresh_every):
    """Seven updates at n = 3: refreshes on updates 1, 4, 7, carried factors between,
    with (VRAdam, VRLAMB with weight decay: beta_3 = 0.9) and without (VRMomentum, VRLARS)
    GSNR momentum."""
    rng = np.random.default_rng(3)
    start = [rng.normal(size=s).astype("float32") for s in SHAPES]
    samples = make_samples(rng, 7, 4)
    optimizer = getattr(tlb_opt, name)(gradient_accumulation_steps=4, gsnr_refresh_every=refresh_every,
                                       **VARIANTS[name][0])
    got = run_accumulated(optimizer, [keras.Variable(w) for w in start], samples)
    for g, e in zip(got, np_refresh_trajectory(name, start, samples, refresh_every)):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
    if refresh_every == 3:  # a carried factor is not a fresh one: the reference with n = 1 differs
        fresh = np_refresh_trajectory(name, start, samples, 1)
        assert max(np.abs(g - f).max() for g, f in zip(got, fresh)) > 1e-3


def test_refresh_every_one_is_the_default_optimizer_exactly():
    rng = np.random.default_rng(4)
    start = [rng.normal(size=s).astype("float32") for s in SHAPES]
    samples = make_samples(rng, 4, 2)
    runs = []
    for extra in ({}, {"gsnr_refresh_every": 1}):
        optimizer = tlb_opt.VRAdam(0.01, gradient_accumulation_steps=2, **extra)
        runs.append((run_accumulated(optimizer, [keras.Variable(w) for w in start], samples),
                     float_state(optimizer)))
    (weights_a, state_a), (weights_b, state_b) = runs
    assert len(state_a) == len(state_b)
    for a, b in zip(weights_a + state_a, weights_b + state_b):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------- replicas


def run_replicated(strategy, make_optimizer, start, samples, accumulation):
    """Replica d feeds h = g / R of sample ``d * accumulation + a`` at micro-step a."""
    with strategy.scope():
        variables = [keras.Variable(w) for w in start]
        optimizer = make_optimizer()
        optimizer.build(variables)
    replicas = strategy.num_replicas_in_sync

    @tf.function
    def micro_step(per_replica):
        strategy.run(lambda grads: optimizer.apply(grads, variables), args=(per_replica,))

    for step_samples in samples:
        for a in range(accumulation):
            def value_fn(context, a=a, step_samples=step_samples):
                sample = context.replica_id_in_sync_group * accumulation + a
                return [tf.constant(s[sample] / replicas, tf.float32) for s in step_samples]

            micro_step(strategy.experimental_distribute_values_from_function(value_fn))
    return [v.numpy() for v in variables], optimizer


@pytest.mark.parametrize("replicas,accumulation", [(4, 1), (2, 2)])
def test_replicas_equal_one_device_on_the_same_samples(replicas, accumulation, mirrored):
    rng = np.random.default_rng(5)
    start = [rng.normal(size=s).astype("float32") for s in SHAPES]
    samples = make_samples(rng, 5, 4)
    kwargs = dict(VARIANTS["VRAdam"][0], gsnr_refresh_every=3)
    single = run_accumulated(tlb_opt.VRAdam(gradient_accumulation_steps=4, **kwargs),
                             [keras.Variable(w) for w in start], samples)
    extra = {"gradient_accumulation_steps": accumulation} if accumulation > 1 else {}
    got, optimizer = run_replicated(mirrored(replicas), lambda: tlb_opt.VRAdam(**kwargs, **extra), start,
                                    samples, accumulation)
    assert int(optimizer.iterations.numpy()) == 5
    expected = np_refresh_trajectory("VRAdam", start, samples, 3)
    for g, s, e in zip(got, single, expected):
        np.testing.assert_allclose(g, s, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_between_refreshes_the_all_reduce_carries_the_gradient_alone(mirrored, monkeypatch):
    """The step's graph holds two shapes of the one collective: both moments (the refresh
    branch) and the gradient alone (the other updates); each update runs one of them."""
    payloads = count_all_reduces(monkeypatch)
    rng = np.random.default_rng(6)
    start = [rng.normal(size=s).astype("float32") for s in SHAPES]
    run_replicated(mirrored(2), lambda: tlb_opt.VRAdam(0.01, gsnr_refresh_every=2), start,
                   make_samples(rng, 1, 2), 1)
    per_replica = sorted(set(payloads))
    assert per_replica == [len(SHAPES), 2 * len(SHAPES)]


def test_fit_under_mirrored_strategy_and_one_device_xla(mirrored):
    """Real Keras fit: MirroredStrategy x2 (graph) and one device compiled with XLA (accumulation 2)."""
    x = np.random.default_rng(7).normal(size=(32, 5)).astype("float32")
    y = x @ np.arange(1.0, 6.0, dtype="float32")[:, None]
    for strategy, extra, jit in ((mirrored(2), {}, False),
                                 (tf.distribute.get_strategy(), {"gradient_accumulation_steps": 2}, True)):
        with strategy.scope():
            model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4), keras.layers.Dense(1)])
            optimizer = tlb_opt.VRAdam(0.01, gsnr_refresh_every=3, **extra)
            model.compile(optimizer, "mse", jit_compile=jit)
        history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        assert int(optimizer.iterations.numpy()) == (8 if not extra else 4)
        assert np.all(np.isfinite(history.history["loss"]))
        assert all(np.all(np.isfinite(w)) for w in model.get_weights())


# ------------------------------------------------------------ state


def test_checkpoint_between_refreshes_restores_the_carried_factor(tmp_path):
    """Without GSNR momentum the slot holds the last refresh's r: saved mid-cadence (and mid
    accumulation), restored into fresh objects, the run continues as if never stopped."""
    rng = np.random.default_rng(8)
    start = [rng.normal(size=s).astype("float32") for s in SHAPES]
    samples = make_samples(rng, 5, 2)
    micro = [[s[i] for s in step] for step in samples for i in range(2)]

    def make():
        variables = [keras.Variable(w) for w in start]
        optimizer = tlb_opt.VRMomentum(0.05, gsnr_refresh_every=3, gradient_accumulation_steps=2)
        optimizer.build(variables)
        return variables, optimizer

    def feed(optimizer, variables, batches):
        for batch in batches:
            optimizer.apply([tf.constant(g, tf.float32) for g in batch], variables)

    straight_vars, straight = make()
    feed(straight, straight_vars, micro)
    first_vars, first = make()
    feed(first, first_vars, micro[:5])  # two updates (a refresh, a carried one) and one micro-batch
    path = tf.train.Checkpoint(variables=first_vars, optimizer=first).save(str(tmp_path / "ckpt"))
    resumed_vars, resumed = make()
    tf.train.Checkpoint(variables=resumed_vars, optimizer=resumed).restore(path).assert_consumed()
    feed(resumed, resumed_vars, micro[5:])
    for a, b in zip(straight_vars, resumed_vars):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-7)
    expected = np_refresh_trajectory("VRMomentum", start, samples, 3)
    for a, e in zip(resumed_vars, expected):
        np.testing.assert_allclose(a.numpy(), e, rtol=1e-4, atol=1e-5)


def test_a_skipped_update_leaves_no_trace_in_the_cadence():
    """A non-finite update (before a refresh and before a carried one) is not counted: the
    refreshes fall on the same applied updates as in the run without it."""
    samples = make_samples(np.random.default_rng(9), 6, 2)
    start = [np.random.default_rng(10).normal(size=s).astype("float32") for s in SHAPES]

    def run(skip_before):
        variables = [keras.Variable(w) for w in start]
        optimizer = tlb_opt.VRAdam(0.01, gsnr_refresh_every=3, gradient_accumulation_steps=2)
        optimizer.build(variables)
        for t, step_samples in enumerate(samples):
            if t in skip_before:
                for micro in ([np.full(s.shape[1:], np.nan) for s in step_samples], [s[0] for s in step_samples]):
                    optimizer.apply([tf.constant(g, tf.float32) for g in micro], variables)
            for i in range(2):
                optimizer.apply([tf.constant(s[i], tf.float32) for s in step_samples], variables)
        return [v.numpy() for v in variables] + float_state(optimizer), optimizer

    clean, _ = run(())
    skipped, optimizer = run((3, 4))
    assert optimizer.skipped_updates == 2
    for a, b in zip(clean, skipped):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_statistics_asked_for_between_refreshes_are_recorded_at_the_next_refresh():
    rng = np.random.default_rng(11)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in SHAPES]
    samples = make_samples(rng, 4, 2)
    optimizer = tlb_opt.VRAdam(0.01, gsnr_refresh_every=3, gradient_accumulation_steps=2)
    optimizer.build(variables)
    run_accumulated(optimizer, variables, samples[:1])  # update 1: a refresh
    optimizer.request_gradient_statistics()
    run_accumulated(optimizer, variables, samples[1:3])  # updates 2 and 3: carried
    assert optimizer.gradient_statistics_step == 0
    run_accumulated(optimizer, variables, samples[3:])  # update 4: a refresh
    assert optimizer.gradient_statistics_step == 4
    statistics = optimizer.gradient_statistics()
    for variable, step_samples in zip(variables, samples[3]):
        mean = step_samples.mean(axis=0)
        np.testing.assert_allclose(statistics[variable.path]["mean_square"], np.sum(mean**2), rtol=1e-4)


# ------------------------------------------------------------ surface


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "4", None])
def test_a_bad_refresh_interval_is_an_error_naming_the_argument(bad):
    with pytest.raises(ValueError, match="gsnr_refresh_every"):
        tlb_opt.VRAdam(0.01, gsnr_refresh_every=bad)
    with pytest.raises(ValueError, match="gsnr_refresh_every"):
        tlb_opt.VR(keras.optimizers.SGD(0.1), gsnr_refresh_every=bad)


def test_the_refresh_interval_survives_config_and_serialization():
    for optimizer in (tlb_opt.VRAdam(0.01, gsnr_refresh_every=4),
                      tlb_opt.VR(keras.optimizers.SGD(0.1), gsnr_refresh_every=5)):
        config = optimizer.get_config()
        assert config["gsnr_refresh_every"] == optimizer.gsnr_refresh_every
        assert type(optimizer).from_config(config).gsnr_refresh_every == optimizer.gsnr_refresh_every
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(optimizer))
        assert type(restored) is type(optimizer)
        assert restored.gsnr_refresh_every == optimizer.gsnr_refresh_every
    assert tlb_opt.VRAdam(0.01).gsnr_refresh_every == 1


def test_the_study_offers_the_refresh_as_its_own_contender():
    """``VRMomentum(refresh4)``: VRMomentum's recipe but for ``gsnr_refresh_every=4``."""
    from tf_largebatch.study import recipes

    recipe = recipes.resolve("VRMomentum(refresh4)")
    assert (recipe.class_name, recipe.base_learning_rate, recipe.rule) == ("VRMomentum", 0.0125, "linear")
    assert recipe.needs_gradient_samples() and recipe.build(0.1, 2).gsnr_refresh_every == 4
