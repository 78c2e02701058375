"""Several runs of a sweep at once on one device (--runs_at_once=N): N processes of the same command, each an
ordinary sweep over the whole plan, training the next run that no other process holds.

    python office31.py --tasks=all --seeds=3 --runs_at_once=3     # the 18 runs, 3 at a time on one GPU

At batch 32 one ResNet-50 run leaves most of a large GPU idle; runs side by side fill it. Every run takes its lock
and reads the results file again before it starts (sweep.train_and_record), so each trains once, in whichever
process reaches it first: the processes balance themselves, and a stopped sweep resumes with the same command.
A run's numbers are those it gets alone: its own seeds and batch streams, and the number of CPU threads a run
alone takes (on the CPU, fp32 convolutions split over another number of threads round differently). Those threads
wait for work passively (OMP_WAIT_POLICY=PASSIVE unless set), so the N processes' threads take turns on the cores
instead of spinning against each other. Each process's memory cache takes at most 1/N of the memory
(data_loader.memory_for_cache), or goes to the disk cache (--cache=auto), whose pages the processes share.
This process starts them, prints their lines prefixed [k/N], passes on SIGTERM, and prints the tables at the end.
"""
import os
import signal
import subprocess
import sys
import threading

import torch

from runs import distributed
from runs import grid
from common.errors import Stopped, UserError
from data_loader import RUNS_AT_ONCE
from methods import methods
from networks.models import build_model
from results.experiments import select_rows
from results.store import read_rows
from results.tasks import names_and_fingerprints, plan_runs
from runs.report import report_tables
from runs.sweep import sweep_configs


def child():
    """Whether this process is one of the N that a --runs_at_once process started (it trains, it starts none)."""
    return RUNS_AT_ONCE in os.environ


def check(c):
    """What --runs_at_once cannot take, said before any work. --plan, --report and --analyze start no process: they
    run as they do without it."""
    count = c["runs_at_once"]
    if count < 1:
        raise UserError(f"--runs_at_once={count}: must be at least 1 (1: the sweep's runs one after another).")
    if count == 1 or c["plan"] or c["report"] or c["analyze"]:
        return
    if distributed.launched() > 1:
        raise UserError(f"--runs_at_once={count} starts {count} processes of this command, each training runs of "
                        "its own; under torchrun the processes train one run together. Use one or the other.")
    if c["rerun"]:
        raise UserError(f"--rerun=True with --runs_at_once={count}: the processes tell the runs done from those to "
                        "train by the results file, and a rerun trains runs that are in it already, so two processes "
                        "could train one run twice. Rerun with --runs_at_once=1, or with another --out_dir.")
    if c["tasks"] == "" and c["seeds"] == 1 and len(methods(c)) == 1 and not grid.varied(c):
        raise one_run(count)


def one_run(count):
    return UserError(f"--runs_at_once={count} shares the device among the runs of a sweep (--tasks, --seeds, several "
                     "--method, or a grid), and this command is one run: leave --runs_at_once at 1.")


def run_at_once(c, command, data_root, device, results_path, precision, plain, flag_defaults):
    """The sweep of config c trained by c["runs_at_once"] processes of command (the script and its arguments, as
    given) on device, then its tables (report_tables, as a sweep ends); a UserError, after the tables, where a
    process failed. precision, plain, flag_defaults: as sweep.run_sweep takes them."""
    count = c["runs_at_once"]
    configs = sweep_configs(c, precision, flag_defaults)
    runs = plan_runs(c, data_root)
    if len(configs) * len(runs) == 1:  # (a grid whose values the method ignores: one run after all)
        raise one_run(count)
    if c["weights"] != "none":
        build_model(c["model"], 2, c["weights"])  # fetched once here, not by every process at once
    print(f"runs_at_once: {count} processes of this command share {device}, each training the sweep's next run "
          f"that no other holds (their lines: [1/{count}] ... [{count}/{count}]).", flush=True)
    codes, stopped_by = wait(*start(command, count))
    labels, data = names_and_fingerprints(data_root)
    plain = {label: plain[config["method"]] for label, config in configs.items()}
    rows = read_rows(results_path)
    if any(select_rows(rows, configs, data, runs).values()):
        report_tables(c, rows, [(configs, data, labels, runs, plain)], results_path)
    failed = [f"[{k}/{count}] exited with status {code}" for k, code in enumerate(codes, 1) if code]
    if stopped_by:
        raise Stopped(f"{stopped_by} stopped the {count} processes of --runs_at_once={count}; run the same command "
                      "again to go on. Finished runs are in the results file.")
    if failed:
        raise UserError(f"{len(failed)} of the {count} processes of --runs_at_once={count} failed: "
                        f"{', '.join(failed)}; their lines above, so prefixed, say why. Finished runs are in "
                        f"{results_path}, and the same command goes on with the rest.")


def start(command, count):
    """(processes, the threads echoing them): count processes of command (python, and the same arguments), each
    told which it is (the variable RUNS_AT_ONCE: k/count), their output read line by line and printed here with the
    prefix [k/count]. Their progress bars are off (their output is a pipe, not a terminal)."""
    processes, echoes = [], []
    for k in range(1, count + 1):
        env = dict(os.environ, **{RUNS_AT_ONCE: f"{k}/{count}", "PYTHONUNBUFFERED": "1",
                                  "OMP_NUM_THREADS": str(torch.get_num_threads())})  # (a run alone's: see above)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        process = subprocess.Popen([sys.executable, *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace", env=env)
        echoes.append(threading.Thread(target=echo, args=(process.stdout, f"[{k}/{count}] "), daemon=True))
        echoes[-1].start()
        processes.append(process)
    return processes, echoes


SAID_ALREADY = ("overriding: ", "config: ")
printing = threading.Lock()  # (one line at a time: the processes' lines never mix)


def echo(stream, prefix):
    """Print every line of stream with prefix, until it ends; but the flags each process echoes, the same as this
    one's (the same command), which this process said already."""
    for line in stream:
        if line.startswith(SAID_ALREADY):
            continue
        with printing:
            print(prefix + line.rstrip("\n"), flush=True)


def wait(processes, echoes):
    """Wait until every process has ended: (their exit codes, the signal that stopped them or None). A SIGTERM sent
    here is passed on to them (each stops at the end of its step); a Ctrl-C on a terminal reaches them by itself
    (they are in its process group), so here it is only noted."""
    stopped_by = []

    def handle(number, frame):
        stopped_by.append(signal.Signals(number).name)
        if number == signal.SIGTERM:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {number: signal.signal(number, handle) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        for process, thread in zip(processes, echoes):
            process.wait()
            thread.join()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return [process.returncode for process in processes], (stopped_by or [None])[0]
