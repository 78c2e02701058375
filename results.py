"""The results file: one JSON row per finished run, appended under a lock, and the table papers print.

    append_row("out/results.jsonl", row)      # many processes may append at once (shards of one sweep)
    rows = read_rows("out/results.jsonl")     # a file that is not ours, or cut mid-line, is a UserError
    print(markdown_table(rows, tasks))        # mean ± std over seeds per task, and the average row
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


def markdown_table(rows, name_of_task):
    """Rows of one configuration as a Markdown table: each task's mean ± std (sample std over seeds) and
    the number of seeds; the average row is over the seeds that every task has (one average per seed)."""
    tasks = latest_per_seed(rows)
    lines = ["| task | accuracy (%) | seeds |", "|---|---|---|"]
    for (source, target), by_seed in tasks.items():
        lines.append(f"| {name_of_task(source, target)} | {cell([r['accuracy'] for r in by_seed.values()])} "
                     f"| {len(by_seed)} |")
    common = sorted(set.intersection(*(set(by_seed) for by_seed in tasks.values()))) if tasks else []
    if len(tasks) > 1 and common:
        averages = [statistics.mean(by_seed[s]["accuracy"] for by_seed in tasks.values()) for s in common]
        lines.append(f"| average | {cell(averages)} | {len(common)} |")
    return "\n".join(lines)
