"""The one docstring templater of the optimizers: ``{{placeholder}}`` -> shared text.

Docstrings of the package's optimizers share paragraphs (Keras's base keyword
arguments, the layer-wise arguments, the VR optimizers' notes). They are
written once, as module constants next to the classes that use them, and put
in place at import time by :func:`document`, so ``help()`` shows full text.
"""

from tf_largebatch.optimizers import keras_seam

#: Placeholder every optimizer may use: Keras's own description of its base keyword arguments.
BASE_OPTIMIZER_KEYWORD_ARGS = "{{base_optimizer_keyword_args}}"


def fill(text, replacements=None):
    """``text`` with each ``{{name}}`` of ``replacements`` (and the base keyword
    arguments) replaced; raises ``ValueError`` if a placeholder is left.

    Args:
        text: a docstring.
        replacements: ``{name: text}``, for placeholders ``{{name}}``.
    """
    # The shared texts may hold the base keyword arguments' placeholder: it goes last.
    texts = {**(replacements or {}), "base_optimizer_keyword_args": keras_seam.BASE_OPTIMIZER_KEYWORD_ARGS}
    for name, value in texts.items():
        text = text.replace("{{" + name + "}}", value)
    if "{{" in text:
        start = text.index("{{")
        raise ValueError(f"Unfilled docstring placeholder {text[start:text.index('}}', start) + 2]!r}")
    return text


def document(**replacements):
    """Class decorator: :func:`fill` the class's docstring with ``replacements``."""

    def decorate(cls):
        if cls.__doc__:
            cls.__doc__ = fill(cls.__doc__, replacements)
        return cls

    return decorate
