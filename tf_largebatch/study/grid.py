"""The grid runner: every (optimizer, batch size, learning rate) of a study, resumably.

For each batch size (smallest first) and optimizer, the learning-rate grid has
``num_learning_rates`` values spaced by ``learning_rate_factor`` and centred on
the optimizer's scaling rule (:mod:`tf_largebatch.study.recipes`), shifted by
``lr_multiplier``. When the best value (fewest steps to target,
:func:`tf_largebatch.study.analysis.best_run`) sits at an edge of what was
tried, the grid grows by one value on that side, at most ``max_widening`` times
per side. At the largest batch size the grid also grows upwards until a run
diverges (at most ``sensitivity_steps`` values: the learning-rate sensitivity),
and the best learning rate is run again with ``seeds - 1`` other seeds (initial
weights and minibatch order).

Every run has the same schedule shape (linear warm-up, cosine decay,
:func:`tf_largebatch.study.engine.schedule_shape`) over its batch size's step
budget, is evaluated on the test set ``evaluations`` times, and stops early when
it diverges (a non-finite loss, or a test loss above the initial one). Each
finished run goes to the :class:`~tf_largebatch.study.store.RunStore` at once.

Once per task the gradient noise scale ``B_noise`` is measured early in training
with the package's own statistics: SNGM with ``record_gradient_statistics=True``
at the smallest batch size, ``k`` gradient samples per step from gradient
accumulation, over the first ``noise_fraction`` of its budget
(:func:`tf_largebatch.study.analysis.noise_scale`).
"""

import dataclasses
import math
import time

import numpy as np

from tf_largebatch import validation
from tf_largebatch.study import analysis, recipes
from tf_largebatch.study.store import finite_or_none, run_key

NOISE_OPTIMIZER = "SNGM"


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """What a study runs (the task aside).

    Attributes:
        optimizers: optimizer names (:func:`tf_largebatch.study.recipes.resolve`).
        batch_sizes: increasing global batch sizes.
        num_learning_rates: learning rates per (optimizer, batch size) before widening (>= 2).
        learning_rate_factor: ratio of neighbouring learning rates (> 1).
        lr_multiplier: multiplies every learning rate (> 0).
        max_widening: extra learning rates allowed per side of the grid.
        warmup_fraction: fraction of each run's steps in linear warm-up.
        budget_examples: examples per run; a run's steps are
            ``clip(budget_examples / B, min_steps, max_steps)``.
        min_steps: fewest steps of any run.
        max_steps: most steps of any run.
        evaluations: test-set evaluations per run (besides step 0).
        gradient_samples: k gradient samples per step for the optimizers that
            need them (the VR family), from gradient accumulation.
        seed: seed of initial weights and minibatches of the main runs.
        seeds: runs per optimizer at the largest batch and its best learning
            rate (seeds ``seed .. seed + seeds - 1``).
        noise_fraction: fraction of the noise run's budget the noise scale is averaged over.
        sensitivity_steps: at the largest batch size, learning rates added above
            the grid (one factor at a time) until a run diverges, for the
            learning-rate sensitivity figure.
        xla: ``"auto"``, ``"on"`` or ``"off"``: XLA compilation of the training
            steps (:meth:`jit_compile`).
    """

    optimizers: tuple = recipes.DEFAULT_OPTIMIZERS
    batch_sizes: tuple = (32, 128, 512, 2048, 8192)
    num_learning_rates: int = 4
    learning_rate_factor: float = 2.0
    lr_multiplier: float = 1.0
    max_widening: int = 2
    warmup_fraction: float = 0.1
    budget_examples: int = 2**18
    min_steps: int = 64
    max_steps: int = 1024
    evaluations: int = 32
    gradient_samples: int = 4
    seed: int = 0
    seeds: int = 3
    noise_fraction: float = 0.25
    sensitivity_steps: int = 3
    xla: str = "auto"

    def __post_init__(self):
        if not self.optimizers:
            raise ValueError("`optimizers` must name at least one optimizer.")
        sizes = [validation.check_positive_int("batch_sizes", b) for b in self.batch_sizes]
        if not sizes or sorted(set(sizes)) != sizes:
            raise ValueError(f"`batch_sizes` must be distinct and increasing. Received: {self.batch_sizes!r}")
        validation.check_positive_int("num_learning_rates", self.num_learning_rates, minimum=2)
        validation.check_number("learning_rate_factor", self.learning_rate_factor, low=1.0, low_inclusive=False)
        validation.check_number("lr_multiplier", self.lr_multiplier, low=0.0, low_inclusive=False)
        validation.check_positive_int("max_widening", self.max_widening, minimum=0)
        validation.check_number("warmup_fraction", self.warmup_fraction, low=0.0, high=1.0, high_inclusive=False)
        validation.check_positive_int("budget_examples", self.budget_examples)
        validation.check_positive_int("min_steps", self.min_steps)
        validation.check_positive_int("max_steps", self.max_steps, minimum=self.min_steps)
        validation.check_positive_int("evaluations", self.evaluations)
        validation.check_positive_int("gradient_samples", self.gradient_samples, minimum=2)
        validation.check_positive_int("seed", self.seed, minimum=0)
        validation.check_positive_int("seeds", self.seeds)
        validation.check_number("noise_fraction", self.noise_fraction, low=0.0, high=1.0, low_inclusive=False)
        validation.check_positive_int("sensitivity_steps", self.sensitivity_steps, minimum=0)
        if self.xla not in ("auto", "on", "off"):
            raise ValueError(f"`xla` must be 'auto', 'on' or 'off'. Received: xla={self.xla!r}")
        for batch_size in sizes:
            if batch_size % self.gradient_samples:
                raise ValueError(f"`batch_sizes`: {batch_size} is not divisible by gradient_samples "
                                 f"({self.gradient_samples}), the micro-batches of the VR optimizers.")

    def steps(self, batch_size):
        """The step budget of every run at ``batch_size``."""
        return int(min(self.max_steps, max(self.min_steps, round(self.budget_examples / batch_size))))

    def jit_compile(self, batch_size):
        """Whether the runs at ``batch_size`` compile their steps with XLA (``xla``: auto, on, off).

        ``auto`` compiles only where many small steps make TensorFlow's per-op
        overhead dominate (batch size <= 64 with >= 512 steps). Measured on a
        2-core CPU with the default MLP (per step, graph vs XLA): MSGD 0.33 vs 0.37
        ms at B = 128, 1.0 vs 1.05 ms at B = 512; VR-LAMB 1.6 vs 1.1 ms at B =
        128, 2.9 vs 1.9 ms at B = 512, but XLA costs 1-4 s of compilation per
        (optimizer, batch size), more than it saves over ~5 runs of 512-1024 steps.
        """
        if self.xla == "auto":
            return batch_size <= 64 and self.steps(batch_size) >= 512
        return self.xla == "on"

    def initial_learning_rates(self, recipe, batch_size):
        """The grid before widening: centred (geometrically) on the scaling rule's value."""
        centre = recipe.centre_learning_rate(batch_size) * self.lr_multiplier
        offset = (self.num_learning_rates - 1) / 2.0
        return [centre * self.learning_rate_factor ** (i - offset) for i in range(self.num_learning_rates)]

    def fingerprint(self, task):
        """The settings every stored run depends on (a resumed study must match them)."""
        return {
            "task": task.description,
            "warmup_fraction": self.warmup_fraction,
            "steps": {str(b): self.steps(b) for b in self.batch_sizes},
            "evaluations": self.evaluations,
            "gradient_samples": self.gradient_samples,
            "seed": self.seed,
            "noise_fraction": self.noise_fraction,
        }


def evaluation_steps(total_steps, evaluations):
    """Steps at which a run is evaluated: 0, then ``evaluations`` about evenly spaced, the last at the end."""
    return sorted({int(round(x)) for x in np.linspace(0, total_steps, evaluations + 1)})


def train_run(trainer, initial_weights, learning_rate, seed, evaluations):
    """One run: reset, train the budget in compiled chunks, evaluate between them.

    Stops early (``diverged``) when the chunk's mean training loss or the test
    loss is not finite, or the test loss exceeds its value at step 0. The test
    loss is measured on the same examples every time, so unlike a minibatch
    loss it has no sampling noise: a slow but sound run never trips it.

    Returns:
        A dict: ``steps_run``, ``diverged``, ``diverged_at_step``,
        ``final_test_accuracy``, ``best_test_accuracy``, ``final_train_loss``,
        ``final_test_loss``, ``initial_test_loss``, ``cpu_seconds``, ``curve``.
    """
    start = time.process_time()
    trainer.reset(initial_weights, learning_rate)
    initial_loss, initial_accuracy = trainer.evaluate()
    curve = {"step": [0], "learning_rate": [trainer.learning_rate(0)], "train_loss": [None],
             "test_loss": [finite_or_none(initial_loss)], "test_accuracy": [initial_accuracy]}
    diverged_at = None
    checkpoints = evaluation_steps(trainer.total_steps, evaluations)
    for begin, end in zip(checkpoints, checkpoints[1:]):
        train_loss = trainer.train_steps(begin, end - begin, seed)
        test_loss, test_accuracy = trainer.evaluate()
        curve["step"].append(end)
        curve["learning_rate"].append(trainer.learning_rate(end))
        curve["train_loss"].append(finite_or_none(train_loss))
        curve["test_loss"].append(finite_or_none(test_loss))
        curve["test_accuracy"].append(test_accuracy if math.isfinite(test_loss) else None)
        if not (math.isfinite(train_loss) and math.isfinite(test_loss)) or test_loss > initial_loss:
            diverged_at = end
            break
    accuracies = [a for a in curve["test_accuracy"][1:] if a is not None]
    return {
        "steps_run": curve["step"][-1],
        "diverged": diverged_at is not None,
        "diverged_at_step": diverged_at,
        "final_test_accuracy": curve["test_accuracy"][-1],
        "best_test_accuracy": max(accuracies) if accuracies else initial_accuracy,
        "final_train_loss": curve["train_loss"][-1],
        "final_test_loss": curve["test_loss"][-1],
        "initial_test_loss": finite_or_none(initial_loss),
        "cpu_seconds": time.process_time() - start,
        "curve": curve,
    }


class _InitialWeights:
    """Initial weights per seed, shared by every optimizer and batch size (built once each)."""

    def __init__(self, model_fn):
        self.model_fn = model_fn
        self._weights = {}

    def __call__(self, seed):
        if seed not in self._weights:
            import keras

            keras.utils.set_random_seed(seed)
            self._weights[seed] = build_model(self.model_fn).get_weights()
        return self._weights[seed]


def build_model(model_fn):
    """``model_fn()``, checked to be a built ``keras.Model``."""
    import keras

    model = model_fn()
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model_fn` must return a keras.Model. It returned {type(model).__name__}.")
    if not model.built or not model.trainable_variables:
        raise ValueError("`model_fn` must return a built model with trainable variables (give it a keras.Input).")
    return model


class GridRunner:
    """Runs a study's grid into a :class:`RunStore`, skipping what is stored.

    Args:
        task: a :class:`tf_largebatch.study.tasks.Task`.
        config: a :class:`StudyConfig`.
        store: a :class:`RunStore`.
        on_run_end: ``on_run_end(run, done, planned, resumed)`` called after
            each run (``run`` is None for the noise-scale measurement; ``done``
            and ``planned`` count runs so far and the current estimate of all;
            ``resumed``: it was found in the store), e.g. for progress display.
    """

    def __init__(self, task, config, store, on_run_end=None):
        import tensorflow as tf

        self.task = task
        self.config = config
        self.store = store
        self.on_run_end = on_run_end or (lambda run, done, planned, resumed: None)
        self.recipes = [recipes.resolve(name) for name in config.optimizers]
        self.initial_weights = _InitialWeights(task.model_fn)
        self._train = (tf.constant(task.train.x), tf.constant(task.train.y))
        self._test = (tf.constant(task.test.x), tf.constant(task.test.y))
        self.planned = len(self.recipes) * len(config.batch_sizes) * config.num_learning_rates \
            + len(self.recipes) * (config.seeds - 1) + 1
        self.done = 0

    def trainer(self, recipe, batch_size, **optimizer_kwargs):
        from tf_largebatch.study.engine import CompiledTrainer

        samples = self.config.gradient_samples if (
            recipe.needs_gradient_samples() or optimizer_kwargs.get("record_gradient_statistics")) else 1
        return CompiledTrainer(
            model_fn=lambda: build_model(self.task.model_fn),
            optimizer_fn=lambda lr, accumulation: recipe.build(lr, accumulation, **optimizer_kwargs),
            train=self._train,
            test=self._test,
            batch_size=batch_size,
            total_steps=self.config.steps(batch_size),
            warmup_fraction=self.config.warmup_fraction,
            gradient_samples=samples,
            jit_compile=self.config.jit_compile(batch_size),
        )

    # ------------------------------------------------------------ noise
    def noise_scale(self):
        """``B_noise`` early in training (stored once per study directory)."""
        if "noise_scale" in self.store.extras:
            self._finished(None, resumed=True)
            return self.store.extras["noise_scale"]
        recipe = recipes.resolve(NOISE_OPTIMIZER)
        batch_size = self.config.batch_sizes[0]
        trainer = self.trainer(recipe, batch_size, record_gradient_statistics=True)
        trainer.reset(self.initial_weights(self.config.seed), recipe.centre_learning_rate(batch_size))
        steps = max(2, int(self.config.noise_fraction * trainer.total_steps))
        statistics = []
        for step in range(steps):
            trainer.train_steps(step, 1, self.config.seed)
            values = trainer.optimizer.gradient_statistics().values()
            statistics.append((sum(v["mean_square"] for v in values), sum(v["variance"] for v in values)))
        result = analysis.noise_scale(statistics, self.config.gradient_samples, batch_size)
        quarters = [max(1, round(steps * q / 4)) for q in (1, 2, 3, 4)]
        result["b_noise_by_step"] = {
            str(end): analysis.noise_scale(statistics[:end], self.config.gradient_samples, batch_size)["b_noise"]
            for end in quarters
        }
        result.update(optimizer=NOISE_OPTIMIZER, batch_size=batch_size, learning_rate=recipe.centre_learning_rate(
            batch_size), gradient_samples=self.config.gradient_samples)
        self.store.put_extra("noise_scale", result)
        self._finished(None, resumed=False)
        return result

    # ------------------------------------------------------------- runs
    def _finished(self, run, resumed):
        self.done += 1
        self.on_run_end(run, self.done, max(self.planned, self.done), resumed)

    def _run(self, recipe, batch_size, learning_rate, seed_offset, trainer_cache):
        key = run_key(recipe.name, batch_size, learning_rate, seed_offset)
        stored = self.store.get(key)
        if stored is not None:
            self._finished(stored, resumed=True)
            return stored
        if trainer_cache.get("trainer") is None:
            trainer_cache["trainer"] = self.trainer(recipe, batch_size)
        trainer = trainer_cache["trainer"]
        seed = self.config.seed + seed_offset
        result = train_run(trainer, self.initial_weights(seed), learning_rate, seed, self.config.evaluations)
        run = {
            "optimizer": recipe.name,
            "optimizer_class": f"{recipe.source}.optimizers.{recipe.class_name}",
            "batch_size": batch_size,
            "learning_rate": key[2],
            "seed_offset": seed_offset,
            "seed": seed,
            "steps": trainer.total_steps,
            "gradient_samples": trainer.gradient_samples,
            **result,
        }
        self.store.add(run)
        self._finished(run, resumed=False)
        return run

    def run_cell(self, recipe, batch_size):
        """Every learning rate of one (optimizer, batch size), widening at an edge; then the extra seeds."""
        config = self.config
        target = self.task.target
        cache = {}
        rates = config.initial_learning_rates(recipe, batch_size)
        group = [self._run(recipe, batch_size, lr, 0, cache) for lr in rates]
        widened = {1: 0, -1: 0}
        while True:
            direction = analysis.widening_direction(group, target)
            if direction == 0 or widened[direction] >= config.max_widening:
                break
            widened[direction] += 1
            self.planned += 1
            rates = [run["learning_rate"] for run in group]
            factor = config.learning_rate_factor
            edge = max(rates) * factor if direction > 0 else min(rates) / factor
            group.append(self._run(recipe, batch_size, edge, 0, cache))
        if batch_size == config.batch_sizes[-1]:
            for _ in range(config.sensitivity_steps):
                top = max(group, key=lambda run: run["learning_rate"])
                if top["diverged"]:
                    break
                self.planned += 1
                group.append(self._run(recipe, batch_size, top["learning_rate"] * config.learning_rate_factor, 0,
                                       cache))
            best = analysis.best_run(group, target)
            if best is not None:
                for offset in range(1, config.seeds):
                    self._run(recipe, batch_size, best["learning_rate"], offset, cache)
            else:
                self.planned -= config.seeds - 1
        return group

    def run(self):
        """The whole grid (smallest batch size first); returns every stored run."""
        self.noise_scale()
        for batch_size in self.config.batch_sizes:
            for recipe in self.recipes:
                self.run_cell(recipe, batch_size)
        return self.store.runs
