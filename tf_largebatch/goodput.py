"""Pollux's goodput model, as small pure NumPy functions: which batch size trains fastest now.

Qiao et al., "Pollux: Co-adaptive Cluster Scheduling for Goodput-Optimized
Deep Learning", OSDI 2021, Section 3. For an update batch of ``M`` examples::

    goodput(M)     = throughput(M) * efficiency(M)
    efficiency(M)  = (phi + M_0) / (phi + M)          statistical efficiency, <= 1 for M >= M_0
    throughput(M)  = M / step_time(M)                 examples per second
    step_time(M)   = alpha + beta * M                 seconds per optimizer update

``phi`` is the gradient noise scale in examples (for SGD, McCandlish et al.'s
``B_simple = tr(Sigma) / |grad F|^2``, which AdaScale's averages give) and
``M_0`` the base batch. ``efficiency(M)`` is the progress one example makes at
batch ``M`` relative to batch ``M_0``: it equals AdaScale's gain at scale
``S = M / M_0`` divided by ``S`` (:func:`adascale_gain`), so an update at ``M``
with AdaScale's learning rate is worth ``S * efficiency(M)`` base updates.

The step-time model is Pollux's ``T_iter`` on a fixed allocation (a fixed
number of replicas, so the all-reduce time does not depend on ``M``), with its
compute/communication overlap exponent ``gamma = 1``: compute linear in the
per-replica batch plus a constant. Pollux also models how the allocation
changes; here the strategy is fixed and only the batch moves.

References:
    Qiao et al., "Pollux: Co-adaptive Cluster Scheduling for Goodput-Optimized
        Deep Learning", OSDI 2021, Section 3 (eq. for EFFICIENCY and
        THROUGHPUT, GOODPUT = THROUGHPUT x EFFICIENCY).
    McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch
        Training", 2018 (the noise scale).
    Johnson et al., "AdaScale SGD", ICML 2020 (the gain ratio).
"""

import numpy as np


def statistical_efficiency(batch_size, noise_scale, base_batch_size):
    """``(phi + M_0) / (phi + M)``; ``phi = inf`` (no measurable signal) gives 1.

    Args:
        batch_size: ``M`` (scalar or array), examples per update.
        noise_scale: ``phi >= 0`` in examples.
        base_batch_size: ``M_0 > 0``.
    """
    m = np.asarray(batch_size, np.float64)
    if np.isinf(noise_scale):
        return np.ones_like(m)
    return (noise_scale + base_batch_size) / (noise_scale + m)


def adascale_gain(batch_size, noise_scale, base_batch_size):
    """AdaScale's gain ``r = (sigma^2 + mu^2) / (sigma^2 / S + mu^2)`` at ``S = M / M_0``,
    written with ``phi = sigma^2 M_0 / mu^2``: ``(phi + M_0) / (phi / S + M_0)``."""
    scale = np.asarray(batch_size, np.float64) / base_batch_size
    if np.isinf(noise_scale):
        return scale
    return (noise_scale + base_batch_size) / (noise_scale / scale + base_batch_size)


def fit_step_time(batch_sizes, step_times):
    """Least-squares ``(alpha, beta) >= 0`` of ``step_time = alpha + beta * M``.

    With one distinct batch size the two cannot be told apart; the fit then
    puts the whole time on ``beta`` (no fixed cost: the pessimistic model,
    under which a larger batch never raises throughput).

    Args:
        batch_sizes: observed update batches ``M_i``.
        step_times: seconds per update measured at them (same length).
    """
    m = np.asarray(batch_sizes, np.float64)
    t = np.asarray(step_times, np.float64)
    if m.size == 0 or m.shape != t.shape:
        raise ValueError(f"fit_step_time needs matching, non-empty observations; got {m.shape} and {t.shape}.")
    if np.unique(m).size < 2:
        return 0.0, float(np.mean(t / m))
    beta, alpha = np.polyfit(m, t, 1)
    if alpha < 0:  # constrained: no fixed cost, fit the slope through the origin
        return 0.0, float(np.sum(m * t) / np.sum(m * m))
    if beta < 0:  # constrained: time independent of the batch
        return float(np.mean(t)), 0.0
    return float(alpha), float(beta)


def throughput(batch_size, alpha, beta):
    """Examples per second ``M / (alpha + beta M)``."""
    m = np.asarray(batch_size, np.float64)
    return m / (alpha + beta * m)


def goodput(batch_size, noise_scale, base_batch_size, alpha, beta):
    """``throughput(M) * efficiency(M)``: base-batch examples' worth of progress per second."""
    return throughput(batch_size, alpha, beta) * statistical_efficiency(batch_size, noise_scale, base_batch_size)


def candidate_batch_sizes(min_batch_size, max_batch_size, multiple):
    """The multiples of ``multiple`` in ``[min_batch_size, max_batch_size]`` (ascending)."""
    first = -(-min_batch_size // multiple) * multiple
    candidates = list(range(first, max_batch_size + 1, multiple))
    if not candidates:
        raise ValueError(
            f"No batch size in [{min_batch_size}, {max_batch_size}] is a multiple of {multiple} (replicas x "
            "gradient accumulation steps): widen the range."
        )
    return candidates


def best_batch_size(candidates, noise_scale, base_batch_size, alpha, beta):
    """The candidate of largest goodput (the smallest among ties)."""
    values = goodput(np.asarray(candidates), noise_scale, base_batch_size, alpha, beta)
    return int(candidates[int(np.argmax(values))])
