"""Which optimizer a study name means, and the learning rate its grid is centred on.

A :class:`Recipe` names an optimizer class (this package's or Keras's), a peak
learning rate at :data:`BASE_BATCH_SIZE` and a scaling rule
(:func:`tf_largebatch.scaling.scale_learning_rate`) that moves it to other batch
sizes: linear for SGD with momentum (Goyal et al.), square root for the
normalised and adaptive methods (SNGM's Corollary 1, LAMB). The study centres its
learning-rate grid on that value at every batch size.

Names not in :data:`RECIPES` are looked up in ``tf_largebatch.optimizers`` and
then ``keras.optimizers`` (``--optimizers Adam,LayerwiseAdam,Lion``), with the
class's own default learning rate at the base batch and the square-root rule.
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
    """

    name: str
    source: str
    class_name: str
    base_learning_rate: float
    rule: str
    kwargs: tuple = ()

    def centre_learning_rate(self, batch_size):
        """The scaling rule's peak learning rate at ``batch_size``."""
        return scale_learning_rate(self.base_learning_rate, BASE_BATCH_SIZE, batch_size, rule=self.rule)

    def optimizer_class(self):
        if self.source == "keras":
            import keras

            return getattr(keras.optimizers, self.class_name)
        import tf_largebatch.optimizers

        return getattr(tf_largebatch.optimizers, self.class_name)

    def needs_gradient_samples(self):
        """True for the VR optimizers: their GSNR needs k >= 2 gradient samples per step."""
        from tf_largebatch.optimizers import VR

        return issubclass(self.optimizer_class(), VR)

    def build(self, learning_rate, gradient_accumulation_steps=None, **extra):
        """The optimizer, with ``learning_rate`` (a float or a schedule)."""
        kwargs = {**dict(self.kwargs), **extra}
        if gradient_accumulation_steps:
            kwargs["gradient_accumulation_steps"] = gradient_accumulation_steps
        return self.optimizer_class()(learning_rate=learning_rate, **kwargs)

    def describe(self):
        arguments = "".join(f", {k}={v!r}" for k, v in self.kwargs)
        return (f"{self.source}.optimizers.{self.class_name}(lr{arguments}); lr {self.base_learning_rate:g} at "
                f"B={BASE_BATCH_SIZE}, {self.rule} scaling")


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
        Recipe("VRAdam", "tf_largebatch", "VRAdam", 2e-3, "sqrt"),
        Recipe("VRLAMB", "tf_largebatch", "VRLAMB", 8e-3, "sqrt"),
        Recipe("VRLARS", "tf_largebatch", "VRLARS", 1.0, "sqrt"),
    )
}


def _optimizer_classes(module):
    import keras

    return {
        name: value
        for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, keras.optimizers.Optimizer)
        and value is not keras.optimizers.Optimizer
    }


def resolve(name):
    """The :class:`Recipe` for an optimizer name; ``ValueError`` naming the choices if none.

    Lookup order: :data:`RECIPES`, ``tf_largebatch.optimizers``, ``keras.optimizers``
    (exact name first, then case-insensitive).
    """
    if name in RECIPES:
        return RECIPES[name]
    import keras

    import tf_largebatch.optimizers

    sources = (("tf_largebatch", _optimizer_classes(tf_largebatch.optimizers)),
               ("keras", _optimizer_classes(keras.optimizers)))
    for exact in (True, False):
        if not exact:
            for recipe_name, recipe in RECIPES.items():
                if recipe_name.lower() == name.lower():
                    return recipe
        for source, classes in sources:
            for class_name, cls in classes.items():
                if (class_name == name) if exact else (class_name.lower() == name.lower()):
                    default = inspect.signature(cls.__init__).parameters.get("learning_rate")
                    if default is None or not isinstance(default.default, (int, float)):
                        continue
                    return Recipe(name, source, class_name, float(default.default), "sqrt")
    choices = sorted(set(RECIPES) | set(sources[0][1]) | set(sources[1][1]))
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(choices)}")
