"""A learning-rate schedule counted in optimizer updates for Keras's own optimizers.

Under gradient accumulation (``gradient_accumulation_steps = A``) a Keras
optimizer evaluates its schedule at its micro-step counter, which advances A
times per update: a schedule written in updates would run A times too fast
(a cosine over 160 epochs reaches 0 after 160/A). This package's optimizers
evaluate schedules at ``optimizer.iterations`` (updates) already;
:func:`in_updates` wraps a schedule for the others.
"""

import keras


@keras.saving.register_keras_serializable(package="tf_largebatch")
class ScheduleInUpdates(keras.optimizers.schedules.LearningRateSchedule):
    """``schedule(micro_step // gradient_accumulation_steps)``.

    Evaluated at the micro-step counter of a Keras optimizer with gradient
    accumulation, this is ``schedule`` at the optimizer update the micro-step
    belongs to (the update itself is applied at its last micro-step).

    Args:
        schedule: a ``keras.optimizers.schedules.LearningRateSchedule`` written
            in optimizer updates.
        gradient_accumulation_steps: micro-steps per update (an integer >= 1).
    """

    def __init__(self, schedule, gradient_accumulation_steps):
        if isinstance(gradient_accumulation_steps, bool) or not isinstance(gradient_accumulation_steps, int) \
                or gradient_accumulation_steps < 1:
            raise ValueError("`gradient_accumulation_steps` must be an integer >= 1. "
                             f"Received: gradient_accumulation_steps={gradient_accumulation_steps!r}")
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            raise ValueError(f"`schedule` must be a LearningRateSchedule. Received: schedule={schedule!r}")
        self.schedule = schedule
        self.gradient_accumulation_steps = gradient_accumulation_steps

    def __call__(self, step):
        return self.schedule(keras.ops.floor_divide(step, self.gradient_accumulation_steps))

    def get_config(self):
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)


def counts_micro_steps(optimizer_class):
    """Whether ``optimizer_class`` evaluates a schedule at its micro-step counter
    (Keras's own optimizers), rather than in updates (this package's)."""
    from tf_largebatch.optimizers.base import LargeBatchOptimizer

    return not issubclass(optimizer_class, LargeBatchOptimizer)


def in_updates(learning_rate, optimizer_class, gradient_accumulation_steps):
    """``learning_rate`` as ``optimizer_class`` must receive it to follow it in updates.

    A float, a schedule of this package's optimizers, or anything without
    accumulation is returned unchanged; a schedule for a Keras optimizer with
    accumulation is wrapped in :class:`ScheduleInUpdates`.
    """
    if (
        isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
        and (gradient_accumulation_steps or 1) > 1
        and counts_micro_steps(optimizer_class)
    ):
        return ScheduleInUpdates(learning_rate, gradient_accumulation_steps)
    return learning_rate
