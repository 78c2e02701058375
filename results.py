"""The sweep's bookkeeping: which runs it makes, the results file (one JSON row per finished run, appended
under a lock), what makes two runs the same experiment, what a row records, task names, and the tables papers
print.

    plan_runs(c, "data/office31")             # [(source, target, seed), ...] of --tasks and --seeds
    append_row("out/results.jsonl", row)      # many processes may append at once (shards of one sweep)
    rows = read_rows("out/results.jsonl")     # a file that is not ours, or cut mid-line, is a UserError
    select_rows(rows, configs, data, runs)    # {method: the rows of this sweep}: the end of a sweep and --report
    print(markdown_table(rows, tasks))        # mean ± std over seeds per task, and the average row
    print(methods_table({"dann": rows}, tasks))  # the papers' layout: methods as rows, tasks as columns
"""
import datetime
import functools
import glob
import itertools
import json
import os
import platform
import statistics
import subprocess
import tempfile

try:
    import fcntl
except ImportError:  # Windows has no flock: appends still go in whole lines, but run shards on Linux/macOS
    fcntl = None

import torch
import torchvision

from data_loader import UserError, find_domains, resolve_domain
from metric import final_value, metric_of

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


def write_file(path, write):
    """Replace the file at path by what write(f) writes to f (opened binary), whole or not at all: into a temporary
    file of a name no other process uses, in the same folder, then renamed over path. Two processes writing the
    same file at once both succeed; the last rename wins."""
    with tempfile.NamedTemporaryFile("wb", dir=os.path.dirname(path) or ".", prefix=os.path.basename(path) + ".",
                                     suffix=".tmp", delete=False) as f:
        try:
            write(f)
        except BaseException:
            f.close()
            os.remove(f.name)
            raise
    os.replace(f.name, path)


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


# The column order of the papers' Office-31 tables (DAN, DANN, CDAN): A→W, D→W, W→D, A→D, D→A, W→A.
PAPER_ORDER = [("amazon", "webcam"), ("dslr", "webcam"), ("webcam", "dslr"), ("amazon", "dslr"), ("dslr", "amazon"),
               ("webcam", "amazon")]


def tasks_in_order(rows_by_method, order=PAPER_ORDER):
    """Every task of these rows ({label: rows}), in `order` where it lists them, the others after, as they come."""
    tasks = list(dict.fromkeys(task for rows in rows_by_method.values() for task in latest_per_seed(rows)))
    return sorted(tasks, key=lambda task: order.index(task) if task in order else len(order))


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


# ---------------------------------------------------------------------------------------------------------
# The sweep: which runs, what makes two runs the same experiment, task names, and the printed table

# What defines an experiment: runs agreeing on these (and on the dataset and its data) are the same run. All are
# flags but "precision", the dtype a run trained in (bf16 or fp32), which --amp=auto decides per machine.
EXPERIMENT_KEYS = ("model", "weights", "freeze", "method", "bottleneck", "trade_off", "entropy", "epochs",
                   "iters_per_epoch", "batch_size", "lr", "lr_mult", "momentum", "weight_decay", "resize_size",
                   "crop_size", "precision")


def method_label(c):
    """The method as tables and printed lines name it: cdan+e for CDAN with entropy conditioning, and in a grid
    (grid.py) the value of every flag it varies (c["grid"], their names): "dann trade_off=0.1 lr=0.001"."""
    return c["method"] + ("+e" if c["entropy"] else "") + "".join(f" {name}={c[name]}" for name in c.get("grid", ()))


def run_label(c):
    """One run of a task in printed lines: "dann seed 0"."""
    return f"{method_label(c)} seed {c['seed']}"


def run_stem(c):
    """The start of every file name of one run (its JSON, weights, checkpoint): amazon-webcam_resnet50_dann_seed0.
    Full domain names, so that tasks never share a name."""
    return f"{c['source']}-{c['target']}_{c['model']}_{c['method']}{'+e' * c['entropy']}_seed{c['seed']}"


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


def task_pairs(c):
    """The (source, target) pairs --tasks, or --source and --target, name, as written (names or initials); None for
    --tasks=all."""
    if c["tasks"] == "all":
        return None
    if not c["tasks"]:
        if same_domain(c["source"], c["target"]):
            raise UserError(f"--source={c['source']} --target={c['target']}: the task trains and tests on the same "
                            f"domain, but the target must be a domain the network was not trained on. Give another "
                            "--target (or --source); an empty one is the dataset's first task's.")
        return [(c["source"], c["target"])]
    pairs = []
    for task in c["tasks"].split(","):
        names = task.strip().split("-")
        if len(names) != 2 or not all(names):
            raise UserError(f"--tasks: '{task}' is not a task; write SOURCE-TARGET pairs with domain names or "
                            "initials, separated by commas (e.g. A-W,W-A), or all.")
        if same_domain(*names):
            raise UserError(f"--tasks: '{task.strip()}' trains and tests on the same domain, but the target must be a "
                            "domain the network was not trained on. Leave it out (--tasks=all pairs every two "
                            "different domains).")
        pairs.append(tuple(names))
    return pairs


def same_domain(source, target):
    """Whether two names of a task (domain names or initials, any case) name the same domain, found before the data
    is: the same name, or a name and its initial (an initial names one domain only, so both name that one; domain
    folders named by one letter aside)."""
    source, target = source.strip().lower(), target.strip().lower()
    return source == target or (min(len(source), len(target)) == 1 and source[0] == target[0])


def plan_runs(c, data_root):
    """The sweep as (source, target, seed) tuples with domain folder names, before sharding."""
    pairs = task_pairs(c)
    if pairs is None:
        found = find_domains(data_root)
        if len(found) < 2:
            raise UserError(f"--tasks=all needs at least two domains under '{data_root}'; found: "
                            f"{', '.join(found) or 'none'}.")
        pairs = list(itertools.permutations(found, 2))
    else:
        pairs = list(dict.fromkeys(tuple(domain_name(data_root, n) for n in pair) for pair in pairs))
    return [(source, target, c["seed"] + k) for source, target in pairs for k in range(c["seeds"])]


def experiment(c):
    """What makes two runs the same experiment, besides the data itself: the dataset's folder name,
    EXPERIMENT_KEYS, and LATER_KEYS where they are not at their default."""
    later = {k: c[k] for k, default in LATER_KEYS.items() if c.get(k, default) != default}
    return os.path.basename(os.path.normpath(c["data_root"])), {**{k: c[k] for k in EXPERIMENT_KEYS}, **later}


# Experiment flags added after rows were first written: a row records them only where they are not at their default,
# so that every older row stays the experiment it was. source_val: the fraction of the source held out of training.
LATER_KEYS = {"source_val": 0.0}


def stored_config(config):
    """A row's config with every later key it leaves out (LATER_KEYS: at its default) filled in with that default:
    what every reader of a stored config reads, so that all of them see the same value."""
    return {**config, **{key: default for key, default in LATER_KEYS.items() if key not in config}}


def same_experiment(row, c, data):
    """Whether a results row is of this experiment on this data. data: {domain: fingerprint} of the data at
    hand. A row of another copy of the dataset (a subset, a rebuilt tree) in a folder of the same name has
    other fingerprints, and a row written before fingerprints were recorded has none: neither matches."""
    used = {name: data.get(name) for name in (row["source"], row["target"])}
    return (row["dataset"], row["config"]) == experiment(c) and row.get("data") == used


def count_rows(rows, c, data):
    """How many rows are of run c: its experiment, on this data, its task and seed."""
    return sum(same_experiment(r, c, data) and (r["source"], r["target"], r["seed"]) == (c["source"], c["target"],
                                                                                         c["seed"]) for r in rows)


def select_rows(rows, configs, data, runs):
    """The rows of one sweep, {method: rows}: each method's experiment ({method: config}) on this data, for the
    planned (source, target, seed) runs only. The end of a sweep and --report both print these."""
    runs = set(runs)
    return {method: [r for r in rows if same_experiment(r, config, data) and (r["source"], r["target"], r["seed"])
                     in runs] for method, config in configs.items()}


def per_class_accuracy(kept, classes):
    """{class: the accuracy on its images, None where it has none} from evaluate's kept logits and labels."""
    predicted, labels = kept["logits"].argmax(1), kept["labels"]
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


def changed_flags(configs, defaults):
    """'flag=value' for every experiment flag that differs from its default in any of these configs ({method:
    config}; defaults: {method: the defaults' config for that method}); method, entropy and a grid's flags are in
    the labels."""
    changed = {}
    for method, config in configs.items():
        config = stored_config(config)
        for key in (*EXPERIMENT_KEYS, *LATER_KEYS):
            shown_elsewhere = key in ("method", "entropy", "model", "weights", "precision", *config.get("grid", ()))
            if not shown_elsewhere and config.get(key) != stored_config(defaults[method]).get(key):
                changed.setdefault(f"{key}={config[key]}", None)
    return list(changed)


def title(configs, defaults, what):
    """What a table or figure of these configs ({method: config}) shows: "office31, resnet50 (IMAGENET1K_V1),
    dann, fp32, final model, <what>; not the defaults: epochs=1" (see changed_flags); several methods are named
    "source_only / dann / cdan+e"."""
    c = next(iter(configs.values()))
    changed = changed_flags(configs, defaults)
    methods = " / ".join(dict.fromkeys(method_label(dict(config, grid=())) for config in configs.values()))
    return (f"{experiment(c)[0]}, {c['model']} ({c['weights']}), {methods}, {c['precision']}, final model, {what}"
            f"{'; not the defaults: ' + ', '.join(changed) if changed else ''}")


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


def print_table(rows, configs, data, labels, runs, results_path, defaults):
    """Print the table of one sweep (see select_rows) on this data: tasks as rows for one method, the papers' layout
    (methods as rows, tasks as columns) for several. Its title names the dataset, network, precision and every
    flag that differs from the defaults; notes under it say what the average is and what was left out. Returns
    (the printed text, {method label: rows}, name_of_task), for tables.py."""
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
    lines = [f"\n{title(configs, defaults, f'{metric}, mean ± std over seeds')} (from {results_path}):\n"]
    name = lambda source, target: task_name(source, target, labels)  # noqa: E731
    order = {(s, t): k for k, (s, t, _) in enumerate(runs)}
    by_label = {method_label(configs[m]): rows for m, rows in mine.items()}  # (a grid's settings too)
    if len(configs) == 1:
        [only] = mine.values()
        lines.append(markdown_table(sorted(only, key=lambda r: order[(r["source"], r["target"])]), name))
    else:
        lines.append(methods_table(by_label, name, PAPER_ORDER))
    lines.append("\n" + AVERAGE_NOTE)
    if metric == "mean class accuracy":
        lines.append("\n" + per_class_table(by_label, name))
    keys = [experiment(config) for config in configs.values()]
    runs = set(runs)
    others = [r for r in rows if (r["dataset"], r["config"]) in keys and (r["source"], r["target"], r["seed"]) in runs
              and not any(same_experiment(r, config, data) for config in configs.values())]
    if others:
        lines.append(f"note: {len(others)} more rows with these flags come from another copy of '{dataset}' (other "
                     "class names or image counts than the data in data_root, or written before those were "
                     "recorded); they are not in this table.")
    older = sum((r["dataset"], {**r["config"], "precision": c["precision"]}) in keys
                for r in rows if "precision" not in r["config"])
    if older:
        lines.append(f"note: {older} more rows with these flags were written before rows recorded their precision "
                     "(bf16 or fp32); they are not in this table, and a sweep runs them again.")
    text = "\n".join(lines)
    print(text)
    return text, by_label, name


def machine(device):
    """What produced a run, recorded in its row: the device (GPU or CPU model), the torch and torchvision versions,
    and the code's git revision ("+changes" when tracked files differ from it; None outside a git checkout)."""
    return {"device": device_name(device), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "revision": code_revision()}


def device_name(device):
    """The GPU's name, or the CPU's model name with its family and model numbers (a virtual machine may name it
    only "AMD EPYC", and CPUs of one name differ: README, Speed)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            fields = {}
            for key, _, value in (line.partition(":") for line in f):
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU"
    return f"{fields.get('model name')} (family {fields.get('cpu family')}, model {fields.get('model')})"


@functools.cache
def code_revision():
    def git(*args):
        return subprocess.run(["git", *args], cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True,
                              text=True, timeout=30)
    try:
        head, changes = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):  # no git here
        return None
    if head.returncode != 0:  # not a git checkout (an unpacked archive)
        return None
    return head.stdout.strip() + ("+changes" if changes.stdout.strip() else "")


# ---------------------------------------------------------------------------------------------------------
# A run's own file: its config, per-epoch numbers and result as JSON (and its weights)


# This machine, in the names of temporary files: in a folder that machines share, only this one's processes can be
# told gone or running.
HOST = platform.node().split(".")[0] or "host"


def write_new(files):
    """Create each file of files ([(path, write)]) by write(f) into a temporary file, and link them into place one
    after the other once every temporary is whole: a reader never sees half a file, a write that fails (a full disk)
    or is killed leaves none of them (a killed one's temporaries only, which the next run removes), and an existing
    file is never replaced (FileExistsError: another run took a name first; the files linked before it go again).
    A temporary's name, <path>.<host>.<pid>.tmp, says whose it is (remove_run_temporaries)."""
    temporaries = [f"{path}.{HOST}.{os.getpid()}.tmp" for path, _ in files]
    linked = []
    try:
        for tmp, (_, write) in zip(temporaries, files):
            with open(tmp, "wb") as f:
                write(f)
        for tmp, (path, _) in zip(temporaries, files):
            os.link(tmp, path)  # fails if path exists, where a rename would replace it
            linked.append(path)
    except BaseException:
        for path in linked:
            os.remove(path)
        raise
    finally:
        for tmp in temporaries:
            if os.path.exists(tmp):
                os.remove(tmp)


def save_run(c, result, weights=None):
    """Write the run's JSON (and its state_dict, if given) as out_dir/<source>-<target>_<model>_<method>_
    seed<seed>_<time>[-k].json (and .pt), k counting up from 1 while the name is taken: full domain names, so
    that tasks never share a name, and never over another run's file. Sets result["run_file"]; returns the stem.
    The two are written both or neither (write_new): only a kill between their two links leaves the weights alone."""
    os.makedirs(c["out_dir"], exist_ok=True)
    base = os.path.join(c["out_dir"], f"{run_stem(c)}_{datetime.datetime.now():%Y%m%d-%H%M%S}")
    for stem in (f"{base}-{k}" if k else base for k in itertools.count()):
        result["run_file"] = os.path.basename(stem) + ".json"
        files = [(stem + ".pt", lambda f: torch.save(weights, f))] if weights is not None else []
        files.append((stem + ".json", lambda f: f.write(json.dumps(result, indent=1, ensure_ascii=False).encode())))
        try:
            write_new(files)
        except FileExistsError:
            continue
        return stem


def remove_run_temporaries(start):
    """Delete the temporaries of the run files whose names begin with start (out_dir/<run_stem>: every run of one
    task, method and seed) that a process killed while writing them left (write_new; a .pt: up to the weights' size):
    those of this machine's processes that are gone. A running process's are left (another setting of a grid has the
    same stem), and so are another machine's."""
    start = glob.escape(start)
    for path in sorted(glob.glob(f"{start}_*.json.{glob.escape(HOST)}.*.tmp") +
                       glob.glob(f"{start}_*.pt.{glob.escape(HOST)}.*.tmp")):
        pid = path[:-len(".tmp")].rsplit(".", 1)[1]
        if pid.isdigit() and not running(int(pid)):
            print(f"removing {path}, left by a process stopped while writing a run's file")
            os.remove(path)


def running(pid):
    """Whether a process of this id runs on this machine (on Windows, where signal 0 would end it: assumed so)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def not_written(result, where, error):
    """A finished run whose result cannot be written: its numbers printed here, and the UserError saying so."""
    c = result["config"]
    print(f"{result['task']} accuracy: {100 * result['accuracy']:.2f}% ({result['correct']}/{result['total']})  "
          f"{run_label(c)} (not saved)")
    print("result (not saved): " + json.dumps({k: result[k] for k in ("task", "accuracy", "correct", "total",
                                                                     "epochs")}, ensure_ascii=False))
    why = getattr(error, "strerror", None) or str(error).strip().splitlines()[-1]
    return UserError(f"{result['task']} {run_label(c)} finished, but its result could not be written to {where} "
                     f"({why}). Its numbers are the two lines above (the accuracy, and every epoch as JSON); nothing "
                     "of this run is in the results file. Free some space or pick another --out_dir, and run the "
                     "same command again.")
