"""Checks across the keys of one experiment config.

:func:`check_experiment` runs when a config is loaded: required keys, ranges,
combinations, the optimizer, model and callback arguments against their
signatures, and the dataset name. It raises :class:`ConfigError` with the key
path, before anything is built. What depends on the machine is checked by
:mod:`~tf_largebatch.config.environment`.
"""

import importlib.util

import numpy as np

from tf_largebatch import strategy as strategy_lib
from tf_largebatch.config import registry
from tf_largebatch.config.arguments import check_arguments
from tf_largebatch.config.building import (RUNNER_ADASCALE_ARGS, RUNNER_OPTIMIZER_ARGS, adascale_scale,
                                           build_optimizer, inner_section, optimizer_class, takes_inner_optimizer,
                                           uses_keras_weight_decay_exclusions, uses_scale_invariant_clock)
from tf_largebatch.config.errors import ConfigError, describe
from tf_largebatch.config.schema import REQUIRED, ScheduleConfig, value_at

# A batch beyond this is a typo, not a pod: tensor dimensions are 32-bit on accelerators.
MAX_GLOBAL_BATCH_SIZE = 2**31 - 1


def _check_positive(path, value, minimum=1):
    if value is not None and value < minimum:
        raise ConfigError(path, f"expected an integer >= {minimum}, got {value!r}")


def known_replicas(strategy_cfg):
    """Replicas per step where the config alone says it, else None (TPU, all GPUs, multi-worker)."""
    return strategy_lib.strategy_type(strategy_cfg.type).replicas(strategy_cfg)


def check_experiment(cfg):
    """Cross-field checks of one phase's config (raises ConfigError)."""
    _check_required(cfg)
    _check_training(cfg)
    _check_schedule(cfg)
    _check_data(cfg)
    _check_strategy(cfg)
    if not 0 <= cfg.loss.label_smoothing < 1:
        raise ConfigError("loss.label_smoothing", f"expected a number in [0, 1), got {cfg.loss.label_smoothing!r}")
    _check_callbacks(cfg)
    check_optimizer(cfg)
    check_gradient_samples(cfg, known_replicas(cfg.strategy))
    if cfg.callbacks.gsnr_monitor is not None:
        _check_gsnr_monitor(cfg)
    check_best_metric(cfg)
    check_keras_accumulation(cfg, known_replicas(cfg.strategy))
    _check_model(cfg)
    _check_dataset_name(cfg.data)


def _check_required(cfg):
    for key in REQUIRED:
        if value_at(cfg, key) in ("", 0, None):
            raise ConfigError(key, "required")
    if not cfg.optimizer.name:
        raise ConfigError("optimizer.name", "required (or Keras's form: optimizer.class_name and optimizer.config)")
    registry.TASKS.get(cfg.task, "task")


def _check_training(cfg):
    t = cfg.training
    _check_positive("training.global_batch_size", t.global_batch_size)
    if t.global_batch_size > MAX_GLOBAL_BATCH_SIZE:
        raise ConfigError("training.global_batch_size", f"expected at most 2**31 - 1, got {t.global_batch_size}")
    _check_positive("training.gradient_accumulation_steps", t.gradient_accumulation_steps)
    _check_positive("training.steps_per_loop", t.steps_per_loop)
    _check_positive("training.steps_per_execution", t.steps_per_execution)
    _check_positive("training.steps", t.steps)
    _check_positive("training.eval_steps", t.eval_steps, 0)
    if (t.steps_per_loop * t.gradient_accumulation_steps) % t.steps_per_execution:
        raise ConfigError(
            "training.steps_per_execution",
            f"must divide the Keras steps per loop (steps_per_loop x gradient_accumulation_steps = "
            f"{t.steps_per_loop * t.gradient_accumulation_steps}), got {t.steps_per_execution}",
        )
    if t.global_batch_size % t.gradient_accumulation_steps:
        raise ConfigError(
            "training.gradient_accumulation_steps",
            f"must divide training.global_batch_size ({t.global_batch_size}), got {t.gradient_accumulation_steps}",
        )
    replicas = known_replicas(cfg.strategy)
    if replicas and cfg.micro_batch_size % replicas:
        raise ConfigError(
            "training.global_batch_size",
            f"{t.global_batch_size} examples in {t.gradient_accumulation_steps} micro-step(s) of "
            f"{cfg.micro_batch_size} do not split evenly over the {replicas} replicas of strategy "
            f"{cfg.strategy.type!r}; expected a multiple of {replicas * t.gradient_accumulation_steps}",
        )
    if (t.steps is None) == (t.epochs is None):
        raise ConfigError("training", "expected exactly one of 'steps' and 'epochs'")
    needs_examples = t.epochs is not None or cfg.schedule.warmup_epochs is not None or cfg.schedule.boundaries_epochs
    if needs_examples and not cfg.data.num_train_examples:
        raise ConfigError("data.num_train_examples", "required when epochs are given (training.epochs, "
                          "schedule.warmup_epochs or schedule.boundaries_epochs)")
    if t.epochs is not None and t.epochs <= 0:
        raise ConfigError("training.epochs", f"expected a number > 0, got {t.epochs!r}")


def _check_schedule(cfg):
    s = cfg.schedule
    spec = registry.SCHEDULES.get(s.name, "schedule.name")
    defaults = ScheduleConfig()
    for field in registry.SCHEDULE_VARIANT_FIELDS:
        if field not in spec.fields and getattr(s, field) != getattr(defaults, field):
            readers = [n for n in registry.SCHEDULES.names() if field in registry.SCHEDULES.get(n, "").fields]
            raise _variant_fields_error("schedule", field, s.name, readers)
    if s.warmup_steps is not None and s.warmup_epochs is not None:
        raise ConfigError("schedule", "expected at most one of 'warmup_steps' and 'warmup_epochs'")
    if not s.learning_rate > 0:
        raise ConfigError("schedule.learning_rate", f"expected a number > 0, got {s.learning_rate!r}")
    if s.name == "warmup_step" and not (s.boundaries or s.boundaries_epochs):
        raise ConfigError("schedule.boundaries", "required by the 'warmup_step' schedule "
                          "(or schedule.boundaries_epochs)")
    if cfg.warmup_steps() >= cfg.total_steps() and s.name != "constant":
        raise ConfigError("schedule.warmup_steps", f"the warm-up ({cfg.warmup_steps()} steps) must be "
                          f"shorter than training ({cfg.total_steps()} steps)")
    if s.decay_steps is not None:
        _check_positive("schedule.decay_steps", s.decay_steps)


def _check_data(cfg):
    d = cfg.data
    if not (d.synthetic or d.name or d.train_files):
        raise ConfigError("data", "expected 'name' (a tensorflow-datasets name) or 'train_files' "
                          "(TFRecord pattern), or synthetic: true")
    for key in ("image_size", "seq_length", "max_predictions_per_seq", "num_train_examples"):
        _check_positive(f"data.{key}", getattr(d, key))
    _check_positive("data.shuffle_buffer", d.shuffle_buffer, 0)
    if not 0 < d.mask_rate < 1:
        raise ConfigError("data.mask_rate", f"expected a number in (0, 1), got {d.mask_rate!r}")


def _variant_fields_error(section, given, chosen, readers):
    """The error for a key of ``section`` that the chosen variant does not read."""
    return ConfigError(f"{section}.{given}", f"not read by {section} {chosen!r} (only by "
                       f"{', '.join(readers)}); drop it or change {section}.{'type' if section == 'strategy' else 'name'}")


def _check_strategy(cfg):
    kind = strategy_lib.strategy_type(cfg.strategy.type)
    for other in strategy_lib.STRATEGIES.values():
        for field in other.fields:
            if field not in kind.fields and getattr(cfg.strategy, field) not in (None, "", []):
                readers = [t.name for t in strategy_lib.STRATEGIES.values() if field in t.fields]
                raise _variant_fields_error("strategy", field, kind.name, readers)
    if cfg.strategy.type == "mirrored" and cfg.strategy.devices and cfg.strategy.num_cpu_replicas:
        raise ConfigError("strategy", "expected at most one of 'devices' and 'num_cpu_replicas'")
    _check_positive("strategy.num_cpu_replicas", cfg.strategy.num_cpu_replicas)


def _check_callbacks(cfg):
    c = cfg.callbacks
    _check_positive("callbacks.max_to_keep", c.max_to_keep)
    _check_profile_batch(c)
    if c.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("callbacks.tensorboard", "needs the tensorboard package "
                          "(pip install tensorboard), or set it to false")


def _check_profile_batch(c, path="callbacks.profile_batch"):
    """Keras's TensorBoard ``profile_batch``: a batch number, or ``"start,stop"``."""
    value = c.profile_batch
    if value is None:
        return
    if isinstance(value, int):
        _check_positive(path, value, 0)
    else:
        parts = value.split(",")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or int(parts[0]) > int(parts[1]):
            raise ConfigError(path, f"expected a batch number or 'start,stop' with start <= stop, got {value!r}")
    if not c.tensorboard:
        raise ConfigError(path, "needs callbacks.tensorboard: true (the profile is written with its logs)")


def check_optimizer(cfg, path="optimizer"):
    """The optimizer section: its class, its arguments against the constructor
    (and its inner optimizer's), AdaScale's base batch, then one construction
    (the class's own checks) in a throw-away graph."""
    opt = cfg.optimizer
    cls = optimizer_class(opt, path)
    arguments_path = f"{path}.{opt.arguments_key}"
    arguments = opt.arguments
    set_elsewhere = dict(RUNNER_OPTIMIZER_ARGS)
    if uses_scale_invariant_clock(cls):
        set_elsewhere.update(RUNNER_ADASCALE_ARGS)
    if takes_inner_optimizer(cls):
        set_elsewhere["inner_optimizer"] = f"{path}.inner"
    _check_base_batch(cfg, cls)
    if opt.keras_form:  # optimizer.get_config() writes them; they must agree with the runner's
        _check_keras_form_runner_args(cfg, arguments, arguments_path)
        set_elsewhere = {}
        arguments = {k: v for k, v in arguments.items() if k not in RUNNER_OPTIMIZER_ARGS}
        if takes_inner_optimizer(cls):
            _check_keras_form_inner(cfg, arguments, arguments_path, opt.name)
    elif takes_inner_optimizer(cls):
        _check_inner(cfg, opt, path)
    elif opt.inner is not None:
        raise ConfigError(f"{path}.inner", f"{opt.name} takes no inner optimizer (AdaScale and VR do); drop it")
    _check_arguments_of(arguments, cls, arguments_path, opt.name, set_elsewhere)
    # Construct once: the class's own checks (ranges, combinations). In a
    # throw-away graph, so checking does not start TensorFlow's eager runtime:
    # MultiWorkerMirroredStrategy must be created before that happens.
    # A wrapper's construction also judges its inner optimizer: the error names the whole section.
    import tensorflow as tf

    where = path if takes_inner_optimizer(cls) and not opt.keras_form else arguments_path
    try:
        with tf.Graph().as_default():
            build_optimizer(opt, learning_rate=0.1, gradient_accumulation_steps=None, scale=adascale_scale(cfg))
    except TypeError as error:
        raise ConfigError(where, f"not accepted by {opt.name}: {error}") from None
    except ValueError as error:
        raise ConfigError(where, f"rejected by {opt.name}: {error}") from None


def _check_arguments_of(arguments, cls, path, owner, set_elsewhere):
    """``arguments`` against ``cls``'s signature; ``exclude_from_weight_decay`` for a Keras class is a list."""
    also = ("exclude_from_weight_decay",) if uses_keras_weight_decay_exclusions(cls) else ()
    check_arguments(arguments, cls, path, owner, set_elsewhere=set_elsewhere, also_accepted=also)
    exclusions = arguments.get("exclude_from_weight_decay")
    if also and exclusions is not None and not (
            isinstance(exclusions, list) and all(isinstance(e, str) for e in exclusions)):
        raise ConfigError(f"{path}.exclude_from_weight_decay",
                          f"expected a list of strings, got {describe(exclusions)}")


def _check_inner(cfg, opt, path):
    """``optimizer.inner`` of a wrapper: required, ``{name, args}``, one level, its arguments checked."""
    inner_path = f"{path}.inner"
    if opt.inner is None:
        raise ConfigError(inner_path, f"required by {opt.name}, which wraps an inner optimizer: e.g. "
                          "inner: {name: SGD, args: {momentum: 0.9}}")
    inner = inner_section(opt, inner_path)
    if inner.keras_form:
        raise ConfigError(inner_path, "expected {name, args} (Keras's {class_name, config} form is for the "
                          "whole optimizer section)")
    if not inner.name:
        raise ConfigError(f"{inner_path}.name", "required")
    inner_cls = optimizer_class(inner, inner_path)
    if inner.inner is not None or takes_inner_optimizer(inner_cls):
        raise ConfigError(f"{inner_path}.name", f"{opt.name} wraps a base optimizer (e.g. SGD), not "
                          f"{inner.name}, which wraps one itself")
    _check_arguments_of(inner.args, inner_cls, f"{inner_path}.args", inner.name, {
        "learning_rate": "schedule",
        "gradient_accumulation_steps": f"training.gradient_accumulation_steps (the {opt.name} wrapper accumulates)",
    })


def _check_keras_form_inner(cfg, arguments, path, owner):
    """Keras's form of a wrapper: ``inner_optimizer`` is a serialized optimizer whose
    learning rate (if given) agrees with ``schedule``; AdaScale's ``scale`` agrees with the base batch."""
    inner = arguments.get("inner_optimizer")
    if not isinstance(inner, dict) or not isinstance(inner.get("config", {}), dict):
        raise ConfigError(f"{path}.inner_optimizer", f"required by {owner}: a serialized optimizer "
                          f"{{class_name, config}}, as get_config() writes it; got {describe(inner)}")
    _check_keras_form_runner_args(cfg, inner.get("config") or {}, f"{path}.inner_optimizer.config")
    scale = arguments.pop("scale", None)
    expected = adascale_scale(cfg)
    if scale is not None and expected is not None and float(scale) != float(expected):
        raise ConfigError(f"{path}.scale", f"{scale!r} differs from training.global_batch_size / "
                          f"training.base_global_batch_size ({expected:g}), which the runner uses; drop it")


def _check_base_batch(cfg, cls):
    """``training.base_global_batch_size``: required by AdaScale (the scale and the base-run
    lengths follow from it), at most the global batch; read by nothing else."""
    base = cfg.training.base_global_batch_size
    if not uses_scale_invariant_clock(cls):
        if base is not None:
            raise ConfigError("training.base_global_batch_size", f"read with the AdaScale optimizer only (its "
                              f"base recipe's batch); {cfg.optimizer.name} does not use it: drop it")
        return
    if base is None:
        raise ConfigError("training.base_global_batch_size", f"required by {cfg.optimizer.name}: the batch of the "
                          "base recipe whose learning rate and schedule (in its updates) are scaled")
    _check_positive("training.base_global_batch_size", base)
    if base > cfg.training.global_batch_size:
        raise ConfigError("training.base_global_batch_size", f"{base} is larger than training.global_batch_size "
                          f"({cfg.training.global_batch_size}); AdaScale scales a recipe up (scale >= 1)")


def check_gradient_samples(cfg, replicas):
    """A ConfigError unless an optimizer that needs ``k >= 2`` gradient samples per update
    (AdaScale) gets them: ``k`` = replicas x ``gradient_accumulation_steps``.

    Args:
        cfg: the phase's config.
        replicas: replicas per step (``None``: not known yet; checked with accumulation alone
            at load, and again by the runner once the strategy exists).
    """
    if not uses_scale_invariant_clock(optimizer_class(cfg.optimizer)):
        return
    accumulation = cfg.training.gradient_accumulation_steps
    if replicas is not None and replicas * accumulation < 2:
        raise ConfigError(
            "training.gradient_accumulation_steps",
            f"{cfg.optimizer.name} estimates the gradient noise from k >= 2 gradient samples per update, but k = "
            f"{replicas} replica(s) x {accumulation} accumulation step(s) = {replicas * accumulation}; use a "
            "strategy with >= 2 replicas or gradient_accumulation_steps >= 2",
        )


def _check_keras_form_runner_args(cfg, arguments, path):
    learning_rate = arguments.get("learning_rate")
    if learning_rate is not None:
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)):
            raise ConfigError(f"{path}.learning_rate", "the runner builds the learning rate from 'schedule'; "
                              f"drop this key (got {describe(learning_rate)})")
        # get_config() writes the float32 value back: compare in float32.
        if np.float32(learning_rate) != np.float32(cfg.schedule.learning_rate):
            raise ConfigError(f"{path}.learning_rate", f"{learning_rate} differs from schedule.learning_rate "
                              f"({cfg.schedule.learning_rate}), which the runner uses; drop it or make them equal")
    steps = arguments.get("gradient_accumulation_steps")
    if steps not in (None, 1, cfg.training.gradient_accumulation_steps):
        raise ConfigError(f"{path}.gradient_accumulation_steps", f"{steps!r} differs from "
                          f"training.gradient_accumulation_steps ({cfg.training.gradient_accumulation_steps}), "
                          "which the runner uses; drop it or make them equal")


def _check_gsnr_monitor(cfg, path="callbacks.gsnr_monitor"):
    """GSNRMonitor reads the gradient statistics the optimizer records: the
    optimizer is asked with the callback's own test
    (``tf_largebatch.callbacks.records_gradient_statistics``); the callback's
    arguments are checked against its constructor."""
    import tensorflow as tf

    from tf_largebatch.callbacks import GSNRMonitor, records_gradient_statistics

    with tf.Graph().as_default():
        optimizer = build_optimizer(cfg.optimizer, learning_rate=0.1, gradient_accumulation_steps=None)
    if not records_gradient_statistics(optimizer):
        raise ConfigError(path, f"needs an optimizer that records gradient statistics: a VR optimizer, or one "
                          f"of this package with optimizer.{cfg.optimizer.arguments_key}.record_gradient_statistics: true; "
                          f"{cfg.optimizer.name!r} as configured records none")
    check_arguments(cfg.callbacks.gsnr_monitor, GSNRMonitor, path, "GSNRMonitor",
                    set_elsewhere={"global_batch_size": "training.global_batch_size"})


def check_best_metric(cfg):
    """A ConfigError for a ``callbacks.best_metric`` the task does not log.

    A ``val_`` best metric in a phase without evaluation keeps no best
    checkpoint (the default, ``val_loss``, is not an error there).
    """
    best = cfg.callbacks.best_metric
    if best is None:
        return
    names = list(registry.TASKS.get(cfg.task, "task").metrics)
    allowed = names + [f"val_{n}" for n in names]
    if best not in allowed:
        raise ConfigError("callbacks.best_metric", f"{best!r} is not a metric of task {cfg.task!r}; expected one "
                          f"of {', '.join(allowed)}, or null for no best checkpoint")


def check_keras_accumulation(cfg, replicas):
    """A ConfigError for a Keras optimizer with gradient accumulation over several
    replicas of a ``MirroredStrategy``/``MultiWorkerMirroredStrategy``: Keras 3
    all-reduces inside a ``tf.cond`` there, which fails at the first step
    ("merge_call called while defining a new graph"). This package's
    optimizers accumulate differently and are not affected.

    Args:
        cfg: the phase's config.
        replicas: replicas per step (``None``: not known yet; nothing to check).
    """
    from tf_largebatch.pipelines.schedule_in_updates import counts_micro_steps

    accumulation = cfg.training.gradient_accumulation_steps
    kind = strategy_lib.strategy_type(cfg.strategy.type)
    if accumulation < 2 or not replicas or replicas < 2 or not kind.all_reduce_in_replica_context:
        return
    cls = optimizer_class(cfg.optimizer)
    if counts_micro_steps(cls):
        raise ConfigError(
            "training.gradient_accumulation_steps",
            f"Keras's {cls.__name__} cannot accumulate gradients over {replicas} "
            f"MirroredStrategy replicas (Keras all-reduces inside a tf.cond, which fails at the first step); use "
            f"1, one replica, or an optimizer of this package; got {accumulation}",
        )


def _check_model(cfg, path="model"):
    task = registry.TASKS.get(cfg.task, "task")
    spec = registry.MODELS.get(cfg.model.name, f"{path}.name")
    if spec.name not in task.models:
        raise ConfigError(f"{path}.name", f"model {spec.name!r} does not fit task {cfg.task!r}; expected "
                          f"one of {', '.join(task.models)}")
    check_arguments(cfg.model.args, spec.load(), f"{path}.args", f"model {spec.name!r}",
                    set_elsewhere=task.model_inputs)
    if spec.check_args is not None:
        spec.check_args(cfg.model.args, f"{path}.args")


def _check_dataset_name(data_cfg, path="data.name"):
    if data_cfg.synthetic or data_cfg.train_files or not data_cfg.name:
        return
    import tensorflow_datasets as tfds

    base = data_cfg.name.split("/")[0].split(":")[0]
    if base not in tfds.list_builders(with_community_datasets=False):
        raise ConfigError(path, f"unknown tensorflow-datasets dataset {data_cfg.name!r} "
                          "(see tfds.list_builders()), or give data.train_files")
