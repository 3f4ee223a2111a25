"""Batch-size and momentum scaling rules against their formulas."""

import math

import pytest

from tf_largebatch import scaling


@pytest.mark.parametrize("base_bs,bs", [(256, 8192), (256, 256), (1024, 128), (32, 32768)])
def test_linear_and_sqrt_rules(base_bs, bs):
    assert scaling.scale_learning_rate(0.1, base_bs, bs) == pytest.approx(0.1 * bs / base_bs)
    assert scaling.scale_learning_rate(0.1, base_bs, bs, rule="sqrt") == pytest.approx(0.1 * math.sqrt(bs / base_bs))


def test_goyal_example():
    # Goyal et al.: 0.1 at batch 256 -> 3.2 at batch 8192 (linear); sqrt gives 0.1 * sqrt(32).
    assert scaling.scale_learning_rate(0.1, 256, 8192) == pytest.approx(3.2)
    assert scaling.scale_learning_rate(0.1, 256, 8192, "sqrt") == pytest.approx(0.5656854249)


def test_scaling_round_trip():
    up = scaling.scale_learning_rate(0.3, 128, 4096, "sqrt")
    assert scaling.scale_learning_rate(up, 4096, 128, "sqrt") == pytest.approx(0.3)


@pytest.mark.parametrize("lr,m", [(0.1, 0.9), (0.01, 0.99), (0.5, 0.0), (2.0, 0.5)])
def test_effective_learning_rate_and_inverse(lr, m):
    eff = scaling.effective_learning_rate(lr, m)
    assert eff == pytest.approx(lr / (1 - m))
    assert scaling.learning_rate_for_effective(eff, m) == pytest.approx(lr)


def test_sgd_to_momentum_example():
    # SGD tuned at 0.4 equals momentum 0.9 at 0.04 (same effective learning rate).
    assert scaling.learning_rate_for_effective(0.4, 0.9) == pytest.approx(0.04)
    assert scaling.effective_learning_rate(0.04, 0.9) == pytest.approx(0.4)


def test_momentum_and_sgd_trajectories_agree_at_small_effective_lr():
    """The paper's claim on a quadratic: at small eps_eff, SGD(eps_eff) ~ momentum(eps, m)."""
    eff, m, h, steps = 1e-3, 0.9, 1.0, 3000
    lr = scaling.learning_rate_for_effective(eff, m)
    w_sgd, w_mom, u = 1.0, 1.0, 0.0
    for _ in range(steps):
        w_sgd -= eff * h * w_sgd
        u = m * u + h * w_mom
        w_mom -= lr * u
    # both close to exp(-eff * h * steps); plain lr (no 1/(1-m)) would be 10x slower
    assert w_mom == pytest.approx(w_sgd, rel=0.05)
    assert w_sgd == pytest.approx(math.exp(-eff * steps), rel=0.01)


@pytest.mark.parametrize("call,name", [
    (lambda: scaling.scale_learning_rate(0.1, 256, 512, rule="cubic"), "rule"),
    (lambda: scaling.scale_learning_rate(-0.1, 256, 512), "base_lr"),
    (lambda: scaling.scale_learning_rate(0.1, 0, 512), "base_batch_size"),
    (lambda: scaling.scale_learning_rate(0.1, 256, 12.5), "batch_size"),
    (lambda: scaling.effective_learning_rate(0.1, 1.0), "momentum"),
    (lambda: scaling.effective_learning_rate(0.1, -0.1), "momentum"),
    (lambda: scaling.effective_learning_rate(float("nan"), 0.9), "learning_rate"),
    (lambda: scaling.learning_rate_for_effective(-1.0, 0.9), "effective_lr"),
    (lambda: scaling.learning_rate_for_effective(1.0, 1.5), "momentum"),
])
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
