"""Which variables get weight decay and which get a layer-wise rate.

One rule for every optimizer of the package (SNGM, LARS, LAMB, the Layerwise
optimizers, MCLR, PercentDelta, and the VR optimizers built on them) and for the
config files, which pass these arguments to the constructors unchanged:

* A list is a list of regular expressions, each searched (``re.search``) in
  ``variable.path`` (``"encoder/layer_normalization/gamma"``), so ``"bias"``,
  ``"LayerNorm"`` and ``r"layer_normalization/(gamma|beta)"`` all work.
* ``exclude_from_weight_decay``: ``None`` and ``[]`` both mean "decay every
  variable". Variables registered with Keras's own
  ``optimizer.exclude_from_weight_decay(var_list=..., var_names=...)`` before
  the build are excluded too.
* ``exclude_from_layer_adaptation``: ``None`` means "the same list as
  ``exclude_from_weight_decay``" (TF Addons' and TF Model Garden's LAMB/LARS);
  ``[]`` means "adapt every variable". An excluded variable gets the rate 1 (its
  update is the base rule's, times the learning rate).
* Anything else (a single string, a number, a non-string element, an invalid
  regular expression) is a ``ValueError`` at construction naming the argument
  and the value.

:class:`VariableSelection` resolves the patterns once, when the optimizer is
built, into one decision per variable; the update steps look decisions up by
the variable's index and never match strings.

Where other libraries differ:

* Keras's ``exclude_from_weight_decay(var_names=...)`` searches the short
  ``variable.name`` (``"gamma"``), so ``"LayerNorm"`` or
  ``"layer_normalization"`` silently match nothing there; Keras's ``get_config``
  does not save the exclusions, ours does.
* TF Addons' ``LAMB`` and TF Model Garden's ``LAMB``/``LARS`` also search
  ``variable.name`` (TF1/TF2 full names, which contain the layer scope), and
  read an empty ``exclude_from_layer_adaptation`` as "use the weight-decay
  list" (their test is the truthiness of the list); here only ``None`` does, so
  that ``[]`` can say "adapt everything".
"""

import numbers
import re

from tf_largebatch import validation

#: What ``exclude_from_layer_adaptation=None`` resolves to.
SAME_AS_WEIGHT_DECAY = None


def check_patterns(name, patterns):
    """A list of regular-expression strings from ``patterns`` (``None`` gives ``[]``).

    Args:
        name: the argument's name, for the error message.
        patterns: ``None``, or a list or tuple of strings.

    Returns:
        A new list of the patterns.

    Raises:
        ValueError: naming ``name`` and the value, for a single string, a number
            or any other non-iterable, a non-string element or an invalid
            regular expression.
    """
    if isinstance(patterns, (numbers.Number, bytes, dict)) or not (patterns is None or hasattr(patterns, "__iter__")):
        raise ValueError(
            f"`{name}` must be None or a list of regular-expression strings. Received: {name}={patterns!r}"
        )
    return validation.check_patterns(name, patterns)


class PathPatterns:
    """Regular expressions searched (``re.search``) in ``variable.path``.

    Args:
        patterns: a list of regular-expression strings (already checked).
    """

    def __init__(self, patterns):
        self.patterns = list(patterns)
        self._regex = re.compile("|".join(f"(?:{p})" for p in self.patterns)) if self.patterns else None

    def matches(self, variable):
        """Whether any pattern is found in ``variable``'s path."""
        if self._regex is None:
            return False
        path = getattr(variable, "path", None) or variable.name
        return self._regex.search(path) is not None


class VariableSelection:
    """Per-variable decisions from two exclusion lists (see the module docstring).

    Args:
        exclude_from_weight_decay: ``None`` or a list of path patterns.
        exclude_from_layer_adaptation: ``None`` (the weight-decay list) or a list
            of path patterns.
    """

    def __init__(self, exclude_from_weight_decay=None, exclude_from_layer_adaptation=SAME_AS_WEIGHT_DECAY):
        self.weight_decay_exclusions = check_patterns("exclude_from_weight_decay", exclude_from_weight_decay)
        if exclude_from_layer_adaptation is SAME_AS_WEIGHT_DECAY:
            self.layer_adaptation_exclusions = list(self.weight_decay_exclusions)
        else:
            self.layer_adaptation_exclusions = check_patterns(
                "exclude_from_layer_adaptation", exclude_from_layer_adaptation
            )
        self._weight_decay_patterns = PathPatterns(self.weight_decay_exclusions)
        self._layer_adaptation_patterns = PathPatterns(self.layer_adaptation_exclusions)

    def decays(self, variable):
        """Whether ``variable`` gets weight decay (by path patterns alone)."""
        return not self._weight_decay_patterns.matches(variable)

    def adapts(self, variable):
        """Whether ``variable`` gets a layer-wise rate."""
        return not self._layer_adaptation_patterns.matches(variable)

    def resolve(self, variables, also_decays=None):
        """Decisions for ``variables``, in order: ``(decays, adapts)``, two lists of bools.

        Args:
            variables: the optimizer's variables (``keras.Variable`` with ``path``).
            also_decays: optional predicate a variable must also satisfy to get
                weight decay (Keras's own ``exclude_from_weight_decay`` API).
        """
        decays = [self.decays(v) and (also_decays is None or bool(also_decays(v))) for v in variables]
        adapts = [self.adapts(v) for v in variables]
        return decays, adapts
