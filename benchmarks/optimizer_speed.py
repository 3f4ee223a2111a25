"""Speed, memory and scaling of tf_largebatch's optimizers, as ratios to Keras's own.

    python benchmarks/optimizer_speed.py            # 16 min on a busy 2-core CPU
    python benchmarks/optimizer_speed.py --quick    # fewer repetitions, no 1e7 model

Prints, in one run:

1. training-step time of each package optimizer divided by the step time of
   its closest Keras built-in (SNGM, LARS -> SGD with momentum; LAMB -> Keras
   Lamb; each VR variant -> its own base optimizer), on a small CNN and on a
   transformer block, (a) on one device with ``jit_compile=True`` and (b) under
   ``MirroredStrategy`` over 4 logical CPU replicas;
2. optimizer memory: optimizer-state elements per model parameter, counted
   from ``optimizer.variables`` (scalars such as the iteration counter left out);
3. how the VR variants' cost over their base grows with the number of
   parameters (about 1e5 to 1e7) and with the number of replicas;
4. the VR overhead grid (parameters x one device, XLA, MirroredStrategy);
5. the optimizer step alone: ``optimizer.apply`` on fixed gradients in a
   ``tf.function`` (no model, no ``fit``), for the layer-wise optimizers against
   their Keras counterparts, so that the update rule's own cost is not diluted
   by the model's forward and backward passes.

Method: every contender gets its own copy of the model (same seed), compiled
and warmed up with a short ``fit`` first; then the contenders are timed in
interleaved rounds (the order rotates each round), each round one ``fit`` of a
few steps on the same in-memory batch (so ``fit``'s fixed per-call cost is in
both numerator and denominator: the ratios are those a user of ``fit`` sees). The headline is the median
over rounds of the *paired* ratio (contender / built-in in the same round), in
wall time and in process CPU time: on a shared, noisy machine the ratio of
neighbours in time is far steadier than any absolute time.

On one device the VR optimizers need ``gradient_accumulation_steps >= 2`` (their
GSNR needs k >= 2 gradient samples), so on one device each VR variant *and its
base* run with ``gradient_accumulation_steps=2``; a step is then one
micro-batch call.
"""

import argparse
import inspect
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel("ERROR")  # one tf.function per contender: the retracing warnings are expected
MAX_REPLICAS = 4
# Logical CPU replicas must exist before TensorFlow initialises its runtime.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration() for _ in range(MAX_REPLICAS)]
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tf_largebatch.optimizers as tlb  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine_state  # noqa: E402
from machine_state import MachineState  # noqa: E402

# name -> factory(**extra keyword arguments)
OPTIMIZERS = {
    "SGD": lambda **kw: keras.optimizers.SGD(0.01, **kw),
    "SGD+momentum": lambda **kw: keras.optimizers.SGD(0.01, momentum=0.9, **kw),
    "Adam": lambda **kw: keras.optimizers.Adam(1e-3, **kw),
    "keras Lamb": lambda **kw: keras.optimizers.Lamb(1e-3, **kw),
    "SNGM": lambda **kw: tlb.SNGM(0.01, **kw),
    "LARS": lambda **kw: tlb.LARS(1.0, **kw),
    "LAMB": lambda **kw: tlb.LAMB(1e-3, **kw),
    "VRSGD": lambda **kw: tlb.VRSGD(0.01, **kw),
    "VRMomentum": lambda **kw: tlb.VRMomentum(0.01, **kw),
    "VRAdam": lambda **kw: tlb.VRAdam(1e-3, **kw),
    "VRLAMB": lambda **kw: tlb.VRLAMB(1e-3, **kw),
    "VRLARS": lambda **kw: tlb.VRLARS(1.0, **kw),
    "LayerwiseAdam": lambda **kw: tlb.LayerwiseAdam(1e-3, **kw),
    "LAMB (weight decay)": lambda **kw: tlb.LAMB(1e-3, weight_decay=0.01, **kw),
}
if "record_gradient_statistics" in inspect.signature(tlb.VR.__init__).parameters:
    # Explicit both ways, so that runs of older commits (whose VR default was True)
    # give the same columns: False = no monitoring statistics unless requested.
    for _name, _factory in [("VRAdam", lambda **kw: tlb.VRAdam(1e-3, **kw)),
                            ("VRMomentum", lambda **kw: tlb.VRMomentum(0.01, **kw))]:
        for _record in (False, True):
            OPTIMIZERS[f"{_name} record={_record}"] = (
                lambda factory=_factory, record=_record, **kw: factory(record_gradient_statistics=record, **kw)
            )
# package optimizer -> closest Keras built-in (or, for a VR variant, its base)
PAIRS = {
    "SNGM": "SGD+momentum",
    "LARS": "SGD+momentum",
    "LAMB": "keras Lamb",
    "VRSGD": "SGD",
    "VRMomentum": "SGD+momentum",
    "VRAdam": "Adam",
    "VRLAMB": "LAMB",
    "VRLARS": "LARS",
}
VR_NAMES = [name for name in PAIRS if name.startswith("VR")]
# The VR overhead grid (section 4): each VR variant, with record_gradient_statistics False
# and True, over its base. (Code from before that argument existed runs the columns it has.)
VR_OVERHEAD_PAIRS = {
    name: base
    for name, base in [("VRMomentum record=False", "SGD+momentum"), ("VRMomentum record=True", "SGD+momentum"),
                       ("VRAdam record=False", "Adam"), ("VRAdam record=True", "Adam")]
    if name in OPTIMIZERS
} or {"VRMomentum": "SGD+momentum", "VRAdam": "Adam"}


# Section 5: the optimizer step alone, (package optimizer, Keras counterpart) pairs. LAMB's weight
# decay is also paired with Keras's Lamb with (decoupled) weight decay, which does the same reads.
OPTIMIZERS["keras Lamb (weight decay)"] = lambda **kw: keras.optimizers.Lamb(1e-3, weight_decay=0.01, **kw)
STEP_ALONE_PAIRS = [
    ("SNGM", "SGD+momentum"),
    ("LARS", "SGD+momentum"),
    ("LAMB", "keras Lamb"),
    ("LAMB (weight decay)", "keras Lamb"),
    ("LAMB (weight decay)", "keras Lamb (weight decay)"),
    ("LayerwiseAdam", "keras Lamb"),
]


# ------------------------------------------------------------------ models
def small_cnn():
    """About 5.7e4 parameters."""
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ],
        name="small_cnn",
    )


def transformer_block(sequence_length=64, width=128, heads=4, vocabulary=1000):
    """One encoder block with embedding and classifier, about 3.3e5 parameters."""
    tokens = keras.Input((sequence_length,), dtype="int32")
    x = keras.layers.Embedding(vocabulary, width)(tokens)
    attention = keras.layers.MultiHeadAttention(heads, width // heads)(x, x)
    x = keras.layers.LayerNormalization()(x + attention)
    feed_forward = keras.layers.Dense(4 * width, activation="gelu")(x)
    feed_forward = keras.layers.Dense(width)(feed_forward)
    x = keras.layers.LayerNormalization()(x + feed_forward)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(tokens, keras.layers.Dense(10)(x), name="transformer_block")


def mlp(hidden, inputs=256, layers=2):
    return keras.Sequential(
        [keras.Input((inputs,))] + [keras.layers.Dense(hidden, activation="relu") for _ in range(layers)]
        + [keras.layers.Dense(10)],
        name=f"mlp_{hidden}",
    )


def mlp_hidden_for(num_parameters, inputs=256):
    """Hidden width h of a 2-hidden-layer MLP with about ``num_parameters`` (h^2 + (inputs + 12) h)."""
    b = inputs + 12
    return int((-b + np.sqrt(b * b + 4 * num_parameters)) / 2)


def data_for(model, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    shape = model.inputs[0].shape[1:]
    if model.inputs[0].dtype == "int32":
        x = rng.integers(0, 1000, size=(batch_size, *shape)).astype("int32")
    else:
        x = rng.normal(size=(batch_size, *shape)).astype("float32")
    y = rng.integers(0, 10, size=(batch_size,)).astype("int32")
    return x, y


# ----------------------------------------------------------------- timing
class Contender:
    """One (optimizer, model copy) compiled for ``fit`` on a fixed in-memory batch."""

    def __init__(self, label, optimizer_name, build_model, x, y, strategy, jit_compile, accumulation):
        self.label = label
        kwargs = {"gradient_accumulation_steps": accumulation} if accumulation > 1 else {}
        keras.utils.set_random_seed(0)
        with strategy.scope():
            self.model = build_model()
            self.optimizer = OPTIMIZERS[optimizer_name](**kwargs)
            self.model.compile(
                optimizer=self.optimizer,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=jit_compile,
            )
        self.dataset = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(len(y), drop_remainder=True)
        self.wall = []
        self.cpu = []

    def run(self, steps):
        self.model.fit(self.dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)

    def timed(self, steps):
        wall, cpu = time.perf_counter(), time.process_time()
        self.run(steps)
        self.wall.append((time.perf_counter() - wall) / steps)
        self.cpu.append((time.process_time() - cpu) / steps)


def interleaved(contenders, steps, rounds):
    for contender in contenders:
        contender.run(3)  # trace/compile, and build the optimizer
    for round_index in range(rounds):
        shift = round_index % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            contender.timed(steps)


def paired_ratio(a, b, attribute):
    return statistics.median(x / y for x, y in zip(getattr(a, attribute), getattr(b, attribute)))


def _ratio_cell(a, b):
    return f"{paired_ratio(a, b, 'wall'):.3f}x ({paired_ratio(a, b, 'cpu'):.3f}x)".rjust(26)


def state_per_parameter(optimizer, model):
    """Optimizer-state elements per model parameter (non-scalar optimizer variables)."""
    parameters = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    state = sum(int(np.prod(v.shape)) for v in optimizer.variables if len(v.shape) > 0)
    return state / parameters


_STRATEGIES = {}


def strategy_for(replicas, reduce_to_one_device=False):
    """The default (one-device) strategy for 0, else one shared MirroredStrategy per configuration.

    Several MirroredStrategy objects using CPU collectives in one process
    collide (collectives are keyed by group), so each configuration gets
    exactly one, and the replica-count sweep (several sizes in one process)
    reduces through one device instead of collectives.
    """
    if replicas == 0:
        return tf.distribute.get_strategy()
    key = (replicas, reduce_to_one_device)
    if key not in _STRATEGIES:
        cross_device_ops = tf.distribute.ReductionToOneDevice() if reduce_to_one_device else None
        _STRATEGIES[key] = tf.distribute.MirroredStrategy(
            [f"/cpu:{i}" for i in range(replicas)], cross_device_ops=cross_device_ops
        )
    return _STRATEGIES[key]


def make_contenders(pairs, build_model, batch_size, replicas, jit_compile, vr_accumulation, strategy=None):
    """Contenders for ``pairs`` (package name -> built-in name), each optimizer once per accumulation."""
    x, y = data_for(build_model(), batch_size)
    strategy = strategy or strategy_for(replicas)
    contenders = {}

    def get(name, accumulation):
        key = (name, accumulation)
        if key not in contenders:
            label = name if accumulation == 1 else f"{name} (accum {accumulation})"
            contenders[key] = Contender(label, name, build_model, x, y, strategy, jit_compile, accumulation)
        return contenders[key]

    matched = []
    for package_name, builtin_name in pairs.items():
        accumulation = vr_accumulation if package_name.startswith("VR") else 1
        try:
            matched.append((get(package_name, accumulation), get(builtin_name, accumulation)))
        except Exception as error:  # report and keep benchmarking the others
            print(f"  ! {package_name} vs {builtin_name}: could not build ({type(error).__name__}: {error})")
    return list(contenders.values()), matched


# ---------------------------------------------------------------- sections
def step_time_section(models, settings, steps, rounds, batch_size):
    print("\n== 1. Training-step time relative to the closest Keras built-in (median paired ratio) ==")
    print(f"   batch {batch_size}; {rounds} interleaved rounds x {steps} steps; > 1 means slower than the built-in")
    results = {}
    for setting_name, replicas, jit_compile, vr_accumulation in settings:
        for model_name, build_model in models.items():
            contenders, matched = make_contenders(
                PAIRS, build_model, batch_size, replicas, jit_compile, vr_accumulation
            )
            interleaved(contenders, steps, rounds)
            results[(setting_name, model_name)] = {
                a.label: (b.label, paired_ratio(a, b, "wall"), paired_ratio(a, b, "cpu"), statistics.median(b.wall))
                for a, b in matched
            }
    columns = list(results)
    header = f"{'optimizer':<26}{'vs':<28}" + "".join(f"{s[:15] + ' ' + m[:11]:>28}" for s, m in columns)
    print(header)
    print(f"{'':<54}" + "".join(f"{'wall':>14}{'cpu':>14}" for _ in columns))
    labels = list(dict.fromkeys(label for column in columns for label in results[column]))
    for label in labels:
        base = next(results[c][label][0] for c in columns if label in results[c])
        cells = ""
        for column in columns:
            if label in results[column]:
                _, wall, cpu, _ = results[column][label]
                cells += f"{wall:>13.3f}x{cpu:>13.3f}x"
            else:
                cells += f"{'-':>14}{'-':>14}"
        print(f"{label:<26}{base:<28}{cells}")
    for builtin in ("SGD+momentum", "Adam"):
        times = []
        for column in columns:
            found = [r[3] for label, r in results[column].items() if r[0] == builtin]
            times.append(f"{1000 * found[0]:.1f}" if found else "-")
        print(f"{builtin + ' step (median wall ms)':<54}" + "".join(f"{t:>28}" for t in times))
    return results


def memory_section(models):
    print("\n== 2. Optimizer memory: state elements per model parameter (from optimizer.variables) ==")
    names = list(OPTIMIZERS)
    print(f"{'optimizer':<14}" + "".join(f"{m:>22}" for m in models) + "   closest built-in")
    for name in names:
        cells = ""
        for build_model in models.values():
            keras.utils.set_random_seed(0)
            with strategy_for(MAX_REPLICAS).scope():
                model = build_model()
                optimizer = OPTIMIZERS[name]()
                optimizer.build(model.trainable_variables)
            cells += f"{state_per_parameter(optimizer, model):>22.3f}"
        print(f"{name:<14}{cells}   {PAIRS.get(name, '')}")
    print(f"   (built under MirroredStrategy with {MAX_REPLICAS} replicas, no gradient accumulation; with "
          "gradient_accumulation_steps the package adds 1 (VR: 2) replica-local accumulators per parameter)")


def parameter_scaling_section(sizes, steps, rounds, batch_size, replicas):
    print(f"\n== 3a. Cost over the base vs number of parameters "
          f"(MLP, MirroredStrategy x{replicas}, batch {batch_size}) ==")
    pairs = {name: PAIRS[name] for name in ("SNGM", "VRMomentum", "VRAdam", "VRLAMB")}
    print(f"{'parameters':>12}{'SGD+m step ms':>15}" + "".join(f"{f'{a}/{b}':>26}" for a, b in pairs.items()))
    print(f"{'':>27}" + "".join(f"{'wall (cpu)':>26}" for _ in pairs))
    for size in sizes:
        hidden = mlp_hidden_for(size)
        build = lambda hidden=hidden: mlp(hidden)  # noqa: E731
        contenders, matched = make_contenders(pairs, build, batch_size, replicas, False, 1)
        interleaved(contenders, steps, rounds)
        count = sum(int(np.prod(v.shape)) for v in contenders[0].model.trainable_variables)
        base_ms = 1000 * statistics.median(matched[0][1].wall)
        print(f"{count:>12.2e}{base_ms:>15.1f}" + "".join(_ratio_cell(a, b) for a, b in matched))


def replica_scaling_section(replica_counts, size, steps, rounds, batch_size):
    print(f"\n== 3b. VR cost over the base vs number of replicas "
          f"(MLP of {size:.0e} parameters, global batch {batch_size}) ==")
    pairs = {name: PAIRS[name] for name in ("VRMomentum", "VRAdam", "VRLAMB")}
    print(f"{'replicas':>9}{'k':>4}{'SGD+m step ms':>15}" + "".join(f"{f'{a}/{b}':>26}" for a, b in pairs.items()))
    print(f"{'':>28}" + "".join(f"{'wall (cpu)':>26}" for _ in pairs))
    hidden = mlp_hidden_for(size)
    for replicas in replica_counts:
        accumulation = 2 if replicas == 1 else 1
        try:
            # One replica: no MirroredStrategy (Keras's own accumulation cannot run under it).
            strategy = strategy_for(0) if replicas == 1 else strategy_for(replicas, reduce_to_one_device=True)
            contenders, matched = make_contenders(
                pairs, lambda: mlp(hidden), batch_size, replicas, False, accumulation, strategy=strategy
            )
            interleaved(contenders, steps, rounds)
            base_ms = 1000 * statistics.median(matched[0][1].wall)
            k = replicas * accumulation
            print(f"{replicas:>9}{k:>4}{base_ms:>15.1f}" + "".join(_ratio_cell(a, b) for a, b in matched))
        except Exception as error:  # report and go on with the other replica counts
            print(f"{replicas:>9}  failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
    print("   (1 replica: one device, no strategy, VR and base both with gradient_accumulation_steps=2, k = 2;")
    print("    2 and 4 replicas: MirroredStrategy reducing through one device, no CPU collectives)")


#: Settings of the VR overhead grid: name -> (label, replicas (0: one device, no
#: strategy), jit_compile, gradient accumulation of VR and base).
VR_OVERHEAD_SETTINGS = {
    "1": ("1 device", 0, False, 2),
    "1xla": ("1 device XLA", 0, True, 2),
    "2": ("Mirrored x2", 2, False, 1),
    str(MAX_REPLICAS): (f"Mirrored x{MAX_REPLICAS}", MAX_REPLICAS, False, 1),
}


def vr_overhead_section(sizes, steps, rounds, batch_size, setting_names=tuple(VR_OVERHEAD_SETTINGS)):
    """VR / base CPU-time ratio over parameters x {1 device (no XLA, XLA), MirroredStrategy x2, x4}."""
    print(f"\n== 4. VR overhead grid: CPU-time ratio to the base (MLP, batch {batch_size}) ==")
    settings = [VR_OVERHEAD_SETTINGS[name] for name in setting_names]
    names = list(VR_OVERHEAD_PAIRS)
    print(f"{'parameters':>11}  {'setting':<14}{'base ms':>9}" + "".join(f"{n:>28}" for n in names))
    for size in sizes:
        hidden = mlp_hidden_for(size)
        for label, replicas, jit_compile, accumulation in settings:
            # Collectives of two MirroredStrategy objects in one process collide:
            # x4 uses the default all-reduce, x2 reduces through one device.
            strategy = strategy_for(replicas, reduce_to_one_device=replicas not in (0, MAX_REPLICAS))
            try:
                x, y = data_for(mlp(hidden), batch_size)
                contenders = {}
                pairs = []
                for name in names:
                    for contender_name in (name, VR_OVERHEAD_PAIRS[name]):
                        if contender_name not in contenders:
                            contenders[contender_name] = Contender(
                                contender_name, contender_name, lambda: mlp(hidden), x, y, strategy, jit_compile,
                                accumulation,
                            )
                    pairs.append((contenders[name], contenders[VR_OVERHEAD_PAIRS[name]]))
                interleaved(list(contenders.values()), steps, rounds)
                base_ms = 1000 * statistics.median(contenders["Adam"].cpu)
                count = sum(int(np.prod(v.shape)) for v in contenders["Adam"].model.trainable_variables)
                print(f"{count:>11.2e}  {label:<14}{base_ms:>9.1f}"
                      + "".join(f"{paired_ratio(a, b, 'cpu'):>27.3f}x" for a, b in pairs), flush=True)
            except Exception as error:  # report and go on with the other settings
                print(f"{size:>11.0e}  {label:<14} failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
    print("   (CPU-time ratio, median over rounds of the paired ratio; base ms = Adam's CPU ms per step; "
          "one device: VR and base both with gradient_accumulation_steps=2, a step is one micro-batch)")


class StepAlone:
    """One optimizer applying fixed gradients to its own copy of a model's variables (``tf.function``)."""

    def __init__(self, name, build_model, jit_compile):
        self.label = name
        keras.utils.set_random_seed(0)
        model = build_model()
        self.variables = [keras.Variable(v.numpy(), name=v.name) for v in model.trainable_variables]
        rng = np.random.default_rng(1)
        self.gradients = [tf.constant(rng.normal(size=v.shape).astype("float32") * 1e-2) for v in self.variables]
        self.optimizer = OPTIMIZERS[name]()
        self.optimizer.build(self.variables)
        self.apply = tf.function(lambda: self.optimizer.apply(self.gradients, self.variables), jit_compile=jit_compile)
        self.wall = []
        self.cpu = []

    def run(self, steps):
        for _ in range(steps):
            self.apply()

    timed = Contender.timed


def step_alone_section(sizes, steps, rounds, names=None):
    """CPU-time ratio of ``optimizer.apply`` alone, package optimizer / Keras counterpart.

    Prints the table, then the same numbers as Markdown rows (one per setting and pair).
    """
    pairs = [(a, b) for a, b in STEP_ALONE_PAIRS if names is None or a in names]
    print(f"\n== 5. The optimizer step alone: CPU-time ratio of optimizer.apply to the Keras counterpart "
          f"({rounds} interleaved rounds x {4 * steps} applies) ==")
    settings = [("graph", False), ("XLA", True)]
    print(f"{'parameters':>11}  {'setting':<8}{'base ms':>9}" + "".join(f" {f'{a}/{b}':>33}" for a, b in pairs))
    rows = []
    for size in sizes:
        hidden = mlp_hidden_for(size)
        for label, jit_compile in settings:
            contenders = {}
            for name in dict.fromkeys(name for pair in pairs for name in pair):
                contenders[name] = StepAlone(name, lambda: mlp(hidden), jit_compile)
            interleaved(list(contenders.values()), 4 * steps, rounds)
            base = contenders[pairs[0][1]]
            count = sum(int(np.prod(v.shape)) for v in base.variables)
            ratios = [paired_ratio(contenders[a], contenders[b], "cpu") for a, b in pairs]
            rows.append((count, label, ratios))
            print(f"{count:>11.2e}  {label:<8}{1000 * statistics.median(base.cpu):>9.2f}"
                  + "".join(f"{ratio:>33.3f}x" for ratio in ratios), flush=True)
    print("   (CPU-time ratio, median over rounds of the paired ratio; base ms = the first Keras counterpart's "
          "CPU ms per apply; graph = tf.function, XLA = tf.function(jit_compile=True), one device)")
    print("\n| pair | " + " | ".join(f"{count:.0e}, {label}" for count, label, _ in rows) + " |")
    print("| --- |" + " --- |" * len(rows))
    for index, (a, b) in enumerate(pairs):
        print(f"| {a} / {b} | " + " | ".join(f"{ratios[index]:.2f}" for _, _, ratios in rows) + " |")


def set_threads(threads):
    """TensorFlow's intra- and inter-op thread counts (0: leave TensorFlow's choice); before any op runs."""
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, steps and sizes (3 x 5 steps, no 1e7-parameter model)")
    parser.add_argument(
        "--sections", default="1,2,3,4,5",
        help="sections to run: 1, 2, 3 (= 3a and 3b), 4 (VR overhead grid), 5 (the optimizer step alone) "
             "(default: %(default)s)",
    )
    parser.add_argument("--optimizers", default=None,
                        help="section 5 only: package optimizers to time, comma-separated, e.g. LAMB,SNGM "
                             f"(default: all of {', '.join(dict.fromkeys(a for a, _ in STEP_ALONE_PAIRS))})")
    parser.add_argument("--sizes", default=None,
                        help="parameter counts for sections 3a, 4 and 5, e.g. 1e5,1e6 (default: 1e5,1e6,1e7; --quick: "
                             "1e5,1e6)")
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra- and inter-op threads (default 0: TensorFlow's choice); 1 makes CPU "
                             "time count work alone, without thread-pool spinning, on a busy machine")
    parser.add_argument("--settings", default=",".join(VR_OVERHEAD_SETTINGS),
                        help="section 4's settings, from %(default)s (1xla: one device under XLA; 2, 4: "
                             "MirroredStrategy replicas)")
    machine_state.add_malloc_argument(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    machine_state.configure_malloc(args.malloc)
    setting_names = tuple(args.settings.split(","))
    unknown = [name for name in setting_names if name not in VR_OVERHEAD_SETTINGS]
    if unknown:
        parser.error(f"--settings: unknown {unknown}; choose from {list(VR_OVERHEAD_SETTINGS)}")
    sections = set(args.sections.split(","))
    rounds, steps = (3, 5) if args.quick else (5, 10)
    start = time.perf_counter()
    with MachineState():
        print(f"{'--quick' if args.quick else 'full'} run; command: python benchmarks/optimizer_speed.py "
              + " ".join(sys.argv[1:] if argv is None else argv))
        models = {"small CNN": small_cnn, "transformer": transformer_block}
        if "1" in sections:
            settings = [("1 device, XLA", 0, True, 2), (f"Mirrored x{MAX_REPLICAS}", MAX_REPLICAS, False, 1)]
            step_time_section(models, settings, steps, rounds, batch_size=64)
        if "2" in sections:
            memory_section(models)
        sizes = (1e5, 1e6) if args.quick else (1e5, 1e6, 1e7)
        if args.sizes:
            sizes = tuple(float(size) for size in args.sizes.split(","))
        if sections & {"3", "3a"}:
            parameter_scaling_section(sizes, steps, rounds, batch_size=64, replicas=MAX_REPLICAS)
        if sections & {"3", "3b"}:
            replica_scaling_section((1, 2, 4), 1e6, steps, rounds, batch_size=64)
        if "4" in sections:
            vr_overhead_section(sizes, steps, rounds, batch_size=64, setting_names=setting_names)
        if "5" in sections:
            names = None if args.optimizers is None else args.optimizers.split(",")
            step_alone_section(sizes, steps, rounds, names)
        print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
