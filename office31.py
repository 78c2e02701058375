"""Fine-tune an ImageNet-pretrained AlexNet, ResNet or other torchvision network on one Office-31 domain and test
it on another.

    python office31.py                                   # ResNet-50, amazon -> webcam, prints "A→W accuracy: ..."
    python office31.py --model=alexnet --source=dslr     # any flag below, as --name=value
    python office31.py --method=dann                     # adapt to the target's unlabelled images
    python office31.py --tasks=all --seeds=3 --method=source_only,dann,cdan     # a sweep: the papers' table

The flags below are the whole configuration. The protocol (DAN/DANN "source only"): SGD with Nesterov
momentum 0.9 and weight decay 5e-4, the new last layer at lr_mult x the learning rate, the learning rate
annealed every iteration as lr * (1 + 10 p)^-0.75 with p going 0 -> 1 over the run, random crop + flip for
training, centre crop for testing. The printed accuracy is the final model's, on every target image.

Adaptation: --method adds a loss on the target's unlabelled images (pushed through the network with the source
batch) to the source classification loss, on the same loop and schedule: DDC, DAN, Deep CORAL, DANN, CDAN, BSP,
JAN, MCC, MDD, AFN, each as its paper defines it (adaptation.py). The target's labels are read by the
evaluations only. Sweeps: --tasks, --seeds and a comma-separated --method run every task, seed and method in one
command; each finished run adds a row to out_dir/results.jsonl, a stopped sweep resumes with the same command,
and the end prints the table papers show (methods as rows, mean ± std over seeds); --report=True prints it again.
The training flags take comma-separated values too (a grid: grid.py), and every evaluation records scores that
need no target label (validators.py); the end of a sweep then also shows what each would choose (selection.py).
"""
import datetime
import math
import os
import sys
import time

from runs import flags
from runs import grid
from common.errors import UserError, exit_with

# -----------------------------------------------------------------------------------------------------------
# data
dataset = "office31"  # office31, office_home, visda2017, domainnet (downloaded if missing); demo: drawn offline
data_root = ""  # holds <domain>/[images/]<class>/*.jpg (data/README.md); "": data/<dataset>
source = ""  # domain folder name or its initial: amazon/A, webcam/W, dslr/D; "": amazon (Office-Home: Art)
target = ""  # the domain tested on, as source; "": webcam (Office-Home: Clipart)
download = True  # fetch the dataset into data_root when data_root is missing or empty
source_val = 0.0  # fraction of each source class held out of training (the same images in every run), for validators
# model
model = "resnet50"  # alexnet, caffe_alexnet (the papers'), resnet18 ... resnet152; vit_b_16, swin_t, convnext_tiny, ...
weights = "auto"  # auto: IMAGENET1K_V1 (caffe_alexnet: bvlc_reference_caffenet); the model's others; none
freeze = 0  # leading blocks whose weights stay fixed: conv1, ... (DAN's AlexNet: 3); ResNet: stem, layer1, ...
# adaptation (README, Domain adaptation); source_only is plain fine-tuning, the others add a loss on target images
method = "source_only"  # source_only, ddc, dan, coral, dann, cdan, bsp, jan, mcc, mdd, afn; several make a sweep
bottleneck = "auto"  # Linear+BatchNorm1d+ReLU of this width before the classifier; 0: none; auto: the method's
trade_off = 1.0  # weight of the adaptation loss (dann, cdan, bsp, mdd: of the reversed gradient, ramped up from 0)
entropy = False  # cdan only: entropy conditioning (CDAN+E)
# optimisation
epochs = 20  # an epoch is iters_per_epoch source batches, so every source gets the same number of updates
iters_per_epoch = 250  # 20 x 250 = 5,000 iterations of batch 32 (an epoch: 2.8 passes over amazon, 16 over dslr)
batch_size = 32  # source images per step (an adapting step adds as many target images)
lr = 0.001  # learning rate of the pretrained layers at the start (annealed every iteration)
lr_mult = 10.0  # the new last layer learns lr_mult x faster
momentum = 0.9  # SGD momentum, Nesterov (0: plain SGD)
weight_decay = 5e-4  # L2 penalty on every trained weight (SGD's weight_decay)
# input
resize_size = 0  # images are resized to resize_size x resize_size (aspect not kept); 0: 256, or the weights' own
crop_size = 0  # random crop for training, centre for testing; 0: the network's (224; caffe_alexnet 227; weights')
# speed
cache = "auto"  # decode each domain once: memory (~196 KB an image at 256), disk (cache_dir), none (PIL per sample)
cache_dir = ""  # the folder of --cache=disk's files (shared by runs); "": <data_root>/.cache
amp = "auto"  # bf16 autocast: auto (where it is faster: CUDA compute capability 8.0+, CPUs measured), bf16, off
channels_last = True  # NHWC memory layout for model and inputs (faster convolutions)
compile = False  # torch.compile the model: faster ResNet steps after a minute or two of compiling (README, Speed)
num_workers = 4  # processes decoding images
eval_batch_size = 256  # target images per batch when evaluating (memory only: the same accuracy)
# run
device = "auto"  # auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...
seed = 0  # same seed, same machine: same numbers
eval_every = 1  # target accuracy every N epochs, shown as a curve (0: only the final model's)
validators = "auto"  # scores that need no target label, at each evaluation (validators.py): auto (all that apply), none
out_dir = "out"  # a JSON of config, per-epoch metrics and the final accuracy is written here for each run
save_model = False  # also write the final weights (a state_dict) to out_dir
checkpoint = True  # save the run at epoch ends in out_dir; the same command resumes it there (README, Resume)
checkpoint_every = 1.0  # minutes: save at the first epoch end this long after the last save (0: every epoch end)
keep_checkpoint = False  # keep the last checkpoint when the run finishes (else it is removed)
# sweeps: several tasks and seeds in one command; every finished run adds a row to out_dir/results.jsonl
tasks = ""  # "": just source -> target; "all": every ordered pair of domains in data_root; or "A-W,W-A,..."
seeds = 1  # runs per task, with seeds seed, seed+1, ...
shard = "0/1"  # i/n: this process takes runs i, i+n, i+2n, ... of the sweep (0 <= i < n)
rerun = False  # a sweep skips runs already in results.jsonl with the same config; True runs them again
report = False  # list the experiments of results.jsonl and print each one's table (flags given narrow it); no training
bold_best = False  # the .tex table: the best mean of each column in bold (every tie too)
analyze = False  # a finished run's features (it needs --save_model): t-SNE figure, proxy A-distance; no training
# -----------------------------------------------------------------------------------------------------------
FLAGS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}


def parse_flags(argv, defaults=FLAGS, echo=True):
    """--name=value overrides of the flags above (flags.py); --help prints this file's docstring and the flags."""
    return flags.parse(argv, defaults, echo, lambda: __doc__ + flags.help_text(__file__, FLAGS), grid.GRID)


if __name__ == "__main__":  # the flags are read before torch is imported: --help and a mistyped flag answer at once
    try:
        parse_flags(sys.argv[1:], echo=False)
    except UserError as e:
        exit_with(f"error: {e}")  # (under torchrun, by process 0)

# The rest needs torch (a few seconds to import), so it comes after the flags (hence the late imports).
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from datasets import demo  # noqa: E402
from runs import distributed  # noqa: E402
from runs import report
from runs import sweep  # noqa: E402
from selection import validators  # noqa: E402
from methods import methods, with_method  # noqa: E402
from runs.checkpoint import Diverged, Stopped, random_states, resume  # noqa: E402
from runs.checks import check_settings  # noqa: E402
from data_loader import CACHE_WORDS, check_same_classes, held_out  # noqa: E402
from datasets.download import DATASETS, prepare_data_root  # noqa: E402
from networks.models import MODELS, build_model, classifier, input_size, make_adaptation, network_pixels, weight_names  # noqa: E402
from runs.precision import choose_amp, pick_device  # noqa: E402
from runs.machine import machine  # noqa: E402
from results.store import mean_class_accuracy, per_class_accuracy
from results.run_files import not_written, save_run
from results.experiments import run_label
from results.tasks import task_pairs


def resolve(c):
    """The flags whose default depends on another, made explicit: data_root, source and target "" (the
    dataset's folder and first task), weights=auto, resize_size=0 and crop_size=0 (the network's); --cache=True and
    False, the boolean it was, are memory and none. An unknown model or weights name is left for check_config."""
    weights = c["weights"].lower() if c["weights"].lower() in ("auto", "none") else c["weights"]  # None, AUTO
    if c["model"] in MODELS and weights == "auto":
        weights = weight_names(c["model"])[0]
    known = c["model"] in MODELS and weights in weight_names(c["model"])
    resize, crop, _ = input_size(c["model"], weights) if known else (256, 224, None)
    source, target = DATASETS.get(c["dataset"], DATASETS["office31"])["task"]
    return dict(c, data_root=c["data_root"] or os.path.join("data", c["dataset"]), source=c["source"] or source,
                target=c["target"] or target, weights=weights, resize_size=c["resize_size"] or resize,
                crop_size=c["crop_size"] or crop, cache=CACHE_WORDS.get(c["cache"].lower(), c["cache"].lower()))


def make_optimizer(model, new_layer, c, fused=True):
    """SGD with two groups: pretrained layers at lr, the new layers at lr * lr_mult (new_layer: the new last
    layer, or a ModuleList of it with the bottleneck and a domain discriminator). The fused kernel is the same
    update in one pass over all parameters (AlexNet's 61M make the per-tensor loop costly)."""
    new = list(new_layer.parameters())
    new_ids = {id(p) for p in new}
    pretrained = [p for p in model.parameters() if id(p) not in new_ids and p.requires_grad]  # not the frozen
    groups = [{"params": pretrained, "initial_lr": c["lr"]}, {"params": new, "initial_lr": c["lr"] * c["lr_mult"]}]
    return torch.optim.SGD(groups, lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"],
                           nesterov=c["momentum"] > 0, fused=fused and model_device(model).type in ("cpu", "cuda"))


def annealed(initial_lr, progress):
    """The "inv" schedule of DANN/DAN: lr_p = lr_0 (1 + 10 p)^-0.75, progress p from 0 to 1."""
    return initial_lr * (1 + 10 * progress) ** -0.75


def set_progress(optimizer, progress):
    for group in optimizer.param_groups:  # the same factor for every group keeps the lr_mult ratio
        group["lr"] = annealed(group["initial_lr"], progress)


def check_finite(step, terms, several=False, stopping=False):
    """terms: {name: loss tensor} of one step; raises Diverged(step, {name: value}) if any is nan or inf. Returns
    stopping: whether this process was asked to stop. several: both are decided on every process alike (a loss not
    finite on any, a stop asked of any), in one all-reduce, so that every process stops at the same step, else the
    others would wait for it at their next collective."""
    values = {name: float(value) for name, value in terms.items()}
    finite = all(math.isfinite(value) for value in values.values())
    if several:
        diverged, stopping = distributed.anywhere(not finite, stopping)
        finite = not diverged
    if not finite:
        raise Diverged(step, values)
    return stopping


def train_one_epoch(model, optimizer, batches, first_step, total_steps, amp, memory_format, adaptation=None,
                    stop=None, distributed_run=False):
    """One epoch of SGD; returns the mean of each loss term and the accuracy on the (augmented) source batches.
    batches: (x, y) source batches; with an adaptation method, ((x, y), x_target) pairs, pushed through the network
    as one batch (AFN: one per domain; Adaptation.network). Stops with Diverged at the first step whose loss is not
    finite, and with Stopped(step) at the end of the step during which stop.requested was set (a StopOnSignal;
    under torchrun, on any process)."""
    model.train()
    for module in model.modules():  # a frozen block's BatchNorm keeps its statistics too: eval mode
        weights = list(module.parameters()) if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) else []
        if weights and not any(p.requires_grad for p in weights):
            module.eval()
    if adaptation:
        adaptation.train()
    sums, correct, seen = {}, 0, 0
    # the previous step's loss terms (none before the first), read one step late so that a GPU is never left idle
    checking = first_step, {}
    for step, batch in enumerate(batches, first_step):
        progress = step / total_steps
        set_progress(optimizer, progress)
        (x, y), x_target = batch if adaptation else (batch, None)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            if adaptation is None:
                logits = model(x.contiguous(memory_format=memory_format))
                terms = {"classification": F.cross_entropy(logits, y)}
            else:
                joint = adaptation.network(model, x, x_target, memory_format)
                logits = joint[:len(x)]
                terms = {"classification": F.cross_entropy(logits, y), "adaptation": adaptation(joint, progress)}
        optimizer.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        if distributed_run and adaptation:  # (the network's gradients: DistributedDataParallel averaged them)
            distributed.average_gradients(adaptation)
        optimizer.step()
        stopping = check_finite(*checking, distributed_run, stop is not None and bool(stop.requested))
        checking = step, {name: term.detach() for name, term in terms.items()}
        for name, term in terms.items():  # tensors, so the GPU is not synchronised every step
            sums[name] = sums.get(name, 0) + term.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if stopping:
            raise Stopped(step)
    check_finite(*checking, distributed_run)
    return {name: float(total) / seen for name, total in sums.items()}, float(correct) / seen


def evaluate(model, batches, amp, memory_format, kept=None, layer=None):
    """(correct, total) over every batch given: each target image exactly once, no dropped last batch. kept: a dict
    that also gets every image's "logits" and "labels" and (a layer given) "features", that layer's input, in fp32 on
    the CPU, for the validators."""
    model.eval()
    correct = total = 0
    outputs = {"logits": [], "labels": [], "features": []}
    hook = layer.register_forward_hook(lambda m, inputs, out: outputs["features"].append(inputs[0].float().cpu())) \
        if layer is not None and kept is not None else None
    with torch.inference_mode(), torch.autocast(model_device(model).type, dtype=torch.bfloat16, enabled=amp):
        for x, y in batches:
            logits = model(x.contiguous(memory_format=memory_format))
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
            if kept is not None:
                outputs["logits"].append(logits.float().cpu())
                outputs["labels"].append(y.cpu())
    if hook:
        hook.remove()
    if kept is not None:
        kept.update({name: torch.cat(parts) for name, parts in outputs.items() if parts})
    return correct, total


def model_device(model):
    return next(model.parameters()).device


def fine_tune(c, source, target, device, task, checkpoint=None, stop=None):
    """Train on the source domain, test on the target, with config c (its seed included); returns the result
    dict, also written to out_dir as JSON. task: the name printed, e.g. "A→W". checkpoint: a Checkpoint saved at
    epoch ends (but the last) once checkpoint_every minutes have passed, and resumed from if it holds this run;
    stop: a StopOnSignal, which ends the run with Stopped at the end of a step."""
    torch.manual_seed(c["seed"])
    generator = torch.Generator().manual_seed(c["seed"])
    check_same_classes(source, target)
    source, held = held_out(source, c["source_val"]) if c["source_val"] else (source, None)
    if held is not None and len(held) < 2:
        raise UserError(f"--source_val={c['source_val']} holds out {len(held)} of the {len(source) + len(held)} "
                        f"images of {source.name} (round(fraction x n) of each class of n): the held-out validators "
                        "need at least 2. Give a larger fraction.")
    names = validators.chosen(c["validators"], held is not None)
    net, new_layer = build_model(c["model"], len(source.classes), c["weights"], c["bottleneck"], c["freeze"])
    pixels = network_pixels(c["model"], c["weights"])  # what the network's weights were trained on
    amp, why = choose_amp(c["amp"], device)
    memory_format = torch.channels_last if c["channels_last"] else torch.contiguous_format
    net = net.to(device, memory_format=memory_format)
    adaptation, new_layers = make_adaptation(c, net, new_layer(net), len(source.classes), device)
    target_generator = torch.Generator().manual_seed(c["seed"] + 1)  # target batches: a stream of their own
    optimizer = make_optimizer(net, new_layers, c)
    model = torch.compile(net) if c["compile"] else net  # the same parameters; net keeps plain state_dict keys
    several = distributed.size() > 1  # under torchrun: this process trains on its slice of each batch
    model = distributed.wrap(net, device) if several else model
    first = distributed.rank() == 0  # the process that evaluates, saves and writes
    layer = classifier(new_layer(net)) if "dev" in names else None  # DEV reads its input by a hook: uncompiled net
    evaluated = net if layer or several else model

    def outputs(domain, kept, features=True):  # (correct, total) over every image of a domain; outputs kept (evaluate)
        batches = domain.test_batches(c["eval_batch_size"], c["crop_size"], pixels)
        return evaluate(evaluated, batches, amp, memory_format, kept, layer if features else None)

    total_steps = c["epochs"] * c["iters_per_epoch"]
    parts = {"model": net, "method": adaptation or torch.nn.Module(), "optimizer": optimizer}
    generators = [generator, target_generator]
    history = resume(checkpoint, parts, generators, c["epochs"])
    saved, saved_at = len(history), time.time()  # the epoch the checkpoint holds, and when it was written
    for epoch in range(len(history) + 1, c["epochs"] + 1):
        start = time.time()
        batches = source.train_batches(c["iters_per_epoch"], c["batch_size"], c["crop_size"], generator, pixels)
        if adaptation:  # the target's labels are dropped here, unread: training sees its images only
            target_images = (x for x, _ in target.train_batches(c["iters_per_epoch"], c["batch_size"],
                                                                c["crop_size"], target_generator, pixels))
            batches = zip(batches, target_images)
        batches = distributed.shard(batches) if several else batches
        batches = tqdm(batches, total=c["iters_per_epoch"], desc=f"epoch {epoch}/{c['epochs']}", unit="batch",
                       leave=False, disable=None if first else True)  # a bar on a terminal only: in a log, the line
        try:
            losses, source_acc = train_one_epoch(model, optimizer, batches, (epoch - 1) * c["iters_per_epoch"],
                                                 total_steps, amp, memory_format, adaptation, stop, several)
        except Stopped as e:
            kept = f"its checkpoint at the end of epoch {saved} is in {checkpoint.path}" if checkpoint and saved \
                else "no checkpoint was written yet, so it will start from the beginning"
            raise Stopped(f"{stop.who()} stopped {task} {run_label(c)} at epoch {epoch}, "
                          f"step {e.args[0] + 1} of {total_steps}; {kept}. Run the same command again to resume "
                          "it; finished runs are in the results file.") from None
        except Diverged as e:
            step, terms = e.args
            also = f", --trade_off (now {c['trade_off']})" if adaptation else ""
            raise Diverged(f"{task} {run_label(c)}: the loss is not finite at epoch {epoch}, "
                           f"step {step + 1} of {total_steps} ({', '.join(f'{k} {v}' for k, v in terms.items())}): "
                           f"training diverged, and this run writes no result. Try a smaller --lr (now {c['lr']})"
                           f"{also}, or --amp=off if it trained in bf16.") from None
        if several:  # each process's means over its equal slice: their mean is the global batch's
            losses, source_acc = {k: distributed.mean(v) for k, v in losses.items()}, distributed.mean(source_acc)
        loss = losses["classification"]
        row = {"epoch": epoch, "loss": loss, "adaptation_loss": losses.get("adaptation"), "source_acc": source_acc,
               "target_acc": None}
        if first and (epoch == c["epochs"] or (c["eval_every"] and epoch % c["eval_every"] == 0)):
            kept = {}  # every tested target image's logits and label: the per-class accuracy (and the validators')
            correct, total = outputs(target, kept, validators.scores_tested(target))
            row["target_acc"] = correct / total
            per_class = per_class_accuracy(kept, target.classes) if kept else None  # (empty where a test stands
            row["target_class_acc"] = mean_class_accuracy(per_class) if kept else None  # in for evaluate)
            if kept and names:
                row["validators"] = validators.score(names, kept, outputs, target, held, source)
        row["seconds"] = time.time() - start
        history.append(row)
        shown = "-" if row["target_acc"] is None else f"{100 * row['target_acc']:.1f}%"
        adapted = "" if adaptation is None else f"  {c['method']} {losses['adaptation']:.3f}"
        print(f"epoch {epoch}/{c['epochs']}  loss {loss:.3f}{adapted}  source acc {100 * source_acc:.1f}%  "
              f"{task} {shown}  {row['seconds']:.1f}s")
        due = time.time() - saved_at >= 60 * c["checkpoint_every"]  # (a fast GPU's epochs take seconds)
        if checkpoint and due and epoch < c["epochs"] and first:  # the last epoch's state is the result itself
            if checkpoint.save({"epoch": epoch, "history": history, "rng": random_states(generators),
                                **{name: part.state_dict() for name, part in parts.items()}}):
                saved = epoch
            saved_at = time.time()  # (a failed save is tried again checkpoint_every minutes later)
        if several:  # the others wait while process 0 evaluates and saves, as long as that takes
            distributed.wait_for_first()
    if not first:
        return None  # (process 0 has the result)
    result = {"task": task, "correct": correct, "total": total, "accuracy": correct / total, "config": c,
              "precision": {"dtype": "bf16" if amp else "fp32", "why": why}, "machine": machine(device),
              "epochs": history, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "held_out": len(held) if held is not None else 0, "per_class": per_class,
              "mean_class_accuracy": history[-1]["target_class_acc"],
              "metric": DATASETS.get(c["dataset"], {}).get("metric", "accuracy"), "processes": distributed.size()}
    try:
        save_run(c, result, net.state_dict() if c["save_model"] else None)
    except (OSError, RuntimeError) as e:  # a full disk, a quota (torch.save: a RuntimeError)
        raise not_written(result, c["out_dir"], e) from None
    return result


def defaults(c):
    """{method: the config the default flags give that method on c's model and dataset}: what a table's title
    compares with, to name every flag that differs."""
    plain = resolve(dict(dataset_defaults(c["dataset"]), model=c["model"], dataset=c["dataset"]))
    return {method: with_method(plain, method) for method in methods(c)}


def print_config(c, precision=None):
    """The resolved flags in one line; amp also shows what it resolved to on this device, and why."""
    shown = dict(c)
    if precision:
        bf16, why = precision
        shown["amp"] = f"{c['amp']}→{'bf16' if bf16 else 'fp32'} ({why})"
    print("config: " + "  ".join(f"{k}={v}" for k, v in shown.items()))


def user_message(error):
    """DataLoader workers re-raise our UserError with the worker's traceback in front: keep our words only."""
    text = str(error)
    return text.rsplit("UserError: ", 1)[1].strip() if "Original Traceback" in text else text


def dataset_defaults(name):
    """The flags' defaults, with the demo's own (demo.FLAGS: a small network from scratch, small images, a short
    run) for --dataset=demo."""
    return dict(FLAGS, **demo.FLAGS) if name == "demo" else FLAGS


def main(argv=None):
    try:
        argv = sys.argv[1:] if argv is None else argv
        given = parse_flags(argv, echo=False)["dataset"]  # the dataset first: it may change other defaults
        c = resolve(parse_flags(argv, dataset_defaults(given)))
        check_settings(c, FLAGS)
        results_path = os.path.join(c["out_dir"], "results.jsonl")
        one = len(methods(c)) == 1 and not grid.varied(c)
        shown = with_method(c, methods(c)[0]) if one else c  # one method: its resolved values
        if c["analyze"] and not (one and c["tasks"] == "" and c["seeds"] == 1):
            raise UserError("--analyze=True reads one finished run: give one --method, one value per flag and no "
                            "--tasks or --seeds (--source, --target and --seed name the run).")
        if c["report"]:
            print_config(shown)
            return report.print_report(c, results_path, flags.given(argv, FLAGS), defaults, FLAGS)
        sweep.check_out_dir(c["out_dir"], results_path)
        device = distributed.start(c["device"]) if distributed.launched() > 1 else pick_device(c["device"])
        if distributed.rank() > 0:  # under torchrun, process 0 speaks for all
            sys.stdout = open(os.devnull, "w")
        amp = choose_amp(c["amp"], device)
        print_config(shown, amp)
        asked = [name for pair in task_pairs(c) or [] for name in pair]  # (checked before a download)
        data_root = prepare_data_root(c["data_root"], c["download"], c["dataset"], asked)
        precision = "bf16" if amp[0] else "fp32"
        if c["analyze"]:
            from selection import analysis  # (scikit-learn and matplotlib: only here)
            return analysis.analyze(with_method(dict(c, precision=precision), methods(c)[0]), data_root, device,
                                    results_path, evaluate)
        return sweep.run_sweep(c, data_root, device, results_path, fine_tune, precision, defaults(c), FLAGS)
    except UserError as e:
        exit_with(f"error: {user_message(e)}")  # (under torchrun, by process 0)
    except torch._dynamo.exc.BackendCompilerFailed as e:  # raised at the first step, before any result is written
        sys.exit(f"error: --compile=True, but torch.compile could not build the model: {str(e).strip()}. "
                 "It needs a working C++ compiler on the CPU (Triton on a GPU); run with --compile=False.")
    except Stopped as e:  # (under torchrun, process 0 says it: it alone knows which checkpoint it wrote)
        sys.exit(f"stopped: {e}" if distributed.rank() == 0 else 1)
    except KeyboardInterrupt:
        sys.exit("interrupted: the run in progress wrote no result (its last epoch end's checkpoint, if any, resumes "
                 "it when the same command runs again); finished runs are in the results file.")


if __name__ == "__main__":
    main()
