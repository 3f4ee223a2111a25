"""The explicit registry of tasks, models, schedules and optimizers a config can name.

In the style of Model Garden's factories (``task_factory``,
``exp_factory``): each task, model and optimizer family is registered once
here, by name, and every other module looks it up here instead of comparing
``cfg.task`` with string literals. Registering is cheap: pipelines and model
builders are named by dotted path and imported only when a config is checked
or built, so importing the registry (``--help``) loads neither TensorFlow nor
the pipelines.

A task names its input pipeline (a module with ``make_datasets(cfg)``), the
models that fit it, the data keys the runner hands to the model builder, its
loss and metrics, the metric names ``fit`` logs, its synthetic batches, and its
``--smoke`` overrides: what shrinks a config so it trains end to end on a CPU in
seconds. A schedule names its builder and the ``schedule`` keys only it reads.

References:
    TensorFlow Model Garden, ``official/core/task_factory.py`` and
    ``official/core/exp_factory.py`` (registration by name).
"""

import copy
import dataclasses
import difflib
import importlib
from typing import Callable, Optional

from tf_largebatch.config.errors import ConfigError


def deep_merge(base, override):
    """``override`` merged into a copy of ``base`` (mappings merge, the rest replaces)."""
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def unknown_name_message(kind, name, known):
    """``unknown <kind> 'x'; expected one of: ...`` with a close match first if there is one."""
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; expected one of: {', '.join(sorted(known))}"


class Registry:
    """Entries by name; an unknown name is a ConfigError listing the known ones.

    Args:
        kind: what the entries are (``task``, ``model``), for messages.
    """

    def __init__(self, kind):
        self.kind = kind
        self._entries = {}

    def register(self, entry):
        """Adds ``entry`` (anything with a ``name``); a second entry of one name is an error."""
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is already registered")
        self._entries[entry.name] = entry
        return entry

    def get(self, name, path):
        """The entry called ``name``; ``path`` is the key path for the error."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(path, unknown_name_message(self.kind, name, list(self._entries))) from None

    def names(self):
        return sorted(self._entries)


def _load(dotted):
    """``'package.module:attribute'`` -> the attribute; ``'package.module'`` -> the module."""
    module_name, _, attribute = dotted.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model builder.

    Args:
        name: the ``model.name`` that selects it.
        builder: ``'module:function'`` returning an uncompiled ``keras.Model``.
        check_args: ``(args, path) -> None``, raising ConfigError for values the
            signature cannot rule out (called before anything is built).
    """

    name: str
    builder: str
    check_args: Optional[Callable] = None

    def load(self):
        return _load(self.builder)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A task: its input pipeline, the models that fit it, what it trains on, and its smoke overrides.

    Args:
        name: the ``task`` that selects it.
        input_module: dotted name of a module with ``make_datasets(cfg)``.
        models: the ``model.name`` values that fit the task.
        model_inputs: ``{builder argument: data key}`` the runner hands to the
            model builder (not allowed in ``model.args``).
        smoke: the sections ``--smoke`` merges over a config of this task.
        objective: ``'module:function'``, ``function(cfg) -> (loss, metrics,
            weighted_metrics)`` for ``Model.compile``.
        metrics: the names ``fit`` logs for the task (without ``val_``): what
            ``callbacks.best_metric`` may name.
        synthetic_batch: ``'module:function'``, ``function(cfg) ->
            make_batch(seed, index)`` drawing a batch of the input's structure
            (``data.synthetic``).
    """

    name: str
    input_module: str
    models: tuple
    model_inputs: dict
    smoke: dict
    objective: str
    metrics: tuple
    synthetic_batch: str

    def load_inputs(self):
        return _load(self.input_module)

    def load_objective(self):
        return _load(self.objective)

    def load_synthetic_batch(self):
        return _load(self.synthetic_batch)


def _check_cifar_resnet_depth(args, path):
    from tf_largebatch.pipelines.resnet_depth import blocks_per_stage  # no TensorFlow import

    try:
        if "depth" in args:  # the builders' defaults (20, 56) are valid
            blocks_per_stage(args["depth"])
    except ValueError as error:
        raise ConfigError(f"{path}.depth", str(error)) from None


MODELS = Registry("model")
MODELS.register(ModelSpec("resnet50", "tf_largebatch.pipelines.models:resnet50"))
MODELS.register(ModelSpec("resnet20", "tf_largebatch.pipelines.models:resnet20", _check_cifar_resnet_depth))
MODELS.register(ModelSpec("resnet56", "tf_largebatch.pipelines.models:resnet56", _check_cifar_resnet_depth))
MODELS.register(ModelSpec("bert", "tf_largebatch.pipelines.models:bert_pretrainer"))


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    """A ``schedule.name``: its builder and the keys only it reads.

    Args:
        name: the ``schedule.name`` that selects it.
        builder: ``'module:function'``, ``function(cfg)`` -> the learning rate
            (a schedule in optimizer updates, or a float).
        fields: the ``schedule`` keys this schedule reads beyond the common
            ones (``learning_rate``, the warm-up, ``decay_steps``); the other
            schedules' keys are errors in a config of this one.
        smoke: ``schedule`` keys ``--smoke`` sets for this schedule.
    """

    name: str
    builder: str
    fields: tuple = ()
    smoke: dict = dataclasses.field(default_factory=dict)

    def load(self):
        return _load(self.builder)


SCHEDULES = Registry("schedule")
SCHEDULES.register(ScheduleSpec("constant", "tf_largebatch.pipelines.learning_rates:constant"))
SCHEDULES.register(ScheduleSpec("warmup_polynomial", "tf_largebatch.pipelines.learning_rates:warmup_polynomial",
                                ("power", "end_learning_rate")))
SCHEDULES.register(ScheduleSpec("warmup_cosine", "tf_largebatch.pipelines.learning_rates:warmup_cosine",
                                ("alpha",)))
SCHEDULES.register(ScheduleSpec("warmup_step", "tf_largebatch.pipelines.learning_rates:warmup_step",
                                ("boundaries", "boundaries_epochs", "decay_rate"),
                                smoke={"boundaries": [1], "boundaries_epochs": None}))
#: The keys of ``schedule`` that only some schedules read.
SCHEDULE_VARIANT_FIELDS = tuple(sorted({f for name in SCHEDULES.names() for f in SCHEDULES.get(name, "").fields}))


# What every task's --smoke changes: a small learning rate (the published peak
# rates are for huge batches), 2 steps, and k = 2 gradient samples for the VR
# optimizers (2 logical-CPU replicas).
_SMOKE_COMMON = {
    "strategy": {"type": "mirrored", "num_cpu_replicas": 2, "devices": None, "tpu": None},
    "precision": "float32",
    "training": {
        "global_batch_size": 4,
        "steps": 2,
        "epochs": None,
        "steps_per_loop": 1,
        "steps_per_execution": 1,
        "gradient_accumulation_steps": 1,
        "eval_steps": 1,
        "verbose": 2,
        "model_dir": "/tmp/tf_largebatch_smoke",
    },
    # (and each schedule's own smoke keys: ScheduleSpec.smoke)
    "schedule": {"learning_rate": 0.01, "warmup_steps": 1, "warmup_epochs": None, "decay_steps": None},
    "data": {"shuffle_buffer": 8, "cache": False},
}

_IMAGE_INPUTS = {"image_size": "data.image_size"}

TASKS = Registry("task")
_CLASSIFICATION_METRICS = ("loss", "accuracy")

TASKS.register(TaskSpec(
    "imagenet", "tf_largebatch.pipelines.imagenet", ("resnet50",), _IMAGE_INPUTS,
    # ResNet-50 is slow to compile twice: one device with 2 accumulation
    # micro-steps gives the 2 gradient samples. 64 pixels and 4 images per
    # micro-batch: at 32 pixels the last stage is 1x1, and batch norm over 2
    # values makes the gradients explode.
    deep_merge(_SMOKE_COMMON, {
        "data": {"image_size": 64},
        "strategy": {"type": "one_device", "num_cpu_replicas": None},
        "training": {"global_batch_size": 8, "gradient_accumulation_steps": 2},
    }),
    objective="tf_largebatch.pipelines.objectives:imagenet",
    metrics=(*_CLASSIFICATION_METRICS, "top5_accuracy"),
    synthetic_batch="tf_largebatch.pipelines.synthetic:image_batch_maker",
))
TASKS.register(TaskSpec(
    "cifar10", "tf_largebatch.pipelines.cifar", ("resnet20", "resnet56"), _IMAGE_INPUTS,
    deep_merge(_SMOKE_COMMON, {"data": {"image_size": 32}, "model": {"args": {"depth": 8, "width": 4}}}),
    objective="tf_largebatch.pipelines.objectives:cifar10",
    metrics=_CLASSIFICATION_METRICS,
    synthetic_batch="tf_largebatch.pipelines.synthetic:image_batch_maker",
))
TASKS.register(TaskSpec(
    "bert_pretraining", "tf_largebatch.pipelines.bert", ("bert",),
    {"seq_length": "data.seq_length", "max_predictions_per_seq": "data.max_predictions_per_seq"},
    deep_merge(_SMOKE_COMMON, {
        "model": {"args": {"num_layers": 1, "num_heads": 2, "hidden_dim": 16, "intermediate_dim": 32}},
    }),
    objective="tf_largebatch.pipelines.objectives:bert_pretraining",
    metrics=("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy"),
    synthetic_batch="tf_largebatch.pipelines.synthetic:bert_batch_maker",
))


# ------------------------------------------------------------------ optimizers
# Optimizer names live in one registry, tf_largebatch.optimizers.registry.


def known_optimizer_names():
    """``(ours, keras')``: the optimizer classes of ``tf_largebatch.optimizers``
    and of ``keras.optimizers`` a config can name (wrappers are not)."""
    from tf_largebatch.optimizers import registry

    return registry.names(registry.PACKAGE), registry.names(registry.KERAS)


def resolve_optimizer_class(name, path="optimizer.name"):
    """``tf_largebatch.optimizers.<name>``, else ``keras.optimizers.<name>``."""
    from tf_largebatch.optimizers import registry

    entry = registry.lookup(name)
    if entry is not None and entry.role == registry.TRAINS:
        return entry.cls
    raise ConfigError(path, registry.unknown_name_message(name))


def package_optimizers():
    """``{name: class}`` of this package's optimizers, for Keras's deserialization."""
    from tf_largebatch.optimizers import registry

    return registry.classes(registry.PACKAGE)
