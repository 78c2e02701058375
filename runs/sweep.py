"""The sweep: every task, seed and setting of one command, each run's row in the results file, and the tables at
its end.

    finished = run_sweep(c, "data/office31", device, "out/results.jsonl", fine_tune, precision, plain, FLAGS)

Each run takes a lock first (two processes never train one run), reads the results file again (a run another
process finished meanwhile is skipped), resumes its checkpoint if it was stopped, and appends its row when it ends.
The end of a sweep prints and writes the tables as --report does (report.py). office31.py hands in what trains one
run (fine_tune) and the defaults' configs (plain, which titles compare with): this file does not import it.
"""
import collections
import contextlib
import os
import tempfile
import time
from time import monotonic

from runs import distributed
from runs import grid
from runs import start
from common.words import counted
from methods import METHODS, methods, with_method
from runs.checkpoint import Checkpoint, StopOnSignal
from common.errors import Diverged, Stopped, UserError
from data_loader import choose_cache, class_counts, class_difference, load_domain
from networks.models import build_model, input_size
from results.experiments import count_rows, method_label, run_label, same_experiment, select_rows
from results.store import append_row, read_rows, result_row
from results.run_files import not_written
from results.tasks import plan_runs, task_name
from results.tasks import names_and_fingerprints
from runs.report import report_tables


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
    for source in dict.fromkeys(s for _, s, _, _ in todo) if c["start_from"] else ():  # (before the plan is shown)
        start.check_classes(c, source, class_counts(data_root, source))
    if sweep or c["plan"]:
        print_plan(c, plan, mine, todo, [run for run in mine if run in before], results_path, labels, len(configs))
    for setting, source, target, seed in (run for run in mine if run not in todo):
        print(f"skipping {setting} {task_name(source, target, labels)} seed {seed}: already "
              f"in {results_path} (--rerun=True to redo)")
    check_tasks(data_root, dict.fromkeys((s, t) for _, s, t, _ in todo), labels)
    if c["rerun"]:
        check_stages_rerun(configs, rows, data, [run for run in todo if run in before], labels)
    if c["plan"]:
        for number, (setting, source, target, seed) in enumerate(todo, 1):
            print(f"run {number} of {len(todo)}: {task_name(source, target, labels)} {setting} seed {seed}")
        print(f"--plan=True: nothing was trained; the same command without it trains "
              f"{'the ' + counted(len(todo), 'run') if todo else 'nothing'}.")
        return []
    names = sorted({name for _, s, t, _ in todo for name in (s, t)})
    cache = choose_cache(c["cache"], data_root, names, c["resize_size"], device) if todo else None
    if todo and c["weights"] != "none":
        build_model(c["model"], 2, c["weights"])  # fetch the ImageNet weights (or fail) before decoding images
    domains, finished, diverged = {}, [], []
    clock = Clock(len(todo))
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
            if sweep:  # where the sweep is; several settings: this run's values, which the config line leaves open
                read = ("bottleneck", "trade_off", *METHODS[run["method"]].flags, *run["grid"])  # (its own switches)
                shown = dict.fromkeys(read) if len(configs) > 1 else {}
                values = "  ".join(f"{k}={run[k]}" for k in shown)
                print(f"{clock.next()}: {task} {label}{': ' + values if values else ''}  ({clock.said()})")
            try:
                if METHODS[run["method"]].starts_from and not run["start_from"]:  # SHOT, TENT: their source stage's
                    run["start_from"] = source_stage(run, domains, device, task, data, results_path, stop, train)
                result = train_and_record(run, domains, device, task, data, results_path, stop,
                                          before[(setting, source, target, seed)], train)
            except Diverged as e:
                clock.trained()
                if not sweep:
                    raise
                print(f"error: {e} Moving on to the next run.")
                diverged.append(f"{task} {label}")
                continue
            if result:
                clock.trained()
            if result and distributed.rank() == 0:
                named = f"  {label}" if sweep or run["method"] != "source_only" else ""  # plain fine-tuning: bare
                print(f"{task} accuracy: {100 * result['accuracy']:.2f}% ({result['correct']}/{result['total']})"
                      f"{named}")
                finished.append(result)
    if sweep and distributed.rank() == 0 and c["runs_at_once"] == 1:  # (several at once: the first prints them)
        rows = read_rows(results_path)
        if any(select_rows(rows, configs, data, runs).values()):  # a shard with nothing to do may have nothing
            report_tables(c, rows, [(configs, data, labels, runs, plain)], results_path)
    if diverged:
        others = "The other runs are in the results file." if finished else "No run of this process finished."
        raise UserError(f"{len(diverged)} of {counted(len(todo), 'run')} diverged and wrote no result: "
                        f"{', '.join(diverged)} "
                        f"(their messages are above). {others}")
    return finished


def print_plan(c, plan, mine, todo, done, results_path, labels, settings):
    """Before the first run: how many runs the sweep plans (its tasks, seeds and settings), this process's shard of
    them, how many are in the results file already (done) and how many it trains (todo). --plan=True: also each run
    it would train, numbered as the sweep numbers them."""
    tasks = list(dict.fromkeys(task_name(s, t, labels) for _, s, t, _ in plan))
    parts = [counted(len(tasks), "task") + f" ({', '.join(tasks)})", counted(c["seeds"], "seed"),
             counted(settings, "setting")]
    shard = f"; this process's shard {c['shard']} takes {len(mine)}" if len(mine) < len(plan) else ""
    already = f"{len(done)} in {results_path} already"
    if any(run in todo for run in done):  # (--rerun=True; a single run always trains)
        already += ", trained again" + " (--rerun=True)" * c["rerun"]
    print(f"plan: {counted(len(plan), 'run')}, {' x '.join(parts)}{shard}; {already}; {len(todo)} to train")


class Clock:
    """Where a sweep is: "run 7 of 12", the time since its first run began, and what is left, estimated from the
    runs trained so far (a skipped run, one another process trains, takes no time and counts for none)."""

    def __init__(self, runs):
        self.runs, self.number, self.start, self.done = runs, 0, monotonic(), 0

    def next(self):
        """"run k of n" for the run about to start."""
        self.number += 1
        return f"run {self.number} of {self.runs}"

    def trained(self):
        self.done += 1

    def said(self):
        """"1m 05s elapsed, about 3m 10s left": the mean time of a run trained so far, times the runs left (this
        one too); the estimate only once a run has trained."""
        elapsed = monotonic() - self.start
        left = self.runs - self.number + 1
        estimate = f", about {duration(elapsed / self.done * left)} left" if self.done else ""
        return f"{duration(elapsed)} elapsed{estimate}"


def duration(seconds):
    """"42s", "3m 05s", "2h 07m"."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds // 60 % 60:02d}m"


def sweep_configs(c, precision, flag_defaults):
    """{label: config} of every setting a sweep runs: each method (methods.with_method resolves what it sets)
    with each setting of the grid (grid.settings), the precision --amp chose here, and the names of the flags the
    grid varies (labels show their values: results/experiments.method_label). Settings that a method makes the same
    (source only has no trade-off) run once."""
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
    resumable = checkpoint if run["checkpoint"] else None  # (train saves it at epoch ends and resumes from it)
    if distributed.rank() > 0:  # under torchrun: process 0 decides, holds the lock and writes; this one trains
        return train(run, domains[run["source"]], domains[run["target"]], device, task, resumable, stop) \
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
            result = train(run, domains[run["source"]], domains[run["target"]], device, task, resumable, stop)
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


def source_stage(run, domains, device, task, data, results_path, stop, train):
    """The weights file a run of SHOT or TENT with --start_from="" starts from: that of the run of its source stage
    (its method's starts_from) of the same task and seed, trained here first where the results file has none yet,
    and waited for while another process trains it (its lock)."""
    stage, waiting = with_method(dict(run), METHODS[run["method"]].starts_from), False
    while True:
        rows = [r for r in read_rows(results_path) if count_rows([r], stage, data)]
        if rows:
            weights = os.path.join(os.path.dirname(results_path), rows[-1]["run_file"][:-len(".json")] + ".pt")
            if not os.path.exists(weights):
                raise UserError(f"{task} {run_label(run)} starts from {task} {run_label(stage)}, whose weights "
                                f"{weights} are gone: train both again with --method={run['method']} --rerun=True (its "
                                "source stage comes with it), or name a run with --start_from.")
            return weights
        result = train_and_record(stage, domains, device, task, data, results_path, stop, 0, train)
        if result:
            print(f"{task} accuracy: {100 * result['accuracy']:.2f}% ({result['correct']}/{result['total']})  "
                  f"{run_label(stage)} ({run['method']} starts from it)")
        elif not waiting:
            print(f"waiting for another process to finish {task} {run_label(stage)}, which {run_label(run)} starts "
                  "from")
            waiting = True
        if not result:
            time.sleep(5)


def check_stages_rerun(configs, rows, data, again, labels):
    """Before any work: a --rerun=True that trains a source stage again (shot_source) must train again every row that
    started from it (shot, tent: their `starts_from`), or those rows would stand beside the stage's new run while
    having started from the one it replaces. again: the planned runs already in the results file."""
    named = list(dict.fromkeys(config["method"] for config in configs.values()))
    left, stages = [], set()
    for setting, source, target, seed in again:
        stage = configs[setting]
        for method in (m for m, chosen in METHODS.items() if chosen.starts_from == stage["method"] and m not in named):
            dependent = dict(with_method(stage, method), source=source, target=target, seed=seed)
            if count_rows(rows, dependent, data):
                left.append(f"{method} {task_name(source, target, labels)} seed {seed}")
                stages.add(stage["method"])
    if left:
        methods = ",".join(dict.fromkeys([*(m for m in named if m not in stages), *(run.split()[0] for run in left)]))
        raise UserError(f"--rerun=True trains {', '.join(sorted(stages))} "
                        f"again, and rows in the results file started from the runs it would replace: "
                        f"{', '.join(left)}. Train them again in the same command (--method={methods} "
                        "--rerun=True), or use a fresh --out_dir.")


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
