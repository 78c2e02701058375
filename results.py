"""The results file: one JSON row per finished run, appended under a lock, and the table papers print.

    append_row("out/results.jsonl", row)      # many processes may append at once (shards of one sweep)
    rows = read_rows("out/results.jsonl")     # a file that is not ours, or cut mid-line, is a UserError
    print(markdown_table(rows, tasks))        # mean ± std over seeds per task, and the average row
    print(methods_table({"dann": rows}, tasks))  # the papers' layout: methods as rows, tasks as columns
"""
import json
import os
import statistics

try:
    import fcntl
except ImportError:  # Windows has no flock: appends still go in whole lines, but run shards on Linux/macOS
    fcntl = None

from data_loader import UserError

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
