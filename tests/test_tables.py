"""The table as files: table.md, table.csv and table.tex, read back and compared with the rows they come from."""
import csv
import re
import statistics

import office31
from conftest import make_tree
from test_sweep import rows_of, sweep

TASKS = {"A→W": ("amazon", "webcam"), "W→A": ("webcam", "amazon")}


def accuracies(rows, method, task):
    return sorted(100 * r["accuracy"] for r in rows if r["config"]["method"] == method
                  and (r["source"], r["target"]) == TASKS[task])


def test_a_sweep_writes_its_table_as_markdown_csv_and_latex(tmp_path, capsys):
    root = make_tree(tmp_path / "office31", {"amazon": 2, "webcam": 2}, size=(20, 20))
    out = tmp_path / "out"
    capsys.readouterr()
    sweep(root, out, "--tasks=A-W,W-A", "--seeds=2", "--method=source_only,coral")
    printed = capsys.readouterr().out
    rows = rows_of(out)
    markdown = (out / "table.md").read_text(encoding="utf-8")
    assert markdown.strip() in printed and markdown.startswith("office31, resnet18 (none), fp32, final model")
    assert "| method | A→W | W→A | average |" in markdown
    lines = list(csv.DictReader((out / "table.csv").open(encoding="utf-8")))
    assert [(line["method"], line["task"]) for line in lines] == \
        [("source_only", "A→W"), ("source_only", "W→A"), ("coral", "A→W"), ("coral", "W→A")]
    for line in lines:
        values = accuracies(rows, line["method"], line["task"])
        assert sorted(float(v) for v in line["accuracies"].split()) == [round(v, 4) for v in values]
        assert float(line["mean"]) == round(statistics.mean(values), 4)
        assert float(line["std"]) == round(statistics.stdev(values), 4)
        assert (line["seeds"], line["precision"]) == ("2", "fp32")
    latex = (out / "table.tex").read_text(encoding="utf-8")
    assert "\\toprule" in latex and "Method & A$\\to$W & W$\\to$A & Avg \\\\" in latex and "\\textbf" not in latex
    for method, label in (("source_only", "source\\_only"), ("coral", "coral")):
        [line] = [line for line in latex.splitlines() if line.startswith(label + " & ")]
        means = [statistics.mean(accuracies(rows, method, task)) for task in TASKS]
        stds = [statistics.stdev(accuracies(rows, method, task)) for task in TASKS]
        cells = [f"{m:.1f} $\\pm$ {s:.1f}" for m, s in zip(means, stds)] + [f"{statistics.mean(means):.1f}"]
        assert line == " & ".join([label, *cells]) + " \\\\"


def test_report_rewrites_the_files_and_bolds_the_best_mean_of_each_column_when_asked(tmp_path):
    root = make_tree(tmp_path / "office31", {"amazon": 2, "webcam": 2}, size=(20, 20))
    out = tmp_path / "out"
    flags = ("--tasks=A-W,W-A", "--seeds=2", "--method=source_only,coral")
    sweep(root, out, *flags)
    for name in ("table.md", "table.csv", "table.tex"):
        (out / name).unlink()
    sweep(root, out, *flags, "--report=True", "--bold_best=True")
    rows = rows_of(out)
    latex = (out / "table.tex").read_text(encoding="utf-8")
    assert (out / "table.md").exists() and (out / "table.csv").exists()
    body = [line for line in latex.splitlines() if line.startswith(("source\\_only &", "coral &"))]
    for column, task in enumerate(TASKS, 1):
        means = {m: statistics.mean(accuracies(rows, m, task)) for m in ("source_only", "coral")}
        best = max(means.values())
        for line, method in zip(body, ("source_only", "coral")):
            cell = line.split(" & ")[column]
            assert cell.startswith("\\textbf{") == (means[method] == best), (task, method, cell)
    assert len(re.findall(r"\\textbf", latex)) >= 3  # at least one per task column and the average's
    assert office31.FLAGS["bold_best"] is False
