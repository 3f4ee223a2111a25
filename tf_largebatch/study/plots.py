"""The study's figures (PNG, matplotlib's Agg backend).

1. ``steps_to_target.png``: steps to target against batch size, log-log, per
   target: mean and 95 % interval over seeds per optimizer, the fitted
   ``S_min (1 + B_crit / B)`` with its bootstrap band, perfect scaling, and the
   fit's residuals below;
2. ``accuracy.png``: best test accuracy of the reporting runs against batch size;
3. ``lr_sensitivity.png``: validation steps to target against the learning rate
   (relative to the selected one) at the largest batch size, diverged runs marked.

A VR variant is drawn dashed in its base optimizer's colour. Runs that diverged
or never reached the target are drawn as such, never dropped silently.
"""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.patches  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402

from tf_largebatch.study import scaling_fit  # noqa: E402

_BASES = {"VRMomentum": "MSGD", "VRSGD": "SGD"}


def family(optimizer_name):
    """A VR variant (or an untuned contender) shares its base optimizer's colour: VRLAMB with LAMB."""
    if optimizer_name.endswith("-untuned"):
        return family(optimizer_name[:-len("-untuned")])
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
            "linestyle": ":" if name.endswith("-untuned") else "--" if family(name) != name else "-",
            "marker": "s" if family(name) != name else "o",
        }
        for name in optimizers
    }


def _finish(figure, axis, path, title):
    axis.grid(True, which="both", alpha=0.25)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_steps_to_target(result, path, title=None):
    """Figure 1: steps to target vs batch size (log-log), mean and 95 % interval over seeds, the fit with its
    bootstrap band, perfect scaling; below, the fit's residuals. One column per target."""
    optimizers, batch_sizes, targets = result["optimizers"], result["batch_sizes"], result["targets"]
    figure, axes = plt.subplots(2, len(targets), figsize=(6.2 * len(targets) + 2.2, 7.0), squeeze=False,
                                gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    cells = {(c["optimizer"], c["batch_size"], c["target"]): c for c in result["summary"]}
    style = styles(optimizers)
    for column, target in enumerate(targets):
        axis, lower = axes[0][column], axes[1][column]
        anchors = []
        for optimizer in optimizers:
            s = style[optimizer]
            points = [cells[(optimizer, b, target)] for b in batch_sizes]
            reached = [c for c in points if c["mean_steps"] is not None]
            if reached:
                errors = [[c["mean_steps"] - (c["low_steps"] if c["low_steps"] is not None else c["mean_steps"])
                           for c in reached],
                          [(c["high_steps"] if c["high_steps"] is not None else c["mean_steps"]) - c["mean_steps"]
                           for c in reached]]
                errors = [[max(e, 0.0) for e in side] for side in errors]
                axis.errorbar([c["batch_size"] for c in reached], [c["mean_steps"] for c in reached], yerr=errors,
                              color=s["color"], linestyle="none", marker=s["marker"], capsize=3, label=optimizer)
                anchors.append((reached[0]["batch_size"], reached[0]["mean_steps"]))
            fit = result["fits"][f"{optimizer}@{target}"]
            if fit["s_min"] is not None and fit["b_crit"] is not None and math.isfinite(fit["b_crit"]):
                grid = [batch_sizes[0] * (batch_sizes[-1] / batch_sizes[0]) ** (i / 50) for i in range(51)]
                axis.plot(grid, [scaling_fit.fitted_steps(fit, b) for b in grid], color=s["color"],
                          linestyle=s["linestyle"], linewidth=1.0, alpha=0.8)
                band = [row for row in (fit.get("band") or []) if row[1] is not None and row[2] is not None]
                if band:
                    axis.fill_between([r[0] for r in band], [r[1] for r in band], [r[2] for r in band],
                                      color=s["color"], alpha=0.12, linewidth=0)
                lower.plot([b for b, r in zip(batch_sizes, fit["residuals"]) if r is not None],
                           [100 * r for r in fit["residuals"] if r is not None], color=s["color"],
                           linestyle=s["linestyle"], marker=s["marker"])
            missed = [c["batch_size"] for c in points if c["mean_steps"] is None and c["n"]]
            if missed:
                axis.plot(missed, [axis.get_ylim()[1]] * len(missed), linestyle="none", marker="x",
                          color=s["color"], markersize=8)
        if anchors:
            base_batch, base_steps = min(anchors)
            axis.plot(batch_sizes, [base_steps * base_batch / b for b in batch_sizes], color="0.35", linewidth=1.0,
                      linestyle="-.", label="perfect scaling")
        threshold = 100 * scaling_fit.RESIDUAL_THRESHOLD
        lower.axhspan(-threshold, threshold, color="0.9", zorder=0)
        lower.axhline(0, color="0.3", linewidth=0.8)
        lower.set_ylabel("residual (%)")
        lower.set_xlabel("batch size")
        lower.set_xscale("log", base=2)
        lower.grid(True, which="both", alpha=0.25)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_ylabel(f"steps to {100 * target:.1f}% test accuracy")
        axis.grid(True, which="both", alpha=0.25)
        axis.set_title(f"target {100 * target:.1f}%", fontsize=10)
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.suptitle(title or "Steps to target: mean and 95 % t interval over seeds; lines: the fit "
                    "S_min (1 + B_crit / B), band: its bootstrap 95 % interval;\nbelow: residuals "
                    "(grey: within the does-not-fit threshold)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_accuracy(result, path, title=None):
    """Figure 2: mean best test accuracy of the reporting seeds vs batch size (tight target's settings)."""
    optimizers, batch_sizes = result["optimizers"], result["batch_sizes"]
    target = result["targets"][-1]
    figure, axis = plt.subplots(figsize=(9.0, 5.2))
    style = styles(optimizers)
    cells = {(c["optimizer"], c["batch_size"], c["target"]): c for c in result["summary"]}
    for optimizer in optimizers:
        points = [(b, 100 * cells[(optimizer, b, target)]["mean_test_accuracy"]) for b in batch_sizes
                  if cells[(optimizer, b, target)]["mean_test_accuracy"] is not None]
        if points:
            s = style[optimizer]
            axis.plot(*zip(*points), color=s["color"], linestyle=s["linestyle"], marker=s["marker"], label=optimizer)
    for t in result["targets"]:
        axis.axhline(100 * t, color="0.35", linestyle="-.", linewidth=1.0)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("batch size")
    axis.set_ylabel("best test accuracy (%) until the run stopped")
    return _finish(figure, axis, path, title or "Best test accuracy of the reporting runs (mean over seeds; runs "
                   "stop once every target is reached)")


def plot_learning_rate_sensitivity(result, path, title=None):
    """Figure 3: validation steps to the tight target vs learning-rate factor at the largest batch; crosses:
    diverged, open circles at the top: target not reached."""
    optimizers = [o for o in result["optimizers"] if o in result["sensitivity"]]
    tight = f"{result['targets'][-1]:g}"
    figure, axis = plt.subplots(figsize=(9.0, 5.2))
    style = styles(result["optimizers"])
    reached_values = [p["steps_to_target"] for o in optimizers for p in result["sensitivity"][o][tight]["points"]
                      if p["steps_to_target"] is not None]
    top = max(reached_values) * 1.5 if reached_values else 1.0
    for optimizer in optimizers:
        s = style[optimizer]
        points = result["sensitivity"][optimizer][tight]["points"]
        reached = [(p["factor"], p["steps_to_target"]) for p in points if p["steps_to_target"] is not None]
        if reached:
            axis.plot(*zip(*reached), color=s["color"], linestyle=s["linestyle"], marker=s["marker"],
                      label=optimizer)
        for p in points:
            if p["steps_to_target"] is None:
                axis.plot([p["factor"]], [top], marker="x" if p["diverged"] else "o", color=s["color"],
                          markerfacecolor="none", linestyle="none", markersize=8)
    axis.set_xscale("log", base=2)
    if reached_values and min(reached_values) > 0:
        axis.set_yscale("log")
    axis.set_xlabel("learning rate / selected learning rate")
    axis.set_ylabel(f"validation steps to {100 * result['targets'][-1]:.1f}%")
    return _finish(figure, axis, path, title or f"Learning-rate sensitivity at batch size {result['batch_sizes'][-1]}"
                   " (one seed; top row: x diverged, o not reached)")


def plot_all(result, directory):
    """Writes the three figures into ``directory``; returns their paths."""
    return [
        plot_steps_to_target(result, directory / "steps_to_target.png"),
        plot_accuracy(result, directory / "accuracy.png"),
        plot_learning_rate_sensitivity(result, directory / "lr_sensitivity.png"),
    ]
