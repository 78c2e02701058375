"""The sweep's table in the forms a paper needs, written next to the results file by --report=True and at the end of
every sweep:

    table.md    what was printed: the title (dataset, network, precision, flags not at their defaults), the table, notes
    table.csv   one line per method and task: mean, sample std and number of seeds, and every seed's accuracy
    table.tex   a booktabs table in the papers' layout (methods as rows, tasks as columns, the average last); with
                --bold_best=True the best mean of each column in bold

tables: [(precision, {method label: rows}, name_of_task)], one per printed table (--amp=auto may print one per
precision). Accuracies are in percent, as printed.
"""
import csv
import io
import os
import statistics

from results import latest_per_seed, tasks_in_order, write_file


def accuracies(by_seed):
    return [100 * by_seed[seed]["accuracy"] for seed in sorted(by_seed)]


def csv_text(tables):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["precision", "method", "task", "source", "target", "mean", "std", "seeds", "accuracies"])
    for precision, by_method, name_of_task in tables:
        for method, rows in by_method.items():
            by_task = latest_per_seed(rows)
            for task in (t for t in tasks_in_order(by_method) if t in by_task):
                values = accuracies(by_task[task])
                std = f"{statistics.stdev(values):.4f}" if len(values) > 1 else ""
                writer.writerow([precision, method, name_of_task(*task), *task, f"{statistics.mean(values):.4f}", std,
                                 len(values), " ".join(f"{v:.4f}" for v in values)])
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
    bold_best: the best mean of each column in bold, and every mean that prints the same (a tie at one decimal)."""
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
        lines = [f"% {precision}", "\\begin{tabular}{l" + "c" * len(columns) + "}", "\\toprule", header + r" \\",
                 "\\midrule"]
        for method, by_task in cells.items():
            row = [latex_cell(by_task[c], bold_best and shown[c][method] == best[c]) if c in by_task else "-"
                   for c in columns]
            lines.append(" & ".join([latex_text_cell(method), *row]) + r" \\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_tables(folder, tables, printed, bold_best, name):
    """table_<name>.md (the printed text), .csv and .tex into folder, each written whole or not at all; returns
    their paths."""
    written = []
    for kind, text in (("md", printed), ("csv", csv_text(tables)), ("tex", latex_text(tables, bold_best))):
        written.append(os.path.join(folder, f"table_{name}.{kind}"))
        write_file(written[-1], lambda f: f.write(text.encode()))
    return written
