"""The study's figures (PNG, matplotlib's Agg backend).

1. ``steps_to_target.png``: steps to target against batch size, log-log, one
   line per optimizer, perfect scaling from the smallest batch, ``B_noise``;
2. ``accuracy.png``: best test accuracy against batch size;
3. ``lr_sensitivity.png``: test accuracy against learning rate at the largest
   batch size, diverged runs marked.

A VR variant is drawn dashed in its base optimizer's colour. Runs that diverged
or never reached the target are drawn as such, never dropped silently.
"""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.patches  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402

from tf_largebatch.study import analysis  # noqa: E402

_BASES = {"VRMomentum": "MSGD", "VRSGD": "SGD"}


def family(optimizer_name):
    """A VR variant shares its base optimizer's colour: VRLAMB with LAMB, VRMomentum with MSGD."""
    if optimizer_name in _BASES:
        return _BASES[optimizer_name]
    if optimizer_name.startswith("VR") and len(optimizer_name) > 2:
        return optimizer_name[2:]
    return optimizer_name


def styles(optimizers):
    """``{name: dict(color=..., linestyle=..., marker=...)}`` for every optimizer."""
    families = list(dict.fromkeys(family(name) for name in optimizers))
    cmap = plt.get_cmap("tab10")
    return {
        name: {
            "color": cmap(families.index(family(name)) % 10),
            "linestyle": "--" if family(name) != name else "-",
            "marker": "s" if family(name) != name else "o",
        }
        for name in optimizers
    }


def _finish(figure, axis, path, title):
    axis.grid(True, which="both", alpha=0.25)
    axis.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_steps_to_target(result, optimizers, batch_sizes, steps_by_batch, path, title=None):
    """Figure 1: steps to target vs batch size (log-log), perfect scaling, fits and ``B_noise``."""
    figure, axis = plt.subplots(figsize=(9.0, 5.2))
    cells = {(c["optimizer"], c["batch_size"]): c for c in result["summary"]}
    style = styles(optimizers)
    anchors = []
    for optimizer in optimizers:
        points = [(b, cells[(optimizer, b)]["steps_to_target"]) for b in batch_sizes if (optimizer, b) in cells]
        reached = [(b, s) for b, s in points if s is not None]
        missed = [b for b, s in points if s is None]
        s = style[optimizer]
        if reached:
            axis.plot(*zip(*reached), color=s["color"], linestyle=s["linestyle"], marker=s["marker"],
                      label=optimizer, linewidth=1.6)
            anchors.append(reached[0])
        if missed:
            axis.plot(missed, [steps_by_batch[b] for b in missed], linestyle="none", marker="x", color=s["color"],
                      markersize=9, label=None if reached else f"{optimizer} (not reached)")
        fit = result["per_optimizer"][optimizer]
        if fit["s_min"] is not None and fit["b_crit"] is not None and math.isfinite(fit["b_crit"]):
            grid = [batch_sizes[0] * (batch_sizes[-1] / batch_sizes[0]) ** (i / 50) for i in range(51)]
            axis.plot(grid, [analysis.fitted_steps(fit, b) for b in grid], color=s["color"], linewidth=0.8,
                      alpha=0.45, linestyle=":")
    if anchors:
        base_batch = min(b for b, _ in anchors)
        base_steps = min(s for b, s in anchors if b == base_batch)
        axis.plot(batch_sizes, [base_steps * base_batch / b for b in batch_sizes], color="0.35", linewidth=1.0,
                  linestyle="-.", label="perfect scaling")
    axis.plot(batch_sizes, [steps_by_batch[b] for b in batch_sizes], color="0.7", linewidth=1.0,
              linestyle=(0, (1, 3)), label="step budget (x: not reached)")
    b_noise = (result.get("noise_scale") or {}).get("b_noise")
    if b_noise and b_noise > 0:
        axis.axvline(b_noise, color="0.2", linewidth=1.0, alpha=0.6)
        axis.annotate(f"B_noise = {b_noise:.0f}", (b_noise, 0.97), xycoords=("data", "axes fraction"),
                      rotation=90, va="top", ha="right", fontsize=8)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("batch size")
    axis.set_ylabel(f"steps to {100 * result['target_test_accuracy']:.1f}% test accuracy")
    return _finish(figure, axis, path, title or "Steps to target at each batch size's best learning rate\n"
                   "(thin dotted: the fit S_min (1 + B_crit / B) per optimizer)")


def plot_accuracy(result, optimizers, batch_sizes, path, title=None, bayes_accuracy=None):
    """Figure 2: best test accuracy vs batch size."""
    figure, axis = plt.subplots(figsize=(9.0, 5.2))
    style = styles(optimizers)
    cells = {(c["optimizer"], c["batch_size"]): c for c in result["summary"]}
    for optimizer in optimizers:
        points = [(b, 100 * cells[(optimizer, b)]["best_test_accuracy"]) for b in batch_sizes
                  if (optimizer, b) in cells and cells[(optimizer, b)]["best_test_accuracy"] is not None]
        if points:
            s = style[optimizer]
            axis.plot(*zip(*points), color=s["color"], linestyle=s["linestyle"], marker=s["marker"], label=optimizer)
    axis.axhline(100 * result["target_test_accuracy"], color="0.35", linestyle="-.", linewidth=1.0, label="target")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("batch size")
    axis.set_ylabel("best test accuracy (%) at the best learning rate")
    if title is None:
        title = "Best test accuracy against batch size"
        if bayes_accuracy is not None and math.isfinite(bayes_accuracy):
            title += f" (the teacher itself: {100 * bayes_accuracy:.1f}%)"
    return _finish(figure, axis, path, title)


def plot_learning_rate_sensitivity(runs, result, optimizers, batch_size, path, title=None):
    """Figure 3: best test accuracy vs learning rate at one batch size; diverged runs as crosses at the bottom."""
    figure, axis = plt.subplots(figsize=(9.0, 5.2))
    style = styles(optimizers)
    bottom = axis.get_xaxis_transform()  # x in data, y in axes fraction: crosses sit on the bottom edge
    finished_values = []
    rates = []
    any_diverged = False
    for index, optimizer in enumerate(optimizers):
        group = sorted((r for r in runs if r["optimizer"] == optimizer and r["batch_size"] == batch_size
                        and r["seed_offset"] == 0), key=lambda r: r["learning_rate"])
        if not group:
            continue
        s = style[optimizer]
        finished = [(r["learning_rate"], 100 * r["best_test_accuracy"]) for r in group if not r["diverged"]]
        finished_values += [a for _, a in finished]
        rates += [r["learning_rate"] for r in group]
        if finished:
            axis.plot(*zip(*finished), color=s["color"], linestyle=s["linestyle"], marker=s["marker"],
                      label=optimizer)
        diverged = [r["learning_rate"] for r in group if r["diverged"]]
        if diverged:
            any_diverged = True
            # Stacked a little per optimizer, so crosses at the same learning rate stay visible.
            axis.scatter(diverged, [0.03 + 0.03 * index] * len(diverged), marker="x", s=70, color=s["color"],
                         transform=bottom,
                         label=None if finished else f"{optimizer} (all diverged)", zorder=3)
    target = 100 * result["target_test_accuracy"]
    axis.axhline(target, color="0.35", linestyle="-.", linewidth=1.0, label="target")
    low = min(finished_values + [target])
    high = max(finished_values + [target])
    pad = max(0.1 * (high - low), 0.3)
    if any_diverged:  # a band at the bottom (a quarter of the height) holds the diverged runs
        band = 0.04 + 0.03 * len(optimizers)
        axis.add_patch(matplotlib.patches.Rectangle((0, 0), 1, band, transform=axis.transAxes, color="0.92",
                                                    zorder=0))
        axis.text(0.005, band - 0.01, "diverged", transform=axis.transAxes, fontsize=8, va="top", color="0.3")
        span = (high - low + 2 * pad) / (1 - band)
        axis.set_ylim(high + pad - span, high + pad)
    else:
        axis.set_ylim(low - pad, high + pad)
    axis.set_xscale("log")
    if rates:
        axis.set_xlim(min(rates) / 1.5, max(rates) * 1.5)
    axis.set_xlabel("peak learning rate")
    axis.set_ylabel("best test accuracy (%)")
    note = "\n(x in the grey band: diverged, stopped early)" if any_diverged else ""
    return _finish(figure, axis, path, title or f"Learning-rate sensitivity at batch size {batch_size}{note}")


def plot_all(runs, result, optimizers, batch_sizes, steps_by_batch, directory, bayes_accuracy=None):
    """Writes the three figures into ``directory``; returns their paths."""
    return [
        plot_steps_to_target(result, optimizers, batch_sizes, steps_by_batch, directory / "steps_to_target.png"),
        plot_accuracy(result, optimizers, batch_sizes, directory / "accuracy.png", bayes_accuracy=bayes_accuracy),
        plot_learning_rate_sensitivity(runs, result, optimizers, batch_sizes[-1], directory / "lr_sensitivity.png"),
    ]
