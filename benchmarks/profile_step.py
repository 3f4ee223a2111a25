"""Where a training step's time goes: one package optimizer against its Keras counterpart.

    python benchmarks/profile_step.py --optimizer VRAdam --baseline Adam --model transformer

Traces a few ``fit`` steps of each optimizer with the TensorFlow profiler
(``tf.profiler.experimental``), reads the XSpace it writes, and sums the
device time of every TensorFlow op executed on the compute threads, grouped
into: the model's forward and backward pass, the optimizer's own ops (its name
scope, plus the collectives), and the rest. Then it lists the optimizer ops by
type, so an overhead can be pinned to concrete ops (an extra all-reduce, the
GSNR statistics, a ``tf.cond`` ...). Op time is summed over all threads and
replicas (CPU time, not wall time).

Uses the same contenders as ``optimizer_speed.py`` (same models, data and
optimizer settings).
"""

import argparse
import collections
import glob
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import optimizer_speed as bench  # noqa: E402  (configures the logical CPUs first)
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from machine_state import MachineState  # noqa: E402

MODELS = {
    "small_cnn": bench.small_cnn,
    "transformer": bench.transformer_block,
    "mlp_1e6": lambda: bench.mlp(bench.mlp_hidden_for(1e6)),
}
WRAPPER_EVENTS = ("ExecutorState::", "ThreadpoolListener::", "Loop", "CollectiveExecutor::")


def op_times(xspace_path):
    """{op name: total picoseconds} over the compute and collective threads of an XSpace."""
    space = xplane_pb2.XSpace()
    with open(xspace_path, "rb") as stream:
        space.ParseFromString(stream.read())
    totals = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not (line.name.startswith("tf_Compute") or line.name.startswith("collective_ops")):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name and not name.startswith(WRAPPER_EVENTS):
                    totals[name] += event.duration_ps
    return totals


def profile(contender, steps, log_dir):
    contender.run(3)  # compile outside the trace
    tf.profiler.experimental.start(log_dir)
    contender.run(steps)
    tf.profiler.experimental.stop()
    (path,) = glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True)
    return op_times(path)


def categorise(totals, optimizer_scopes):
    groups = collections.Counter()
    optimizer_ops = collections.Counter()
    for name, duration in totals.items():
        scope, op_type = name.rsplit(":", 1)
        parts = scope.split("/")
        if any(s in parts for s in optimizer_scopes) or op_type.startswith("Collective"):
            groups["optimizer"] += duration
            optimizer_ops[op_type] += duration
        elif "gradient_tape" in parts or any(p.startswith(("replica_", "sequential", "small_cnn", "transformer", "mlp_"))
                                              for p in parts):
            groups["model forward+backward"] += duration
        else:
            groups["other"] += duration
    return groups, optimizer_ops


def scopes_of(optimizer):
    names = {optimizer.name}
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:
        names.add(inner.name)
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizer", default="VRAdam", choices=sorted(bench.OPTIMIZERS))
    parser.add_argument("--baseline", default="Adam", choices=sorted(bench.OPTIMIZERS))
    parser.add_argument("--model", default="transformer", choices=sorted(MODELS))
    parser.add_argument("--replicas", type=int, default=bench.MAX_REPLICAS, help="0 = one device, no strategy")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--top", type=int, default=15, help="optimizer op types to list, by difference")
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra- and inter-op threads (default 0: TensorFlow's choice)")
    args = parser.parse_args(argv)
    bench.set_threads(args.threads)
    with MachineState():
        print("command: python benchmarks/profile_step.py " + " ".join(sys.argv[1:] if argv is None else argv))
        return _run(args)


def _run(args):

    build = MODELS[args.model]
    x, y = bench.data_for(build(), args.batch_size)
    strategy = bench.strategy_for(args.replicas)
    accumulation = 2 if args.replicas == 0 and args.optimizer.startswith("VR") else 1
    results = {}
    for name in (args.baseline, args.optimizer):
        contender = bench.Contender(name, name, build, x, y, strategy, False, accumulation)
        with tempfile.TemporaryDirectory() as log_dir:
            totals = profile(contender, args.steps, log_dir)
        results[name] = categorise(totals, scopes_of(contender.optimizer))

    per_step = 1e9 * args.steps  # picoseconds -> milliseconds per step
    print(f"{args.model}, {args.replicas or 1} replica(s), batch {args.batch_size}, {args.steps} profiled steps; "
          "op time summed over threads and replicas, ms per step")
    categories = ("model forward+backward", "optimizer", "other")
    print(f"{'':<24}" + "".join(f"{c:>24}" for c in categories) + f"{'total':>12}")
    for name, (groups, _) in results.items():
        total = sum(groups.values())
        cells = "".join(f"{groups[c] / per_step:>24.2f}" for c in categories)
        print(f"{name:<24}{cells}{total / per_step:>12.2f}")
    print("\noptimizer ops by type (ms per step):")
    base_ops, ops = results[args.baseline][1], results[args.optimizer][1]
    print(f"{'op type':<32}{args.baseline:>14}{args.optimizer:>14}{'difference':>14}")
    for op_type in sorted(set(ops) | set(base_ops), key=lambda t: base_ops[t] - ops[t])[:args.top]:
        print(f"{op_type:<32}{base_ops[op_type] / per_step:>14.2f}{ops[op_type] / per_step:>14.2f}"
              f"{(ops[op_type] - base_ops[op_type]) / per_step:>14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
