"""Each run's own file: out_dir/<source>-<target>_<model>_<method>_seed<seed>_<time>.json (its config, per-epoch
numbers and result) and, with --save_model, the .pt of its weights beside it; both written whole or neither.

    save_run(c, result, weights)              # returns the stem of the files written
"""
import contextlib
import datetime
import glob
import itertools
import json
import os
import platform


import torch

from common.files import temporary
from common.errors import UserError
from results.experiments import run_label, run_stem


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
    linked = []
    with contextlib.ExitStack() as temporaries:  # each removed at the end, linked or not
        names = [temporaries.enter_context(temporary(path, f"{HOST}.{os.getpid()}")) for path, _ in files]
        try:
            for tmp, (_, write) in zip(names, files):
                with open(tmp, "wb") as f:
                    write(f)
            for tmp, (path, _) in zip(names, files):
                os.link(tmp, path)  # fails if path exists, where a rename would replace it
                linked.append(path)
        except BaseException:
            for path in linked:
                os.remove(path)
            raise


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
