"""A run that starts from a finished run's saved weights instead of ImageNet's (--start_from; SHOT and TENT start
from their source stage's runs): its files, the checks that its network, classes and input size are this run's,
and loading it.

    check(c)                      # before any work: its files, network, new layers, bottleneck, input size, weights
    check_classes(c, classes)     # before any image is decoded: its source domain and classes are this run's
    head(path)                    # the form of its new layers (plain, shot): that of the method that trained it
    load(net, path)               # its weights into net; returns what the run file records of it
    identity(path)                # "amazon-webcam_resnet50_shot_source_seed0_20261206-101500 sha256:1a2b3c4d5e6f"

identity is what the experiment key holds (results/experiments.py, key "start"): two different starting points
never share a row. A run of SHOT or TENT with --start_from="" starts from the run of its source stage of the same
task and seed (runs/sweep.py), and its key holds "" for it: the rest of the key fixes that run.
"""
import functools
import hashlib
import json
import os
import pickle

import torch

from common.errors import UserError
from methods import METHODS


def found(path, out_dir):
    """A --start_from value as a path: as given, or a run file's name alone (results.jsonl's run_file) in out_dir."""
    beside = os.path.join(out_dir, path)
    return beside if path and not os.path.exists(path) and os.path.exists(beside) else path


def files(path):
    """(its run file, its weights file) from either's path."""
    stem, ext = os.path.splitext(path)
    if ext not in (".json", ".pt"):
        raise UserError(f"--start_from={path}: expected a finished run's file, its .json or its .pt (the weights "
                        "--save_model=True writes beside it, named alike), in an --out_dir.")
    return stem + ".json", stem + ".pt"


def run_of(path):
    """The finished run's file (its config, its classes) of a --start_from value, read; a UserError if it is
    not there, not whole, or has no weights beside it."""
    run_file, weights = files(path)
    if not os.path.exists(weights):
        raise UserError(f"--start_from={path}: {weights} is not there. A run's weights are written only with "
                        "--save_model=True (shot_source's always): run it again with it (and --rerun=True if it is "
                        "in the results file), or name another run.")
    try:
        with open(run_file, encoding="utf-8") as f:
            found = json.load(f)
        found["config"]["model"], found["per_class"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--start_from={path}: its run file {run_file} cannot be read ({e}): it says which network, "
                        "classes and input size the weights are of, so it must be beside them.") from None
    return found


@functools.lru_cache(maxsize=None)
def digest(weights, size, mtime):
    """sha256 of a weights file (size and mtime: a file rewritten is read again)."""
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256(weights):
    return digest(weights, os.path.getsize(weights), os.path.getmtime(weights))


def identity(path):
    """What the experiment key holds of a --start_from value: the run's name and its weights' digest; "" for none,
    and the path as given where its weights are missing (check() says so before any work)."""
    if not path:
        return ""
    try:
        _, weights = files(path)
        return f"{os.path.basename(os.path.splitext(weights)[0])} sha256:{sha256(weights)[:12]}"
    except (UserError, OSError):
        return path


def head(path):
    """The form of the new layers of the run a --start_from value names: its method's (Method.head); plain where
    there is none."""
    if not path:
        return "plain"
    chosen = METHODS.get(run_of(path)["config"]["method"])
    return (chosen.head if chosen else None) or "plain"


def check(c):
    """Before any work: the run --start_from names (if any) has this run's network, new layers, bottleneck and input
    size, so that its weights load and mean what they meant."""
    if not c["start_from"]:
        return
    found = run_of(c["start_from"])["config"]
    method = METHODS[c["method"]]
    wanted = {"model": c["model"], "bottleneck": c["bottleneck"], "resize_size": c["resize_size"],
              "crop_size": c["crop_size"]}
    differ = [f"--{key}={value} (it has {found.get(key)})" for key, value in wanted.items() if found.get(key) != value]
    what = " Give the flags it was trained with (its run file's config), or start from a run of this network." \
        if differ else ""
    theirs = head(c["start_from"])
    if method.head and method.head != theirs:
        runs = " or ".join(name for name, m in METHODS.items() if m.head == method.head and not m.starts_from)
        differ.append(f"{c['method']} takes a model with {method.head} new layers (common/layers.py), and "
                      f"{found['method']}'s are {theirs}")
        what += f" Start {c['method']} from a {runs} run."
    if differ:
        raise UserError(f"--start_from={c['start_from']}: this run's network is not the one saved there: "
                        f"{'; '.join(differ)}.{what}")
    state_dict(c["start_from"])  # (read once here too: a damaged file is said before any image is decoded)


def check_classes(c, source, classes):
    """Before any image is decoded: the run --start_from names was trained on this run's source domain, with these
    classes in this order (its per-class accuracy names them)."""
    if not c["start_from"]:
        return
    found = run_of(c["start_from"])
    theirs = list(found["per_class"])
    if found["config"].get("source") != source:
        raise UserError(f"--start_from={c['start_from']} was trained on {found['config'].get('source')}, and this "
                        f"run's source is {source}: a run starts from a model of its own source. Give "
                        f"--source={found['config'].get('source')} (with --tasks, only tasks from it), or start from a "
                        "run of this source.")
    if theirs != list(classes):
        raise UserError(f"--start_from={c['start_from']} was trained on {len(theirs)} classes, and {source} here has "
                        f"{len(classes)}{'' if len(theirs) != len(classes) else ', named otherwise'}: its classifier "
                        "is not this data's. Start from a run on this data.")


def state_dict(path):
    """The state_dict in the weights file of a --start_from value; a UserError where the file is not one that
    torch.save wrote of a state_dict (damaged: cut short, overwritten). Read once for the checks of every setting
    and the runs after them (read_weights)."""
    _, weights = files(path)
    try:
        stat = os.stat(weights)
    except OSError as e:
        raise UserError(f"--start_from={path}: {weights} cannot be read ({e.strerror or e}). Train that run again "
                        "(--rerun=True), or name another run.") from None
    return read_weights(path, weights, stat.st_size, stat.st_mtime)


@functools.lru_cache(maxsize=1)
def read_weights(path, weights, size, mtime):
    """state_dict's reading, kept for the next call on the same file (size and mtime: a file rewritten is read
    again). The tensors are only ever copied from (load_state_dict), so one dict serves every run."""
    try:
        found = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # (its own words advise weights_only=False: not for a file of unknown bytes)
        why = "not a file that torch.save wrote"
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
    else:
        if isinstance(found, dict) and all(isinstance(v, torch.Tensor) for v in found.values()):
            return found
        why = f"it holds a {type(found).__name__}, not a state_dict"
    raise UserError(f"--start_from={path}: {weights} cannot be read as a network's weights ({why}); it is damaged. "
                    "Train that run again (--rerun=True), or name another run.")


def load(net, path):
    """The weights of the run a --start_from value names, into net; what the run file records of them."""
    run_file, weights = files(path)
    try:
        net.load_state_dict(state_dict(path))
    except RuntimeError as e:
        raise UserError(f"--start_from={path}: {weights} does not load into this network "
                        f"({str(e).splitlines()[0]}); it is damaged or of another network.") from None
    return {"run_file": os.path.basename(run_file), "weights": weights, "sha256": sha256(weights)}
