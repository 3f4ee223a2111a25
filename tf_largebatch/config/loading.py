"""Reading a config: YAML, ``--set`` overrides, ``--smoke``, phases.

:func:`load_config` reads a file, merges (in order) the phase's sections, the
task's smoke overrides and ``--set`` values, type-checks the result against
the schema and checks it (:func:`~tf_largebatch.config.checks.check_experiment`).
Every error is a :class:`ConfigError` naming the key path.
"""

import copy
import dataclasses
import functools
import os
import re

from tf_largebatch.config import registry
from tf_largebatch.config.checks import check_experiment
from tf_largebatch.config.errors import ConfigError, describe
from tf_largebatch.config.registry import deep_merge
from tf_largebatch.config.schema import PATH_KEYS, ExperimentConfig, value_at
from tf_largebatch.config.typecheck import build_dataclass


def _yaml():
    """PyYAML, imported on first use (it comes with the ``pipelines`` extra, and
    ``tf-largebatch --help`` must work without it)."""
    try:
        import yaml
    except ImportError:
        raise ConfigError("--config", "reading a config needs PyYAML: pip install 'tf_largebatch[pipelines]'") from None
    return yaml


@functools.cache
def _loader_class():
    yaml = _yaml()

    class Loader(yaml.SafeLoader):
        """``SafeLoader`` that also reads ``1e-4`` and ``2E5`` as floats (YAML 1.2
        style); plain YAML 1.1 wants ``1.0e-4`` and would give the string '1e-4'."""

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def _reject_duplicate_keys(node, path):
    """A key given twice in one mapping is an error (YAML would keep the last silently)."""
    yaml = _yaml()
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            key_path = f"{path}.{key}" if path else str(key)
            if key is not None and key != "<<":
                if key in seen:
                    raise ConfigError(key_path, f"given twice (lines {seen[key] + 1} and "
                                      f"{key_node.start_mark.line + 1}); each key may appear once")
                seen[key] = key_node.start_mark.line
            _reject_duplicate_keys(value_node, key_path)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _reject_duplicate_keys(item, f"{path}[{index}]")


def parse_yaml(text, path=""):
    """``text`` as YAML: safe tags only, ``1e-4`` a float, duplicate keys rejected.

    Args:
        text: the YAML document.
        path: the key path of the document (for errors about a ``--set`` value).
    """
    loader = _loader_class()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _reject_duplicate_keys(node, path)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path):
    """The mapping in the file at ``path`` (``--config``)."""
    if not os.path.exists(path):
        raise ConfigError("--config", f"no such file: {path}")
    if os.path.isdir(path):
        raise ConfigError("--config", f"{path} is a directory; expected a YAML file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as error:
        raise ConfigError("--config", f"{path} is not UTF-8 text (byte {error.object[error.start]:#04x} at "
                          f"offset {error.start}); expected a YAML file") from None
    except OSError as error:
        raise ConfigError("--config", f"cannot read {path}: {error.strerror}") from None
    try:
        raw = parse_yaml(text)
    except _yaml().YAMLError as error:
        raise ConfigError("--config", f"{path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError("<top level>", f"expected a mapping in {path}, got {describe(raw)}")
    return raw


def parse_override(text):
    """``'a.b.c=value'`` -> ``(['a', 'b', 'c'], value)`` with ``value`` read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", f"expected key.path=value, got {text!r}")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise ConfigError("--set", f"expected key.path=value, got {text!r}")
    try:
        parsed = parse_yaml(value, key.strip()) if value.strip() else ""
    except _yaml().YAMLError as error:
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


def smoke_overrides(task, file_smoke=None):
    """The task's shrink-everything overrides (from the registry), then the file's own ``smoke``."""
    try:
        task_smoke = registry.TASKS.get(task, "task").smoke
    except ConfigError:
        task_smoke = {}  # an unknown task is reported with the rest of the config
    return deep_merge(task_smoke, file_smoke or {})


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


_UNSET_VARIABLE = re.compile(r"\$(\w+|\{\w+\})")


def expand_paths(cfg):
    """``~`` and ``$VARIABLES`` expanded in the path keys of ``cfg`` (in place);
    a variable that is not set is an error."""
    for key in PATH_KEYS:
        value = value_at(cfg, key)
        if not value:
            continue
        expanded = os.path.expanduser(os.path.expandvars(value))
        unset = _UNSET_VARIABLE.search(expanded)
        if unset:
            raise ConfigError(key, f"environment variable {unset.group(1).strip('{}')} in {value!r} is not set")
        section, field = key.split(".")
        setattr(getattr(cfg, section), field, expanded)
    return cfg


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _check_phase_name(name, path):
    """A phase name is a directory under model_dir: one plain path component."""
    if not isinstance(name, str) or not _PLAIN_NAME.match(name) or name in (".", ".."):
        raise ConfigError(path, f"expected a plain name (letters, digits, '_', '-', '.'; not starting with "
                          f"'.' and no '/'), got {describe(name)}")


def _smoke_merge(raw, patch):
    """``patch`` (the smoke overrides, or nothing) merged over ``raw``, with the
    schedule's own smoke keys (``ScheduleSpec.smoke``). Smoke sets the learning rate, so a Keras-form ``optimizer.config.learning_rate`` (which
    must agree with it) is dropped."""
    merged = deep_merge(raw, patch)
    schedule = merged.get("schedule")
    if patch and isinstance(schedule, dict):
        try:
            spec = registry.SCHEDULES.get(schedule.get("name", "constant"), "schedule.name")
        except ConfigError:
            spec = None  # reported with the rest of the config
        if spec is not None:
            merged["schedule"] = deep_merge(schedule, spec.smoke)
    optimizer = merged.get("optimizer")
    if patch and isinstance(optimizer, dict) and isinstance(optimizer.get("config"), dict):
        optimizer["config"].pop("learning_rate", None)
        inner = optimizer["config"].get("inner_optimizer")  # a wrapper's (AdaScale, VR)
        if isinstance(inner, dict) and isinstance(inner.get("config"), dict):
            inner["config"].pop("learning_rate", None)
    return merged


def _build(merged, phase=""):
    cfg = build_dataclass(ExperimentConfig, merged, "")
    cfg.phase = phase
    expand_paths(cfg)
    check_experiment(cfg)
    return cfg


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
        raise ConfigError("smoke", f"expected a mapping, got {describe(file_smoke)}")
    patch = smoke_overrides(raw.get("task"), file_smoke) if smoke else {}
    if phases is None:
        return [_build(apply_overrides(_smoke_merge(raw, patch), overrides))]
    if not isinstance(phases, list) or not phases or not all(isinstance(p, dict) for p in phases):
        raise ConfigError("phases", "expected a non-empty list of mappings")
    common, per_phase = _split_overrides(overrides, len(phases))
    configs = []
    for index, phase in enumerate(phases):
        prefix = f"phases[{index}]."
        phase = dict(phase)
        name = phase.pop("name", f"phase_{index + 1}")
        _check_phase_name(name, prefix + "name")
        merged = _smoke_merge(deep_merge(raw, phase), patch)
        merged = apply_overrides(merged, common + per_phase.get(index, []))
        try:
            configs.append(_build(merged, name))
        except ConfigError as error:
            raise _phase_error(error, prefix, phase) from None
    names = [c.phase for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError("phases", f"phase names must be unique, got {names}")
    return configs


def load_config(path, *, overrides=(), smoke=False):
    """Reads, merges (smoke, ``--set``) and validates a config file.

    Args:
        path: YAML file.
        overrides: ``["a.b.c=value", ...]``, values read as YAML.
        smoke: merge the task's smoke overrides and the file's ``smoke``
            section (tiny model, data and step counts).

    Returns:
        A list of :class:`ExperimentConfig`, one per training phase.

    Raises:
        ConfigError: naming the key path and what was expected.
    """
    return resolve_phases(read_yaml(path), smoke=smoke, overrides=overrides)


def to_dict(cfg):
    """``cfg`` as plain data (what ``--dry-run`` prints)."""
    return dataclasses.asdict(cfg)
