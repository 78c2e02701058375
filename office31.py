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
batch) to the source classification loss, on the same loop and schedule: DDC, DAN, Deep CORAL, DANN, CDAN, BSP, JAN,
MCC, MDD, AFN, each as its paper defines it (methods/, a file each); SHOT and TENT adapt a trained model on the
target's images alone. Target labels are read by the evaluations only.
Sweeps: --tasks, --seeds and a comma-separated --method run every task, seed and method in one command; each
finished run adds a row to out_dir/results.jsonl, a stopped sweep resumes with the same command, and the end prints
the table papers show (methods as rows, mean ± std over seeds); --report=True prints it again. Training flags take
comma-separated values too (a grid: runs/grid.py), and every evaluation records scores that need no target label
(selection/validators.py); a sweep's end then also shows what each would choose (selection/selection_table.py).
"""
import collections
import datetime
import os
import sys
import time
import types

from runs import flags
from runs import grid
from common.errors import Diverged, Stopped, UserError, exit_with, user_message

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
# adaptation (README, Methods); source_only is plain fine-tuning, the others add a loss on target images
method = "source_only"  # source_only or a name in methods/__init__.py: ddc, dan, dann, cdan, ...; several: a sweep
bottleneck = "auto"  # Linear+BatchNorm1d+ReLU of this width before the classifier; 0: none; auto: the method's
trade_off = 1.0  # weight of the adaptation loss (dann, cdan, bsp, mdd: of the reversed gradient, ramped up from 0)
entropy = False  # cdan only: entropy conditioning (CDAN+E)
start_from = ""  # a finished run (its .json or .pt) to start from, not ImageNet; "": shot, tent start from shot_source
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
compile = False  # torch.compile the model: faster ResNet steps after a minute or two of compiling (docs/speed.md)
num_workers = 4  # processes decoding images
eval_batch_size = 256  # target images per batch when evaluating (memory only: the same accuracy)
# run
device = "auto"  # auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...
seed = 0  # same seed, same machine: same numbers
eval_every = 1  # target accuracy every N epochs, shown as a curve (0: only the final model's)
validators = "auto"  # scores that need no target label, at each evaluation (selection/): auto (all that apply), none
out_dir = "out"  # a JSON of config, per-epoch metrics and the final accuracy is written here for each run
save_model = False  # also write the final weights (a state_dict) to out_dir
checkpoint = True  # save the run at epoch ends in out_dir; the same command resumes it there (docs/sweeps.md, Resume)
checkpoint_every = 1.0  # minutes: save at the first epoch end this long after the last save (0: every epoch end)
keep_checkpoint = False  # keep the last checkpoint when the run finishes (else it is removed)
# sweeps: several tasks and seeds in one command; every finished run adds a row to out_dir/results.jsonl
tasks = ""  # "": just source -> target; "all": every ordered pair of domains in data_root; or "A-W,W-A,..."
seeds = 1  # runs per task, with seeds seed, seed+1, ...
shard = "0/1"  # i/n: this process takes runs i, i+n, i+2n, ... of the sweep (0 <= i < n)
runs_at_once = 1  # processes sharing the device, each training the sweep's next free run (docs/speed.md)
rerun = False  # a sweep skips runs already in results.jsonl with the same config; True runs them again
plan = False  # list the sweep's runs (done, to train) and stop: no image decoded, no training
report = False  # list the experiments of results.jsonl and print each one's table (flags given narrow it); no training
bold_best = False  # the .tex table: the best mean of each column in bold (every tie too)
analyze = False  # a finished run's features (it needs --save_model): t-SNE figure, proxy A-distance; no training
# -----------------------------------------------------------------------------------------------------------
FLAGS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}


def parse_flags(argv, flag_defaults=FLAGS, echo=True):
    """--name=value overrides of the flags above (runs/flags.py); --help prints this file's docstring and the flags."""
    return flags.parse(argv, flag_defaults, echo, lambda: __doc__ + flags.help_text(__file__, FLAGS), grid.GRID)


if __name__ == "__main__":  # the flags are read before torch is imported: --help and a mistyped flag answer at once
    try:
        parse_flags(sys.argv[1:], echo=False)
    except UserError as e:
        exit_with(f"error: {e}")  # (under torchrun, by process 0)

# The rest needs torch (a few seconds to import), so it comes after the flags (hence the late imports).
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from runs import at_once, distributed, report, start, sweep  # noqa: E402
from selection import validators  # noqa: E402
from methods import METHODS, methods, with_method  # noqa: E402
from runs.checkpoint import random_states, resume  # noqa: E402
from runs.optimizer import check_finite, make_optimizer  # noqa: E402
from common.schedule import set_progress  # noqa: E402
from runs.checks import check_settings  # noqa: E402
from data_loader import check_same_classes, part, split_source  # noqa: E402
from datasets.download import DATASETS, prepare_data_root  # noqa: E402
from networks.models import build_model, classifier, make_adaptation, network_pixels  # noqa: E402
from runs.config import dataset_defaults, plain_configs, resolve  # noqa: E402
from runs.precision import choose_amp, pick_device  # noqa: E402
from runs.machine import machine  # noqa: E402
from results.store import mean_class_accuracy, per_class_accuracy  # noqa: E402
from results.run_files import not_written, save_run  # noqa: E402
from results.experiments import run_label  # noqa: E402
from results.tasks import task_pairs  # noqa: E402


def train_one_epoch(model, optimizer, batches, first_step, total_steps, amp, memory_format, adaptation=None,
                    stop=None, distributed_run=False, smoothing=0.0):
    """One epoch of SGD; returns the mean of each loss term and the accuracy on the (augmented) source batches.
    batches: (x, y) source batches; with an adaptation method, ((x, y), x_target) pairs, pushed through the network
    as one batch (AFN: one per domain; Method.network in methods/method.py). Stops with Diverged at the first step
    whose loss is not finite, and with Stopped(step) at the end of the step during which stop.requested was set (a
    StopOnSignal; under torchrun, on any process)."""
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
                terms = {"classification": F.cross_entropy(logits, y, label_smoothing=smoothing)}
            else:
                joint = adaptation.network(model, x, x_target, memory_format)
                logits = joint[:len(x)]
                terms = {"classification": F.cross_entropy(logits, y, label_smoothing=smoothing),
                         "adaptation": adaptation(joint, progress)}
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


Outputs = collections.namedtuple("Outputs", "correct total logits labels features")


def evaluate(model, batches, amp, memory_format, layer=None):
    """Outputs(correct, total, logits, labels, features) of the model over every batch given: each image exactly
    once, no dropped last batch. logits and labels are every image's, in fp32 on the CPU (the per-class accuracy's
    and the validators'); features (a layer given; else None): that layer's input, likewise."""
    model.eval()
    correct = total = 0
    logits, labels, features = [], [], []
    hook = layer.register_forward_hook(lambda m, inputs, out: features.append(inputs[0].float().cpu())) \
        if layer is not None else None
    device = next(model.parameters()).device
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for x, y in batches:
            out = model(x.contiguous(memory_format=memory_format))
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
            logits.append(out.float().cpu())
            labels.append(y.cpu())
    if hook:
        hook.remove()
    return Outputs(correct, total, torch.cat(logits), torch.cat(labels), torch.cat(features) if features else None)


def fine_tune(c, source, target, device, task, checkpoint=None, stop=None):
    """Train on the source domain, test on the target, with config c (its seed included); returns the result
    dict, also written to out_dir as JSON. task: the name printed, e.g. "A→W". checkpoint: a Checkpoint saved at
    epoch ends (but the last) once checkpoint_every minutes have passed, and resumed from if it holds this run;
    stop: a StopOnSignal, which ends the run with Stopped at the end of a step."""
    torch.manual_seed(c["seed"])
    check_same_classes(source, target)
    source, held = split_source(source, c["source_val"])
    run = set_up(c, source, device, validators.chosen(c["validators"], held is not None))
    if run.stage:  # from a trained model, on the target's images alone (SHOT, TENT: methods/shot.py, tent.py)
        history, tested = run.stage.adapt(c, run, target, evaluate, stop)
        tested = tested or outputs_on(c, run, target, False)  # (TENT: its online predictions)
        per_class = per_class_accuracy(tested.logits, tested.labels, target.classes)
        history[-1].update(target_acc=tested.correct / tested.total, target_class_acc=mean_class_accuracy(per_class))
        if run.validators:  # those on the target's predictions alone: no source image, no label
            history[-1]["validators"] = validators.score(run.validators, tested._replace(labels=None))
        return write_result(c, run, device, task, tested, per_class, history, held)
    history = resume(checkpoint, run.parts, run.generators, c["epochs"])
    saved, saved_at = len(history), time.time()  # the epoch the checkpoint holds, and when it was written
    for epoch in range(len(history) + 1, c["epochs"] + 1):
        start = time.time()
        losses, source_acc = train_epoch(c, run, source, target, epoch, task, stop, checkpoint, saved)
        row = {"epoch": epoch, "loss": losses["classification"], "adaptation_loss": losses.get("adaptation"),
               "source_acc": source_acc, "target_acc": None}
        if run.first and (epoch == c["epochs"] or (c["eval_every"] and epoch % c["eval_every"] == 0)):
            tested = outputs_on(c, run, target, validators.scores_tested(target))  # its features where scored
            per_class = per_class_accuracy(tested.logits, tested.labels, target.classes)
            row.update(target_acc=tested.correct / tested.total, target_class_acc=mean_class_accuracy(per_class))
            if run.validators:
                row["validators"] = score_validators(c, run, tested, source, target, held)
        row["seconds"] = time.time() - start
        history.append(row)
        print(epoch_line(c, row, task))
        due = time.time() - saved_at >= 60 * c["checkpoint_every"]  # (a fast GPU's epochs take seconds)
        if checkpoint and due and epoch < c["epochs"] and run.first:  # the last epoch's state is the result itself
            if checkpoint.save({"epoch": epoch, "history": history, "rng": random_states(run.generators),
                                **{name: each.state_dict() for name, each in run.parts.items()}}):
                saved = epoch
            saved_at = time.time()  # (a failed save is tried again checkpoint_every minutes later)
        if run.several:  # the others wait while process 0 evaluates and saves, as long as that takes
            distributed.wait_for_first()
    if not run.first:
        return None  # (process 0 has the result)
    return write_result(c, run, device, task, tested, per_class, history, held)


def set_up(c, source, device, names):
    """What a run of config c (seeded already) trains and evaluates with: the network (net; model, what trains:
    compiled, or wrapped for several processes; evaluated), its method's module (adaptation, None for source only),
    the optimizer, the batches' generators, the precision, and parts, what a checkpoint holds; names: validators."""
    generator, method = torch.Generator().manual_seed(c["seed"]), METHODS[c["method"]]
    net, new_layer = build_model(c["model"], len(source.classes), c["weights"], c["bottleneck"], c["freeze"],
                                 method.head or start.head(c["start_from"]))
    started = start.load(net, c["start_from"]) if c["start_from"] else None  # (its file and digest: the run file's)
    pixels = network_pixels(c["model"], c["weights"])
    amp, why = choose_amp(c["amp"], device)
    memory_format = torch.channels_last if c["channels_last"] else torch.contiguous_format
    net = net.to(device, memory_format=memory_format)
    adaptation, new_layers = make_adaptation(c, net, new_layer(net), len(source.classes), device)
    target_generator = torch.Generator().manual_seed(c["seed"] + 1)  # target batches: a stream of their own
    optimizer = make_optimizer(net, new_layers, c)
    model = torch.compile(net) if c["compile"] else net  # the same parameters; net keeps plain state_dict keys
    model = distributed.wrap(net, device) if distributed.size() > 1 else model  # torchrun: a slice of each batch
    names = [n for n in names if n in validators.ON_PREDICTIONS] if method.starts_from else names  # (no source pass)
    layer = classifier(new_layer(net)) if validators.reads_features(names) else None  # DEV reads its input by a hook
    return types.SimpleNamespace(  # (evaluated: with a hook, or process 0 alone, the plain net)
        net=net, model=model, adaptation=adaptation, optimizer=optimizer, generators=[generator, target_generator],
        amp=amp, why=why, memory_format=memory_format, pixels=pixels, several=distributed.size() > 1,
        first=distributed.rank() == 0, validators=names, layer=layer, head=new_layer(net), started=started,
        evaluated=net if layer or distributed.size() > 1 else model, stage=method if method.starts_from else None,
        parts={"model": net, "method": adaptation or torch.nn.Module(), "optimizer": optimizer})


def train_epoch(c, run, source, target, epoch, task, stop, checkpoint, saved):
    """Epoch `epoch` of training: (the mean of each loss term, the accuracy on the source batches), the means of
    every process's under torchrun. A Stopped or Diverged is raised again in words: where the run stopped and how it
    resumes (saved: the epoch the checkpoint holds), or what to try."""
    batches = source.train_batches(c["iters_per_epoch"], c["batch_size"], c["crop_size"], run.generators[0],
                                   run.pixels)
    if run.adaptation:  # the target's labels are dropped here, unread: training sees its images only
        target_images = (x for x, _ in target.train_batches(c["iters_per_epoch"], c["batch_size"], c["crop_size"],
                                                            run.generators[1], run.pixels))
        batches = zip(batches, target_images)
    batches = distributed.shard(batches) if run.several else batches
    batches = tqdm(batches, total=c["iters_per_epoch"], desc=f"epoch {epoch}/{c['epochs']}", unit="batch",
                   leave=False, disable=None if run.first else True)  # a bar on a terminal only: in a log, the line
    total_steps = c["epochs"] * c["iters_per_epoch"]
    try:
        losses, source_acc = train_one_epoch(run.model, run.optimizer, batches, (epoch - 1) * c["iters_per_epoch"],
                                             total_steps, run.amp, run.memory_format, run.adaptation, stop,
                                             run.several, METHODS[c["method"]].label_smoothing)
    except Stopped as e:
        resumes = f"its checkpoint at the end of epoch {saved} is in {checkpoint.path}" if checkpoint and saved \
            else "no checkpoint was written yet, so it will start from the beginning"
        raise Stopped(f"{stop.who()} stopped {task} {run_label(c)} at epoch {epoch}, "
                      f"step {e.args[0] + 1} of {total_steps}; {resumes}. Run the same command again to resume "
                      "it; finished runs are in the results file.") from None
    except Diverged as e:
        step, terms = e.args
        also = f", --trade_off (now {c['trade_off']})" if run.adaptation else ""
        raise Diverged(f"{task} {run_label(c)}: the loss is not finite at epoch {epoch}, "
                       f"step {step + 1} of {total_steps} ({', '.join(f'{k} {v}' for k, v in terms.items())}): "
                       f"training diverged, and this run writes no result. Try a smaller --lr (now {c['lr']})"
                       f"{also}, or --amp=off if it trained in bf16.") from None
    if run.several:  # each process's means over its equal slice: their mean is the global batch's
        return {k: distributed.mean(v) for k, v in losses.items()}, distributed.mean(source_acc)
    return losses, source_acc


def outputs_on(c, run, domain, features=True):
    """evaluate() of the run's network on a domain's tested images, with their features where DEV reads them."""
    batches = domain.test_batches(c["eval_batch_size"], c["crop_size"], run.pixels)
    return evaluate(run.evaluated, batches, run.amp, run.memory_format, run.layer if features else None)


def score_validators(c, run, tested, source, target, held):
    """validators.score of the run's network, from exactly the passes its validators read: the target's training
    images (tested, its evaluation's outputs, where those are its training images; else, a test list of its own,
    one more pass over its train list); the held-out source (held) for source_val_acc and DEV only; the source's
    training images (its train list, where it has one) for DEV's domain classifier only."""
    def training_images(domain):
        return part(domain, torch.arange(len(domain)))
    on_target = tested if validators.scores_tested(target) else outputs_on(c, run, training_images(target))
    on_target = on_target._replace(labels=None)  # the target's labels never reach the validators
    on_held = outputs_on(c, run, held) if held is not None and validators.reads_held_out(run.validators) else None
    on_source = outputs_on(c, run, training_images(source)) if validators.reads_features(run.validators) else None
    return validators.score(run.validators, on_target, on_held, on_source)


def epoch_line(c, row, task):
    """What an epoch end prints: its losses, source accuracy, target accuracy ("-" where not evaluated), time."""
    shown = "-" if row["target_acc"] is None else f"{100 * row['target_acc']:.1f}%"
    adapted = "" if row["adaptation_loss"] is None else f"  {c['method']} {row['adaptation_loss']:.3f}"
    return (f"epoch {row['epoch']}/{c['epochs']}  loss {row['loss']:.3f}{adapted}  source acc "
            f"{100 * row['source_acc']:.1f}%  {task} {shown}  {row['seconds']:.1f}s")


def write_result(c, run, device, task, tested, per_class, history, held):
    """The run's result (the final model's outputs on the target: tested, per_class), written (results/run_files)."""
    result = {"task": task, "correct": tested.correct, "total": tested.total,
              "accuracy": tested.correct / tested.total, "config": c,
              "precision": {"dtype": "bf16" if run.amp else "fp32", "why": run.why}, "machine": machine(device),
              "epochs": history, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "held_out": len(held) if held is not None else 0, "per_class": per_class,
              "mean_class_accuracy": history[-1]["target_class_acc"],
              "metric": DATASETS.get(c["dataset"], {}).get("metric", "accuracy"), "processes": distributed.size(),
              **({"started_from": run.started} if run.started else {})}
    try:
        save_run(c, result, run.net.state_dict() if c["save_model"] or METHODS[c["method"]].saves_model else None)
    except (OSError, RuntimeError) as e:  # a full disk, a quota (torch.save: a RuntimeError)
        raise not_written(result, c["out_dir"], e) from None
    return result


def main(argv=None):
    try:
        argv = sys.argv[1:] if argv is None else argv
        given = parse_flags(argv, echo=False)["dataset"]  # the dataset first: it may change other defaults
        c = resolve(parse_flags(argv, dataset_defaults(given, FLAGS)))
        check_settings(c, FLAGS, flags.given(argv, FLAGS))
        results_path = os.path.join(c["out_dir"], "results.jsonl")
        one = len(methods(c)) == 1 and not grid.varied(c)
        shown = with_method(c, methods(c)[0]) if one else c  # one method: its resolved values
        if c["report"]:
            flags.print_config(shown)
            return report.print_report(c, results_path, flags.given(argv, FLAGS), FLAGS)
        sweep.check_out_dir(c["out_dir"], results_path)
        device = distributed.start(c["device"]) if distributed.launched() > 1 else pick_device(c["device"])
        if distributed.rank() > 0:  # under torchrun, process 0 speaks for all
            sys.stdout = open(os.devnull, "w")
        amp = choose_amp(c["amp"], device)
        flags.print_config(shown, amp)
        asked = [name for pair in task_pairs(c) or [] for name in pair]  # (checked before a download)
        data_root = prepare_data_root(c["data_root"], c["download"], c["dataset"], asked)
        precision = "bf16" if amp[0] else "fp32"
        if c["analyze"]:
            from selection import analysis  # (scikit-learn and matplotlib: only here)
            return analysis.analyze([with_method(dict(c, precision=precision), m) for m in methods(c, stages=False)],
                                    data_root, device, results_path, evaluate)
        if c["runs_at_once"] > 1 and not c["plan"] and not at_once.child():  # N processes of this command
            return at_once.run_at_once(c, [__file__, *argv], data_root, device, results_path, precision,
                                       plain_configs(c, FLAGS), FLAGS)
        return sweep.run_sweep(c, data_root, device, results_path, fine_tune, precision, plain_configs(c, FLAGS),
                               FLAGS)
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
