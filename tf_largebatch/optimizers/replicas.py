"""Replica plumbing: one all-reduce, branching with collectives, cross-replica updates.

Functions of the ``tf.distribute`` replica context that every optimizer of the
package shares; each works without a strategy too (then it is the plain
single-device operation).
"""

import tensorflow as tf

from tf_largebatch.optimizers import keras_seam
from tf_largebatch.optimizers.slots import tf_variable


def all_reduce_sum(values):
    """SUM over replicas in one collective; identity without a strategy."""
    context = tf.distribute.get_replica_context()
    if context is None or not tf.distribute.has_strategy() or not values:
        return list(values)
    return list(context.all_reduce(tf.distribute.ReduceOp.SUM, list(values)))


def cond_with_collectives(predicate, true_fn, args=(), false_fn=None):
    """``true_fn(*args) if predicate else false_fn()`` from a replica context.

    ``true_fn`` may all-reduce and update variables. ``MirroredStrategy`` cannot
    run a collective (a merge call) inside a ``tf.cond`` entered in replica
    context (Keras's own gradient accumulation fails there for this reason).
    So: merge into cross-replica context once, branch there, and re-enter the
    replicas with ``call_for_each_replica`` (the pattern of Keras's
    ``LossScaleOptimizer``). ``args`` travel through the merge call, so each
    replica gets its own copy back (nothing is read across devices). Strategies
    without merge calls (TPU, and no strategy at all) branch directly.

    ``predicate`` is a boolean tensor computed in replica context that must be
    identical on every replica (the iteration counter, an all-reduced flag);
    the first replica's value decides. ``false_fn`` runs in cross-replica context
    under a merging strategy, so it may only update replica-invariant state.
    """
    _cond_across_replicas(predicate, true_fn, false_fn or (lambda: None), args, false_in_replicas=False)


def branch_with_collectives(predicate, true_fn, false_fn, args=()):
    """``true_fn(*args) if predicate else false_fn(*args)``, both in replica context.

    Like :func:`cond_with_collectives`, but both branches run on every replica
    and may all-reduce (e.g. two shapes of the update's one collective): under a
    merging strategy the branch is taken once in cross-replica context and each
    branch re-enters the replicas with ``call_for_each_replica``. ``predicate``
    must be identical on every replica (the first replica's value decides).
    """
    _cond_across_replicas(predicate, true_fn, false_fn, args, false_in_replicas=True)


def _cond_across_replicas(predicate, true_fn, false_fn, args, false_in_replicas):
    """The one mechanism of :func:`cond_with_collectives` and :func:`branch_with_collectives`.

    ``true_fn(*args)`` always runs in replica context; ``false_fn`` too, with
    ``args``, when ``false_in_replicas``, else without arguments in
    cross-replica context under a merging strategy.
    """

    def no_output(fn, *fn_args):
        fn(*fn_args)
        return tf.constant(True)

    false_args = args if false_in_replicas else ()
    if not tf.distribute.has_strategy() or keras_seam.strategy_supports_no_merge_call():
        tf.cond(predicate, lambda: no_output(true_fn, *args), lambda: no_output(false_fn, *false_args))
        return

    def cross_replica(distribution, predicate, *args):
        decision = distribution.experimental_local_results(predicate)[0]

        def each_replica(fn):
            distribution.extended.call_for_each_replica(fn, args=args)
            return tf.constant(True)

        false_branch = (lambda: each_replica(false_fn)) if false_in_replicas else (lambda: no_output(false_fn))
        tf.cond(decision, lambda: each_replica(true_fn), false_branch)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(predicate,) + tuple(args))


def run_update_steps(optimizer, grads, trainable_variables):
    """Runs ``optimizer.update_step`` on every variable, in cross-replica context.

    The gradients must already be identical on every replica (all-reduced). This
    is Keras's own per-variable distributed update
    (:func:`~tf_largebatch.optimizers.keras_seam.distributed_update_step`)
    reached through one merge call.
    """
    grads_and_vars = [(g, tf_variable(v)) for g, v in zip(grads, trainable_variables)]
    keras_seam.maybe_merge_call(
        keras_seam.distributed_update_step(optimizer),
        keras_seam.distribution_strategy(optimizer),
        grads_and_vars,
        optimizer.learning_rate,
    )


def apply_with_keras(optimizer, grads, trainable_variables):
    """A Keras optimizer's ``apply`` on global-mean gradients, minus the all-reduce.

    Keras's clipping, decoupled weight decay, ``update_step`` per variable, and
    the iteration counter, for any Keras optimizer (``SGD``, ``Adam``,
    ``AdamW``, ``Lion``, ...).
    """
    grads = keras_seam.keras_clip_gradients(optimizer, grads)
    keras_seam.keras_apply_weight_decay(optimizer, trainable_variables)
    run_update_steps(optimizer, grads, trainable_variables)
    keras_seam.advance_micro_step_counter(optimizer)
