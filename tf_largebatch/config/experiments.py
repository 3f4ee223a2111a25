"""The shipped experiment configs, by name (``tf-largebatch train --experiment NAME``).

They are package data (``tf_largebatch/tpu_configs/*.yaml``), so they come
with a ``pip install`` of the package, not only with a clone. Reading the list
does not import TensorFlow.
"""

import importlib.resources

from tf_largebatch.config.errors import ConfigError
from tf_largebatch.config.registry import unknown_name_message

_PACKAGE = "tf_largebatch"
_DIRECTORY = "tpu_configs"


def _directory():
    return importlib.resources.files(_PACKAGE) / _DIRECTORY


def experiment_names():
    """Names of the shipped experiments (their file names without ``.yaml``), sorted."""
    directory = _directory()
    if not directory.is_dir():
        return []
    return sorted(entry.name[: -len(".yaml")] for entry in directory.iterdir() if entry.name.endswith(".yaml"))


def experiment_path(name):
    """The file of the shipped experiment ``name`` (``.yaml`` may be given or not).

    Raises:
        ConfigError: for ``--experiment``, listing the shipped names.
    """
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    names = experiment_names()
    if stem not in names:
        raise ConfigError("--experiment", unknown_name_message("experiment", name, names))
    return str(_directory() / f"{stem}.yaml")
