"""The study's protocol: tuning on validation, reporting seeds on test, resumably.

Per batch size (smallest first), for every *tuned* optimizer:

1. **Tuning grid** (``tuning_seeds`` seeds, selection on the validation split): the same
   relative grid for everyone, ``num_learning_rates`` peak learning rates a
   factor ``learning_rate_factor`` apart, geometrically centred on the
   optimizer's scaling rule (:mod:`tf_largebatch.study.recipes`), times
   ``schedule_lengths`` schedule lengths, each half the next, the longest the
   batch size's budget ``clip(budget_examples / B, min_steps, max_steps)``.
   For every target the selected setting has the fewest mean validation steps
   to the target over its tuning seeds, every seed reaching it (one lucky seed
   does not win a selection). When any optimizer's selection sits at an edge of the grid, the
   grid grows on that side *for every optimizer at that batch size* (one more
   learning rate; or a schedule twice as long, or half as long), at most
   ``max_widening`` times per side and dimension: everyone keeps the same number
   of trials, and a budget that was too short grows until the selection sits
   inside it.
2. **Reporting seeds** (test split): the selected setting of each target run
   again with seeds ``seed + 1 .. seed + seeds``, the same seeds (initial
   weights and minibatch order) for every optimizer, so comparisons are paired.

An **untuned-transfer** contender (``recipe.transfer_from``) is never tuned: at
every batch size its reporting seeds run the setting selected for its
``transfer_from`` optimizer at the smallest batch size.

**Sensitivity** (reported apart, never part of the selection): at the largest
batch size each tuned optimizer's selected learning rate times
``learning_rate_factor ** k``, ``k = -sensitivity_steps .. +sensitivity_steps``,
at its selected length, on the validation split.

Every run evaluates the validation and test splits at steps spaced at most
``max(1, eval_spacing * step)`` apart (:func:`evaluation_steps`), so the
interpolated crossing of a target is off by at most that much; it stops once
every target is reached on both splits, or when it diverges (a non-finite loss,
or a validation loss above its initial value). The reporting runs at the
smallest batch size also measure the gradient noise scale along the way
(:meth:`tf_largebatch.study.engine.CompiledTrainer.gradient_noise`) at steps
1, 2, 4, ... until they stop.
"""

import dataclasses
import math
import time

from tf_largebatch import validation
from tf_largebatch.study import analysis, recipes
from tf_largebatch.study.store import finite_or_none, run_key

SPLITS = ("validation", "test")


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """What a study runs (the task aside).

    Attributes:
        optimizers: optimizer names (:func:`tf_largebatch.study.recipes.resolve`),
            including untuned-transfer contenders (``"MSGD-untuned"``).
        batch_sizes: increasing global batch sizes.
        num_learning_rates: learning rates per (optimizer, batch size) before widening (>= 2).
        learning_rate_factor: ratio of neighbouring learning rates (> 1).
        lr_multiplier: multiplies every learning rate (> 0).
        schedule_lengths: schedule lengths per (optimizer, batch size) before widening (>= 1),
            each half the next.
        max_widening: extra grid values allowed per side of each dimension.
        warmup_fraction: fraction of each run's schedule in linear warm-up.
        budget_examples: the longest initial schedule is
            ``clip(budget_examples / B, min_steps, max_steps)`` steps.
        min_steps: fewest steps of that longest initial schedule.
        max_steps: most steps of that longest initial schedule.
        eval_spacing: evaluations are at most ``max(1, eval_spacing * step)`` steps apart.
        gradient_samples: k gradient samples per step for the optimizers that
            need them (the VR family), from gradient accumulation; also the
            micro-batches of each noise-scale probe.
        seed: seed of the tuning runs (and of the built-in tasks' data).
        seeds: reporting seeds per cell (``seed + 1 .. seed + seeds``).
        tuning_seeds: seeds of every tuning run (``seed``, ``seed + 1000``, ...,
            apart from the reporting seeds); a setting is selected on the mean
            of its seeds' validation steps, every seed reaching the target.
        sensitivity_steps: learning rates on each side of the selected one in
            the sensitivity runs at the largest batch size.
        noise_probes: independent probes per noise-scale measurement.
        noise_micro_batch: examples per micro-batch of a probe.
        xla: ``"auto"``, ``"on"`` or ``"off"``: XLA compilation of the training
            steps (:meth:`jit_compile`).
    """

    optimizers: tuple = recipes.DEFAULT_OPTIMIZERS
    batch_sizes: tuple = (16, 64, 256, 1024)
    num_learning_rates: int = 4
    learning_rate_factor: float = 2.0
    lr_multiplier: float = 1.0
    schedule_lengths: int = 3
    max_widening: int = 2
    warmup_fraction: float = 0.1
    budget_examples: int = 2**14
    min_steps: int = 32
    max_steps: int = 4096
    eval_spacing: float = 0.05
    gradient_samples: int = 4
    seed: int = 0
    seeds: int = 3
    tuning_seeds: int = 2
    sensitivity_steps: int = 2
    noise_probes: int = 4
    noise_micro_batch: int = 32
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
        validation.check_positive_int("schedule_lengths", self.schedule_lengths)
        validation.check_positive_int("max_widening", self.max_widening, minimum=0)
        validation.check_number("warmup_fraction", self.warmup_fraction, low=0.0, high=1.0, high_inclusive=False)
        validation.check_positive_int("budget_examples", self.budget_examples)
        validation.check_positive_int("min_steps", self.min_steps)
        validation.check_positive_int("max_steps", self.max_steps, minimum=self.min_steps)
        validation.check_number("eval_spacing", self.eval_spacing, low=0.0, high=1.0, low_inclusive=False)
        validation.check_positive_int("gradient_samples", self.gradient_samples, minimum=2)
        validation.check_positive_int("seed", self.seed, minimum=0)
        validation.check_positive_int("seeds", self.seeds)
        validation.check_positive_int("tuning_seeds", self.tuning_seeds)
        validation.check_positive_int("sensitivity_steps", self.sensitivity_steps, minimum=0)
        validation.check_positive_int("noise_probes", self.noise_probes)
        validation.check_positive_int("noise_micro_batch", self.noise_micro_batch)
        if self.xla not in ("auto", "on", "off"):
            raise ValueError(f"`xla` must be 'auto', 'on' or 'off'. Received: xla={self.xla!r}")
        for batch_size in sizes:
            if batch_size % self.gradient_samples:
                raise ValueError(f"`batch_sizes`: {batch_size} is not divisible by gradient_samples "
                                 f"({self.gradient_samples}), the micro-batches of the VR optimizers.")

    def budget(self, batch_size):
        """The longest schedule of the initial grid at ``batch_size``."""
        return int(min(self.max_steps, max(self.min_steps, round(self.budget_examples / batch_size))))

    def length(self, batch_size, index):
        """Schedule length number ``index`` (0: the budget; -1: half of it; +1: twice; ...), at least 1 step."""
        return max(1, int(round(self.budget(batch_size) * 2.0 ** index)))

    def learning_rate(self, recipe, batch_size, index):
        """Learning rate number ``index`` of the grid (0 .. num_learning_rates - 1 before widening)."""
        centre = recipe.centre_learning_rate(batch_size) * self.lr_multiplier
        return centre * self.learning_rate_factor ** (index - (self.num_learning_rates - 1) / 2.0)

    def jit_compile(self, batch_size):
        """Whether the runs at ``batch_size`` compile their steps with XLA (``xla``: auto, on, off).

        ``auto`` compiles only where many small steps make TensorFlow's per-op
        overhead dominate (batch size <= 64 with a budget >= 512 steps). XLA
        costs 1-4 s of compilation per (optimizer, batch size) on a 2-core CPU.
        """
        if self.xla == "auto":
            return batch_size <= 64 and self.budget(batch_size) >= 512
        return self.xla == "on"

    def fingerprint(self, task):
        """The settings every stored run depends on (a resumed study must match them)."""
        return {
            "task": task.description,
            "targets": list(task.targets),
            "warmup_fraction": self.warmup_fraction,
            "eval_spacing": self.eval_spacing,
            "gradient_samples": self.gradient_samples,
            "seed": self.seed,
            "noise": [self.noise_probes, self.noise_micro_batch],
        }


#: Seed offsets of the tuning runs are multiples of this, apart from the reporting seeds (1 .. seeds).
TUNING_SEED_STRIDE = 1000


def tuning_offsets(count):
    """Seed offsets of the tuning runs: 0, 1000, 2000, ... (``count`` of them)."""
    return [TUNING_SEED_STRIDE * i for i in range(count)]


def evaluation_steps(length, spacing):
    """Steps at which a run is evaluated: 0, 1, 2, ..., then about ``1 + spacing`` apart, and ``length``.

    Neighbours ``s < s'`` satisfy ``s' - s <= max(1, spacing * s)``, so a
    target crossed between them is placed within that many steps.
    """
    steps = [0]
    while steps[-1] < length:
        steps.append(min(length, max(steps[-1] + 1, int(math.floor(steps[-1] * (1.0 + spacing))))))
    return steps


def _reached_everything(curve, targets):
    return all(any(a is not None and a >= max(targets) for a in curve[f"{split}_accuracy"]) for split in SPLITS)


def train_run(trainer, initial_weights, learning_rate, length, seed, targets, spacing, noise=None):
    """One run: reset, train in compiled chunks, evaluate both splits between them.

    Stops once every target is reached on both splits, or when it diverges (a
    non-finite training or validation loss, or a validation loss above its value
    at step 0; the validation loss is measured on the same examples every time,
    so a slow but sound run never trips it). A target reached before a
    divergence counts. An optimizer with a scale-invariant clock (AdaScale: the
    schedule runs on ``tau``, not on the step) stops after the update that
    brings ``tau`` to ``length`` (:meth:`CompiledTrainer.steps_within_budget`
    shortens the last chunks so that no update runs past it); its steps are
    real optimizer steps.

    Args:
        noise: None, or ``{"probes", "samples", "micro_batch"}``: measure the
            gradient noise at steps 0, 1, 2, 4, ... (the first evaluation at or
            after each) until the run stops.

    Returns:
        A dict: ``steps_run``, ``diverged``, ``diverged_at_step``,
        ``best_validation_accuracy``, ``best_test_accuracy``, ``cpu_seconds``,
        ``curve`` (per evaluation: ``step``, ``learning_rate``, ``train_loss``,
        ``validation_loss``, ``validation_accuracy``, ``test_loss``,
        ``test_accuracy``) and ``noise`` (``[[step, [|G_big|^2...], [|G_small|^2...]], ...]``).
    """
    start = time.process_time()
    trainer.reset(initial_weights, learning_rate, length)
    curve = {"step": [], "learning_rate": [], "train_loss": []}
    curve.update({f"{split}_{what}": [] for split in SPLITS for what in ("loss", "accuracy")})
    noise_series, next_probe = [], 0

    def record(step, train_loss):
        curve["step"].append(step)
        curve["learning_rate"].append(trainer.learning_rate(step))
        curve["train_loss"].append(finite_or_none(train_loss))
        for split in SPLITS:
            loss, accuracy = trainer.evaluate(split)
            curve[f"{split}_loss"].append(finite_or_none(loss))
            curve[f"{split}_accuracy"].append(accuracy if math.isfinite(loss) else None)
        return curve["validation_loss"][-1]

    initial_loss = record(0, None)
    diverged_at = None
    checkpoints = evaluation_steps(length, spacing)
    begin = 0
    while begin < length:
        end = min(next(c for c in checkpoints if c > begin), begin + trainer.steps_within_budget(length))
        if noise is not None and begin >= next_probe:
            big, small = trainer.gradient_noise(seed + 1_000_003, begin, noise["probes"], noise["samples"],
                                                noise["micro_batch"])
            noise_series.append([begin, [float(v) for v in big], [float(v) for v in small]])
            next_probe = max(1, 2 * begin)
        train_loss = trainer.train_steps(begin, end - begin, seed)
        loss = record(end, train_loss)
        begin = end
        if not math.isfinite(train_loss) or loss is None or (initial_loss is not None and loss > initial_loss):
            diverged_at = end
            break
        if _reached_everything(curve, targets) or trainer.steps_within_budget(length) == 0:
            break

    def best(split):
        values = [a for a in curve[f"{split}_accuracy"] if a is not None]
        return max(values) if values else None

    return {
        "steps_run": curve["step"][-1],
        "diverged": diverged_at is not None,
        "diverged_at_step": diverged_at,
        "best_validation_accuracy": best("validation"),
        "best_test_accuracy": best("test"),
        "cpu_seconds": time.process_time() - start,
        "curve": curve,
        "noise": noise_series,
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


@dataclasses.dataclass
class _Grid:
    """The index ranges of one batch size's tuning grid, shared by every tuned optimizer."""

    lr_low: int
    lr_high: int
    length_low: int
    length_high: int
    widened: dict = dataclasses.field(default_factory=dict)

    def points(self):
        return [(i, j) for i in range(self.lr_low, self.lr_high + 1) for j in range(self.length_low,
                                                                                     self.length_high + 1)]


class GridRunner:
    """Runs a study's protocol into a :class:`RunStore`, skipping what is stored.

    Args:
        task: a :class:`tf_largebatch.study.tasks.Task`.
        config: a :class:`StudyConfig`.
        store: a :class:`RunStore`.
        on_run_end: ``on_run_end(run, done, planned, resumed)`` called after
            each run (``done`` and ``planned`` count runs so far and the current
            estimate of all; ``resumed``: it was found in the store).

    After :meth:`run`, :attr:`plan` says which runs play which role:
    ``tuning[(optimizer, B)]`` (keys), ``selected[(optimizer, B, target)]``
    (``(learning_rate, length)`` or None), ``reporting[(optimizer, B, target)]``
    (keys), ``sensitivity[optimizer]`` (keys).
    """

    def __init__(self, task, config, store, on_run_end=None):
        import tensorflow as tf

        self.task = task
        self.config = config
        self.store = store
        self.on_run_end = on_run_end or (lambda run, done, planned, resumed: None)
        self.recipes = [recipes.resolve(name) for name in config.optimizers]
        self.tuned = [r for r in self.recipes if not r.transfer_from]
        self.transfers = [r for r in self.recipes if r.transfer_from]
        self.initial_weights = _InitialWeights(task.model_fn)
        self._train = (tf.constant(task.train.x), tf.constant(task.train.y))
        self._splits = {"validation": (task.validation.x, task.validation.y), "test": (task.test.x, task.test.y)}
        cells = len(self.tuned) * len(config.batch_sizes)
        self.planned = cells * (config.num_learning_rates * config.schedule_lengths * config.tuning_seeds
                                + config.seeds) \
            + len(self.transfers) * len(config.batch_sizes) * config.seeds
        self.done = 0
        self.plan = {"tuning": {}, "selected": {}, "reporting": {}, "reporting_setting": {}, "sensitivity": {},
                     "grids": {}}
        self._indices = {}
        self._trainers = {}
        problem = self.check_contenders(self.recipes)
        if problem:
            raise ValueError(problem)

    @staticmethod
    def check_contenders(recipe_list):
        """A message if an untuned contender's ``transfer_from`` optimizer is not tuned in the same study."""
        tuned_names = {r.name for r in recipe_list if not r.transfer_from}
        for recipe in recipe_list:
            if recipe.transfer_from and recipe.transfer_from not in tuned_names:
                return (f"`optimizers`: the untuned contender {recipe.name!r} reuses the settings selected for "
                        f"{recipe.transfer_from!r}, which must be in the study too.")
        return None

    def trainer(self, recipe, batch_size):
        from tf_largebatch.study.engine import CompiledTrainer

        key = (recipe.name, batch_size)
        if key not in self._trainers:
            # One batch size at a time (its widening rounds revisit every optimizer): keep memory flat.
            self._trainers = {k: v for k, v in self._trainers.items() if k[1] == batch_size}
            samples = self.config.gradient_samples if recipe.needs_gradient_samples() else 1
            # AdaScale's S: this batch over the smallest, whose setting an untuned contender reuses.
            extra = {"scale": batch_size / self.config.batch_sizes[0]} if recipe.batch_scale else {}
            self._trainers[key] = CompiledTrainer(
                model_fn=lambda: build_model(self.task.model_fn),
                optimizer_fn=lambda lr, accumulation: recipe.build(lr, accumulation, **extra),
                train=self._train,
                splits=self._splits,
                batch_size=batch_size,
                warmup_fraction=self.config.warmup_fraction,
                gradient_samples=samples,
                jit_compile=self.config.jit_compile(batch_size),
            )
        return self._trainers[key]

    # ------------------------------------------------------------- runs
    def _finished(self, run, resumed):
        self.done += 1
        self.on_run_end(run, self.done, max(self.planned, self.done), resumed)

    def _run(self, recipe, batch_size, learning_rate, length, seed_offset, probe_noise=False):
        key = run_key(recipe.name, batch_size, learning_rate, length, seed_offset)
        stored = self.store.get(key)
        if stored is not None:
            self._finished(stored, resumed=True)
            return key
        config = self.config
        trainer = self.trainer(recipe, batch_size)
        seed = config.seed + seed_offset
        noise = ({"probes": config.noise_probes, "samples": config.gradient_samples,
                  "micro_batch": config.noise_micro_batch} if probe_noise else None)
        result = train_run(trainer, self.initial_weights(seed), learning_rate, length, seed, self.task.targets,
                           config.eval_spacing, noise=noise)
        run = {
            "optimizer": recipe.name,
            "optimizer_class": f"{recipe.source}.optimizers.{recipe.class_name}",
            "batch_size": batch_size,
            "learning_rate": key[2],
            "length": int(length),
            "seed_offset": seed_offset,
            "seed": seed,
            "gradient_samples": trainer.gradient_samples,
            **result,
        }
        self.store.add(run)
        self._finished(run, resumed=False)
        return key

    # ----------------------------------------------------------- tuning
    def _select(self, recipe, batch_size, target):
        """``((i, j), reached)``: the grid indices of the selected setting (:func:`analysis.best_setting`)."""
        groups = {}
        for key, indices in self._indices[(recipe.name, batch_size)].items():
            groups.setdefault(indices, []).append(self.store.get(key))
        return analysis.best_setting(groups, target, split="validation")

    def _edges(self, batch_size, grid):
        """Which sides of the grid some optimizer's selection sits on: ``{("lr"|"length", -1|+1)}``."""
        edges = set()
        for recipe in self.tuned:
            for target in self.task.targets:
                best, reached = self._select(recipe, batch_size, target)
                if best is None:
                    edges.add(("lr", -1))
                    continue
                i, j = best
                if grid.lr_high > grid.lr_low:
                    if i == grid.lr_high:
                        edges.add(("lr", 1))
                    elif i == grid.lr_low:
                        edges.add(("lr", -1))
                if not reached or j == grid.length_high:
                    edges.add(("length", 1))
                elif j == grid.length_low and grid.length_high > grid.length_low:
                    edges.add(("length", -1))
        return edges

    def _tune(self, batch_size):
        config = self.config
        grid = _Grid(0, config.num_learning_rates - 1, 1 - config.schedule_lengths, 0)
        self.plan["grids"][batch_size] = grid
        while True:
            for recipe in self.tuned:
                cell = (recipe.name, batch_size)
                keys = self.plan["tuning"].setdefault(cell, [])
                indices = self._indices.setdefault(cell, {})
                for i, j in grid.points():
                    lr = config.learning_rate(recipe, batch_size, i)
                    length = config.length(batch_size, j)
                    for offset in tuning_offsets(config.tuning_seeds):
                        key = run_key(recipe.name, batch_size, lr, length, offset)
                        if key not in indices:
                            self._run(recipe, batch_size, lr, length, offset)
                            keys.append(key)
                            indices[key] = (i, j)
            grown = False
            for dimension, side in sorted(self._edges(batch_size, grid)):
                if grid.widened.get((dimension, side), 0) >= config.max_widening:
                    continue
                if dimension == "length" and side < 0 and config.length(batch_size, grid.length_low - 1) == \
                        config.length(batch_size, grid.length_low):
                    continue  # already 1 step
                grid.widened[(dimension, side)] = grid.widened.get((dimension, side), 0) + 1
                attribute = f"{dimension}_{'high' if side > 0 else 'low'}"
                setattr(grid, attribute, getattr(grid, attribute) + side)
                grown = True
                extra = (grid.length_high - grid.length_low + 1) if dimension == "lr" else \
                    (grid.lr_high - grid.lr_low + 1)
                self.planned += extra * len(self.tuned) * config.tuning_seeds
            if not grown:
                break
        for recipe in self.tuned:
            for target in self.task.targets:
                best, reached = self._select(recipe, batch_size, target)
                self.plan["selected"][(recipe.name, batch_size, target)] = (
                    (run_key("", 0, config.learning_rate(recipe, batch_size, best[0]), 0, 0)[2],
                     config.length(batch_size, best[1])) if reached else None)

    # -------------------------------------------------------- reporting
    def _report(self, recipe, batch_size, source):
        """Reporting seeds of ``recipe`` at ``batch_size`` with the settings selected for ``source``."""
        smallest = batch_size == self.config.batch_sizes[0]
        for target in self.task.targets:
            chosen = self.plan["selected"].get(source + (target,))
            keys = []
            if chosen is not None:
                for offset in range(1, self.config.seeds + 1):
                    keys.append(self._run(recipe, batch_size, chosen[0], chosen[1], offset, probe_noise=smallest))
            self.plan["reporting"][(recipe.name, batch_size, target)] = keys
            self.plan["reporting_setting"][(recipe.name, batch_size, target)] = chosen

    def _sensitivity(self):
        config = self.config
        largest = config.batch_sizes[-1]
        for recipe in self.tuned:
            chosen = None
            for target in reversed(self.task.targets):
                chosen = chosen or self.plan["selected"].get((recipe.name, largest, target))
            keys = []
            if chosen is not None:
                for k in range(-config.sensitivity_steps, config.sensitivity_steps + 1):
                    lr = chosen[0] * config.learning_rate_factor ** k
                    self.planned += 1
                    keys.append(self._run(recipe, largest, lr, chosen[1], 0))
            self.plan["sensitivity"][recipe.name] = keys

    def run(self):
        """The whole protocol (smallest batch size first); returns every stored run."""
        smallest = self.config.batch_sizes[0]
        for batch_size in self.config.batch_sizes:
            self._tune(batch_size)
            for recipe in self.tuned:
                self._report(recipe, batch_size, (recipe.name, batch_size))
            for recipe in self.transfers:
                self._report(recipe, batch_size, (recipe.transfer_from, smallest))
        self._sensitivity()
        return self.store.runs
