"""Fine-tune an ImageNet-pretrained AlexNet or ResNet on one Office-31 domain and test it on another.

    python office31.py                                   # ResNet-50, amazon -> webcam, prints "A→W accuracy: ..."
    python office31.py --model=alexnet --source=dslr     # any flag below, as --name=value

The flags below are the whole configuration. The protocol (DAN/DANN "source only"): SGD with Nesterov
momentum 0.9 and weight decay 5e-4, the new last layer at lr_mult x the learning rate, the learning rate
annealed every iteration as lr * (1 + 10 p)^-0.75 with p going 0 -> 1 over the run, random crop + flip for
training, centre crop for testing. The printed accuracy is the final model's, on every target image.
"""
import datetime
import itertools
import json
import math
import os
import pickle
import sys
import time

import torch
import torch.nn.functional as F
import torchvision
from tqdm import tqdm

import alexnet
import resnet
from data_loader import UserError, check_same_classes, find_domains, load_domain, prepare_data_root, resolve_domain
from results import append_row, markdown_table, read_rows

# -----------------------------------------------------------------------------------------------------------
# data
data_root = "data/office31"  # holds <domain>/[images/]<class>/*.jpg; see data/README.md
source = "amazon"  # domain folder name or its initial: amazon/A, webcam/W, dslr/D
target = "webcam"
download = True  # fetch Office-31 into data_root when data_root is missing or empty
# model
model = "resnet50"  # alexnet, resnet18, resnet34, resnet50, resnet101, resnet152
weights = "IMAGENET1K_V1"  # IMAGENET1K_V1; IMAGENET1K_V2 (resnet50/101/152 only); none (random init)
# optimisation
epochs = 20  # an epoch is iters_per_epoch source batches, so every source gets the same number of updates
iters_per_epoch = 250  # 20 x 250 = 5,000 iterations of batch 32 (an epoch: 2.8 passes over amazon, 16 over dslr)
batch_size = 32
lr = 0.001  # learning rate of the pretrained layers at the start (annealed every iteration)
lr_mult = 10.0  # the new last layer learns lr_mult x faster
momentum = 0.9  # Nesterov
weight_decay = 5e-4
# input
resize_size = 256  # every image is resized to resize_size x resize_size (aspect ratio not kept)
crop_size = 224  # random crop for training, centre crop for testing
# speed
cache = True  # decode each domain once into memory (~196 KB an image at 256); False: PIL per sample per epoch
amp = "auto"  # bf16 autocast: auto (CUDA GPUs with bf16, CPUs with AMX: where it is faster), bf16, off
channels_last = True  # NHWC memory layout for model and inputs (faster convolutions)
compile = False  # torch.compile the model: faster ResNet steps after a minute or two of compiling (README, Speed)
num_workers = 4  # processes decoding images
eval_batch_size = 256
# run
device = "auto"  # auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...
seed = 0  # same seed, same machine: same numbers
eval_every = 1  # target accuracy every N epochs, shown as a curve (0: only the final model's)
out_dir = "out"  # a JSON of config, per-epoch metrics and the final accuracy is written here for each run
save_model = False  # also write the final weights (a state_dict) to out_dir
# sweeps: several tasks and seeds in one command; every finished run adds a row to out_dir/results.jsonl
tasks = ""  # "": just source -> target; "all": every ordered pair of domains in data_root; or "A-W,W-A,..."
seeds = 1  # runs per task, with seeds seed, seed+1, ...
shard = "0/1"  # i/n: this process takes runs i, i+n, i+2n, ... of the sweep (0 <= i < n)
rerun = False  # a sweep skips runs already in results.jsonl with the same config; True runs them again
report = False  # only print the table of results.jsonl for this config; train nothing
# -----------------------------------------------------------------------------------------------------------
FLAGS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}
MODELS = ("alexnet",) + resnet.DEPTHS
# The flags that define an experiment: runs agreeing on these (and on the dataset) are the same run.
PROTOCOL_FLAGS = ("model", "weights", "epochs", "iters_per_epoch", "batch_size", "lr", "lr_mult", "momentum",
                  "weight_decay", "resize_size", "crop_size")


def parse_value(name, text, default):
    """text as the type of the flag's default; a wrong type is a UserError naming the flag."""
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        return type(default)(text)
    except ValueError:
        raise UserError(f"--{name}={text}: expected {type(default).__name__} "
                        f"(like the default, {default!r}).") from None


def parse_flags(argv, defaults=FLAGS):
    """nanoGPT-style overrides: each --name=value replaces one flag and is echoed; anything else is an error."""
    config = dict(defaults)
    for arg in argv:
        if arg in ("-h", "--help"):
            print(__doc__ + "\nflags (--name=value):\n" + "\n".join(f"  {k} = {v!r}" for k, v in defaults.items()))
            sys.exit(0)
        name, eq, text = arg[2:].partition("=")
        if not arg.startswith("--") or not eq or name not in defaults:
            raise UserError(f"unknown argument '{arg}'. Use --name=value with a name among: "
                            f"{', '.join(defaults)}.")
        config[name] = parse_value(name, text, defaults[name])
        print(f"overriding: {name} = {config[name]!r}")
    return config


def check_config(c):
    """Bad flag values stop the run before any work, with the reason."""
    if c["model"] not in MODELS:
        raise UserError(f"--model={c['model']} is not one of {', '.join(MODELS)}.")
    choices = alexnet.WEIGHTS if c["model"] == "alexnet" else resnet.weight_names(c["model"])
    if c["weights"] not in choices:
        raise UserError(f"--weights={c['weights']}: torchvision has {', '.join(choices)} for {c['model']}.")
    for name in ("epochs", "iters_per_epoch", "batch_size", "eval_batch_size", "resize_size", "crop_size", "seeds"):
        if c[name] < 1:
            raise UserError(f"--{name}={c[name]}: must be at least 1.")
    for name in ("num_workers", "eval_every", "weight_decay"):
        if c[name] < 0:
            raise UserError(f"--{name}={c[name]}: must not be negative.")
    if not (0 < c["lr"] < math.inf and 0 < c["lr_mult"] < math.inf):
        raise UserError(f"--lr={c['lr']} and --lr_mult={c['lr_mult']} must both be positive.")
    if not 0 <= c["momentum"] < 1:
        raise UserError(f"--momentum={c['momentum']}: must be in [0, 1).")
    if c["amp"] not in ("auto", "bf16", "off"):
        raise UserError(f"--amp={c['amp']}: expected auto, bf16 or off.")
    index, _, count = c["shard"].partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise UserError(f"--shard={c['shard']}: expected i/n with 0 <= i < n, e.g. 0/2 and 1/2 for two processes.")
    if c["crop_size"] > c["resize_size"]:
        raise UserError(f"--crop_size={c['crop_size']} is larger than --resize_size={c['resize_size']}: "
                        "the crop is cut from the resized image, so it must fit inside it.")


def pick_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        print("notice: no CUDA device found, training on the CPU (slow; see the README for a small CPU run).")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device={name}: expected auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device={name} but PyTorch sees no CUDA device here; use --device=cpu or auto.")
    return device


def use_bf16(amp, device):
    """Whether to train under bf16 autocast (the weights and BatchNorm statistics stay fp32). "auto" picks it
    where it is faster: CUDA GPUs with bf16, and CPUs with AMX. On CPUs with AVX512-BF16 alone it measured
    no faster than fp32 (README, Speed), so "auto" stays in fp32 there; --amp=bf16 forces it."""
    if device.type == "cuda":
        supported = fast = torch.cuda.is_bf16_supported()
    else:
        supported = device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        fast = supported and torch.cpu._is_amx_tile_supported()
    if amp == "bf16" and not supported:
        raise UserError(f"--amp=bf16 but {device} does not support bf16; use --amp=auto or --amp=off.")
    return amp == "bf16" or (amp == "auto" and fast)


def build_model(name, num_classes, weights):
    """The network with a new last layer; a checkpoint that cannot be fetched is a UserError saying what to do."""
    try:
        if name == "alexnet":
            return alexnet.build_alexnet(num_classes, weights), alexnet.new_layer
        return resnet.build_resnet(name, num_classes, weights), resnet.new_layer
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:  # offline (URLError), damaged file
        url = torchvision.models.get_model_weights(name)[weights].url
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        raise UserError(f"could not load the {weights} weights of {name} ({type(e).__name__}: {e}). Download "
                        f"{url} on a machine with internet and place it at {path} (a damaged file there: delete "
                        "it), or run with --weights=none to train from random initialisation.") from None


def make_optimizer(model, new_layer, c, fused=True):
    """SGD with two groups: pretrained layers at lr, the new last layer at lr * lr_mult. The fused kernel is
    the same update in one pass over all parameters (AlexNet's 61M make the per-tensor loop costly)."""
    new = list(new_layer.parameters())
    new_ids = {id(p) for p in new}
    pretrained = [p for p in model.parameters() if id(p) not in new_ids]
    groups = [{"params": pretrained, "initial_lr": c["lr"]}, {"params": new, "initial_lr": c["lr"] * c["lr_mult"]}]
    return torch.optim.SGD(groups, lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"],
                           nesterov=c["momentum"] > 0, fused=fused and model_device(model).type in ("cpu", "cuda"))


def annealed(initial_lr, progress):
    """The "inv" schedule of DANN/DAN: lr_p = lr_0 (1 + 10 p)^-0.75, progress p from 0 to 1."""
    return initial_lr * (1 + 10 * progress) ** -0.75


def set_progress(optimizer, progress):
    for group in optimizer.param_groups:  # the same factor for every group keeps the lr_mult ratio
        group["lr"] = annealed(group["initial_lr"], progress)


def train_one_epoch(model, optimizer, batches, first_step, total_steps, amp, memory_format):
    """One epoch of SGD; returns the mean loss and the accuracy on the (augmented) source batches."""
    model.train()
    loss_sum = correct = seen = 0
    for step, (x, y) in enumerate(batches, first_step):
        set_progress(optimizer, step / total_steps)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x.contiguous(memory_format=memory_format))
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(y)  # tensors, so the GPU is not synchronised every step
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return float(loss_sum) / seen, float(correct) / seen


def evaluate(model, batches, amp, memory_format):
    """(correct, total) over every batch given: each target image exactly once, no dropped last batch."""
    model.eval()
    correct = total = 0
    with torch.inference_mode(), torch.autocast(model_device(model).type, dtype=torch.bfloat16, enabled=amp):
        for x, y in batches:
            correct += (model(x.contiguous(memory_format=memory_format)).argmax(1) == y).sum().item()
            total += len(y)
    return correct, total


def model_device(model):
    return next(model.parameters()).device


def task_name(source_name, target_name):
    return f"{source_name[0].upper()}→{target_name[0].upper()}"


def write_json(path, data):
    """Write via a temporary file and rename, so a reader never sees half a file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
    os.replace(path + ".tmp", path)


def fine_tune(c, source, target, device):
    """Train on the source domain, test on the target, with config c (its seed included); returns the result
    dict, also written to out_dir as JSON."""
    torch.manual_seed(c["seed"])
    generator = torch.Generator().manual_seed(c["seed"])
    check_same_classes(source, target)
    task = task_name(source.name, target.name)
    net, new_layer = build_model(c["model"], len(source.classes), c["weights"])
    amp = use_bf16(c["amp"], device)
    memory_format = torch.channels_last if c["channels_last"] else torch.contiguous_format
    net = net.to(device, memory_format=memory_format)
    optimizer = make_optimizer(net, new_layer(net), c)
    model = torch.compile(net) if c["compile"] else net  # the same parameters; net keeps plain state_dict keys
    total_steps = c["epochs"] * c["iters_per_epoch"]
    history = []
    for epoch in range(1, c["epochs"] + 1):
        start = time.time()
        batches = tqdm(source.train_batches(c["iters_per_epoch"], c["batch_size"], c["crop_size"], generator),
                       total=c["iters_per_epoch"], desc=f"epoch {epoch}/{c['epochs']}", unit="batch", leave=False)
        loss, source_acc = train_one_epoch(model, optimizer, batches, (epoch - 1) * c["iters_per_epoch"],
                                           total_steps, amp, memory_format)
        row = {"epoch": epoch, "loss": loss, "source_acc": source_acc, "target_acc": None}
        if epoch == c["epochs"] or (c["eval_every"] and epoch % c["eval_every"] == 0):
            correct, total = evaluate(model, target.test_batches(c["eval_batch_size"], c["crop_size"]),
                                      amp, memory_format)
            row["target_acc"] = correct / total
        row["seconds"] = time.time() - start
        history.append(row)
        shown = "-" if row["target_acc"] is None else f"{100 * row['target_acc']:.1f}%"
        print(f"epoch {epoch}/{c['epochs']}  loss {loss:.3f}  source acc {100 * source_acc:.1f}%  "
              f"{task} {shown}  {row['seconds']:.1f}s")
    result = {"task": task, "correct": correct, "total": total, "accuracy": correct / total,
              "config": c, "epochs": history, "date": datetime.datetime.now().isoformat(timespec="seconds")}
    stem = os.path.join(c["out_dir"], f"{task.replace('→', '2')}_{c['model']}_seed{c['seed']}_"
                        f"{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if c["save_model"]:
        os.makedirs(c["out_dir"], exist_ok=True)
        torch.save(net.state_dict(), stem + ".pt")
    write_json(stem + ".json", result)
    return result


def domain_name(data_root, name):
    return os.path.basename(resolve_domain(data_root, name))


def plan_runs(c, data_root):
    """The sweep as (source, target, seed) tuples with domain folder names, before sharding."""
    if c["tasks"] == "all":
        found = find_domains(data_root)
        if len(found) < 2:
            raise UserError(f"--tasks=all needs at least two domains under '{data_root}'; found: "
                            f"{', '.join(found) or 'none'}.")
        pairs = list(itertools.permutations(found, 2))
    elif c["tasks"]:
        pairs = []
        for task in c["tasks"].split(","):
            names = task.strip().split("-")
            if len(names) != 2 or not all(names):
                raise UserError(f"--tasks: '{task}' is not a task; write SOURCE-TARGET pairs with domain names or "
                                "initials, separated by commas (e.g. A-W,W-A), or all.")
            pairs.append(tuple(domain_name(data_root, n) for n in names))
        pairs = list(dict.fromkeys(pairs))
    else:
        pairs = [(domain_name(data_root, c["source"]), domain_name(data_root, c["target"]))]
    return [(source, target, c["seed"] + k) for source, target in pairs for k in range(c["seeds"])]


def experiment(c):
    """What makes two runs the same experiment: the dataset's folder name and the protocol flags."""
    return os.path.basename(os.path.normpath(c["data_root"])), {k: c[k] for k in PROTOCOL_FLAGS}


def same_experiment(row, c):
    return (row["dataset"], row["config"]) == experiment(c)


def result_row(c, result):
    dataset, config = experiment(c)
    return {"dataset": dataset, "model": c["model"], "weights": c["weights"], "source": c["source"],
            "target": c["target"], "seed": c["seed"], "accuracy": result["accuracy"], "correct": result["correct"],
            "total": result["total"], "config": config, "date": result["date"]}


def run_sweep(c, data_root, device, results_path):
    """Every run of this process's shard not yet in the results file (unless rerun); returns their results."""
    plan = plan_runs(c, data_root)
    index, count = map(int, c["shard"].split("/"))
    done = {(r["source"], r["target"], r["seed"]) for r in read_rows(results_path) if same_experiment(r, c)}
    sweep = c["tasks"] != "" or c["seeds"] > 1  # a single source -> target run always trains, as before
    mine = plan[index::count]
    todo = mine if c["rerun"] or not sweep else [run for run in mine if run not in done]
    for source, target, seed in (run for run in mine if run not in todo):
        print(f"skipping {task_name(source, target)} seed {seed}: already in {results_path} (--rerun=True to redo)")
    if todo and c["weights"] != "none":
        build_model(c["model"], 2, c["weights"])  # fetch the ImageNet weights (or fail) before decoding images
    domains, finished = {}, []
    for source, target, seed in todo:
        for name in (source, target):
            if name not in domains:  # decoded once per process, shared by every task that uses the domain
                domains[name] = load_domain(data_root, name, c["resize_size"], c["cache"], c["num_workers"], device)
        run = dict(c, source=source, target=target, seed=seed)
        result = fine_tune(run, domains[source], domains[target], device)
        append_row(results_path, result_row(run, result))
        print(f"{result['task']} accuracy: {100 * result['accuracy']:.2f}% ({result['correct']}/{result['total']})")
        finished.append(result)
    if sweep:
        order = {pair: k for k, pair in enumerate(dict.fromkeys((s, t) for s, t, _ in plan))}
        rows = [r for r in read_rows(results_path) if same_experiment(r, c) and (r["source"], r["target"]) in order]
        if rows:  # a shard with nothing to do, before the others finish, has nothing to show yet
            print_table(sorted(rows, key=lambda r: order[(r["source"], r["target"])]), c, results_path)
    return finished


def print_table(rows, c, results_path):
    if not rows:
        raise UserError(f"{results_path} has no results for {c['model']} ({c['weights']}) with these flags on "
                        f"{experiment(c)[0]}; the flags {', '.join(PROTOCOL_FLAGS)} and the data_root folder name "
                        "must match the sweep's.")
    print(f"\n{experiment(c)[0]}, {c['model']} ({c['weights']}), final model, mean ± std over seeds "
          f"(from {results_path}):\n")
    print(markdown_table(rows, task_name))


def user_message(error):
    """DataLoader workers re-raise our UserError with the worker's traceback in front: keep our words only."""
    text = str(error)
    return text.rsplit("UserError: ", 1)[1].strip() if "Original Traceback" in text else text


def main(argv=None):
    try:
        c = parse_flags(sys.argv[1:] if argv is None else argv)
        check_config(c)
        print("config: " + "  ".join(f"{k}={v}" for k, v in c.items()))
        results_path = os.path.join(c["out_dir"], "results.jsonl")
        if c["report"]:
            return print_table([r for r in read_rows(results_path) if same_experiment(r, c)], c, results_path)
        device = pick_device(c["device"])
        data_root = prepare_data_root(c["data_root"], c["download"])
        return run_sweep(c, data_root, device, results_path)
    except UserError as e:
        sys.exit(f"error: {user_message(e)}")
    except torch._dynamo.exc.BackendCompilerFailed as e:  # raised at the first step, before any result is written
        sys.exit(f"error: --compile=True, but torch.compile could not build the model: {str(e).strip()}. "
                 "It needs a working C++ compiler on the CPU (Triton on a GPU); run with --compile=False.")
    except KeyboardInterrupt:
        sys.exit("interrupted: the run in progress wrote nothing; finished runs are in the results file.")


if __name__ == "__main__":
    main()
