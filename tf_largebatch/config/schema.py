"""The schema of an experiment config: one dataclass per YAML section.

A config file is a YAML mapping with these sections (every key is optional
unless marked required; unknown keys are errors)::

    name: resnet50_lars_32k_v3-1024        # required
    source: "MLPerf ..."                    # where the numbers come from
    task: imagenet | cifar10 | bert_pretraining            # required (see registry)
    strategy:  {type: one_device|mirrored|multi_worker|tpu, tpu, tpu_zone, tpu_project | devices,
                num_cpu_replicas}              # keys of another type are errors
    precision: float32 | mixed_bfloat16 | mixed_float16
    data:      {name, data_dir, synthetic, train_files, eval_files, image_size, seq_length, ...}
    model:     {name, args: {...}}          # args checked against the builder
    optimizer: {name, args: {...}, inner: {name, args}}   # or Keras's own {class_name, config}
    schedule:  {name, learning_rate, warmup_steps | warmup_epochs, warmup_learning_rate,
                decay_steps, <the keys of the named schedule>}
    loss:      {label_smoothing}
    training:  {global_batch_size, base_global_batch_size, steps | epochs, steps_per_loop,
                steps_per_execution, gradient_accumulation_steps, model_dir, ...}
    callbacks: {tensorboard, backup_and_restore, checkpoints, max_to_keep, best_metric,
                profile_batch, gsnr_monitor}
    phases:    [ {name, <any of the sections above, merged over the base>} , ...]
    smoke:     {<sections merged over the base by --smoke>}

The dataclasses only describe the shape and defaults; values are type-checked
by :mod:`~tf_largebatch.config.typecheck` and cross-checked by
:mod:`~tf_largebatch.config.checks`. Each task's smoke overrides live with the
task in :mod:`~tf_largebatch.config.registry`.
"""

import dataclasses
import math
from typing import ClassVar, Literal, Optional, Union

from tf_largebatch.config.errors import ConfigError
from tf_largebatch.strategy import STRATEGIES


@dataclasses.dataclass
class StrategyConfig:
    """How replicas are laid out.

    ``type``: ``one_device`` (default: the first GPU, else the CPU),
    ``mirrored`` (all local GPUs, or ``devices``, or ``num_cpu_replicas`` logical
    CPUs for testing), ``multi_worker`` (``MultiWorkerMirroredStrategy`` from the
    ``TF_CONFIG`` environment variable), ``tpu`` (``TPUClusterResolver`` with the
    TPU name or ``grpc://`` address in ``tpu``; empty on a TPU VM).
    """

    type: Literal[tuple(STRATEGIES)] = "one_device"
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
    BERT in Model Garden's pretraining format). ``synthetic: true`` replaces
    both by random batches of the right shapes made on the device.
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
    """``name`` selects a model of the registry; ``args`` are its builder's
    keyword arguments (checked against its signature)."""

    name: str = ""
    args: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class OptimizerConfig:
    """The optimizer, in one of two forms.

    This package's form: ``name``, a class of ``tf_largebatch.optimizers``
    (SNGM, LARS, LAMB, VR*, ...) or of ``keras.optimizers`` (SGD, Adam, ...), and
    ``args``, its keyword arguments except ``learning_rate`` (from
    ``schedule``) and ``gradient_accumulation_steps`` (from ``training``).

    Keras's form: ``class_name`` and ``config`` (optionally ``module`` and
    ``registered_name``), exactly what ``keras.optimizers.serialize`` writes,
    resolved with ``keras.optimizers.get``; so ``optimizer.get_config()`` pastes
    in as it is. There ``config.learning_rate`` and
    ``config.gradient_accumulation_steps`` may appear but must agree with
    ``schedule.learning_rate`` and ``training.gradient_accumulation_steps``.
    In that form ``name`` is set to ``class_name``, so ``name`` always names
    the class.

    ``inner`` (this package's form only): the inner optimizer of an optimizer
    that wraps one (``AdaScale``, ``VR``), itself in the ``{name, args}``
    form; the learning rate from ``schedule`` goes to it, and
    ``gradient_accumulation_steps`` to the wrapper. In Keras's form the inner
    optimizer is ``config.inner_optimizer``, as ``get_config`` writes it.
    """

    name: str = ""
    args: dict = dataclasses.field(default_factory=dict)
    class_name: Optional[str] = None
    config: Optional[dict] = None
    module: Optional[str] = None
    registered_name: Optional[str] = None
    inner: Optional[dict] = None

    def __post_init__(self):
        if not self.keras_form:
            return
        if not self.class_name:
            raise ConfigError("optimizer.class_name", "required with optimizer.config")
        if self.args or self.name not in ("", self.class_name):
            raise ConfigError("optimizer", "expected either this package's form (name, args) or Keras's "
                              "(class_name, config), not both")
        if self.inner is not None:
            raise ConfigError("optimizer.inner", "this package's form only; in Keras's form the inner optimizer "
                              "is optimizer.config.inner_optimizer")
        self.name = self.class_name

    @property
    def keras_form(self):
        """Whether the section is in Keras's ``{class_name, config}`` form."""
        return self.class_name is not None or self.config is not None

    @property
    def arguments(self):
        """The constructor arguments, in either form."""
        return dict(self.config or {}) if self.keras_form else dict(self.args)

    @property
    def arguments_key(self):
        """Where the arguments are in the YAML section: ``config`` or ``args``."""
        return "config" if self.keras_form else "args"


@dataclasses.dataclass
class ScheduleConfig:
    """The learning-rate schedule, from :mod:`tf_largebatch.schedules`.

    ``name`` (registered in :data:`tf_largebatch.config.registry.SCHEDULES`):
    ``constant``; ``warmup_polynomial`` (``power``, ``end_learning_rate``);
    ``warmup_cosine`` (``alpha``); ``warmup_step`` (``boundaries_epochs`` or
    ``boundaries``, ``decay_rate``); a key of another schedule is an error.
    ``learning_rate`` is the peak (post-warm-up) value for the config's global
    batch size, ``warmup_learning_rate`` the value at step 0 (the start of the
    linear warm-up; Model Garden's ``warmup.linear.warmup_learning_rate``). The
    warm-up is ``warmup_steps`` or ``warmup_epochs``; the decay runs from the
    end of the warm-up to the last training step unless ``decay_steps`` is set.
    """

    name: str = "constant"
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
    warmup_learning_rate: float = 0.0


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
    host call (TPU host loops). ``model_dir`` and ``initial_weights`` expand
    ``~`` and ``$VARIABLES``.

    ``base_global_batch_size`` (with the ``AdaScale`` optimizer only): ``B_0``,
    the batch of the recipe being scaled. The run's scale is then
    ``S = global_batch_size / base_global_batch_size``, and ``steps`` or
    ``epochs`` and every length of ``schedule`` count updates *of the base
    run* (batch ``B_0``): AdaScale evaluates the schedule at its
    scale-invariant clock, and the runner stops training when the clock
    reaches the base run's updates (``StopAtScaleInvariantSteps``), after
    between ``1/S`` of them and all of them.
    """

    global_batch_size: int = 0
    base_global_batch_size: Optional[int] = None
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
    """The runner's callbacks.

    ``max_to_keep``: loop checkpoints kept (the newest); ``best_metric``: also
    keep the best checkpoint on this metric (null: none); ``profile_batch``:
    TensorBoard profiling, a batch number or ``"start,stop"``;
    ``gsnr_monitor``: arguments of :class:`tf_largebatch.callbacks.GSNRMonitor`
    (an optimizer that records gradient statistics: VR, or ``record_gradient_statistics``).
    """

    tensorboard: bool = True
    backup_and_restore: bool = True
    checkpoints: bool = True
    max_to_keep: int = 3
    best_metric: Optional[str] = "val_loss"
    profile_batch: Union[int, str, None] = None
    gsnr_monitor: Optional[dict] = None


@dataclasses.dataclass
class ExperimentConfig:
    name: str = ""
    task: str = ""
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

    #: Set by the loader (``phase``: a phase's ``name``), never given in a file.
    INTERNAL_KEYS: ClassVar[tuple] = ("phase",)
    #: Top-level keys of a file that are not sections of one phase (read by the loader).
    FILE_KEYS: ClassVar[tuple] = ("phases", "smoke")

    # ------------------------------------------------------------ derived values
    @property
    def micro_batch_size(self):
        """Examples per Keras step (one accumulation micro-step, all replicas)."""
        return self.training.global_batch_size // self.training.gradient_accumulation_steps

    @property
    def schedule_batch_size(self):
        """The batch whose updates ``steps``, ``epochs`` and the schedule count:
        ``training.base_global_batch_size`` if set (AdaScale), else the global batch."""
        return self.training.base_global_batch_size or self.training.global_batch_size

    def steps_per_epoch(self):
        """Optimizer steps per pass over ``data.num_train_examples`` (at :attr:`schedule_batch_size`)."""
        return self.data.num_train_examples / self.schedule_batch_size

    def total_steps(self):
        """Optimizer steps of this phase (base-run updates with AdaScale: an upper bound on its updates)."""
        if self.training.steps is not None:
            return self.training.steps
        return max(1, math.ceil(self.training.epochs * self.steps_per_epoch()))

    def warmup_steps(self):
        if self.schedule.warmup_steps is not None:
            return self.schedule.warmup_steps
        if self.schedule.warmup_epochs is not None:
            return int(round(self.schedule.warmup_epochs * self.steps_per_epoch()))
        return 0


# Keys without a usable default (checked after merging, with the phase's path).
REQUIRED = ("name", "task", "training.global_batch_size", "model.name")

# Keys renamed since an earlier release: the old key is an error naming the new one.
RENAMED_KEYS = {
    # Model Garden's ``initial_learning_rate`` is the peak of a decay; here the
    # value meant the start of the warm-up, which Model Garden calls ``warmup_learning_rate``.
    "schedule.initial_learning_rate": "schedule.warmup_learning_rate",
}

# Keys that hold files or directories: ``~`` and ``$VARIABLES`` are expanded in them.
PATH_KEYS = ("training.model_dir", "training.initial_weights", "data.data_dir", "data.train_files",
             "data.eval_files", "data.vocabulary")


def value_at(cfg, key):
    """The value of a dotted ``key`` (``training.model_dir``) of a config dataclass."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node
