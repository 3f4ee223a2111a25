"""Which optimizer a study name means, and the learning rate its grid is centred on.

A :class:`Recipe` names an optimizer class (this package's or Keras's), a peak
learning rate at :data:`BASE_BATCH_SIZE` and a scaling rule
(:func:`tf_largebatch.scaling.scale_learning_rate`) that moves it to other batch
sizes: linear for SGD with momentum (Goyal et al.), square root for the
normalised and adaptive methods (SNGM's Corollary 1, LAMB). The study centres its
learning-rate grid on that value at every batch size.

Names not in :data:`RECIPES` are looked up in ``tf_largebatch.optimizers`` and
then ``keras.optimizers`` (``--optimizers Adam,LayerwiseAdam,Lion``), with the
class's own default learning rate at the base batch and the square-root rule
(:func:`find_optimizer_class` is the one place that lookup happens).

An **untuned transfer** contender (``"MSGD-untuned"``: any name with the
``-untuned`` suffix, or a recipe with ``transfer_from`` set) is never tuned: at
every batch size it runs the learning rate and schedule length that the study
selected for its ``transfer_from`` optimizer at the smallest batch size, on the
same seeds, and is reported beside the tuned optimizers. It measures how much of
the tuning a method saves.

``"AdaScale(MSGD)-untuned"`` is such a contender: AdaScale (Johnson et al.,
ICML 2020) around Keras ``SGD(lr, momentum=0.9)`` with MSGD's smallest-batch
learning rate and schedule at every batch size, its scale ``S`` the batch size
over the study's smallest (``batch_scale``), its gain from the ``k`` gradient
samples (micro-batches) of each step. The schedule runs on AdaScale's
scale-invariant clock ``tau`` and a run ends once ``tau`` reaches the schedule's
length (:func:`tf_largebatch.study.grid.train_run`); its steps to a target are
real optimizer steps.
"""

import dataclasses
import inspect

# Not `from tf_largebatch import scaling`: that would load the whole package, and --help must not.
from tf_largebatch.scaling import scale_learning_rate

BASE_BATCH_SIZE = 128

DEFAULT_OPTIMIZERS = ("MSGD", "SNGM", "LARS", "LAMB", "VRMomentum", "VRLAMB")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the study builds one optimizer.

    Attributes:
        name: the study's name for it (``"MSGD"``).
        source: ``"keras"`` or ``"tf_largebatch"``: where ``class_name`` lives.
        class_name: the optimizer class.
        base_learning_rate: peak learning rate at :data:`BASE_BATCH_SIZE`.
        rule: ``"linear"`` or ``"sqrt"``.
        kwargs: further constructor arguments, as ``((key, value), ...)``.
        transfer_from: None for a tuned optimizer; for an untuned-transfer
            contender, the name of the tuned optimizer whose smallest-batch
            selection it reuses at every batch size.
        factory: None, or ``factory(learning_rate, **kwargs) -> optimizer`` for an
            optimizer that is not built from a learning rate alone (a wrapper
            around an inner optimizer); it receives ``kwargs`` and
            ``gradient_accumulation_steps`` like the class would.
        gradient_samples: None (decided from the class: the VR family), or
            whether the optimizer needs k >= 2 gradient samples per step.
        batch_scale: whether ``factory`` takes ``scale``, the batch size over
            the study's smallest batch size (AdaScale's ``S``).
        construction: None, or how ``factory`` builds the optimizer, for
            :meth:`describe` (``lr`` stands for the learning rate).
    """

    name: str
    source: str
    class_name: str
    base_learning_rate: float
    rule: str
    kwargs: tuple = ()
    transfer_from: str = None
    factory: object = None
    gradient_samples: bool = None
    batch_scale: bool = False
    construction: str = None

    def centre_learning_rate(self, batch_size):
        """The scaling rule's peak learning rate at ``batch_size``."""
        return scale_learning_rate(self.base_learning_rate, BASE_BATCH_SIZE, batch_size, rule=self.rule)

    def optimizer_class(self):
        return find_optimizer_class(self.class_name, self.source)[1]

    def needs_gradient_samples(self):
        """True for the VR optimizers (their GSNR needs k >= 2 gradient samples per step), or as declared."""
        if self.gradient_samples is not None:
            return bool(self.gradient_samples)
        from tf_largebatch.optimizers import VR

        return issubclass(self.optimizer_class(), VR)

    def build(self, learning_rate, gradient_accumulation_steps=None, **extra):
        """The optimizer, with ``learning_rate`` (a float or a schedule)."""
        kwargs = {**dict(self.kwargs), **extra}
        if gradient_accumulation_steps:
            kwargs["gradient_accumulation_steps"] = gradient_accumulation_steps
        if self.factory is not None:
            return self.factory(learning_rate, **kwargs)
        return self.optimizer_class()(learning_rate=learning_rate, **kwargs)

    def describe(self):
        arguments = "".join(f", {k}={v!r}" for k, v in self.kwargs)
        built = self.construction or f"{self.source}.optimizers.{self.class_name}(lr{arguments})"
        if self.transfer_from:
            return (f"{built}; untuned: at every batch size the learning rate and schedule selected for "
                    f"{self.transfer_from} at the smallest batch size")
        return f"{built}; lr {self.base_learning_rate:g} at B={BASE_BATCH_SIZE}, {self.rule} scaling"


def adascale_momentum_sgd(learning_rate, scale=1.0, momentum=0.9, gradient_accumulation_steps=None):
    """``AdaScale(keras.optimizers.SGD(learning_rate, momentum=momentum), scale=scale)``.

    ``learning_rate`` is the base recipe's (a float or a schedule, evaluated at
    AdaScale's clock ``tau``); each of the ``gradient_accumulation_steps``
    micro-batches is one gradient sample of the gain ratio.
    """
    import keras

    from tf_largebatch.optimizers import AdaScale

    return AdaScale(keras.optimizers.SGD(learning_rate, momentum=momentum), scale=scale,
                    gradient_accumulation_steps=gradient_accumulation_steps)


# Base learning rates: the demo's earlier x1/4, x1, x4 sweep at batch size 128 on a
# teacher-student task; the study's grid and its widening do the rest. A VR variant
# starts from its base optimizer's value, so the comparison isolates the GSNR factor.
RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe("MSGD", "keras", "SGD", 0.0125, "linear", (("momentum", 0.9),)),
        Recipe("SGD", "keras", "SGD", 0.125, "linear"),
        Recipe("Adam", "keras", "Adam", 2e-3, "sqrt"),
        Recipe("SNGM", "tf_largebatch", "SNGM", 0.0125, "sqrt"),
        Recipe("LARS", "tf_largebatch", "LARS", 1.0, "sqrt"),
        Recipe("LAMB", "tf_largebatch", "LAMB", 8e-3, "sqrt"),
        Recipe("VRSGD", "tf_largebatch", "VRSGD", 0.125, "linear"),
        Recipe("VRMomentum", "tf_largebatch", "VRMomentum", 0.0125, "linear"),
        # The opt-in approximation: the second moment all-reduced in bfloat16 (docs/vr.md).
        Recipe("VRMomentum(bf16)", "tf_largebatch", "VRMomentum", 0.0125, "linear",
               (("second_moment_dtype", "bfloat16"),)),
        # The opt-in approximation: the GSNR refreshed every 4 updates, carried between (docs/vr.md).
        Recipe("VRMomentum(refresh4)", "tf_largebatch", "VRMomentum", 0.0125, "linear",
               (("gsnr_refresh_every", 4),)),
        Recipe("VRAdam", "tf_largebatch", "VRAdam", 2e-3, "sqrt"),
        Recipe("VRLAMB", "tf_largebatch", "VRLAMB", 8e-3, "sqrt"),
        Recipe("VRLARS", "tf_largebatch", "VRLARS", 1.0, "sqrt"),
        # Never tuned: MSGD's smallest-batch setting at every batch size (its own rate and rule are unused).
        Recipe("AdaScale(MSGD)-untuned", "tf_largebatch", "AdaScale", 0.0125, "linear", (("momentum", 0.9),),
               transfer_from="MSGD", factory=adascale_momentum_sgd, gradient_samples=True, batch_scale=True,
               construction="tf_largebatch.optimizers.AdaScale(keras.optimizers.SGD(lr, momentum=0.9), "
                            "scale=B / smallest B)"),
    )
}


UNTUNED_SUFFIX = "-untuned"


def _constructible(cls):
    """A concrete optimizer the study can build from a learning rate alone (not a wrapper or a base class)."""
    import keras

    if not (isinstance(cls, type) and issubclass(cls, keras.optimizers.Optimizer)) or cls is keras.optimizers.Optimizer:
        return False
    parameter = inspect.signature(cls.__init__).parameters.get("learning_rate")
    return parameter is not None and isinstance(parameter.default, (int, float)) and not isinstance(
        parameter.default, bool)


def optimizer_classes():
    """``{"tf_largebatch": {name: class}, "keras": {name: class}}``: every optimizer the study can build.

    The optimizers that train, from the package's one registry, less those that
    need more than a learning rate to build (the bare ``VR`` wrapper).
    """
    from tf_largebatch.optimizers import registry

    return {source: {entry.name: entry.cls for entry in registry.entries(source) if _constructible(entry.cls)}
            for source in (registry.PACKAGE, registry.KERAS)}


def find_optimizer_class(name, source=None):
    """``(source, class)`` of the optimizer class called ``name`` (exact, then case-insensitive), or None.

    Args:
        name: a class name, e.g. ``"LAMB"`` or ``"adamw"``.
        source: ``"tf_largebatch"`` or ``"keras"`` to search one of them only.
    """
    classes = optimizer_classes()
    for exact in (True, False):
        for where, found in classes.items():
            if source not in (None, where):
                continue
            for class_name, cls in found.items():
                if (class_name == name) if exact else (class_name.lower() == name.lower()):
                    return where, cls
    return None


def builtin(name):
    """The :class:`Recipe` for a built-in name (no Keras import), or None if Keras must be asked."""
    if name in RECIPES:
        return RECIPES[name]
    for recipe_name, recipe in RECIPES.items():
        if recipe_name.lower() == name.lower():
            return recipe
    if name.endswith(UNTUNED_SUFFIX) and len(name) > len(UNTUNED_SUFFIX):
        base = builtin(name[:-len(UNTUNED_SUFFIX)])
        return None if base is None else dataclasses.replace(base, name=name, transfer_from=base.name)
    return None


def resolve(name):
    """The :class:`Recipe` for an optimizer name; ``ValueError`` naming the choices if none.

    Lookup order: :data:`RECIPES` (exact, then case-insensitive), then
    :func:`find_optimizer_class`. ``NAME-untuned`` is the untuned-transfer
    contender of ``NAME``. A :class:`Recipe` is returned as it is (a user's own
    optimizer setting).
    """
    if isinstance(name, Recipe):
        return name
    recipe = builtin(name)
    if recipe is not None:
        return recipe
    if name.endswith(UNTUNED_SUFFIX) and len(name) > len(UNTUNED_SUFFIX):
        base = resolve(name[:-len(UNTUNED_SUFFIX)])
        return dataclasses.replace(base, name=name, transfer_from=base.name)
    found = find_optimizer_class(name)
    if found is not None:
        source, cls = found
        default = inspect.signature(cls.__init__).parameters["learning_rate"].default
        return Recipe(name, source, cls.__name__, float(default), "sqrt")
    classes = optimizer_classes()
    choices = sorted(set(RECIPES) | set(classes["tf_largebatch"]) | set(classes["keras"]))
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(choices)} (or NAME{UNTUNED_SUFFIX} for "
                     "an untuned-transfer contender)")
