"""The demo's figure: loss and test-accuracy curves per optimizer, one column per batch size.

Rows share their y-axis across batch sizes so the columns compare directly; a
VR variant is drawn dashed in its base optimizer's colour.
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402


def _line_style(optimizer_name):
    return "--" if optimizer_name.startswith("VR") else "-"


def _family(optimizer_name):
    """A VR variant shares its base optimizer's colour: VRLAMB with LAMB, VRMomentum with MSGD."""
    if optimizer_name.startswith("VR"):
        base = optimizer_name[2:]
        return "MSGD" if base == "Momentum" else base
    return optimizer_name


def _focus_limits(curves, scale):
    """y-limits that frame the second half of training (where the table's numbers come from).

    Early spikes of a diverging warm-up would otherwise flatten every curve;
    they are clipped at the top (or bottom) of the frame instead.
    """
    tail = [scale * v for curve in curves for v in curve[len(curve) // 2 :]]
    low, high = min(tail), max(tail)
    pad = 0.35 * (high - low) or 0.05 * abs(high) or 1.0
    return low - pad, high + pad


def plot_runs(runs, path, title=None):
    """Writes a PNG of every run's curves and returns ``path``.

    Args:
        runs: list of dicts with keys ``optimizer``, ``batch_size`` and
            ``history`` (a dict of equal-length lists ``epoch``, ``train_loss``,
            ``test_loss``, ``test_accuracy``), as the demo records them.
        path: output file name (``.png``).
        title: optional figure title.
    """
    if not runs:
        raise ValueError("`runs` must contain at least one finished run, got an empty list.")
    batch_sizes = sorted({run["batch_size"] for run in runs})
    optimizers = list(dict.fromkeys(run["optimizer"] for run in runs))
    families = list(dict.fromkeys(_family(name) for name in optimizers))
    colors = {name: plt.get_cmap("tab10")(families.index(_family(name)) % 10) for name in optimizers}

    figure, axes = plt.subplots(
        3, len(batch_sizes), figsize=(5.2 * len(batch_sizes), 10.5), squeeze=False, sharex="col", sharey="row"
    )
    rows = (
        ("train_loss", "training loss (epoch mean)", 1.0),
        ("test_loss", "test loss", 1.0),
        ("test_accuracy", "test accuracy (%)", 100.0),
    )
    for column, batch_size in enumerate(batch_sizes):
        for run in runs:
            if run["batch_size"] != batch_size:
                continue
            history = run["history"]
            for row, (key, _, scale) in enumerate(rows):
                axes[row][column].plot(
                    history["epoch"],
                    [scale * value for value in history[key]],
                    _line_style(run["optimizer"]),
                    color=colors[run["optimizer"]],
                    label=run["optimizer"],
                    linewidth=1.6,
                )
        steps = {run["steps"] for run in runs if run["batch_size"] == batch_size}
        steps_text = "/".join(str(s) for s in sorted(steps))
        axes[0][column].set_title(f"batch size {batch_size} ({steps_text} steps)")
        for row, (_, label, _) in enumerate(rows):
            axis = axes[row][column]
            axis.grid(True, alpha=0.3)
            if column == 0:
                axis.set_ylabel(label)
        axes[-1][column].set_xlabel("epoch")
    for row, (key, _, scale) in enumerate(rows):
        axes[row][0].set_ylim(*_focus_limits([run["history"][key] for run in runs], scale))
    # One shared legend: every optimizer, whichever panel it appears in.
    handles, labels = [], []
    for axis in axes[0]:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), frameon=False)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.06, 1, 0.97 if title else 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
