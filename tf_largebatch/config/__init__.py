"""Experiment configuration for ``tf-largebatch train``: YAML -> checked dataclasses.

The layer is split by job, with no import of the pipelines at import time:

- :mod:`~tf_largebatch.config.schema`: the dataclasses (one per YAML section);
- :mod:`~tf_largebatch.config.typecheck`: YAML values against their annotations;
- :mod:`~tf_largebatch.config.arguments`: arguments against a callable's
  signature (optimizers, models, callbacks);
- :mod:`~tf_largebatch.config.registry`: the tasks (input, objective, metric
  names, synthetic batches, smoke overrides), models, schedules and optimizers a
  config can name (strategies: :data:`tf_largebatch.strategy.STRATEGIES`);
- :mod:`~tf_largebatch.config.checks`: checks across keys;
- :mod:`~tf_largebatch.config.environment`: checks of the machine, before training;
- :mod:`~tf_largebatch.config.loading`: YAML, ``--set``, ``--smoke``, phases;
- :mod:`~tf_largebatch.config.building`: the optimizer and the model;
- :mod:`~tf_largebatch.config.experiments`: the shipped configs by name.

Every error names the key path and what was expected, e.g.
``optimizer.args.momentum: expected a number, got 'abc'``, and is raised by
:func:`load_config` (or :func:`check_environment`) before anything is built
or trained.
"""

from tf_largebatch.config.building import build_model, build_optimizer, model_arguments
from tf_largebatch.config.checks import check_experiment
from tf_largebatch.config.environment import check_environment
from tf_largebatch.config.errors import ConfigError
from tf_largebatch.config.experiments import experiment_names, experiment_path
from tf_largebatch.config.loading import (apply_overrides, load_config, parse_override, read_yaml, resolve_phases,
                                          smoke_overrides, to_dict)
from tf_largebatch.config.registry import (MODELS, TASKS, deep_merge, known_optimizer_names,
                                           resolve_optimizer_class)
from tf_largebatch.config.schema import (REQUIRED, CallbacksConfig, DataConfig, ExperimentConfig, LossConfig,
                                         ModelConfig, OptimizerConfig, ScheduleConfig, StrategyConfig,
                                         TrainingConfig)

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "StrategyConfig",
    "DataConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "LossConfig",
    "TrainingConfig",
    "CallbacksConfig",
    "REQUIRED",
    "load_config",
    "resolve_phases",
    "read_yaml",
    "parse_override",
    "apply_overrides",
    "smoke_overrides",
    "deep_merge",
    "to_dict",
    "check_experiment",
    "check_environment",
    "build_optimizer",
    "build_model",
    "model_arguments",
    "resolve_optimizer_class",
    "known_optimizer_names",
    "TASKS",
    "MODELS",
    "experiment_names",
    "experiment_path",
]
