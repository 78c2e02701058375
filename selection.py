"""The selection table: what each validator (validators.py) would have chosen from a sweep without the target's
labels, and what that choice is worth on them.

    table = selection(folder, {label: rows}, "dann trade_off=1.0")   # the rows of one table; the default setting
    print(markdown(table, name_of_task))

The candidates of a task and seed are every evaluated epoch of every setting of the table (methods x the grid's
values): their validator scores and target accuracies are in the run files (out_dir/<run>.json, "epochs"). Each
validator picks the candidate it scores highest; the cell is the target accuracy of that pick, the mean over seeds.
Beside them: the final model of the default setting (what a run of the flags' defaults reports), and the oracle,
which picks by the target's labels (the best any choice could do, which most published tables report). The last
column is a validator's average gap to the oracle, in points.
"""
import csv
import io
import os
import statistics

from curves import histories
from results import PAPER_ORDER, latest_per_seed, write_file

ORACLE = "oracle (target labels)"


def candidates(folder, by_label):
    """{(source, target): {seed: [(label, epoch, target accuracy, {validator: score})]}} of every evaluated epoch
    with validator scores, from the run files of these rows ({label: rows}); a run whose file is gone has none."""
    found = {}
    for label, rows in by_label.items():
        for task, by_seed in histories(folder, rows).items():
            for seed, epochs in by_seed.items():
                scored = [(label, e["epoch"], e["target_acc"], e["validators"]) for e in epochs
                          if e.get("target_acc") is not None and e.get("validators")]
                if scored:
                    found.setdefault(task, {}).setdefault(seed, []).extend(scored)
    return found


def selection(found, by_label, default):
    """{choice: {(source, target): {seed: (label, epoch, target accuracy)}}} for the default setting's final model
    (labelled "final model: <default>"), each validator that scored the candidates (found: candidates()), and the
    oracle; the tasks and seeds are those with candidates."""
    names = list(dict.fromkeys(name for by_seed in found.values() for runs in by_seed.values()
                               for *_, scores in runs for name in scores))
    table = {f"final model: {default}": {}}
    table.update({name: {} for name in names})
    table[ORACLE] = {}
    finals = latest_per_seed(by_label.get(default, []))
    for task, by_seed in found.items():
        for seed, runs in by_seed.items():
            if seed in finals.get(task, {}):
                row = finals[task][seed]
                table[f"final model: {default}"].setdefault(task, {})[seed] = (default, None, row["accuracy"])
            for name in names:
                scored = [run for run in runs if run[3].get(name) is not None]  # (None: outputs not finite)
                if scored:
                    label, epoch, accuracy, _ = max(scored, key=lambda run: run[3][name])  # (ties: the first)
                    table[name].setdefault(task, {})[seed] = (label, epoch, accuracy)
            label, epoch, accuracy, _ = max(runs, key=lambda run: run[2])
            table[ORACLE].setdefault(task, {})[seed] = (label, epoch, accuracy)
    return table


def cells(table):
    """{choice: ({task: mean accuracy over seeds, in percent}, average over tasks, gap to the oracle)}: the gap is
    the mean over tasks of the oracle's cell minus this choice's (the same seeds in both)."""
    oracle = {task: statistics.mean(100 * pick[2] for pick in by_seed.values())
              for task, by_seed in table[ORACLE].items()}
    out = {}
    for choice, by_task in table.items():
        means = {task: statistics.mean(100 * pick[2] for pick in by_seed.values()) for task, by_seed in by_task.items()}
        complete = means and means.keys() == oracle.keys()
        average = statistics.mean(means.values()) if complete else None
        gap = statistics.mean(oracle[task] - means[task] for task in means) if complete else None
        out[choice] = means, average, gap
    return out


def ordered(tasks):
    """The tasks once each, in the papers' column order where it lists them, the others after, as they come."""
    tasks = list(dict.fromkeys(tasks))
    return sorted(tasks, key=lambda task: PAPER_ORDER.index(task) if task in PAPER_ORDER else len(PAPER_ORDER))


def markdown(table, name_of_task, title):
    """The table as printed: one row per choice, one column per task, the average and the gap to the oracle."""
    numbers = cells(table)
    tasks = ordered(task for by_task in table.values() for task in by_task)
    header = " | ".join(name_of_task(*t) for t in tasks)
    lines = [f"\n{title}\n", f"| choice | {header} | average | gap to oracle |", "|---" * (len(tasks) + 3) + "|"]
    shown = lambda value: "-" if value is None else f"{value:.2f}"  # noqa: E731
    for choice, (means, average, gap) in numbers.items():
        lines.append(f"| {choice} | " + " | ".join(shown(means.get(t)) for t in tasks) +
                     f" | {shown(average)} | {shown(gap)} |")
    lines.append("\nEach cell: the target accuracy (%) of the model the choice picks among every evaluated epoch of "
                 "every setting, the mean over seeds; the oracle picks by the target's labels, the validators without "
                 "them (validators.py); gap: the oracle's average minus the row's, in points.")
    return "\n".join(lines)


def csv_text(table, name_of_task):
    """One line per choice, task and seed: what was picked (setting, epoch) and its target accuracy (%)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["choice", "task", "seed", "setting", "epoch", "target_acc"])
    for choice, by_task in table.items():
        for task, by_seed in by_task.items():
            for seed, (label, epoch, accuracy) in sorted(by_seed.items()):
                writer.writerow([choice, name_of_task(*task), seed, label, "final" if epoch is None else epoch,
                                 f"{100 * accuracy:.4f}"])
    return out.getvalue()


def draw(found, table, name_of_task, path):
    """Validator score against target accuracy, one point per run and epoch (found: candidates()): a panel per
    validator (rows) and task (columns), each validator's picks circled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [choice for choice in table if choice != ORACLE and not choice.startswith("final model")]
    tasks = ordered(found)
    figure, axes = plt.subplots(len(names), len(tasks), figsize=(3 * len(tasks), 2.5 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        for column, task in enumerate(tasks):
            axis = axes[row][column]
            runs = [run for runs in found[task].values() for run in runs if run[3].get(name) is not None]
            axis.scatter([run[3][name] for run in runs], [100 * run[2] for run in runs], s=12, alpha=0.6)
            picks = [(found_run[3][name], 100 * found_run[2]) for seed, pick in table[name].get(task, {}).items()
                     for found_run in found[task][seed] if found_run[:3] == pick]
            if picks:
                axis.scatter(*zip(*picks), s=80, facecolors="none", edgecolors="red")
            axis.set_title(f"{name_of_task(*task)}: {name}", fontsize=9)
            axis.set_xlabel(f"{name} score", fontsize=8)
            axis.set_ylabel("target accuracy (%)", fontsize=8)
            axis.set_gid(f"{name_of_task(*task)}:{name}")
    figure.tight_layout()
    write_file(path, lambda f: figure.savefig(f, format="png", dpi=80))
    plt.close(figure)
    return figure


def report(folder, by_label, default, name_of_task, title, stem):
    """Print the selection table of one table's rows and write it as selection_<stem>.md and .csv and the figure
    validators_<stem>.png; returns the paths written ([] when there is nothing to choose from)."""
    found = candidates(folder, by_label)  # (the run files, read once)
    if all(len(runs) < 2 for by_seed in found.values() for runs in by_seed.values()):
        return []  # nothing to choose from: no scores, or one scored model per task and seed
    table = selection(found, by_label, default)
    text = markdown(table, name_of_task, title)
    print(text)
    paths = [os.path.join(folder, f"selection_{stem}.{kind}") for kind in ("md", "csv")]
    write_file(paths[0], lambda f: f.write((text.strip() + "\n").encode()))
    write_file(paths[1], lambda f: f.write(csv_text(table, name_of_task).encode()))
    paths.append(os.path.join(folder, f"validators_{stem}.png"))
    draw(found, table, name_of_task, paths[-1])
    return paths
