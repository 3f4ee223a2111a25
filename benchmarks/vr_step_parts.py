"""Where the VR optimizers' extra step time goes, as CPU-time ratios to the base in one run.

    python benchmarks/vr_step_parts.py                      # MLP of 1e6 parameters, MirroredStrategy x4
    python benchmarks/vr_step_parts.py --size 1e7 --rounds 3
    python benchmarks/vr_step_parts.py --replicas 0 --jit   # one device under XLA (accumulation 2)

Contenders (each its own model copy, timed in interleaved rounds by
``optimizer_speed.py``'s method; the headline is the median paired CPU-time
ratio to Adam):

* ``VRAdam``: the default (no monitoring statistics unless requested);
* ``VRAdam, statistics every update``: ``record_gradient_statistics=True``;
* ``VRAdam, second moment in bfloat16``: ``second_moment_dtype="bfloat16"``
  (the opt-in approximation: the second moment all-reduced in bfloat16);
* ``VRAdam, GSNR refreshed every 4``: ``gsnr_refresh_every=4`` (the opt-in
  approximation: the second moment formed and all-reduced on one update in 4,
  the GSNR momentum carrying the factor between);
* ``VRAdam, chain compiled``: the per-variable GSNR chain compiled with XLA
  (``tf.function(jit_compile=True)``) also on CPU, where the package runs it
  inline (``tf_largebatch.optimizers.vr.COMPILE_ON_DEVICE_TYPES``);
* ``VRAdam, no GSNR chain``: the chain replaced by ``g_hat = gbar`` (not an
  optimizer anyone should use: it isolates what is left, i.e. each replica's
  squares, the doubled all-reduce payload, the finiteness check and the GSNR
  momentum slot).

So ``VRAdam - no chain`` is the chain's share of the overhead and ``no chain
- 1`` the share of carrying the second moment.

``--previous-gsnr FILE`` adds two contenders running the GSNR chain of another
version of ``tf_largebatch/optimizers/gsnr.py`` (one whose ``adapted_gradient``
takes a tensor ``with_statistics``, e.g. ``git show
b387c28:tf_largebatch/optimizers/gsnr.py > /tmp/gsnr_b387c28.py``, the chain
before the VR step was trimmed), with and without every-update statistics,
for a before/after comparison in one process.
"""

import argparse
import importlib.util
import statistics
import sys
import types

import optimizer_speed as bench  # configures the logical CPUs before TensorFlow starts

import tensorflow as tf  # noqa: E402

import tf_largebatch.optimizers.vr as vr  # noqa: E402
import machine_state  # noqa: E402
from machine_state import MachineState  # noqa: E402


def _without_chain(gsnr_module):
    """A stand-in for the chain's module whose ``adapted_gradient`` is ``g_hat = gbar``."""

    def adapted_gradient(sum_of_means, sum_of_mean_squares, shift, momentum, step, *, with_statistics, **_):
        statistics_row = None if with_statistics is False else tf.zeros([len(gsnr_module.STATISTIC_NAMES)])
        return sum_of_means, sum_of_means, momentum, statistics_row

    stand_in = types.SimpleNamespace(**{name: getattr(gsnr_module, name) for name in dir(gsnr_module)
                                        if not name.startswith("__")})
    stand_in.adapted_gradient = adapted_gradient
    return stand_in


def _load_module(path):
    spec = importlib.util.spec_from_file_location("previous_gsnr", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=float, default=1e6, help="parameters of the MLP (default: %(default).0e)")
    parser.add_argument("--replicas", type=int, default=bench.MAX_REPLICAS, choices=range(bench.MAX_REPLICAS + 1),
                        help="MirroredStrategy replicas; 0 = one device, VR and Adam with accumulation 2")
    parser.add_argument("--jit", action="store_true", help="compile the model step with XLA (one device only)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--only", default=None,
                        help="contender labels to time besides Adam, separated by ';' (default: all), e.g. "
                             "'VRAdam;VRAdam, second moment in bfloat16'")
    parser.add_argument("--previous-gsnr", metavar="FILE", help="another version's gsnr.py to compare with")
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra- and inter-op threads (default 0: TensorFlow's choice)")
    machine_state.add_malloc_argument(parser)
    args = parser.parse_args(argv)
    if args.jit and args.replicas:
        parser.error("--jit needs --replicas 0 (Keras does not compile under a strategy on these CPUs)")
    bench.set_threads(args.threads)
    machine_state.configure_malloc(args.malloc)
    with MachineState():
        print("command: python benchmarks/vr_step_parts.py " + " ".join(sys.argv[1:] if argv is None else argv))
        return _run(args)


def _run(args):

    hidden = bench.mlp_hidden_for(args.size)
    strategy = bench.strategy_for(args.replicas)
    x, y = bench.data_for(bench.mlp(hidden), 64)
    accumulation = 1 if args.replicas else 2
    bench.OPTIMIZERS["VRAdam, statistics every update"] = lambda **kw: bench.tlb.VRAdam(
        1e-3, record_gradient_statistics=True, **kw)
    bench.OPTIMIZERS["VRAdam, second moment in bfloat16"] = lambda **kw: bench.tlb.VRAdam(
        1e-3, second_moment_dtype="bfloat16", **kw)
    bench.OPTIMIZERS["VRAdam, GSNR refreshed every 4"] = lambda **kw: bench.tlb.VRAdam(
        1e-3, gsnr_refresh_every=4, **kw)
    # The chain is vr.adapted_gradient (compiled as vr._compiled_adapted_gradient for large variables).
    chain, compiled_chain, compile_on = vr.adapted_gradient, vr._compiled_adapted_gradient, vr.COMPILE_ON_DEVICE_TYPES
    gsnr_module = types.SimpleNamespace(adapted_gradient=chain, STATISTIC_NAMES=vr.gsnr.STATISTIC_NAMES)
    variants = [
        ("Adam", "Adam", gsnr_module, compile_on),
        ("VRAdam", "VRAdam", gsnr_module, compile_on),
        ("VRAdam, statistics every update", "VRAdam, statistics every update", gsnr_module, compile_on),
        ("VRAdam, second moment in bfloat16", "VRAdam, second moment in bfloat16", gsnr_module, compile_on),
        ("VRAdam, GSNR refreshed every 4", "VRAdam, GSNR refreshed every 4", gsnr_module, compile_on),
        ("VRAdam, chain compiled", "VRAdam", gsnr_module, ("CPU", "GPU")),
        ("VRAdam, no GSNR chain", "VRAdam", _without_chain(gsnr_module), compile_on),
    ]
    if args.previous_gsnr:
        previous = _load_module(args.previous_gsnr)
        variants += [
            ("VRAdam, previous chain", "VRAdam", previous, compile_on),
            ("VRAdam, previous chain, statistics", "VRAdam, statistics every update", previous, compile_on),
        ]
    if args.only:
        wanted = set(args.only.split(";"))
        variants = [variant for variant in variants if variant[0] == "Adam" or variant[0] in wanted]
    contenders = []
    try:
        for label, name, module, devices in variants:
            # All three are read when the step is traced, i.e. in the warm-up run.
            vr.adapted_gradient, vr.COMPILE_ON_DEVICE_TYPES = module.adapted_gradient, devices
            vr._compiled_adapted_gradient = tf.function(module.adapted_gradient, jit_compile=True)
            contender = bench.Contender(label, name, lambda: bench.mlp(hidden), x, y, strategy, args.jit,
                                        accumulation)
            contender.run(3)
            contenders.append(contender)
    finally:
        vr.adapted_gradient, vr.COMPILE_ON_DEVICE_TYPES = chain, compile_on
        vr._compiled_adapted_gradient = compiled_chain
    bench.interleaved(contenders, args.steps, args.rounds)
    base = contenders[0]
    count = sum(int(v.shape.num_elements()) for v in base.model.trainable_variables)
    setting = f"{args.replicas} replicas" if args.replicas else "1 device" + (", XLA" if args.jit else "")
    print(f"MLP of {count:.2e} parameters, {setting}, batch 64; Adam {1000 * statistics.median(base.cpu):.1f} "
          f"CPU ms per step; CPU-time ratio to Adam (median of {args.rounds} paired rounds of {args.steps} steps):")
    for contender in contenders[1:]:
        print(f"  {contender.label:<34}{bench.paired_ratio(contender, base, 'cpu'):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
