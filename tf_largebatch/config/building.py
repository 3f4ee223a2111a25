"""Objects from a validated config: the optimizer and the model.

The runner (:mod:`tf_largebatch.pipelines.train`) supplies what a config does
not hold: the learning rate (a schedule object built from ``schedule``) and
the strategy scope.
"""

from tf_largebatch.config import registry
from tf_largebatch.config.arguments import parameters_of
from tf_largebatch.config.schema import OptimizerConfig, value_at
from tf_largebatch.config.typecheck import build_dataclass

# Arguments of every optimizer that the runner supplies itself, and where they come from.
RUNNER_OPTIMIZER_ARGS = {"learning_rate": "schedule", "gradient_accumulation_steps": "training.gradient_accumulation_steps"}

# Arguments of AdaScale that the runner supplies itself, and where they come from.
RUNNER_ADASCALE_ARGS = {"scale": "training.base_global_batch_size (the scale is training.global_batch_size / "
                                 "training.base_global_batch_size)"}


def takes_inner_optimizer(cls):
    """Whether ``cls`` wraps an inner optimizer (``AdaScale``, ``VR``): its constructor names ``inner_optimizer``."""
    return "inner_optimizer" in parameters_of(cls)


def uses_scale_invariant_clock(cls):
    """Whether ``cls`` runs its schedule on AdaScale's scale-invariant clock (lengths in base-run updates)."""
    from tf_largebatch.optimizers.adascale import AdaScale

    return isinstance(cls, type) and issubclass(cls, AdaScale)


def adascale_scale(cfg):
    """``S = global_batch_size / base_global_batch_size``, or ``None`` without a base batch."""
    base = cfg.training.base_global_batch_size
    return None if not base else cfg.training.global_batch_size / base


def inner_section(opt_cfg, path="optimizer.inner"):
    """``optimizer.inner`` as an :class:`~tf_largebatch.config.OptimizerConfig` (type-checked, ``path`` in errors)."""
    return build_dataclass(OptimizerConfig, opt_cfg.inner, path)


def optimizer_class(opt_cfg, path="optimizer"):
    """The class ``opt_cfg`` names, in either form (``name`` or ``class_name``)."""
    if opt_cfg.keras_form:
        return _keras_form_class(opt_cfg, path)
    return registry.resolve_optimizer_class(opt_cfg.name, f"{path}.name")


def _keras_form_class(opt_cfg, path):
    """``class_name`` (or ``registered_name``) resolved as ``keras.optimizers.get`` does,
    with this package's optimizers known by their bare class names too."""
    import keras

    if opt_cfg.registered_name:
        cls = keras.saving.get_registered_object(opt_cfg.registered_name)
        if isinstance(cls, type) and issubclass(cls, keras.optimizers.Optimizer):
            return cls
    return registry.resolve_optimizer_class(opt_cfg.class_name, f"{path}.class_name")


def uses_keras_weight_decay_exclusions(cls):
    """Whether ``exclude_from_weight_decay`` must go through Keras's
    ``Optimizer.exclude_from_weight_decay(var_names=...)`` (Keras's optimizers,
    and VR around them) rather than the constructor (this package's)."""
    return "exclude_from_weight_decay" not in parameters_of(cls)


def build_optimizer(opt_cfg, learning_rate, gradient_accumulation_steps=None, scale=None):
    """The optimizer of ``opt_cfg`` with the runner's learning rate/accumulation.

    Args:
        opt_cfg: an :class:`~tf_largebatch.config.OptimizerConfig`, in this
            package's ``{name, args}`` form or Keras's ``{class_name, config}``
            form (built with ``keras.optimizers.get``).
        learning_rate: a float or a ``keras.optimizers.schedules`` schedule;
            replaces any ``learning_rate`` in the config.
        gradient_accumulation_steps: micro-steps per update (None or 1: none).
        scale: AdaScale's ``scale`` (:func:`adascale_scale`), or ``None``.

    An optimizer that wraps another (:func:`takes_inner_optimizer`) gets the
    learning rate through its inner optimizer (``optimizer.inner``, or
    ``config.inner_optimizer`` in Keras's form) and keeps the accumulation.

    ``exclude_from_weight_decay`` goes to the constructor when it names it (this
    package's optimizers match ``variable.path``); for Keras optimizers it is
    registered with ``Optimizer.exclude_from_weight_decay(var_names=...)``,
    which matches the short ``variable.name``.
    """
    cls = optimizer_class(opt_cfg)
    args = {k: v for k, v in opt_cfg.arguments.items() if k not in RUNNER_OPTIMIZER_ARGS}
    if gradient_accumulation_steps and gradient_accumulation_steps > 1:
        args["gradient_accumulation_steps"] = gradient_accumulation_steps
    if scale is not None and uses_scale_invariant_clock(cls):
        args["scale"] = scale
    if takes_inner_optimizer(cls):
        return _build_wrapper(opt_cfg, cls, args, learning_rate)
    keras_exclusions = None
    if "exclude_from_weight_decay" in args and uses_keras_weight_decay_exclusions(cls):
        keras_exclusions = args.pop("exclude_from_weight_decay")
    if opt_cfg.keras_form:
        optimizer = _get_through_keras(opt_cfg, cls, {**args, "learning_rate": learning_rate})
    else:
        optimizer = cls(learning_rate=learning_rate, **args)
    if keras_exclusions:
        target = getattr(optimizer, "inner_optimizer", optimizer)
        target.exclude_from_weight_decay(var_names=list(keras_exclusions))
    return optimizer


def _build_wrapper(opt_cfg, cls, args, learning_rate):
    """A wrapper optimizer around its inner one, which takes the learning rate."""
    if not opt_cfg.keras_form:
        return cls(build_optimizer(inner_section(opt_cfg), learning_rate), **args)
    inner = dict(args.get("inner_optimizer") or {})
    inner["config"] = {**(inner.get("config") or {}), "learning_rate": learning_rate}
    return _get_through_keras(opt_cfg, cls, {**args, "inner_optimizer": inner})


def _get_through_keras(opt_cfg, cls, config):
    import keras

    identifier = {"class_name": opt_cfg.class_name or cls.__name__, "config": config}
    if opt_cfg.module:
        identifier["module"] = opt_cfg.module
    if opt_cfg.registered_name:
        identifier["registered_name"] = opt_cfg.registered_name
    # This package's optimizers are registered as 'tf_largebatch>NAME'; the
    # scope lets a bare class_name find them as well.
    with keras.saving.custom_object_scope(registry.package_optimizers()):
        return keras.optimizers.get(identifier)


def model_arguments(cfg):
    """The model builder's keyword arguments: ``model.args`` and the task's data keys."""
    task = registry.TASKS.get(cfg.task, "task")
    args = dict(cfg.model.args)
    for argument, key in task.model_inputs.items():
        args[argument] = value_at(cfg, key)
    return args


def build_model(cfg):
    """The uncompiled ``keras.Model`` of ``cfg.model`` (inside the caller's strategy scope)."""
    return registry.MODELS.get(cfg.model.name, "model.name").load()(**model_arguments(cfg))
