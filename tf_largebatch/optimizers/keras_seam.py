"""The one module of tf_largebatch that reaches behind Keras's and TensorFlow's public API.

Large-batch optimizers need a few things Keras 3 keeps private: the micro-step
counter under gradient accumulation, the per-variable update step in
cross-replica context, Keras's own clipping and decoupled weight decay, its
variable tracking, and the hooks of ``BaseOptimizer.apply``. Each is wrapped here
in a small, named, documented function (or in :class:`KerasOptimizerHooks`, the
class that overrides Keras's private hooks and routes them to named methods), so
that a Keras release that moves one of them breaks this module alone, and
:func:`check_keras_version` refuses a Keras this module was not checked against.

No other module of the package imports ``keras.src`` or touches an underscored
attribute of a Keras object; ``tests/test_keras_seam.py`` enforces the first rule
and exercises every function here against the installed Keras.
"""

import os
import warnings

import keras
import tensorflow as tf
from keras.src import backend as _keras_backend
from keras.src.optimizers import base_optimizer as _base_optimizer
from keras.src.optimizers import optimizer as _optimizer_module
from keras.src.utils import tracking as _tracking

#: Keras versions whose private optimizer API this module was checked against:
#: ``MIN <= version < MAX_EXCLUSIVE`` (major, minor).
SUPPORTED_KERAS_MIN = (3, 15)
SUPPORTED_KERAS_MAX_EXCLUSIVE = (3, 16)

#: TensorFlow versions whose ``tf.__internal__`` helpers this module was checked
#: against (pyproject.toml's ``tensorflow>=2.20,<3``).
SUPPORTED_TENSORFLOW_MIN = (2, 20)
SUPPORTED_TENSORFLOW_MAX_EXCLUSIVE = (3, 0)


def _major_minor(version):
    try:
        major, minor = version.split(".")[:2]
        return int(major), int("".join(ch for ch in minor if ch.isdigit()) or "x")
    except ValueError:
        return None


#: Set this environment variable to ``1`` to import under a Keras outside the
#: supported range anyway (a warning instead of an error; the test suite is the
#: way to find out whether the private hooks still hold).
ALLOW_UNTESTED_KERAS_VARIABLE = "TF_LARGEBATCH_ALLOW_UNTESTED_KERAS"


def _check_version(library, version, low, high_exclusive, what, allow_untested):
    """``version`` if ``low <= (major, minor) < high_exclusive``; else ImportError (or a warning)."""
    parsed = _major_minor(str(version))
    if parsed is not None and low <= parsed < high_exclusive:
        return version
    low_text = ".".join(map(str, low))
    high_text = ".".join(map(str, high_exclusive))
    message = (
        f"tf_largebatch's optimizers were tested with {library} >={low_text},<{high_text}: they use {what}. "
        f"Received: {library.lower()} version {version!r}. Install a tested {library} "
        f'(pip install "{library.lower()}>={low_text},<{high_text}"), or set {ALLOW_UNTESTED_KERAS_VARIABLE}=1 '
        "to try this one at your own risk."
    )
    if allow_untested is None:
        allow_untested = os.environ.get(ALLOW_UNTESTED_KERAS_VARIABLE) == "1"
    if not allow_untested:
        raise ImportError(message)
    warnings.warn(message, stacklevel=3)
    return version


def check_keras_version(version=None, allow_untested=None):
    """Raises ``ImportError`` unless ``version`` (default: the installed Keras) is supported.

    Args:
        version: a Keras version string such as ``"3.15.1"``; ``None`` reads
            ``keras.__version__``.
        allow_untested: warn instead of raising; ``None`` reads the environment
            variable ``TF_LARGEBATCH_ALLOW_UNTESTED_KERAS`` (``"1"``).

    Returns:
        The version string.
    """
    version = keras.__version__ if version is None else version
    return _check_version("Keras", version, SUPPORTED_KERAS_MIN, SUPPORTED_KERAS_MAX_EXCLUSIVE,
                          "private Keras hooks that move between minor releases", allow_untested)


def check_tensorflow_version(version=None, allow_untested=None):
    """Raises ``ImportError`` unless ``version`` (default: the installed TensorFlow) is supported.

    Args:
        version: a TensorFlow version string such as ``"2.21.0"``; ``None``
            reads ``tf.__version__``.
        allow_untested: as :func:`check_keras_version` (the same environment
            variable).

    Returns:
        The version string.
    """
    version = tf.__version__ if version is None else version
    return _check_version("TensorFlow", version, SUPPORTED_TENSORFLOW_MIN, SUPPORTED_TENSORFLOW_MAX_EXCLUSIVE,
                          "tf.__internal__ distribution helpers", allow_untested)


def check_backend(backend=None):
    """Raises ``ImportError`` unless Keras runs on TensorFlow.

    Args:
        backend: a Keras backend name; ``None`` reads ``keras.backend.backend()``.
    """
    backend = keras.backend.backend() if backend is None else backend
    if backend != "tensorflow":
        raise ImportError(
            "tf_largebatch's optimizers need Keras's TensorFlow backend (they use tf.distribute replica "
            f"contexts). Received: Keras backend {backend!r}. Set KERAS_BACKEND=tensorflow before importing "
            "keras."
        )
    return backend


check_keras_version()
check_tensorflow_version()
check_backend()

# ----------------------------------------------------------------- documentation
#: Keras's description of the keyword arguments every optimizer accepts, for
#: docstrings (the ``{{base_optimizer_keyword_args}}`` placeholder of
#: :mod:`~tf_largebatch.optimizers.docstrings`).
BASE_OPTIMIZER_KEYWORD_ARGS = _optimizer_module.base_optimizer_keyword_args


def base_optimizer_parameters():
    """Names of the keyword arguments of Keras's ``BaseOptimizer.__init__`` (``clipnorm``, ``use_ema``, ...)."""
    import inspect

    return tuple(name for name in inspect.signature(_base_optimizer.BaseOptimizer.__init__).parameters
                 if name != "self")


# ------------------------------------------------------------ variables and build
#: Decorator Keras puts on ``Optimizer.build``: attribute assignments inside it
#: do not create tracked dependencies (the lists of slots would otherwise be
#: wrapped and tracked twice).
no_automatic_dependency_tracking = _tracking.no_automatic_dependency_tracking


def name_scope(optimizer):
    """The name scope Keras opens around an optimizer's variables (``optimizer.name``)."""
    return _keras_backend.name_scope(optimizer.name, caller=optimizer)


def track_variable(optimizer, variable):
    """Makes ``variable`` part of ``optimizer.variables`` (saved, restored, counted)."""
    optimizer._track_variable(variable)


def own_variables(optimizer):
    """The variables ``optimizer`` tracks itself (``optimizer.variables`` before a subclass adds any)."""
    return list(optimizer._variables)


def built_variables(optimizer):
    """The trainable variables ``optimizer`` was built on, in build order."""
    return optimizer._trainable_variables


def variable_index(optimizer, variable):
    """The position of ``variable`` in :func:`built_variables` (``KeyError`` if unknown)."""
    return optimizer._get_variable_index(variable)


def distribution_strategy(optimizer):
    """The ``tf.distribute`` strategy the optimizer was created under."""
    return optimizer._distribution_strategy


def track_checkpoint_dependency(optimizer, name, variable):
    """Saves ``variable`` in ``tf.train.Checkpoint`` under ``name`` on ``optimizer``.

    ``tf.train.Checkpoint`` names an optimizer's variables by the attribute that
    holds them (``optimizer/_skipped_updates``) or else by their position in
    Keras's variable list. State that a component owns keeps its attribute name
    this way, so checkpoints written when the optimizer held it directly load.
    """
    optimizer._track_trackable(variable, name=name, overwrite=True)


# ----------------------------------------------------------- tf.distribute helpers
def strategy_supports_no_merge_call():
    """Whether the current strategy runs without merge calls (TPU, no strategy): then
    a ``tf.cond`` may hold collectives in replica context."""
    return tf.__internal__.distribute.strategy_supports_no_merge_call()


def maybe_merge_call(fn, strategy, *args):
    """``fn(strategy, *args)`` in cross-replica context: one merge call from a replica
    context, or a direct call where the strategy needs none."""
    return tf.__internal__.distribute.interim.maybe_merge_call(fn, strategy, *args)


# --------------------------------------------------------------- step counters
def micro_step_counter(optimizer):
    """The counter ``apply`` advances once per call: micro-steps under gradient
    accumulation (``optimizer.iterations`` is this divided by the accumulation steps)."""
    return optimizer._iterations


def advance_micro_step_counter(optimizer):
    """Advances :func:`micro_step_counter` by one, as ``BaseOptimizer.apply`` does at its end."""
    micro_step_counter(optimizer).assign_add(1)


# ------------------------------------------------------------------ learning rate
def stored_learning_rate(optimizer):
    """What the optimizer stores as its learning rate: a ``keras.Variable`` for a
    float, else the ``LearningRateSchedule`` or callable it was given (``None``
    for an object that stores none)."""
    return getattr(optimizer, "_learning_rate", None)


def replace_learning_rate(optimizer, learning_rate):
    """Sets an unbuilt, unsaved optimizer's learning rate to a callable or schedule, checkpointably.

    Keras's ``learning_rate`` setter drops the float learning rate's variable
    from the optimizer's tracked variable list with a deletion, and
    TensorFlow's list wrapper then refuses to be checkpointed ("A list element
    was ... deleted"), because positions saved before a deletion would not
    match after it. Before anything is saved or built (a wrapper taking over
    its inner optimizer at construction) there are no saved positions, and an
    object restored from a checkpoint goes through the same construction, so
    the list is acknowledged as it now is.

    Args:
        optimizer: an unbuilt ``keras.optimizers.Optimizer``.
        learning_rate: a ``LearningRateSchedule`` or a callable returning the rate.
    """
    if optimizer.built:
        raise ValueError(f"replace_learning_rate needs an unbuilt optimizer; {optimizer.name!r} is built.")
    optimizer.learning_rate = learning_rate
    tracked = optimizer._variables
    if getattr(tracked, "_non_append_mutation", False):  # a TensorFlow ListWrapper
        tracked._non_append_mutation = False
        tracked._update_snapshot()


def keras_current_learning_rate(optimizer):
    """Keras's own ``_get_current_learning_rate`` (a schedule at the micro-step counter)."""
    return keras.optimizers.Optimizer._get_current_learning_rate(optimizer)


# ---------------------------------------------------- Keras's own update pieces
def keras_clip_gradients(optimizer, grads):
    """Keras's ``clipnorm``/``global_clipnorm``/``clipvalue`` clipping, bypassing any override."""
    return keras.optimizers.Optimizer._clip_gradients(optimizer, grads)


def keras_apply_weight_decay(optimizer, variables):
    """Keras's decoupled ``weight_decay`` step, as ``optimizer`` defines it."""
    optimizer._apply_weight_decay(variables)


def keras_uses_weight_decay(optimizer, variable):
    """Keras's own decision (``exclude_from_weight_decay``) on ``variable``, bypassing any override."""
    return keras.optimizers.Optimizer._use_weight_decay(optimizer, variable)


def distributed_update_step(optimizer):
    """Keras's ``_distributed_tf_update_step(strategy, grads_and_vars, learning_rate)``:
    ``update_step`` per variable in cross-replica context (``distribution.extended.update``)."""
    return optimizer._distributed_tf_update_step


def moving_averages(optimizer):
    """The ``use_ema`` averages, one per built variable (``None`` where Keras keeps none)."""
    return optimizer._model_variables_moving_average


def overwrite_with_moving_average(optimizer, variables):
    """Keras's EMA overwrite (``ema_overwrite_frequency``) of ``variables``."""
    optimizer._overwrite_model_variables_with_average_value(variables)


# ------------------------------------------------------------- the hooks class
class KerasOptimizerHooks(keras.optimizers.Optimizer):
    """``keras.optimizers.Optimizer`` with its private hooks routed to named methods.

    ``BaseOptimizer.apply`` calls, in order, ``_clip_gradients`` (on one
    replica's partial gradient), ``_apply_weight_decay`` (decoupled),
    ``_backend_apply_gradients`` (accumulation, all-reduce, ``update_step``,
    EMA) and reads the learning rate through ``_get_current_learning_rate``.
    A subclass implements instead:

    - ``_apply_replica_gradients(grads, trainable_variables)``: everything
      between Keras's unscaling of the loss-scale factor and its counter
      increment, in replica context;
    - ``_current_learning_rate()``: the learning rate of the update in progress
      (default: Keras's own);
    - ``applies_weight_decay(variable)``: Keras's ``_use_weight_decay``
      (default: Keras's own decision).

    Clipping and decoupled weight decay are switched off at Keras's hook points:
    a subclass applies them itself, on the all-reduced gradient
    (:func:`keras_clip_gradients`) and inside its update rule.
    """

    def _clip_gradients(self, grads):
        return grads

    def _apply_weight_decay(self, variables):
        return

    def _use_weight_decay(self, variable):
        return self.applies_weight_decay(variable)

    def applies_weight_decay(self, variable):
        """Whether ``variable`` gets this optimizer's weight decay (default: Keras's decision)."""
        return keras_uses_weight_decay(self, variable)

    def _get_current_learning_rate(self):
        return self._current_learning_rate()

    def _current_learning_rate(self):
        return keras_current_learning_rate(self)

    def _backend_apply_gradients(self, grads, trainable_variables):
        self._apply_replica_gradients(grads, trainable_variables)

    def _apply_replica_gradients(self, grads, trainable_variables):
        raise NotImplementedError



# ------------------------------------------------- TensorFlow: tracing for XLA
def tracing_for_xla():
    """Whether the graph being traced now will be compiled by XLA.

    True inside ``tf.function(jit_compile=True)`` (Keras's ``jit_compile=True``)
    and inside a TPU computation, at trace time: TensorFlow marks those traces
    with an XLA control-flow context, which only its private
    ``tensorflow.python.ops.control_flow_util`` reads. The update rules use it
    to pick, between two forms that give the same result, the one XLA:CPU runs
    faster (:mod:`tf_largebatch.optimizers.rules`). False in eager mode, in
    plain graph mode, and if that private function has moved (the other form
    is then used, which is exact too).

    Returns:
        A Python bool.
    """
    if tf.executing_eagerly():
        return False
    try:
        from tensorflow.python.ops import control_flow_util  # noqa: PLC0415 (private; this seam only)

        return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except (ImportError, AttributeError):
        return False
