"""The README's and docs' user paths walked in order in one out_dir, as a user would: a protocol run (its weights
saved), a methods sweep, the validator recipe (--source_val), a grid, --report bare and narrowed, --analyze; once on
an Office-31-shaped tree, once on an imbalanced VisDA-shaped tree with split lists (scored by its mean class
accuracy). Every number the tables and selection tables print is recomputed here from results.jsonl and the run
files, by this file's own code: nothing of the product's table code is called."""
import json
import os
import re
import statistics

import pytest

import office31
from conftest import make_tree

FLAGS = ["--model=resnet18", "--weights=none", "--resize_size=24", "--crop_size=20", "--epochs=2",
         "--iters_per_epoch=2", "--batch_size=6", "--num_workers=0", "--device=cpu", "--amp=off"]
VISDA_CLASSES = ["aeroplane", "bicycle", "bus", "car"]
SHOWN = 0.0051  # a printed number (2 decimals) against its recomputation


def office31_tree(tmp_path):
    return make_tree(tmp_path / "office31", {"amazon": 6, "webcam": 4}, size=(28, 28)), "office31", ("amazon",
                                                                                                      "webcam")


def visda_tree(tmp_path):
    """synthetic and real, the real photos imbalanced (aeroplane 6, bicycle 4, bus 2, car 2), each domain with
    DomainNet-style split lists: of each class's images, the first half trains and the rest is tested on."""
    root = make_tree(tmp_path / "visda2017", {"synthetic": 6, "real": 6}, classes=VISDA_CLASSES, layout="flat",
                     size=(28, 28))
    for name, keep in {"bicycle": 4, "bus": 2, "car": 2}.items():
        for file in sorted(os.listdir(os.path.join(root, "real", name)))[keep:]:
            os.remove(os.path.join(root, "real", name, file))
    for domain in ("synthetic", "real"):
        lists = {"train": [], "test": []}
        for k, name in enumerate(VISDA_CLASSES):
            files = sorted(os.listdir(os.path.join(root, domain, name)))
            for j, file in enumerate(files):
                lists["train" if j < len(files) // 2 else "test"].append(f"{domain}/{name}/{file} {k}")
        for split, lines in lists.items():
            with open(os.path.join(root, f"{domain}_{split}.txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
    return root, "visda2017", ("synthetic", "real")


# ---------------------------------------------------------------------------------------------------------------
# this file's own arithmetic


def final(row):
    """A row's number by its dataset's metric, in percent."""
    return 100 * (row["mean_class_accuracy"] if row.get("metric") == "mean class accuracy" else row["accuracy"])


def mean_std(values):
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def numbers(cell):
    """The numbers of a printed cell: "50.00 ± 11.79" -> [50.0, 11.79]; "61.11 ± 15.71 (2)" -> [61.11, 15.71];
    "37.50 (1/2)" -> [37.5]; "-" -> []."""
    cell = re.sub(r"\(\d+(/\d+)?\)", "", cell)
    return [float(x) for x in re.findall(r"-?\d+\.\d+", cell)]


def table_lines(block, first_column):
    """{first cell: [the other cells]} of the Markdown table in block whose header starts with first_column."""
    lines = block.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    found = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        found[cells[0]] = cells[1:]
    return lines[start], found


def check_table(block, by_label, name):
    """The sweep's table: each task's mean ± std over seeds, and the average (the mean of the task means, ± the
    std over seeds of the per-seed mean over tasks); tasks as rows for one setting, as columns for several."""
    tasks = {label: {} for label in by_label}
    for label, rows in by_label.items():
        for r in rows:
            tasks[label].setdefault((r["source"], r["target"]), {})[r["seed"]] = final(r)
    if len(by_label) == 1:
        [(label, by_task)] = tasks.items()
        _, printed = table_lines(block, "task")
        for task, by_seed in by_task.items():
            mean, std = mean_std(list(by_seed.values()))
            cell, seeds = printed[name(task)]
            assert numbers(cell) == pytest.approx([mean] + ([std] if std is not None else []), abs=SHOWN), (label,
                                                                                                          task)
            assert int(seeds) == len(by_seed)
        shown = {k for k in printed if k != "average"}
        assert shown == {name(task) for task in by_task}
        return
    header, printed = table_lines(block, "method")
    columns = [c.strip() for c in header.strip("|").split("|")][1:]
    assert set(printed) == set(by_label)
    for label, by_task in tasks.items():
        cells = dict(zip(columns, printed[label]))
        for task, by_seed in by_task.items():
            mean, std = mean_std(list(by_seed.values()))
            assert numbers(cells[name(task)]) == pytest.approx([mean] + ([std] if std is not None else []),
                                                               abs=SHOWN), (label, task)
        means = [statistics.mean(by_seed.values()) for by_seed in by_task.values()]
        assert numbers(cells["average"])[0] == pytest.approx(statistics.mean(means), abs=SHOWN), label


def check_per_class(block, by_label, name):
    """VisDA-2017's per-class table: each class's accuracy, the mean over seeds, and their mean."""
    _, printed = table_lines(block, "method")  # (the first "| method |" table is the main one where several)
    lines = [line for line in block.splitlines() if line.startswith("| ") and "→" in line]
    for label, rows in by_label.items():
        for task in {(r["source"], r["target"]) for r in rows}:
            of_task = [r for r in rows if (r["source"], r["target"]) == task]
            per_class = [statistics.mean(100 * r["per_class"][k] for r in of_task) for k in VISDA_CLASSES]
            expected = f"| {label} | {name(task)} | " + " | ".join(f"{v:.1f}" for v in per_class)
            assert any(line.startswith(expected) for line in lines), expected


def check_selection(block, out, by_label, default, visda):
    """The selection table: per task and seed, every evaluated epoch with scores of every setting is a candidate;
    a validator picks its highest score among those it scored, the oracle the highest value; the final model is
    the default setting's, where its run has scores. Cells: the mean ± sample std over the seeds picked on (no ±
    for one); average over tasks;
    its oracle: the best among what the row picked from, on the same tasks and seeds; gap: its oracle minus the
    average."""
    key = "target_class_acc" if visda else "target_acc"
    found = {}
    for label, rows in by_label.items():
        for r in rows:
            with open(os.path.join(out, r["run_file"]), encoding="utf-8") as f:
                for e in json.load(f)["epochs"]:
                    if e.get(key) is not None and e.get("validators"):
                        found.setdefault((r["source"], r["target"]), {}).setdefault(r["seed"], []).append(
                            (label, 100 * e[key], e["validators"]))
    names = {n for by_seed in found.values() for runs in by_seed.values() for run in runs for n in run[2]}
    picks = {name: {} for name in [*names, "oracle (target labels)", f"final model: {default}"]}
    finals = {((r["source"], r["target"]), r["seed"]): final(r) for r in by_label[default]}
    for task, by_seed in found.items():
        for seed, runs in by_seed.items():
            best = max(run[1] for run in runs)
            picks["oracle (target labels)"].setdefault(task, []).append((best, best))
            if any(run[0] == default for run in runs):
                picks[f"final model: {default}"].setdefault(task, []).append((finals[task, seed], best))
            for name in names:
                scored = [run for run in runs if run[2].get(name) is not None]
                if scored:
                    pick = max(scored, key=lambda run: run[2][name])
                    picks[name].setdefault(task, []).append((pick[1], max(run[1] for run in scored)))
    header, printed = table_lines(block, "choice")
    columns = [c.strip() for c in header.strip("|").split("|")][1:]
    assert set(printed) == set(picks)
    for choice, by_task in picks.items():
        cells = dict(zip(columns, printed[choice]))
        means = {task: statistics.mean(value for value, _ in chosen) for task, chosen in by_task.items()}
        for task, chosen in by_task.items():  # the mean ± sample std over the seeds it picked on (no ± for one)
            mean, std = mean_std([value for value, _ in chosen])
            assert numbers(cells[task_names(block, task)]) == pytest.approx([mean] + ([std] if std is not None else []),
                                                                           abs=SHOWN), (choice, task)
        if len(means) == len(found):
            average = statistics.mean(means.values())
            oracle = statistics.mean(statistics.mean(best for _, best in chosen) for chosen in by_task.values())
            shown = [numbers(cells[c])[0] for c in ("average", "its oracle", "gap")]
            assert shown == pytest.approx([average, oracle, oracle - average], abs=2 * SHOWN), choice
            assert shown[2] >= 0  # nothing beats the best of what it chose from
    return picks


def task_names(block, task):
    """A task's column name in a table: the initials, as the first table of the block names it."""
    return f"{task[0][0].upper()}→{task[1][0].upper()}"


def listing(printed):
    """(runs, experiments) of a report's first line."""
    runs, experiments = re.search(r"results\.jsonl: (\d+) runs of (\d+) experiment", printed).groups()
    return int(runs), int(experiments)


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("make", [office31_tree, visda_tree], ids=["office31", "visda2017-imbalanced-lists"])
def test_the_user_paths_in_one_out_dir_print_numbers_recomputed_from_the_run_files(tmp_path, capsys, make):
    root, dataset, (first, second) = make(tmp_path)
    out = tmp_path / "out"
    visda = dataset == "visda2017"
    base = [f"--dataset={dataset}", f"--data_root={root}", f"--out_dir={out}", *FLAGS]
    results = out / "results.jsonl"
    name = task_names  # (initials: A→W, S→R)

    def run(*flags):
        capsys.readouterr()
        done = office31.main([*base, *flags])
        return done, capsys.readouterr().out

    def rows(**want):
        """The results file's rows whose config has these values (a flag left out of a config: its default)."""
        with open(results, encoding="utf-8") as f:
            found = [json.loads(line) for line in f]
        return [r for r in found if all(r["config"].get(k, office31.FLAGS.get(k)) == v for k, v in want.items())]

    def blocks(printed):
        """Each table of a sweep's end or a report, with its selection table: the text up to its "wrote" line."""
        return printed.split("\nwrote ")[:-1]

    # 1. the protocol run, its weights kept for --analyze
    [protocol], printed = run("--save_model=True")
    assert printed.splitlines()[-1] == (f"{name(None, (first, second))} accuracy: {100 * protocol['accuracy']:.2f}% "
                                        f"({protocol['correct']}/{protocol['total']})")
    # 2. a methods sweep: both tasks, two seeds, source only and DANN (the protocol run is one of its runs)
    done, printed = run("--tasks=all", "--seeds=2", "--method=source_only,dann")
    assert len(done) == 7 and "skipping source_only" in printed
    plain = {"source_only": rows(method="source_only", source_val=0.0, lr=0.001),
             "dann": rows(method="dann", source_val=0.0)}
    assert [len(r) for r in plain.values()] == [4, 4]
    [block] = blocks(printed)
    check_table(block, plain, lambda task: name(None, task))
    check_selection(block, out, plain, "source_only", visda)
    if visda:
        check_per_class(block, plain, lambda task: name(None, task))
    # 3. the validator recipe: a grid of trade-offs with a held-out source part
    done, printed = run("--method=dann", "--trade_off=0.1,1", "--source_val=0.4", "--tasks=all")
    assert len(done) == 4
    recipe = {f"dann trade_off={t}": rows(method="dann", source_val=0.4, trade_off=t) for t in (0.1, 1.0)}
    [block] = blocks(printed)
    check_table(block, recipe, lambda task: name(None, task))
    picks = check_selection(block, out, recipe, "dann trade_off=1.0", visda)
    assert {"source_val_acc", "dev"} <= set(picks)  # the held-out validators scored here
    # 4. a grid of learning rates: the planned run of the default lr is the protocol run, skipped
    done, printed = run("--lr=0.001,0.01")
    assert len(done) == 1
    task = (first, second)
    grid = {f"source_only lr={lr}": [r for r in rows(method="source_only", source_val=0.0, lr=lr)
                                     if (r["source"], r["target"], r["seed"]) == (*task, 0)] for lr in (0.001, 0.01)}
    [block] = blocks(printed)
    check_table(block, grid, lambda task: name(None, task))
    check_selection(block, out, grid, "source_only lr=0.001", visda)
    # 5. --report, bare: every experiment listed, every table again
    _, printed = run("--report=True")
    with open(results, encoding="utf-8") as f:
        assert listing(printed) == (sum(1 for _ in f), 5)
    tables = blocks(printed)
    assert len(tables) == 3
    check_table(tables[0], plain, lambda task: name(None, task))
    check_selection(tables[0], out, plain, "source_only", visda)
    check_table(tables[1], recipe, lambda task: name(None, task))
    check_selection(tables[1], out, recipe, "dann trade_off=1.0", visda)
    fast = {"source_only lr=0.01": rows(lr=0.01)}
    check_table(tables[2], fast, lambda task: name(None, task))
    check_selection(tables[2], out, fast, "source_only lr=0.01", visda)
    # 6. --report narrowed to DANN: its two experiments of the held-out part and the plain one
    _, printed = run("--report=True", "--method=dann")
    assert listing(printed) == (8, 3)
    tables = blocks(printed)
    dann = {"dann": plain["dann"]}
    check_table(tables[0], dann, lambda task: name(None, task))
    check_selection(tables[0], out, dann, "dann", visda)
    check_table(tables[1], recipe, lambda task: name(None, task))
    # 7. --analyze the protocol run
    _, printed = run("--analyze=True")
    assert re.search(r"proxy A-distance: \d\.\d{3} ", printed)
    assert any(n.startswith("tsne_") and n.endswith(".png") for n in os.listdir(out))
