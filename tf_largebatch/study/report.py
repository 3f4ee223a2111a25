"""The study's outputs: the statistics of every cell, CSV and JSON files, the printed report.

``results.csv`` (one row per run, with its ``role``, ``seed``, and steps to each
target on each ``split``), ``curves.csv`` (every evaluation of every run),
``summary.csv`` (per optimizer, batch size and target: the selected setting, the
reporting seeds' mean steps to target on the test split with its 95 % t
interval, n and the fraction that reached it, and the optimizer's fit),
``results.json`` (all of it, with the fit diagnostics, the paired comparisons,
the noise-scale series and the sensitivity), ``table.txt`` (what is printed).
"""

import csv
import io
import json
import math

from tf_largebatch.atomic_files import write_text_atomically
from tf_largebatch.study import analysis, scaling_fit, statistics
from tf_largebatch.study.store import run_key

RESULT_FIELDS = (
    "optimizer", "batch_size", "learning_rate", "length", "seed", "role", "steps_run", "diverged",
    "diverged_at_step", "best_validation_accuracy", "best_test_accuracy", "gradient_samples", "cpu_seconds",
)
CURVE_FIELDS = ("optimizer", "batch_size", "learning_rate", "length", "seed", "step", "scheduled_learning_rate",
                "train_loss", "validation_loss", "validation_accuracy", "test_loss", "test_accuracy")
SUMMARY_FIELDS = (
    "optimizer", "batch_size", "target", "tuned", "trials", "learning_rate", "length", "at_grid_edge", "n",
    "reached", "mean_steps", "low_steps", "high_steps", "sd_steps", "mean_test_accuracy", "s_min", "b_crit",
    "b_crit_low", "b_crit_high", "residual", "does_not_fit",
)


def _key(run):
    return run_key(run["optimizer"], run["batch_size"], run["learning_rate"], run["length"], run["seed_offset"])


def _cell(store, plan, grid_edges, recipe_name, batch_size, target, tuned):
    keys = plan["reporting"].get((recipe_name, batch_size, target), [])
    runs = [store[key] for key in keys if key in store]
    steps = [analysis.run_steps_to_target(run, target, "test") for run in runs]
    reached = [s for s in steps if s is not None]
    interval = statistics.t_interval(reached)
    setting = plan["reporting_setting"].get((recipe_name, batch_size, target))
    accuracy = [run["best_test_accuracy"] for run in runs if run["best_test_accuracy"] is not None]
    return {
        "optimizer": recipe_name, "batch_size": batch_size, "target": target, "tuned": tuned,
        "trials": len(plan["tuning"].get((recipe_name, batch_size), [])),
        "learning_rate": setting[0] if setting else None, "length": setting[1] if setting else None,
        "at_grid_edge": grid_edges.get((recipe_name, batch_size, target)),
        "n": len(runs), "reached": len(reached), "steps_by_seed": steps,
        "mean_steps": interval["mean"], "low_steps": interval["low"], "high_steps": interval["high"],
        "sd_steps": interval["sd"],
        "mean_test_accuracy": sum(accuracy) / len(accuracy) if accuracy else None,
    }


def _grid_edges(store, plan, tuned_names, batch_sizes, targets):
    """Whether each selection sits at an edge of its (widened) grid: the grid could not contain it."""
    edges = {}
    for name in tuned_names:
        for batch_size in batch_sizes:
            keys = plan["tuning"].get((name, batch_size), [])
            runs = [store[k] for k in keys if k in store]
            if not runs:
                continue
            rates = sorted({r["learning_rate"] for r in runs})
            lengths = sorted({r["length"] for r in runs})
            for target in targets:
                setting = plan["selected"].get((name, batch_size, target))
                if setting is None:
                    edges[(name, batch_size, target)] = None
                    continue
                lr, length = setting
                edges[(name, batch_size, target)] = bool(
                    (len(rates) > 1 and lr in (rates[0], rates[-1])) or length == lengths[-1])
    return edges


def analyse(runs, plan, targets, optimizers, transfers, batch_sizes, noise_settings):
    """Everything the outputs show, as one JSON-able dict.

    Args:
        runs: every stored run.
        plan: :attr:`tf_largebatch.study.grid.GridRunner.plan`.
        targets: the task's targets (loose, tight).
        optimizers: every optimizer name, reference (the first) first.
        transfers: ``{name: transfer_from}`` of the untuned contenders.
        batch_sizes: increasing batch sizes.
        noise_settings: ``(gradient_samples, micro_batch)`` of the noise probes.
    """
    store = {_key(run): run for run in runs}
    tuned = [name for name in optimizers if name not in transfers]
    edges = _grid_edges(store, plan, tuned, batch_sizes, targets)
    cells = [_cell(store, plan, edges, name, b, t, name not in transfers)
             for t in targets for name in optimizers for b in batch_sizes]
    by = {(c["optimizer"], c["batch_size"], c["target"]): c for c in cells}
    fits, comparisons, noise, sensitivity = {}, [], {}, {}
    for target in targets:
        for name in optimizers:
            groups = [[s for s in by[(name, b, target)]["steps_by_seed"] if s is not None] for b in batch_sizes]
            fit = scaling_fit.fit_with_diagnostics(batch_sizes, groups)
            fits[f"{name}@{target}"] = {"optimizer": name, "target": target, **fit}
        reference = optimizers[0]
        for name in optimizers[1:]:
            for b in batch_sizes:
                mine, theirs = by[(name, b, target)], by[(reference, b, target)]
                if mine["n"] and theirs["n"] and mine["n"] == theirs["n"]:
                    paired = statistics.paired_ratio(mine["steps_by_seed"], theirs["steps_by_seed"])
                    comparisons.append({"optimizer": name, "reference": reference, "batch_size": b,
                                        "target": target, **paired})
    samples, micro_batch = noise_settings
    tight = targets[-1]
    for name in optimizers:
        keys = plan["reporting"].get((name, batch_sizes[0], tight), [])
        measured = analysis.noise_scale([store[k] for k in keys if k in store], samples, micro_batch, tight)
        fit = fits[f"{name}@{tight}"]
        measured["agrees_with_b_crit"] = analysis.intervals_agree(measured["low"], measured["high"],
                                                                  fit["b_crit_low"], fit["b_crit_high"])
        noise[name] = measured
    for name in tuned:
        keys = plan["sensitivity"].get(name, [])
        setting = plan["selected"].get((name, batch_sizes[-1], tight)) or plan["selected"].get(
            (name, batch_sizes[-1], targets[0]))
        if keys and setting:
            chosen = [store[k] for k in keys if k in store]
            sensitivity[name] = {f"{t:g}": analysis.sensitivity(chosen, setting[0], t) for t in targets}
    for cell in cells:
        fit = fits[f"{cell['optimizer']}@{cell['target']}"]
        index = batch_sizes.index(cell["batch_size"])
        cell.update(s_min=fit["s_min"], b_crit=fit["b_crit"], b_crit_low=fit["b_crit_low"],
                    b_crit_high=fit["b_crit_high"], residual=fit["residuals"][index], does_not_fit=fit["does_not_fit"])
    return {"targets": list(targets), "summary": cells, "fits": fits, "paired_comparisons": comparisons,
            "noise_scale": noise, "sensitivity": sensitivity, "batch_sizes": list(batch_sizes),
            "optimizers": list(optimizers), "untuned_contenders": dict(transfers),
            "interval": "95 % Student-t interval over reporting seeds (ddof=1); paired comparisons: t interval on "
                        "the per-seed log ratio; fit parameters: percentile bootstrap over seeds "
                        f"({statistics.BOOTSTRAP_RESAMPLES} resamples, seed {statistics.BOOTSTRAP_SEED})"}


def _write_csv(path, fields, rows):
    stream = io.StringIO(newline="")
    writer = csv.DictWriter(stream, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(path, stream.getvalue())


def _roles(plan):
    roles = {}
    for name, table in (("tuning", plan["tuning"]), ("reporting", plan["reporting"]),
                        ("sensitivity", plan["sensitivity"])):
        for keys in table.values():
            for key in keys:
                roles.setdefault(key, [])
                if name not in roles[key]:
                    roles[key].append(name)
    return roles


def write_outputs(directory, header, runs, result, plan):
    """Writes results.csv, curves.csv, summary.csv and results.json; returns their paths."""
    roles = _roles(plan)
    targets = result["targets"]
    fields = list(RESULT_FIELDS) + [f"{split}_steps_to_{t:g}" for t in targets for split in ("validation", "test")]
    rows = []
    for run in runs:
        row = {**run, "role": "+".join(roles.get(_key(run), ["unused"]))}
        for t in targets:
            for split in ("validation", "test"):
                row[f"{split}_steps_to_{t:g}"] = analysis.run_steps_to_target(run, t, split)
        rows.append(row)
    paths = {name: directory / name for name in ("results.csv", "curves.csv", "summary.csv", "results.json")}
    _write_csv(paths["results.csv"], fields, rows)
    curve_rows = []
    for run in runs:
        curve = run["curve"]
        for i, step in enumerate(curve["step"]):
            curve_rows.append({
                "optimizer": run["optimizer"], "batch_size": run["batch_size"], "learning_rate": run["learning_rate"],
                "length": run["length"], "seed": run["seed"], "step": step,
                "scheduled_learning_rate": curve["learning_rate"][i], "train_loss": curve["train_loss"][i],
                **{f"{s}_{w}": curve[f"{s}_{w}"][i] for s in ("validation", "test") for w in ("loss", "accuracy")},
            })
    _write_csv(paths["curves.csv"], CURVE_FIELDS, curve_rows)
    _write_csv(paths["summary.csv"], SUMMARY_FIELDS, result["summary"])
    document = {**header, **result, "runs": [{k: v for k, v in row.items()} for row in rows]}
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


def _interval_text(cell):
    if cell["reached"] == 0:
        return "not reached" if cell["n"] or cell["trials"] else "-"
    text = f"{cell['mean_steps']:.0f}"
    if cell["low_steps"] is not None:
        text += f" [{cell['low_steps']:.0f},{cell['high_steps']:.0f}]"
    if cell["reached"] < cell["n"]:
        text += f" {cell['reached']}/{cell['n']}"
    return text


def comparison_sentence(comparison):
    """One supported sentence about a paired comparison (what its interval allows, nothing more)."""
    n, b = comparison["n"], comparison["batch_size"]
    who, ref = comparison["optimizer"], comparison["reference"]
    if n < 2 or comparison["low"] is None:
        return f"{who} vs {ref} at B = {b}: too few paired seeds to compare (n = {n})"
    if not comparison["significant"]:
        return (f"{who} vs {ref} at B = {b}: no significant difference ({comparison['percent']:+.0f} %, 95 % "
                f"interval {comparison['low']:+.0f} to {comparison['high']:+.0f} %, n = {n})")
    word = "fewer" if comparison["percent"] < 0 else "more"
    low, high = sorted((abs(comparison["low"]), abs(comparison["high"])))
    return (f"{who} needs {abs(comparison['percent']):.0f} % {word} steps than {ref} at B = {b} "
            f"(95 % interval {low:.0f}-{high:.0f} %, n = {n} seeds)")


def tables(result):
    """The printed report: per target, steps with intervals, paired comparisons, fits, noise, sensitivity."""
    optimizers, batch_sizes = result["optimizers"], result["batch_sizes"]
    cells = {(c["optimizer"], c["batch_size"], c["target"]): c for c in result["summary"]}
    lines = []
    width = 22
    for target in result["targets"]:
        lines += [f"Steps to {100 * target:.1f}% test accuracy: mean [95% t interval] over the reporting seeds "
                  "(k/n: seeds that reached it, when not all)",
                  f"{'optimizer':<16}" + "".join(f"{f'B={b}':>{width}}" for b in batch_sizes)]
        for name in optimizers:
            lines.append(f"{name:<16}" + "".join(f"{_interval_text(cells[(name, b, target)]):>{width}}"
                                                  for b in batch_sizes))
        lines += ["", f"Selected on validation (learning rate / schedule length; * = at the edge of the grid):",
                  f"{'optimizer':<16}" + "".join(f"{f'B={b}':>{width}}" for b in batch_sizes)]
        for name in optimizers:
            texts = []
            for b in batch_sizes:
                cell = cells[(name, b, target)]
                text = "-" if cell["learning_rate"] is None else f"{cell['learning_rate']:.3g} / {cell['length']}"
                texts.append(f"{text + ('*' if cell['at_grid_edge'] else ''):>{width}}")
            lines.append(f"{name:<16}" + "".join(texts))
        lines += [""]
        comparisons = [c for c in result["paired_comparisons"] if c["target"] == target]
        if comparisons:
            lines.append(f"Paired comparisons with {optimizers[0]} (same seeds), target {100 * target:.1f}%:")
            lines += ["  " + comparison_sentence(c) for c in comparisons]
            lines.append("")
        lines += [f"Fit S = S_min (1 + B_crit / B) to the means, target {100 * target:.1f}% (B_crit is the maximal "
                  "useful batch: steps and examples both twice their minimum);",
                  f"95 % bootstrap intervals over seeds; residuals (measured / fitted - 1) per batch size:",
                  f"{'optimizer':<16}{'S_min':>8}{'B_crit [95% interval]':>26}{'E_min':>9}  residuals (%)"]
        for name in optimizers:
            fit = result["fits"][f"{name}@{target}"]
            if fit["s_min"] is None:
                lines.append(f"{name:<16}{'(fewer than 2 batch sizes reached the target: no fit)':>40}")
                continue
            band = (f" [{_format(fit['b_crit_low'], '.0f')},{_format(fit['b_crit_high'], '.0f')}]"
                    if fit["b_crit_low"] is not None else "")
            residual_text = " ".join(_format(None if r is None else 100 * r, "+.0f") for r in fit["residuals"])
            verdict = (f"  DOES NOT FIT (a point off by > {100 * fit['threshold']:.0f} % and > 2 SE)"
                       if fit["does_not_fit"] else "")
            lines.append(f"{name:<16}{_format(fit['s_min'], '.0f'):>8}{_format(fit['b_crit'], '.0f') + band:>26}"
                         f"{_format(fit['e_min'], '.0f'):>9}  {residual_text}{verdict}")
        lines.append("")
    tight = result["targets"][-1]
    lines += [f"Gradient noise scale B_simple = tr(Sigma)/|G|^2 along the reporting runs at B = {batch_sizes[0]}, "
              f"until {100 * tight:.1f}% test accuracy", "(95 % bootstrap interval over checkpoints), against the "
              f"fitted B_crit interval for that target:"]
    for name in optimizers:
        noise = result["noise_scale"].get(name) or {}
        if noise.get("b_simple") is None:
            lines.append(f"  {name:<16} not measured")
            continue
        agree = {True: "overlaps the B_crit interval", False: "does NOT overlap the B_crit interval",
                 None: "no B_crit interval to compare"}[noise["agrees_with_b_crit"]]
        band = f" [{noise['low']:.0f},{noise['high']:.0f}]" if noise["low"] is not None else ""
        lines.append(f"  {name:<16} {noise['b_simple']:.0f}{band} from {noise['checkpoints']} checkpoints: {agree}")
    if result["sensitivity"]:
        lines += ["", f"Learning-rate sensitivity at B = {batch_sizes[-1]} (selected rate x 2^-2..2^2 at the "
                  "selected length, validation, one seed; reported apart from the selection): the range around the "
                  "selected rate that reaches each target, and where divergence starts:"]
        for name, by_target in result["sensitivity"].items():
            spans = []
            for t, s in by_target.items():
                spans.append(f"{100 * float(t):g}%: " + ("none" if s["reaching_low"] is None else
                             f"{s['reaching_low']:.3g}-{s['reaching_high']:.3g} "
                             f"({s['reaching_high'] / s['reaching_low']:.0f}x)"))
            s = by_target[f"{tight:g}"]
            lines.append(f"  {name:<16} reaches {'; '.join(spans)}; diverges from: "
                         f"{_format(s['diverges_from'], '.3g', 'no divergence in the range')}")
    lines += ["", "Headline (only what the intervals support):"] + ["  " + line for line in headline(result)]
    return "\n".join(lines)


def headline(result):
    """The few sentences the study stands behind, from the paired comparisons and the fits."""
    tight = result["targets"][-1]
    out = []
    comparisons = [c for c in result["paired_comparisons"] if c["target"] == tight]
    out += [comparison_sentence(c) for c in comparisons if c["significant"]]
    for verdict, chosen in (("no significant difference", [c for c in comparisons if not c["significant"]
                                                           and c["n"] >= 2]),
                            ("too few seeds reached the target on both sides to compare",
                             [c for c in comparisons if c["n"] < 2])):
        by_name = {}
        for c in chosen:
            by_name.setdefault(c["optimizer"], []).append(f"B = {c['batch_size']} (n = {c['n']})")
        out += [f"{name} vs {result['optimizers'][0]}: {verdict} at " + ", ".join(where)
                for name, where in by_name.items()]
    out += critical_batch_trend(result)
    for key, fit in result["fits"].items():
        if fit["target"] != tight or fit["s_min"] is None:
            continue
        if fit["does_not_fit"]:
            out.append(f"{fit['optimizer']}: the McCandlish model does not fit (worst residual "
                       f"{100 * (fit['worst_residual'] or 0):.0f} %); no maximal useful batch is claimed")
        elif fit["b_crit_low"] is not None:
            out.append(f"{fit['optimizer']}: maximal useful batch B_crit = {fit['b_crit']:.0f} (95 % interval "
                       f"{fit['b_crit_low']:.0f}-{_format(fit['b_crit_high'], '.0f')})")
    return out


def critical_batch_trend(result):
    """Whether ``B_crit`` grows from the loose to the tight target, as far as the bootstrap intervals show."""
    if len(result["targets"]) < 2:
        return []
    loose, tight = result["targets"][0], result["targets"][-1]
    out = []
    for name in result["optimizers"]:
        a, b = result["fits"][f"{name}@{loose}"], result["fits"][f"{name}@{tight}"]
        if a["does_not_fit"] or b["does_not_fit"] or None in (a["b_crit_low"], a["b_crit_high"], b["b_crit_low"],
                                                                 b["b_crit_high"]):
            continue
        if b["b_crit_low"] > a["b_crit_high"]:
            verdict = "grows"
        elif b["b_crit_high"] < a["b_crit_low"]:
            verdict = "shrinks"
        else:
            verdict = "shows no change beyond its intervals"
        out.append(f"{name}: B_crit {verdict} from the {100 * loose:g}% to the {100 * tight:g}% target "
                   f"({a['b_crit']:.0f} [{a['b_crit_low']:.0f}, {a['b_crit_high']:.0f}] -> {b['b_crit']:.0f} "
                   f"[{b['b_crit_low']:.0f}, {b['b_crit_high']:.0f}])")
    return out
