"""Distribution strategy and mixed-precision policy from a config.

``build_strategy`` maps ``strategy.type`` to a ``tf.distribute`` strategy:

- ``tpu``: ``TPUClusterResolver(tpu=<name or grpc:// address>)``, connect,
  initialise the TPU system, ``TPUStrategy``. An empty ``tpu`` means a TPU VM
  (``tpu="local"``).
- ``mirrored``: ``MirroredStrategy`` over ``devices``, over
  ``num_cpu_replicas`` logical CPUs (testing: configured here if the runtime
  is not initialised yet; reduced through one device), or over every local GPU.
- ``multi_worker``: ``MultiWorkerMirroredStrategy`` with the cluster read from
  the ``TF_CONFIG`` environment variable (one process per worker, same command).
- ``one_device``: ``OneDeviceStrategy`` on the first GPU, else the CPU.

``set_precision`` sets Keras's global dtype policy: ``mixed_bfloat16`` is the
TPU choice (no loss scaling needed); ``mixed_float16`` is for GPUs, where the
runner wraps the optimizer in :class:`tf_largebatch.optimizers.LossScaleOptimizer`
(dynamic loss scaling whose overflow decision agrees across replicas).
"""

import dataclasses
import json
import os
from typing import Callable

_PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def _tf():
    import tensorflow as tf

    return tf


def logical_cpus(count):
    """Names of ``count`` logical CPU devices, creating them if TF is not initialised.

    Raises:
        ValueError: if fewer than ``count`` logical CPUs exist and the runtime
            is already initialised (the split must happen before the first op).
    """
    tf = _tf()
    # Listing *logical* devices initialises the runtime, after which the CPU can
    # no longer be split: configure first (physical devices don't initialise it).
    physical = tf.config.list_physical_devices("CPU")
    try:
        if len(tf.config.get_logical_device_configuration(physical[0]) or []) < count:
            tf.config.set_logical_device_configuration(
                physical[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
            )
    except RuntimeError:
        pass  # already initialised: use what exists, if enough
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < count:
        raise ValueError(
            f"{count} logical CPUs are needed but only {len(cpus)} exist and TensorFlow is already "
            "initialised; logical CPUs must be configured before the first op."
        )
    return [f"/cpu:{i}" for i in range(count)]


def _multi_worker_strategy_class():
    tf = _tf()

    class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        """``MultiWorkerMirroredStrategy`` whose ``reduce`` works as Keras 3.15's ``fit`` calls it.

        With more than one worker, ``fit`` fails before the first step: it calls
        ``strategy.reduce("MEAN", (x, y, sample_weight), axis=None)`` on a whole
        batch structure, which the collective strategy (unlike
        ``MirroredStrategy``) does not map over (keras-team/keras#20585), and it
        reduces scalar step logs with ``axis=0``, which fails on 0-d values.
        Here ``reduce`` maps over structures and reduces 0-d values with
        ``axis=None`` (the same mean over replicas).
        """

        def reduce(self, reduce_op, value, axis):
            parent = super()

            def one(v):
                if axis is not None and getattr(_local_value(v), "shape", None) is not None \
                        and _local_value(v).shape.rank == 0:
                    return parent.reduce(reduce_op, v, axis=None)
                return parent.reduce(reduce_op, v, axis=axis)

            return tf.nest.map_structure(one, value)

    return MultiWorkerMirroredStrategy


def _local_value(value):
    values = getattr(value, "values", None)
    return values[0] if values else value


def _tpu(strategy_cfg):
    tf = _tf()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=strategy_cfg.tpu or "local", zone=strategy_cfg.tpu_zone, project=strategy_cfg.tpu_project
    )
    if strategy_cfg.tpu:
        tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _mirrored(strategy_cfg):
    tf = _tf()
    if strategy_cfg.num_cpu_replicas:
        # Reduce through one device: CPU collectives keyed by group collide
        # when a process builds several strategies (tests, several runs),
        # and gain nothing between logical CPUs of one host.
        try:
            devices = logical_cpus(strategy_cfg.num_cpu_replicas)
        except ValueError as error:
            raise ValueError(f"`strategy.num_cpu_replicas`: {error}") from None
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    return tf.distribute.MirroredStrategy(strategy_cfg.devices or None)


def _multi_worker(strategy_cfg):
    del strategy_cfg  # the cluster comes from TF_CONFIG
    if "TF_CONFIG" not in os.environ:
        raise ValueError("`strategy.type` is 'multi_worker' but the TF_CONFIG environment variable is not set")
    json.loads(os.environ["TF_CONFIG"])  # a clear JSON error before the collective setup
    return _multi_worker_strategy_class()()


def _one_device(strategy_cfg):
    del strategy_cfg
    tf = _tf()
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")


def _mirrored_replicas(strategy_cfg):
    if strategy_cfg.devices:
        return len(strategy_cfg.devices)
    return strategy_cfg.num_cpu_replicas  # None: every local GPU, known once TensorFlow lists them


@dataclasses.dataclass(frozen=True)
class StrategyType:
    """A ``strategy.type`` of a config.

    Args:
        name: the ``strategy.type`` that selects it.
        build: ``build(strategy_cfg) -> tf.distribute.Strategy``.
        replicas: ``replicas(strategy_cfg) -> int or None``: replicas per step
            where the config alone says it (None: known only once built).
        fields: the ``strategy`` keys only this type reads (the other
            types' keys are errors in a config of this one).
        all_reduce_in_replica_context: whether Keras's own gradient
            accumulation fails over several replicas of it (Keras 3 all-reduces
            inside a ``tf.cond`` there; ``MirroredStrategy`` cannot).
    """

    name: str
    build: Callable
    replicas: Callable
    fields: tuple = ()
    all_reduce_in_replica_context: bool = False


#: Every ``strategy.type``, by name.
STRATEGIES = {
    spec.name: spec for spec in (
        StrategyType("one_device", _one_device, lambda cfg: 1),
        StrategyType("mirrored", _mirrored, _mirrored_replicas, ("devices", "num_cpu_replicas"),
                     all_reduce_in_replica_context=True),
        StrategyType("multi_worker", _multi_worker, lambda cfg: None, all_reduce_in_replica_context=True),
        StrategyType("tpu", _tpu, lambda cfg: None, ("tpu", "tpu_zone", "tpu_project")),
    )
}


def strategy_type(name):
    """The :class:`StrategyType` called ``name``.

    Raises:
        ValueError: for an unknown name (listing the known ones).
    """
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"`strategy.type` must be one of {', '.join(STRATEGIES)}. Received: {name!r}") from None


def build_strategy(strategy_cfg):
    """A ``tf.distribute.Strategy`` for ``strategy_cfg`` (a ``StrategyConfig``)."""
    return strategy_type(strategy_cfg.type).build(strategy_cfg)


def set_precision(precision):
    """Sets Keras's global dtype policy (``float32``, ``mixed_bfloat16``, ``mixed_float16``)."""
    import keras

    if precision not in _PRECISIONS:
        raise ValueError(f"`precision` must be one of {', '.join(_PRECISIONS)}. Received: precision={precision!r}")
    keras.mixed_precision.set_global_policy(precision)
    return keras.mixed_precision.global_policy()
