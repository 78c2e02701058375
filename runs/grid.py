"""Hyper-parameter grids: the training flags that take several comma-separated values in one command, and the
runs of their product.

    python office31.py --method=dann --trade_off=0.1,0.3,1 --lr=0.001,0.003    # 3 x 2 settings, each a run per task
                                                                                # and seed
    settings(c)        # [{"trade_off": 0.1, "lr": 0.001}, {"trade_off": 0.1, "lr": 0.003}, ...] in that order
    experiments.method_label(config)   # "dann trade_off=0.1 lr=0.001": how tables and printed lines name a setting

Every setting is an experiment of its own (results/experiments.py): it is keyed, resumed, sharded and skipped as a
single run is. --method takes several values too, as it always did (methods.methods), and is crossed with the
rest. Choosing among the settings without the target's labels is selection/validators.py's and
selection/selection_table.py's.
"""
import itertools

from runs import flags

# The flags a grid may vary: what changes training alone. The network, its weights and the image sizes change the
# data pipeline too (one command each, in the same --out_dir: the report lists them all).
GRID = ("method", "bottleneck", "trade_off", "entropy", "freeze", "epochs", "iters_per_epoch", "batch_size", "lr",
        "lr_mult", "momentum", "weight_decay", "source_val")


def varied(c):
    """The grid flags given several values, method excepted (its label names it): ["trade_off", "lr"]."""
    return [name for name in GRID if name != "method" and "," in str(c[name])]


def settings(c, flag_defaults):
    """The product of the values of every varied flag, each parsed as its default's type (spaces around it dropped,
    however the config was made), in the order given:
    [{name: value}] ([{}] for no grid). flag_defaults: the flags' defaults, whose types the values take."""
    names = varied(c)
    values = [[flags.parse_value(name, text.strip(), flag_defaults[name]) for text in c[name].split(",")]
              for name in names]
    return [dict(zip(names, combination)) for combination in itertools.product(*values)]

