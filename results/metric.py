"""The number a dataset's results are scored by, decided here once: the accuracy over the target's images, or, for
VisDA-2017 (download.DATASETS, "metric"), the mean of its per-class accuracies. A row records its metric ("metric";
none before metrics were recorded: accuracy), both numbers of its final model ("accuracy", "mean_class_accuracy"),
and each evaluated epoch both of its own ("target_acc", "target_class_acc"); the tables, the learning curves and the
selection table read the one the metric names, and label it so:

    scored = metric_of(by_label)             # {label: rows} -> "accuracy" or "mean class accuracy"
    final_value(row, scored)                 # the row's final model, by that metric (0 to 1)
    epoch_value(epoch, scored)               # an evaluated epoch's (None where it has none)
    name_of(scored)                          # "target accuracy" or "target mean class accuracy"

Nothing here imports the repo's other files: tables.py, curves.py and selection/selection_table.py all import it.
"""

# metric: (the row's key, the epoch record's key, what tables and figures call it)
KEYS = {"accuracy": ("accuracy", "target_acc", "target accuracy"),
        "mean class accuracy": ("mean_class_accuracy", "target_class_acc", "target mean class accuracy")}


def metric_of(by_label):
    """The metric the rows of one table ({label: rows}) are scored by: the one they all record; accuracy where they
    record none (rows written before the metric was) or not the same one."""
    found = {row.get("metric", "accuracy") for rows in by_label.values() for row in rows}
    return found.pop() if len(found) == 1 else "accuracy"


def final_value(row, metric):
    return row[KEYS[metric][0]]


def epoch_key(metric):
    return KEYS[metric][1]


def epoch_value(epoch, metric):
    return epoch.get(KEYS[metric][1])


def name_of(metric):
    return KEYS[metric][2]
