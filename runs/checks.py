"""The checks made before any work: bad flag values stop a run (or a sweep, every setting of its grid) with the
reason and what to do, before a network is built or an image decoded.

    check_settings(c, FLAGS)   # c: office31.py's flags, resolved; each setting of a grid is checked
    check_settings(c, FLAGS, given)   # given: the names of the flags on the command line; a note for each no
                                      # chosen method reads ("note: --trade_off=0.3 is ignored: source_only ...")
"""
import math
import os

from runs import at_once
from runs import distributed
from runs import grid
from runs import start
import resnet
from selection import validators
from methods import METHODS, methods, own_flags, unread_flags, with_method
from data_loader import CACHES
from datasets.download import DATASETS
from common.errors import UserError
from networks.models import MODELS, block_names, check_network, has_batchnorm, weight_names


def check_config(c):
    """Bad flag values stop the run before any work, with the reason."""
    if c["dataset"] not in DATASETS:
        raise UserError(f"--dataset={c['dataset']}: expected one of {', '.join(DATASETS)} (any other tree: point "
                        "--data_root at it).")
    for name, value in c.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{name}={value}: must be a finite number.")
    if c["model"] not in MODELS:
        raise UserError(f"--model={c['model']} is not one of {', '.join(MODELS)}.")
    choices = weight_names(c["model"])
    if c["weights"] not in choices:
        raise UserError(f"--weights={c['weights']}: {c['model']} has {', '.join(choices)}.")
    if c["freeze"]:
        names = block_names(c["model"])  # (naming a family's stages may build it: only when asked)
        if names is None:
            raise UserError(f"--freeze={c['freeze']}: {c['model']}'s stages are not named here, so none can be "
                            "frozen; use --freeze=0. Stages are named for ViT, Swin, ConvNeXt, EfficientNet, RegNet, "
                            "DenseNet, MobileNet, VGG, ResNeXt and Wide ResNet.")
        if not 0 <= c["freeze"] <= len(names):
            raise UserError(f"--freeze={c['freeze']}: {c['model']} has {len(names)} blocks to freeze "
                            f"({', '.join(names)}); give a number from 0 to {len(names)}.")
    for name in ("epochs", "iters_per_epoch", "batch_size", "eval_batch_size", "resize_size", "crop_size", "seeds"):
        if c[name] < 1:
            raise UserError(f"--{name}={c[name]}: must be at least 1.")
    for name in ("num_workers", "eval_every", "weight_decay", "checkpoint_every"):
        if c[name] < 0:
            raise UserError(f"--{name}={c[name]}: must not be negative.")
    if not 0 <= c["seed"] <= MAX_SEED - c["seeds"]:  # the target stream takes seed + 1, the sweep seed + seeds - 1
        raise UserError(f"--seed={c['seed']}: must be from 0 to {MAX_SEED - c['seeds']} (torch seeds are 64-bit; the "
                        "runs of --seeds count up from it, and each takes the next seed for its target batches).")
    if not 0 <= c["source_val"] < 1:
        raise UserError(f"--source_val={c['source_val']}: the fraction of each source class held out, from 0 (none, "
                        "the protocol) to below 1 (0.1 or 0.2 is usual).")
    chosen = validators.chosen(c["validators"], c["source_val"])
    unknown = [name for name in chosen if name not in validators.NAMES]
    if unknown or (not chosen and c["validators"] != "none"):
        raise UserError(f"--validators={c['validators']}: {', '.join(unknown) or 'empty'} is not among auto, none, "
                        f"{', '.join(validators.NAMES)} (several separated by commas).")
    if not c["source_val"] and set(chosen) & set(validators.HELD_OUT):
        raise UserError(f"--validators={c['validators']}: {' and '.join(validators.HELD_OUT)} read the labels of "
                        "source images held out of training; hold some out with --source_val=0.1 (for example).")
    if not c["out_dir"].strip():
        raise UserError("--out_dir is empty: give the folder the results and checkpoints go to (--out_dir=. for "
                        "this one).")
    if not (0 < c["lr"] < math.inf and 0 < c["lr_mult"] < math.inf):
        raise UserError(f"--lr={c['lr']} and --lr_mult={c['lr_mult']} must both be positive.")
    if not 0 <= c["momentum"] < 1:
        raise UserError(f"--momentum={c['momentum']}: must be in [0, 1).")
    unknown = [m for m in methods(c) if m not in METHODS]
    if unknown or not methods(c):
        raise UserError(f"--method={c['method']}: {', '.join(unknown) or 'empty'} is not among {', '.join(METHODS)} "
                        "(one, or several separated by commas for a sweep).")
    if not (c["bottleneck"] == "auto" or c["bottleneck"].isdigit()):
        raise UserError(f"--bottleneck={c['bottleneck']}: expected auto, 0 (no bottleneck) or a width like 256.")
    if not 0 <= c["trade_off"] < math.inf:
        raise UserError(f"--trade_off={c['trade_off']}: must be a finite number, 0 or more.")
    for method in methods(c):
        check_batch_size(with_method(c, method))
        check_start(with_method(c, method))
    for flag, (what, readers) in own_flags().items():
        if c[flag] and not set(readers) & set(methods(c)):
            raise UserError(f"--{flag}={c[flag]} is {what}: use it with --method={' or --method='.join(readers)}.")
    if c["cache"] not in CACHES:
        raise UserError(f"--cache={c['cache']}: expected auto (memory where it fits, else disk), memory, disk or none.")
    if c["amp"] not in ("auto", "bf16", "off"):
        raise UserError(f"--amp={c['amp']}: expected auto, bf16 or off.")
    index, _, count = c["shard"].partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise UserError(f"--shard={c['shard']}: expected i/n with 0 <= i < n, e.g. 0/2 and 1/2 for two processes.")
    if c["crop_size"] > c["resize_size"]:
        raise UserError(f"--crop_size={c['crop_size']} is larger than --resize_size={c['resize_size']}: "
                        "the crop is cut from the resized image, so it must fit inside it.")
    check_network(c["model"], c["weights"], c["crop_size"])
    distributed.check(c)
    at_once.check(c)


def check_settings(c, flag_defaults, given=()):
    """check_config for each setting of a grid (grid.py; flag_defaults give its values' types), or for the one
    config where there is none, and --analyze's own; then a note for each flag of the command line (given: their
    names) that no chosen method reads."""
    for setting in grid.settings(c, flag_defaults):
        check_config(dict(c, **setting))
    if c.get("analyze"):
        check_analyze(c)
    for line in unread_notes(c, given):
        if os.environ.get("RANK", "0") == "0":  # (under torchrun, process 0 says it)
            print(line)


def check_analyze(c):
    """--analyze=True reads one finished run, or two side by side in one figure (--method=source_only,dann: the
    comparison papers show), of the same task and seed: one or two methods, one value of every other flag."""
    named = methods(c, stages=False)
    if len(named) > 2 or len(set(named)) < len(named) or grid.varied(c) or c["tasks"] != "" or c["seeds"] != 1:
        raise UserError("--analyze=True reads one finished run, or two side by side (--method=source_only,dann: "
                        "their t-SNE maps in one figure): give one or two --method, one value of every other flag "
                        "and no --tasks or --seeds (--source, --target and --seed name the runs).")


def unread_notes(c, given):
    """A "note: ..." line for each flag given on the command line that no chosen method reads (unread_flags: what
    with_method resets), naming the methods that ignore it. Only where none reads it: in a sweep where one does
    (--trade_off with source_only beside dann, --entropy with dann beside cdan), the flag does what it was given for,
    and the others ignoring it is what the table's rows show (source only's trade-off 0, cdan+e beside dann); a note
    there would come with every sweep that has a baseline, and teach users to skip notes."""
    chosen = methods(c)
    return [f"note: --{flag}={c[flag]} is ignored: {', '.join(chosen)} {'does' if len(chosen) == 1 else 'do'} not "
            f"read it; it is {what_reads(flag)}. The runs are the same as without it."
            for flag in sorted(given) if all(flag in unread_flags(m) for m in chosen)]


def what_reads(flag):
    """A flag that with_method may reset, and the methods that read it, in words."""
    if flag in own_flags():
        what, readers = own_flags()[flag]
        return f"{what}, read by {', '.join(readers)} only"
    return "the weight of the adaptation term that the other methods add"


def check_start(c):
    """A method that adapts a trained model (SHOT, TENT) runs on one process, and TENT needs BatchNorm layers to
    adapt; a --start_from run must be of this network (start.check)."""
    method = METHODS[c["method"]]
    if method.starts_from and distributed.launched() > 1:
        raise UserError(f"--method={c['method']} adapts a trained model on the target's images alone, on one process: "
                        "run it without torchrun (its source stage too), or with --shard to spread a sweep.")
    if method.adapts_batchnorm and not (has_batchnorm(c["model"]) or c["bottleneck"] > 0):
        raise UserError(f"--method={c['method']} adapts BatchNorm layers, and {c['model']} with --bottleneck=0 has none: use a "
                        "network with BatchNorm (ResNet, ...) or a bottleneck (its BatchNorm1d).")
    start.check(c)


MAX_SEED = 2 ** 64 - 1  # the largest seed torch.manual_seed takes


def check_batch_size(c):
    """A batch of one image is refused where training cannot use it: BatchNorm normalises over the batch (the
    ResNets' layers, a bottleneck), and the methods that say so (batch_of_two: Deep CORAL's covariance divides by
    n - 1)."""
    needs = [why for why, applies in (
        (f"{'ResNet' if c['model'] in resnet.DEPTHS else c['model']}'s BatchNorm layers normalise over the images of "
         "a batch", has_batchnorm(c["model"])),
        ("the bottleneck's BatchNorm normalises over the images of a batch", c["bottleneck"] > 0),
        (METHODS[c["method"]].batch_of_two, METHODS[c["method"]].batch_of_two is not None)) if applies]
    if c["batch_size"] < 2 and needs:
        raise UserError(f"--batch_size={c['batch_size']} with --model={c['model']} --method={c['method']}: "
                        f"{'; '.join(needs)}, so a batch needs at least 2 images. Use --batch_size=2 or more.")
