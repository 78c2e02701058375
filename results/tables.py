"""The sweep's table in the forms a paper needs, written next to the results file by --report=True and at the end of
every sweep:

    table.md    what was printed: the title (dataset, network, precision, flags not at their defaults), the table,
                notes, and the line naming the runs it shows (shows())
    table.csv   one line per method and task: mean, sample std and number of seeds, every seed's accuracy, the seeds,
                and the hash of the runs the table shows
    table.tex   a booktabs table in the papers' layout (methods as rows, tasks as columns, the average last); with
                --bold_best=True the best mean of each column in bold; a comment line above says which runs it shows

tables: [(precision, {method label: rows}, name_of_task)], one per printed table (--amp=auto may print one per
precision). Accuracies are in percent, as printed.
"""
import csv
import hashlib
import io
import json
import os
import statistics

from common.files import write_file
from common.words import counted
from common.errors import UserError
from methods import METHODS
from results.experiments import EXPERIMENT_KEYS, experiment, method_label, same_experiment, select_rows, title
from results.metric import final_value, metric_of
from results.store import latest_per_seed
from results.tasks import PAPER_ORDER, task_name, tasks_in_order


def accuracies(by_seed):
    return [100 * by_seed[seed]["accuracy"] for seed in sorted(by_seed)]


def shows(by_label, name_of_task):
    """What identifies the rows a table shows (by_label: {label: rows}; the latest row of each task and seed, as its
    cells): (a line naming how many runs, their tasks and seeds, and a hash of those runs; the hash). The hash is of
    each run's setting, task, seed, date and run file: a seed more, a rerun or another run changes it, so a table's
    file, rewritten at the same path, says which runs made it."""
    runs = sorted([label, *task, seed, row.get("date"), row.get("run_file")]
                  for label, rows in by_label.items() for task, by_seed in latest_per_seed(rows).items()
                  for seed, row in by_seed.items())
    digest = hashlib.sha1(json.dumps(runs).encode()).hexdigest()[:8]
    tasks = [name_of_task(*task) for task in tasks_in_order(by_label)]
    seeds = sorted({run[3] for run in runs})
    return (f"shows {counted(len(runs), 'run')}: {'task' + 's' * (len(tasks) > 1)} {', '.join(tasks)}; "
            f"{'seed' + 's' * (len(seeds) > 1)} {', '.join(map(str, seeds))}; runs hash {digest}"), digest


def csv_text(tables):
    """One line per method and task (see the top); seed_list: the seeds of its accuracies, in their order;
    runs_hash: the hash of the runs its table shows (shows())."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["precision", "method", "task", "source", "target", "mean", "std", "seeds", "accuracies",
                     "seed_list", "runs_hash"])
    for precision, by_method, name_of_task in tables:
        digest = shows(by_method, name_of_task)[1]
        for method, rows in by_method.items():
            by_task = latest_per_seed(rows)
            for task in (t for t in tasks_in_order(by_method) if t in by_task):
                values = accuracies(by_task[task])
                std = f"{statistics.stdev(values):.4f}" if len(values) > 1 else ""
                writer.writerow([precision, method, name_of_task(*task), *task, f"{statistics.mean(values):.4f}", std,
                                 len(values), " ".join(f"{v:.4f}" for v in values),
                                 " ".join(map(str, sorted(by_task[task]))), digest])
    return out.getvalue()


def latex_cell(values, bold):
    text = f"{statistics.mean(values):.1f}" + (f" $\\pm$ {statistics.stdev(values):.1f}" if len(values) > 1 else "")
    return f"\\textbf{{{text}}}" if bold else text


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                 "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_text_cell(text):
    """A method or task name as LaTeX prints it: every special character escaped, the task's arrow as $\\to$."""
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text).replace("→", r"$\to$")


def latex_text(tables, bold_best=False):
    """One booktabs tabular per table: a method's cell is its mean ± sample std over seeds (one decimal, as the
    papers print), "-" where it has no run; the average is the mean of its task means, where it has every task.
    bold_best: the best mean of each column in bold, and every mean that prints the same (a tie at one decimal).
    A comment line above each names its precision and the runs it shows (shows())."""
    parts = []
    for precision, by_method, name_of_task in tables:
        tasks = tasks_in_order(by_method)
        cells = {method: {task: accuracies(by_seed) for task, by_seed in latest_per_seed(rows).items()}
                 for method, rows in by_method.items()}
        for by_task in cells.values():
            if len(by_task) == len(tasks):
                by_task["average"] = [statistics.mean(statistics.mean(v) for v in by_task.values())]
        columns = [*tasks, "average"]
        shown = {column: {m: f"{statistics.mean(c[column]):.1f}" for m, c in cells.items() if column in c}
                 for column in columns}  # the means as printed: ties and the best are decided on these
        best = {column: max(means.values(), key=float, default=None) for column, means in shown.items()}
        header = " & ".join(["Method", *(latex_text_cell(name_of_task(*t)) for t in tasks), "Avg"])
        lines = [f"% {precision}; {shows(by_method, name_of_task)[0]}", "\\begin{tabular}{l" + "c" * len(columns) + "}",
                 "\\toprule", header + r" \\", "\\midrule"]
        for method, by_task in cells.items():
            row = [latex_cell(by_task[c], bold_best and shown[c][method] == best[c]) if c in by_task else "-"
                   for c in columns]
            lines.append(" & ".join([latex_text_cell(method), *row]) + r" \\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_tables(folder, tables, printed, bold_best, name):
    """table_<name>.md (the printed text), .csv and .tex into folder, each written whole or not at all (replacing the
    files of the last report of this table); returns their paths."""
    written = []
    for kind, text in (("md", printed), ("csv", csv_text(tables)), ("tex", latex_text(tables, bold_best))):
        written.append(os.path.join(folder, f"table_{name}.{kind}"))
        write_file(written[-1], lambda f: f.write(text.encode()))
    return written


def cell(values, count=False):
    """Mean ± sample std of accuracies in percent; count: add the number of runs, "(3)"."""
    values = [100 * v for v in values]
    text = f"{statistics.mean(values):.2f}"
    if len(values) > 1:
        text += f" ± {statistics.stdev(values):.2f}"
    return f"{text} ({len(values)})" if count else text


def average(by_task, count=False):
    """The average cell of one method over its tasks ({task: {seed: row}}): the mean of the task means, so that
    it agrees with the cells shown, and ± the sample std over seeds of the per-seed mean over tasks, given only
    where every task has the same seeds (then both definitions give the same mean)."""
    means = [statistics.mean(100 * r["accuracy"] for r in by_seed.values()) for by_seed in by_task.values()]
    text = f"{statistics.mean(means):.2f}"
    seeds = {frozenset(by_seed) for by_seed in by_task.values()}
    if len(seeds) == 1:
        common = sorted(next(iter(seeds)))
        per_seed = [statistics.mean(100 * by_seed[s]["accuracy"] for by_seed in by_task.values()) for s in common]
        if len(per_seed) > 1:
            text += f" ± {statistics.stdev(per_seed):.2f}"
        if count:
            text += f" ({len(common)})"
    return text


AVERAGE_NOTE = ("average: the mean of the task cells of its row; ± the sample std over seeds of the per-seed mean "
                "over tasks, shown only where every task has the same seeds.")


def markdown_table(rows, name_of_task):
    """Rows of one configuration as a Markdown table: each task's mean ± std (sample std over seeds) and the
    number of seeds, then the average row (see average), whose seeds column is "-" where the tasks' seeds differ."""
    tasks = latest_per_seed(rows)
    lines = ["| task | accuracy (%) | seeds |", "|---|---|---|"]
    for (source, target), by_seed in tasks.items():
        lines.append(f"| {name_of_task(source, target)} | {cell([r['accuracy'] for r in by_seed.values()])} "
                     f"| {len(by_seed)} |")
    if len(tasks) > 1:
        seeds = {frozenset(by_seed) for by_seed in tasks.values()}
        lines.append(f"| average | {average(tasks)} | {len(seeds.pop()) if len(seeds) == 1 else '-'} |")
    return "\n".join(lines)


def methods_table(rows_by_method, name_of_task, order=PAPER_ORDER):
    """The papers' layout: one row per method ({label: rows}), one column per task (in `order` where it lists
    them, the others after, as they come), then the average (see average; "-" unless the method has every task).
    Each cell is the mean ± sample std over seeds, "-" where a method has no run; where the cells stand for
    different numbers of runs, every cell shows its count, "41.67 ± 14.43 (3)"."""
    methods = {method: latest_per_seed(rows) for method, rows in rows_by_method.items()}
    tasks = tasks_in_order(rows_by_method, order)
    count = len({len(by_seed) for by_task in methods.values() for by_seed in by_task.values()}) > 1
    lines = ["| method | " + " | ".join(name_of_task(*task) for task in tasks) + " | average |",
             "|---" * (len(tasks) + 2) + "|"]
    for method, by_task in methods.items():
        cells = [cell([r["accuracy"] for r in by_task[task].values()], count) if task in by_task else "-"
                 for task in tasks]
        shown = average(by_task, count) if len(by_task) == len(tasks) else "-"
        lines.append(f"| {method} | {' | '.join(cells)} | {shown} |")
    return "\n".join(lines)


def per_class_table(by_label, name_of_task):
    """Each method's and task's accuracy on every class, the mean over seeds, in percent, then their mean (the
    mean class accuracy): the table VisDA-2017's papers print."""
    classes = list(next(r for rows in by_label.values() for r in rows)["per_class"])
    lines = ["| method | task | " + " | ".join(classes) + " | mean |", "|---" * (len(classes) + 3) + "|"]
    for label, rows in by_label.items():
        for task, by_seed in latest_per_seed(rows).items():
            values = [[100 * r["per_class"][k] for r in by_seed.values() if r["per_class"][k] is not None]
                      for k in classes]  # (a class without target images has no accuracy: "-")
            means = [statistics.mean(v) for v in values if v]
            lines.append(f"| {label} | {name_of_task(*task)} | " + " | ".join(f"{statistics.mean(v):.1f}" if v else "-"
                                                                          for v in values)
                         + f" | {statistics.mean(means):.1f} |")
    return "\n".join(lines)


def stage_notes(configs):
    """A note for each kind of row that adapts a trained model with no source image (methods' `kind`): which rows
    are source-free, which are test-time, and what each starts from."""
    found = {}
    for config in configs.values():
        method = METHODS.get(config["method"])
        if method is not None and method.kind:
            found.setdefault(method.kind, {})[method_label(config)] = config.get("start") or method.starts_from
    notes = {"source-free": "trained on the target's images alone, with no source image and no target label",
             "test-time": "one online pass over the target's images, each predicted before the update it leads to: "
                          "the accuracy is of those predictions"}
    return [f"{kind}: {', '.join(f'{label} (from {start})' for label, start in rows.items())}: {notes[kind]}."
            for kind, rows in found.items()]


def print_table(rows, configs, data, labels, runs, results_path, plain):
    """Print the table of one sweep (see select_rows) on this data: tasks as rows for one method, the papers' layout
    (methods as rows, tasks as columns) for several. Its title names the dataset, network, precision and every
    flag that differs from the defaults' configs (plain: {label: config}); notes under it say what the average is
    and what was left out, and a last line which runs it shows (shows()). Returns (the printed text, {method label:
    rows}, name_of_task), for tables.py."""
    mine = select_rows(rows, configs, data, runs)
    c = next(iter(configs.values()))
    dataset = experiment(c)[0]
    if not any(mine.values()):
        raise UserError(f"{results_path} has no results for {c['model']} ({c['weights']}, {c['precision']}) with "
                        f"these flags on {dataset} for the planned tasks and seeds; {', '.join(EXPERIMENT_KEYS)}, "
                        "--tasks, --seed, --seeds, the data_root folder name and the data in it must match the "
                        "sweep's.")
    metric = metric_of(mine)  # (metric.py: the curves and selection too)
    if metric != "accuracy":  # VisDA-2017's: the table and its files show it in the accuracy's place
        mine = {m: [dict(r, accuracy=final_value(r, metric)) for r in rows] for m, rows in mine.items()}
    lines = [f"\n{title(configs, plain, f'{metric}, mean ± std over seeds')} (from {results_path}):\n"]
    name = lambda source, target: task_name(source, target, labels)  # noqa: E731
    order = {(s, t): k for k, (s, t, _) in enumerate(runs)}
    by_label = {method_label(configs[m]): rows for m, rows in mine.items()}  # (a grid's settings too)
    if len(configs) == 1:
        [only] = mine.values()
        lines.append(markdown_table(sorted(only, key=lambda r: order[(r["source"], r["target"])]), name))
    else:
        lines.append(methods_table(by_label, name, PAPER_ORDER))
    lines.append("\n" + AVERAGE_NOTE)
    lines += stage_notes(configs)
    if metric == "mean class accuracy":
        lines.append("\n" + per_class_table(by_label, name))
    keys = [experiment(config) for config in configs.values()]
    runs = set(runs)
    others = [r for r in rows if (r["dataset"], r["config"]) in keys and (r["source"], r["target"], r["seed"]) in runs
              and not any(same_experiment(r, config, data) for config in configs.values())]
    if others:
        one = len(others) == 1
        lines.append(f"note: {counted(len(others), 'more row')} with these flags {'comes' if one else 'come'} from "
                     f"another copy of '{dataset}' (other class names or image counts than the data in data_root, or "
                     f"written before those were recorded); {'it is' if one else 'they are'} not in this table.")
    older = sum((r["dataset"], {**r["config"], "precision": c["precision"]}) in keys
                for r in rows if "precision" not in r["config"])
    if older:
        one = older == 1
        lines.append(f"note: {counted(older, 'more row')} with these flags {'was' if one else 'were'} written before "
                     f"rows recorded their precision (bf16 or fp32); {'it is' if one else 'they are'} not in this "
                     "table, and a sweep runs them again.")
    lines.append("\n" + shows(by_label, name)[0])
    text = "\n".join(lines)
    print(text)
    return text, by_label, name
