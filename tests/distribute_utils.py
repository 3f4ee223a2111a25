"""Helpers for tests that build tf.distribute strategies or worker processes."""

import gc
import socket

import tensorflow as tf


def mirrored_strategy(num_replicas):
    """A MirroredStrategy over the first ``num_replicas`` logical CPUs.

    Strategies of *different sizes* in one process collide on collective group
    keys ("joining a group with size 2, but that group has size 4"), even with
    Keras's own SGD. TensorFlow's own tests avoid it by moving the key base of
    every new strategy (``strategy_combinations._mirrored_strategy_with_collective_key_base``);
    we do the same, before and after, so that strategies made elsewhere afterwards
    (without this) do not share our keys either. The default cross-device ops (ring
    collectives) stay under test.
    """
    tf.distribute.MirroredStrategy._collective_key_base += 100000
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(num_replicas)])
    tf.distribute.MirroredStrategy._collective_key_base += 100000
    return strategy


def free_ports(count):
    """``count`` distinct free TCP ports on localhost (for a local TF cluster)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def release_interrupted_fit():
    """Frees what a ``fit`` stopped by an exception left behind, now.

    The input iterator of an interrupted ``fit`` is kept alive by reference
    cycles through the exception's traceback until a garbage collection. While
    it lives, its tf.data autotuning thread sleeps for periods that double up
    to a minute, and deleting the iterator waits for the current sleep to end
    (TensorFlow 2.21: ``RootDataset::Iterator``'s destructor joins that
    thread). Collected right after the interruption the wait is short; left to
    a later collection (this suite's per-test one, after the resumed run) it
    took up to a minute of idle wall time in a full run.
    """
    gc.collect()
