"""What makes two runs the same experiment (EXPERIMENT_KEYS, on the same dataset and data), how a run and a
setting are named, and which rows a table shows.

    experiment(c)                             # (dataset, {key: value}): runs equal in it are the same run
    select_rows(rows, configs, data, runs)    # {method: the rows of this sweep}: the end of a sweep and --report
    run_label(c)                              # "dann trade_off=0.1 seed 0": how printed lines name a run
"""
import os

from methods import METHODS, own_flags

# ---------------------------------------------------------------------------------------------------------
# The sweep: which runs, what makes two runs the same experiment, task names, and the printed table

# What defines an experiment: runs agreeing on these (and on the dataset and its data) are the same run. All are
# flags but "precision", the dtype a run trained in (bf16 or fp32), which --amp=auto decides per machine.
EXPERIMENT_KEYS = ("model", "weights", "freeze", "method", "bottleneck", "trade_off", "entropy", "epochs",
                   "iters_per_epoch", "batch_size", "lr", "lr_mult", "momentum", "weight_decay", "resize_size",
                   "crop_size", "precision")


def method_label(c):
    """The method as tables and printed lines name it: cdan+e for CDAN with entropy conditioning (the switches of
    its own that are on: switched_on), and in a grid (runs/grid.py) the value of every flag it varies (c["grid"],
    their names): "dann trade_off=0.1 lr=0.001"."""
    return c["method"] + switched_on(c) + "".join(f" {name}={c[name]}" for name in c.get("grid", ()))


def switched_on(c):
    """"+e" for CDAN+E: each switch only c's method reads (its class's `flags`) that is on, as the class names it
    (`flag_labels`; "+<flag>" where it names none)."""
    method = METHODS.get(c["method"])
    if method is None:  # a row of a method this copy of the code does not have: entropy, the one switch of old
        return "+e" if c.get("entropy") else ""
    return "".join(method.flag_labels.get(flag, f"+{flag}") for flag in method.flags if c.get(flag))


def run_label(c):
    """One run of a task in printed lines: "dann seed 0"."""
    return f"{method_label(c)} seed {c['seed']}"


def run_stem(c):
    """The start of every file name of one run (its JSON, weights, checkpoint): amazon-webcam_resnet50_dann_seed0.
    Full domain names, so that tasks never share a name."""
    return f"{c['source']}-{c['target']}_{c['model']}_{c['method']}{switched_on(c)}_seed{c['seed']}"


def experiment(c):
    """What makes two runs the same experiment, besides the data itself: the dataset's folder name,
    EXPERIMENT_KEYS, and the later keys where they are not at their default (later_keys)."""
    later = {k: c[k] for k, default in later_keys().items() if c.get(k, default) != default}
    return os.path.basename(os.path.normpath(c["data_root"])), {**{k: c[k] for k in EXPERIMENT_KEYS}, **later}


# Experiment flags added after rows were first written: a row records them only where they are not at their default,
# so that every older row stays the experiment it was. source_val: the fraction of the source held out of training;
# start: the run whose weights it started from, by name and digest (runs/start.py identity), "" for ImageNet's.
LATER_KEYS = {"source_val": 0.0, "start": ""}


def later_keys():
    """LATER_KEYS, and the switch of each method added since (a method's `flags` beyond --entropy, which every row
    records), off by default: runs with it on and off are two experiments, and older rows are those with it off."""
    return {**LATER_KEYS, **{flag: False for flag in own_flags() if flag not in EXPERIMENT_KEYS}}


def stored_config(config):
    """A row's config with every later key it leaves out (later_keys: at its default) filled in with that default:
    what every reader of a stored config reads, so that all of them see the same value."""
    return {**config, **{key: default for key, default in later_keys().items() if key not in config}}


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


def changed_flags(configs, plain):
    """'flag=value' for every experiment flag that differs from its default in any of these configs ({method:
    config}; plain: {method: the defaults' config for that method}); method, entropy and a grid's flags are in
    the labels."""
    changed = {}
    for method, config in configs.items():
        config = stored_config(config)
        for key in (*EXPERIMENT_KEYS, *later_keys()):
            shown_elsewhere = key in ("method", *own_flags(), "model", "weights", "precision", *config.get("grid", ()))
            if not shown_elsewhere and config.get(key) != stored_config(plain[method]).get(key):
                changed.setdefault(f"{key}={config[key]}", None)
    return list(changed)


def title(configs, plain, what):
    """What a table or figure of these configs ({method: config}) shows: "office31, resnet50 (IMAGENET1K_V1),
    dann, fp32, final model, <what>; not the defaults: epochs=1" (see changed_flags); several methods are named
    "source_only / dann / cdan+e"."""
    c = next(iter(configs.values()))
    changed = changed_flags(configs, plain)
    methods = " / ".join(dict.fromkeys(method_label(dict(config, grid=())) for config in configs.values()))
    return (f"{experiment(c)[0]}, {c['model']} ({c['weights']}), {methods}, {c['precision']}, final model, {what}"
            f"{'; not the defaults: ' + ', '.join(changed) if changed else ''}")
