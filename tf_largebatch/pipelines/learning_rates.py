"""The learning rate of a config's ``schedule`` section, one builder per schedule name.

Each builder is registered by name in
:data:`tf_largebatch.config.registry.SCHEDULES` and returns a
:mod:`tf_largebatch.schedules` schedule (or a float for a constant rate without
warm-up) counted in optimizer updates. The runner wraps it for Keras's own
optimizers under gradient accumulation
(:mod:`~tf_largebatch.pipelines.schedule_in_updates`).
"""

from tf_largebatch import schedules


def _decay_steps(cfg):
    """``schedule.decay_steps``, else from the end of the warm-up to the last step."""
    return cfg.schedule.decay_steps or max(1, cfg.total_steps() - cfg.warmup_steps())


def constant(cfg):
    """``schedule.learning_rate``, after a linear warm-up from ``warmup_learning_rate`` if one is set."""
    s = cfg.schedule
    warmup = cfg.warmup_steps()
    if not warmup:
        return s.learning_rate
    return schedules.WarmupPolynomialDecay(
        s.learning_rate, warmup, 1, end_learning_rate=s.learning_rate,
        initial_learning_rate=s.warmup_learning_rate,
    )


def warmup_polynomial(cfg):
    """Linear warm-up, then polynomial decay (``power``) to ``end_learning_rate``."""
    s = cfg.schedule
    return schedules.WarmupPolynomialDecay(
        s.learning_rate, cfg.warmup_steps(), _decay_steps(cfg), end_learning_rate=s.end_learning_rate,
        power=s.power, initial_learning_rate=s.warmup_learning_rate,
    )


def warmup_cosine(cfg):
    """Linear warm-up, then cosine decay to ``alpha`` times the peak."""
    s = cfg.schedule
    return schedules.WarmupCosineDecay(
        s.learning_rate, cfg.warmup_steps(), _decay_steps(cfg), alpha=s.alpha,
        initial_learning_rate=s.warmup_learning_rate,
    )


def warmup_step(cfg):
    """Linear warm-up, then the rate times ``decay_rate`` at each boundary (in steps or epochs)."""
    s = cfg.schedule
    if s.boundaries_epochs:
        boundaries = [int(round(e * cfg.steps_per_epoch())) for e in s.boundaries_epochs]
    else:
        boundaries = list(s.boundaries)
    return schedules.WarmupStepDecay(
        s.learning_rate, cfg.warmup_steps(), boundaries, decay_rate=s.decay_rate,
        initial_learning_rate=s.warmup_learning_rate,
    )
