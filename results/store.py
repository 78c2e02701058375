"""The results file: one JSON row per finished run, appended under a lock, and read back.

    append_row("out/results.jsonl", row)      # many processes may append at once (shards of one sweep)
    rows = read_rows("out/results.jsonl")     # a file that is not ours, or cut mid-line, is a UserError
    latest_per_seed(rows)                     # {task: {seed: its latest row}}
"""
import json
import os


from common.files import lock
from common.errors import UserError
from results.experiments import experiment


ROW_KEYS = {"dataset", "model", "weights", "source", "target", "seed", "accuracy", "correct", "total", "config", "date"}


def append_row(path, row):
    """One line, written whole under an exclusive lock, so rows of concurrent processes never interleave."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    line = json.dumps(row, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        lock(f)  # (Windows has no flock: appends still go in whole lines, but run shards on Linux/macOS)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_rows(path):
    """Every row of the results file ([] if there is none yet), refusing anything we did not write."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lock(f, shared=True)  # readers wait for a writer's line to be whole (on NFS appends are not atomic)
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
        if row.get("metric") == "mean class accuracy" and "mean_class_accuracy" not in row and row.get("per_class"):
            row["mean_class_accuracy"] = mean_class_accuracy(row["per_class"])  # (rows once left out a mean of 0.0)
        rows.append(row)
    return rows


def latest_per_seed(rows):
    """{(source, target): {seed: row}}, a later row (a re-run) replacing an earlier one."""
    tasks = {}
    for row in rows:
        tasks.setdefault((row["source"], row["target"]), {})[row["seed"]] = row
    return tasks


def per_class_accuracy(logits, labels, classes):
    """{class: the accuracy on its images, None where it has none} from every image's logits and label (evaluate's)."""
    predicted = logits.argmax(1)
    return {name: (predicted[labels == k] == k).float().mean().item() if (labels == k).any() else None
            for k, name in enumerate(classes)}


def mean_class_accuracy(per_class):
    """The mean of the per-class accuracies over the classes with images: VisDA-2017's metric."""
    values = [value for value in per_class.values() if value is not None]
    return sum(values) / len(values)


def result_row(c, result, data):
    dataset, config = experiment(c)
    return {"dataset": dataset, "model": c["model"], "weights": c["weights"], "source": c["source"],
            "target": c["target"], "seed": c["seed"], "accuracy": result["accuracy"], "correct": result["correct"],
            "total": result["total"], "config": config, "data": {n: data[n] for n in (c["source"], c["target"])},
            "machine": result["machine"], "run_file": result["run_file"], "date": result["date"],
            **{key: result[key] for key in ("per_class", "mean_class_accuracy", "metric")
               if result.get(key) is not None},  # (a mean class accuracy of 0.0 too)
            **({"processes": result["processes"]} if result.get("processes", 1) > 1 else {}),  # (torchrun)
            **({"grid": c["grid"]} if c.get("grid") else {}),
            **({"held_out": result["held_out"]} if result.get("held_out") else {})}
