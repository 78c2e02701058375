"""The sweep: every task, seed and method of one command, its rows in the results file, and the table papers print.

    finished = run_sweep(c, "data/office31", device, "out/results.jsonl", fine_tune, precision, plain)
    print_report(c, "out/results.jsonl", plain)   # --report=True: the table again, from the results file alone

Each run takes a lock first (two processes never train one run), reads the results file again (a run another
process finished meanwhile is skipped), resumes its checkpoint if it was stopped, and appends its row when it ends.
The end of a sweep and --report print the table (results.print_table), write it as files (tables.py) and draw the
learning curves (curves.py). office31.py hands in what trains one run (fine_tune) and the defaults' configs
(plain, which titles compare with): this file does not import it.
"""
import collections
import contextlib
import hashlib
import json
import os
import tempfile

import distributed
import grid
from adaptation import METHODS, methods, with_method
from checkpoint import Checkpoint, Diverged, StopOnSignal, Stopped
from data_loader import (UserError, choose_cache, class_counts, class_difference, find_domains,
                         fingerprint, load_domain)
from download import DATASETS
from models import build_model, input_size
from results import (EXPERIMENT_KEYS, LATER_KEYS, append_row, count_rows, experiment, method_label, not_written,
                     plan_runs, print_table, read_rows, result_row, run_label, same_experiment, select_rows,
                     short_names, stored_config, task_name, title)
from tables import write_tables


def run_sweep(c, data_root, device, results_path, train, precision, plain, flag_defaults):
    """Every run of this process's shard not yet in the results file (unless rerun); returns their results.
    Several methods, or a grid (grid.py: flag_defaults give its values' types): each setting runs the whole plan.
    A run that diverges writes nothing; the sweep goes on and fails at the end, naming it. train: what trains one
    run (office31.fine_tune); precision: "bf16" or "fp32", what --amp resolved to here (part of the experiment:
    rows record it); plain: the defaults' configs (titles)."""
    configs = sweep_configs(c, precision, flag_defaults)
    plain = {label: plain[config["method"]] for label, config in configs.items()}
    runs = plan_runs(c, data_root)
    plan = [(setting, *run) for setting in configs for run in runs]
    labels, data = names_and_fingerprints(data_root)
    index, count = map(int, c["shard"].split("/"))
    rows = read_rows(results_path)
    before = collections.Counter((setting, r["source"], r["target"], r["seed"]) for setting, config in configs.items()
                                 for r in rows if same_experiment(r, config, data))
    sweep = c["tasks"] != "" or c["seeds"] > 1 or len(configs) > 1  # a single run always trains, as before
    mine = plan[index::count]
    todo = mine if c["rerun"] or not sweep else [run for run in mine if run not in before]
    todo = distributed.decide(todo)  # (under torchrun, process 0's: another shard may append rows as they read them)
    for setting, source, target, seed in (run for run in mine if run not in todo):
        print(f"skipping {setting} {task_name(source, target, labels)} seed {seed}: already "
              f"in {results_path} (--rerun=True to redo)")
    check_tasks(data_root, dict.fromkeys((s, t) for _, s, t, _ in todo), labels)
    names = sorted({name for _, s, t, _ in todo for name in (s, t)})
    cache = choose_cache(c["cache"], data_root, names, c["resize_size"], device) if todo else None
    if todo and c["weights"] != "none":
        build_model(c["model"], 2, c["weights"])  # fetch the ImageNet weights (or fail) before decoding images
    domains, finished, diverged = {}, [], []
    with StopOnSignal() as stop:
        for setting, source, target, seed in todo:
            run = dict(configs[setting], source=source, target=target, seed=seed)
            task, label = task_name(source, target, labels), run_label(run)
            if distributed.anywhere(stop.requested)[0]:  # (under torchrun: asked of any process, all stop here)
                raise Stopped(f"{stop.who()} stopped the sweep before {task} {label}; run the same command again "
                              "to go on. Finished runs are in the results file.")
            for name in (source, target):
                if name not in domains:  # decoded once per process, shared by every task that uses the domain
                    domains[name] = load_domain(data_root, name, c["resize_size"], cache, c["num_workers"],
                                                device, input_size(c["model"], c["weights"])[2], c["cache_dir"])
            if len(configs) > 1:  # the main config line leaves these unresolved ("auto", a grid): this run's values
                shown = dict.fromkeys(("bottleneck", "trade_off", "entropy", *run["grid"]))
                print(f"run: {task} {label}: " + "  ".join(f"{k}={run[k]}" for k in shown))
            try:
                result = train_and_record(run, domains, device, task, data, results_path, stop,
                                          before[(setting, source, target, seed)], train)
            except Diverged as e:
                if not sweep:
                    raise
                print(f"error: {e} Moving on to the next run.")
                diverged.append(f"{task} {label}")
                continue
            if result and distributed.rank() == 0:
                named = f"  {label}" if sweep or run["method"] != "source_only" else ""  # plain fine-tuning: bare
                print(f"{task} accuracy: {100 * result['accuracy']:.2f}% ({result['correct']}/{result['total']})"
                      f"{named}")
                finished.append(result)
    if sweep and distributed.rank() == 0:
        rows = read_rows(results_path)
        if any(select_rows(rows, configs, data, runs).values()):  # a shard with nothing to do may have nothing
            report_tables(c, rows, [(configs, data, labels, runs, plain)], results_path)
    if diverged:
        kept = "The other runs are in the results file." if finished else "No run of this process finished."
        raise UserError(f"{len(diverged)} of {len(todo)} runs diverged and wrote no result: {', '.join(diverged)} "
                        f"(their messages are above). {kept}")
    return finished


def sweep_configs(c, precision, flag_defaults):
    """{label: config} of every setting a sweep runs: each method (adaptation.with_method resolves what it sets)
    with each setting of the grid (grid.settings), the precision --amp chose here, and the names of the flags the
    grid varies (labels show their values: results.method_label). Settings that a method makes the same (source
    only has no trade-off) run once."""
    configs = {}
    for method in methods(c):
        for setting in grid.settings(c, flag_defaults):
            config = with_method(dict(c, **setting, precision=precision, grid=grid.varied(c)), method)
            configs.setdefault(method_label(config), config)
    return configs


def train_and_record(run, domains, device, task, data, results_path, stop, rows_before, train):
    """One run, with its checkpoint: locked against a second process on the same run, resumed if it was stopped,
    its row appended to the results file, and then its checkpoint removed. None (skipped) when another process
    holds the run, or finished it since this one read the results file (which then held rows_before of its rows).
    A run already in the results file (a rerun) starts from the beginning, whatever checkpoint it kept."""
    checkpoint = Checkpoint(run, data, task)  # its lock serves every run, with checkpoints or without
    kept = checkpoint if run["checkpoint"] else None
    if distributed.rank() > 0:  # under torchrun: process 0 decides, holds the lock and writes; this one trains
        return train(run, domains[run["source"]], domains[run["target"]], device, task, kept, stop) \
            if distributed.decide() else None
    with checkpoint.lock() as free:
        if not free:
            print(f"skipping {checkpoint.name}: another process is training it now ({checkpoint.path}.lock)")
            return distributed.decide(None)
        if count_rows(read_rows(results_path), run, data) > rows_before:
            print(f"skipping {checkpoint.name}: another process finished it meanwhile (its row is in {results_path})")
            return distributed.decide(None)
        checkpoint.remove_temporaries()
        if rows_before and os.path.exists(checkpoint.path):  # kept when it finished, or left by a stopped rerun
            print(f"{checkpoint.name} is in {results_path} already, so it trains again from the beginning: its "
                  f"checkpoint {checkpoint.path} is removed, not resumed.")
            checkpoint.remove()
        distributed.decide(True)  # (after the checkpoint is settled: the other processes resume from the same one)
        try:
            result = train(run, domains[run["source"]], domains[run["target"]], device, task, kept, stop)
        except Diverged:
            checkpoint.remove()  # resuming would diverge again: a diverged run leaves nothing
            raise
        try:
            append_row(results_path, result_row(run, result, data))
        except OSError as e:  # the run's own files go too: a run is in the results file, or it left nothing
            for name in (result["run_file"], result["run_file"][:-len(".json")] + ".pt"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(run["out_dir"], name))
            raise not_written(result, results_path, e) from None
        if not run["keep_checkpoint"]:
            checkpoint.remove()
        return result


def check_tasks(data_root, pairs, labels):
    """Before the first run: every class folder of the domains in these (source, target) pairs holds images, and
    each pair has the same classes, or the sweep stops here, naming every task and class at fault."""
    counts = {name: class_counts(data_root, name) for name in dict.fromkeys(n for pair in pairs for n in pair)}
    problems = [f"{name} has no images in {', '.join(c for c, n in by_class.items() if n == 0)}"
                for name, by_class in counts.items() if 0 in by_class.values()]
    for source, target in pairs:
        differ = class_difference(source, counts[source], target, counts[target])
        if differ:
            problems.append(f"{task_name(source, target, labels)}: different classes, {differ}")
    if problems:
        raise UserError(f"nothing was run, since the planned tasks cannot all train: {'. '.join(problems)}. Classes "
                        "are matched by folder name and every class folder needs an image: rename, fill or remove "
                        "folders so the domains agree, or leave those tasks out of --tasks.")


def check_out_dir(out_dir, results_path):
    """Stop before any work when the results could not be written: out_dir (or the folder it would be made in)
    must be a folder we can create entries in, and an existing results file must take appends. The probe is a
    temporary folder, removed at once: nothing is left behind."""
    probe = os.path.abspath(out_dir)
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    problem = None
    if not os.path.isdir(probe):
        problem = f"'{probe}' exists and is not a folder"
    else:
        try:
            tempfile.TemporaryDirectory(dir=probe).cleanup()
        except OSError as e:
            problem = f"no folder can be created in '{probe}' ({e.strerror or e})"
    if problem is None and os.path.exists(results_path):
        try:
            open(results_path, "a", encoding="utf-8").close()
        except OSError as e:
            problem = f"'{results_path}' cannot be appended to ({e.strerror or e})"
    if problem:
        raise UserError(f"--out_dir={out_dir}: {problem}, and the run's results are written there. Nothing was "
                        "run: pick a folder you can write to with --out_dir.")


def names_and_fingerprints(data_root):
    """The domains under data_root: {domain: its label in task names}, {domain: fingerprint of its data}."""
    labels = short_names(find_domains(data_root))
    return labels, {name: fingerprint(data_root, name) for name in labels}


def print_report(c, results_path, given, defaults, flag_defaults):
    """--report=True: the experiments of the results file, listed (what differs between them, how many runs each),
    and the table of each, from the rows alone: no data, no training. Flags given (`given`, their names) narrow it
    down: the experiment's keys, --method, --amp, --dataset or --data_root (the dataset's folder name), --tasks
    (or --source and --target), --seed and --seeds. defaults(c): the defaults' configs a title compares with;
    flag_defaults: the flags' defaults."""
    rows = read_rows(results_path)
    if not rows:
        raise UserError(f"{results_path} holds no results yet: a run or a sweep with --out_dir="
                        f"{os.path.dirname(results_path) or '.'} writes them there.")
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
    list_experiments(results_path, list(experiments.values()), len(chosen), older)
    report_tables(c, rows, [table_of(group, defaults, c) for group in tables_of(list(experiments.values()))],
                  results_path)  # (all rows: the notes under a table count those it leaves out)


PRECISION = {"bf16": "bf16", "off": "fp32"}  # what --amp=bf16 and --amp=off leave in a row (auto: either)


def wanted(row, c, given, settings):
    """Whether a row is of the experiments, tasks and seeds the flags given (names in `given`) ask for; a flag given
    several values (a grid) asks for any of them (settings: grid.settings of c)."""
    config = stored_config(row["config"])
    if given & {"dataset", "data_root"} and row["dataset"] != os.path.basename(os.path.normpath(c["data_root"])):
        return False
    if "method" in given and config["method"] not in methods(c):
        return False
    asked = [key for key in (*EXPERIMENT_KEYS, *LATER_KEYS)
             if key in given or (key == "precision" and c["amp"] in PRECISION)]
    expected = [with_method(dict(c, **setting, precision=PRECISION.get(c["amp"])), config["method"])
                for setting in settings]
    if not any(all(config.get(key) == one[key] for key in asked) for one in expected):
        return False
    if given & {"seed", "seeds"} and not c["seed"] <= row["seed"] < c["seed"] + c["seeds"]:
        return False
    if given & {"tasks", "source", "target"} and c["tasks"] != "all":
        pairs = [t.split("-") for t in c["tasks"].split(",")] if c["tasks"] else [(c["source"], c["target"])]
        return any(names(row["source"], s) and names(row["target"], t) for s, t in pairs)
    return True


def names(domain, name):
    """Whether a --tasks, --source or --target name (a domain's folder name or initial, any case) names domain."""
    return name.strip().lower() in (domain.lower(), domain[:1].lower())


def list_experiments(results_path, experiments, runs, older):
    """Print the experiments of a report: what differs between them, and each one's runs, tasks and seeds."""
    configs = [dict(stored_config(group[0]["config"]), dataset=group[0]["dataset"]) for group in experiments]
    differ = [k for k in ("dataset", *EXPERIMENT_KEYS, *LATER_KEYS)
              if len({json.dumps(c.get(k)) for c in configs}) > 1]
    print(f"{results_path}: {runs} runs of {len(experiments)} experiment{'s' * (len(experiments) > 1)}"
          + (f", which differ in {', '.join(differ)}:" if differ else ":"))
    for k, (config, group) in enumerate(zip(configs, experiments), 1):
        labels = short_names(sorted({n for r in group for n in (r["source"], r["target"])}))
        tasks = list(dict.fromkeys(task_name(r["source"], r["target"], labels) for r in group))
        seeds = sorted({r["seed"] for r in group})
        shown = "  ".join(f"{key}={config[key]}" for key in differ) or \
            f"{config['dataset']} {config['model']} {method_label(config)}"
        print(f"  {k}. {shown}: {len(group)} runs, {', '.join(tasks)}, seeds {', '.join(map(str, seeds))}")
    if older:
        print(f"  ({older} more rows were written before rows recorded their precision: in no table.)")


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


PER_METHOD = ("method", "bottleneck", "trade_off", "entropy")


def table_of(by_label, defaults, c):
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
    plain = defaults(flags)  # {method: the defaults' config}; each label's is its method's
    plain = {label: plain[config["method"]] for label, config in configs.items()}
    return configs, data, labels, runs, plain


def report_tables(c, rows, tables, results_path):
    """Print each table ((configs, data, labels, runs, plain): results.print_table) and write it next to the results
    file as table_<name>.md, .csv and .tex (tables.py) and its learning curves as curves_<name>.png (curves.py),
    <name> telling the dataset, network and precision, and a hash of the experiments and runs it shows: another
    report's files never take its place. Every file written is said."""
    folder = os.path.dirname(results_path)
    for configs, data, labels, runs, plain in tables:
        text, by_label, name_of_task = print_table(rows, configs, data, labels, runs, results_path, plain)
        config = next(iter(configs.values()))
        stem = table_name(configs, runs)
        try:
            written = write_tables(folder, [(config["precision"], by_label, name_of_task)], text.strip() + "\n",
                                   c["bold_best"], stem)
            import curves  # (matplotlib: only where a figure is drawn)
            shows = title(configs, plain, "mean over seeds (lines), lowest to highest seed (bands)")
            written.append(os.path.join(folder, f"curves_{stem}.png"))
            curves.draw(folder, by_label, name_of_task, shows, written[-1])
            import selection
            chosen = "choosing without target labels: " + title(configs, plain, "the model each validator picks, and "
                                                                "the oracle")
            written += selection.report(folder, by_label, default_setting(configs, plain), name_of_task, chosen, stem)
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
                                           -METHODS.index(configs[label]["method"])))  # (ties: the first)


def table_name(configs, runs):
    """<dataset>_<model>_<precision>_<hash of the experiments and runs>: the name of one table's files."""
    config = next(iter(configs.values()))
    shown = sorted(json.dumps(experiment(config), sort_keys=True) for config in configs.values()), sorted(runs)
    digest = hashlib.sha1(json.dumps(shown, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{experiment(config)[0]}_{config['model']}_{config['precision']}_{digest}"
