"""Plain class names for Keras's string lookup of optimizers.

``@keras.saving.register_keras_serializable(package="tf_largebatch")`` registers
each optimizer as ``"tf_largebatch>SNGM"``, the name saved configs carry. Keras
users also write ``keras.optimizers.get("SNGM")`` or
``model.compile(optimizer="sngm")``, as they do for ``"adam"``; this module adds
the class name and its lowercase form to Keras's public custom-object table
(``keras.saving.get_custom_objects()``), so those resolve too. Saving is
unchanged: a saved model still names ``"tf_largebatch>SNGM"``.

A plain name never shadows one of Keras's own: an alias whose lowercase form is
the lowercase name of anything in ``keras.optimizers`` (``LAMB`` against
``keras.optimizers.Lamb``, ``LossScaleOptimizer``) is registered only in the
exact spelling of the class (``"LAMB"``), or not at all where that spelling is
Keras's own, because Keras's ``deserialize`` lowercases the names of its built-in
optimizers before looking them up.

References:
    Keras, ``keras.saving.get_custom_objects`` and ``keras.optimizers.get``.
"""

import keras


def plain_names(cls, keras_names):
    """The aliases of ``cls`` for string lookup: its class name and its lowercase
    form. None where the class name is spelled as one of ``keras.optimizers``;
    no lowercase form where it is the lowercase name of one (``keras_names``)."""
    name = cls.__name__
    if hasattr(keras.optimizers, name):
        return []
    return [name] if name.lower() in keras_names else list(dict.fromkeys([name, name.lower()]))


def register_plain_names(classes):
    """Registers every class of ``classes`` under :func:`plain_names` in
    ``keras.saving.get_custom_objects()``; returns ``{alias: class}`` of what it added.

    An alias already taken by another object is left alone.
    """
    keras_names = {name.lower() for name in dir(keras.optimizers) if not name.startswith("_")}
    table = keras.saving.get_custom_objects()
    added = {}
    for cls in classes:
        for alias in plain_names(cls, keras_names):
            if table.get(alias, cls) is cls:
                table[alias] = cls
                added[alias] = cls
    return added
