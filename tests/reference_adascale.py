"""Independent NumPy reference of AdaScale SGD, written from the paper's Algorithm 1.

Johnson et al., "AdaScale SGD: A User-Friendly Algorithm for Distributed
Training", ICML 2020, Algorithm 1, with the moving-average estimators of its
practical implementation (factor ``theta = max(1 - S/1000, 0)`` unless given).
Float64 throughout; the samples are given directly (no replica sums, no
shifts), so this shares no code path with the package.
"""

import numpy as np


def flat(sample):
    """All elements of one gradient sample (a list of arrays) as one float64 vector."""
    return np.concatenate([np.asarray(part, np.float64).ravel() for part in sample])


class AdaScaleReference:
    """AdaScale state (averages, tau) advanced one update at a time.

    Args:
        scale: S, the batch over the base batch (``None``: the number of samples).
        smoothing: theta, or ``None`` for ``max(1 - S/1000, 0)``.
    """

    def __init__(self, scale=None, smoothing=None):
        self.scale = scale
        self.smoothing = smoothing
        self.variance_average = 0.0
        self.norm_average = 0.0
        self.tau = 0.0
        self.gains = []
        self.taus_before = []

    def statistics(self, samples):
        """Algorithm 1's estimates from the update's k samples: (sigma^2 at one base batch, |grad F|^2)."""
        g = np.stack([flat(s) for s in samples])  # (k, n)
        k = g.shape[0]
        scale = float(k if self.scale is None else self.scale)
        mean = g.mean(axis=0)
        per_sample_variance = np.sum((g - mean) ** 2) / (k - 1)
        # A sample averages B/k examples, a base batch B/S: the variance scales as 1/examples.
        sigma2 = per_sample_variance * scale / k
        mu2 = np.sum(mean**2) - per_sample_variance / k
        return sigma2, mu2, scale, mean

    def step(self, samples):
        """Advances one update; returns (gain r_t, tau_t before the update, mean gradient)."""
        sigma2, mu2, scale, mean = self.statistics(samples)
        theta = max(1.0 - scale / 1000.0, 0.0) if self.smoothing is None else self.smoothing
        self.variance_average = theta * self.variance_average + (1 - theta) * sigma2
        self.norm_average = theta * self.norm_average + (1 - theta) * mu2
        v, m = self.variance_average, max(self.norm_average, 0.0)
        if v == 0.0 and m == 0.0:
            gain = 1.0
        else:
            gain = (v + m) / (v / scale + m)
        gain = min(max(gain, 1.0), scale)
        tau_before = self.tau
        self.tau += gain
        self.gains.append(gain)
        self.taus_before.append(tau_before)
        return gain, tau_before, mean


def adascale_sgd(weights, sample_gradient_fn, steps, learning_rate_fn, momentum=0.0, scale=None, smoothing=None):
    """Runs AdaScale around Keras-style SGD (``v <- m v - lr g; w <- w + v``).

    ``sample_gradient_fn(w, step)`` returns the list of k sample gradients (each
    a flat vector) at ``w``; ``learning_rate_fn(tau)`` is the base schedule.
    Returns ``(w, reference)``.
    """
    reference = AdaScaleReference(scale, smoothing)
    w = np.asarray(weights, np.float64).copy()
    velocity = np.zeros_like(w)
    for step in range(steps):
        samples = [[g] for g in sample_gradient_fn(w, step)]
        gain, tau, mean = reference.step(samples)
        lr = gain * learning_rate_fn(tau)
        velocity = momentum * velocity - lr * mean
        w = w + velocity
    return w, reference
