"""The demo's figure: loss and test-accuracy curves per optimizer, one column per batch size."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402


def _line_style(optimizer_name):
    return "--" if optimizer_name.startswith("VR") else "-"


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
    colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(optimizers)}

    figure, axes = plt.subplots(
        3, len(batch_sizes), figsize=(5.2 * len(batch_sizes), 10.5), squeeze=False, sharex="col"
    )
    rows = (
        ("train_loss", "training loss (epoch mean)", True),
        ("test_loss", "test loss", True),
        ("test_accuracy", "test accuracy", False),
    )
    for column, batch_size in enumerate(batch_sizes):
        for run in runs:
            if run["batch_size"] != batch_size:
                continue
            history = run["history"]
            for row, (key, _, _) in enumerate(rows):
                axes[row][column].plot(
                    history["epoch"],
                    history[key],
                    _line_style(run["optimizer"]),
                    color=colors[run["optimizer"]],
                    label=run["optimizer"],
                    linewidth=1.6,
                )
        steps = {run["steps"] for run in runs if run["batch_size"] == batch_size}
        steps_text = "/".join(str(s) for s in sorted(steps))
        axes[0][column].set_title(f"batch size {batch_size} ({steps_text} steps)")
        for row, (_, label, log_scale) in enumerate(rows):
            axis = axes[row][column]
            axis.grid(True, alpha=0.3)
            if log_scale:
                axis.set_yscale("log")
            if column == 0:
                axis.set_ylabel(label)
        axes[-1][column].set_xlabel("epoch")
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
