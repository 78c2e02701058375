"""Runs that resume after a kill with the same numbers: a checkpoint at every epoch end, and stopping on a signal.

    checkpoint = Checkpoint(run_config, data, task="A→W")   # out_dir/<task>_<model>_<method>_seed<s>_<key>.ckpt
    state = checkpoint.load()           # None (no file, or one that is ignored, with a line saying why) or the state
    checkpoint.save(state)              # whole or not at all (a full disk: a warning, and the run goes on)
    history = resume(checkpoint, parts, generators, epochs)  # restore network, layers, optimizer and RNGs from it
    with StopOnSignal() as stop: ...    # SIGTERM or Ctrl-C: stop.requested is set; a second Ctrl-C stops at once

A checkpoint holds everything the rest of a run reads: the network and the method's layers, the optimizer's
momentum, the epoch and the per-epoch history, and every random-number state (the global torch generator that
dropout and the per-sample path's transforms use, CUDA's, and the source and target batch generators). A run
resumed from it makes the same steps as one never stopped. Its name belongs to one run: task, method, seed and a
hash of the experiment's keys; inside, the identity (experiment, data fingerprints, format) is checked again.
"""
import contextlib
import glob
import hashlib
import json
import os
import signal

import torch

from common.files import lock, locks, temporary
from results.experiments import experiment, run_label, run_stem
from results.run_files import remove_run_temporaries

FORMAT = 1  # what a checkpoint holds and how; a file of another format is ignored


class Checkpoint:
    """The checkpoint file of one run (config c with source, target, seed, method and precision resolved), on the
    data whose fingerprints are `data` ({domain: fingerprint})."""

    def __init__(self, c, data, task):
        dataset, key = experiment(c)
        self.identity = {"format": FORMAT, "dataset": dataset, "experiment": key, "source": c["source"],
                         "target": c["target"], "seed": c["seed"],
                         "data": {name: data[name] for name in (c["source"], c["target"])}}
        digest = hashlib.sha1(json.dumps([dataset, key], sort_keys=True).encode()).hexdigest()[:10]
        self.path = os.path.join(c["out_dir"], f"{run_stem(c)}_{digest}.ckpt")
        self.run_files = os.path.join(c["out_dir"], run_stem(c))  # where the names of its JSON and weights begin
        self.name = f"{task} {run_label(c)}"
        self.warned = False  # a checkpoint that could not be written is said once per run

    def load(self):
        """The saved state, or None: no checkpoint, or one that cannot be used (another experiment, other data,
        another format, a damaged file), which is then said in one line and left to be replaced."""
        if not os.path.exists(self.path):
            return None
        try:
            state = torch.load(self.path, weights_only=True)
            why = self.mismatch(state["identity"])
            missing = {"epoch", "history", "model", "method", "optimizer", "rng"} - set(state)
            if missing and not why:
                why = f"it lacks {', '.join(sorted(missing))}"
        except Exception as e:  # truncated, not a checkpoint, or not one of ours
            why = f"it cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'damaged'})"
        if why:
            print(f"ignoring the checkpoint {self.path} of {self.name}: {why}. Starting it from the beginning.")
            return None
        return state

    def mismatch(self, found):
        """Why a saved identity is not this run's, or None."""
        for part, says in (("format", "another code version's format"), ("dataset", "another dataset"),
                           ("experiment", "another experiment"), ("source", "another task"),
                           ("target", "another task"), ("seed", "another seed"), ("data", "other data")):
            if found.get(part) != self.identity[part]:
                if part == "experiment" and isinstance(found.get(part), dict):
                    differ = [f"{k} {found[part].get(k)} here {v}" for k, v in self.identity[part].items()
                              if found[part].get(k) != v]
                    return f"it is of {says} ({', '.join(differ)})"
                return f"it is of {says} ({found.get(part)}, where this run has {self.identity[part]})"
        return None

    def save(self, state):
        """Write state with this run's identity: to a temporary file, then renamed over the last checkpoint, so a
        reader or a resume never sees half a file. A checkpoint that cannot be written (a full disk, a quota) does
        not stop the run: it says so once, with the size it needed, and returns False; the run goes on."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        try:
            with temporary(self.path, os.getpid()) as tmp:  # <name>.ckpt.<pid>.tmp (remove_temporaries)
                torch.save(dict(state, identity=self.identity), tmp)
                os.replace(tmp, self.path)
            return True
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError of its zip writer
            if not self.warned:
                why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                print(f"warning: could not write the checkpoint {self.path} of {self.name} ({why}); it needs about "
                      f"{state_bytes(state) / 2 ** 20:.0f} MB. The run goes on without checkpoints: stopped now, it "
                      "would start again from its last checkpoint, if any, or the beginning.", flush=True)
                self.warned = True
            return False

    def remove(self):
        if os.path.exists(self.path):
            os.remove(self.path)

    def remove_temporaries(self):
        """Delete what a process killed while writing this run's checkpoint left (<name>.ckpt.<pid>.tmp: up to the
        checkpoint's size), and while writing its JSON or weights (results/run_files.remove_run_temporaries: of
        processes gone). Called under the run's lock, when no other process can be writing its checkpoint."""
        for path in glob.glob(glob.escape(self.path) + ".*.tmp"):
            print(f"removing {path}, left by a process stopped while writing a checkpoint of {self.name}")
            os.remove(path)
        remove_run_temporaries(self.run_files)

    @contextlib.contextmanager
    def lock(self):
        """Held while the run trains: yields False (and holds nothing) when another process holds it, so that two
        processes never train, checkpoint or resume the same run at once. The lock file is removed by its holder
        while still held; a process that opened it just before, and so locked a file no longer in place, sees that
        and opens the one in place now (or finds none and makes it): never two holders."""
        path = self.path + ".lock"
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        while True:
            f = open(path, "a")
            if not lock(f, wait=False):
                f.close()
                yield False
                return
            if not locks() or same_file(path, f):  # (Windows: no lock; two processes must not run one run there)
                break
            f.close()  # locked a file that its last holder removed meanwhile: try the one in place
        try:
            yield True
        finally:
            if os.path.exists(path):
                os.remove(path)  # before the lock is released: see above
            f.close()


def same_file(path, f):
    """Whether path still names the open file f."""
    try:
        return os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
        return False


def state_bytes(state):
    """The bytes of the tensors in a (nested) state: about what a checkpoint of it takes on disk."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def random_states(generators):
    """Every random-number state the rest of a run reads: the global CPU generator, CUDA's, and `generators`."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "generators": [g.get_state() for g in generators]}


def set_random_states(states, generators):
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    for g, state in zip(generators, states["generators"]):
        g.set_state(state)


class StopOnSignal:
    """SIGTERM (what schedulers send before a kill) and a first Ctrl-C set `requested` to the signal's name: the
    training loop then stops at the end of its step, and the last epoch end's checkpoint is what resumes. A second
    Ctrl-C raises KeyboardInterrupt at once. Outside the main thread (no signals there) it does nothing."""

    def __init__(self):
        self.requested, self.previous = None, {}

    def __enter__(self):
        try:
            for number in (signal.SIGTERM, signal.SIGINT):
                self.previous[number] = signal.signal(number, self.handle)
        except ValueError:  # not the main thread
            pass
        return self

    def handle(self, number, frame):
        if self.requested and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(number).name
        print(f"\n{self.requested} received: stopping at the end of this step (Ctrl-C again to stop at once).",
              flush=True)

    def who(self):
        """What stopped the run, for its message: the signal, or (under torchrun) one sent to another process."""
        return self.requested or "a signal to another of the run's processes"

    def __exit__(self, *error):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def resume(checkpoint, parts, generators, epochs):
    """The history of the epochs done, [] for a fresh run: a usable checkpoint's, after restoring the network, the
    method's layers, the optimizer (parts: {name: module or optimizer}) and every random-number state from it."""
    state = checkpoint.load() if checkpoint else None
    if state is None:
        return []
    why = layout_mismatch(state, {name: part.state_dict() for name, part in parts.items()})
    if why:  # checked before anything is loaded: a fresh start needs the fresh network
        print(f"ignoring the checkpoint {checkpoint.path} of {checkpoint.name}: {why}. Starting it from the beginning.")
        return []
    for name, part in parts.items():
        part.load_state_dict(state[name])
    set_random_states(state["rng"], generators)
    print(f"resuming {checkpoint.name} from epoch {state['epoch'] + 1}/{epochs} ({checkpoint.path})")
    return state["history"]


def layout_mismatch(state, fresh):
    """Why a checkpoint's network, method layers or optimizer do not fit this run's (names and shapes), or None."""
    for name, expected in fresh.items():
        saved = state[name]
        if name == "optimizer":
            if [g["params"] for g in saved.get("param_groups", [])] != [g["params"] for g in expected["param_groups"]]:
                return "its optimizer holds other parameters"
        elif not isinstance(saved, dict) or {k: tuple(v.shape) for k, v in saved.items()} != \
                {k: tuple(v.shape) for k, v in expected.items()}:
            return f"its {name} has other layers or shapes"
    return None
