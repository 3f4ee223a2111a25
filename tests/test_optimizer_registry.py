"""The one optimizer registry: names, roles, and that every list of names agrees with it."""

import keras
import pytest

import tf_largebatch
import tf_largebatch.optimizers as tlb_opt
from tf_largebatch.config import ConfigError, known_optimizer_names, resolve_optimizer_class
from tf_largebatch.config.registry import package_optimizers
from tf_largebatch.optimizers import registry


def test_every_package_optimizer_class_is_registered_once():
    exported = {name for name in dir(tlb_opt) if isinstance(getattr(tlb_opt, name), type)
                and issubclass(getattr(tlb_opt, name), keras.optimizers.Optimizer)}
    registered = [e.name for e in registry.entries(registry.PACKAGE, role=None)]
    assert sorted(registered) == sorted(exported)
    assert len(registered) == len(set(registered))
    for entry in registry.entries(registry.PACKAGE, role=None):
        assert getattr(tlb_opt, entry.name) is entry.cls


def test_the_launcher_list_is_the_registry_list():
    # tf_largebatch/__init__.py names the optimizers without importing TensorFlow:
    # every one that trains, and the package's LossScaleOptimizer.
    assert sorted(tf_largebatch._OPTIMIZERS) == sorted(registry.names(registry.PACKAGE) + ["LossScaleOptimizer"])


@pytest.mark.parametrize("name,source", [("SNGM", "tf_largebatch"), ("VRLAMB", "tf_largebatch"),
                                         ("Adam", "keras"), ("Lamb", "keras")])
def test_trainable_names_resolve(name, source):
    entry = registry.lookup(name)
    assert entry.source == source and entry.role == registry.TRAINS
    assert resolve_optimizer_class(name) is entry.cls
    assert name in registry.names(source)


@pytest.mark.parametrize("name", ["LossScaleOptimizer", "LargeBatchOptimizer", "MultiOptimizer", "Optimizer"])
def test_wrappers_are_known_but_never_offered(name):
    assert registry.lookup(name).role == registry.WRAPPER
    assert name not in registry.names()
    with pytest.raises(ConfigError, match=f"unknown optimizer '{name}'"):
        resolve_optimizer_class(name)
    ours, theirs = known_optimizer_names()
    assert name not in ours + theirs
    assert f" {name}," not in registry.unknown_name_message("Nope") and f"({name}" not in \
        registry.unknown_name_message("Nope")


def test_unknown_name_lists_trainable_names_and_a_close_match():
    message = registry.unknown_name_message("VRLAMBB")
    assert message.startswith("unknown optimizer 'VRLAMBB' (did you mean 'VRLAMB'?)")
    assert "SNGM" in message and "Adam" in message


def test_case_insensitive_lookup_prefers_an_exact_match():
    assert registry.lookup("vradam") is None
    assert registry.lookup("vradam", ignore_case=True).cls is tlb_opt.VRAdam
    assert registry.lookup("Lamb", ignore_case=True).source == registry.KERAS
    assert registry.lookup("LAMB").cls is tlb_opt.LAMB


def test_package_optimizers_for_deserialization():
    classes = package_optimizers()
    assert classes["VRAdam"] is tlb_opt.VRAdam and "LossScaleOptimizer" not in classes
