"""Checks of the machine a config is to run on, just before training.

:func:`check_environment` runs after :func:`~tf_largebatch.config.load_config`
in ``tf-largebatch train`` (not for ``--dry-run``, and not inside
``load_config``, so configs can be read and inspected anywhere): a TPU,
``TF_CONFIG``, placeholder paths, a writable ``model_dir``, the initial
weights. It raises :class:`ConfigError` with the key path before any strategy,
dataset or directory is created.
"""

import glob
import json
import os
import re
import tempfile

from tf_largebatch.config.checks import check_keras_accumulation, known_replicas
from tf_largebatch.config.errors import ConfigError
from tf_largebatch.config.schema import PATH_KEYS, value_at

# Placeholders the shipped configs carry for the user's bucket.
PLACEHOLDER = re.compile(r"\bYOUR_[A-Z_]+\b")
_DATA_KEYS = ("data.data_dir", "data.train_files", "data.eval_files", "data.vocabulary")


def _is_remote(path):
    return "://" in path


def tpu_visible():
    """Whether this machine shows a local TPU (a TPU VM): ``/dev/accel*``
    (v2-v4), ``/dev/vfio/<n>`` (v5 and later), or the ``TPU_NAME``/
    ``TPU_ACCELERATOR_TYPE`` variables of Cloud TPU images. Cheap: no TPU
    system is contacted."""
    if os.environ.get("TPU_NAME") or os.environ.get("TPU_ACCELERATOR_TYPE"):
        return True
    if glob.glob("/dev/accel*"):
        return True
    return any(name.isdigit() for name in (os.listdir("/dev/vfio") if os.path.isdir("/dev/vfio") else ()))


def check_environment(configs, *, smoke=False):
    """What a run needs of this machine, for every phase, before anything is built.

    Args:
        configs: the phases from :func:`~tf_largebatch.config.load_config`.
        smoke: the configs were shrunk with ``--smoke`` (placeholder data paths
            are then left to the pipelines' synthetic fallback).

    Raises:
        ConfigError: a TPU config without a TPU, ``multi_worker`` without
            ``TF_CONFIG``, a placeholder path (``gs://YOUR_BUCKET``), a
            ``model_dir`` that cannot be created, or missing initial weights.
    """
    for cfg in configs:
        try:
            _check_machine(cfg, smoke)
        except ConfigError as error:
            if len(configs) == 1:
                raise
            message = str(error)[len(error.path) + 2:]
            raise ConfigError(error.path, f"{message} (phase {cfg.phase!r})") from None
    _check_initial_weights(configs[0])


def _check_machine(cfg, smoke):
    s = cfg.strategy
    if s.type == "tpu" and not s.tpu and not tpu_visible():
        raise ConfigError("strategy.type", "'tpu' with an empty strategy.tpu means a TPU VM, and this machine "
                          "shows no TPU (no /dev/accel*, /dev/vfio/<n> or TPU_NAME). Try it with --smoke (CPU, "
                          "seconds), name a remote TPU with --set strategy.tpu=NAME, or run here with "
                          "--set strategy.type=mirrored")
    if s.type == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("strategy.type", "'multi_worker' reads the cluster from the TF_CONFIG environment "
                              "variable, which is not set (start every worker with its own TF_CONFIG)")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError as error:
            raise ConfigError("strategy.type", f"'multi_worker': TF_CONFIG is not valid JSON ({error})") from None
    for key in PATH_KEYS:
        value = value_at(cfg, key)
        if not value or not PLACEHOLDER.search(value):
            continue
        if key in _DATA_KEYS and (cfg.data.synthetic or smoke):
            continue
        raise ConfigError(key, f"{value!r} is a placeholder: set it to your own location "
                          f"(--set {key}=gs://my-bucket/...)")
    check_writable_directory(cfg.training.model_dir, "training.model_dir")
    check_keras_accumulation(cfg, known_replicas(s) or replicas_on_this_machine(s))


def replicas_on_this_machine(strategy_cfg):
    """Replicas of a strategy whose config does not say them, from this machine
    without starting TensorFlow's runtime: every local GPU (at least one
    device), times the workers of ``TF_CONFIG`` for ``multi_worker``;
    ``None`` for a TPU."""
    if strategy_cfg.type == "tpu":
        return None
    import tensorflow as tf

    local = max(1, len(tf.config.list_physical_devices("GPU")))  # physical: no runtime start
    if strategy_cfg.type != "multi_worker":
        return local
    cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
    workers = sum(len(cluster.get(role, ())) for role in ("chief", "worker"))
    return local * max(1, workers)


def check_writable_directory(directory, path):
    """``directory`` exists as a writable directory or can be created; nothing is left behind.

    Remote paths (``gs://``) are not checked here. The test creates and
    removes a temporary directory in the nearest existing ancestor.
    """
    if _is_remote(directory):
        return
    ancestor = os.path.abspath(directory)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ConfigError(path, f"{directory!r} cannot be a directory: {ancestor} is a file")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tf_largebatch_check_", dir=ancestor))
    except OSError as error:
        raise ConfigError(path, f"{directory!r} cannot be created or written in {ancestor} "
                          f"({error.strerror})") from None


def _check_initial_weights(cfg):
    weights = cfg.training.initial_weights
    if weights and not _is_remote(weights) and not os.path.isfile(weights):
        raise ConfigError("training.initial_weights", f"no such file: {weights}")
