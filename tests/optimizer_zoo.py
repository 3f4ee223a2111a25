"""Every public optimizer of the package, with small hyperparameters, for cross-cutting tests.

``ZOO`` is a list of ``pytest.param(ZooEntry, id=...)``: the Keras-behaviour tests
(fit, XLA, saving, mixed precision, sparse gradients, replicas, validation) are
parametrized over it so that a new optimizer gets all of them by adding one line.
Factories look the class up by name in ``tf_largebatch.optimizers``; an entry whose
class does not exist fails every test that uses it (``AttributeError``), never skips.

The VR optimizers need at least two gradient samples per step (replicas x
``gradient_accumulation_steps``); ``ZooEntry.min_samples`` says so, and
``ZooEntry.single_device`` gives them ``gradient_accumulation_steps=2`` when a test
runs on one device.
"""

import dataclasses
import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_largebatch.optimizers as tlb_optimizers
from tf_largebatch.optimizers import keras_seam
from distribute_utils import mirrored_strategy  # noqa: F401  (re-exported for the tests)


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One optimizer configuration: ``class_name(**kwargs)`` (or a wrapper factory)."""

    id: str
    class_name: str
    kwargs: dict
    min_samples: int = 1
    inner: tuple = None  # (keras optimizer class name, kwargs) for a wrapper (VR, AdaScale)

    @property
    def cls(self):
        return getattr(tlb_optimizers, self.class_name)

    def make(self, **overrides):
        """A fresh optimizer; ``overrides`` replace or add constructor arguments."""
        kwargs = {**self.kwargs, **overrides}
        if self.inner is not None:
            inner_name, inner_kwargs = self.inner
            inner_kwargs = dict(inner_kwargs)
            # The wrapper's learning rate and clipping belong to its inner optimizer
            # (which clips the GSNR-adapted global gradient).
            for argument in ("learning_rate", "clipnorm", "global_clipnorm", "clipvalue"):
                if argument in kwargs:
                    inner_kwargs[argument] = kwargs.pop(argument)
            inner = getattr(keras.optimizers, inner_name)(**inner_kwargs)
            return self.cls(inner, **kwargs)
        return self.cls(**kwargs)

    def accumulation_for(self, replicas):
        """``gradient_accumulation_steps`` needed to have ``min_samples`` samples."""
        if replicas >= self.min_samples:
            return None
        return -(-self.min_samples // replicas)

    def single_device(self, **overrides):
        """Like :meth:`make`, with enough accumulation for one device."""
        if "gradient_accumulation_steps" not in overrides:
            overrides["gradient_accumulation_steps"] = self.accumulation_for(1)
        return self.make(**overrides)

    def accepts(self, argument):
        """Whether the optimizer's constructor takes ``argument`` (directly or via Keras kwargs)."""
        import inspect

        if self.inner is not None and argument in ("learning_rate", "momentum"):
            return False
        parameters = inspect.signature(self.cls.__init__).parameters
        names = set(parameters)
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            # **kwargs reach Keras's base optimizer (clipnorm, use_ema, gradient_accumulation_steps, ...)
            names |= set(keras_seam.base_optimizer_parameters())
            if hasattr(self.cls, "inner_optimizer_class"):  # VRSGD, VRAdam, ...: every argument of the base class
                names |= set(inspect.signature(self.cls.inner_optimizer_class().__init__).parameters)
        return argument in names


# Non-default options where they add state or branches (LARS 2020 version with Nesterov,
# NVLAMB clipping, bound ratios, centered RMSprop): those paths need the Keras plumbing too.
_ENTRIES = [
    ZooEntry("SNGM", "SNGM", dict(learning_rate=0.05, momentum=0.9, weight_decay=1e-3,
                                   exclude_from_weight_decay=["bias"])),
    ZooEntry("LARS", "LARS", dict(learning_rate=0.5, momentum=0.9, trust_coefficient=0.02, weight_decay=1e-3,
                                   trust_ratio_on="momentum", nesterov=True, trust_ratio_bounds=(1e-3, 10.0),
                                   exclude_from_weight_decay=["bias"],
                                   exclude_from_layer_adaptation=["bias"])),
    ZooEntry("LAMB", "LAMB", dict(learning_rate=0.01, weight_decay=1e-2, clip_global_norm_before_moments=1.0,
                                   trust_ratio_bounds=(1e-3, 10.0),
                                   exclude_from_weight_decay=["bias"],
                                   exclude_from_layer_adaptation=["bias"])),
    ZooEntry("LayerwiseSGD", "LayerwiseSGD", dict(learning_rate=0.1, momentum=0.9, trust_ratio_bounds=(0.01, 10.0))),
    ZooEntry("LayerwiseAdagrad", "LayerwiseAdagrad", dict(learning_rate=0.05)),
    ZooEntry("LayerwiseRMSprop", "LayerwiseRMSprop", dict(learning_rate=0.01, momentum=0.5, centered=True)),
    ZooEntry("LayerwiseAdam", "LayerwiseAdam", dict(learning_rate=0.01)),
    # exclude_from_layer_adaptation=[]: adapt the biases too (None would mean the weight-decay list).
    ZooEntry("MCLR", "MCLR", dict(learning_rate=1.0, gamma=1e-2, weight_decay=1e-3,
                                   exclude_from_weight_decay=["bias"], exclude_from_layer_adaptation=[])),
    ZooEntry("PercentDelta", "PercentDelta", dict(learning_rate=1.0, gamma=1e-2)),
    ZooEntry("VR-SGD-wrapper", "VR", dict(gamma=0.1), min_samples=2,
             inner=("SGD", dict(learning_rate=0.05, momentum=0.9))),
    ZooEntry("VRSGD", "VRSGD", dict(learning_rate=0.05), min_samples=2),
    ZooEntry("VRMomentum", "VRMomentum", dict(learning_rate=0.05), min_samples=2),
    ZooEntry("VRAdam", "VRAdam", dict(learning_rate=0.01), min_samples=2),
    ZooEntry("VRLAMB", "VRLAMB", dict(learning_rate=0.01), min_samples=2),
    ZooEntry("VRLARS", "VRLARS", dict(learning_rate=0.5, trust_coefficient=0.02), min_samples=2),
    ZooEntry("AdaScale-SGD", "AdaScale", dict(), min_samples=2,
             inner=("SGD", dict(learning_rate=0.05, momentum=0.9))),
]


# A missing class is a failure of every test that uses its entry, never a skip.
ZOO = [pytest.param(entry, id=entry.id) for entry in _ENTRIES]
ENTRIES = {entry.id: entry for entry in _ENTRIES}


# --------------------------------------------------------------- tiny problems
def regression_data(num_examples=48, features=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_examples, features)).astype("float32")
    w = rng.normal(size=(features, 1)).astype("float32")
    y = (np.tanh(x @ w) + 0.1 * rng.normal(size=(num_examples, 1))).astype("float32")
    return x, y


def tiny_model(features=4, dtype=None):
    """Dense(3, tanh) -> Dense(1): four variables of different shapes, 19 parameters."""
    return keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(3, activation="tanh", dtype=dtype),
            keras.layers.Dense(1, dtype=dtype),
        ]
    )


@functools.lru_cache(maxsize=None)
def _initial_weights(features, seed):
    keras.utils.set_random_seed(seed)
    return tuple(tiny_model(features).get_weights())


def initial_weights(features=4, seed=7):
    """The same starting point for every run of :func:`tiny_model` (fresh copies)."""
    return [w.copy() for w in _initial_weights(features, seed)]


def assert_weights_close(actual, expected, rtol=2e-5, atol=2e-6, what="weights"):
    assert len(actual) == len(expected)
    for index, (a, e) in enumerate(zip(actual, expected)):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=f"{what}[{index}]")


def weights_changed(before, after):
    return any(not np.array_equal(b, a) for b, a in zip(before, after))
