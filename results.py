"""The sweep's bookkeeping: which runs it makes, the results file (one JSON row per finished run, appended
under a lock), what makes two runs the same experiment, task names, and the tables papers print.

    plan_runs(c, "data/office31")             # [(source, target, seed), ...] of --tasks and --seeds
    append_row("out/results.jsonl", row)      # many processes may append at once (shards of one sweep)
    rows = read_rows("out/results.jsonl")     # a file that is not ours, or cut mid-line, is a UserError
    print(markdown_table(rows, tasks))        # mean ± std over seeds per task, and the average row
    print(methods_table({"dann": rows}, tasks))  # the papers' layout: methods as rows, tasks as columns
"""
import itertools
import json
import os
import statistics

try:
    import fcntl
except ImportError:  # Windows has no flock: appends still go in whole lines, but run shards on Linux/macOS
    fcntl = None

from data_loader import UserError, find_domains, resolve_domain

ROW_KEYS = {"dataset", "model", "weights", "source", "target", "seed", "accuracy", "correct", "total", "config", "date"}


def append_row(path, row):
    """One line, written whole under an exclusive lock, so rows of concurrent processes never interleave."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    line = json.dumps(row, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        if fcntl:
            fcntl.flock(f, fcntl.LOCK_EX)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_rows(path):
    """Every row of the results file ([] if there is none yet), refusing anything we did not write."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        if fcntl:  # shared: readers wait for a writer's line to be whole (on NFS appends are not atomic)
            fcntl.flock(f, fcntl.LOCK_SH)
        text = f.read()
    rows = []
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line) if line.endswith("\n") else None
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not ROW_KEYS <= row.keys():
            raise UserError(f"{path}, line {number}, is not a complete result row of office31.py (a file of "
                            "something else, or a row cut off mid-line). Nothing was changed: move the file away, "
                            "or delete or repair that line, and run again.")
        rows.append(row)
    return rows


def latest_per_seed(rows):
    """{(source, target): {seed: row}}, a later row (a re-run) replacing an earlier one."""
    tasks = {}
    for row in rows:
        tasks.setdefault((row["source"], row["target"]), {})[row["seed"]] = row
    return tasks


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def cell(values):
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def seed_averages(tasks):
    """{(source, target): {seed: row}} -> per seed, the mean accuracy over all tasks, for the seeds every task has."""
    common = sorted(set.intersection(*(set(by_seed) for by_seed in tasks.values()))) if tasks else []
    return [statistics.mean(by_seed[s]["accuracy"] for by_seed in tasks.values()) for s in common]


def markdown_table(rows, name_of_task):
    """Rows of one configuration as a Markdown table: each task's mean ± std (sample std over seeds) and
    the number of seeds; the average row is over the seeds that every task has (one average per seed)."""
    tasks = latest_per_seed(rows)
    lines = ["| task | accuracy (%) | seeds |", "|---|---|---|"]
    for (source, target), by_seed in tasks.items():
        lines.append(f"| {name_of_task(source, target)} | {cell([r['accuracy'] for r in by_seed.values()])} "
                     f"| {len(by_seed)} |")
    averages = seed_averages(tasks)
    if len(tasks) > 1 and averages:
        lines.append(f"| average | {cell(averages)} | {len(averages)} |")
    return "\n".join(lines)


# The column order of the papers' Office-31 tables (DAN, DANN, CDAN): A→W, D→W, W→D, A→D, D→A, W→A.
PAPER_ORDER = [("amazon", "webcam"), ("dslr", "webcam"), ("webcam", "dslr"), ("amazon", "dslr"), ("dslr", "amazon"),
               ("webcam", "amazon")]


def methods_table(rows_by_method, name_of_task, order=PAPER_ORDER):
    """The papers' layout: one row per method ({method: rows}), one column per task (in `order` where it lists
    them, the others after, as they come), then the average; each cell the mean ± sample std over seeds, "-" where
    a method has no run (the average needs every task, over the seeds they all have)."""
    methods = {method: latest_per_seed(rows) for method, rows in rows_by_method.items()}
    tasks = list(dict.fromkeys(task for tasks in methods.values() for task in tasks))
    tasks.sort(key=lambda task: order.index(task) if task in order else len(order))
    lines = ["| method | " + " | ".join(name_of_task(*task) for task in tasks) + " | average |",
             "|---" * (len(tasks) + 2) + "|"]
    for method, by_task in methods.items():
        cells = [cell([r["accuracy"] for r in by_task[task].values()]) if task in by_task else "-" for task in tasks]
        averages = seed_averages(by_task) if len(by_task) == len(tasks) else []
        lines.append(f"| {method} | {' | '.join(cells)} | {cell(averages) if averages else '-'} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# The sweep: which runs, what makes two runs the same experiment, task names, and the printed table

# The flags that define an experiment: runs agreeing on these (and on the dataset) are the same run.
PROTOCOL_FLAGS = ("model", "weights", "freeze", "method", "bottleneck", "trade_off", "entropy", "epochs",
                  "iters_per_epoch", "batch_size", "lr", "lr_mult", "momentum", "weight_decay", "resize_size",
                  "crop_size")


def short_names(domains):
    """Labels for task names: the shortest prefix at which all domain names differ, first letter upper-case:
    A, D, W for Office-31; Mnist, Mnistm, Svhn where initials (and shorter prefixes) collide."""
    longest = max(map(len, domains), default=1)
    length = next((k for k in range(1, longest + 1) if len({d[:k].lower() for d in domains}) == len(domains)),
                  longest)
    return {d: d[:length][0].upper() + d[1:length] for d in domains}


def task_name(source_name, target_name, labels):
    return f"{labels[source_name]}→{labels[target_name]}"


def domain_name(data_root, name):
    return os.path.basename(resolve_domain(data_root, name))


def plan_runs(c, data_root):
    """The sweep as (source, target, seed) tuples with domain folder names, before sharding."""
    if c["tasks"] == "all":
        found = find_domains(data_root)
        if len(found) < 2:
            raise UserError(f"--tasks=all needs at least two domains under '{data_root}'; found: "
                            f"{', '.join(found) or 'none'}.")
        pairs = list(itertools.permutations(found, 2))
    elif c["tasks"]:
        pairs = []
        for task in c["tasks"].split(","):
            names = task.strip().split("-")
            if len(names) != 2 or not all(names):
                raise UserError(f"--tasks: '{task}' is not a task; write SOURCE-TARGET pairs with domain names or "
                                "initials, separated by commas (e.g. A-W,W-A), or all.")
            pairs.append(tuple(domain_name(data_root, n) for n in names))
        pairs = list(dict.fromkeys(pairs))
    else:
        pairs = [(domain_name(data_root, c["source"]), domain_name(data_root, c["target"]))]
    return [(source, target, c["seed"] + k) for source, target in pairs for k in range(c["seeds"])]


def experiment(c):
    """What makes two runs the same experiment, besides the data itself: the dataset's folder name and the
    protocol flags."""
    return os.path.basename(os.path.normpath(c["data_root"])), {k: c[k] for k in PROTOCOL_FLAGS}


def same_experiment(row, c, data):
    """Whether a results row is of this experiment on this data. data: {domain: fingerprint} of the data at
    hand. A row of another copy of the dataset (a subset, a rebuilt tree) in a folder of the same name has
    other fingerprints, and a row written before fingerprints were recorded has none: neither matches."""
    used = {name: data.get(name) for name in (row["source"], row["target"])}
    return (row["dataset"], row["config"]) == experiment(c) and row.get("data") == used


def result_row(c, result, data):
    dataset, config = experiment(c)
    return {"dataset": dataset, "model": c["model"], "weights": c["weights"], "source": c["source"],
            "target": c["target"], "seed": c["seed"], "accuracy": result["accuracy"], "correct": result["correct"],
            "total": result["total"], "config": config, "data": {n: data[n] for n in (c["source"], c["target"])},
            "date": result["date"]}


def print_table(rows, configs, data, labels, results_path):
    """The table of the rows of these experiments ({method: config}) on this data: tasks as rows for one method,
    the papers' layout (methods as rows, tasks as columns) for several; and a note on rows of other copies."""
    mine = {method: [r for r in rows if same_experiment(r, config, data)] for method, config in configs.items()}
    c = next(iter(configs.values()))
    dataset = experiment(c)[0]
    if not any(mine.values()):
        raise UserError(f"{results_path} has no results for {c['model']} ({c['weights']}) with these flags on "
                        f"{dataset}; the flags {', '.join(PROTOCOL_FLAGS)}, the data_root folder name and the data "
                        "in it must match the sweep's.")
    print(f"\n{dataset}, {c['model']} ({c['weights']}), final model, mean ± std over seeds "
          f"(from {results_path}):\n")
    name = lambda source, target: task_name(source, target, labels)  # noqa: E731
    if len(configs) == 1:
        print(markdown_table(mine[c["method"]], name))
    else:
        print(methods_table(mine, name, PAPER_ORDER))
    keys = [experiment(config) for config in configs.values()]
    others = [r for r in rows if (r["dataset"], r["config"]) in keys and not any(
        same_experiment(r, config, data) for config in configs.values())]
    if others:
        print(f"\nnote: {len(others)} more rows with these flags come from another copy of '{dataset}' (other class "
              "names or image counts than the data in data_root, or written before those were recorded); they are "
              "not in this table.")
