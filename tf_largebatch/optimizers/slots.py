"""Optimizer state of the package's optimizers: slots, replica-local variables, dtypes.

Pure helpers (:func:`compute_dtype`, :func:`variable_path`, :func:`densify`) and
:class:`SlotsMixin`, the part of
:class:`~tf_largebatch.optimizers.base.LargeBatchOptimizer` that creates
per-variable state.
"""

import keras
import tensorflow as tf

from tf_largebatch.optimizers import keras_seam


def tf_variable(variable):
    """The ``tf.Variable`` behind a ``keras.Variable``; any other value unchanged."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def compute_dtype(variable):
    """float32 for float16/bfloat16 variables, else the variable's own dtype.

    Optimizer state and update math run in this dtype: in bfloat16, ``0.999``
    rounds to 1 (Adam's second moment would never move) and ``0.9`` to ``0.8984``.
    """
    dtype = tf.as_dtype(variable.dtype)
    return tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype


def variable_path(variable):
    """``variable.path`` (``"encoder/dense/kernel"``), or the name of a backend variable."""
    return getattr(variable, "path", None) or variable.name


def densify(gradient):
    """Sparse (``IndexedSlices``) gradients become dense tensors.

    Trust ratios, global norms and GSNR statistics are functions of the dense
    gradient (duplicate indices summed), so the package works on dense values;
    this makes a sparse gradient give exactly the result of its dense twin.
    """
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


class SlotsMixin:
    """Slot variables (one per model variable) and replica-local state of an optimizer."""

    def _add_local_variable(self, reference, name, aggregation="sum"):
        """A replica-local (sync-on-read) slot shaped like ``reference``, float32 or wider.

        Each replica reads and writes its own copy without communication. With
        ``aggregation="sum"`` a checkpoint saves the sum over replicas and a
        restore gives every replica ``sum / replicas``, so sums over replicas
        (partial gradient sums) survive save/restore exactly, even onto another
        number of replicas. With ``"mean"`` it suits state that every replica
        computes identically (restored unchanged).
        """
        strategy = keras_seam.distribution_strategy(self)
        with strategy.extended.colocate_vars_with(tf_variable(reference)):
            with keras_seam.name_scope(self):
                variable = keras.Variable(
                    initializer="zeros",
                    shape=reference.shape,
                    dtype=compute_dtype(reference).name,
                    trainable=False,
                    aggregation=aggregation,
                    synchronization="on_read",
                    name=f"{reference.name}_{name}",
                )
        keras_seam.track_variable(self, variable)
        return variable

    def _add_slots(self, var_list, name, initializer="zeros"):
        """One optimizer variable per model variable, in :func:`compute_dtype`.

        Like Keras's ``add_optimizer_variables``, but float32 for float16/bfloat16
        variables, so low-precision weights follow the float32 trajectory up to
        the rounding of the weights themselves.
        """
        slots = []
        for variable in var_list:
            if compute_dtype(variable) == tf.as_dtype(variable.dtype):
                slots.append(self.add_variable_from_reference(variable, name=name, initializer=initializer))
                continue
            with keras_seam.distribution_strategy(self).extended.colocate_vars_with(tf_variable(variable)):
                slots.append(
                    self.add_variable(
                        shape=variable.shape,
                        initializer=initializer,
                        dtype="float32",
                        name=f"{variable.path.replace('/', '_')}_{name}",
                    )
                )
        return slots

    def _slot(self, slots, variable):
        """The entry of ``slots`` (built by :meth:`_add_slots`) for ``variable``."""
        return slots[keras_seam.variable_index(self, variable)]
