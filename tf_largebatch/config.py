"""Experiment configuration for ``tf-largebatch train``: YAML -> validated dataclasses.

A config file is a YAML mapping with these sections (every key is optional
unless marked required; unknown keys are errors)::

    name: resnet50_lars_32k_v3-1024        # required
    source: "MLPerf ..."                    # where the numbers come from
    task: imagenet | cifar10 | bert_pretraining            # required
    strategy:  {type: one_device|mirrored|multi_worker|tpu, tpu, devices, num_cpu_replicas}
    precision: float32 | mixed_bfloat16 | mixed_float16
    data:      {name, data_dir, train_files, eval_files, image_size, seq_length, ...}
    model:     {name, args: {...}}          # args checked against the builder
    optimizer: {name, args: {...}}          # any tf_largebatch.optimizers or keras.optimizers class
    schedule:  {name, learning_rate, warmup_steps | warmup_epochs, ...}
    loss:      {label_smoothing}
    training:  {global_batch_size, steps | epochs, steps_per_loop, steps_per_execution,
                gradient_accumulation_steps, model_dir, ...}
    callbacks: {tensorboard, backup_and_restore, checkpoints, gsnr_monitor}
    phases:    [ {name, <any of the sections above, merged over the base>} , ...]
    smoke:     {<sections merged over the base by --smoke>}

Every error names the key path and what was expected, e.g.
``optimizer.args.momentum: expected a number, got 'abc'``, and is raised by
:func:`load_config` before anything is built or trained.
"""

import copy
import dataclasses
import inspect
import math
import numbers
import os
import re
import typing
from typing import Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A configuration problem, with the key path it concerns."""

    def __init__(self, path, message):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


# --------------------------------------------------------------------------- schema


@dataclasses.dataclass
class StrategyConfig:
    """How replicas are laid out.

    ``type``: ``one_device`` (default: the first GPU, else the CPU),
    ``mirrored`` (all local GPUs, or ``devices``, or ``num_cpu_replicas`` logical
    CPUs for testing), ``multi_worker`` (``MultiWorkerMirroredStrategy`` from the
    ``TF_CONFIG`` environment variable), ``tpu`` (``TPUClusterResolver`` with the
    TPU name or ``grpc://`` address in ``tpu``; empty on a TPU VM).
    """

    type: Literal["one_device", "mirrored", "multi_worker", "tpu"] = "one_device"
    tpu: Optional[str] = None
    tpu_zone: Optional[str] = None
    tpu_project: Optional[str] = None
    devices: Optional[list[str]] = None
    num_cpu_replicas: Optional[int] = None


@dataclasses.dataclass
class DataConfig:
    """Where examples come from and how they are shaped.

    ``name`` is a tensorflow-datasets name (``imagenet2012``, ``cifar10``, or a
    text dataset such as ``wikipedia/20230601.en`` for BERT with on-the-fly
    masking); ``train_files``/``eval_files`` are TFRecord glob patterns that take
    precedence over ``name`` (ImageNet in the standard ``image/encoded`` format,
    BERT in Model Garden's pretraining format).
    """

    name: Optional[str] = None
    data_dir: Optional[str] = None
    download: bool = False  # let tensorflow-datasets download and prepare ``name`` (needs network)
    synthetic: bool = False  # random batches of the right shapes, made on the device: no files, no network
    train_split: str = "train"
    eval_split: Optional[str] = "validation"
    train_files: Optional[str] = None
    eval_files: Optional[str] = None
    num_train_examples: Optional[int] = None
    shuffle_buffer: int = 10_000
    cache: bool = False
    # images
    image_size: int = 224
    label_offset: int = 0
    # BERT
    seq_length: int = 128
    max_predictions_per_seq: int = 20
    vocabulary: Optional[str] = None
    text_feature: str = "text"
    lowercase: bool = True
    mask_rate: float = 0.15


@dataclasses.dataclass
class ModelConfig:
    """``name`` selects a builder in :mod:`tf_largebatch.pipelines.models`;
    ``args`` are its keyword arguments (checked against its signature)."""

    name: str = ""
    args: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class OptimizerConfig:
    """``name``: a class of ``tf_largebatch.optimizers`` (SNGM, LARS, LAMB, VR*,
    ...) or of ``keras.optimizers`` (SGD, Adam, ...); ``args``: its keyword
    arguments except ``learning_rate`` (from ``schedule``) and
    ``gradient_accumulation_steps`` (from ``training``)."""

    name: str = ""
    args: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ScheduleConfig:
    """The learning-rate schedule, from :mod:`tf_largebatch.schedules`.

    ``name``: ``constant``; ``warmup_polynomial`` (``power``,
    ``end_learning_rate``); ``warmup_cosine`` (``alpha``); ``warmup_step``
    (``boundaries_epochs`` or ``boundaries``, ``decay_rate``). ``learning_rate``
    is the peak (post-warm-up) value for the config's global batch size. The
    warm-up is ``warmup_steps`` or ``warmup_epochs``; the decay runs from the
    end of the warm-up to the last training step unless ``decay_steps`` is set.
    """

    name: Literal["constant", "warmup_polynomial", "warmup_cosine", "warmup_step"] = "constant"
    learning_rate: float = 0.0
    warmup_steps: Optional[int] = None
    warmup_epochs: Optional[float] = None
    decay_steps: Optional[int] = None
    end_learning_rate: float = 0.0
    power: float = 1.0
    alpha: float = 0.0
    boundaries: Optional[list[int]] = None
    boundaries_epochs: Optional[list[float]] = None
    decay_rate: float = 0.1
    initial_learning_rate: float = 0.0


@dataclasses.dataclass
class LossConfig:
    label_smoothing: float = 0.0


@dataclasses.dataclass
class TrainingConfig:
    """How long and in which chunks.

    ``global_batch_size`` is the number of examples per optimizer step, over
    all replicas and accumulation micro-steps; each micro-step sees
    ``global_batch_size / gradient_accumulation_steps`` examples. Training runs
    ``steps`` optimizer steps (or ``epochs`` passes over ``num_train_examples``),
    in loops of ``steps_per_loop`` steps: one Keras epoch, i.e. one log line,
    evaluation, checkpoint and backup. ``steps_per_execution`` steps run per
    host call (TPU host loops).
    """

    global_batch_size: int = 0
    steps: Optional[int] = None
    epochs: Optional[float] = None
    steps_per_loop: int = 1000
    steps_per_execution: int = 1
    gradient_accumulation_steps: int = 1
    eval_steps: Optional[int] = None
    jit_compile: Union[bool, Literal["auto"]] = "auto"
    model_dir: str = "/tmp/tf_largebatch_run"
    initial_weights: Optional[str] = None
    seed: int = 0
    verbose: int = 1


@dataclasses.dataclass
class CallbacksConfig:
    tensorboard: bool = True
    backup_and_restore: bool = True
    checkpoints: bool = True
    max_to_keep: int = 3  # loop checkpoints kept (the newest)
    best_metric: Optional[str] = "val_loss"  # also keep the best checkpoint on this metric; null: none
    profile_batch: Union[int, str, None] = None  # TensorBoard profiling: a batch number or "start,stop"
    gsnr_monitor: Optional[dict] = None


@dataclasses.dataclass
class ExperimentConfig:
    name: str = ""
    task: Literal["imagenet", "cifar10", "bert_pretraining"] = "imagenet"
    source: str = ""
    strategy: StrategyConfig = dataclasses.field(default_factory=StrategyConfig)
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    callbacks: CallbacksConfig = dataclasses.field(default_factory=CallbacksConfig)
    phase: str = ""

    # ------------------------------------------------------------ derived values
    @property
    def micro_batch_size(self):
        """Examples per Keras step (one accumulation micro-step, all replicas)."""
        return self.training.global_batch_size // self.training.gradient_accumulation_steps

    def steps_per_epoch(self):
        """Optimizer steps per pass over ``data.num_train_examples``."""
        return self.data.num_train_examples / self.training.global_batch_size

    def total_steps(self):
        """Optimizer steps of this phase."""
        if self.training.steps is not None:
            return self.training.steps
        return max(1, math.ceil(self.training.epochs * self.steps_per_epoch()))

    def warmup_steps(self):
        if self.schedule.warmup_steps is not None:
            return self.schedule.warmup_steps
        if self.schedule.warmup_epochs is not None:
            return int(round(self.schedule.warmup_epochs * self.steps_per_epoch()))
        return 0


REQUIRED = {"name", "task", "training.global_batch_size", "optimizer.name", "model.name"}


# --------------------------------------------------------------------------- checking


def _describe(value):
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


def _expected(annotation):
    """A human description of a type annotation."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if annotation is dict:
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"a list of {_expected(item).removeprefix('a ').removeprefix('an ')}s"
    if origin is Union:
        parts = [_expected(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(parts)
    if dataclasses.is_dataclass(annotation):
        return "a mapping"
    return str(annotation)


def _check_value(annotation, value, path):
    """Returns ``value`` converted to ``annotation`` or raises ConfigError."""
    origin = typing.get_origin(annotation)
    if origin is Union:
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(arg, value, path)
            except ConfigError:
                continue
        raise ConfigError(path, f"expected {_expected(annotation)}, got {_describe(value)}")
    if dataclasses.is_dataclass(annotation):
        return _build_dataclass(annotation, value, path)
    ok = True
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif annotation is str:
        ok = isinstance(value, str)
    elif annotation is dict:
        ok = isinstance(value, dict)
    elif origin is Literal:
        ok = value in typing.get_args(annotation) and not (
            isinstance(value, bool) and True not in typing.get_args(annotation)
        )
    elif origin is list:
        if not isinstance(value, list):
            ok = False
        else:
            (item,) = typing.get_args(annotation)
            return [_check_value(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if not ok:
        raise ConfigError(path, f"expected {_expected(annotation)}, got {_describe(value)}")
    return value


def _build_dataclass(cls, raw, path):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path or "<top level>", f"expected a mapping, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(key_path, f"unknown key; expected one of: {', '.join(sorted(fields))}")
        kwargs[key] = _check_value(hints[key], value, key_path)
    return cls(**kwargs)


# --------------------------------------------------------------------------- semantics


def _check_positive(path, value, minimum=1):
    if value is not None and value < minimum:
        raise ConfigError(path, f"expected an integer >= {minimum}, got {value!r}")


def _validate_semantics(cfg, prefix):
    """Cross-field checks; ``prefix`` is the phase's path (``phases[1].``) or ''."""
    p = prefix
    for key in sorted(REQUIRED):
        section, _, field = key.partition(".")
        value = getattr(getattr(cfg, section), field) if field else getattr(cfg, section)
        if value in ("", 0, None):
            raise ConfigError(p + key, "required")
    t = cfg.training
    _check_positive(p + "training.global_batch_size", t.global_batch_size)
    _check_positive(p + "training.gradient_accumulation_steps", t.gradient_accumulation_steps)
    _check_positive(p + "training.steps_per_loop", t.steps_per_loop)
    _check_positive(p + "training.steps_per_execution", t.steps_per_execution)
    _check_positive(p + "training.steps", t.steps)
    _check_positive(p + "training.eval_steps", t.eval_steps, 0)
    if (t.steps_per_loop * t.gradient_accumulation_steps) % t.steps_per_execution:
        raise ConfigError(
            p + "training.steps_per_execution",
            f"must divide the Keras steps per loop (steps_per_loop x gradient_accumulation_steps = "
            f"{t.steps_per_loop * t.gradient_accumulation_steps}), got {t.steps_per_execution}",
        )
    if t.global_batch_size % t.gradient_accumulation_steps:
        raise ConfigError(
            p + "training.gradient_accumulation_steps",
            f"must divide training.global_batch_size ({t.global_batch_size}), got {t.gradient_accumulation_steps}",
        )
    if (t.steps is None) == (t.epochs is None):
        raise ConfigError(p + "training", "expected exactly one of 'steps' and 'epochs'")
    needs_examples = t.epochs is not None or cfg.schedule.warmup_epochs is not None or cfg.schedule.boundaries_epochs
    if needs_examples and not cfg.data.num_train_examples:
        raise ConfigError(p + "data.num_train_examples", "required when epochs are given (training.epochs, "
                          "schedule.warmup_epochs or schedule.boundaries_epochs)")
    if t.epochs is not None and t.epochs <= 0:
        raise ConfigError(p + "training.epochs", f"expected a number > 0, got {t.epochs!r}")
    s = cfg.schedule
    if s.warmup_steps is not None and s.warmup_epochs is not None:
        raise ConfigError(p + "schedule", "expected at most one of 'warmup_steps' and 'warmup_epochs'")
    if not s.learning_rate > 0:
        raise ConfigError(p + "schedule.learning_rate", f"expected a number > 0, got {s.learning_rate!r}")
    if s.name == "warmup_step" and not (s.boundaries or s.boundaries_epochs):
        raise ConfigError(p + "schedule.boundaries", "required by the 'warmup_step' schedule "
                          "(or schedule.boundaries_epochs)")
    if cfg.warmup_steps() >= cfg.total_steps() and s.name != "constant":
        raise ConfigError(p + "schedule.warmup_steps", f"the warm-up ({cfg.warmup_steps()} steps) must be "
                          f"shorter than training ({cfg.total_steps()} steps)")
    if s.decay_steps is not None:
        _check_positive(p + "schedule.decay_steps", s.decay_steps)
    if cfg.task in ("imagenet", "cifar10", "bert_pretraining") and not (cfg.data.name or cfg.data.train_files):
        raise ConfigError(p + "data", "expected 'name' (a tensorflow-datasets name) or 'train_files' "
                          "(TFRecord pattern)")
    if cfg.strategy.type == "mirrored" and cfg.strategy.devices and cfg.strategy.num_cpu_replicas:
        raise ConfigError(p + "strategy", "expected at most one of 'devices' and 'num_cpu_replicas'")
    _check_positive(p + "strategy.num_cpu_replicas", cfg.strategy.num_cpu_replicas)
    if not 0 <= cfg.loss.label_smoothing < 1:
        raise ConfigError(p + "loss.label_smoothing", f"expected a number in [0, 1), got {cfg.loss.label_smoothing!r}")
    if cfg.callbacks.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError(p + "callbacks.tensorboard", "needs the tensorboard package "
                              "(pip install tensorboard), or set it to false")
    _validate_optimizer(cfg.optimizer, p + "optimizer")
    if cfg.callbacks.gsnr_monitor is not None:
        _validate_gsnr_monitor(cfg, p + "callbacks.gsnr_monitor")
    _validate_model(cfg, p + "model")
    _validate_dataset_name(cfg.data, p + "data.name")


# Arguments the runner supplies itself.
_RUNNER_OPTIMIZER_ARGS = ("learning_rate", "gradient_accumulation_steps")


def known_optimizer_names():
    """Public optimizer classes of tf_largebatch.optimizers and keras.optimizers."""
    import keras

    from tf_largebatch import optimizers

    not_trainers = ("Optimizer", "LossScaleOptimizer", "LargeBatchOptimizer")  # bases and wrappers

    def names(module):
        return sorted(n for n in dir(module) if not n.startswith("_") and n not in not_trainers
                      and isinstance(getattr(module, n), type)
                      and issubclass(getattr(module, n), keras.optimizers.Optimizer))

    return names(optimizers), names(keras.optimizers)


def resolve_optimizer_class(name, path="optimizer.name"):
    """``tf_largebatch.optimizers.<name>``, else ``keras.optimizers.<name>``."""
    import keras

    from tf_largebatch import optimizers

    for module in (optimizers, keras.optimizers):
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, keras.optimizers.Optimizer) and name != "Optimizer":
            return cls
    ours, theirs = known_optimizer_names()
    raise ConfigError(path, f"unknown optimizer {name!r}; expected one of tf_largebatch.optimizers "
                      f"({', '.join(ours)}) or keras.optimizers ({', '.join(theirs)})")


def _constructor_parameters(cls):
    """Named constructor parameters along the class (and inner optimizer)
    hierarchy, first definition wins: used to check ``optimizer.args``."""
    parameters = {}
    classes = list(cls.__mro__)
    inner = getattr(cls, "_inner_class", None)
    if inner is not None:
        try:
            classes += list(inner().__mro__)
        except Exception:  # noqa: BLE001 - an inner class that is not importable yet
            pass
    for klass in classes:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for param in inspect.signature(init).parameters.values():
            if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL) or param.name == "self":
                continue
            parameters.setdefault(param.name, param)
    return parameters


def _validate_optimizer(opt_cfg, path):
    cls = resolve_optimizer_class(opt_cfg.name, path + ".name")
    parameters = _constructor_parameters(cls)
    for key, value in opt_cfg.args.items():
        key_path = f"{path}.args.{key}"
        if key in _RUNNER_OPTIMIZER_ARGS:
            where = "schedule" if key == "learning_rate" else "training.gradient_accumulation_steps"
            raise ConfigError(key_path, f"set by the runner; put it in {where}")
        if key not in parameters:
            known = sorted(k for k in parameters if k not in _RUNNER_OPTIMIZER_ARGS + ("name",))
            raise ConfigError(key_path, f"unknown argument of {opt_cfg.name}; expected one of: {', '.join(known)}")
        default = parameters[key].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(key_path, f"expected true or false, got {_describe(value)}")
        elif isinstance(default, numbers.Real) and value is not None:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ConfigError(key_path, f"expected a number, got {_describe(value)}")
    # Construct once: the class's own checks (ranges, unknown arguments). In a
    # throw-away graph, so validation does not start TensorFlow's eager runtime:
    # MultiWorkerMirroredStrategy must be created before that happens.
    import tensorflow as tf

    try:
        with tf.Graph().as_default():
            build_optimizer(opt_cfg, learning_rate=0.1, gradient_accumulation_steps=None)
    except TypeError as error:
        raise ConfigError(path + ".args", f"not accepted by {opt_cfg.name}: {error}") from None
    except ValueError as error:
        raise ConfigError(path + ".args", f"rejected by {opt_cfg.name}: {error}") from None


def build_optimizer(opt_cfg, learning_rate, gradient_accumulation_steps=None):
    """The optimizer of ``opt_cfg`` with the runner's learning rate/accumulation.

    ``exclude_from_weight_decay`` / ``exclude_from_layer_adaptation`` go to the
    constructor when it names them (this package's optimizers match
    ``variable.path``); for Keras optimizers the weight-decay exclusions are
    registered with ``Optimizer.exclude_from_weight_decay(var_names=...)``,
    which matches the short ``variable.name``.
    """
    cls = resolve_optimizer_class(opt_cfg.name)
    args = dict(opt_cfg.args)
    if gradient_accumulation_steps and gradient_accumulation_steps > 1:
        args["gradient_accumulation_steps"] = gradient_accumulation_steps
    explicit = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            explicit |= set(inspect.signature(init).parameters)
    keras_exclusions = None
    if "exclude_from_weight_decay" in args and "exclude_from_weight_decay" not in explicit:
        inner = getattr(cls, "_inner_class", None)
        inner_params = set()
        if inner is not None:
            for klass in inner().__mro__:
                init = klass.__dict__.get("__init__")
                if init is not None:
                    inner_params |= set(inspect.signature(init).parameters)
        if "exclude_from_weight_decay" not in inner_params:
            keras_exclusions = args.pop("exclude_from_weight_decay")
    optimizer = cls(learning_rate=learning_rate, **args)
    if keras_exclusions:
        target = getattr(optimizer, "inner_optimizer", optimizer)
        target.exclude_from_weight_decay(var_names=list(keras_exclusions))
    return optimizer


def _validate_gsnr_monitor(cfg, path):
    """GSNRMonitor reads the statistics a VR optimizer computes; its arguments
    (except ``log_dir`` and ``global_batch_size``, set by the runner) are checked."""
    from tf_largebatch import optimizers
    from tf_largebatch.callbacks import GSNRMonitor

    if not issubclass(resolve_optimizer_class(cfg.optimizer.name), optimizers.VR):
        raise ConfigError(path, f"needs a VR optimizer (VR, VRSGD, VRMomentum, VRAdam, VRLAMB, VRLARS), "
                          f"got {cfg.optimizer.name!r}")
    params = inspect.signature(GSNRMonitor.__init__).parameters
    for key, value in cfg.callbacks.gsnr_monitor.items():
        allowed = [n for n in params if n not in ("self", "log_dir", "global_batch_size")]
        if key not in allowed and key != "log_dir":
            raise ConfigError(f"{path}.{key}", f"unknown argument of GSNRMonitor; expected one of: {', '.join(allowed)}")
        default = params[key].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{path}.{key}", f"expected true or false, got {_describe(value)}")
        elif isinstance(default, numbers.Real) and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise ConfigError(f"{path}.{key}", f"expected a number, got {_describe(value)}")


def _validate_model(cfg, path):
    from tf_largebatch.pipelines import models

    builder = models.BUILDERS.get(cfg.model.name)
    if builder is None:
        raise ConfigError(path + ".name", f"unknown model {cfg.model.name!r}; expected one of "
                          f"{', '.join(sorted(models.BUILDERS))}")
    if cfg.model.name not in models.MODELS_FOR_TASK[cfg.task]:
        raise ConfigError(path + ".name", f"model {cfg.model.name!r} does not fit task {cfg.task!r}; expected "
                          f"one of {', '.join(models.MODELS_FOR_TASK[cfg.task])}")
    params = inspect.signature(builder).parameters
    for key, value in cfg.model.args.items():
        if key not in params or key in models.SUPPLIED_BY_RUNNER:
            allowed = [n for n in params if n not in models.SUPPLIED_BY_RUNNER]
            raise ConfigError(f"{path}.args.{key}", f"unknown argument of model {cfg.model.name!r}; "
                              f"expected one of: {', '.join(allowed)}")
        default = params[key].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{path}.args.{key}", f"expected true or false, got {_describe(value)}")
        elif isinstance(default, numbers.Real):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ConfigError(f"{path}.args.{key}", f"expected a number, got {_describe(value)}")


def _validate_dataset_name(data_cfg, path):
    if data_cfg.train_files or not data_cfg.name:
        return
    import tensorflow_datasets as tfds

    base = data_cfg.name.split("/")[0].split(":")[0]
    if base not in tfds.list_builders(with_community_datasets=False):
        raise ConfigError(path, f"unknown tensorflow-datasets dataset {data_cfg.name!r} "
                          "(see tfds.list_builders()), or give data.train_files")


# --------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that also reads ``1e-4`` and ``2E5`` as floats (YAML 1.2
    style); plain YAML 1.1 wants ``1.0e-4`` and would give the string '1e-4'."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def deep_merge(base, override):
    """``override`` merged into a copy of ``base`` (mappings merge, the rest replaces)."""
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text):
    """``'a.b.c=value'`` -> ``(['a', 'b', 'c'], value)`` with ``value`` read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", f"expected key.path=value, got {text!r}")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise ConfigError("--set", f"expected key.path=value, got {text!r}")
    try:
        parsed = yaml.load(value, Loader=_Loader) if value.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(key, f"value is not valid YAML: {error}") from None
    return parts, parsed


def apply_overrides(raw, overrides):
    """Applies ``--set`` overrides (``phases.1.training.steps=...`` indexes phases)."""
    raw = copy.deepcopy(raw)
    for text in overrides or ():
        parts, value = parse_override(text)
        node = raw
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                try:
                    node = node[int(part)]
                except (ValueError, IndexError):
                    raise ConfigError(".".join(parts[: i + 1]), f"no such list entry in {text!r}") from None
                continue
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, (dict, list)):
                raise ConfigError(".".join(parts[: i + 1]), f"is {child!r}, not a mapping; cannot set {text!r}")
            node = child
        if isinstance(node, list):
            raise ConfigError(".".join(parts), "cannot replace a whole list entry; set one of its keys")
        node[parts[-1]] = value
    return raw


def read_yaml(path):
    if not os.path.exists(path):
        raise ConfigError("--config", f"no such file: {path}")
    with open(path) as f:
        try:
            raw = yaml.load(f, Loader=_Loader)
        except yaml.YAMLError as error:
            raise ConfigError("--config", f"{path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError("<top level>", f"expected a mapping in {path}, got {_describe(raw)}")
    return raw


def smoke_overrides(task, file_smoke=None):
    """The task family's shrink-everything overrides, then the file's own ``smoke``."""
    from tf_largebatch.pipelines import SMOKE_OVERRIDES

    return deep_merge(SMOKE_OVERRIDES.get(task, {}), file_smoke or {})


def _split_overrides(overrides, num_phases):
    """``--set`` values for every phase, and per phase (``phases.<i>.key=value``)."""
    common, per_phase = [], {}
    for text in overrides or ():
        if text.startswith("phases."):
            index_text, _, rest = text[len("phases."):].partition(".")
            if not index_text.isdigit() or int(index_text) >= num_phases or not rest:
                raise ConfigError("--set", f"{text!r}: expected phases.<index>.key=value with index < {num_phases}")
            per_phase.setdefault(int(index_text), []).append(rest)
        else:
            common.append(text)
    return common, per_phase


def _phase_error(error, prefix, phase):
    head = error.path.split(".")[0].split("[")[0]
    path = prefix + error.path if head in phase else error.path
    return ConfigError(path, str(error)[len(error.path) + 2:])


def resolve_phases(raw, *, smoke=False, overrides=()):
    """Validated configs, one per phase (one if the file has no ``phases``).

    Order of precedence (last wins): the file's base sections, the phase's
    sections, the smoke overrides (``--smoke``), then ``--set`` (``phases.<i>.``
    for one phase only).
    """
    raw = copy.deepcopy(raw)
    phases = raw.pop("phases", None)
    file_smoke = raw.pop("smoke", None)
    if file_smoke is not None and not isinstance(file_smoke, dict):
        raise ConfigError("smoke", f"expected a mapping, got {_describe(file_smoke)}")
    patch = smoke_overrides(raw.get("task"), file_smoke) if smoke else {}
    if phases is None:
        merged = apply_overrides(deep_merge(raw, patch), overrides)
        cfg = _build_dataclass(ExperimentConfig, merged, "")
        _validate_semantics(cfg, "")
        return [cfg]
    if not isinstance(phases, list) or not phases or not all(isinstance(p, dict) for p in phases):
        raise ConfigError("phases", "expected a non-empty list of mappings")
    common, per_phase = _split_overrides(overrides, len(phases))
    configs = []
    for index, phase in enumerate(phases):
        prefix = f"phases[{index}]."
        phase = dict(phase)
        name = phase.pop("name", f"phase_{index + 1}")
        merged = deep_merge(deep_merge(raw, phase), patch)
        merged = apply_overrides(merged, common + per_phase.get(index, []))
        merged["phase"] = str(name)
        try:
            cfg = _build_dataclass(ExperimentConfig, merged, "")
            _validate_semantics(cfg, "")
        except ConfigError as error:
            raise _phase_error(error, prefix, phase) from None
        configs.append(cfg)
    names = [c.phase for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError("phases", f"phase names must be unique, got {names}")
    return configs


def load_config(path, *, overrides=(), smoke=False):
    """Reads, merges (smoke, ``--set``) and validates a config file.

    Args:
        path: YAML file.
        overrides: ``["a.b.c=value", ...]``, values read as YAML.
        smoke: merge the task family's smoke overrides and the file's ``smoke``
            section (tiny model, data and step counts).

    Returns:
        A list of :class:`ExperimentConfig`, one per training phase.

    Raises:
        ConfigError: naming the key path and what was expected.
    """
    return resolve_phases(read_yaml(path), smoke=smoke, overrides=overrides)


def to_dict(cfg):
    return dataclasses.asdict(cfg)


__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "load_config",
    "resolve_phases",
    "build_optimizer",
    "resolve_optimizer_class",
]
