"""The sweep's learning curves as one figure, written next to the results file as curves.png by --report=True and
at the end of every sweep (only then is matplotlib imported):

    per task, two panels: above, the target accuracy per epoch (by the rows' metric, metric.py: VisDA-2017's mean
    class accuracy), one line per method, the mean over its seeds with a band from the lowest to the highest seed
    (the number of seeds in the legend); below, the source classification loss per epoch (solid) and the method's
    adaptation term (dashed). Tasks wrap into rows of at most four; a method has the same colour in every figure;
    epochs are marked in whole numbers.

The numbers come from each row's run file (out_dir/<run>.json, "epochs"). A method whose runs evaluated the target
at fewer than two epochs (eval_every=0 evaluates only the final model) gets no accuracy line: its panel says so. A
method that adapts a trained model on the target alone (SHOT, TENT: starts_from) is not drawn: its epochs are its
target stage's, and its losses are no source loss; the panel says so too.
"""
import json
import math
import os
import statistics
import textwrap
import zlib

from results.metric import epoch_key, metric_of, name_of
from results.store import latest_per_seed
from results.tasks import tasks_in_order
from common.files import write_file
from common.words import counted
from methods import METHODS


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


# One colour per method, the same in every figure, as each method declares it (methods/: matplotlib's tab10 and tab20
# colours, source only in grey), and the labels its flags make (cdan+e)
COLOURS = {**{name: method.colour for name, method in METHODS.items() if method.colour},
           **{label: colour for method in METHODS.values() for label, colour in method.label_colours.items()}}
MOST_COLUMNS = 4  # tasks per row of panels: Office-31's six in two rows of three, Office-Home's twelve in 3 x 4


def colour(method):
    return COLOURS.get(method) or f"C{zlib.crc32(method.encode()) % 10}"  # (a name not listed: fixed by its hash)


def rows_and_columns(count, most=MOST_COLUMNS):
    """(rows, columns) for count tasks: rows of at most `most` tasks, as even as they go (6: 2 x 3, 12: 3 x 4)."""
    rows = math.ceil(count / most)
    return rows, math.ceil(count / rows)


def draw(folder, by_method, name_of_task, title, path):
    """Write the figure of one table ({method label: rows}) to path; returns the matplotlib figure. Each task has
    two panels, its accuracy above its losses, with the gids "<task>:accuracy" and "<task>:loss"."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    tasks = tasks_in_order(by_method)
    runs = {method: histories(folder, rows) for method, rows in by_method.items()}
    metric = metric_of(by_method)  # what the table beside it shows
    rows, columns = rows_and_columns(len(tasks))
    width = max(6.4, 1 + 3.2 * columns)
    fig, axes = plt.subplots(2 * rows, columns, figsize=(width, 5.6 * rows), squeeze=False, layout="constrained")
    fig.suptitle(textwrap.fill(title, int(13 * width)), fontsize=9)  # a long title: lines, not a squeezed plot
    for unused in range(len(tasks), rows * columns):
        row, column = divmod(unused, columns)
        axes[2 * row][column].set_axis_off()
        axes[2 * row + 1][column].set_axis_off()
    styles = set()
    for k, task in enumerate(tasks):
        row, column = divmod(k, columns)
        top, bottom = axes[2 * row][column], axes[2 * row + 1][column]
        top.set_title(name_of_task(*task))
        top.set_gid(f"{name_of_task(*task)}:accuracy")
        bottom.set_gid(f"{name_of_task(*task)}:loss")
        bottom.sharex(top)
        bottom.set_xlabel("epoch")
        for axis in (top, bottom):
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        if column == 0:
            top.set_ylabel(f"{name_of(metric)} (%)")
            bottom.set_ylabel("loss", fontsize=8)
        missing, staged = [], []
        for method, by_task in runs.items():
            seeds = list(by_task.get(task, {}).values())
            if not seeds:
                continue
            if METHODS.get(method.split()[0].split("+")[0], METHODS["source_only"]).starts_from:
                staged.append(method)  # (its epochs are its target stage's, its losses no source loss: not drawn)
                continue
            epochs, mean, low, high = mean_curve(seeds, epoch_key(metric), 100)
            if len(epochs) > 1:
                top.plot(epochs, mean, color=colour(method), label=f"{method} ({counted(len(seeds), 'seed')})",
                         gid=f"{method}:target")
                top.fill_between(epochs, low, high, color=colour(method), alpha=0.2, linewidth=0)
            else:
                missing.append(method)
            epochs, mean, _, _ = mean_curve(seeds, "loss")
            bottom.plot(epochs, mean, color=colour(method), gid=f"{method}:loss")
            styles.add("-")
            if any(e.get("adaptation_loss") is not None for run in seeds for e in run):
                epochs, mean, _, _ = mean_curve(seeds, "adaptation_loss")
                bottom.plot(epochs, mean, color=colour(method), linestyle="--", gid=f"{method}:adaptation")
                styles.add("--")
        notes = [f"no curve (target evaluated at fewer than 2 epochs, e.g. eval_every=0): {', '.join(missing)}"] \
            if missing else []
        if staged:
            notes.append(f"not drawn: {', '.join(staged)} (adapted from a trained model, epochs of their own)")
        if notes:
            note = "; ".join(notes)
            top.text(0.5, 0.5, textwrap.fill(note, 34), transform=top.transAxes, ha="center", va="center",
                     fontsize=8, gid="no curve", in_layout=False)  # inside its panel: no room to make for it
        if top.get_legend_handles_labels()[0]:
            top.legend(fontsize=7)
    kinds = [Line2D([], [], color="black", linestyle=style, label=label)  # what a line's style means
             for style, label in (("-", "source classification loss"), ("--", "adaptation term")) if style in styles]
    axes[1][0].legend(handles=kinds, fontsize=7)
    try:
        write_file(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return fig
