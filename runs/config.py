"""The configuration a run trains with, from the flags: the demo's own defaults (dataset_defaults), the flags whose
default depends on another made explicit (resolve), and what the flags' defaults give each method (plain_configs:
what a table's title compares with, to name every flag that differs).

    c = resolve(flags.parse(argv, dataset_defaults(dataset, FLAGS)))   # FLAGS: office31.py's {name: default}
    plain = plain_configs(c, FLAGS)                                    # {method: the defaults' config}
"""
import os

from datasets import demo
from runs import start
from datasets.download import DATASETS
from data_loader import CACHE_WORDS
from methods import methods, with_method
from networks.models import MODELS, input_size, weight_names


def resolve(c):
    """The flags whose default depends on another, made explicit: data_root, source and target "" (the
    dataset's folder and first task), weights=auto, resize_size=0 and crop_size=0 (the network's); --cache=True and
    False, the boolean it was, are memory and none; --start_from, a run file's name alone, the one in out_dir if there
    is one there and none here; and with it, start: its run's name and digest (start.py; experiments.py: a key). An
    unknown model or weights name is left for check_config."""
    weights = c["weights"].lower() if c["weights"].lower() in ("auto", "none") else c["weights"]  # None, AUTO
    if c["model"] in MODELS and weights == "auto":
        weights = weight_names(c["model"])[0]
    known = c["model"] in MODELS and weights in weight_names(c["model"])
    resize, crop, _ = input_size(c["model"], weights) if known else (256, 224, None)
    source, target = DATASETS.get(c["dataset"], DATASETS["office31"])["task"]
    return dict(c, data_root=c["data_root"] or os.path.join("data", c["dataset"]), source=c["source"] or source,
                target=c["target"] or target, weights=weights, resize_size=c["resize_size"] or resize,
                crop_size=c["crop_size"] or crop, cache=CACHE_WORDS.get(c["cache"].lower(), c["cache"].lower()),
                start_from=start.found(c["start_from"], c["out_dir"]),
                **({"start": start.identity(start.found(c["start_from"], c["out_dir"]))} if c["start_from"] else {}))


def plain_configs(c, flag_defaults):
    """{method: the config the flags' defaults give that method on c's model and dataset}: what a table's title
    compares with, to name every flag that differs."""
    plain = resolve(dict(dataset_defaults(c["dataset"], flag_defaults), model=c["model"], dataset=c["dataset"]))
    return {method: with_method(plain, method) for method in methods(c)}


def dataset_defaults(name, flag_defaults):
    """The flags' defaults, with the demo's own (demo.FLAGS: a small network from scratch, small images, a short
    run) for --dataset=demo."""
    return dict(flag_defaults, **demo.FLAGS) if name == "demo" else flag_defaults
