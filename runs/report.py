"""--report=True, and the end of a sweep: the experiments of a results file listed, and each one's table printed
and written next to it (results/tables.py), with its learning curves (results/curves.py) and the selection table
(selection/selection_table.py).

    print_report(c, "out/results.jsonl", given, flag_defaults)   # from the rows alone: no data, no training
"""
import hashlib
import json
import os

from runs import grid
from runs.config import plain_configs
from common.words import counted
from methods import METHODS, methods, own_flags, with_method
from common.errors import UserError
from data_loader import names_domain
from datasets.download import DATASETS
from results.experiments import EXPERIMENT_KEYS, later_keys, experiment, method_label, stored_config, title
from results.store import read_rows
from results.tasks import short_names, task_name
from results.tables import print_table
from results.tables import write_tables


def print_report(c, results_path, given, flag_defaults):
    """--report=True: the experiments of the results file, listed (what differs between them, how many runs each),
    and the table of each, from the rows alone: no data, no training. Flags given (`given`, their names) narrow it
    down: the experiment's keys, --method, --amp, --dataset or --data_root (the dataset's folder name), --tasks
    (or --source and --target), --seed and --seeds. flag_defaults: the flags' defaults (the configs they give each
    method are what a title compares with: config.plain_configs)."""
    rows = read_rows(results_path)
    if not rows:
        raise UserError(f"{results_path} holds no results yet: a run or a sweep with --out_dir="
                        f"{os.path.dirname(results_path) or '.'} writes them there.{found_below(results_path)}")
    older = sum("precision" not in r["config"] for r in rows)
    settings = grid.settings(c, flag_defaults)  # a grid's values: a row of any of them is asked for
    chosen = [r for r in rows if "precision" in r["config"] and wanted(r, c, given, settings)]
    if not chosen:
        asked = " ".join(f"--{name}={c[name]}" for name in sorted(given) if name in c)
        raise UserError(f"{results_path} has no results for {c['model']} ({c['weights']}, "
                        f"{PRECISION.get(c['amp'], 'bf16 or fp32')}) with these flags ({asked}): their experiment's "
                        "keys, tasks and seeds must match the sweep's. Run --report=True with --out_dir alone to "
                        "list every experiment it holds.")
    experiments = {}
    for r in chosen:
        experiments.setdefault(json.dumps([r["dataset"], stored_config(r["config"])], sort_keys=True), []).append(r)
    list_experiments(results_path, list(experiments.values()), older)
    report_tables(c, rows, [table_of(group, c, flag_defaults) for group in tables_of(list(experiments.values()))],
                  results_path)  # (all rows: the notes under a table count those it leaves out)


def found_below(results_path):
    """Where the results are when results_path holds none: " found: out/demo/results.jsonl; run with
    --out_dir=out/demo" for the results files one folder down that hold rows (the demo writes to out/demo), or ""."""
    folder = os.path.dirname(results_path) or "."
    name = os.path.basename(results_path)
    try:
        below = sorted(os.path.join(os.path.dirname(results_path), entry, name) for entry in os.listdir(folder))
    except OSError:  # (no such folder: nothing below it either)
        return ""
    found = [path for path in below if os.path.isfile(path) and os.path.getsize(path) > 0]
    if not found:
        return ""
    runs = " or ".join(f"--out_dir={os.path.dirname(path)}" for path in found)
    return f" Found: {', '.join(found)}; run with {runs}."


PRECISION = {"bf16": "bf16", "off": "fp32"}  # what --amp=bf16 and --amp=off leave in a row (auto: either)


def wanted(row, c, given, settings):
    """Whether a row is of the experiments, tasks and seeds the flags given (names in `given`) ask for; a flag given
    several values (a grid) asks for any of them (settings: grid.settings of c)."""
    config = stored_config(row["config"])
    if given & {"dataset", "data_root"} and row["dataset"] != os.path.basename(os.path.normpath(c["data_root"])):
        return False
    if "method" in given and config["method"] not in methods(c):
        return False
    asked = [key for key in (*EXPERIMENT_KEYS, *later_keys())
             if key in given or (key == "precision" and c["amp"] in PRECISION)]
    expected = [with_method(dict(c, **setting, precision=PRECISION.get(c["amp"])), config["method"])
                for setting in settings]
    if not any(all(config.get(key) == one[key] for key in asked) for one in expected):
        return False
    if given & {"seed", "seeds"} and not c["seed"] <= row["seed"] < c["seed"] + c["seeds"]:
        return False
    if given & {"tasks", "source", "target"} and c["tasks"] != "all":
        pairs = [t.split("-") for t in c["tasks"].split(",")] if c["tasks"] else [(c["source"], c["target"])]
        return any(names_domain(s.strip(), row["source"]) and names_domain(t.strip(), row["target"])
                   for s, t in pairs)
    return True


def list_experiments(results_path, experiments, older):
    """Print the experiments of a report ([rows of one experiment]): what differs between them, and each one's
    runs, tasks and seeds. A run is a task and seed of an experiment: its rows again (--rerun=True) count once."""
    configs = [dict(stored_config(group[0]["config"]), dataset=group[0]["dataset"]) for group in experiments]
    differ = [k for k in ("dataset", *EXPERIMENT_KEYS, *later_keys())
              if len({json.dumps(c.get(k)) for c in configs}) > 1]
    runs = sum(len(distinct_runs(group)) for group in experiments)
    print(f"{results_path}: {counted(runs, 'run')} of {counted(len(experiments), 'experiment')}"
          + (f", which differ in {', '.join(differ)}:" if differ else ":"))
    for k, (config, group) in enumerate(zip(configs, experiments), 1):
        labels = short_names(sorted({n for r in group for n in (r["source"], r["target"])}))
        tasks = list(dict.fromkeys(task_name(r["source"], r["target"], labels) for r in group))
        seeds = sorted({r["seed"] for r in group})
        shown = "  ".join(f"{key}={config[key]}" for key in differ) or \
            f"{config['dataset']} {config['model']} {method_label(config)}"
        print(f"  {k}. {shown}: {counted(len(distinct_runs(group)), 'run')}, {', '.join(tasks)}, "
              f"{'seed' + 's' * (len(seeds) > 1)} {', '.join(map(str, seeds))}")
    if older:
        print(f"  ({counted(older, 'more row')} {'was' if older == 1 else 'were'} written before rows recorded their "
              "precision: in no table.)")


def distinct_runs(rows):
    """The runs of one experiment's rows: their (source, target, seed), a rerun's rows counted once."""
    return {(r["source"], r["target"], r["seed"]) for r in rows}


def tables_of(experiments):
    """The experiments grouped into tables: those that differ only in the method (and what the method sets: its
    bottleneck, trade-off, entropy conditioning) or in the flags one grid varied (the rows' "grid") share one,
    where each setting appears once."""
    tables = []
    for group in experiments:
        config = config_of(group)
        common = json.dumps([group[0]["dataset"], sorted(config["grid"]), {k: v for k, v in config.items()
                                                                    if k not in (*PER_METHOD, *config["grid"])}],
                            sort_keys=True)
        table = next((t for t in tables if t[0] == common and method_label(config) not in t[1]), None)
        if table is None:
            table = (common, {})
            tables.append(table)
        table[1][method_label(config)] = group
    return [by_label for _, by_label in tables]


def config_of(group):
    """The config of one experiment's rows (results.stored_config: every later key filled in), with the names of the
    flags their grid varied (none before grids)."""
    grid = dict.fromkeys(name for r in group for name in r.get("grid", ()))
    return dict(stored_config(group[0]["config"]), grid=list(grid))


PER_METHOD = ("method", "bottleneck", "trade_off", *own_flags())


def table_of(by_label, c, flag_defaults):
    """(configs, data, labels, runs, plain) of one table of rows ({method label: rows of its experiment})."""
    rows = [r for group in by_label.values() for r in group]
    dataset = rows[0]["dataset"]
    configs = {label: dict(config_of(group), data_root=dataset) for label, group in by_label.items()}
    data = {}
    for r in sorted(rows, key=lambda r: r["date"]):  # the latest rows' data: a later copy of the data wins
        data.update(r.get("data") or {})
    labels = short_names(sorted({n for r in rows for n in (r["source"], r["target"])}))
    runs = sorted({(r["source"], r["target"], r["seed"]) for r in rows})
    flags = dict(c, model=configs[next(iter(configs))]["model"], dataset=dataset if dataset in DATASETS else "office31",
                 method=",".join(config["method"] for config in configs.values()))
    plain = plain_configs(flags, flag_defaults)  # {method: the defaults' config}; each label's is its method's
    plain = {label: plain[config["method"]] for label, config in configs.items()}
    return configs, data, labels, runs, plain


def report_tables(c, rows, tables, results_path):
    """Print each table ((configs, data, labels, runs, plain): results/tables.print_table) and write it next to the
    results file as table_<name>.md, .csv and .tex (results/tables.py) and its learning curves as curves_<name>.png
    (results/curves.py),
    <name> telling what the table is (table_name): the same experiments' table lands at the same paths, rewritten
    whole, however many runs it holds; each text file names the runs it shows (tables.shows). Every file written
    is said."""
    folder = os.path.dirname(results_path)
    for configs, data, labels, runs, plain in tables:
        text, by_label, name_of_task = print_table(rows, configs, data, labels, runs, results_path, plain)
        config = next(iter(configs.values()))
        stem = table_name(configs, data, runs)
        try:
            written = write_tables(folder, [(config["precision"], by_label, name_of_task)], text.strip() + "\n",
                                   c["bold_best"], stem)
            from results import curves  # (matplotlib: only where a figure is drawn)
            shows = title(configs, plain, "mean over seeds (lines), lowest to highest seed (bands)")
            written.append(os.path.join(folder, f"curves_{stem}.png"))
            curves.draw(folder, by_label, name_of_task, shows, written[-1])
            from selection import selection_table
            chosen = "choosing without target labels: " + title(configs, plain, "the model each validator picks, and "
                                                                "the oracle")
            written += selection_table.report(folder, by_label, default_setting(configs, plain), name_of_task, chosen,
                                              stem)
            print("wrote " + ", ".join(written))
        except OSError as e:  # a read-only or full results folder: the table is printed all the same
            print(f"warning: could not write the table files and figure to {os.path.abspath(folder)} "
                  f"({e.strerror or e}); the table above is all this report gives.")


def default_setting(configs, plain):
    """The label of the setting a run of the flags' defaults would make: the one with the most grid values at the
    defaults' (plain: {label: the defaults' config}), and among those the method listed first in METHODS (source
    only, the flags' default, where the table has it): the same setting whatever order a sweep named its methods in
    or the results file holds their rows."""
    return max(configs, key=lambda label: (sum(configs[label][name] == plain[label][name]
                                               for name in configs[label].get("grid", ())),
                                           -list(METHODS).index(configs[label]["method"])))  # (ties: the first)


def table_name(configs, data, runs):
    """<dataset>_<model>_<precision>_<hash>: the name of one table's files, from what the table is: every setting's
    experiment (results/experiments.experiment), its tasks (its columns) and their domains' data (data: {domain:
    fingerprint}; another copy of a dataset in a folder of the same name is another table), never from the seeds it
    holds so far. A seed more rewrites the same files; a table of other settings, flags, precision, tasks or data
    has files of its own, so a narrower sweep or report never overwrites a wider one's."""
    config = next(iter(configs.values()))
    tasks = sorted({(source, target) for source, target, _ in runs})
    domains = sorted({name for task in tasks for name in task})
    shown = (sorted(json.dumps(experiment(config), sort_keys=True) for config in configs.values()), tasks,
             [(name, data.get(name)) for name in domains])
    digest = hashlib.sha1(json.dumps(shown).encode()).hexdigest()[:8]
    return f"{experiment(config)[0]}_{config['model']}_{config['precision']}_{digest}"
