"""A phase's ``summary.json``: what ran, the last learning rate, the throughput.

:func:`phase_summary` collects it after ``fit``; :func:`format_summary` is the
one log line the runner prints; :func:`write_json_atomically` writes it through
the package's one atomic writer (:mod:`tf_largebatch.atomic_files`).
"""

import json

import tensorflow as tf

from tf_largebatch.atomic_files import write_text_atomically
from tf_largebatch.pipelines import throughput


def write_json_atomically(path, value):
    """Writes ``value`` as JSON to ``path`` atomically (:func:`tf_largebatch.atomic_files.write_text_atomically`)."""
    write_text_atomically(path, json.dumps(value, indent=2))


def read_json(path):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def update_counts(optimizer):
    """``(steps, applied, skipped)`` of the optimizer that trains (no loss-scale wrapper).

    ``steps`` is ``iterations`` (what the schedule counts); ``applied``
    excludes updates skipped for a non-finite gradient (this package's
    ``applied_updates``; Keras's optimizers apply every step they count).
    """
    steps = int(optimizer.iterations.numpy())
    applied = getattr(optimizer, "applied_updates", None)
    applied = steps if applied is None else int(applied.numpy())
    return steps, applied, steps - applied


def phase_summary(cfg, *, model, optimizer, strategy, history, timer, learning_rate_log, first_loop, loops,
                  steps_per_loop, initial_weights):
    """The summary of a finished phase (see the module docstring of :mod:`~tf_largebatch.pipelines.train`)."""
    steps, applied, skipped = update_counts(optimizer)
    return {
        "name": cfg.name,
        "phase": cfg.phase,
        "optimizer_steps": steps,
        "optimizer_updates": applied,
        "skipped_updates": skipped,
        "planned_optimizer_steps": loops * steps_per_loop,
        "final_learning_rate": learning_rate_log.learning_rate,
        **timer.rates(),
        "global_batch_size": cfg.training.global_batch_size,
        **throughput.device_description(strategy),
        "synthetic_data": cfg.data.synthetic,
        "started_at_loop": first_loop,
        "loops": loops,
        "final_logs": {k: float(v[-1]) for k, v in history.history.items() if v},
        "replicas": strategy.num_replicas_in_sync,
        "optimizer": type(model.optimizer).__name__,
        "precision": cfg.precision,
        "jit_compile": bool(model.jit_compile),
        "initial_weights": initial_weights,
        "skipped": False,
        # AdaScale: updates of the base run the phase's updates were worth (its clock tau).
        **({"scale_invariant_steps": optimizer.scale_invariant_steps}
           if hasattr(optimizer, "scale_invariant_steps") else {}),
    }


def format_summary(summary):
    """One line: the phase, its updates, the final learning rate and the throughput."""
    phase = f" [{summary['phase']}]" if summary.get("phase") else ""
    line = f"{summary['name']}{phase}: {summary['optimizer_updates']} optimizer updates"
    if summary.get("skipped_updates"):
        line += f" ({summary['skipped_updates']} more skipped: non-finite gradient)"
    if summary.get("final_learning_rate") is not None:
        line += f", final learning rate {summary['final_learning_rate']:.6g}"
    if summary.get("examples_per_second"):
        data = "synthetic data" if summary.get("synthetic_data") else "real data"
        line += (f", {summary['examples_per_second']:.1f} examples/s ({summary['seconds_per_step'] * 1000:.1f} "
                 f"ms/step over {summary['measured_steps']} steps after the first loop; {summary['device_count']} x "
                 f"{summary['device_kind']}; {data})")
    else:
        line += ", throughput not measured (it needs at least two loops: the first includes compilation)"
    return line
