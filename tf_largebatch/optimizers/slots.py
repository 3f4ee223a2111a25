"""Optimizer state of the package's optimizers: slots, replica-local variables, dtypes.

Pure helpers (:func:`compute_dtype`, :func:`variable_path`, :func:`densify`)
and the two ways the optimizers and their components create per-variable
state: :func:`add_slots` (one optimizer variable per model variable, mirrored)
and :func:`add_local_variable` (replica-local, sync-on-read).
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


def add_local_variable(optimizer, reference, name, aggregation="sum"):
    """A replica-local (sync-on-read) variable of ``optimizer`` shaped like ``reference``, float32 or wider.

    Each replica reads and writes its own copy without communication. With
    ``aggregation="sum"`` a checkpoint saves the sum over replicas and a
    restore gives every replica ``sum / replicas``, so sums over replicas
    (partial gradient sums) survive save/restore exactly, even onto another
    number of replicas. With ``"mean"`` it suits state that every replica
    computes identically (restored unchanged).

    Args:
        optimizer: the Keras optimizer that tracks (saves, restores) the variable.
        reference: the model variable it belongs to (shape, dtype, device).
        name: suffix of the variable's name (``<reference.name>_<name>``).
        aggregation: ``"sum"`` or ``"mean"``.
    """
    strategy = keras_seam.distribution_strategy(optimizer)
    with strategy.extended.colocate_vars_with(tf_variable(reference)):
        with keras_seam.name_scope(optimizer):
            variable = keras.Variable(
                initializer="zeros",
                shape=reference.shape,
                dtype=compute_dtype(reference).name,
                trainable=False,
                aggregation=aggregation,
                synchronization="on_read",
                name=f"{reference.name}_{name}",
            )
    keras_seam.track_variable(optimizer, variable)
    return variable


def add_slots(optimizer, var_list, name, initializer="zeros"):
    """One variable of ``optimizer`` per model variable, in :func:`compute_dtype`.

    Like Keras's ``add_optimizer_variables``, but float32 for float16/bfloat16
    variables, so low-precision weights follow the float32 trajectory up to
    the rounding of the weights themselves.

    Args:
        optimizer: the Keras optimizer that owns the slots.
        var_list: the model variables.
        name: the slot's name (``momentum``, ``velocity_root``, ...).
        initializer: a Keras initializer or its name.
    """
    slots = []
    for variable in var_list:
        if compute_dtype(variable) == tf.as_dtype(variable.dtype):
            slots.append(optimizer.add_variable_from_reference(variable, name=name, initializer=initializer))
            continue
        with keras_seam.distribution_strategy(optimizer).extended.colocate_vars_with(tf_variable(variable)):
            slots.append(
                optimizer.add_variable(
                    shape=variable.shape,
                    initializer=initializer,
                    dtype="float32",
                    name=f"{variable.path.replace('/', '_')}_{name}",
                )
            )
    return slots
