"""The table as files: table_<name>.md, .csv and .tex, read back and compared with the rows they come from."""
import csv
import os
import re
import statistics

import pytest

import office31
from results import store
from results import tables
from conftest import make_tree, table_file
from test_sweep import rows_of, sweep

TASKS = {"A→W": ("amazon", "webcam"), "W→A": ("webcam", "amazon")}


def accuracies(rows, method, task):
    return sorted(100 * r["accuracy"] for r in rows if r["config"]["method"] == method
                  and (r["source"], r["target"]) == TASKS[task])


def bare_report(out, capsys, *flags):
    """What `office31.py --out_dir=out --report` prints (flags given narrow it), and that alone."""
    capsys.readouterr()
    office31.main([f"--out_dir={out}", "--report", *flags])
    return capsys.readouterr().out


def test_a_sweep_writes_its_table_as_markdown_csv_and_latex(tmp_path, capsys):
    root = make_tree(tmp_path / "office31", {"amazon": 2, "webcam": 2}, size=(20, 20))
    out = tmp_path / "out"
    capsys.readouterr()
    sweep(root, out, "--tasks=A-W,W-A", "--seeds=2", "--method=source_only,coral")
    printed = capsys.readouterr().out
    rows = rows_of(out)
    markdown = open(table_file(out, "md"), encoding="utf-8").read()
    assert markdown.strip() in printed
    assert markdown.startswith("office31, resnet18 (none), source_only / coral, fp32, final model")
    assert "| method | A→W | W→A | average |" in markdown
    lines = list(csv.DictReader(open(table_file(out, "csv"), encoding="utf-8")))
    assert [(line["method"], line["task"]) for line in lines] == \
        [("source_only", "A→W"), ("source_only", "W→A"), ("coral", "A→W"), ("coral", "W→A")]
    for line in lines:
        values = accuracies(rows, line["method"], line["task"])
        assert sorted(float(v) for v in line["accuracies"].split()) == [round(v, 4) for v in values]
        assert float(line["mean"]) == round(statistics.mean(values), 4)
        assert float(line["std"]) == round(statistics.stdev(values), 4)
        assert (line["seeds"], line["precision"]) == ("2", "fp32")
    latex = open(table_file(out, "tex"), encoding="utf-8").read()
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
    for kind in ("md", "csv", "tex"):
        os.remove(table_file(out, kind))
    sweep(root, out, *flags, "--report=True", "--bold_best=True")
    rows = rows_of(out)
    latex = open(table_file(out, "tex"), encoding="utf-8").read()
    assert os.path.exists(table_file(out, "md")) and os.path.exists(table_file(out, "csv"))
    body = [line for line in latex.splitlines() if line.startswith(("source\\_only &", "coral &"))]
    for column, task in enumerate(TASKS, 1):
        means = {m: statistics.mean(accuracies(rows, m, task)) for m in ("source_only", "coral")}
        best = max(means.values())
        for line, method in zip(body, ("source_only", "coral")):
            cell = line.split(" & ")[column]
            assert cell.startswith("\\textbf{") == (means[method] == best), (task, method, cell)
    assert len(re.findall(r"\\textbf", latex)) >= 3  # at least one per task column and the average's
    assert office31.FLAGS["bold_best"] is False


def rows(method_accuracies):
    """Result rows: {task: [accuracy of seed 0, seed 1, ...]} -> rows as the results file holds them."""
    return [{"source": source, "target": target, "seed": seed, "accuracy": accuracy}
            for (source, target), values in method_accuracies.items() for seed, accuracy in enumerate(values)]


A_W, W_A = ("amazon", "webcam"), ("webcam", "amazon")
LABELS = {"amazon": "A", "webcam": "W"}


def name_of_task(source, target):
    return f"{LABELS[source]}→{LABELS[target]}"


def test_csv_and_every_table_show_the_sample_std_of_the_seeds():
    by_method = {"dann": rows({A_W: [0.5, 0.7], W_A: [0.6, 0.6, 0.9]})}
    [a_w, w_a] = list(csv.DictReader(tables.csv_text([("fp32", by_method, name_of_task)]).splitlines()))
    assert (a_w["task"], a_w["mean"], a_w["std"]) == ("A→W", "60.0000", "14.1421")  # sample std of 50 and 70
    assert a_w["accuracies"] == "50.0000 70.0000"
    assert float(w_a["std"]) == round(statistics.stdev([60, 60, 90]), 4) == 17.3205 and w_a["seeds"] == "3"
    printed = tables.methods_table(by_method, name_of_task)
    assert "| dann | 60.00 ± 14.14 (2) | 70.00 ± 17.32 (3) |" in printed
    latex = tables.latex_text([("fp32", by_method, name_of_task)])
    assert "dann & 60.0 $\\pm$ 14.1 & 70.0 $\\pm$ 17.3 & 65.0 \\\\" in latex


def test_bold_best_bolds_the_strict_winner_and_every_tie_at_the_printed_precision_and_nothing_else():
    by_method = {"source_only": rows({A_W: [0.60], W_A: [0.7564]}), "dann": rows({A_W: [0.80], W_A: [0.7556]}),
                 "coral": rows({A_W: [0.10], W_A: [0.10]})}
    latex = tables.latex_text([("fp32", by_method, name_of_task)], bold_best=True)
    body = {line.split(" & ")[0]: line.rstrip(" \\").split(" & ")[1:] for line in latex.splitlines()
            if line.startswith(("source\\_only &", "dann &", "coral &"))}
    assert body == {"source\\_only": ["60.0", "\\textbf{75.6}", "67.8"],  # 75.64 and 75.56 print alike: a tie
                    "dann": ["\\textbf{80.0}", "\\textbf{75.6}", "\\textbf{77.8}"],  # the strict winner of A→W, avg
                    "coral": ["10.0", "10.0", "10.0"]}
    assert "\\textbf" not in tables.latex_text([("fp32", by_method, name_of_task)], bold_best=False)


def test_latex_escapes_every_text_cell():
    labels = {"mnist": "Mnist", "mnist_m": "Mnist_", "site_a&b": "Site_a&b", "site_c%": "Site_c%"}
    name = lambda s, t: f"{labels[s]}→{labels[t]}"  # noqa: E731
    by_method = {"cdan+e": [{"source": "mnist", "target": "mnist_m", "seed": 0, "accuracy": 0.5},
                            {"source": "site_a&b", "target": "site_c%", "seed": 0, "accuracy": 0.5}],
                 "my_method#2": [{"source": "mnist", "target": "mnist_m", "seed": 0, "accuracy": 0.5}]}
    latex = tables.latex_text([("fp32", by_method, name)])
    assert "Method & Mnist$\\to$Mnist\\_ & Site\\_a\\&b$\\to$Site\\_c\\% & Avg \\\\" in latex
    assert "\nmy\\_method\\#2 & 50.0 & - & - \\\\" in latex and "\ncdan+e & 50.0 & 50.0 & 50.0 \\\\" in latex
    comment, body = latex.split("\n", 1)  # (a comment line: LaTeX reads nothing of it)
    assert comment.startswith("% fp32; shows 3 runs: tasks Mnist→Mnist_, Site_a&b→Site_c%; seed 0; runs hash ")
    unescaped = re.sub(r"\\[&%_#$]", "", body)
    assert not re.search(r"[%#]", unescaped) and unescaped.count("&") == 3 * 3


def test_a_one_method_table_and_its_figure_name_the_method(tmp_path, capsys, monkeypatch):
    root = make_tree(tmp_path / "office31", {"amazon": 2, "webcam": 2}, size=(20, 20))
    out = tmp_path / "out"
    sweep(root, out, "--tasks=A-W,W-A", "--method=coral", "--amp=off")
    capsys.readouterr()
    from results import curves
    drawn = []
    monkeypatch.setattr(curves, "draw", lambda *args: drawn.append(args[3]))
    sweep(root, out, "--tasks=A-W,W-A", "--method=coral", "--amp=off", "--report=True")
    printed = capsys.readouterr().out
    [figure_title] = drawn
    assert figure_title.startswith("office31, resnet18 (none), coral, fp32, final model")
    markdown = open(table_file(out, "md"), encoding="utf-8").read()
    assert markdown.startswith("office31, resnet18 (none), coral, fp32, final model") and markdown.strip() in printed
    assert "| task | accuracy (%) | seeds |" in markdown
    assert {line["method"] for line in csv.DictReader(open(table_file(out, "csv"), encoding="utf-8"))} == {"coral"}
    assert "\ncoral & " in open(table_file(out, "tex"), encoding="utf-8").read()


def test_amp_auto_names_the_precision_it_chose_in_rows_titles_and_files(tmp_path, capsys, cpu_bf16_speedup):
    root = make_tree(tmp_path / "office31", {"amazon": 2, "webcam": 2}, size=(20, 20))
    out = tmp_path / "out"
    chosen = "bf16" if cpu_bf16_speedup >= 1.3 else "fp32"
    sweep(root, out, "--tasks=A-W", "--seeds=2", "--amp=auto")
    assert {r["config"]["precision"] for r in rows_of(out)} == {chosen}
    heading = f"office31, resnet18 (none), source_only, {chosen}, final model"
    assert open(table_file(out, "md"), encoding="utf-8").read().startswith(heading)
    assert {line["precision"] for line in csv.DictReader(open(table_file(out, "csv"), encoding="utf-8"))} == {chosen}
    capsys.readouterr()
    sweep(root, out, "--tasks=A-W", "--seeds=2", "--amp=auto", "--report=True")  # the report finds what auto chose
    assert heading in capsys.readouterr().out


def test_a_bare_report_lists_every_experiment_and_prints_each_table_and_flags_narrow_it(tmp_path, capsys):
    root = make_tree(tmp_path / "office31", {"amazon": 2, "webcam": 2}, size=(20, 20))
    out = tmp_path / "out"
    sweep(root, out, "--tasks=A-W,W-A", "--method=source_only,coral")
    sweep(root, out, "--tasks=A-W", "--seeds=2", "--epochs=2")  # another experiment: two epochs
    shown = bare_report(out, capsys)  # nothing else: no data_root, no sweep flags
    assert f"{out / 'results.jsonl'}: 6 runs of 3 experiments, which differ in method, trade_off, epochs:" in shown
    assert "  1. method=source_only  trade_off=0.0  epochs=1: 2 runs, A→W, W→A, seed 0" in shown
    assert "  2. method=coral  trade_off=1.0  epochs=1: 2 runs, A→W, W→A, seed 0" in shown
    assert "  3. method=source_only  trade_off=0.0  epochs=2: 2 runs, A→W, seeds 0, 1" in shown
    assert shown.count("\noffice31, resnet18 (none), ") == 2  # two tables: the methods side by side, the 2 epochs
    assert "office31, resnet18 (none), source_only / coral, fp32, final model" in shown
    wrote = [line for line in shown.splitlines() if line.startswith("wrote ")]
    files = [path for line in wrote for path in line[len("wrote "):].split(", ")]
    assert len(wrote) == 2 and len(set(files)) == 12 and all(os.path.exists(path) for path in files)
    assert sorted(os.path.basename(path).split("_")[0] for path in files) == \
        ["curves"] * 2 + ["selection"] * 3 + ["table"] * 6 + ["validators"]  # (two methods to choose from: one table)
    shown = bare_report(out, capsys, "--epochs", "2")  # a flag given narrows it down
    assert ": 2 runs of 1 experiment:" in shown and shown.count("\noffice31, resnet18 (none), ") == 1
    with pytest.raises(SystemExit, match="has no results for resnet50"):
        office31.main([f"--out_dir={out}", "--report", "--model=resnet50"])
    with pytest.raises(SystemExit, match="holds no results yet"):
        office31.main([f"--out_dir={tmp_path / 'empty'}", "--report"])


def test_a_report_reads_rows_of_every_older_shape_and_lists_a_source_val_they_leave_out_at_its_default(tmp_path,
                                                                                                      capsys):
    """Rows leave a later key (experiments.LATER_KEYS) out at its default: every reader fills it in alike."""
    root = make_tree(tmp_path / "office31", {"amazon": 5, "webcam": 2}, size=(20, 20))
    out = tmp_path / "out"
    sweep(root, out, "--tasks=A-W", "--source_val=0,0.2")  # a grid over source_val: its 0 leaves the key out
    grid_0, grid_02 = rows_of(out)
    assert "source_val" not in grid_0["config"] and grid_02["config"]["source_val"] == 0.2
    assert grid_0["grid"] == grid_02["grid"] == ["source_val"]
    set_alone = dict({k: v for k, v in grid_02.items() if k != "grid"}, seed=1)  # --source_val=0.2, no grid
    left_out = dict({k: v for k, v in grid_0.items() if k != "grid"}, seed=2)  # written before source_val, or at 0
    no_precision = dict(left_out, seed=3, config={k: v for k, v in left_out["config"].items() if k != "precision"})
    for row in (set_alone, left_out, no_precision):
        store.append_row(str(out / "results.jsonl"), row)
    shown = bare_report(out, capsys)
    assert f"{out / 'results.jsonl'}: 4 runs of 2 experiments, which differ in source_val:" in shown
    assert "  1. source_val=0.0: 2 runs, A→W, seeds 0, 2" in shown
    assert "  2. source_val=0.2: 2 runs, A→W, seeds 0, 1" in shown
    assert "(1 more row was written before rows recorded their precision: in no table.)" in shown
    assert shown.count("\noffice31, resnet18 (none), ") == 1  # the grid's settings side by side
    assert re.search(r"^\| source_only source_val=0\.0 \| [\d.]+ ± [\d.]+ \|", shown, re.M)
    assert re.search(r"^\| source_only source_val=0\.2 \| [\d.]+ ± [\d.]+ \|", shown, re.M)
    for asked, listed in (("0", "2 runs of 1 experiment:"), ("0.2", "2 runs of 1 experiment:"),
                          ("0,0.2", "4 runs of 2 experiments, which differ in source_val:")):
        office31.main([f"--out_dir={out}", "--report", f"--source_val={asked}"])
        assert listed in capsys.readouterr().out, asked


def test_a_bare_report_keeps_apart_experiments_that_differ_only_in_the_dataset(tmp_path, capsys):
    out = tmp_path / "out"
    for name in ("office31", "mine"):  # the same flags on two data_root folders of different names
        root = make_tree(tmp_path / name, {"amazon": 2, "webcam": 2}, size=(20, 20))
        sweep(root, out)  # (a single run: no table of its own)
    shown = bare_report(out, capsys)
    assert f"{out / 'results.jsonl'}: 2 runs of 2 experiments, which differ in dataset:" in shown
    assert "  1. dataset=office31: 1 run, A→W, seed 0" in shown and "  2. dataset=mine: 1 run, A→W, seed 0" in shown
    assert shown.count("\noffice31, resnet18 (none), source_only, fp32, final model") == 1
    assert shown.count("\nmine, resnet18 (none), source_only, fp32, final model") == 1
    assert len([line for line in shown.splitlines() if line.startswith("wrote ")]) == 2
    sweep(tmp_path / "mine", out, "--method=coral")  # a method the other dataset has not: its own table
    shown = bare_report(out, capsys)
    assert ": 3 runs of 3 experiments, which differ in dataset, method, trade_off:" in shown
    assert shown.count("\noffice31, resnet18 (none), source_only, fp32, final model") == 1
    assert shown.count("\nmine, resnet18 (none), source_only / coral, fp32, final model") == 1
    assert shown.count("\noffice31, resnet18 (none), ") + shown.count("\nmine, resnet18 (none), ") == 2


def test_a_tables_files_keep_one_path_per_experiment_rewritten_in_place_and_name_their_runs(tmp_path, capsys):
    """Two experiments in one out_dir keep two sets of files; a seed more rewrites one set where it is, and each
    text file says which runs it shows (their count, task, seeds, a hash of the runs)."""
    root = make_tree(tmp_path / "office31", {"amazon": 2, "webcam": 2}, size=(20, 20))
    out = tmp_path / "out"

    def wrote(*flags):
        capsys.readouterr()
        sweep(root, out, "--tasks=A-W", *flags)
        [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
        return line[len("wrote "):].split(", ")

    def files():
        return sorted(p.name for p in out.iterdir() if p.name.startswith(("table_", "curves_")))
    one = wrote()
    two = wrote("--epochs=2")  # another experiment: its own files
    assert len(files()) == 8 and set(one).isdisjoint(two) and sorted(map(os.path.basename, one + two)) == files()
    md, csv_path, tex = one[:3]
    before = open(md, encoding="utf-8").read()
    assert wrote("--seeds=2") == one and len(files()) == 8  # a seed more: the same paths, rewritten
    assert "shows 1 run: task A→W; seed 0; runs hash " in before
    markdown = open(md, encoding="utf-8").read()
    [shown] = [line for line in markdown.splitlines() if line.startswith("shows ")]
    assert shown.startswith("shows 2 runs: task A→W; seeds 0, 1; runs hash ") and shown not in before
    assert open(tex, encoding="utf-8").readline() == f"% fp32; {shown}\n"
    [line] = list(csv.DictReader(open(csv_path, encoding="utf-8")))
    assert (line["seeds"], line["seed_list"], line["runs_hash"]) == ("2", "0 1", shown.rsplit(" ", 1)[1])
    assert wrote("--seeds=2", "--report=True") == one  # the report of the same table: the same files
    wide = wrote("--tasks=A-W,W-A")  # another table (two tasks): files of its own, which a narrower one never takes
    assert set(wide).isdisjoint(one) and wrote("--tasks=A-W", "--report=True") == one
    assert "tasks A→W, W→A" in open(wide[0], encoding="utf-8").read()


def test_another_copy_of_a_dataset_in_a_folder_of_the_same_name_gets_files_of_its_own(tmp_path, capsys):
    """Two trees named office31 with other images are two tables, as their rows are never merged."""
    out = tmp_path / "out"
    written = []
    for copy, count in (("a", 2), ("b", 3)):
        root = make_tree(tmp_path / copy / "office31", {"amazon": count, "webcam": 2}, size=(20, 20))
        capsys.readouterr()
        sweep(root, out, "--tasks=A-W")
        [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
        written.append(set(line[len("wrote "):].split(", ")))
    assert written[0].isdisjoint(written[1]) and all(os.path.exists(path) for path in written[0] | written[1])


def test_a_reports_counts_are_runs_not_rows_in_words_that_agree(tmp_path, capsys):
    """--rerun=True writes a second row of the same run: the report counts one run (the table shows the latest)."""
    root = make_tree(tmp_path / "office31", {"amazon": 2, "webcam": 2}, size=(20, 20))
    out = tmp_path / "out"
    sweep(root, out, "--tasks=A-W")
    sweep(root, out, "--tasks=A-W", "--rerun=True")
    assert len(rows_of(out)) == 2
    shown = bare_report(out, capsys)
    assert f"{out / 'results.jsonl'}: 1 run of 1 experiment:" in shown
    assert "  1. office31 resnet18 source_only: 1 run, A→W, seed 0" in shown
    assert "shows 1 run: task A→W; seed 0; runs hash " in shown


def test_a_report_of_an_empty_out_dir_names_the_results_one_folder_down(tmp_path):
    """The demo writes to out/demo: --out_dir=out --report says where the results are."""
    for name in ("demo", "other"):
        os.makedirs(tmp_path / "out" / name)
    (tmp_path / "out" / "demo" / "results.jsonl").write_text("{}\n")
    (tmp_path / "out" / "other" / "results.jsonl").write_text("")  # empty: not named
    with pytest.raises(SystemExit) as stop:
        office31.main([f"--out_dir={tmp_path / 'out'}", "--report"])
    demo = tmp_path / "out" / "demo"
    assert str(stop.value.code).endswith(f"holds no results yet: a run or a sweep with --out_dir={tmp_path / 'out'} "
                                         f"writes them there. Found: {demo / 'results.jsonl'}; run with "
                                         f"--out_dir={demo}.")
