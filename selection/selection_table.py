"""The selection table: what each validator (validators.py, beside it) would have chosen from a sweep without the
target's labels, and what that choice is worth on them.

    found = candidates(folder, by_label)                  # by_label: {label: rows}, the rows of one table
    table = picks(found, by_label, "dann trade_off=1.0")  # what each choice picks, beside its default setting
    print(markdown(table, name_of_task, title, metric_of(by_label), unscored(found, by_label)))

The candidates of a task and seed are every evaluated epoch with validator scores of every setting of the table
(methods x the grid's values): their scores and target accuracies are in the run files (out_dir/<run>.json,
"epochs"). A run without scores (--validators=none; its file gone) is no candidate: unscored() names them, and the
table says so. Every number is the rows' metric (results/metric.py: the target's accuracy, VisDA-2017's mean class
accuracy). Each validator picks the candidate it scores highest among those it scored (source_val_acc and DEV: runs
with a held-out source part only); the cell is the value of that pick, the mean ± sample std over the seeds where
it picked one (as a paper prints it: selection_<name>.tex beside the .md and .csv).
Beside them: the final model of the default setting (what a run of the flags' defaults reports), where its run is
among the candidates, and the oracle, which picks by the target's labels (the best any choice could do, which most
published tables report). Each row's gap is to the oracle over the candidates that row could pick from, on the same
tasks and seeds: a validator that scores fewer candidates, or fails on a seed, is measured against what it could
have had.
"""
import csv
import io
import os
import statistics
import textwrap

from results.curves import histories
from results.tables import latex_cell, latex_text_cell, shows
from results.metric import epoch_key, epoch_value, final_value, metric_of, name_of
from results.tasks import ordered
from results.store import latest_per_seed
from common.files import write_file
from selection.validators import HELD_OUT

ORACLE = "oracle (target labels)"


def candidates(folder, by_label):
    """{(source, target): {seed: [(label, epoch, value, {validator: score})]}} of every evaluated epoch with validator
    scores, from the run files of these rows ({label: rows}), value by the rows' metric; a run whose file is gone has
    none."""
    metric = metric_of(by_label)
    found = {}
    for label, rows in by_label.items():
        for task, by_seed in histories(folder, rows).items():
            for seed, epochs in by_seed.items():
                scored = [(label, e["epoch"], epoch_value(e, metric), e["validators"]) for e in epochs
                          if epoch_value(e, metric) is not None and e.get("validators")]
                if scored:
                    found.setdefault(task, {}).setdefault(seed, []).extend(scored)
    return found


def unscored(found, by_label):
    """{label: {(source, target): [seeds]}} of the runs of these rows that are no candidates (found: candidates()):
    run with --validators=none, or their run file is gone."""
    missing = {}
    for label, rows in by_label.items():
        for task, by_seed in latest_per_seed(rows).items():
            for seed in sorted(by_seed):
                if not any(run[0] == label for run in found.get(task, {}).get(seed, ())):
                    missing.setdefault(label, {}).setdefault(task, []).append(seed)
    return missing


def picks(found, by_label, default):
    """{choice: {(source, target): {seed: (label, epoch, value, best)}}} for the default setting's final model
    (labelled "final model: <default>"; only where its run is among the candidates), each validator that scored the
    candidates (found: candidates()), and the oracle; best is the oracle's value over the candidates that choice
    picked from (a validator: those it scored; the final model and the oracle: all). The tasks and seeds are those
    with candidates."""
    names = list(dict.fromkeys(name for by_seed in found.values() for runs in by_seed.values()
                               for *_, scores in runs for name in scores))
    table = {f"final model: {default}": {}}
    table.update({name: {} for name in names})
    table[ORACLE] = {}
    metric = metric_of(by_label)
    finals = latest_per_seed(by_label.get(default, []))
    for task, by_seed in found.items():
        for seed, runs in by_seed.items():
            best = max(run[2] for run in runs)
            if seed in finals.get(task, {}) and any(run[0] == default for run in runs):  # (its run has scores)
                row = finals[task][seed]
                table[f"final model: {default}"].setdefault(task, {})[seed] = (default, None, final_value(row, metric),
                                                                              best)
            for name in names:
                scored = [run for run in runs if run[3].get(name) is not None]  # (None: outputs not finite)
                if scored:
                    label, epoch, value, _ = max(scored, key=lambda run: run[3][name])  # (ties: the first)
                    table[name].setdefault(task, {})[seed] = (label, epoch, value, max(run[2] for run in scored))
            label, epoch, value, _ = max(runs, key=lambda run: run[2])
            table[ORACLE].setdefault(task, {})[seed] = (label, epoch, value, value)
    return table


def cells(table):
    """{choice: ({task: (mean value over the seeds it picked on, in percent, how many those are, how many the task
    has)}, average over tasks, its oracle's average, gap)}: its oracle is the mean of each pick's best (the oracle
    over the candidates it picked from) over the same tasks and seeds, and the gap is its oracle's average minus the
    row's; those three only where the choice has every task."""
    seeds = {task: len(by_seed) for task, by_seed in table[ORACLE].items()}
    out = {}
    for choice, by_task in table.items():
        means = {task: (statistics.mean(100 * pick[2] for pick in by_seed.values()), len(by_seed), seeds[task])
                 for task, by_seed in by_task.items()}
        if means and means.keys() == seeds.keys():
            average = statistics.mean(mean for mean, _, _ in means.values())
            oracle = statistics.mean(statistics.mean(100 * pick[3] for pick in by_seed.values())
                                     for by_seed in by_task.values())
            out[choice] = means, average, oracle, oracle - average
        else:
            out[choice] = means, None, None, None
    return out


def values(by_seed):
    """The values (%) of one choice's picks on one task ({seed: pick}), in the order of the seeds."""
    return [100 * by_seed[seed][2] for seed in sorted(by_seed)]


def cell_text(by_seed, seeds):
    """One task's cell of a choice ({seed: pick}; seeds: how many the task has): the mean over the seeds it picked
    on, ± their sample std where those are two or more, and "(k/n)" where it picked on k of the n seeds."""
    picked = values(by_seed)
    text = f"{statistics.mean(picked):.2f}"
    if len(picked) > 1:
        text += f" ± {statistics.stdev(picked):.2f}"
    return text + (f" ({len(picked)}/{seeds})" if len(picked) < seeds else "")


def markdown(table, name_of_task, title, metric, missing):
    """The table as printed: one row per choice, one column per task (mean ± std over seeds), the average, its oracle
    and the gap, and notes saying what each is over and which runs are no candidates (missing: unscored())."""
    tasks = ordered(task for by_task in table.values() for task in by_task)
    header = " | ".join(name_of_task(*t) for t in tasks)
    lines = [f"\n{title}\n", f"| choice | {header} | average | its oracle | gap |", "|---" * (len(tasks) + 4) + "|"]
    shown = lambda value: "-" if value is None else f"{value:.2f}"  # noqa: E731
    numbers = cells(table)
    for choice, (means, average, oracle, gap) in numbers.items():
        row = [cell_text(table[choice][t], means[t][2]) if t in means else "-" for t in tasks]
        lines.append(f"| {choice} | " + " | ".join(row) + f" | {shown(average)} | {shown(oracle)} | {shown(gap)} |")
    partial = "; (k/n): over the k of the n seeds where it picked one" if any(
        means[t][1] < means[t][2] for means, *_ in numbers.values() for t in means) else ""
    lines.append(f"\nEach cell: the {name_of(metric)} (%) of the model the choice picks, the mean ± sample std over "
                 f"seeds (no ± for one seed){partial}; average: the mean of the task cells. "
                 "Candidates: every evaluated epoch with validator scores, of every setting; a validator picks by its "
                 "score among those it scored (validators.py; source_val_acc, dev: runs with --source_val > 0), the "
                 "oracle by the target's labels among all. its oracle: the best among the candidates the row picked "
                 "from (the final model's: all), on the same seeds; gap: its oracle minus the row's average, in "
                 "points.")
    if missing:
        names = ",".join(choice for choice in table if choice != ORACLE and not choice.startswith("final model")
                         and choice not in HELD_OUT)  # (those need --source_val > 0, which auto adds where it is)
        runs = "; ".join(f"{label} (" + ", ".join(f"{name_of_task(*task)} seed{'s' * (len(seeds) > 1)} "
                                                  + ", ".join(map(str, seeds)) for task, seeds in by_task.items())
                         + ")" for label, by_task in missing.items())
        lines.append(f"\nNo validator scores (run with --validators=none, or the run file is gone), so not among the "
                     f"candidates and in no number above, the final model's included: {runs}. To score them, run those "
                     f"settings again with --rerun=True and --validators=auto"
                     + (f" (or --validators={names})." if names else "."))
    return "\n".join(lines)


def csv_text(table, name_of_task, metric, digest=""):
    """One line per choice, task and seed: what was picked (setting, epoch), its value by the metric (%), the
    oracle's over the candidates the choice picked from (%), and the hash of the runs the table is of (digest:
    tables.shows)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    key = epoch_key(metric)  # target_acc, or VisDA-2017's target_class_acc
    writer.writerow(["choice", "task", "seed", "setting", "epoch", key, f"its_oracle_{key}", "runs_hash"])
    for choice, by_task in table.items():
        for task, by_seed in by_task.items():
            for seed, (label, epoch, value, best) in sorted(by_seed.items()):
                writer.writerow([choice, name_of_task(*task), seed, label, "final" if epoch is None else epoch,
                                 f"{100 * value:.4f}", f"{100 * best:.4f}", digest])
    return out.getvalue()


def latex_text(table, name_of_task, comment):
    """The table as a booktabs tabular, laid out as markdown() prints it (one decimal, as the papers print): each
    task's mean $\\pm$ sample std over the seeds the choice picked on, "(k/n)" where those are k of the n; the
    average, its oracle and the gap; "-" where a choice has no pick. comment: the line above it (what it shows)."""
    tasks = ordered(task for by_task in table.values() for task in by_task)
    header = " & ".join(["Choice", *(latex_text_cell(name_of_task(*t)) for t in tasks), "Avg", "Its oracle", "Gap"])
    lines = [f"% {comment}", "\\begin{tabular}{l" + "c" * (len(tasks) + 3) + "}", "\\toprule", header + r" \\",
             "\\midrule"]
    for choice, (means, *numbers) in cells(table).items():
        row = [latex_cell(values(table[choice][t]), False) + (f" ({means[t][1]}/{means[t][2]})"
                                                               if means[t][1] < means[t][2] else "")
               if t in means else "-" for t in tasks]
        row += ["-" if number is None else f"{number:.1f}" for number in numbers]
        lines.append(" & ".join([latex_text_cell(choice), *row]) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def draw(found, table, name_of_task, metric, path):
    """Validator score against the metric's value, one point per run and epoch (found: candidates()), coloured by
    method as in the learning curves (results/curves.py), a marker per setting of a method, and each validator's
    pick on each seed circled; one legend for every mark. A panel per validator and task: one task's validators in a
    grid of at most three columns, several tasks' in a row per validator and a column per task. The metric is in
    percent, and so is a score that is an accuracy; the other scores keep their own scale, which their axis names
    (validators.AXES). Returns the figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.colors import to_hex, to_rgb
    from matplotlib.ticker import MaxNLocator
    from results.curves import colour, rows_and_columns
    from selection.validators import AXES
    names = [choice for choice in table if choice != ORACLE and not choice.startswith("final model")]
    tasks = ordered(found)
    if len(tasks) == 1:
        rows, columns = rows_and_columns(len(names), 3)  # one task: landscape, 6 validators in 2 x 3
        panels = {(name, tasks[0]): divmod(k, columns) for k, name in enumerate(names)}
    else:
        rows, columns = len(names), len(tasks)
        panels = {(name, task): (row, column) for row, name in enumerate(names) for column, task in enumerate(tasks)}
    settings = list(dict.fromkeys(run[0] for by_seed in found.values() for runs in by_seed.values() for run in runs))
    marks, seen = {}, {}  # (colour, marker) of each setting: its method's colour, a marker per setting of a method
    for label in settings:
        method = label.split()[0]  # (method_label: "dann trade_off=0.1", "cdan+e")
        seen[method] = seen.get(method, 0) + 1
        n = seen[method] - 1  # eight markers filled, then the eight hollow, then the colour's lighter shade
        shade = colour(method) if n < 16 else to_hex([(1 + v) / 2 for v in to_rgb(colour(method))])
        marks[label] = shade, "osD^vP*X"[n % 8], "none" if n % 16 >= 8 else shade
    width = max(6.4, 3.2 * columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width, 2.8 * rows + 0.9), squeeze=False, layout="constrained")
    for unused in range(len(panels), rows * columns):
        axes[unused // columns][unused % columns].set_axis_off()
    value = f"{name_of(metric)} (%)"
    for (name, task), (row, column) in panels.items():
        axis = axes[row][column]
        what, scale = AXES.get(name, ("score (own scale)", 1))
        for label in settings:
            runs = [run for runs in found[task].values() for run in runs if run[0] == label
                    and run[3].get(name) is not None]
            if runs:
                shade, marker, face = marks[label]
                axis.scatter([scale * run[3][name] for run in runs], [100 * run[2] for run in runs], s=16,
                             alpha=0.75, edgecolors=shade, facecolors=face, marker=marker, gid=f"points:{label}")
        picks = [(scale * found_run[3][name], 100 * found_run[2]) for seed, pick in table[name].get(task, {}).items()
                 for found_run in found[task][seed] if found_run[:3] == pick[:3]]
        if picks:
            axis.scatter(*zip(*picks), s=110, facecolors="none", edgecolors="black", linewidths=1.2, gid="picks")
        axis.set_title(f"{name_of_task(*task)}: {name}", fontsize=9)
        axis.set_xlabel(f"{name}: {what}", fontsize=8)
        axis.set_ylabel(value if column == 0 else "", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.xaxis.set_major_locator(MaxNLocator(4))  # (a score's long decimals would run into each other)
        axis.set_gid(f"{name_of_task(*task)}:{name}")
    key = [Line2D([], [], linestyle="", marker=marks[label][1], color=marks[label][0], markerfacecolor=marks[label][2],
                  label=label) for label in settings]
    key.append(Line2D([], [], linestyle="", marker="o", markersize=10, markerfacecolor="none",
                      markeredgecolor="black", label="its pick (one per seed)"))
    figure.legend(handles=key, loc="outside lower center", ncols=min(len(key), 4), fontsize=8, frameon=False)
    title = f"Each validator's score against the {value}: one point per run and evaluated epoch"
    figure.suptitle(textwrap.fill(title, int(11 * width)), fontsize=10)  # (about 11 characters an inch, at size 10)
    try:
        write_file(path, lambda f: figure.savefig(f, format="png", dpi=100))
    finally:
        plt.close(figure)
    return figure


def report(folder, by_label, default, name_of_task, title, stem):
    """Print the selection table of one table's rows and write it as selection_<stem>.md, .csv and .tex, each naming
    the runs it is of (tables.shows), and the figure validators_<stem>.png; returns the paths written ([] when there
    is nothing to choose from)."""
    found = candidates(folder, by_label)  # (the run files, read once)
    paths = [os.path.join(folder, f"selection_{stem}.{kind}") for kind in ("md", "csv", "tex", "png")]
    paths[-1] = os.path.join(folder, f"validators_{stem}.png")
    if all(len(runs) < 2 for by_seed in found.values() for runs in by_seed.values()):
        for stale in paths:  # an earlier report's, of other runs of this table: they would read as this one's
            if os.path.exists(stale):
                os.remove(stale)
        return []  # nothing to choose from: no scores, or one scored model per task and seed
    table, metric = picks(found, by_label, default), metric_of(by_label)
    of_runs, digest = shows(by_label, name_of_task)
    text = markdown(table, name_of_task, title, metric, unscored(found, by_label)) + f"\n\n{of_runs}"
    print(text)
    write_file(paths[0], lambda f: f.write((text.strip() + "\n").encode()))
    write_file(paths[1], lambda f: f.write(csv_text(table, name_of_task, metric, digest).encode()))
    write_file(paths[2], lambda f: f.write(latex_text(table, name_of_task, f"{title}; {of_runs}").encode()))
    draw(found, table, name_of_task, metric, paths[-1])
    return paths
