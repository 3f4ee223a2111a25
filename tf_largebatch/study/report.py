"""The study's outputs: CSV and JSON files and the printed tables.

``results.csv`` (one row per run), ``curves.csv`` (every evaluation of every
run), ``summary.csv`` (per optimizer and batch size: the best learning rate and
its steps to target, with the optimizer's maximal useful batch and fitted
``S_min``/``B_crit``), ``results.json`` (all of it, with the noise scale and the
seed spread), ``table.txt`` (what is printed).
"""

import csv
import json
import math

from tf_largebatch.study import analysis
from tf_largebatch.study.store import write_text_atomically

RESULT_FIELDS = (
    "optimizer", "batch_size", "learning_rate", "seed", "steps", "steps_run", "steps_to_target",
    "final_test_accuracy", "best_test_accuracy", "final_train_loss", "final_test_loss", "diverged",
    "diverged_at_step", "gradient_samples", "cpu_seconds",
)
CURVE_FIELDS = ("optimizer", "batch_size", "learning_rate", "seed", "step", "scheduled_learning_rate",
                "train_loss", "test_loss", "test_accuracy")
SUMMARY_FIELDS = (
    "optimizer", "batch_size", "steps", "best_learning_rate", "steps_to_target", "perfect_scaling_steps",
    "best_test_accuracy", "final_test_accuracy", "runs", "diverged_runs", "learning_rate_at_edge",
    "maximal_useful_batch", "s_min", "b_crit",
)


def _write_csv(path, fields, rows):
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    temporary.replace(path)


def analyse(runs, target, optimizers, batch_sizes, steps_by_batch, noise):
    """Everything the outputs show, as one JSON-able dict."""
    cells, per_optimizer = analysis.summarize(runs, target, optimizers, batch_sizes)
    summary = []
    for optimizer in optimizers:
        reached = [(b, cells[(optimizer, b)]["steps_to_target"]) for b in batch_sizes
                   if (optimizer, b) in cells and cells[(optimizer, b)]["steps_to_target"] is not None]
        for batch_size in batch_sizes:
            if (optimizer, batch_size) not in cells:
                continue
            cell = dict(cells[(optimizer, batch_size)])
            cell["steps"] = steps_by_batch[batch_size]
            cell["perfect_scaling_steps"] = reached[0][1] * reached[0][0] / batch_size if reached else None
            cell.update(per_optimizer[optimizer])
            summary.append(cell)
    largest = batch_sizes[-1]
    spread = [
        analysis.seed_spread(runs, target, optimizer, largest, cells[(optimizer, largest)]["best_learning_rate"])
        for optimizer in optimizers
        if (optimizer, largest) in cells and cells[(optimizer, largest)]["best_learning_rate"] is not None
    ]
    return {
        "target_test_accuracy": target,
        "noise_scale": noise,
        "per_optimizer": per_optimizer,
        "summary": summary,
        "seed_spread_at_largest_batch": spread,
    }


def write_outputs(directory, header, runs, result):
    """Writes results.csv, curves.csv, summary.csv and results.json; returns their paths."""
    target = result["target_test_accuracy"]
    rows = [{**run, "steps_to_target": analysis.run_steps_to_target(run, target)} for run in runs]
    paths = {name: directory / name for name in ("results.csv", "curves.csv", "summary.csv", "results.json")}
    _write_csv(paths["results.csv"], RESULT_FIELDS, rows)
    curve_rows = []
    for run in runs:
        curve = run["curve"]
        for i, step in enumerate(curve["step"]):
            curve_rows.append({
                "optimizer": run["optimizer"], "batch_size": run["batch_size"], "learning_rate": run["learning_rate"],
                "seed": run["seed"], "step": step, "scheduled_learning_rate": curve["learning_rate"][i],
                "train_loss": curve["train_loss"][i], "test_loss": curve["test_loss"][i],
                "test_accuracy": curve["test_accuracy"][i],
            })
    _write_csv(paths["curves.csv"], CURVE_FIELDS, curve_rows)
    _write_csv(paths["summary.csv"], SUMMARY_FIELDS, result["summary"])
    document = {**header, **result, "runs": rows}
    write_text_atomically(paths["results.json"], json.dumps(document, indent=1, default=_json_default))
    return paths


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _format(value, spec, missing="-"):
    if value is None:
        return missing
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def tables(result, optimizers, batch_sizes, steps_by_batch):
    """The printed report: steps to target, best learning rates, accuracies, scaling fit, noise, seeds."""
    cells = {(c["optimizer"], c["batch_size"]): c for c in result["summary"]}
    header = f"{'optimizer':<12}" + "".join(f"{f'B={b}':>13}" for b in batch_sizes)

    def grid(title, key, spec, scale=1.0):
        lines = [title, header]
        for optimizer in optimizers:
            values = []
            for b in batch_sizes:
                cell = cells.get((optimizer, b))
                value = None if cell is None or cell[key] is None else cell[key] * scale
                text = _format(value, spec, "not reached" if cell is not None and key == "steps_to_target" else "-")
                if cell is not None and key == "best_learning_rate" and cell["learning_rate_at_edge"]:
                    text += "*"
                values.append(f"{text:>13}")
            lines.append(f"{optimizer:<12}" + "".join(values))
        return lines

    target = result["target_test_accuracy"]
    lines = grid(f"Steps to {100 * target:.1f}% test accuracy at the best learning rate (budget: "
                 + ", ".join(f"{steps_by_batch[b]}" for b in batch_sizes) + " steps)", "steps_to_target", ".0f")
    lines += [""] + grid("Best learning rate (* = at the edge of the grid after widening)", "best_learning_rate",
                         ".3g")
    lines += [""] + grid("Best test accuracy (%) at that learning rate", "best_test_accuracy", ".2f", 100.0)
    noise = result["noise_scale"] or {}
    b_noise = noise.get("b_noise")
    lines += ["", "Scaling per optimizer: maximal useful batch (within 2x of perfect scaling from the smallest",
              "batch) and the fit S = S_min (1 + B_crit / B); B_noise measured once for the task:",
              f"{'optimizer':<12}{'max useful B':>14}{'S_min':>10}{'B_crit':>10}{'B_noise':>10}"]
    for optimizer in optimizers:
        numbers = result["per_optimizer"][optimizer]
        lines.append(
            f"{optimizer:<12}{_format(numbers['maximal_useful_batch'], 'd'):>14}"
            f"{_format(numbers['s_min'], '.0f'):>10}{_format(numbers['b_crit'], '.0f'):>10}"
            f"{_format(b_noise, '.0f'):>10}"
        )
    if noise:
        lines.append(
            f"(B_noise = tr(Sigma)/|G|^2 from {noise['optimizer']}'s gradient statistics, k = "
            f"{noise['gradient_samples']} samples per step at B = {noise['batch_size']}, first {noise['steps']} "
            "steps; by step: " + ", ".join(f"{s}: {_format(v, '.0f')}" for s, v in noise["b_noise_by_step"].items())
            + ")"
        )
    spread = result["seed_spread_at_largest_batch"]
    if spread and max(s["seeds"] for s in spread) > 1:
        lines += ["", f"Seed spread at B={batch_sizes[-1]} and each optimizer's best learning rate:",
                  f"{'optimizer':<12}{'seeds':>6}{'best acc mean':>15}{'std':>7}{'min':>8}{'max':>8}"
                  f"{'steps to target min-max':>26}"]
        for s in spread:
            steps = (f"{_format(s['steps_to_target_min'], '.0f')}-{_format(s['steps_to_target_max'], '.0f')}"
                     f" ({s['reached_target']}/{s['seeds']})")
            lines.append(
                f"{s['optimizer']:<12}{s['seeds']:>6}{_format(_pct(s['best_test_accuracy_mean']), '.2f'):>15}"
                f"{_format(_pct(s['best_test_accuracy_std']), '.2f'):>7}"
                f"{_format(_pct(s['best_test_accuracy_min']), '.2f'):>8}"
                f"{_format(_pct(s['best_test_accuracy_max']), '.2f'):>8}{steps:>26}"
            )
    return "\n".join(lines)


def _pct(value):
    return None if value is None else 100.0 * value
