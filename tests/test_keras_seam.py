"""The Keras seam: every private-API wrapper against the installed Keras, and the one-module rule."""

import ast
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_largebatch
from tf_largebatch.optimizers import keras_seam

PACKAGE_DIR = pathlib.Path(tf_largebatch.__file__).parent
SEAM_FILE = PACKAGE_DIR / "optimizers" / "keras_seam.py"

#: Private attributes of Keras optimizers (and TensorFlow trackables) that only the seam may touch.
KERAS_PRIVATE_ATTRIBUTES = (
    "_use_weight_decay", "_track_trackable",
    "_iterations", "_distributed_tf_update_step", "_clip_gradients", "_track_variable", "_learning_rate",
    "_variables", "_trainable_variables", "_get_variable_index", "_distribution_strategy", "_apply_weight_decay",
    "_get_current_learning_rate", "_backend_apply_gradients", "_update_model_variables_moving_average",
    "_overwrite_model_variables_with_average_value", "_var_key", "_accumulated_gradients",
    "_model_variables_moving_average", "_non_append_mutation", "_update_snapshot",
)


def _package_sources():
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if p != SEAM_FILE)


# ------------------------------------------------------------- the one-module rule
def test_keras_src_is_imported_by_the_seam_only():
    offenders = [str(p.relative_to(PACKAGE_DIR)) for p in _package_sources() if "keras.src" in p.read_text()]
    assert offenders == [], f"keras.src outside keras_seam.py: {offenders}"
    assert "keras.src" in SEAM_FILE.read_text()


def test_tf_internal_is_used_by_the_seam_only():
    offenders = [str(p.relative_to(PACKAGE_DIR)) for p in _package_sources() if "__internal__" in p.read_text()]
    assert offenders == [], f"tf.__internal__ outside keras_seam.py: {offenders}"
    assert "tf.__internal__" in SEAM_FILE.read_text()


def test_private_keras_attributes_are_touched_by_the_seam_only():
    """Attribute reads, method overrides and ``getattr(x, "_name")`` strings, found with ``ast``."""
    offenders = []
    for path in _package_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = node.name
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value
            else:
                continue
            if name in KERAS_PRIVATE_ATTRIBUTES:
                offenders.append(f"{path.relative_to(PACKAGE_DIR)}:{node.lineno}: {name}")
    assert offenders == [], "private Keras attributes outside keras_seam.py:\n" + "\n".join(offenders)


# ----------------------------------------------------------------- version checks
def test_installed_keras_and_backend_are_accepted():
    assert keras_seam.check_keras_version() == keras.__version__
    assert keras_seam.check_backend() == "tensorflow"


@pytest.mark.parametrize("version", ["3.14.2", "3.99.0", "4.0.0", "2.15.0", "nightly", "3"])
def test_unsupported_keras_version_is_refused(version):
    with pytest.raises(ImportError, match=re.escape(repr(version))):
        keras_seam.check_keras_version(version)


def test_untested_keras_can_be_allowed_with_a_warning(monkeypatch):
    with pytest.warns(UserWarning, match="'3.99.0'"):
        assert keras_seam.check_keras_version("3.99.0", allow_untested=True) == "3.99.0"
    monkeypatch.setenv(keras_seam.ALLOW_UNTESTED_KERAS_VARIABLE, "1")
    with pytest.warns(UserWarning, match=keras_seam.ALLOW_UNTESTED_KERAS_VARIABLE):
        keras_seam.check_keras_version("3.99.0")
    monkeypatch.setenv(keras_seam.ALLOW_UNTESTED_KERAS_VARIABLE, "0")
    with pytest.raises(ImportError):
        keras_seam.check_keras_version("3.99.0")


def test_installed_tensorflow_is_accepted():
    assert keras_seam.check_tensorflow_version() == tf.__version__


@pytest.mark.parametrize("version", ["2.19.1", "3.0.0", "1.15.5", "nightly", "2"])
def test_unsupported_tensorflow_version_is_refused(version):
    with pytest.raises(ImportError, match="TensorFlow >=2.20,<3.0.*" + re.escape(repr(version))):
        keras_seam.check_tensorflow_version(version)
    with pytest.warns(UserWarning, match=re.escape(repr(version))):
        assert keras_seam.check_tensorflow_version(version, allow_untested=True) == version


@pytest.mark.parametrize("backend", ["jax", "torch", "numpy"])
def test_backend_other_than_tensorflow_is_refused(backend):
    with pytest.raises(ImportError, match=f"'{backend}'.*KERAS_BACKEND=tensorflow"):
        keras_seam.check_backend(backend)


def test_importing_the_package_under_an_unknown_keras_fails_clearly():
    code = "import keras; keras.__version__ = '3.99.0'; import tf_largebatch.optimizers"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(PACKAGE_DIR.parent), "TF_CPP_MIN_LOG_LEVEL": "3",
                                 "KERAS_BACKEND": "tensorflow", "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert "ImportError: tf_largebatch's optimizers were tested with Keras" in result.stderr
    assert "'3.99.0'" in result.stderr


# ------------------------------------------------------------------ documentation
def test_base_keyword_documentation():
    from tf_largebatch.optimizers import docstrings

    assert "clipnorm" in keras_seam.BASE_OPTIMIZER_KEYWORD_ARGS

    @docstrings.document(extra="Extra:\n    {{base_optimizer_keyword_args}}")
    class Documented:
        """Args:\n    {{extra}}"""

    assert "{{" not in Documented.__doc__ and "global_clipnorm" in Documented.__doc__
    with pytest.raises(ValueError, match="{{unknown}}"):
        docstrings.fill("Args:\n    {{unknown}}")
    assert tf_largebatch.optimizers.SNGM.__doc__.count("global_clipnorm") >= 1


def test_base_optimizer_parameters():
    names = keras_seam.base_optimizer_parameters()
    for name in ("learning_rate", "weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema",
                 "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor", "gradient_accumulation_steps"):
        assert name in names
    assert "self" not in names


# -------------------------------------------------------------- variables, build
def _built_sgd(**kwargs):
    variables = [keras.Variable(np.ones((2, 3), "float32"), name="kernel"),
                 keras.Variable(np.zeros(3, "float32"), name="bias")]
    optimizer = keras.optimizers.SGD(learning_rate=0.1, **kwargs)
    optimizer.build(variables)
    return optimizer, variables


def test_variable_lookup():
    optimizer, variables = _built_sgd(momentum=0.9)
    assert keras_seam.built_variables(optimizer) == variables
    assert [keras_seam.variable_index(optimizer, v) for v in variables] == [0, 1]
    with pytest.raises(KeyError):
        keras_seam.variable_index(optimizer, keras.Variable(1.0))
    assert [v.path for v in keras_seam.own_variables(optimizer)] == [v.path for v in optimizer.variables]


def test_track_variable_and_name_scope():
    optimizer, _ = _built_sgd()
    before = len(optimizer.variables)
    with keras_seam.name_scope(optimizer):
        extra = keras.Variable(np.zeros(2, "float32"), name="extra", trainable=False)
    keras_seam.track_variable(optimizer, extra)
    assert len(optimizer.variables) == before + 1
    assert optimizer.variables[-1] is extra
    assert extra.path == f"{optimizer.name}/extra"


def test_distribution_strategy(mirrored):
    optimizer, _ = _built_sgd()
    assert keras_seam.distribution_strategy(optimizer) is tf.distribute.get_strategy()
    strategy = mirrored(2)
    with strategy.scope():
        replicated = keras.optimizers.SGD(0.1)
    assert keras_seam.distribution_strategy(replicated) is strategy


def test_no_automatic_dependency_tracking_is_kerass_decorator():
    @keras_seam.no_automatic_dependency_tracking
    def build(obj):
        obj.slots = [1, 2]
        return obj

    assert callable(build)


# ------------------------------------------------------------------- counters
def test_micro_step_counter_under_accumulation():
    optimizer, variables = _built_sgd(gradient_accumulation_steps=3)
    grads = [np.ones((2, 3), "float32"), np.ones(3, "float32")]
    for _ in range(4):
        optimizer.apply(grads, variables)
    assert int(keras_seam.micro_step_counter(optimizer).numpy()) == 4
    assert int(optimizer.iterations.numpy()) == 1
    keras_seam.advance_micro_step_counter(optimizer)
    keras_seam.advance_micro_step_counter(optimizer)
    assert int(keras_seam.micro_step_counter(optimizer).numpy()) == 6
    assert int(optimizer.iterations.numpy()) == 2


# --------------------------------------------------------------- learning rate
def test_stored_and_current_learning_rate():
    optimizer, _ = _built_sgd()
    assert isinstance(keras_seam.stored_learning_rate(optimizer), keras.Variable)
    np.testing.assert_allclose(keras_seam.stored_learning_rate(optimizer).numpy(), 0.1)
    assert keras_seam.stored_learning_rate(object()) is None

    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2], [1.0, 0.5])
    scheduled = keras.optimizers.SGD(schedule, gradient_accumulation_steps=2)
    scheduled.build([keras.Variable(1.0)])
    assert keras_seam.stored_learning_rate(scheduled) is schedule
    # Keras evaluates the schedule at the micro-step counter, not at `iterations`.
    keras_seam.micro_step_counter(scheduled).assign(3)
    np.testing.assert_allclose(float(keras_seam.keras_current_learning_rate(scheduled)), 0.5)
    assert int(scheduled.iterations.numpy()) == 1


def test_replace_learning_rate_keeps_the_optimizer_checkpointable(tmp_path):
    """Keras's setter deletes the float rate's variable from the tracked list, which
    TensorFlow then refuses to save; after the seam's replacement a checkpoint round-trips."""
    def make():
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        keras_seam.replace_learning_rate(optimizer, lambda: 0.25)
        optimizer.build([keras.Variable(np.ones(2, np.float32))])
        return optimizer

    optimizer = make()
    np.testing.assert_allclose(float(optimizer.learning_rate), 0.25)
    assert [v.name for v in optimizer.variables] == ["iteration", "variable_momentum"]
    optimizer.variables[1].assign([3.0, 4.0])
    path = tf.train.Checkpoint(optimizer=optimizer).save(str(tmp_path / "ckpt"))
    restored = make()
    tf.train.Checkpoint(optimizer=restored).restore(path).assert_consumed()
    np.testing.assert_array_equal(restored.variables[1].numpy(), [3.0, 4.0])

    keras_only = keras.optimizers.SGD(0.1)
    keras_only.learning_rate = lambda: 0.25  # the behaviour the seam works around
    with pytest.raises(ValueError, match="deleted"):
        tf.train.Checkpoint(optimizer=keras_only).save(str(tmp_path / "keras_only"))
    with pytest.raises(ValueError, match="unbuilt"):
        keras_seam.replace_learning_rate(optimizer, lambda: 0.5)


# ------------------------------------------------------- Keras's update pieces
def test_keras_clip_gradients_bypasses_the_package_override():
    grads = [tf.constant([3.0, 4.0])]
    sgd = keras.optimizers.SGD(0.1, global_clipnorm=1.0)
    np.testing.assert_allclose(keras_seam.keras_clip_gradients(sgd, grads)[0].numpy(), [0.6, 0.8], rtol=1e-6)
    sngm = tf_largebatch.optimizers.SNGM(0.1, global_clipnorm=1.0)
    # The package turns Keras's per-replica clipping hook off ...
    np.testing.assert_allclose(sngm._clip_gradients(grads)[0].numpy(), [3.0, 4.0])
    # ... and reaches Keras's clipping through the seam on the reduced gradient.
    np.testing.assert_allclose(keras_seam.keras_clip_gradients(sngm, grads)[0].numpy(), [0.6, 0.8], rtol=1e-6)


def test_keras_weight_decay():
    optimizer = keras.optimizers.AdamW(learning_rate=0.1, weight_decay=0.5)
    kernel = keras.Variable(np.full(2, 2.0, "float32"), name="kernel")
    bias = keras.Variable(np.full(2, 2.0, "float32"), name="bias")
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    optimizer.build([kernel, bias])
    assert keras_seam.keras_uses_weight_decay(optimizer, kernel)
    assert not keras_seam.keras_uses_weight_decay(optimizer, bias)
    keras_seam.keras_apply_weight_decay(optimizer, [kernel, bias])
    np.testing.assert_allclose(kernel.numpy(), 2.0 * (1 - 0.1 * 0.5), rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), 2.0)


def test_distributed_update_step_runs_update_step():
    optimizer, variables = _built_sgd()
    grads = [tf.fill((2, 3), 2.0), tf.fill((3,), 1.0)]
    step = keras_seam.distributed_update_step(optimizer)
    step(tf.distribute.get_strategy(), [(g, v.value) for g, v in zip(grads, variables)], optimizer.learning_rate)
    np.testing.assert_allclose(variables[0].numpy(), 1.0 - 0.1 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(variables[1].numpy(), -0.1, rtol=1e-6)
    assert int(optimizer.iterations.numpy()) == 0  # the counter is apply's job


def test_moving_averages_and_overwrite():
    optimizer, variables = _built_sgd(use_ema=True, ema_momentum=0.5)
    averages = keras_seam.moving_averages(optimizer)
    assert len(averages) == len(variables)
    averages[0].assign(np.full((2, 3), 3.0, "float32"))
    keras_seam.overwrite_with_moving_average(optimizer, variables)
    np.testing.assert_allclose(variables[0].numpy(), 3.0)
    # Keras's own step: the next apply averages the (moved) weights into it.
    optimizer.apply([tf.zeros((2, 3)), tf.zeros(3)], variables)
    np.testing.assert_allclose(averages[0].numpy(), 3.0)


# ------------------------------------------------------- tf.distribute and tracking
def test_strategy_supports_no_merge_call(mirrored):
    assert keras_seam.strategy_supports_no_merge_call()  # no strategy: no merge calls
    with mirrored(2).scope():
        assert not keras_seam.strategy_supports_no_merge_call()


def test_maybe_merge_call_reaches_cross_replica_context(mirrored):
    strategy = mirrored(2)
    seen = []

    def cross_replica(distribution, value):
        seen.append((distribution is strategy, tf.distribute.in_cross_replica_context()))
        return value

    @tf.function
    def step():
        strategy.run(lambda: keras_seam.maybe_merge_call(cross_replica, strategy, tf.constant(1.0)))

    step()
    assert seen and all(seen_strategy and cross for seen_strategy, cross in seen)


def test_track_checkpoint_dependency_names_the_variable(tmp_path):
    optimizer = keras.optimizers.SGD()
    counter = tf.Variable(7, dtype=tf.int64)
    keras_seam.track_checkpoint_dependency(optimizer, "_custom_counter", counter)
    path = tf.train.Checkpoint(optimizer=optimizer).write(str(tmp_path / "ckpt"))
    names = [name for name, _ in tf.train.list_variables(path)]
    assert "optimizer/_custom_counter/.ATTRIBUTES/VARIABLE_VALUE" in names


def test_applies_weight_decay_is_kerass_use_weight_decay():
    class Excluding(keras_seam.KerasOptimizerHooks):
        def applies_weight_decay(self, variable):
            return variable.name != "bias"

    optimizer = Excluding(learning_rate=0.1)
    kernel, bias = keras.Variable(np.ones(2, "float32"), name="kernel"), keras.Variable(np.ones(2, "float32"),
                                                                                         name="bias")
    assert [optimizer._use_weight_decay(v) for v in (kernel, bias)] == [True, False]
    plain = keras_seam.KerasOptimizerHooks(learning_rate=0.1)
    plain.exclude_from_weight_decay(var_list=[bias])
    assert [plain.applies_weight_decay(v) for v in (kernel, bias)] == [True, False]


# ------------------------------------------------------------- the hooks class
def test_hooks_class_routes_apply_to_named_methods():
    calls = []

    class Recording(keras_seam.KerasOptimizerHooks):
        def _apply_replica_gradients(self, grads, trainable_variables):
            calls.append([np.asarray(g) for g in grads])

        def _current_learning_rate(self):
            return tf.constant(0.125)

        def update_step(self, gradient, variable, learning_rate):
            raise AssertionError("not reached")

    optimizer = Recording(learning_rate=1.0, clipvalue=0.1, weight_decay=0.5, loss_scale_factor=2.0)
    variable = keras.Variable(np.ones(2, "float32"))
    optimizer.apply([tf.constant([4.0, -6.0])], [variable])
    # Keras unscaled the loss-scale factor; clipping and weight decay stayed off.
    np.testing.assert_allclose(calls[0][0], [2.0, -3.0])
    np.testing.assert_allclose(variable.numpy(), 1.0)
    assert int(optimizer.iterations.numpy()) == 1
    np.testing.assert_allclose(float(optimizer._get_current_learning_rate()), 0.125)
