"""The sweep's learning curves as one figure, written next to the results file as curves.png by --report=True and
at the end of every sweep (only then is matplotlib imported):

    top row     one panel per task: target accuracy per epoch, one line per method, the mean over its seeds with a
                band from the lowest to the highest seed (the number of seeds in the legend)
    bottom row  the source classification loss per epoch (solid) and the method's adaptation term (dashed)

The numbers come from each row's run file (out_dir/<run>.json, "epochs"). A method whose runs evaluated the target
at fewer than two epochs (eval_every=0 evaluates only the final model) gets no accuracy line: its panel says so.
"""
import json
import os
import statistics
import textwrap

from results import latest_per_seed, tasks_in_order, write_file


def histories(folder, rows):
    """{(source, target): {seed: the run's per-epoch records}} of these rows (the latest row of each seed), from
    their run files; rows whose file is gone are left out."""
    def epochs(row):
        with open(os.path.join(folder, row["run_file"]), encoding="utf-8") as f:
            return json.load(f)["epochs"]
    return {task: {seed: epochs(row) for seed, row in by_seed.items()
                   if row.get("run_file") and os.path.exists(os.path.join(folder, row["run_file"]))}
            for task, by_seed in latest_per_seed(rows).items()}


def mean_curve(runs, key, scale=1.0):
    """(epochs, mean, lowest, highest) over the runs at the epochs where every run has a value for key."""
    epochs = sorted(set.intersection(*({e["epoch"] for e in run if e.get(key) is not None} for run in runs)))
    values = [[scale * next(e[key] for e in run if e["epoch"] == epoch) for run in runs] for epoch in epochs]
    return epochs, [statistics.mean(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def draw(folder, by_method, name_of_task, title, path):
    """Write the figure of one table ({method label: rows}) to path; returns the matplotlib figure."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    tasks = tasks_in_order(by_method)
    runs = {method: histories(folder, rows) for method, rows in by_method.items()}
    width = max(6.4, 1 + 3.2 * len(tasks))
    fig, axes = plt.subplots(2, len(tasks), figsize=(width, 6.4), squeeze=False, sharex="col", layout="constrained")
    fig.suptitle(textwrap.fill(title, int(13 * width)), fontsize=9)  # a long title: lines, not a squeezed plot
    for column, task in enumerate(tasks):
        top, bottom = axes[0][column], axes[1][column]
        top.set_title(name_of_task(*task))
        bottom.set_xlabel("epoch")
        missing = []
        for k, (method, by_task) in enumerate(runs.items()):
            seeds = list(by_task.get(task, {}).values())
            if not seeds:
                continue
            colour = f"C{k % 10}"
            epochs, mean, low, high = mean_curve(seeds, "target_acc", 100)
            if len(epochs) > 1:
                top.plot(epochs, mean, color=colour, label=f"{method} ({len(seeds)} seeds)", gid=f"{method}:target")
                top.fill_between(epochs, low, high, color=colour, alpha=0.2, linewidth=0)
            else:
                missing.append(method)
            epochs, mean, _, _ = mean_curve(seeds, "loss")
            bottom.plot(epochs, mean, color=colour, gid=f"{method}:loss")
            if any(e.get("adaptation_loss") is not None for run in seeds for e in run):
                epochs, mean, _, _ = mean_curve(seeds, "adaptation_loss")
                bottom.plot(epochs, mean, color=colour, linestyle="--", gid=f"{method}:adaptation")
        if missing:
            note = "no curve (target evaluated at fewer than 2 epochs, e.g. eval_every=0): " + ", ".join(missing)
            top.text(0.5, 0.5, textwrap.fill(note, 34), transform=top.transAxes, ha="center", va="center",
                     fontsize=8, gid="no curve", in_layout=False)  # inside its panel: no room to make for it
        if top.get_legend_handles_labels()[0]:
            top.legend(fontsize=7)
    axes[0][0].set_ylabel("target accuracy (%)")
    axes[1][0].set_ylabel("source loss (solid), adaptation term (dashed)", fontsize=8)
    try:
        write_file(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return fig
